//! The decision log: nothing lost while the lake is slow, nothing lost or doubled across a crash,
//! and what a server answered is what the lake holds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Array, Int64Array, StringArray};
use sellable_batch::Lake;
use sellable_core::view::BoxFuture;
use sellable_core::{DecisionRecord, DecisionStore, Millis, ViewError};
use sellable_serving::decisions::{DecisionLog, DecisionLogConfig, Entry};

use crate::reservations::{live_marketplace, serve_process};
use crate::{forget, free_port, redis_names};

/// The real lake, whose appends wait while `paused` (a lake too slow to keep up).
struct Paused {
    lake: Arc<Lake>,
    paused: AtomicBool,
}

impl DecisionStore for Paused {
    fn last_segment(&self) -> BoxFuture<'_, Result<Option<u64>, ViewError>> {
        self.lake.last_segment()
    }
    fn append_segment<'a>(&'a self, records: &'a [DecisionRecord], segment: u64) -> BoxFuture<'a, Result<(), ViewError>> {
        Box::pin(async move {
            while self.paused.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.lake.append_segment(records, segment).await
        })
    }
    fn drop_before(&self, before: Millis) -> BoxFuture<'_, Result<u64, ViewError>> {
        self.lake.drop_before(before)
    }
}

fn record(at: Millis, index: usize) -> DecisionRecord {
    DecisionRecord { at, request_id: format!("req-{index}"), kind: "availability".into(), sku: format!("SKU-{index:06}"), decision: "promise".into(), units: 1, ..Default::default() }
}

/// The request ids the lake holds, each with how many times.
async fn ids_in_lake(lake: &Lake) -> std::collections::HashMap<String, usize> {
    let mut ids = std::collections::HashMap::new();
    for batch in lake.load_decisions().await.unwrap() {
        let column = batch.column_by_name("request_id").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        for id in column.iter().flatten() {
            *ids.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    ids
}

/// 100,000 decisions handed over as fast as they come while the lake takes nothing: none is
/// lost (they wait on local disk); once the lake takes appends again, each is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lake_loses_no_decision() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Arc::new(Lake::open(&dir.path().join("lake")).unwrap());
    let store = Arc::new(Paused { lake: lake.clone(), paused: AtomicBool::new(true) });
    let config = DecisionLogConfig { segment_ms: 200, ..DecisionLogConfig::default() };
    let log = DecisionLog::start(&dir.path().join("spill"), store.clone(), config.clone()).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let started = std::time::Instant::now();
    for index in 0..100_000 {
        log.record(Entry::Record(Box::new(record(now, index))));
    }
    let handing = started.elapsed();
    assert_eq!(log.lost(), 0);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let waiting = std::fs::read_dir(dir.path().join("spill")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "ndjson")).count();
    assert!(waiting >= 1, "closed segments wait on disk while the lake is paused");
    assert!(lake.load_decisions().await.unwrap().is_empty());
    store.paused.store(false, Ordering::SeqCst);
    log.close(Duration::from_secs(60)).await;
    let ids = ids_in_lake(&lake).await;
    assert_eq!(ids.len(), 100_000);
    assert!(ids.values().all(|count| *count == 1));
    eprintln!("decisions: 100,000 handed over in {handing:?}");

    // a second log on the same directory is refused while the first runs
    let first = DecisionLog::start(&dir.path().join("spill2"), lake.clone(), config.clone()).unwrap();
    let second = DecisionLog::start(&dir.path().join("spill2"), lake.clone(), config);
    assert!(second.err().unwrap().to_string().contains("another process keeps its decision log"));
    first.close(Duration::from_secs(5)).await;
}

/// The queue holds records, however they are grouped: a batch's answers that would overfill it
/// are counted lost together, and a batch that fits is kept, a record per answer.
#[tokio::test]
async fn a_batch_is_queued_whole_or_counted_lost_whole() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Arc::new(Lake::open(&dir.path().join("lake")).unwrap());
    let config = DecisionLogConfig { queue: 3, ..DecisionLogConfig::default() };
    let log = DecisionLog::start(&dir.path().join("spill"), lake.clone(), config).unwrap();
    let answer: sellable_serving::Availability = serde_json::from_value(serde_json::json!({
        "sku": "SKU-1", "region": "EU", "qty": 1, "decision": "promise", "units": 1, "available": 3,
        "options": [{"node": "N-1", "units": 3, "p_fulfill": 0.97}], "plan": [{"node": "N-1", "units": 1}],
        "reasons": ["N-1: 3 unit(s)"], "rules_fired": [], "grade": "fresh", "degraded": false, "degraded_reasons": [],
        "freshness_ms": 12, "versions": {"batch_view": "b1", "speed_view": "s1", "model": "m1", "ruleset": null}
    }))
    .unwrap();
    let batch = |id: &str, items: usize| Entry::Answers { kind: "batch", request_id: id.into(), at: chrono::Utc::now().timestamp_millis(), answers: vec![answer.clone(); items] };
    log.record(batch("too-many", 4));
    assert_eq!(log.lost(), 4, "four answers do not fit a queue of three records");
    log.record(batch("fits", 3));
    log.record(batch("none", 0));
    assert_eq!(log.lost(), 4);
    log.close(Duration::from_secs(30)).await;
    let ids = ids_in_lake(&lake).await;
    assert_eq!(ids, [("fits".to_string(), 3)].into(), "one record per answer of the batch that fitted, none of the others");
}

/// What a crashed run left: a segment the lake already holds (the crash fell between the commit
/// and the delete), and a segment still open whose last line was cut. A new start appends the
/// whole lines once, skips the cut one (counted), and does not append the first segment again.
#[tokio::test]
async fn a_crashed_runs_segments_are_appended_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Arc::new(Lake::open(&dir.path().join("lake")).unwrap());
    let spill = dir.path().join("spill");
    std::fs::create_dir_all(&spill).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let stored: Vec<DecisionRecord> = (0..10).map(|i| record(now, i)).collect();
    lake.append_decisions(&stored, 7).await.unwrap();
    let lines = |records: &[DecisionRecord]| records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect::<String>();
    std::fs::write(spill.join(format!("{:020}.ndjson", 7)), lines(&stored)).unwrap();
    let open: Vec<DecisionRecord> = (10..25).map(|i| record(now, i)).collect();
    std::fs::write(spill.join(format!("{:020}.open", 8)), lines(&open) + "{\"at\":1,\"request_id\":\"cut-he").unwrap();
    let log = DecisionLog::start(&spill, lake.clone(), DecisionLogConfig::default()).unwrap();
    let registry = prometheus::Registry::new();
    log.register(&registry).unwrap();
    log.close(Duration::from_secs(30)).await;
    let ids = ids_in_lake(&lake).await;
    assert_eq!(ids.len(), 25, "{ids:?}");
    assert!(ids.values().all(|count| *count == 1), "{ids:?}");
    let torn = registry.gather().into_iter().find(|family| family.name() == "sellable_decisions_torn_total").unwrap();
    assert_eq!(torn.get_metric()[0].get_counter().get_value(), 1.0);
    assert_eq!(lake.last_decision_segment().await.unwrap(), Some(8));
    // retention drops by age
    let old = DecisionRecord { at: now - 40 * 86_400_000, request_id: "old".into(), ..Default::default() };
    lake.append_decisions(&[old], 9).await.unwrap();
    assert_eq!(lake.drop_decisions_before(now - 30 * 86_400_000).await.unwrap(), 1);
    assert_eq!(ids_in_lake(&lake).await.len(), 25);
}

/// A real `sellable serve --redis`: every answer it gave is in the lake with what explains it,
/// after the process was killed (SIGKILL) and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_decision_it_wrote() {
    let (_dir, lake) = live_marketplace().await;
    let (url, stream, namespace) = redis_names("decisions");
    let port = free_port();
    let mut server = serve_process(&lake, &url, &namespace, port).await;
    let (skus, _) = lake.load_catalog().await.unwrap();
    let client = crate::api();
    let mut answers = std::collections::HashMap::new();
    for (index, sku) in skus.iter().take(40).enumerate() {
        let id = format!("kill-{index}");
        let response = client.get(format!("http://127.0.0.1:{port}/v1/availability/{}?region=EU&qty=1", sku.sku)).header("x-request-id", &id).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.unwrap();
        answers.insert(id, answer);
    }
    // a batch's answers are logged one record each, under its request id; an unknown SKU's
    // error entry is not an answer
    let items: Vec<serde_json::Value> = skus.iter().take(4).map(|sku| serde_json::json!({"sku": sku.sku, "region": "EU", "qty": 1})).chain([serde_json::json!({"sku": "SKU-UNKNOWN", "region": "EU", "qty": 1})]).collect();
    let response = client.post(format!("http://127.0.0.1:{port}/v1/availability:batch")).header("x-request-id", "kill-batch").json(&serde_json::json!({"items": items})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // written to the spill file within 100 ms; then killed before any segment is closed
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.0.kill().unwrap();
    let _ = server.0.wait();
    let _server = serve_process(&lake, &url, &namespace, free_port()).await;
    let mut held = std::collections::HashMap::new();
    for _ in 0..100 {
        held = ids_in_lake(&lake).await;
        if answers.keys().all(|id| held.contains_key(id)) && held.contains_key("kill-batch") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in answers.keys() {
        assert_eq!(held.get(id), Some(&1), "{id}: {held:?}");
    }
    assert_eq!(held.get("kill-batch"), Some(&4), "{held:?}");
    // each record says what the answer said
    for batch in lake.load_decisions().await.unwrap() {
        let text = |name: &str| batch.column_by_name(name).unwrap().as_any().downcast_ref::<StringArray>().unwrap().clone();
        let (ids, decisions, options) = (text("request_id"), text("decision"), text("options"));
        let units = batch.column_by_name("units").unwrap().as_any().downcast_ref::<Int64Array>().unwrap().clone();
        for row in 0..batch.num_rows() {
            let Some(answer) = answers.get(ids.value(row)) else { continue };
            assert_eq!(decisions.value(row), answer["decision"].as_str().unwrap());
            assert_eq!(units.value(row), answer["units"].as_i64().unwrap());
            let logged: serde_json::Value = serde_json::from_str(options.value(row)).unwrap();
            assert_eq!(logged, answer["options"]);
        }
    }
    forget(&url, &stream, &namespace).await;
}
