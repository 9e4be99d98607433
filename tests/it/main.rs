//! End-to-end: gen → lake import → batch view → fold (real Redis, and the embedded store) →
//! REST. For every sku×node of a generated marketplace, the naive ATP served over HTTP must equal
//! the ATP of folding the whole event stream with `core` alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use sellable_batch::Lake;
use sellable_bench::{generate, SimConfig};
use sellable_core::event::{encode_json, read_event_file};
use sellable_core::{fold, Event, Fold, FoldConfig, Millis, NodeInfo};
use sellable_serving::{Availability, ModelBook, Serving};
use sellable_speed::{catch_up, CatchUpSource, SpeedView};

mod analytics;
mod cluster;
mod contract;
mod decisions;
mod objects;
mod reservations;

/// The API key the `sellable` processes of these tests admit (every scope), set by the
/// configuration's environment layer as an operator's file would.
const TEST_KEY: &str = "sk_test-key-of-every-scope";

fn keyed(command: &mut std::process::Command) -> &mut std::process::Command {
    let entry = format!("[{{ name = \"test\", scopes = [\"read\", \"reserve\", \"ingest\", \"admin\"], sha256 = \"{}\" }}]", sellable_serving::door::digest(TEST_KEY));
    command.env("SELLABLE__SERVE__KEYS", entry)
}

/// A client that sends [`TEST_KEY`].
fn api() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {TEST_KEY}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

const DAY: Millis = 86_400_000;

/// A program of the project's Python environment (`.deps/venv/bin/NAME`), which must be there:
/// `scripts/setup.sh` installs what `installs` says.
fn venv_program(name: &str, installs: &str) -> std::path::PathBuf {
    let program = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/venv/bin").join(name);
    assert!(program.exists(), "{} is missing: run scripts/setup.sh (it installs {installs})", program.display());
    program
}

struct Marketplace {
    _dir: tempfile::TempDir,
    lake: Lake,
    cutoff: Millis,
    all_events: Vec<Event>,
    /// The events after the cutoff as JSON Lines, with one malformed line at line 3.
    after_cutoff_jsonl: std::path::PathBuf,
    after_cutoff: Vec<Event>,
}

/// Generates `config`'s marketplace in `dir` and imports its catalog and events into a lake there.
async fn generated_lake(config: &SimConfig, dir: &std::path::Path) -> (sellable_bench::SimSummary, Lake) {
    let summary = generate(config, &dir.join("gen")).unwrap();
    let lake = Lake::open(&dir.join("lake")).unwrap();
    let skus = sellable_core::catalog::read_parquet(&summary.paths.skus, sellable_core::catalog::skus_from_batch).unwrap();
    let nodes = sellable_core::catalog::read_parquet(&summary.paths.nodes, sellable_core::catalog::nodes_from_batch).unwrap();
    lake.import_catalog(&skus, &nodes).await.unwrap();
    lake.import_events(read_event_file(&summary.paths.events).unwrap()).await.unwrap();
    (summary, lake)
}

async fn marketplace() -> Marketplace {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig { seed: 7, skus: 120, nodes: 12, days: 3.0, ..SimConfig::default() };
    let (summary, lake) = generated_lake(&config, dir.path()).await;
    let all_events: Vec<Event> = read_event_file(&summary.paths.events).unwrap().map(Result::unwrap).collect();
    let cutoff = summary.end - DAY;
    lake.compute_batch_view(cutoff, FoldConfig::default()).await.unwrap();

    let after_cutoff: Vec<Event> = lake.events_after(cutoff).await.unwrap().into_iter().map(Result::unwrap).collect();
    assert!(after_cutoff.len() > 500, "the speed view should have real work: {}", after_cutoff.len());
    let mut lines: Vec<String> = after_cutoff.iter().map(encode_json).collect();
    lines.insert(2, r#"{"event_id":"broken","ts":"2026-01-01T00:00:00Z","sku":"SKU-000001","node":"WH-0001","kind":"count"}"#.into());
    let after_cutoff_jsonl = dir.path().join("after_cutoff.jsonl");
    std::fs::write(&after_cutoff_jsonl, lines.join("\n")).unwrap();
    Marketplace { _dir: dir, lake, cutoff, all_events, after_cutoff_jsonl, after_cutoff }
}

/// Publishes the lake's batch view into `speed`'s store, as an epoch does; returns its metadata.
async fn publish(lake: &Lake, speed: &SpeedView) -> sellable_core::BatchMeta {
    let (batch, rows) = lake.load_published().await.unwrap();
    speed.publish(&batch, rows).await.unwrap();
    batch
}

/// Serves on a free loopback port, answering as of `now`; returns the base URL and the server.
async fn serve(lake: &Lake, speed: Arc<SpeedView>, now: Millis) -> (String, Arc<Serving>) {
    serve_with(lake, speed, now, Arc::new(ModelBook::none())).await
}

async fn serve_with(lake: &Lake, speed: Arc<SpeedView>, now: Millis, models: Arc<ModelBook>) -> (String, Arc<Serving>) {
    let rules = Arc::new(sellable_serving::RuleBook::empty(sellable_dsl::Schema::standard()));
    serve_with_rules(lake, speed, now, models, rules).await
}

async fn serve_with_rules(lake: &Lake, speed: Arc<SpeedView>, now: Millis, models: Arc<ModelBook>, rules: Arc<sellable_serving::RuleBook>) -> (String, Arc<Serving>) {
    let nodes = lake.load_nodes().await.unwrap();
    let batch = publish(lake, &speed).await;
    let serving = Serving::new(nodes, batch, speed, rules).with_models(models);
    let serving = Arc::new(serving.with_clock(sellable_serving::Clock::Fixed(now)));
    serving.refresh_watermarks().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = serving.clone().router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{address}"), serving)
}

/// Nodes silent for longer than their feed SLA at `now`: answers promise nothing from them.
fn stale_nodes(events: &[Event], nodes: &[NodeInfo], now: Millis) -> std::collections::BTreeSet<String> {
    let marks = sellable_core::fold::watermarks(events, FoldConfig::default());
    nodes
        .iter()
        .filter(|node| marks.get(&node.node).is_some_and(|arrived| now - arrived > node.feed_sla_ms))
        .map(|node| node.node.clone())
        .collect()
}

/// Asks for every SKU in every country and compares each node's units with the oracle.
/// Returns how many sku×nodes had units, so callers can check the comparison was not vacuous.
async fn check_every_answer(base: &str, oracle: &Fold, nodes: &[NodeInfo], stale: &std::collections::BTreeSet<String>) -> usize {
    let client = reqwest::Client::new();
    let mut countries: Vec<&str> = nodes.iter().map(|node| node.country.as_str()).collect();
    countries.sort();
    countries.dedup();
    let mut skus: Vec<&str> = oracle.states.keys().map(|(sku, _)| sku.as_str()).collect();
    skus.dedup();
    let mut with_units = 0;
    for sku in skus {
        for country in &countries {
            let url = format!("{base}/v1/availability/{sku}?region={country}&qty=1");
            let answer: Availability = client.get(&url).send().await.unwrap().json().await.unwrap();
            let served: BTreeMap<String, i64> = answer.options.iter().map(|o| (o.node.clone(), o.units)).collect();
            let expected: BTreeMap<String, i64> = nodes
                .iter()
                .filter(|node| node.country == *country && !stale.contains(&node.node))
                .filter_map(|node| Some((node.node.clone(), oracle.state(sku, &node.node)?.atp())))
                .filter(|(_, atp)| *atp > 0)
                .collect();
            assert_eq!(served, expected, "{url}");
            assert_eq!(answer.available, expected.values().sum::<i64>(), "{url}");
            with_units += served.len();
        }
    }
    with_units
}

/// Bad requests get a JSON error with the right status, naming what is wrong.
/// A listing page's batch answers each item as the single request does, in order; an unknown SKU
/// or region is an error entry of its own; a batch of more than 200 items is a 400.
async fn check_batch(base: &str, oracle: &Fold, nodes: &[NodeInfo]) {
    let client = reqwest::Client::new();
    let mut items: Vec<(String, String)> = sellable_bench::stocked_requests(oracle, nodes, 150);
    items.insert(3, ("SKU-NOPE".into(), items[0].1.clone()));
    items.insert(7, (items[0].0.clone(), "ATLANTIS".into()));
    items.push(items[1].clone());
    let body = serde_json::json!({ "items": items.iter().map(|(sku, region)| serde_json::json!({ "sku": sku, "region": region, "qty": 2 })).collect::<Vec<_>>() });
    let response = client.post(format!("{base}/v1/availability:batch")).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answers: serde_json::Value = response.json().await.unwrap();
    let answers = answers["answers"].as_array().unwrap();
    assert_eq!(answers.len(), items.len());
    for ((sku, region), answer) in items.iter().zip(answers) {
        let single: serde_json::Value = client.get(format!("{base}/v1/availability/{sku}?region={region}&qty=2")).send().await.unwrap().json().await.unwrap();
        assert_eq!(answer, &single, "{sku} in {region}");
    }
    assert_eq!(answers[3]["error"], "unknown_sku");
    assert_eq!(answers[7]["error"], "bad_request");
    let too_many = serde_json::json!({ "items": vec![serde_json::json!({ "sku": items[0].0, "region": items[0].1 }); 201] });
    let response = client.post(format!("{base}/v1/availability:batch")).json(&too_many).send().await.unwrap();
    assert_eq!(response.status(), 400);
}

async fn check_errors(base: &str) {
    let cases = [
        ("/v1/availability/NO-SUCH-SKU?region=DE&qty=1", 404, "unknown_sku", "unknown sku 'NO-SUCH-SKU'"),
        ("/v1/availability/SKU-000001?region=DE&qty=two", 400, "bad_request", "qty must be an integer from 1 to 1000000, got 'two'"),
        ("/v1/availability/SKU-000001?region=DE&qty=0", 400, "bad_request", "qty must be an integer from 1 to 1000000, got '0'"),
        ("/v1/availability/SKU-000001?qty=1", 400, "bad_request", "region is required, e.g. ?region=DE"),
        ("/v1/availability/SKU-000001?region=ATLANTIS", 400, "bad_request", "unknown region 'ATLANTIS': no node serves it"),
    ];
    for (path, status, error, message) in cases {
        let response = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body, serde_json::json!({ "error": error, "message": message }), "{path}");
    }
}

async fn end_to_end(speed: SpeedView) {
    let market = marketplace().await;
    let oracle = fold(&market.all_events, FoldConfig::default());
    let (_, nodes) = market.lake.load_catalog().await.unwrap();

    // The speed view starts at the cutoff knowing the batch view's recent event ids, and folds a
    // file of the events after it: the malformed line is reported with its line number; every
    // other event is folded.
    let file = CatchUpSource::File(&market.after_cutoff_jsonl);
    let caught = catch_up(&market.lake, &speed, market.cutoff, file, None).await.unwrap();
    let source = format!("file:{}", market.after_cutoff_jsonl.display());
    let report = caught.report;
    assert_eq!((caught.read, caught.held_back.len()), (market.after_cutoff.len() + 1, 0));
    let rejected: Vec<String> = report.rejected.iter().map(ToString::to_string).collect();
    assert_eq!(rejected, [r#"line 3: field "qty": missing"#]);
    // ... and dead-lettered, like the events stuck past the lateness
    let letters = speed.dead_letters(1_000).await.unwrap();
    assert!(letters.iter().any(|letter| letter.entry == format!("{source} line 3") && letter.error.contains("qty")), "{letters:?}");
    assert_eq!(letters.iter().filter(|letter| letter.error.starts_with("too late")).count() as u64, report.stats.too_late);
    assert!(speed.watermarks().await.unwrap().sources.contains_key(&source));
    assert!(report.stats.applied > 500, "{:?}", report.stats);

    let describe = speed.describe();
    let speed = Arc::new(speed);
    // answers as of the end of the simulation: a few quiet nodes are beyond their feed SLA
    let now = market.cutoff + DAY;
    let stale = stale_nodes(&market.all_events, &nodes, now);
    assert!(stale.len() < nodes.len() / 2, "most feeds are fresh at the end: {stale:?}");
    let (base, _) = serve(&market.lake, speed.clone(), now).await;
    check_errors(&base).await;
    let with_units = check_every_answer(&base, &oracle, &nodes, &stale).await;
    assert!(with_units > 100, "too few sku×nodes with stock to be a real check: {with_units} ({describe})");
    check_batch(&base, &oracle, &nodes).await;

    // Replaying the post-cutoff events twice, shuffled, and redelivering events of the batch
    // view after the cutoff, changes no answer.
    let mut shuffled = market.after_cutoff.clone();
    // (restamped on redelivery, and still within the lateness: only the remembered ids stop them)
    let redelivered: Vec<Event> = market
        .all_events
        .iter()
        .filter(|e| e.arrival() <= market.cutoff && e.ts > market.cutoff - 3_600_000)
        .map(|e| Event { arrived: Some(market.cutoff + 1_000), ..e.clone() })
        .collect();
    assert!(redelivered.len() > 10, "{}", redelivered.len());
    shuffled.extend(redelivered);
    shuffled.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
    for _ in 0..2 {
        let replay = sellable_core::FoldStats::of(&speed.fold(&shuffled, "replay").await.unwrap());
        assert_eq!(replay.applied, 0, "{replay:?}");
    }
    assert_eq!(check_every_answer(&base, &oracle, &nodes, &stale).await, with_units);

    // Ten days later with no news, every feed is beyond its SLA: nothing is promised, and the
    // answer says why.
    let (silent, _) = serve(&market.lake, speed.clone(), now + 10 * DAY).await;
    let (sku, node) = oracle.states.iter().find(|(_, state)| state.atp() > 0).map(|(key, _)| key.clone()).unwrap();
    let country = &nodes.iter().find(|n| n.node == node).unwrap().country;
    let answer: Availability =
        reqwest::get(format!("{silent}/v1/availability/{sku}?region={country}&qty=1")).await.unwrap().json().await.unwrap();
    assert_eq!((answer.available, answer.decision), (0, sellable_core::Verdict::Deny));
    let about_node = |r: &String| r.starts_with(&format!("feed of {node} is ")) && r.ends_with("nothing promised from it");
    assert!(answer.degraded_reasons.iter().any(about_node), "{:?}", answer.degraded_reasons);
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    // each label's counter is there from the start: the promises answered above are counted
    let promised = metrics.lines().find_map(|line| line.strip_prefix("sellable_answers_total{decision=\"promise\"} ")).and_then(|count| count.parse::<u64>().ok());
    assert!(promised.is_some_and(|count| count > 0), "{metrics}");
    assert!(metrics.contains(&format!("sellable_node_feed_lag_seconds{{node=\"{node}\"}}")), "{metrics}");

    // Events posted over HTTP are folded at once; malformed items are listed, the rest applied.
    let (sku, node) = oracle.states.keys().find(|(_, node)| !stale.contains(node)).unwrap().clone();
    let country = &nodes.iter().find(|n| n.node == node).unwrap().country;
    let url = format!("{base}/v1/availability/{sku}?region={country}&qty=1");
    let before: Availability = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let last_ts = market.all_events.iter().map(|e| e.ts).max().unwrap();
    let receipt = Event {
        event_id: "posted-receipt".into(),
        ts: last_ts + 1,
        sku: sku.clone(),
        node: node.clone(),
        kind: sellable_core::EventKind::Receipt,
        qty: 7,
        order_id: None,
        arrived: Some(last_ts + 2),
    };
    let body = format!("{}\n{{\"event_id\": 1}}\n{}\n", encode_json(&receipt), encode_json(&receipt));
    let response = reqwest::Client::new().post(format!("{base}/v1/events")).body(body).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let accepted: sellable_serving::EventsAccepted = response.json().await.unwrap();
    assert_eq!((accepted.accepted, accepted.duplicates), (1, 1));
    assert_eq!(accepted.rejected.len(), 1);
    assert_eq!((accepted.rejected[0].item, accepted.rejected[0].error.as_str()), (2, r#"field "kind": missing"#));
    let after: Availability = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(after.available, before.available + 7, "{url}");

    // The door: a count dated 9999-12-31, receipts for a node and a SKU the catalog does not
    // know and a receipt of a million units reusing the first receipt's id are each refused with
    // the reason and change no answer; a receipt claiming to have arrived in 9999 is taken with
    // the server's clock as its arrival instead.
    let far = 253_402_214_399_000;
    let refused = [
        Event { event_id: "from-the-future".into(), kind: sellable_core::EventKind::Count, qty: 1_000, ts: far, arrived: None, ..receipt.clone() },
        Event { event_id: "claims-a-late-arrival".into(), arrived: Some(far), ..receipt.clone() },
        Event { event_id: "ghost-node".into(), node: "GHOST-NODE".into(), ..receipt.clone() },
        Event { event_id: "ghost-sku".into(), sku: "GHOST-SKU".into(), ..receipt.clone() },
        Event { qty: 1_000_000, ..receipt.clone() },
    ];
    let body: String = refused.iter().map(|event| encode_json(event) + "\n").collect();
    let response = reqwest::Client::new().post(format!("{base}/v1/events")).body(body).send().await.unwrap();
    let accepted: sellable_serving::EventsAccepted = response.json().await.unwrap();
    let reasons: Vec<&str> = accepted.rejected.iter().map(|r| r.error.as_str()).collect();
    assert_eq!(accepted.accepted, 1, "{reasons:?}");
    assert!(reasons[0].starts_with("from the future: ts 253402214399000 is "), "{reasons:?}");
    assert_eq!(reasons[1..3], ["unknown node 'GHOST-NODE': not in the catalog", "unknown sku 'GHOST-SKU': not in the catalog"]);
    assert_eq!(reasons[3], format!("conflict: event_id 'posted-receipt' of sku '{sku}' was folded before with different content; this copy is not"));
    assert_eq!(accepted.conflicts, 1);
    let stamped: Availability = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!((stamped.available, stamped.freshness_ms), (after.available + 7, Some(0)), "arrived is the server's now: {url}");
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("GHOST-NODE"), "no metric series for an unknown node");
    assert!(metrics.contains("sellable_posted_events_total{outcome=\"future\"} 1"), "{metrics}");
    assert!(metrics.contains("sellable_posted_events_total{outcome=\"unknown\"} 2"), "{metrics}");
    assert!(metrics.contains("sellable_posted_events_total{outcome=\"conflict\"} 1"), "{metrics}");

    // orders' outcomes are counted once each, for the realised oversell rate beside the target
    let outcome = |id: &str, kind, order: Option<&str>| Event { event_id: id.into(), kind, qty: 1, order_id: order.map(Into::into), arrived: None, ..receipt.clone() };
    let posted = [
        outcome("shipped", sellable_core::EventKind::Ship, Some("O-1")),
        outcome("shipped", sellable_core::EventKind::Ship, Some("O-1")),
        outcome("shorted", sellable_core::EventKind::Short, Some("O-2")),
        outcome("no-order", sellable_core::EventKind::Ship, None),
    ];
    let body: String = posted.iter().map(|event| encode_json(event) + "\n").collect();
    let response = reqwest::Client::new().post(format!("{base}/v1/events")).body(body).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("sellable_order_outcomes_total{outcome=\"ship\"} 1\n"), "{metrics}");
    assert!(metrics.contains("sellable_order_outcomes_total{outcome=\"short\"} 1\n"), "{metrics}");
    assert!(metrics.contains("sellable_model_target_oversell_rate 0\n"), "no live model: {metrics}");
    speed.clear().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_atp_equals_core_fold_with_the_embedded_store() {
    end_to_end(SpeedView::memory(FoldConfig::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_atp_equals_core_fold_with_redis() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let namespace = format!("sellable-test-e2e-{}", std::process::id());
    let speed = SpeedView::redis(&url, &namespace, FoldConfig::default()).await.unwrap_or_else(|error| {
        panic!("this test needs a Redis server at {url} ({error}); start one with `redis-server --daemonize yes` or set REDIS_URL")
    });
    speed.clear().await.unwrap();
    end_to_end(speed).await;
}

/// Crash test: `sellable fold --stream` is killed with SIGKILL at random points while folding a
/// stream of a million events (override with SELLABLE_CRASH_EVENTS for a quick run), restarted
/// each time; at the end the Redis state equals the `core` fold of the stream exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_fold_workers_neither_lose_nor_double_count_events() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let target: usize = std::env::var("SELLABLE_CRASH_EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    // 80-115 events per SKU over a week with the default demand: generate enough, keep `target`
    let config = SimConfig { seed: 99, skus: (target / 70).max(50), nodes: 200, days: 7.0, ..SimConfig::default() };
    let summary = generate(&config, dir.path()).unwrap();
    let mut events: Vec<Event> = read_event_file(&summary.paths.events).unwrap().map(Result::unwrap).collect();
    assert!(events.len() >= target, "{} events for a target of {target}", events.len());
    events.truncate(target);

    let id = std::process::id();
    let (stream, namespace) = (format!("sellable-test-crash-{id}"), format!("sellable-test-crash-{id}"));
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(&stream).arg(format!("{stream}:dead")).query_async(&mut connection).await.unwrap();
    let published = sellable_speed::stream::publish(&url, &stream, events.iter().map(encode_json)).await.unwrap();
    assert_eq!(published, events.len() as u64);
    let speed = SpeedView::redis(&url, &namespace, FoldConfig::default()).await.unwrap();
    speed.clear().await.unwrap();

    let fold = ["fold", "--redis", &url, "--namespace", &namespace, "--stream", &stream, "--consumer", "crashy"];
    kill_repeatedly(&fold, 5, 500..3_000, 5).await;
    let status = run_until_idle(&fold);
    assert!(status.success());

    let oracle = fold_all(&events);
    let mut skus: Vec<&str> = oracle.states.keys().map(|(sku, _)| sku.as_str()).collect();
    skus.dedup();
    for sku in skus {
        let expected: Vec<(String, sellable_core::NodeState)> = oracle
            .states
            .range((sku.to_string(), String::new())..)
            .take_while(|((s, _), _)| s == sku)
            .map(|((_, node), state)| (node.clone(), state.clone()))
            .collect();
        assert_eq!(speed.sku_states(sku).await.unwrap(), expected, "sku {sku}");
    }
    let pending: redis::Value = redis::cmd("XPENDING").arg(&stream).arg("sellable-fold").query_async(&mut connection).await.unwrap();
    assert!(matches!(&pending, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(0))), "nothing left pending: {pending:?}");
    speed.clear().await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(&stream).arg(format!("{stream}:dead")).query_async(&mut connection).await.unwrap();
}

/// Runs `sellable ARGS` `times` times, each killed with SIGKILL after a random time in `window`
/// (milliseconds, from `seed`).
async fn kill_repeatedly(args: &[&str], times: usize, window: std::ops::Range<u64>, seed: u64) {
    use rand::Rng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..times {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sellable"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(rng.gen_range(window.clone()))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
}

/// Runs `sellable ARGS --until-idle 1` to its end.
fn run_until_idle(args: &[&str]) -> std::process::ExitStatus {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sellable"));
    command.args(args).args(["--until-idle", "1"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    command.status().unwrap()
}

fn fold_all(events: &[Event]) -> Fold {
    fold(events, FoldConfig::default())
}

/// A redis-server of the test's own, started as `scripts/redis-durable.sh` starts it (every write
/// fsynced to the append-only file; a torn file repaired by dropping its incomplete last write),
/// that the test can kill and restart.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    process: Option<std::process::Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = free_port();
        let mut redis = OwnRedis { port, dir: tempfile::tempdir().unwrap(), process: None };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    fn restart(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis-durable.sh");
        let start_log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("start.log")).unwrap();
        let mut process = std::process::Command::new("bash")
            .arg(script)
            .arg(self.dir.path().join("data"))
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"))
            .stdout(std::process::Stdio::null())
            .stderr(start_log)
            .spawn()
            .expect("bash must be installed");
        // the repair of a torn file reads it all first
        for _ in 0..600 {
            if let Some(status) = process.try_wait().unwrap() {
                panic!("redis-server on port {} exited ({status}):\n{}\n{}", self.port, self.start_log(), self.log());
            }
            if self.connection().and_then(|mut c| redis::cmd("PING").query::<String>(&mut c)).is_ok() {
                self.process = Some(process);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("redis-server on port {} did not start within 30 s:\n{}", self.port, self.start_log());
    }

    /// What the server logged, over all its restarts.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// What the start script said, over all restarts (it speaks only to repair a torn file).
    fn start_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("start.log")).unwrap_or_default()
    }

    /// The append-only file Redis appends to now.
    fn last_aof(&self) -> std::path::PathBuf {
        // appendonly.aof.<n>.incr.aof: the highest n
        let number = |path: &std::path::PathBuf| -> u64 {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            name.strip_prefix("appendonly.aof.").and_then(|rest| rest.strip_suffix(".incr.aof")).map_or(0, |n| n.parse().unwrap())
        };
        let files = std::fs::read_dir(self.dir.path().join("data/appendonlydir")).unwrap().map(|entry| entry.unwrap().path());
        files.filter(|path| number(path) > 0).max_by_key(number).expect("an incremental append-only file")
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().unwrap(); // SIGKILL: no chance to save anything more
            process.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A crash while Redis writes can tear the append-only file's last command. A Lua script that
/// writes several keys (as the speed view's scripts do) is stored as a MULTI … EXEC block; Redis
/// 7's own repair of a torn file cuts the tail but keeps the block's MULTI, and the next restart
/// then loses what was acknowledged after it (checked by hand against Redis 7.0.15 started
/// without the script). `scripts/redis-durable.sh` drops the torn block whole.
#[test]
fn a_torn_write_in_the_append_only_file_costs_nothing_acknowledged_over_two_restarts() {
    let mut redis = OwnRedis::start();
    let get = |connection: &mut redis::Connection, key: &str| redis::cmd("GET").arg(key).query::<Option<String>>(connection).unwrap();
    let mut connection = redis.connection().unwrap();
    for value in ["1", "2"] {
        let script = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return 1";
        redis::cmd("EVAL").arg(script).arg(2).arg("state").arg("token").arg(value).query::<i64>(&mut connection).unwrap();
    }
    redis.kill();
    // as if the crash came while the second script's block was written: its EXEC and the end of
    // its second SET never reached the file
    let aof = redis.last_aof();
    let file = std::fs::OpenOptions::new().write(true).open(&aof).unwrap();
    file.set_len(file.metadata().unwrap().len() - 30).unwrap();
    redis.restart();
    let mut connection = redis.connection().unwrap();
    assert_eq!((get(&mut connection, "state"), get(&mut connection, "token")), (Some("1".into()), Some("1".into())), "the torn write is not applied");
    assert!(redis.start_log().contains("torn"), "{}", redis.start_log());
    // acknowledged after the repair: must survive the next restart
    redis::cmd("SET").arg("later").arg("3").query::<()>(&mut connection).unwrap();
    redis.kill();
    redis.restart();
    let mut connection = redis.connection().unwrap();
    let after = ["state", "token", "later"].map(|key| get(&mut connection, key));
    assert_eq!(after, [Some("1".into()), Some("1".into()), Some("3".into())], "{}\n{}", redis.start_log(), redis.log());
}

/// `sellable fold` warns of a Redis whose append-only file would be repaired that way.
#[tokio::test]
async fn fold_warns_of_a_redis_that_would_repair_a_torn_append_only_file_unsafely() {
    let redis = OwnRedis::start();
    let url = redis.url();
    assert_eq!(sellable_speed::persistence_hazard(&url).await, None, "started by scripts/redis-durable.sh");
    let mut connection = redis.connection().unwrap();
    redis::cmd("CONFIG").arg("SET").arg("aof-load-truncated").arg("yes").query::<()>(&mut connection).unwrap();
    let hazard = sellable_speed::persistence_hazard(&url).await.expect("a hazard");
    assert!(hazard.contains("aof-load-truncated yes") && hazard.contains("redis-durable.sh"), "{hazard}");
    let fold = std::process::Command::new(env!("CARGO_BIN_EXE_sellable"))
        .args(["fold", "--redis", &url, "--stream", "inventory", "--until-idle", "0.3"])
        .output()
        .unwrap();
    assert!(fold.status.success(), "{}", String::from_utf8_lossy(&fold.stderr));
    assert!(String::from_utf8_lossy(&fold.stderr).contains(&hazard), "{}", String::from_utf8_lossy(&fold.stderr));
}

/// The same with Redis itself killed and restarted (started by `scripts/redis-durable.sh`: every
/// write fsynced to the append-only file) while a fold worker consumes the stream: the worker
/// waits for it, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_stream_loses_nothing_with_persistence_on() {
    use rand::Rng;
    let mut redis = OwnRedis::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig { seed: 41, skus: 2_000, nodes: 100, days: 7.0, ..SimConfig::default() };
    let summary = generate(&config, dir.path()).unwrap();
    let events: Vec<Event> = read_event_file(&summary.paths.events).unwrap().map(Result::unwrap).collect();
    let stream = "inventory";
    sellable_speed::stream::publish(&url, stream, events.iter().map(encode_json)).await.unwrap();

    // the worker's log, shown if the state is wrong
    let log_path = dir.path().join("worker.log");
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_sellable"))
        .args(["fold", "--redis", &url, "--namespace", "crash", "--stream", stream, "--until-idle", "3"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // KILL_SEED=<n> picks other kill times (to run the test in a loop)
    let seed = std::env::var("KILL_SEED").map_or(8, |seed| seed.parse().expect("KILL_SEED is a number"));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(rng.gen_range(300..1_500))).await;
        redis.kill();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        redis.restart();
    }
    assert!(worker.wait().unwrap().success());

    let speed = SpeedView::redis(&url, "crash", FoldConfig::default()).await.unwrap();
    let oracle = fold_all(&events);
    let mut wrong = Vec::new();
    for ((sku, node), state) in &oracle.states {
        let states = speed.sku_states(sku).await.unwrap();
        let served = states.iter().find(|(n, _)| n == node).map(|(_, s)| s);
        if served != Some(state) {
            wrong.push(format!("{sku} at {node}: redis has {served:?}, the fold of the stream {state:?}"));
        }
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(wrong.is_empty(), "{} of {} sku×nodes wrong, first: {:#?}\nworker log:\n{log}\nredis log:\n{}", wrong.len(), oracle.states.len(), &wrong[..wrong.len().min(3)], redis.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_lists_drift_and_repair_brings_redis_back_to_the_lake() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let namespace = format!("sellable-test-reconcile-{}", std::process::id());
    let market = marketplace().await;
    let speed = SpeedView::redis(&url, &namespace, FoldConfig::default()).await.unwrap();
    speed.clear().await.unwrap();
    catch_up(&market.lake, &speed, market.cutoff, CatchUpSource::Log, None).await.unwrap();

    // Drift: one counter bumped behind the engine's back, one sku×node that should not exist.
    let (sku, node) = {
        let first = market.after_cutoff.first().unwrap();
        (first.sku.clone(), first.node.clone())
    };
    speed.replace(&sku, "GHOST-NODE", Some(&sellable_core::NodeState { reserved: 1, ..Default::default() })).await.unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let states = format!("{namespace}:{{p{}}}:states", sellable_speed::partition(&sku, sellable_speed::PARTITIONS));
    let stored: Vec<u8> = redis::cmd("HGET").arg(&states).arg(&sku).query_async(&mut connection).await.unwrap();
    let mut bumped = sellable_speed::sku_state::SkuState::decode(&stored).unwrap();
    bumped.nodes.get_mut(&node).unwrap().reserved += 5;
    let _: i64 = redis::cmd("HSET").arg(&states).arg(&sku).arg(bumped.encode(None)).query_async(&mut connection).await.unwrap();

    let reconcile = |repair: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_sellable"));
        command.args(["reconcile", "--redis", &url, "--namespace", &namespace, "--lake"]).arg(market.lake.location());
        if repair {
            command.arg("--repair");
        }
        command.output().unwrap()
    };
    let found = reconcile(false);
    assert!(!found.status.success(), "drift must fail the check");
    let report = String::from_utf8(found.stdout).unwrap();
    assert_eq!(report.lines().count(), 2, "{report}");
    assert!(report.contains(&format!("{sku} at GHOST-NODE: redis has on_hand 0 reserved 1 held 0 atp 0; the lake says nothing")), "{report}");
    assert!(report.contains(&format!("{sku} at {node}: redis has")), "{report}");

    let repaired = reconcile(true);
    assert!(repaired.status.success());
    assert!(String::from_utf8(repaired.stdout).unwrap().contains("2 sku×node(s) repaired"));
    let clean = reconcile(false);
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));
    assert_eq!(String::from_utf8(clean.stdout).unwrap().trim(), "reconcile: the speed view matches the lake");
    speed.clear().await.unwrap();
}

/// Training-serving skew: for a sample of orders, the feature vector serving computes (its batch
/// view and feature store as of the row's cutoff, merged with an embedded speed view fed the
/// events that arrived after the cutoff and before the order) equals the training row bit for bit.
#[tokio::test]
async fn serving_computes_the_training_rows_feature_vectors_bit_for_bit() {
    let market = marketplace().await;
    let config = FoldConfig::default();
    let start = market.cutoff - DAY;
    let progress = sellable_batch::Progress::hidden();
    market.lake.compute_features(&[start, market.cutoff], config, &progress).await.unwrap();
    let end = market.all_events.iter().map(|e| e.ts).max().unwrap() + 1;
    let (rows, _, summary) = market.lake.build_trainset(start + 1, end, config, &progress).await.unwrap();
    assert!(rows.len() > 200 && summary.positives > 0, "{summary:?}");
    let sample: Vec<_> = rows.iter().step_by(rows.len() / 24).collect();
    let mut checked = 0;
    for cutoff in [start, market.cutoff] {
        market.lake.compute_batch_view(cutoff, config).await.unwrap();
        for row in sample.iter().filter(|row| row.cutoff == cutoff) {
            // what was known before the order: arrived before its time
            let speed = SpeedView::memory(config);
            catch_up(&market.lake, &speed, cutoff, CatchUpSource::Log, Some(row.ts - 1)).await.unwrap();
            let (base, serving) = serve(&market.lake, Arc::new(speed), row.ts).await;
            let served = serving.features(&row.sku, &row.node, row.qty, row.ts).await.unwrap();
            let bits = |values: &[f64]| values.iter().map(|value| value.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&served), bits(&row.features), "order {} at {}:\n{served:?}\n{:?}", row.order_id, row.ts, row.features);
            // the REST endpoint says the same, by name (serde_json's default float parsing may
            // differ in the last bit, so JSON is compared to 1e-12)
            let url = format!("{base}/v1/features/{}?node={}&qty={}", row.sku, row.node, row.qty);
            let named: serde_json::Map<String, serde_json::Value> = reqwest::get(url).await.unwrap().json().await.unwrap();
            for (name, value) in sellable_core::features::names().into_iter().zip(&row.features) {
                match named[name].as_f64() {
                    None => assert!(value.is_nan(), "{name}: null for {value}"),
                    Some(json) => assert!((json - value).abs() <= 1e-12 * value.abs().max(1.0), "{name}: {json} vs {value}"),
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
}

/// A marketplace of 8 days with features as of every midnight and a training set of the orders
/// of days 2–8, trained by the training job with the default configuration but for its windows
/// (2 validation days, 3 held-out days: the default's 3 and 5 need 9 days) and registered as v1,
/// not live.
struct Trained {
    _dir: tempfile::TempDir,
    lake: Lake,
    registry: sellable_models::Registry,
    registered: sellable_models::Registered,
    end: Millis,
}

async fn trained_marketplace() -> Trained {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig { seed: 11, skus: 300, nodes: 16, days: 8.0, ..SimConfig::default() };
    let windows = sellable_models::TrainConfig { validation_days: 2, test_days: 3, ..sellable_models::TrainConfig::default() };
    let (end, lake, registry, registered, rows, rounds) = trained_on(&config, &windows, dir.path()).await;
    assert!(rounds > registered.fitted.model.rounds, "early stopping ran past the best round");
    assert_eq!((registered.version.as_str(), registered.orders), ("v1", rows));
    assert_eq!(registry.live().unwrap(), None, "not promoted");
    Trained { _dir: dir, lake, registry, registered, end }
}

/// A marketplace generated with `config` in `dir`, its features as of every midnight, a
/// training set of its orders from the first, and the training job with the configuration
/// `train`, registered (not promoted): the marketplace's end, the lake, the registry, what
/// was registered, the training set's rows and the rounds trained.
async fn trained_on(config: &SimConfig, train: &sellable_models::TrainConfig, dir: &std::path::Path) -> (Millis, Lake, sellable_models::Registry, sellable_models::Registered, usize, u32) {
    let (summary, lake) = generated_lake(config, dir).await;
    let start = config.start - config.start.rem_euclid(DAY) + DAY;
    let midnights: Vec<Millis> = (start..summary.end).step_by(DAY as usize).collect();
    let progress = sellable_batch::Progress::hidden();
    lake.compute_features(&midnights, FoldConfig::default(), &progress).await.unwrap();
    let (rows, lineage, _) = lake.build_trainset(start, summary.end, FoldConfig::default(), &progress).await.unwrap();
    lake.write_trainset(&rows, &lineage).await.unwrap();
    let set = lake.load_trainset().await.unwrap();
    let registry = sellable_models::Registry::open(&dir.join("models")).unwrap();
    let job = sellable_models::TrainJob { set: &set, config: train, code_version: "test".into() };
    let mut rounds = 0;
    let registered = job.run(&registry, false, |_| rounds += 1).unwrap();
    (summary.end, lake, registry, registered, rows.len(), rounds)
}

/// The default configuration on a 14-day marketplace (1000 SKUs, 40 nodes, of a seed no other
/// test uses), five held-out days, every choice made before them: against the static safety
/// stock that denied no more shipped orders than the model on the validation days, the model
/// oversells at most half as many orders; against the one that oversold no more there, it denies
/// fewer shipped orders; on the held-out days its calibration error is under 0.02, its mean
/// predicted short probability within 20% of the observed rate, and the report shows both day by
/// day.
async fn holds_on_fourteen_days(seed: u64, dynamics: sellable_bench::Dynamics) {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig { seed, skus: 1000, nodes: 40, days: 14.0, dynamics, ..SimConfig::default() };
    let (_, _, registry, registered, _, _) = trained_on(&config, &sellable_models::TrainConfig::default(), dir.path()).await;
    let evaluation = registered.fitted.evaluation;
    let (at_false_denies, at_oversells) = (&evaluation.at_matched_false_denies, &evaluation.at_matched_oversells);
    let held_out: Vec<_> = evaluation.days.iter().filter(|day| day.held_out).collect();
    let orders: u64 = held_out.iter().map(|day| day.orders).sum();
    let mean = |value: fn(&sellable_models::evaluate::DayRate) -> f64| held_out.iter().map(|day| day.orders as f64 * value(day)).sum::<f64>() / orders as f64;
    let (predicted, observed) = (mean(|day| day.predicted), mean(|day| day.observed));
    eprintln!(
        "seed {seed}, {dynamics:?}, held out {:?}: {at_false_denies:?}, {at_oversells:?}; calibration error {}, mean predicted {predicted} vs observed {observed}",
        evaluation.orders, evaluation.calibration_error
    );
    assert_eq!((held_out.len(), orders), (5, evaluation.orders.test), "five whole held-out days");
    assert!(evaluation.orders.test_shorted >= 100, "enough shorts to judge by: {:?}", evaluation.orders);
    assert!(evaluation.warnings.is_empty(), "{:?}", evaluation.warnings);
    assert!(2 * at_false_denies.model_oversells <= at_false_denies.safety_stock_oversells, "at most half the oversells: {at_false_denies:?}");
    // and the report says so
    let ratio = at_false_denies.model_oversells as f64 / at_false_denies.safety_stock_oversells as f64;
    let report = std::fs::read_to_string(registry.file("v1", "report.html").unwrap()).unwrap();
    assert!(report.contains(&format!("(the model's oversells are {ratio:.2}× its)")), "{ratio}");
    assert!(report.contains("<h2>Day by day</h2>"), "the days table");
    assert!(at_oversells.model_false_denies < at_oversells.safety_stock_false_denies, "{at_oversells:?}");
    assert!(evaluation.calibration_error < 0.02, "expected calibration error {}", evaluation.calibration_error);
    assert!((predicted - observed).abs() <= 0.2 * observed, "mean predicted {predicted} vs observed {observed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_configuration_halves_the_oversells_of_a_matched_safety_stock() {
    holds_on_fourteen_days(101, sellable_bench::Dynamics::default()).await;
}

/// The same configuration, unchanged, on a marketplace whose dynamics changed: twice the hidden
/// shrink (phantom stock) caught by counts five times as frequent, fewer sellers over-reporting,
/// feeds three times slower; a short rate near 1%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_configuration_holds_when_the_marketplace_changes() {
    holds_on_fourteen_days(202, sellable_bench::Dynamics::quiet_with_phantom_stock()).await;
}

/// On held-out days, at operating points all chosen before them (the model's threshold, and the
/// static safety stocks matched to the model on the validation days), the model oversells less
/// than the safety stock that denied no more shipped orders, and denies fewer shipped orders than
/// the one that oversold no more, with an expected calibration error under 0.02 there; the
/// report and metrics.json say so. Then serving scores with
/// it, and a backtest decides every order with the serving function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_beats_safety_stocks_matched_before_the_held_out_days_and_serves() {
    let trained = trained_marketplace().await;
    let evaluation = &trained.registered.fitted.evaluation;
    let (at_false_denies, at_oversells) = (&evaluation.at_matched_false_denies, &evaluation.at_matched_oversells);
    eprintln!("held-out days: {:?}; matched safety stocks: {at_false_denies:?}, {at_oversells:?}; calibration error {}", evaluation.orders, evaluation.calibration_error);
    assert!(evaluation.orders.test > 500 && evaluation.orders.test_shorted > 10, "{:?}", evaluation.orders);
    assert!(at_false_denies.model_oversells < at_false_denies.safety_stock_oversells, "{at_false_denies:?}");
    assert!(at_oversells.model_false_denies < at_oversells.safety_stock_false_denies, "{at_oversells:?}");
    // its probabilities mean what they say on the held-out days
    assert!(evaluation.calibration_error < 0.02, "expected calibration error {}", evaluation.calibration_error);
    assert!(evaluation.pr_auc > 2.0 * evaluation.short_rate, "PR-AUC {} vs no skill {}", evaluation.pr_auc, evaluation.short_rate);
    assert!(trained.registered.fitted.parity <= sellable_models::PARITY_TOLERANCE);
    let metrics: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(trained.registry.file("v1", "metrics.json").unwrap()).unwrap()).unwrap();
    assert_eq!(metrics["at_matched_false_denies"]["safety_stock_oversells"], at_false_denies.safety_stock_oversells);
    assert_eq!(metrics["at_matched_oversells"]["safety_stock_false_denies"], at_oversells.safety_stock_false_denies);
    let report = std::fs::read_to_string(trained.registry.file("v1", "report.html").unwrap()).unwrap();
    assert_eq!(report.matches("<svg").count(), 4, "operating curve, PR curve, calibration, importance");
    for title in ["Operating curve", "Precision-recall", "Calibration", "Feature importance", "What each group of features adds"] {
        assert!(report.contains(title), "{title} missing");
    }
    // the ablation: the model itself, then one training without each group of features
    let ablation = metrics["ablation"].as_array().unwrap();
    assert_eq!(ablation.len(), 1 + sellable_models::evaluate::ABLATION_GROUPS.len(), "{ablation:?}");
    assert_eq!((ablation[0]["without"].as_str(), ablation[0]["pr_auc"].as_f64()), (Some(""), Some(evaluation.pr_auc)));
    assert_eq!(ablation[0]["oversells"].as_u64(), Some(evaluation.model.oversells));
    for (row, (group, _)) in ablation[1..].iter().zip(sellable_models::evaluate::ABLATION_GROUPS) {
        assert_eq!(row["without"].as_str(), Some(group));
        assert!(row["features"].as_u64().unwrap() >= 2 && (0.0..=1.0).contains(&row["pr_auc"].as_f64().unwrap()), "{row}");
    }

    // the command line runs the same job (a bad config is refused first, naming the file and the
    // key), lists, promotes and rolls back
    let sellable = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sellable")).args(args).output().unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr))
    };
    let (lake, models) = (trained.lake.location(), trained.registry.root().to_str().unwrap());
    let bad = trained.registry.root().with_file_name("bad.toml");
    std::fs::write(&bad, "[xgboost]\neta = 2\n").unwrap();
    let (ok, said) = sellable(&["train", "--lake", lake, "--models", models, "--config", bad.to_str().unwrap()]);
    assert!(!ok && said.contains("bad.toml: xgboost.eta must be in (0, 1], got 2"), "{said}");
    // the default windows need more days than these, and say so
    let (ok, said) = sellable(&["train", "--lake", lake, "--models", models, "--promote"]);
    assert!(!ok && said.contains("training needs at least 9 (3 validation, 5 test, 1 to train on)"), "{said}");
    let windows = trained.registry.root().with_file_name("windows.toml");
    std::fs::write(&windows, "validation_days = 2\ntest_days = 3\n").unwrap();
    let (ok, said) = sellable(&["train", "--lake", lake, "--models", models, "--config", windows.to_str().unwrap(), "--promote"]);
    assert!(ok && said.contains("train: v2 is live"), "{said}");
    for file in ["model.json", "manifest.json", "metrics.json", "report.html"] {
        assert!(trained.registry.file("v2", file).unwrap().is_file(), "{file}");
    }
    let manifest = trained.registry.manifest("v2").unwrap();
    assert!(manifest.calibration.is_some_and(|platt| platt.a > 0.0), "the scores are calibrated on the validation days: {:?}", manifest.calibration);
    assert_eq!((manifest.lineage.trainset_version, manifest.features.len()), (1, sellable_core::features::names().len()));
    let job_lineage = sellable_models::registry::ModelLineage { code_version: manifest.lineage.code_version.clone(), ..trained.registered.lineage.clone() };
    assert_eq!(manifest.lineage, job_lineage, "the same training set behind both");
    assert_eq!(manifest.rounds, trained.registered.fitted.model.rounds, "the same training set and seed train the same model");

    // serving scores every option with the promoted model
    let version = trained.registered.version.clone();
    let (ok, said) = sellable(&["models", "promote", &version, "--models", models]);
    assert!(ok && said.starts_with(&format!("{version} is live")), "{said}");
    let (ok, said) = sellable(&["models", "list", "--models", models]);
    assert!(ok && said.contains(&format!("* {version}")) && said.contains("  v2 "), "{said}");
    let (ok, said) = sellable(&["models", "rollback", "--models", models]);
    assert!(ok && said.starts_with("rolled back: v2 is live again"), "{said}");
    trained.registry.promote(&version, &sellable_core::features::names()).unwrap();
    let cutoff = trained.end - DAY;
    trained.lake.compute_batch_view(cutoff, FoldConfig::default()).await.unwrap();
    trained.registry.promote(&version, &sellable_core::features::names()).unwrap();
    let registry = sellable_models::Registry::open(trained.registry.root()).unwrap();
    let models = Arc::new(ModelBook::from_registry(registry, None).unwrap());
    let (base, serving) = serve_with(&trained.lake, Arc::new(SpeedView::memory(FoldConfig::default())), cutoff + 1, models).await;
    // the target the live model's threshold was chosen for, beside the realised outcomes
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    let target: f64 = metrics.lines().find_map(|line| line.strip_prefix("sellable_model_target_oversell_rate ")).unwrap().parse().unwrap();
    assert_eq!(target, evaluation.target_oversell_rate);
    let mut scored = 0;
    let batch = trained.lake.load_batch_view().await.unwrap();
    let (skus, _) = trained.lake.load_catalog().await.unwrap();
    for sku in skus.iter().take(60).map(|info| info.sku.as_str()) {
        for (node, _) in batch.sku_states(sku) {
            let region = serving.nodes[node].country.clone();
            let answer = serving.availability(sku, &region, 1, cutoff + 1).await.unwrap();
            assert_eq!(answer.versions.model.as_deref(), Some(version.as_str()));
            assert!(!answer.degraded_reasons.iter().any(|reason| reason.starts_with("model unavailable")), "{answer:?}");
            for option in &answer.options {
                let p = option.p_fulfill.expect("every option is scored");
                assert!((0.0..=1.0).contains(&p));
                scored += 1;
            }
        }
    }
    assert!(scored > 20, "{scored} options scored");

    // a backtest of the held-out day decides as live answers do, and the rules see the score
    let model = || trained.registry.load(&version, &sellable_core::features::names()).unwrap();
    // the training's own target, as a request's oversell budget, asks for the training's threshold
    // (to the last bits serde_json may round when it reads the manifest back)
    let for_target = model().threshold_for(evaluation.target_oversell_rate).unwrap();
    assert!((for_target - evaluation.threshold).abs() < 1e-12, "{for_target} vs {}", evaluation.threshold);
    let mut orders = Vec::new();
    let progress = sellable_batch::Progress::hidden();
    trained.lake.replay_orders(cutoff, trained.end, FoldConfig::default(), &progress, |order, moment| orders.push((order, moment))).await.unwrap();
    let schema = sellable_dsl::Schema::standard();
    let rules = r#"rule "unsure" when p_fulfill < 0.99 and qty >= 2 then cap 0"#;
    let ruleset = sellable_dsl::load(&[sellable_dsl::Source { name: "t.rules".into(), text: rules.into() }], &schema).ruleset.unwrap();
    let (skus, nodes) = trained.lake.load_catalog().await.unwrap();
    let book = Arc::new(sellable_serving::RuleBook::with(ruleset, schema));
    let replay = Serving::new(nodes, Default::default(), Arc::new(SpeedView::memory(FoldConfig::default())), book.clone()).with_models(Arc::new(ModelBook::with(model())));
    let skus = skus.into_iter().map(|info| (info.sku.clone(), info)).collect();
    let (decisions, summary) = replay.backtest(&skus, orders.clone(), evaluation.safety_stock).unwrap();
    assert_eq!(decisions.len(), orders.len());
    for (decision, (order, _)) in decisions.iter().zip(&orders) {
        assert_eq!(decision.p_fulfill, Some(model().p_fulfill(&order.features)));
        assert_eq!(decision.region, replay.nodes[&order.node].country);
    }
    let capped = decisions.iter().filter(|decision| decision.rules_fired.contains(":unsure")).count();
    assert!(capped > 0 && summary.engine.promised > 0, "{summary:?}");
    assert_eq!(summary.naive_atp.promised + summary.naive_atp.oversells_caught + summary.naive_atp.wrongly_denied, summary.orders);

    // the same orders asked of `GET /v1/availability` at their instants, of a server whose batch
    // view is the cutoff's and whose speed view holds what arrived before the order: the same
    // decisions and units, for every order of a sample
    let models = Arc::new(ModelBook::with(model()));
    let mut asked = 0;
    for ((order, _), decided) in orders.iter().zip(&decisions).filter(|((order, _), _)| order.cutoff == cutoff).step_by(orders.len() / 16) {
        let speed = SpeedView::memory(FoldConfig::default());
        catch_up(&trained.lake, &speed, cutoff, CatchUpSource::Log, Some(order.ts - 1)).await.unwrap();
        let (base, _) = serve_with_rules(&trained.lake, Arc::new(speed), order.ts, models.clone(), book.clone()).await;
        let url = format!("{base}/v1/availability/{}?region={}&qty={}", order.sku, decided.region, order.qty);
        let live: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        assert_eq!((live["decision"].as_str(), live["units"].as_i64()), (Some(decided.decision), Some(decided.units)), "order {}: backtest {decided:?}, live {live}", order.order_id);
        let fired: Vec<String> = live["rules_fired"].as_array().unwrap().iter().map(|fired| format!("{}:{}", fired["node"].as_str().unwrap(), fired["rule"].as_str().unwrap())).collect();
        assert_eq!(fired.join(";"), decided.rules_fired, "order {}", order.order_id);
        asked += 1;
    }
    assert!(asked >= 10, "{asked}");
    let mut csv = Vec::new();
    sellable_serving::backtest::write_csv(&decisions, &mut csv).unwrap();
    let csv = String::from_utf8(csv).unwrap();
    assert!(csv.starts_with("order_id,ts,sku,node,region,qty,decision,units,p_fulfill,rules_fired,label\n"), "{}", &csv[..200]);
    assert_eq!(csv.lines().count(), orders.len() + 1);

    // `backtest --compare-rules`: a rule edit that caps every node at 0 would have denied every
    // order the engine promised, catching its oversells and denying the rest
    let dir = trained.registry.root().with_file_name("compare");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("nothing.rules"), "rule \"nothing\" when qty >= 1 then cap 0\n").unwrap();
    let out = dir.join("bt.csv");
    let (from, to) = (cutoff.to_string(), trained.end.to_string());
    let args = ["backtest", "--lake", lake, "--models", trained.registry.root().to_str().unwrap(), "--model", &version, "--from", &from, "--to", &to, "--out", out.to_str().unwrap()];
    let (ok, said) = sellable(&[&args[..], &["--compare-rules", dir.join("nothing.rules").to_str().unwrap()]].concat());
    assert!(ok, "{said}");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.with_extension("summary.json")).unwrap()).unwrap();
    let (promised, oversells) = (summary["engine"]["promised"].as_u64().unwrap(), summary["engine"]["oversells"].as_u64().unwrap());
    assert!(promised > oversells && oversells > 0, "{summary}");
    let expected = format!(
        "compared with model {version} and 1 rule(s): {promised} order(s) decided otherwise ({promised} now denied, 0 now promised); net oversells -{oversells}, net false denies +{}",
        promised - oversells
    );
    assert!(said.contains(&expected), "{said}\nexpected: {expected}");
    let changes = std::fs::read_to_string(out.with_extension("changes.csv")).unwrap();
    assert_eq!(changes.lines().count() as u64, promised + 1, "{changes}");
    assert!(changes.lines().skip(1).all(|line| line.contains(",promise,deny,") && line.contains(":nothing")), "{changes}");

    flash_sale_backtest_fires_the_hot_items_rule(model()).await;
}

/// `examples/rules/hot-items.rules` in a backtest of a generated flash sale (demand bursts at 100
/// times the base rate, checkouts taken against availability a few units stale): its rule on
/// recent demand fires, at an order's node, only where that node took 20 units or more in the 5
/// minutes before the order while the model was unsure.
async fn flash_sale_backtest_fires_the_hot_items_rule(model: sellable_models::Model) {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig { seed: 29, skus: 300, nodes: 16, days: 3.0, burst_factor: 100.0, ..SimConfig::default() };
    let (summary, lake) = generated_lake(&config, dir.path()).await;
    let start = config.start - config.start.rem_euclid(DAY) + DAY;
    let midnights: Vec<Millis> = (start..summary.end).step_by(DAY as usize).collect();
    let progress = sellable_batch::Progress::hidden();
    lake.compute_features(&midnights, FoldConfig::default(), &progress).await.unwrap();
    let mut orders = Vec::new();
    lake.replay_orders(start, summary.end, FoldConfig::default(), &progress, |order, moment| orders.push((order, moment))).await.unwrap();
    let schema = sellable_dsl::Schema::standard();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rules/hot-items.rules");
    let text = std::fs::read_to_string(&path).unwrap();
    let ruleset = sellable_dsl::load(&[sellable_dsl::Source { name: "hot-items.rules".into(), text }], &schema).ruleset.unwrap();
    let (skus, nodes) = lake.load_catalog().await.unwrap();
    let rules = Arc::new(sellable_serving::RuleBook::with(ruleset, schema));
    let replay = Serving::new(nodes, Default::default(), Arc::new(SpeedView::memory(FoldConfig::default())), rules).with_models(Arc::new(ModelBook::with(model)));
    let skus = skus.into_iter().map(|info| (info.sku.clone(), info)).collect();
    let (decisions, _) = replay.backtest(&skus, orders.clone(), 0).unwrap();
    let velocity = sellable_core::features::names().iter().position(|name| *name == "velocity_5m").unwrap();
    let mut hot = 0;
    for (decision, (order, _)) in decisions.iter().zip(&orders) {
        let fired = decision.rules_fired.split(';').any(|fired| fired == format!("{}:cap hot items when unsure", order.node));
        if fired {
            let p = decision.p_fulfill.unwrap();
            assert!(order.features[velocity] >= 20.0 && p < 0.9, "{decision:?} with velocity_5m {}", order.features[velocity]);
        }
        hot += usize::from(fired);
    }
    let busiest = orders.iter().map(|(order, _)| order.features[velocity]).fold(0.0, f64::max);
    eprintln!("flash sale: {} orders, the rule fired for {hot} at their node; the highest velocity_5m an order saw: {busiest}", orders.len());
    assert!(hot > 0, "the rule never fired (highest velocity_5m {busiest})");
}

/// Redis lost mid-run: every answer comes back within the timeout, graded, and never promises more
/// than the fresh answer did; when Redis comes back with its data the answers are fresh again by
/// themselves, and when it comes back empty they stay conservative until the speed view has been
/// caught up from the lake again (by itself), then equal the fresh answers once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_makes_answers_conservative_until_the_speed_view_is_whole_again() {
    use sellable_core::Grade;
    let market = marketplace().await;
    let mut redis = OwnRedis::start();
    let speed = Arc::new(SpeedView::redis_lazy(&redis.url(), "lost", FoldConfig::default()).await.unwrap());
    let every = std::time::Duration::from_millis(200);
    let log: Arc<dyn sellable_core::EventLog> = Arc::new(Lake::open(market.lake.local_dir()).unwrap());
    let lake = Arc::new(Lake::open(market.lake.local_dir()).unwrap());
    let rows: sellable_speed::BatchRows = Arc::new(move || {
        let lake = lake.clone();
        Box::pin(async move { Ok(lake.load_published().await?) })
    });
    let _keeper = sellable_speed::keep_caught_up(log, speed.clone(), market.cutoff, rows, every);
    let now = market.cutoff + 3_600_000;
    let (_, serving) = serve(&market.lake, speed.clone(), now).await;
    let _refresher = serving.clone().spawn_refresh(every);
    let (_, nodes) = market.lake.load_catalog().await.unwrap();
    let oracle = fold(&market.all_events, FoldConfig::default());
    let sample = sellable_bench::stocked_requests(&oracle, &nodes, 40);
    assert!(sample.len() >= 20, "{}", sample.len());
    let ask = |serving: Arc<Serving>, sample: Vec<(String, String)>| async move {
        let mut answers = BTreeMap::new();
        for (sku, country) in sample {
            let started = std::time::Instant::now();
            let answer = serving.availability(&sku, &country, 1, now).await.unwrap();
            assert!(started.elapsed() < std::time::Duration::from_secs(3), "{sku} in {country}: {:?}", started.elapsed());
            let units: BTreeMap<String, i64> = answer.options.iter().map(|o| (o.node.clone(), o.units)).collect();
            answers.insert((sku, country), (answer.grade, units));
        }
        answers
    };
    // (sku, country) → the answer's grade and units by node
    type Answers = BTreeMap<(String, String), (Grade, BTreeMap<String, i64>)>;
    let all_fresh = |answers: &Answers| answers.values().all(|(grade, _)| *grade == Grade::Fresh);
    // every answer is the fresh one, or a conservative one promising no more at any node
    let check = |answers: &Answers, fresh: &Answers| {
        for (key, (grade, units)) in answers {
            let fresh_units = &fresh[key].1;
            match grade {
                Grade::Fresh => assert_eq!(units, fresh_units, "{key:?}: a fresh answer that is not the fresh one"),
                _ => assert!(units.iter().all(|(node, n)| *n <= fresh_units.get(node).copied().unwrap_or(0)), "{key:?}: {units:?} over {fresh_units:?}"),
            }
        }
    };
    let wait_fresh = |serving: Arc<Serving>, sample: Vec<(String, String)>| async move {
        for _ in 0..150 {
            let answers = ask(serving.clone(), sample.clone()).await;
            if all_fresh(&answers) {
                return answers;
            }
            tokio::time::sleep(every).await;
        }
        panic!("the answers never became fresh: {:?}", serving.speed_distrust());
    };
    let fresh = wait_fresh(serving.clone(), sample.clone()).await;
    assert!(fresh.values().any(|(_, units)| !units.is_empty()), "some stock to lose");

    // Redis away
    redis.kill();
    tokio::time::sleep(3 * every).await;
    let away = ask(serving.clone(), sample.clone()).await;
    assert!(away.values().all(|(grade, _)| *grade == Grade::Conservative), "{away:?}");
    assert_eq!((serving.readiness().ready, serving.readiness().grade), (true, Grade::Conservative));
    check(&away, &fresh);

    // back with its data: fresh again by itself, the same answers
    redis.restart();
    check(&wait_fresh(serving.clone(), sample.clone()).await, &fresh);

    // back empty: never a wrong fresh answer, and whole again by itself
    redis.kill();
    std::fs::remove_dir_all(redis.dir.path().join("data")).unwrap();
    redis.restart();
    for _ in 0..10 {
        check(&ask(serving.clone(), sample.clone()).await, &fresh);
    }
    check(&wait_fresh(serving.clone(), sample.clone()).await, &fresh);
    tokio::time::sleep(2 * every).await;
    assert_eq!(serving.readiness().grade, Grade::Fresh, "{:?}", serving.readiness());
}

/// The archiver, killed with SIGKILL at random points while it archives a stream and restarted
/// each time: at the end the lake holds every event of the stream exactly once, and nothing is
/// left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_archivers_neither_lose_nor_duplicate_events_in_the_lake() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig { seed: 61, skus: 1_500, nodes: 40, days: 7.0, ..SimConfig::default() };
    let summary = generate(&config, &dir.path().join("gen")).unwrap();
    let events: Vec<Event> = read_event_file(&summary.paths.events).unwrap().map(Result::unwrap).collect();
    let stream = format!("sellable-test-archive-{}", std::process::id());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(&stream).query_async(&mut connection).await.unwrap();
    sellable_speed::stream::publish(&url, &stream, events.iter().map(encode_json)).await.unwrap();

    let lake_dir = dir.path().join("lake");
    let lake_path = lake_dir.to_str().unwrap();
    let archive = ["archive", "--redis", &url, "--stream", &stream, "--batch", "500", "--max-delay-ms", "200", "--lake", lake_path];
    kill_repeatedly(&archive, 4, 150..600, 3).await;
    let lake = Lake::open(&lake_dir).unwrap();
    let before = lake.events_after(Millis::MIN).await.map_or(0, |events| events.len());
    assert!(before < events.len(), "the kills came before the end: {before} of {}", events.len());
    assert!(run_until_idle(&archive).success());

    let mut archived: Vec<String> = lake.events_after(Millis::MIN).await.unwrap().into_iter().map(|event| event.unwrap().event_id).collect();
    let mut published: Vec<String> = events.iter().map(|event| event.event_id.clone()).collect();
    archived.sort();
    published.sort();
    assert_eq!(archived.len(), published.len(), "every event exactly once");
    assert!(archived == published, "the lake holds the stream's events");
    let pending: redis::Value = redis::cmd("XPENDING").arg(&stream).arg(sellable_speed::archive::ARCHIVE_GROUP).query_async(&mut connection).await.unwrap();
    assert!(matches!(&pending, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(0))), "nothing left pending: {pending:?}");
    let _: i64 = redis::cmd("DEL").arg(&stream).query_async(&mut connection).await.unwrap();
}

/// The one ingestion path: `POST /v1/events` appends what it accepts (with the server's arrival)
/// to the ingestion stream before folding it; the archiver then brings it to the lake, and a fold
/// worker of the stream finds it folded already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_events_reach_the_lake_through_the_ingestion_stream() {
    let (url, stream, namespace) = redis_names("intake");
    let market = marketplace().await;
    forget(&url, &stream, &namespace).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let speed = Arc::new(SpeedView::redis(&url, &namespace, FoldConfig::default()).await.unwrap());
    speed.clear().await.unwrap();
    catch_up(&market.lake, &speed, market.cutoff, CatchUpSource::Log, None).await.unwrap();
    let now = market.cutoff + 3_600_000;
    let nodes = market.lake.load_nodes().await.unwrap();
    let rules = Arc::new(sellable_serving::RuleBook::empty(sellable_dsl::Schema::standard()));
    let intake = Arc::new(sellable_speed::stream::StreamIntake::new(&url, &stream).unwrap());
    let batch = publish(&market.lake, &speed).await;
    let serving = Serving::new(nodes, batch, speed.clone(), rules)
        .with_intake(intake)
        .with_clock(sellable_serving::Clock::Fixed(now));
    let router = Arc::new(serving).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let template = market.after_cutoff[0].clone();
    let posted = Event { event_id: "posted-through-the-stream".into(), kind: sellable_core::EventKind::Receipt, qty: 3, ts: now - 1_000, arrived: Some(1), ..template };
    let response = reqwest::Client::new().post(format!("{base}/v1/events")).body(encode_json(&posted)).send().await.unwrap();
    let accepted: sellable_serving::EventsAccepted = response.json().await.unwrap();
    assert_eq!((accepted.accepted, accepted.rejected.len()), (1, 0));
    // a retried body: a duplicate, and not appended again (the lake gets each event once)
    let response = reqwest::Client::new().post(format!("{base}/v1/events")).body(encode_json(&posted)).send().await.unwrap();
    let retried: sellable_serving::EventsAccepted = response.json().await.unwrap();
    assert_eq!((retried.accepted, retried.duplicates), (0, 1));
    let length: i64 = redis::cmd("XLEN").arg(&stream).query_async(&mut connection).await.unwrap();
    assert_eq!(length, 1);
    // the events of many SKUs (many partitions), then the same body with as many new ones: the
    // reads of what the view knows, sent at once, tell the new from the retried
    let many: Vec<Event> = market.after_cutoff[..60]
        .iter()
        .enumerate()
        .map(|(index, event)| Event { event_id: format!("posted-many-{index}"), kind: sellable_core::EventKind::Receipt, qty: 1, ts: now - 1_000, arrived: Some(1), ..event.clone() })
        .collect();
    let skus: std::collections::HashSet<&str> = many.iter().map(|event| event.sku.as_str()).collect();
    assert!(skus.len() > 10, "{} SKUs", skus.len());
    let post_many = |events: &[Event]| {
        let body = events.iter().map(encode_json).collect::<Vec<_>>().join("\n");
        reqwest::Client::new().post(format!("{base}/v1/events")).header("content-type", "application/x-ndjson").body(body).send()
    };
    let first: sellable_serving::EventsAccepted = post_many(&many[..30]).await.unwrap().json().await.unwrap();
    assert_eq!((first.accepted, first.duplicates), (30, 0));
    let again: sellable_serving::EventsAccepted = post_many(&many).await.unwrap().json().await.unwrap();
    assert_eq!((again.accepted, again.duplicates), (30, 30));
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query_async(&mut connection).await.unwrap();
    let mut appended: Vec<String> = entries.iter().map(|(_, fields)| sellable_core::event::decode_json(&fields[0].1).unwrap().event_id).collect();
    appended.sort();
    let mut expected: Vec<String> = many.iter().map(|event| event.event_id.clone()).chain([posted.event_id.clone()]).collect();
    expected.sort();
    assert_eq!(appended, expected, "each event appended once");

    let archived = std::process::Command::new(env!("CARGO_BIN_EXE_sellable"))
        .args(["archive", "--redis", &url, "--stream", &stream, "--until-idle", "0.5", "--lake"])
        .arg(market.lake.location())
        .output()
        .unwrap();
    assert!(archived.status.success(), "{}", String::from_utf8_lossy(&archived.stderr));
    let in_lake: Vec<Event> = market.lake.events_after(market.cutoff).await.unwrap().into_iter().map(Result::unwrap).filter(|e| e.event_id == posted.event_id).collect();
    assert_eq!(in_lake, [Event { arrived: Some(now), ..posted }], "once, with the server's arrival");

    let mut workers = sellable_speed::stream::Workers::new(sellable_speed::stream::StreamConfig::new(&stream, "fold", "one"), 1);
    workers.idle_limit = Some(std::time::Duration::ZERO);
    let folded = sellable_speed::stream::run_workers(&url, speed.clone(), workers, std::future::pending()).await.unwrap();
    assert_eq!((folded.stats.fold.applied, folded.stats.fold.duplicates), (0, 61));
    forget(&url, &stream, &namespace).await;
}

/// `sellable run`: events posted over HTTP are answered at once, survive cutovers (a nightly job
/// every second here), and reach the lake through the ingestion stream and the archiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sellable_run_keeps_posted_events_across_cutovers_and_archives_them() {
    let (url, stream, namespace) = redis_names("run");
    let market = marketplace().await;
    let id = std::process::id();
    let port = free_port();
    let log_path = market.lake.local_dir().with_file_name("run.log");
    let _run = KillOnDrop(
        keyed(&mut std::process::Command::new(env!("CARGO_BIN_EXE_sellable")))
            .args(["run", "--redis", &url, "--stream", &stream, "--namespace", &namespace, "--nightly-every", "1"])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--lake"])
            .arg(market.lake.location())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let probe = Probe::new(&market, port, &format!("run-receipt-{id}")).await;
    probe.wait_up(log).await;
    probe.post().await;
    let after = probe.answer_with_receipt(log).await;

    // two cutovers later, the receipt still counts once, and the lake holds it
    let mut cutovers = 0;
    for _ in 0..300 {
        cutovers = std::fs::read_to_string(&log_path).unwrap_or_default().matches("run: cutover to").count();
        if cutovers >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(cutovers >= 2, "{}", log());
    let later = probe.answer().await;
    // the same stock, without the margin of the old batch view the first answer held back
    assert!(probe.units(&later) >= 1_000 && probe.units(&later) <= probe.units(&after) + 1, "{after}\n{later}");
    assert_eq!(later["grade"], "fresh", "{later}");
    assert_ne!(later["versions"]["batch_view"], after["versions"]["batch_view"], "{later}");
    let in_lake = market.lake.events_after(market.cutoff).await.unwrap().into_iter().filter(|e| e.as_ref().is_ok_and(|e| e.event_id == probe.receipt.event_id)).count();
    assert_eq!(in_lake, 1);
    let metrics = reqwest::get(format!("{}/metrics", probe.base)).await.unwrap().text().await.unwrap();
    let value = |name: &str| metrics.lines().find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok());
    assert!(value("sellable_cutovers_total").is_some_and(|n| n >= 2.0), "{metrics}");
    assert!(value("sellable_cutover_seconds").is_some_and(|s| s > 0.0), "{metrics}");
    assert!(value("sellable_archive_lag_seconds").is_some_and(|s| s < 60.0), "{metrics}");
    assert!(value("sellable_batch_view_age_seconds").is_some_and(|s| s < 60.0), "{metrics}");
    drop(_run);
    forget(&url, &stream, &namespace).await;
}

/// A `sellable run` process under test, and the sku×node its test posts a receipt for: the first
/// one the marketplace's last day touches, asked in the node's country.
struct Probe {
    base: String,
    node: String,
    url: String,
    receipt: Event,
}

impl Probe {
    async fn new(market: &Marketplace, port: u16, event_id: &str) -> Probe {
        let (sku, node) = market.after_cutoff.iter().map(|e| (e.sku.clone(), e.node.clone())).next().unwrap();
        Probe::at(&market.lake, sku, node, port, event_id).await
    }

    /// The probe of `sku` at `node` (in `lake`'s catalog) for the process listening on `port`.
    async fn at(lake: &Lake, sku: String, node: String, port: u16, event_id: &str) -> Probe {
        let nodes = lake.load_nodes().await.unwrap();
        let country = nodes.iter().find(|n| n.node == node).unwrap().country.clone();
        let base = format!("http://127.0.0.1:{port}");
        let url = format!("{base}/v1/availability/{sku}?region={country}&qty=1");
        let receipt = Event { event_id: event_id.into(), ts: chrono_now(), sku, node: node.clone(), kind: sellable_core::EventKind::Receipt, qty: 1_000, order_id: None, arrived: None };
        Probe { base, node, url, receipt }
    }

    /// Waits (bounded) until the process answers `/healthz`.
    async fn wait_up(&self, log: impl Fn() -> String) {
        for _ in 0..300 {
            if reqwest::get(format!("{}/healthz", self.base)).await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the server never answered:\n{}", log());
    }

    async fn answer(&self) -> serde_json::Value {
        api().get(&self.url).send().await.unwrap().json().await.unwrap()
    }

    /// Posts the receipt (1,000 units) and checks the server took it. It is appended to the
    /// stream first: a fold worker may fold it before the server's own fold does, which then
    /// finds it folded already (a duplicate).
    async fn post(&self) {
        let request = api().post(format!("{}/v1/events", self.base)).header("content-type", "application/x-ndjson").body(encode_json(&self.receipt));
        let posted: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
        assert_eq!(posted["accepted"].as_u64().unwrap() + posted["duplicates"].as_u64().unwrap(), 1, "{posted}");
    }

    /// The units the answer offers at the probed node.
    fn units(&self, answer: &serde_json::Value) -> i64 {
        let options = answer["options"].as_array().map(Vec::as_slice).unwrap_or_default();
        options.iter().find(|o| o["node"] == self.node.as_str()).map_or(0, |o| o["units"].as_i64().unwrap())
    }

    /// Waits (bounded) for an answer that offers the receipt's units (the node's feed is fresh
    /// again at the next refresh of the watermarks).
    async fn answer_with_receipt(&self, log: impl Fn() -> String) -> serde_json::Value {
        for _ in 0..100 {
            let answer = self.answer().await;
            if self.units(&answer) >= 1_000 {
                return answer;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("the receipt never showed: {}\n{}", self.answer().await, log());
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The tests' Redis, and a stream and a namespace of this test's own.
fn redis_names(test: &str) -> (String, String, String) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
    let name = format!("sellable-test-{test}-{}", std::process::id());
    (url, name.clone(), name)
}

/// Deletes a test's stream and every key of its namespace.
async fn forget(url: &str, stream: &str, namespace: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(stream).query_async(&mut connection).await.unwrap();
    forget_namespace(url, namespace).await;
}

/// Deletes every key of a test's namespace.
async fn forget_namespace(url: &str, namespace: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    sellable_speed::unlink_matching(&mut connection, &format!("{namespace}*")).await.unwrap();
}

/// A child process killed when the test ends, passed or failed.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chrono_now() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as Millis
}

/// `sellable run` on a Redis that comes back empty (stream, groups and speed views gone): answers
/// are never fresh and wrong meanwhile, and the speed view is rebuilt from the lake by itself, with
/// the receipt posted (and archived) before the loss still counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sellable_run_rebuilds_its_speed_view_when_redis_comes_back_empty() {
    let market = marketplace().await;
    let mut redis = OwnRedis::start();
    let port = free_port();
    let log_path = market.lake.local_dir().with_file_name("run.log");
    let _run = KillOnDrop(
        keyed(&mut std::process::Command::new(env!("CARGO_BIN_EXE_sellable")))
            .args(["run", "--redis", &redis.url(), "--nightly-every", "2", "--listen", &format!("127.0.0.1:{port}"), "--lake"])
            .arg(market.lake.location())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let probe = Probe::new(&market, port, "before-the-loss").await;
    probe.wait_up(log).await;
    probe.post().await;
    // archived, and counted once in a fresh answer
    let mut fresh = serde_json::Value::Null;
    for _ in 0..200 {
        let archived = market.lake.events_after(market.cutoff).await.unwrap().into_iter().any(|e| e.is_ok_and(|e| e.event_id == probe.receipt.event_id));
        fresh = probe.answer().await;
        if archived && fresh["grade"] == "fresh" && probe.units(&fresh) >= 1_000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(fresh["grade"] == "fresh" && probe.units(&fresh) >= 1_000, "{fresh}\n{}", log());

    redis.kill();
    std::fs::remove_dir_all(redis.dir.path().join("data")).unwrap();
    redis.restart();
    let mut whole_again = false;
    for _ in 0..300 {
        let now = probe.answer().await;
        if now["grade"] == "fresh" {
            assert_eq!(probe.units(&now), probe.units(&fresh), "a fresh answer must be the whole one: {now}\n{}", log());
            whole_again = true;
            break;
        }
        assert!(probe.units(&now) <= probe.units(&fresh), "{now}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(whole_again, "{}", log());
    for _ in 0..100 {
        if log().contains("is whole again") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the rebuild is not in the log: {}", log());
}

/// `sellable run` as four processes on one Redis and one lake: `batch` (nightly cutovers, no fold
/// workers of its own), `fold` (following the epochs), `archive`, and `serve` (HTTP, following the
/// epochs), the fold and archive processes `SIGKILL`ed mid-run and restarted: a receipt posted to
/// the server is answered, stays counted once across two cutovers, and reaches the lake once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sellable_run_roles_in_four_processes_keep_one_truth_through_kills() {
    let (url, stream, namespace) = redis_names("roles");
    let market = marketplace().await;
    let id = std::process::id();
    let port = free_port();
    let lake = market.lake.location().to_string();
    let common = ["--redis", &url, "--stream", &stream, "--namespace", &namespace, "--lake", &lake];
    let role = |role: &str, extra: &[&str], log: &std::path::Path| {
        KillOnDrop(
            keyed(&mut std::process::Command::new(env!("CARGO_BIN_EXE_sellable")))
                .args(["run", "--role", role])
                .args(common)
                .args(extra)
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap(),
        )
    };
    let batch_log = market.lake.local_dir().with_file_name("batch.log");
    let _batch = role("batch", &["--nightly-every", "2", "--workers", "0"], &batch_log);
    let fold_log = market.lake.local_dir().with_file_name("fold.log");
    let mut fold = role("fold", &["--consumer", "fold-a"], &fold_log);
    let archive_log = market.lake.local_dir().with_file_name("archive.log");
    let mut archive = role("archive", &[], &archive_log);
    let serve_log = market.lake.local_dir().with_file_name("serve.log");
    let _serve = role("serve", &["--listen", &format!("127.0.0.1:{port}")], &serve_log);
    let logs = || {
        let read = |path: &std::path::Path| std::fs::read_to_string(path).unwrap_or_default();
        format!("batch:\n{}\nfold:\n{}\nserve:\n{}", read(&batch_log), read(&fold_log), read(&serve_log))
    };
    let probe = Probe::new(&market, port, &format!("roles-receipt-{id}")).await;
    probe.wait_up(logs).await;
    // the server follows the first cutover (a batch view of now)
    let initial = serde_json::json!(market.lake.load_batch_view().await.unwrap().version);
    for _ in 0..300 {
        if probe.answer().await["versions"]["batch_view"] != initial {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    probe.post().await;
    // SIGKILL (KillOnDrop) the fold and archive processes right after the post, and restart them
    drop((fold, archive));
    fold = role("fold", &["--consumer", "fold-a"], &fold_log);
    archive = role("archive", &[], &archive_log);
    let fresh = probe.answer_with_receipt(logs).await;
    let (with_receipt, version) = (probe.units(&fresh), fresh["versions"]["batch_view"].clone());
    assert_ne!(version, initial, "{fresh}\n{}", logs());
    // two cutovers later (followed by the server), the receipt is still counted once
    let mut later = serde_json::Value::Null;
    for _ in 0..300 {
        later = probe.answer().await;
        let cutovers = std::fs::read_to_string(&batch_log).unwrap_or_default().matches("run: cutover to").count();
        if cutovers >= 3 && later["versions"]["batch_view"] != version && later["grade"] == "fresh" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_ne!(later["versions"]["batch_view"], version, "{later}\n{}", logs());
    assert_eq!(later["grade"], "fresh", "{later}\n{}", logs());
    assert_eq!(probe.units(&later), with_receipt, "counted once: {later}\n{}", logs());
    let in_lake = market.lake.events_after(market.cutoff).await.unwrap().into_iter().filter(|e| e.as_ref().is_ok_and(|e| e.event_id == probe.receipt.event_id)).count();
    assert_eq!(in_lake, 1);
    drop((_batch, fold, archive, _serve));
    forget(&url, &stream, &namespace).await;
}
