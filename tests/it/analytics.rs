//! Analysts' path: `sellable serve --flight` queried from Python with the ADBC Flight SQL driver
//! and with pyarrow.flight (tests/analytics/check.py), every answer checked against the lake read
//! directly and against the REST answers this test gave.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::reservations::live_marketplace;
use crate::{forget, free_port, keyed, redis_names, KillOnDrop, TEST_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysts_query_every_table_over_flight_sql() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = crate::venv_program("python", "pyarrow and the ADBC driver");
    let (_dir, lake) = live_marketplace().await;
    // the nightly job again at the same cutoff: the features too
    let cutoff = lake.batch_view_asof().await.unwrap().unwrap();
    lake.nightly(cutoff, sellable_core::FoldConfig::default(), &sellable_batch::Progress::hidden()).await.unwrap();
    let (url, stream, namespace) = redis_names("flight");
    let (port, flight) = (free_port(), free_port());
    let args = ["serve", "--lake", lake.location(), "--redis", &url, "--namespace", &namespace, "--listen", &format!("127.0.0.1:{port}"), "--flight", &format!("127.0.0.1:{flight}")];
    let _server = KillOnDrop(
        keyed(&mut std::process::Command::new(env!("CARGO_BIN_EXE_sellable")))
            .args(args)
            // decisions reach the lake within a second of being answered; a query may run 10 s
            // (the other clients' queries, beside one that never ends, finish well within it even
            // on 2 cores shared with other tests) and hold 64 MB
            .env("SELLABLE__SERVE__DECISIONS", "{ segment_ms = 200 }")
            .env("SELLABLE__SERVE__ANALYTICS", "{ query_timeout_s = 10, memory_mb = 64 }")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = crate::api();
    for _ in 0..300 {
        if client.get(format!("http://127.0.0.1:{port}/readyz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // REST answers, whose decisions the lake then holds
    let (skus, _) = lake.load_catalog().await.unwrap();
    let mut decisions = BTreeMap::new();
    for (index, sku) in skus.iter().take(12).enumerate() {
        let id = format!("flight-{index:02}");
        let response = client.get(format!("http://127.0.0.1:{port}/v1/availability/{}?region=EU&qty=2", sku.sku)).header("x-request-id", &id).send().await.unwrap();
        let answer: serde_json::Value = response.json().await.unwrap();
        decisions.insert(id, serde_json::json!([answer["decision"], answer["units"]]));
    }
    for _ in 0..100 {
        // (the dataset may be in its first commit now)
        let rows: u64 = lake.info().await.map(|infos| infos.iter().filter(|info| info.name == "decisions").map(|info| info.rows).sum()).unwrap_or(0);
        if rows >= decisions.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // the lake, read directly
    let counts: BTreeMap<&str, u64> = lake
        .info()
        .await
        .unwrap()
        .iter()
        .filter_map(|info| sellable_batch::ANALYTICS_TABLES.iter().find(|(_, dataset)| *dataset == info.name).map(|(table, _)| (*table, info.rows)))
        .collect();
    let events: Vec<sellable_core::Event> = lake.events_after(i64::MIN).await.unwrap().into_iter().map(Result::unwrap).collect();
    let mut by_sku: HashMap<&str, (u64, i64)> = HashMap::new();
    for event in &events {
        let entry = by_sku.entry(event.sku.as_str()).or_default();
        entry.0 += 1;
        entry.1 += event.qty;
    }
    let sku = events[0].sku.clone();
    // the merged view serving answers from equals the core fold of every event the lake holds
    let folded = sellable_core::fold(&events, sellable_core::FoldConfig::default()).states;
    let live: BTreeMap<String, i64> = folded.iter().filter(|((at, _), _)| *at == sku).map(|((_, node), state)| (node.clone(), state.atp())).collect();
    let expected = serde_json::json!({
        "counts": counts,
        "sku": sku,
        "sku_events": by_sku[sku.as_str()].0,
        "sku_qty": by_sku[sku.as_str()].1,
        "qty_sum": events.iter().map(|e| e.qty).sum::<i64>(),
        "skus_with_events": by_sku.len(),
        "repeat": 1_000_000 / events.len() + 1,
        "decisions": decisions,
        "live": live,
        "live_rows": folded.len(),
        "features_version": lake.info().await.unwrap().iter().find(|info| info.name == "features").unwrap().version,
    });
    assert!(counts.contains_key("decisions") && counts.contains_key("features") && counts.contains_key("batch_view"), "{counts:?}");
    assert!(!live.is_empty());
    // the worked queries of the docs are the ones the client runs
    let docs = std::fs::read_to_string(root.join("docs/analytics.md")).unwrap();
    let queries: BTreeMap<String, String> = serde_json::from_str(&std::fs::read_to_string(root.join("tests/analytics/queries.json")).unwrap()).unwrap();
    for (name, sql) in &queries {
        assert!(docs.contains(sql.as_str()), "docs/analytics.md does not show the query {name:?} as tested");
    }
    let mut command = std::process::Command::new(&python);
    command.arg(root.join("tests/analytics/check.py")).arg(format!("grpc://127.0.0.1:{flight}")).arg(TEST_KEY).arg(expected.to_string());
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let said = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && said.contains("all checks passed"), "{said}");
    forget(&url, &stream, &namespace).await;
}
