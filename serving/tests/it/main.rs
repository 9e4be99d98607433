//! Serving with live rules: hot reload under load, the rule endpoints, and rules in answers.
//! The views are built with `core` (a batch view of a few events; an empty speed view), so these
//! tests need no Redis; the end-to-end test of every layer is `tests/it` at the workspace root.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sellable_core::view::BoxFuture;
use sellable_core::{fold, BatchMeta, BatchView, Event, EventKind, FoldConfig, NodeInfo, NodeKind, SkuInfo, SkuRead, SkuRow, SpeedSource, ViewError};
use sellable_dsl::Schema;
use sellable_serving::{Availability, Clock, ModelBook, RuleBook, Serving};

mod door;

/// The epoch stores of these tests: the test batch view's row of SKU-1 published ([`test_batch`])
/// beside a speed view with no event since the cutoff; or, once `broken`, a store that fails,
/// hangs, or (from the start) answers from another cutoff.
struct FakeSpeed {
    mode: Mode,
    row: Arc<SkuRow>,
    broken: AtomicBool,
    /// Calls of `sku_reads` so far, and how long each takes.
    reads: AtomicU64,
    read_time: Duration,
    /// Batch rows sent so far (a reader that has a SKU's row is not sent it again).
    rows_sent: AtomicU64,
}

#[derive(Clone, Copy)]
enum Mode {
    NothingSinceCutoff,
    Failing,
    Hanging,
    OtherCutoff,
    /// Orders at WH-1 since the cutoff: [`RECENT_DEMAND`].
    RecentDemand,
}

/// Reserves at WH-1 after the cutoff (beside a receipt of 20 units): (minutes after it, units): 8
/// units in the 5 minutes before [`DEMAND_NOW`], 13 in its last hour, 20 in all.
const RECENT_DEMAND: [(i64, i64); 6] = [(1, 7), (40, 5), (57, 2), (58, 3), (59, 1), (61, 2)];
const DEMAND_NOW: sellable_core::Millis = CUTOFF + 61 * 60_000 + 30_000;

impl FakeSpeed {
    /// A store in `mode`, working until [`FakeSpeed::breaks`] (`OtherCutoff` and `RecentDemand`:
    /// so from the start),
    /// WH-1's batch features set to `features`, if any.
    fn new(mode: Mode, features: Option<Vec<f64>>) -> FakeSpeed {
        let (batch, skus) = test_batch();
        let mut row = batch.rows(&skus).next().unwrap().unwrap();
        row.features = features.into_iter().map(|features| ("WH-1".to_string(), features)).collect();
        FakeSpeed { mode, row: Arc::new(row), broken: AtomicBool::new(matches!(mode, Mode::OtherCutoff | Mode::RecentDemand)), reads: AtomicU64::new(0), read_time: Duration::ZERO, rows_sent: AtomicU64::new(0) }
    }

    /// The same store, each `sku_reads` call taking `time` (a round trip).
    fn taking(self, time: Duration) -> FakeSpeed {
        FakeSpeed { read_time: time, ..self }
    }

    fn breaks(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        if self.broken.load(Ordering::SeqCst) {
            self.mode
        } else {
            Mode::NothingSinceCutoff
        }
    }
}

impl SpeedSource for FakeSpeed {
    fn sku_read<'a>(&'a self, sku: &'a str) -> BoxFuture<'a, Result<SkuRead, ViewError>> {
        Box::pin(async move {
            let row = (sku == "SKU-1").then(|| self.row.clone());
            match self.mode() {
                Mode::NothingSinceCutoff => Ok(SkuRead { row, speed: Vec::new(), caught_up: Some(CUTOFF) }),
                Mode::Failing => Err("connection refused".into()),
                Mode::Hanging => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Err("too late".into())
                }
                // a reservation of all of WH-1 that the batch view does not know of
                Mode::OtherCutoff => {
                    let speed = fold(&[event("r1", "WH-1", EventKind::Reserve, 10)], FoldConfig::default()).states.into_iter().map(|((_, node), state)| (node, state)).collect();
                    Ok(SkuRead { row, speed, caught_up: Some(CUTOFF - 1) })
                }
                Mode::RecentDemand => {
                    let mut events: Vec<Event> = RECENT_DEMAND
                        .iter()
                        .enumerate()
                        .map(|(n, (minutes, units))| Event { ts: CUTOFF + minutes * 60_000, ..event(&format!("o{n}"), "WH-1", EventKind::Reserve, *units) })
                        .collect();
                    events.push(Event { ts: CUTOFF + 1, ..event("r1", "WH-1", EventKind::Receipt, 20) });
                    let speed = fold(&events, FoldConfig::default()).states.into_iter().map(|((_, node), state)| (node, state)).collect();
                    Ok(SkuRead { row, speed, caught_up: Some(CUTOFF) })
                }
            }
        })
    }
    fn sku_reads<'a>(&'a self, skus: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<SkuRead>, ViewError>> {
        Box::pin(async move {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.read_time).await;
            sellable_core::view::read_each(self, skus).await
        })
    }
    fn sku_reads_having<'a>(&'a self, skus: &'a [&'a str], have: &'a [bool]) -> BoxFuture<'a, Result<Vec<SkuRead>, ViewError>> {
        Box::pin(async move {
            let mut reads = self.sku_reads(skus).await?;
            for (read, had) in reads.iter_mut().zip(have) {
                match (had, &read.row) {
                    (true, _) => read.row = None,
                    (false, Some(_)) => drop(self.rows_sent.fetch_add(1, Ordering::SeqCst)),
                    (false, None) => {}
                }
            }
            Ok(reads)
        })
    }
    fn batch_meta(&self) -> BoxFuture<'_, Result<Option<BatchMeta>, ViewError>> {
        Box::pin(async { Ok(Some(test_batch().0.meta())) })
    }
    fn skus_known<'a>(&'a self, skus: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<bool>, ViewError>> {
        Box::pin(async move { Ok(skus.iter().map(|sku| *sku == "SKU-1").collect()) })
    }
    fn watermarks(&self) -> BoxFuture<'_, Result<sellable_core::Watermarks, ViewError>> {
        Box::pin(async { Ok(Default::default()) })
    }
    fn fold<'a>(&'a self, _: &'a [Event], _: &'a str) -> BoxFuture<'a, Result<Vec<sellable_core::Outcome>, ViewError>> {
        Box::pin(async { Err("this test view folds nothing".into()) })
    }
    fn dead_letter<'a>(&'a self, _: &'a [sellable_core::DeadLetter]) -> BoxFuture<'a, Result<(), ViewError>> {
        Box::pin(async { Err("this test view keeps nothing".into()) })
    }
    fn caught_up_to(&self) -> BoxFuture<'_, Result<Option<sellable_core::Millis>, ViewError>> {
        Box::pin(async move {
            match self.mode() {
                Mode::Failing | Mode::Hanging => Err("connection refused".into()),
                Mode::OtherCutoff => Ok(Some(CUTOFF - 1)),
                Mode::NothingSinceCutoff | Mode::RecentDemand => Ok(Some(CUTOFF)),
            }
        })
    }
    fn config(&self) -> FoldConfig {
        FoldConfig::default()
    }
    fn describe(&self) -> String {
        "test".into()
    }
}

fn event(id: &str, node: &str, kind: EventKind, qty: i64) -> Event {
    Event { event_id: id.into(), ts: 1_000, sku: "SKU-1".into(), node: node.into(), kind, qty, order_id: None, arrived: None }
}

async fn serve(rules: Arc<RuleBook>) -> String {
    serve_with(rules, Arc::new(ModelBook::none())).await
}

async fn serve_with(rules: Arc<RuleBook>, models: Arc<ModelBook>) -> String {
    listen(serving(rules, models).router()).await
}

/// Serves `router` on a free loopback port; returns its base URL.
async fn listen(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{address}")
}

/// The test batch view's cutoff.
const CUTOFF: sellable_core::Millis = 2_000;

fn serving(rules: Arc<RuleBook>, models: Arc<ModelBook>) -> Arc<Serving> {
    // answers as of just after the events, so no feed is beyond its SLA
    let serving = serving_over(Arc::new(FakeSpeed::new(Mode::NothingSinceCutoff, None)), 60_000, rules).with_models(models);
    Arc::new(serving.with_clock(Clock::Fixed(CUTOFF)))
}

/// The test batch view (WH-1 counted 10 units, the seller SL-1 reported 6) and its catalog.
fn test_batch() -> (BatchView, Vec<SkuInfo>) {
    let events = [event("e1", "WH-1", EventKind::Count, 10), event("e2", "SL-1", EventKind::Feed, 6)];
    let batch = BatchView { version: "test".into(), asof: CUTOFF, states: fold(&events, FoldConfig::default()).states, ..BatchView::default() };
    let skus = vec![SkuInfo {
        sku: "SKU-1".into(),
        category: "toys".into(),
        seller: None,
        hazmat: false,
        price: 10.0,
        attributes: r#"{"fragile":true}"#.into(),
    }];
    (batch, skus)
}

/// The test marketplace (the test batch view, both nodes in DE) over `speed`, the nodes' feeds
/// allowed `sla_ms` of silence.
fn serving_over(speed: Arc<dyn SpeedSource>, sla_ms: sellable_core::Millis, rules: Arc<RuleBook>) -> Serving {
    let node = |id: &str, kind, seller: Option<&str>| NodeInfo {
        node: id.into(),
        kind,
        region: "EU".into(),
        country: "DE".into(),
        seller: seller.map(Into::into),
        feed_sla_ms: sla_ms,
    };
    let nodes = vec![node("WH-1", NodeKind::Warehouse, None), node("SL-1", NodeKind::Seller, Some("S-1042"))];
    Serving::new(nodes, test_batch().0.meta(), speed, rules)
}

/// An editor saving a live rule file empties it and then writes it (some truncate first, some
/// take a moment between the two): no answer is ever given without its rules. A file left empty is
/// refused as dropping a whole ruleset (said in `GET /v1/rules`) until a forced reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_file_saved_by_an_editor_never_goes_live_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let compliance = dir.path().join("compliance.rules");
    let text = "ruleset \"compliance\"\nrule \"nothing to DE\" priority 100\nwhen region == \"DE\"\nthen deny \"embargo\"\n";
    std::fs::write(&compliance, text).unwrap();
    std::fs::write(dir.path().join("buffers.rules"), "rule \"seller buffer\" when node.seller == \"S-1042\" then hold 3\n").unwrap();
    let book = Arc::new(RuleBook::from_dir(dir.path(), Schema::standard().with_attribute("fragile", sellable_dsl::Type::Bool)).unwrap());
    book.clone().watch(Duration::from_millis(10));
    let base = serve(book).await;
    let client = reqwest::Client::new();
    assert_eq!(ask(&client, &base).await.decision, sellable_core::Verdict::Deny);

    let stop = Arc::new(AtomicBool::new(false));
    let asked = {
        let (stop, base, client) = (stop.clone(), base.clone(), client.clone());
        tokio::spawn(async move {
            let mut asked = 0;
            while !stop.load(Ordering::Relaxed) {
                let answer = ask(&client, &base).await;
                assert_eq!(answer.decision, sellable_core::Verdict::Deny, "an answer without the compliance rules: {answer:?}");
                asked += 1;
            }
            asked
        })
    };
    for save in 0..30u64 {
        std::fs::write(&compliance, "").unwrap();
        tokio::time::sleep(Duration::from_millis(save % 4 * 5)).await;
        std::fs::write(&compliance, text).unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    // left empty: refused, with the reason, and the rules keep answering
    std::fs::write(&compliance, "").unwrap();
    let status = wait_for(&client, &base, |s| s["last_reload"]["ok"] == false).await;
    let reason = status["last_reload"]["diagnostics"][0].as_str().unwrap();
    assert!(reason.contains("drop every rule of") && reason.contains("compliance.rules"), "{reason}");
    stop.store(true, Ordering::Relaxed);
    assert!(asked.await.unwrap() > 20);
    assert_eq!(ask(&client, &base).await.decision, sellable_core::Verdict::Deny);
    let refused = client.post(format!("{base}/v1/rules:reload")).send().await.unwrap();
    assert_eq!(refused.status(), 409);
    let forced = client.post(format!("{base}/v1/rules:reload?force=true")).send().await.unwrap();
    assert_eq!(forced.status(), 200);
    assert_eq!(ask(&client, &base).await.decision, sellable_core::Verdict::Promise, "forced: the emptied file is what is live");
}

/// A handler that panics answers 500 in the JSON error shape, without the panic's message, and
/// the server goes on answering on the same port.
#[tokio::test]
async fn a_handler_that_panics_answers_500_as_json_and_the_server_goes_on() {
    let serving = serving(Arc::new(RuleBook::empty(Schema::standard())), Arc::new(ModelBook::none()));
    let boom = axum::Router::new().route("/v1/boom", axum::routing::get(|| async { panic!("secret detail") as &str }));
    let routes = serving.clone().routes(&sellable_serving::door::Limits::default());
    let base = listen(serving.harden(boom.merge(routes))).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let response = client.get(format!("{base}/v1/boom")).header("x-request-id", "panicky-1").send().await.unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["x-request-id"], "panicky-1");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "internal", "{body}");
        assert!(!body["message"].as_str().unwrap().contains("secret"), "{body}");
        assert_eq!(ask(&client, &base).await.units, 1);
    }
    let response = client.get(format!("{base}/healthz")).header("x-request-id", "not an id; {}").send().await.unwrap();
    let generated = response.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(generated != "not an id; {}" && !generated.is_empty(), "{generated}");
}

async fn ask(client: &reqwest::Client, base: &str) -> Availability {
    let response = client.get(format!("{base}/v1/availability/SKU-1?region=DE&qty=1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn units_by_node(answer: &Availability) -> BTreeMap<String, i64> {
    answer.options.iter().map(|o| (o.node.clone(), o.units)).collect()
}

async fn rules_status(client: &reqwest::Client, base: &str) -> serde_json::Value {
    client.get(format!("{base}/v1/rules")).send().await.unwrap().json().await.unwrap()
}

/// Waits (bounded) until the rules status satisfies `done`.
async fn wait_for(client: &reqwest::Client, base: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    for _ in 0..200 {
        let status = rules_status(client, base).await;
        if done(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("rules status never changed: {}", rules_status(client, base).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_rules_keep_the_last_good_ones_and_fixed_rules_go_live_without_dropping_requests() {
    let dir = tempfile::tempdir().unwrap();
    let buffers = dir.path().join("buffers.rules");
    std::fs::write(&buffers, "rule \"seller buffer\" when node.seller == \"S-1042\" then hold 3\n").unwrap();
    let book = Arc::new(RuleBook::from_dir(dir.path(), Schema::standard().with_attribute("fragile", sellable_dsl::Type::Bool)).unwrap());
    book.clone().watch(Duration::from_millis(20));
    let base = serve(book).await;
    let client = reqwest::Client::new();

    let before = ask(&client, &base).await;
    assert_eq!(units_by_node(&before), BTreeMap::from([("WH-1".into(), 10), ("SL-1".into(), 3)]));
    assert_eq!(before.rules_fired[0].saw, ["node.seller = \"S-1042\""]);
    let live = before.versions.ruleset.clone().unwrap();

    // Load runs all along; not one request may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, served, failed, base, client) = (stop.clone(), served.clone(), failed.clone(), base.clone(), client.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(format!("{base}/v1/availability/SKU-1?region=DE&qty=1")).send().await {
                    Ok(response) if response.status() == 200 => served.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    // A broken file dropped into the live directory: rejected, reported, answers unchanged.
    let broken = dir.path().join("fragile.rules");
    std::fs::write(&broken, "rule \"fragile\" when sku.fragil then cap 1\n").unwrap();
    let status = wait_for(&client, &base, |s| s["last_reload"]["ok"] == false).await;
    let reported = status["last_reload"]["diagnostics"][0].as_str().unwrap();
    assert!(reported.contains("unknown field `sku.fragil`") && reported.contains("did you mean `sku.fragile`?"), "{reported}");
    assert_eq!(status["live"], live.as_str());
    let during = ask(&client, &base).await;
    assert_eq!(units_by_node(&during), units_by_node(&before));
    assert_eq!(during.versions.ruleset.as_deref(), Some(live.as_str()));
    let reload = client.post(format!("{base}/v1/rules:reload")).send().await.unwrap();
    assert_eq!(reload.status(), 422);

    // The fixed file goes live, with a new version in every answer.
    std::fs::write(&broken, "rule \"fragile\" when sku.fragile then cap 1\n").unwrap();
    let status = wait_for(&client, &base, |s| s["last_reload"]["ok"] == true && s["live"] != live.as_str()).await;
    let after = ask(&client, &base).await;
    assert_eq!(units_by_node(&after), BTreeMap::from([("WH-1".into(), 1), ("SL-1".into(), 1)]));
    assert_eq!(after.versions.ruleset.as_ref(), status["live"].as_str().map(String::from).as_ref());

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(served.load(Ordering::Relaxed) > 20, "the load should have run: {}", served.load(Ordering::Relaxed));
}

#[tokio::test]
async fn rules_check_endpoint_reports_diagnostics_and_tests() {
    let base = serve(Arc::new(RuleBook::empty(Schema::standard()))).await;
    let client = reqwest::Client::new();
    let text = "rule \"hazmat\" when sku.hazmatt then deny \"no\"\n";
    let body: serde_json::Value = client
        .post(format!("{base}/v1/rules:check?name=mine.rules"))
        .body(text)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["ok"], false);
    assert_eq!(body["diagnostics"][0]["line"], 1);
    assert_eq!(body["diagnostics"][0]["column"], 20);
    assert_eq!(body["diagnostics"][0]["hint"], "did you mean `sku.hazmat`?");
    assert!(body["diagnostics"][0]["rendered"].as_str().unwrap().contains("--> mine.rules:1:20"));

    let good = "rule \"cap\" when qty > 1 then cap 2\ntest \"t\" given qty = 3, atp = 5 expect units 2\n";
    let body: serde_json::Value =
        client.post(format!("{base}/v1/rules:check")).body(good).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["ok"], true);
    assert_eq!(body["tests"][0]["passed"], true);
}

/// A small real XGBoost model over the feature vector of `core`.
fn small_model_json() -> String {
    let width = sellable_core::features::names().len();
    let rows = 400;
    let features: Vec<f32> = (0..rows * width).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
    let labels: Vec<f32> = (0..rows).map(|r| f32::from(features[r * width] > 0.5)).collect();
    sellable_models::train_fixed(&features, rows, &labels, 5, 3, 0.3).unwrap().json().to_string()
}

/// Registers a small model over the feature vector of `core`, with the given threshold.
fn register(registry: &sellable_models::Registry, model_json: &str, threshold: f64) -> String {
    let manifest = sellable_models::registry::Manifest {
        version: String::new(),
        created: "2026-11-23T00:00:00Z".into(),
        features: sellable_core::features::names().iter().map(ToString::to_string).collect(),
        threshold,
        target_oversell_rate: 0.02,
        rounds: 5,
        lineage: sellable_models::registry::ModelLineage {
            trainset_version: 1,
            lake_version: 1,
            features_version: 1,
            trainset_code_version: "test".into(),
            code_version: "test".into(),
        },
        headline: Default::default(),
        config: serde_json::Value::Null,
        // a budget of 5% or more keeps the threshold; 1% asks for 0.95
        budgets: vec![[threshold, 0.05], [0.95, 0.01]],
        calibration: None,
    };
    registry.register(model_json, manifest, "{}", "<html></html>").unwrap()
}

/// Promote and rollback while requests run: not one fails, and every answer is wholly decided by
/// the version it names (v1 promises everything, v2's threshold of 1 denies everything). A
/// corrupt version is refused by promotion and, forced into the history, by serving, while the
/// live version keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_rollback_under_load_fail_no_request() {
    let json = small_model_json();
    let dir = tempfile::tempdir().unwrap();
    let registry = sellable_models::Registry::open(dir.path()).unwrap();
    let names = sellable_core::features::names();
    let (v1, v2) = (register(&registry, &json, 0.0), register(&registry, &json, 1.0));
    registry.promote(&v1, &names).unwrap();
    let book = Arc::new(ModelBook::from_registry(sellable_models::Registry::open(dir.path()).unwrap(), None).unwrap());
    book.clone().watch(Duration::from_millis(20));
    let base = serve_with(Arc::new(RuleBook::empty(Schema::standard())), book).await;
    let client = reqwest::Client::new();
    let first = ask(&client, &base).await;
    assert_eq!((first.versions.model.as_deref(), first.degraded), (Some("v1"), false), "{first:?}");
    assert!(first.options.iter().all(|option| option.p_fulfill.is_some_and(|p| (0.0..=1.0).contains(&p))));

    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let seen = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, served, failed, seen, base, client) = (stop.clone(), served.clone(), failed.clone(), seen.clone(), base.clone(), client.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let response = client.get(format!("{base}/v1/availability/SKU-1?region=DE&qty=1")).send().await;
                let answer = match response {
                    Ok(response) if response.status() == 200 => response.json::<Availability>().await.ok(),
                    _ => None,
                };
                let consistent = answer.as_ref().is_some_and(|answer| match answer.versions.model.as_deref() {
                    Some("v1") => answer.units == 1,
                    Some("v2") => answer.units == 0 && answer.reasons.iter().any(|r| r.contains("threshold 1.000 of model v2")),
                    _ => false,
                });
                if consistent {
                    served.fetch_add(1, Ordering::Relaxed);
                    seen.lock().unwrap().insert(answer.unwrap().versions.model.unwrap());
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let live = || async { client.get(format!("{base}/v1/model")).send().await.unwrap().json::<serde_json::Value>().await.unwrap() };
    for _ in 0..5 {
        registry.promote(&v2, &names).unwrap();
        wait_until(|| async { live().await["live"] == "v2" }).await;
        assert_eq!(registry.rollback(&names).unwrap().version(), "v1");
        wait_until(|| async { live().await["live"] == "v1" }).await;
    }

    // a corrupt version: promotion refuses it; forced into the history, serving refuses it too
    let v3 = register(&registry, &json[..json.len() / 2], 0.5);
    let refused = registry.promote(&v3, &names).unwrap_err().to_string();
    assert!(refused.starts_with("model v3 is corrupt: model: not JSON"), "{refused}");
    std::fs::write(dir.path().join("history.json"), format!(r#"["{v1}","{v3}"]"#)).unwrap();
    wait_until(|| async { live().await["error"].as_str().is_some_and(|e| e.contains("v3 is corrupt") && e.ends_with("v1 keeps serving")) }).await;
    let reload = client.post(format!("{base}/v1/model:reload")).send().await.unwrap();
    assert_eq!(reload.status(), 422);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed or inconsistent answers");
    assert!(served.load(Ordering::Relaxed) > 50, "load ran: {} answers", served.load(Ordering::Relaxed));
    assert_eq!(*seen.lock().unwrap(), std::collections::BTreeSet::from(["v1".to_string(), "v2".to_string()]));
    assert_eq!(ask(&client, &base).await.versions.model.as_deref(), Some("v1"));
}

/// A shadow version is scored beside the live one (counted in the metrics) and never decides.
#[tokio::test]
async fn a_shadow_model_is_scored_beside_the_live_one_and_never_decides() {
    let json = small_model_json();
    let dir = tempfile::tempdir().unwrap();
    let registry = sellable_models::Registry::open(dir.path()).unwrap();
    // v2 would deny everything if it decided
    let (v1, v2) = (register(&registry, &json, 0.0), register(&registry, &json, 1.0));
    registry.promote(&v1, &sellable_core::features::names()).unwrap();
    let open = || sellable_models::Registry::open(dir.path()).unwrap();
    let unknown = ModelBook::from_registry(open(), Some("v9")).err().unwrap().to_string();
    assert!(unknown.starts_with("shadow model: unknown model version 'v9'"), "{unknown}");
    let book = Arc::new(ModelBook::from_registry(open(), Some(&v2)).unwrap());
    let base = serve_with(Arc::new(RuleBook::empty(Schema::standard())), book).await;
    let client = reqwest::Client::new();
    let answer = ask(&client, &base).await;
    assert_eq!((answer.versions.model.as_deref(), answer.units), (Some("v1"), 1), "{answer:?}");
    let status: serde_json::Value = client.get(format!("{base}/v1/model")).send().await.unwrap().json().await.unwrap();
    assert_eq!((status["live"].as_str(), status["shadow"].as_str()), (Some("v1"), Some("v2")));
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    // both nodes of the answer were scored in shadow; same model, so the difference is 0
    assert!(metrics.contains("sellable_shadow_score_difference_count 2"), "{metrics}");
    assert!(metrics.contains("sellable_shadow_score_difference_sum 0"), "{metrics}");
}

/// With no model ever evaluated, answers are rules on naive ATP, marked degraded.
#[tokio::test]
async fn without_a_model_answers_say_model_unavailable() {
    let base = serve(Arc::new(RuleBook::empty(Schema::standard()))).await;
    let answer = ask(&reqwest::Client::new(), &base).await;
    assert!(answer.degraded && answer.degraded_reasons.iter().any(|r| r.starts_with("model unavailable")), "{answer:?}");
    assert_eq!((answer.versions.model, answer.units), (None, 1));
    assert!(answer.options.iter().all(|option| option.p_fulfill.is_none()));
}

/// Polls `done` every 10 ms, for at most 5 s.
async fn wait_until<F: std::future::Future<Output = bool>>(done: impl Fn() -> F) {
    for _ in 0..500 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition never met");
}

/// Without a usable speed view, answers come back within the timeout, graded `conservative`:
/// the batch view minus the outflow bound of its features, nothing where no bound is known. The
/// batch row comes from the store when it answers, else from the rows this server read lately;
/// a SKU it never read while the store is away gets nothing promised.
#[tokio::test]
async fn a_broken_speed_view_gives_conservative_answers_within_the_timeout() {
    let hour = 3_600_000;
    // WH-1 reserved 1 unit in the hour before the cutoff; SL-1 has no features
    let mut features = vec![0.0; sellable_core::features::BATCH.len()];
    features[sellable_core::features::BATCH.iter().position(|name| *name == "reserve_units_1h").unwrap()] = 1.0;
    for mode in [Mode::Failing, Mode::Hanging, Mode::OtherCutoff] {
        let other_cutoff = matches!(mode, Mode::OtherCutoff);
        let store = Arc::new(FakeSpeed::new(mode, Some(features.clone())));
        let speed: Arc<dyn SpeedSource> = store.clone();
        let serving = Arc::new(serving_over(speed.clone(), 10 * hour, Arc::new(RuleBook::empty(Schema::standard()))).with_clock(Clock::Fixed(CUTOFF + hour)));
        // a SKU read while the store answered, then the store breaks
        let fresh = serving.availability("SKU-1", "DE", 1, CUTOFF + hour).await.unwrap();
        assert_eq!(fresh.grade == sellable_core::Grade::Conservative, other_cutoff, "{fresh:?}");
        store.breaks();
        assert_eq!(serving.refresh_watermarks().await.is_err(), !other_cutoff);
        assert!(serving.speed_distrust().is_some());
        assert_eq!(serving.readiness().grade, sellable_core::Grade::Conservative);
        let started = std::time::Instant::now();
        let answer = serving.availability("SKU-1", "DE", 1, CUTOFF + hour).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "the 50 ms timeout was not kept: {:?}", started.elapsed());
        assert_eq!(answer.grade, sellable_core::Grade::Conservative, "{answer:?}");
        // 10 units minus 2 × 1 unit/h × 1 h + 1
        assert_eq!(units_by_node(&answer), BTreeMap::from([("WH-1".to_string(), 7)]), "{answer:?}");
        assert!(answer.degraded_reasons.iter().any(|r| r.ends_with("the batch view minus what may have left since its cutoff")), "{answer:?}");

        // a server that never read the SKU before the store went away promises nothing
        let store = Arc::new(FakeSpeed::new(mode, Some(features.clone())));
        store.breaks();
        let cold = serving_over(store, 10 * hour, Arc::new(RuleBook::empty(Schema::standard()))).with_clock(Clock::Fixed(CUTOFF + hour));
        let answer = cold.availability("SKU-1", "DE", 1, CUTOFF + hour).await.unwrap();
        if other_cutoff {
            // the store answers, with the row, but not for this cutoff: the row alone
            assert_eq!((answer.grade, units_by_node(&answer)), (sellable_core::Grade::Conservative, BTreeMap::from([("WH-1".to_string(), 7)])), "{answer:?}");
        } else {
            assert_eq!((answer.grade, answer.units, answer.available), (sellable_core::Grade::Unavailable, 0, 0), "{answer:?}");
            assert!(answer.degraded_reasons.iter().any(|r| r.ends_with("has not read the SKU's batch view lately: nothing promised")), "{answer:?}");
        }
    }
}

/// With no model live, each node holds back the safety stock of the last evaluation.
#[tokio::test]
async fn without_a_live_model_the_last_evaluations_safety_stock_is_held_back() {
    let json = small_model_json();
    let dir = tempfile::tempdir().unwrap();
    let registry = sellable_models::Registry::open(dir.path()).unwrap();
    let version = register(&registry, &json, 0.0);
    let manifest_path = registry.file(&version, "manifest.json").unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["headline"]["safety_stock"] = serde_json::json!(3.0);
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    // the version is live in the registry but does not load
    std::fs::write(dir.path().join("history.json"), format!(r#"["{version}"]"#)).unwrap();
    std::fs::write(registry.file(&version, "model.json").unwrap(), "not a model").unwrap();
    let book = Arc::new(ModelBook::from_registry(sellable_models::Registry::open(dir.path()).unwrap(), None).unwrap());
    assert_eq!((book.current().is_none(), book.fallback_safety_stock()), (true, 3));
    let base = serve_with(Arc::new(RuleBook::empty(Schema::standard())), book).await;
    let answer = ask(&reqwest::Client::new(), &base).await;
    assert_eq!(units_by_node(&answer), BTreeMap::from([("WH-1".to_string(), 7), ("SL-1".to_string(), 3)]), "{answer:?}");
    assert!(answer.degraded_reasons.iter().any(|r| r.starts_with("model unavailable: the static safety stock (3 unit(s)")), "{answer:?}");
}

/// A batch view older than expected: `bounded_stale` with a unit held back per node while the
/// speed view is usable; `unavailable` (nothing promised, `/readyz` 503) when it is not.
#[tokio::test]
async fn an_old_batch_view_holds_a_margin_back_and_alone_promises_nothing() {
    let late = CUTOFF + 40 * 3_600_000;
    let rules = || Arc::new(RuleBook::empty(Schema::standard()));
    let usable = Arc::new(serving_over(Arc::new(FakeSpeed::new(Mode::NothingSinceCutoff, None)), 100 * 3_600_000, rules()).with_clock(Clock::Fixed(late)));
    usable.refresh_watermarks().await.unwrap();
    let answer = usable.availability("SKU-1", "DE", 1, late).await.unwrap();
    assert_eq!(answer.grade, sellable_core::Grade::BoundedStale, "{answer:?}");
    assert_eq!(units_by_node(&answer), BTreeMap::from([("WH-1".to_string(), 9), ("SL-1".to_string(), 5)]));
    assert!(answer.degraded_reasons.iter().any(|r| r.starts_with("batch view is 40 h old (expected at most 36 h)")), "{answer:?}");
    assert_eq!((usable.readiness().ready, usable.readiness().grade), (true, sellable_core::Grade::BoundedStale));

    let alone = Arc::new(serving_over(Arc::new(FakeSpeed::new(Mode::OtherCutoff, None)), 100 * 3_600_000, rules()).with_clock(Clock::Fixed(late)));
    alone.refresh_watermarks().await.unwrap();
    let answer = alone.availability("SKU-1", "DE", 1, late).await.unwrap();
    assert_eq!((answer.grade, answer.available), (sellable_core::Grade::Unavailable, 0), "{answer:?}");
    let base = listen(alone.router()).await;
    let response = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!((body["ready"].as_bool(), body["grade"].as_str()), (Some(false), Some("unavailable")), "{body}");
    let health: serde_json::Value = reqwest::get(format!("{base}/healthz")).await.unwrap().json().await.unwrap();
    assert_eq!(health, serde_json::json!({ "status": "ok" }));
}

/// Options are ranked by expected fulfilment (with no model: units, then node), and the plan
/// serves the order from one node when one can, else split over the ranked options.
/// Single-SKU answers asked at the same time share their reads of the store: 64 at once, against
/// a store taking 20 ms a read, make a few reads, and each gets the answer it would get alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_answers_share_their_reads_of_the_store() {
    let store = Arc::new(FakeSpeed::new(Mode::NothingSinceCutoff, None).taking(Duration::from_millis(20)));
    let limits = sellable_serving::grading::Limits { speed_timeout: Duration::from_secs(5), ..Default::default() };
    let serving = Arc::new(serving_over(store.clone(), 60_000, Arc::new(RuleBook::empty(Schema::standard()))).with_clock(Clock::Fixed(CUTOFF)).with_limits(limits));
    let alone = serving.availability("SKU-1", "DE", 2, CUTOFF).await.unwrap();
    assert_eq!(store.reads.load(Ordering::SeqCst), 1);
    let asked: Vec<_> = (0..64)
        .map(|index| {
            let serving = serving.clone();
            tokio::spawn(async move { serving.availability(if index % 8 == 7 { "SKU-404" } else { "SKU-1" }, "DE", 2, CUTOFF).await })
        })
        .collect();
    for (index, answer) in futures::future::join_all(asked).await.into_iter().enumerate() {
        match answer.unwrap() {
            Ok(answer) => assert_eq!(serde_json::to_value(answer).unwrap(), serde_json::to_value(&alone).unwrap(), "answer {index}"),
            Err(error) => assert!(index % 8 == 7 && error.to_string().contains("SKU-404"), "answer {index}: {error}"),
        }
    }
    let reads = store.reads.load(Ordering::SeqCst) - 1;
    assert!((1..=6).contains(&reads), "64 answers made {reads} reads");
}

/// An epoch's published rows do not change while it is served: a SKU's row is read from the
/// store once, then only its speed states, with the same answers; a new epoch reads it afresh.
#[tokio::test]
async fn an_epoch_reads_a_skus_row_once_and_a_new_epoch_again() {
    let store = Arc::new(FakeSpeed::new(Mode::NothingSinceCutoff, None));
    let serving = serving_over(store.clone(), 60_000, Arc::new(RuleBook::empty(Schema::standard()))).with_clock(Clock::Fixed(CUTOFF));
    let json = |answer: Availability| serde_json::to_value(answer).unwrap();
    let first = json(serving.availability("SKU-1", "DE", 2, CUTOFF).await.unwrap());
    for _ in 0..3 {
        assert_eq!(json(serving.availability("SKU-1", "DE", 2, CUTOFF).await.unwrap()), first);
    }
    assert_eq!((store.reads.load(Ordering::SeqCst), store.rows_sent.load(Ordering::SeqCst)), (4, 1), "four reads, one row sent");
    serving.swap_epoch(test_batch().0.meta(), store.clone());
    assert_eq!(json(serving.availability("SKU-1", "DE", 2, CUTOFF).await.unwrap()), first);
    assert_eq!(store.rows_sent.load(Ordering::SeqCst), 2, "the new epoch reads the row again");

    // a store caught up from another cutoff holds another batch view: its row answers, but is
    // not kept as this epoch's, and each read asks for it again
    let other = Arc::new(FakeSpeed::new(Mode::OtherCutoff, None));
    let serving = serving_over(other.clone(), 60_000, Arc::new(RuleBook::empty(Schema::standard()))).with_clock(Clock::Fixed(CUTOFF));
    for _ in 0..3 {
        let answer = serving.availability("SKU-1", "DE", 2, CUTOFF).await.unwrap();
        assert_eq!(answer.grade, sellable_core::Grade::Conservative, "{answer:?}");
    }
    assert_eq!(other.rows_sent.load(Ordering::SeqCst), 3, "the row of another batch view is read each time");
}

#[tokio::test]
async fn the_plan_takes_one_node_when_it_can_and_splits_when_none_can() {
    let serving = serving(Arc::new(RuleBook::empty(Schema::standard())), Arc::new(ModelBook::none()));
    let plan = |answer: &Availability| answer.plan.iter().map(|taken| (taken.node.clone(), taken.units)).collect::<Vec<_>>();
    let one = serving.availability("SKU-1", "DE", 3, CUTOFF).await.unwrap();
    assert_eq!(one.options.iter().map(|option| option.node.as_str()).collect::<Vec<_>>(), ["WH-1", "SL-1"]);
    assert_eq!(plan(&one), [("WH-1".to_string(), 3)]);
    let split = serving.availability("SKU-1", "DE", 12, CUTOFF).await.unwrap();
    assert_eq!(plan(&split), [("WH-1".to_string(), 10), ("SL-1".to_string(), 2)]);
    let denied = serving.availability("SKU-1", "DE", 17, CUTOFF).await.unwrap();
    assert!(denied.plan.is_empty(), "{denied:?}");
}

/// A node's recent demand reaches the rules as `velocity_5m` and `velocity_1h` (units reserved
/// there in the last 5 minutes and the last hour, by event time); a node without any has 0.
#[tokio::test]
async fn recent_demand_at_a_node_is_the_velocity_rules_see() {
    let dir = tempfile::tempdir().unwrap();
    let rules = "rule \"hot\" when velocity_5m >= 8 and velocity_1h >= 13 then cap 1\n\
                 rule \"hotter\" when velocity_5m >= 9 then cap 0\n\
                 rule \"calm\" when velocity_1h == 0 then cap 2\n";
    std::fs::write(dir.path().join("hot.rules"), rules).unwrap();
    let book = Arc::new(RuleBook::from_dir(dir.path(), Schema::standard()).unwrap());
    let serving = serving_over(Arc::new(FakeSpeed::new(Mode::RecentDemand, None)), 24 * 3_600_000, book);
    let answer = serving.availability("SKU-1", "DE", 1, DEMAND_NOW).await.unwrap();
    let mut fired: Vec<(&str, &str, &[String])> = answer.rules_fired.iter().map(|f| (f.node.as_str(), f.rule.as_str(), f.saw.as_slice())).collect();
    fired.sort();
    assert_eq!(
        fired,
        [("SL-1", "calm", &["velocity_1h = 0".to_string()][..]), ("WH-1", "hot", &["velocity_5m = 8".to_string(), "velocity_1h = 13".to_string()][..])],
        "{answer:?}"
    );
    assert_eq!(units_by_node(&answer), BTreeMap::from([("WH-1".to_string(), 1), ("SL-1".to_string(), 2)]), "{answer:?}");
    // an hour later the burst has left both windows
    let later = serving.availability("SKU-1", "DE", 1, DEMAND_NOW + 3_600_000).await.unwrap();
    assert!(later.rules_fired.iter().all(|f| f.rule == "calm"), "{later:?}");
    assert_eq!(later.rules_fired.len(), 2, "{later:?}");
}

/// An oversell budget per request: the live model's threshold for it (from its validation days)
/// decides instead of its own, and the reasons say so; a budget out of range is a 400; one that
/// cannot be kept (no live model) promises nothing and says why.
#[tokio::test]
async fn an_oversell_budget_asks_the_model_for_its_threshold() {
    let json = small_model_json();
    let dir = tempfile::tempdir().unwrap();
    let registry = sellable_models::Registry::open(dir.path()).unwrap();
    // its own threshold 0.0 promises every unit; a budget of 1% asks for 0.95
    let version = register(&registry, &json, 0.0);
    registry.promote(&version, &sellable_core::features::names()).unwrap();
    let book = Arc::new(ModelBook::from_registry(sellable_models::Registry::open(dir.path()).unwrap(), None).unwrap());
    let base = serve_with(Arc::new(RuleBook::empty(Schema::standard())), book).await;
    let client = reqwest::Client::new();
    let get = |query: &str| client.get(format!("{base}/v1/availability/SKU-1?region=DE&qty=1{query}")).send();
    let own: Availability = get("").await.unwrap().json().await.unwrap();
    let scores: BTreeMap<String, f64> = own.options.iter().map(|option| (option.node.clone(), option.p_fulfill.unwrap())).collect();
    assert_eq!(units_by_node(&own), BTreeMap::from([("WH-1".to_string(), 10), ("SL-1".to_string(), 6)]), "{own:?}");
    assert!(scores.values().any(|p| *p < 0.95), "a node the 1% budget denies: {scores:?}");
    for (budget, threshold) in [("0.05", 0.0), ("0.2", 0.0), ("0.01", 0.95), ("0.001", 1.0)] {
        let answer: Availability = get(&format!("&oversell_budget={budget}")).await.unwrap().json().await.unwrap();
        for (node, p) in &scores {
            let units = answer.options.iter().find(|option| &option.node == node).map_or(0, |option| option.units);
            let expected = if *p >= threshold { own.options.iter().find(|option| &option.node == node).unwrap().units } else { 0 };
            assert_eq!(units, expected, "budget {budget}, {node} scored {p}: {answer:?}");
            let said = format!("{node}: p_fulfill {p:.3} is under the threshold {threshold:.3} of model {version} for the oversell budget {budget}");
            assert_eq!(answer.reasons.contains(&said), *p < threshold, "{said}: {:?}", answer.reasons);
        }
    }
    for bad in ["0", "-0.1", "1.5", "NaN", "lots"] {
        let response = get(&format!("&oversell_budget={bad}")).await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["message"].as_str().unwrap().contains("oversell_budget must be a rate from 0.0001 to 1"), "{body}");
    }
    // a budget for the SKU's category applies when the request names none
    let book = Arc::new(ModelBook::from_registry(sellable_models::Registry::open(dir.path()).unwrap(), None).unwrap());
    let by_category = serving_over(Arc::new(FakeSpeed::new(Mode::NothingSinceCutoff, None)), 60_000, Arc::new(RuleBook::empty(Schema::standard())));
    let by_category = Arc::new(by_category.with_models(book).with_clock(Clock::Fixed(CUTOFF)).with_budgets([("toys".to_string(), 0.001), ("books".to_string(), 0.2)]));
    let strict = by_category.availability("SKU-1", "DE", 1, CUTOFF).await.unwrap();
    assert!(strict.reasons.iter().any(|reason| reason.ends_with("for the oversell budget 0.001")), "{strict:?}");
    assert_eq!(strict.units, 0, "{strict:?}");
    let named = by_category.availability_within("SKU-1", "DE", 1, Some(0.2), CUTOFF).await.unwrap();
    assert_eq!(units_by_node(&named), units_by_node(&own), "the request's own budget wins: {named:?}");

    // without a live model no budget can be kept: nothing is promised, and the answer says why
    let none = serve(Arc::new(RuleBook::empty(Schema::standard()))).await;
    let answer: Availability = client.get(format!("{none}/v1/availability/SKU-1?region=DE&oversell_budget=0.01")).send().await.unwrap().json().await.unwrap();
    assert_eq!((answer.units, answer.available, answer.degraded), (0, 0, true), "{answer:?}");
    assert!(answer.degraded_reasons.contains(&"no model is live: nothing promised within the oversell budget 0.01".to_string()), "{answer:?}");
}
