//! The loop, run for real against Redis and a Lance lake: a marketplace's events stream in (in
//! chunks of arrival time, one of them half through `POST /v1/events`) while fold workers (the
//! epoch's own and a fold role's) and the archiver run, with two cutovers on the way, the fold
//! role and the archiver crashing and a cutover interrupted. After every chunk and every cutover,
//! every answer for a sample of SKUs and countries equals `core`'s fold of the events accepted so
//! far; at the end the lake holds every event exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use sellable_batch::{Lake, Night, Progress};
use sellable_bench::{generate, SimConfig};
use sellable_core::event::{encode_json, read_event_file};
use sellable_core::{fold, Event, FoldConfig, Grade, Millis, NodeInfo};
use sellable_lifecycle::{cutover, fold_role, start, LifecycleConfig};
use sellable_serving::{RuleBook, Serving};
use sellable_speed::archive::{run_archiver, ARCHIVE_GROUP};
use sellable_speed::stream::{publish, GroupProbe, StreamConfig, StreamIntake};

const HOUR: Millis = 3_600_000;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// Waits (bounded) until `group` has read the whole stream.
async fn drained(stream: &str, group: &str) {
    drained_at(&redis_url(), stream, group).await
}

async fn drained_at(url: &str, stream: &str, group: &str) {
    let mut probe = GroupProbe::open(url).await.unwrap();
    for _ in 0..1_500 {
        if probe.caught_up(stream, group).await.unwrap() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{group} never read the whole of {stream}");
}

/// Every answer of the sample against the fold of `accepted`, as of `now`: units by node (naive
/// ATP: no model, no rules), nodes beyond their feed SLA excluded. Returns the units compared.
async fn check(serving: &Serving, accepted: &[Event], nodes: &[NodeInfo], sample: &[(String, String)], now: Millis, when: &str) -> i64 {
    serving.refresh_watermarks().await.unwrap();
    let oracle = fold(accepted, FoldConfig::default());
    let marks = sellable_core::fold::watermarks(accepted, FoldConfig::default());
    let stale: BTreeSet<&str> =
        nodes.iter().filter(|node| marks.get(&node.node).is_some_and(|arrived| now - arrived > node.feed_sla_ms)).map(|node| node.node.as_str()).collect();
    let mut compared = 0;
    for (sku, country) in sample {
        let answer = serving.availability(sku, country, 1, now).await.unwrap();
        assert!(matches!(answer.grade, Grade::Fresh | Grade::BoundedStale), "{when}: {answer:?}");
        let served: BTreeMap<String, i64> = answer.options.iter().map(|o| (o.node.clone(), o.units)).collect();
        let expected: BTreeMap<String, i64> = nodes
            .iter()
            .filter(|node| node.country == *country && !stale.contains(node.node.as_str()))
            .filter_map(|node| Some((node.node.clone(), oracle.state(sku, &node.node)?.atp())))
            .filter(|(_, atp)| *atp > 0)
            .collect();
        assert_eq!(served, expected, "{when}: {sku} in {country}; the answer: {answer:?}; the speed view's watermarks: {:?}", serving.epoch().speed.watermarks().await);
        compared += served.values().sum::<i64>();
    }
    compared
}

/// The lifecycle's settings for a test: `url`, the stream and namespace named, one local worker,
/// 4 partitions, full nights, old epochs retired at once.
fn test_config(url: String, stream: String, namespace: String) -> LifecycleConfig {
    LifecycleConfig {
        url,
        stream,
        namespace,
        fold: FoldConfig::default(),
        workers: 1,
        known: None,
        partitions: 4,
        catch_up_timeout: Duration::from_secs(60),
        retire_after: Duration::ZERO,
        incremental: false,
    }
}

/// The keys of `pattern` Redis holds, by SCAN.
async fn keys_matching(connection: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let (mut cursor, mut found) = (0_u64, Vec::new());
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(connection).await.unwrap();
        found.extend(keys);
        cursor = next;
        if cursor == 0 {
            return found;
        }
    }
}

/// A generated marketplace in a lake: its first day imported and batched as of one day after the
/// start, the rest of its events (`streamed`) to come.
struct Market {
    _dir: tempfile::TempDir,
    events: Vec<Event>,
    lake: Arc<Lake>,
    skus: Vec<sellable_core::SkuInfo>,
    nodes: Vec<NodeInfo>,
    first_cutoff: Millis,
    imported: Vec<Event>,
    streamed: Vec<Event>,
}

async fn market(sim: SimConfig) -> Market {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(&sim, &dir.path().join("gen")).unwrap();
    let events: Vec<Event> = read_event_file(&summary.paths.events).unwrap().map(Result::unwrap).collect();
    let lake = Arc::new(Lake::open(&dir.path().join("lake")).unwrap());
    let skus = sellable_core::catalog::read_parquet(&summary.paths.skus, sellable_core::catalog::skus_from_batch).unwrap();
    let nodes = sellable_core::catalog::read_parquet(&summary.paths.nodes, sellable_core::catalog::nodes_from_batch).unwrap();
    lake.import_catalog(&skus, &nodes).await.unwrap();
    let first_cutoff = sim.start + 24 * HOUR;
    let (imported, streamed): (Vec<Event>, Vec<Event>) = events.iter().cloned().partition(|e| e.arrival() <= first_cutoff);
    lake.import_events(imported.clone().into_iter().map(Ok)).await.unwrap();
    lake.nightly(first_cutoff, FoldConfig::default(), &Progress::hidden()).await.unwrap();
    Market { _dir: dir, events, lake, skus, nodes, first_cutoff, imported, streamed }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_the_fold_of_every_accepted_event_across_two_cutovers() {
    let Market { _dir, events, lake, skus: _, nodes, first_cutoff, imported, streamed } =
        market(SimConfig { seed: 23, skus: 150, nodes: 12, days: 4.0, ..SimConfig::default() }).await;

    let id = std::process::id();
    let mut config = LifecycleConfig {
        workers: 2,
        // the two cutovers are a day apart: the second folds its night from the first's state
        incremental: true,
        ..test_config(redis_url(), format!("sellable-test-lifecycle-{id}"), format!("sellable-test-lifecycle-{id}"))
    };
    let client = redis::Client::open(config.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(&config.stream).query_async(&mut connection).await.unwrap();

    let mut epoch = start(&lake, &config).await.unwrap();
    // the cutovers here are 12 to 42 hours apart: no margin for an old batch view
    let limits = sellable_serving::grading::Limits { batch_max_age_ms: 7 * 24 * HOUR, ..Default::default() };
    // a serving process as `--role serve` starts: the batch view from the epoch's namespace
    let serving_of = |speed: Arc<dyn sellable_core::SpeedSource>| {
        let nodes = nodes.clone();
        async move {
            let rules = Arc::new(RuleBook::empty(sellable_dsl::Schema::standard()));
            let batch = speed.batch_meta().await.unwrap().expect("the epoch publishes its batch view");
            Serving::new(nodes, batch, speed, rules).with_limits(limits)
        }
    };
    let mut serving = Arc::new(serving_of(epoch.speed.clone()).await);
    let (url, stream_name) = (config.url.clone(), config.stream.clone());
    let archive = || {
        let (lake, url, stream) = (lake.clone(), url.clone(), StreamConfig::new(&stream_name, ARCHIVE_GROUP, "archiver"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            run_archiver(&url, lake.as_ref(), stream, Duration::from_millis(100), None, None, shutdown).await
        });
        (stop, task)
    };
    let (mut stop_archiver, mut archiver) = archive();
    // a fold role beside the epoch's own workers: consumers of the same groups
    let fold_config = LifecycleConfig { workers: 1, ..config.clone() };
    let folder = || {
        let config = fold_config.clone();
        tokio::spawn(async move { fold_role(&config, "fold-role", std::future::pending()).await })
    };
    let mut fold_role_task = folder();

    let oracle = fold(&events, FoldConfig::default());
    let sample = sellable_bench::stocked_requests(&oracle, &nodes, 60);

    // six chunks of 12 hours of arrivals; a cutover after the second and the fourth, at the middle
    // of the chunk before it (so some of the lake's events are after the cutoff); the archiver
    // and the fold role crash in the third chunk, and the process in the middle of a cutover in
    // the fourth; half of the fifth chunk is posted over HTTP (arriving at the chunk's end). The
    // epochs after the first cutover have 64 partitions instead of 4: a new count migrates
    // the speed view at a cutover, and every answer stays exact
    let mut accepted = imported.clone();
    let mut compared = 0;
    for chunk in 0..6 {
        let (from, to) = (first_cutoff + chunk * 12 * HOUR, first_cutoff + (chunk + 1) * 12 * HOUR);
        let arrived: Vec<Event> = streamed.iter().filter(|e| e.arrival() > from && e.arrival() <= to).cloned().collect();
        let (posted, published) = arrived.split_at(if chunk == 4 { arrived.len() / 2 } else { 0 });
        accepted.extend(published.iter().cloned());
        publish(&config.url, &config.stream, published.iter().map(encode_json)).await.unwrap();
        if !posted.is_empty() {
            let server = serving_of(epoch.speed.clone()).await;
            let intake = Arc::new(StreamIntake::new(&config.url, &config.stream).unwrap());
            let server = Arc::new(server.with_clock(sellable_serving::Clock::Fixed(to)).with_intake(intake));
            accepted.extend(post_events(server, posted).await.into_iter().map(|event| Event { arrived: Some(to), ..event }));
        }
        if chunk == 2 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            // as crashes: nothing acknowledged after this
            archiver.abort();
            fold_role_task.abort();
            let _ = archiver.await;
            let _ = fold_role_task.await;
            (stop_archiver, archiver) = archive();
            fold_role_task = folder();
        }
        if chunk == 3 {
            // a crash in the middle of a cutover: the process restarts from the lake
            // (a full night: the real cutover below folds its night from the first one's state)
            let crashing_config = LifecycleConfig { incremental: false, ..config.clone() };
            let (crashing_lake, crashing_serving) = (lake.clone(), serving.clone());
            let interrupted = tokio::spawn(async move {
                let _ = cutover(&crashing_lake, &crashing_serving, epoch, &crashing_config, from - 3 * HOUR).await;
            });
            tokio::time::sleep(Duration::from_millis(600)).await;
            interrupted.abort();
            let _ = interrupted.await;
            epoch = start(&lake, &config).await.unwrap();
            serving = Arc::new(serving_of(epoch.speed.clone()).await);
        }
        drained(&config.stream, &epoch.group).await;
        drained(&config.stream, ARCHIVE_GROUP).await;
        compared += check(&serving, &accepted, &nodes, &sample, to, &format!("after chunk {chunk}")).await;
        if chunk == 1 || chunk == 3 {
            let cutoff = from - 6 * HOUR;
            let partitions = if chunk == 3 { 64 } else { 4 };
            assert_eq!(epoch.speed.partitions().await.unwrap(), Some(4));
            config.partitions = partitions;
            let (next, report) = cutover(&lake, &serving, epoch, &config, cutoff).await.map_err(|(_, error)| error).unwrap();
            assert_eq!(next.speed.partitions().await.unwrap(), Some(partitions));
            assert_eq!((report.to, serving.epoch().batch.asof, next.cutoff), (cutoff, cutoff, cutoff));
            assert_ne!(report.position, "0", "the archive had recorded its position");
            // the second night, a day after the first, is folded from the state the first left
            match chunk {
                1 => assert!(matches!(&report.night, Some(Night::Full { why }) if why.contains("no earlier night")), "{report:?}"),
                _ => assert_eq!(report.night, Some(Night::Incremental { from: first_cutoff + 6 * HOUR })),
            }
            epoch = next;
            compared += check(&serving, &accepted, &nodes, &sample, to, &format!("after the cutover to {cutoff}")).await;
        }
    }
    assert!(compared > 100, "the checks compared real stock: {compared} units");

    // the lake holds every event exactly once
    let _ = stop_archiver.send(());
    archiver.await.unwrap().unwrap();
    let mut in_lake: Vec<String> = lake.events_after(Millis::MIN).await.unwrap().into_iter().map(|e| e.unwrap().event_id).collect();
    let mut all: Vec<String> = accepted.iter().map(|e| e.event_id.clone()).collect();
    in_lake.sort();
    all.sort();
    assert_eq!(in_lake.len(), all.len());
    assert!(in_lake == all, "the lake holds the accepted events");
    fold_role_task.abort();
    epoch.close(&config).await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(&config.stream).arg(format!("{}:dead", config.namespace)).query_async(&mut connection).await.unwrap();
    // every epoch retired, those of the cutover the crash stopped included: none of the
    // namespace's keys is left
    let left = keys_matching(&mut connection, &format!("{}:*", config.namespace)).await;
    assert!(left.is_empty(), "keys left in Redis: {left:?}");
}

/// An epoch that fails to open after its batch view is published (the stream's key holds a
/// string, so its group cannot be made) is refused with the error, and leaves nothing in Redis:
/// neither its namespace's keys nor its name in the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_that_fails_to_open_leaves_no_keys() {
    let market = market(SimConfig { seed: 5, skus: 40, nodes: 6, days: 2.0, ..SimConfig::default() }).await;
    let name = format!("sellable-test-lifecycle-failed-{}", std::process::id());
    let config = test_config(redis_url(), format!("{name}-stream"), name.clone());
    let client = redis::Client::open(config.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SET").arg(&config.stream).arg("not a stream").query_async(&mut connection).await.unwrap();
    let error = match start(&market.lake, &config).await {
        Ok(_) => panic!("an epoch opened on a stream key that holds a string"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("WRONGTYPE"), "{error}");
    let left = keys_matching(&mut connection, &format!("{name}:*")).await;
    let _: i64 = redis::cmd("DEL").arg(&config.stream).query_async(&mut connection).await.unwrap();
    assert!(left.is_empty(), "keys left in Redis: {left:?}");
}

/// Posts `events` to `POST /v1/events` of `server` (run on a port of its own) as NDJSON, in
/// bodies of 500, and checks every one was taken: applied, a duplicate (a fold worker folded its
/// stream copy first) or too late by the server's clock. Returns them.
async fn post_events(server: Arc<Serving>, events: &[Event]) -> Vec<Event> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let served = tokio::spawn(async move { axum::serve(listener, server.router()).await });
    let client = reqwest::Client::new();
    let mut folded = 0;
    for body in events.chunks(500) {
        let ndjson: String = body.iter().map(|event| encode_json(event) + "\n").collect();
        let answer: serde_json::Value = client.post(format!("{base}/v1/events")).body(ndjson).send().await.unwrap().json().await.unwrap();
        let taken = ["accepted", "duplicates", "too_late"].iter().map(|field| answer[field].as_u64().unwrap()).sum::<u64>();
        assert_eq!(taken, body.len() as u64, "{answer}");
        // folded by the server, or by a fold worker that read the server's stream copy first
        folded += answer["accepted"].as_u64().unwrap() + answer["duplicates"].as_u64().unwrap();
    }
    assert!(folded > 0, "no posted event was folded");
    served.abort();
    events.to_vec()
}

/// The loop on a three-master Redis Cluster: the epochs' namespaces are sized by the catalog and
/// spread over every master, clearing and retiring them works across slots, and the answers equal
/// `core`'s fold before and after a cutover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_runs_on_a_redis_cluster() {
    let cluster = sellable_bench::LocalCluster::start();
    let Market { _dir, events, lake, skus, nodes, first_cutoff, imported, streamed } =
        market(SimConfig { seed: 29, skus: 60, nodes: 8, days: 3.0, ..SimConfig::default() }).await;

    let config = LifecycleConfig {
        known: Some(Arc::new(sellable_core::KnownIds::of(&skus, &nodes))),
        partitions: 0,
        ..test_config(cluster.url(), "inventory".to_string(), "cluster".to_string())
    };
    let mut epoch = start(&lake, &config).await.unwrap();
    assert_eq!(epoch.speed.partitions().await.unwrap(), Some(sellable_speed::partitions_for(skus.len())));
    let limits = sellable_serving::grading::Limits { batch_max_age_ms: 7 * 24 * HOUR, ..Default::default() };
    let rules = Arc::new(RuleBook::empty(sellable_dsl::Schema::standard()));
    let serving = Serving::new(nodes.clone(), epoch.batch.clone(), epoch.speed.clone(), rules).with_limits(limits);
    let (stop_archiver, stopped) = tokio::sync::oneshot::channel::<()>();
    let (archive_lake, url) = (lake.clone(), config.url.clone());
    let archiver = tokio::spawn(async move {
        let stream = StreamConfig::new("inventory", ARCHIVE_GROUP, "archiver");
        let shutdown = async move {
            let _ = stopped.await;
        };
        run_archiver(&url, archive_lake.as_ref(), stream, Duration::from_millis(100), None, None, shutdown).await
    });
    let sample = sellable_bench::stocked_requests(&fold(&events, FoldConfig::default()), &nodes, 30);
    let mut accepted = imported;
    let mut compared = 0;
    for chunk in 0..2 {
        let (from, to) = (first_cutoff + chunk * 24 * HOUR, first_cutoff + (chunk + 1) * 24 * HOUR);
        let lines: Vec<Event> = streamed.iter().filter(|e| e.arrival() > from && e.arrival() <= to).cloned().collect();
        publish(&config.url, &config.stream, lines.iter().map(encode_json)).await.unwrap();
        accepted.extend(lines);
        drained_at(&config.url, &config.stream, &epoch.group).await;
        drained_at(&config.url, &config.stream, ARCHIVE_GROUP).await;
        compared += check(&serving, &accepted, &nodes, &sample, to, &format!("cluster, after chunk {chunk}")).await;
        if chunk == 0 {
            let cutoff = to - 6 * HOUR;
            let (next, _) = cutover(&lake, &serving, epoch, &config, cutoff).await.map_err(|(_, error)| error).unwrap();
            epoch = next;
            compared += check(&serving, &accepted, &nodes, &sample, to, "cluster, after the cutover").await;
        }
    }
    assert!(compared > 20, "the checks compared real stock: {compared} units");
    // the epoch's keys are on every master; the retired epoch's are gone from all of them
    for port in cluster.ports {
        let keys = |pattern: String| {
            let out = std::process::Command::new("redis-cli").args(["-p", &port.to_string(), "--scan", "--pattern", &pattern]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).lines().count()
        };
        assert!(keys(format!("{}:*", epoch.namespace)) > 0, "master {port} holds none of the epoch's keys");
        assert_eq!(keys(format!("cluster:e{first_cutoff}:*")), 0, "master {port} kept the retired epoch's keys");
    }
    let _ = stop_archiver.send(());
    archiver.await.unwrap().unwrap();
    let in_lake = lake.events_after(Millis::MIN).await.unwrap().len();
    assert_eq!(in_lake, accepted.len(), "the lake holds every event once");
    epoch.close(&config).await.unwrap();
}
