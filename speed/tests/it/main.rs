//! Integration tests of the speed layer against a real Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`) and the embedded store, with `core`'s fold as the oracle.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use sellable_bench::{generate, SimConfig};
use sellable_core::event::read_event_file;
use sellable_core::{fold, Event, Fold, FoldConfig, FoldStats, NodeState, Outcome};
use std::collections::BTreeSet;
use std::sync::Arc;

use sellable_speed::SpeedView;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// Runs `workers` consumers of the stream with `sellable fold --stream`'s loop until a step
/// finds nothing new.
async fn until_idle(url: &str, view: &Arc<SpeedView>, config: sellable_speed::stream::StreamConfig, workers: usize) -> sellable_speed::stream::StreamStats {
    let mut workers = sellable_speed::stream::Workers::new(config, workers);
    workers.idle_limit = Some(std::time::Duration::ZERO);
    let report = sellable_speed::stream::run_workers(url, view.clone(), workers, std::future::pending()).await.unwrap();
    report.stats
}

async fn redis_view(test: &str) -> SpeedView {
    redis_view_with(test, FoldConfig::default()).await
}

/// The Redis namespace of a test's view.
fn namespace(test: &str) -> String {
    format!("sellable-test-{test}-{}", std::process::id())
}

/// A Redis speed view in a namespace of its own, emptied first. Fails loudly without a server.
async fn redis_view_with(test: &str, config: FoldConfig) -> SpeedView {
    let url = redis_url();
    let namespace = namespace(test);
    let view = SpeedView::redis(&url, &namespace, config).await.unwrap_or_else(|error| {
        panic!("these tests need a Redis server at {url} ({error}); start one with `redis-server --daemonize yes` or set REDIS_URL")
    });
    view.clear().await.unwrap();
    view
}

fn simulated_events(seed: u64) -> Vec<Event> {
    events_of(&SimConfig { seed, skus: 60, nodes: 8, days: 2.0, ..SimConfig::default() })
}

fn events_of(config: &SimConfig) -> Vec<Event> {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(config, dir.path()).unwrap();
    read_event_file(&summary.paths.events).unwrap().map(Result::unwrap).collect()
}

/// Every sku×node of the oracle, compared with what the view holds.
async fn assert_matches_core_fold(view: &SpeedView, events: &[Event]) {
    assert_matches(view, &fold(events, FoldConfig::default())).await;
}

async fn assert_matches(view: &SpeedView, expected: &Fold) {
    let mut skus: Vec<&str> = expected.states.keys().map(|(sku, _)| sku.as_str()).collect();
    skus.dedup();
    let mut compared = 0;
    for sku in skus {
        let states = view.sku_states(sku).await.unwrap();
        let expected_states: Vec<(String, NodeState)> = expected
            .states
            .iter()
            .filter(|((state_sku, _), _)| state_sku == sku)
            .map(|((_, node), state)| (node.clone(), state.clone()))
            .collect();
        assert_eq!(states, expected_states, "sku {sku} in {}", view.describe());
        compared += states.len();
    }
    assert!(compared > 20, "the simulated stream should touch many sku×nodes, got {compared}");
}

#[tokio::test]
async fn redis_and_embedded_fold_equal_core_fold_in_any_order_and_replayed() {
    let mut events = simulated_events(11);
    let mut stuck = events[0].clone();
    stuck.event_id = "stuck-scanner".to_string();
    stuck.arrived = Some(stuck.ts + FoldConfig::default().lateness_ms + 1);
    events.push(stuck);
    let mut shuffled = events.clone();
    shuffled.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(3));
    for view in [redis_view("order").await, SpeedView::memory(FoldConfig::default())] {
        let first = FoldStats::of(&view.fold(&shuffled, "test").await.unwrap());
        assert!(first.applied > 1000 && first.too_late > 0, "{first:?}");
        assert_matches_core_fold(&view, &events).await;
        // a replay of everything, in yet another order, changes nothing
        let replay = FoldStats::of(&view.fold(&events, "test").await.unwrap());
        assert_eq!((replay.applied, replay.duplicates), (0, first.applied), "{}", view.describe());
        assert_matches_core_fold(&view, &events).await;
        view.clear().await.unwrap();
    }
}

#[tokio::test]
async fn the_dedup_window_refuses_old_replays_the_same_way_everywhere() {
    let mut events = simulated_events(23);
    events.sort_by_key(|event| (event.arrival(), event.event_id.clone()));
    let config = FoldConfig { dedup_window_ms: Some(6 * 3_600_000), ..FoldConfig::default() };
    // the first events delivered again at the end, two days of arrivals later
    let mut delivered = events.clone();
    delivered.extend(events.iter().take(300).cloned());
    let mut oracle = Fold::new(config);
    let expected: Vec<Outcome> = delivered.iter().map(|event| oracle.apply(event)).collect();
    let stats = FoldStats::of(&expected);
    assert!(stats.expired > 100 && stats.applied > 1000, "{stats:?}");
    assert_eq!(stats.applied + stats.too_late, events.len() as u64, "no event is counted twice: {stats:?}");
    for view in [redis_view_with("window", config).await, SpeedView::memory(config)] {
        let mut outcomes = Vec::new();
        for chunk in delivered.chunks(700) {
            outcomes.extend(view.fold(chunk, "test").await.unwrap());
        }
        assert_eq!(outcomes, expected, "{}", view.describe());
        assert_matches(&view, &oracle).await;
        view.clear().await.unwrap();
    }
}

#[tokio::test]
async fn watermarks_rise_per_node_and_per_source_and_never_go_back() {
    let events = simulated_events(29);
    let (early, late) = events.split_at(events.len() / 2);
    for view in [redis_view("watermarks").await, SpeedView::memory(FoldConfig::default())] {
        view.fold(late, "stream:a").await.unwrap();
        view.fold(early, "stream:a").await.unwrap();
        view.fold(early, "http").await.unwrap();
        let marks = view.watermarks().await.unwrap();
        let timely = || events.iter().filter(|e| !FoldConfig::default().is_too_late(e));
        let newest = |events: &[Event]| events.iter().filter(|e| !FoldConfig::default().is_too_late(e)).map(Event::arrival).max();
        assert_eq!(marks.sources.get("stream:a").copied(), newest(late).max(newest(early)), "{}", view.describe());
        assert_eq!(marks.sources.get("http").copied(), newest(early));
        for (node, arrived) in &marks.nodes {
            assert_eq!(Some(*arrived), timely().filter(|e| &e.node == node).map(Event::arrival).max(), "node {node}");
        }
        assert_eq!(marks.nodes.len(), timely().map(|e| e.node.clone()).collect::<std::collections::BTreeSet<_>>().len());
        view.clear().await.unwrap();
    }
}

#[tokio::test]
async fn fold_recovers_when_redis_forgets_the_script() {
    let events = simulated_events(5);
    let (first, second) = events.split_at(events.len() / 2);
    let view = redis_view("noscript").await;
    view.fold(first, "test").await.unwrap();
    // what a restarted Redis looks like to a client: scripts are gone
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut connection).await.unwrap();
    view.fold(second, "test").await.unwrap();
    assert_matches_core_fold(&view, &events).await;
    view.clear().await.unwrap();
}

/// The hashes that a fold looks hundreds of fields up in at once are hash tables even when they
/// are small (a listpack, Redis's form of a small hash, scans every field per lookup), and the
/// field that keeps them so is never taken for a SKU or a node.
#[tokio::test]
async fn the_hashes_looked_up_in_bulk_stay_hash_tables_however_small() {
    let events = simulated_events(17);
    let view = redis_view("encoding").await;
    view.fold(&events, "test").await.unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let namespace = namespace("encoding");
    let partition = sellable_speed::partition(&events[0].sku, sellable_speed::PARTITIONS);
    let mut keys: Vec<String> = ["states", "tokens"].iter().map(|name| format!("{namespace}:{{p{partition}}}:{name}")).collect();
    let watermarks = sellable_speed::partition(&events[0].node, sellable_speed::watermark_partitions(sellable_speed::PARTITIONS));
    keys.push(format!("{namespace}:{{w{watermarks}}}"));
    for key in keys {
        let fields: i64 = redis::cmd("HLEN").arg(&key).query_async(&mut connection).await.unwrap();
        assert!((2..100).contains(&fields), "{key}: {fields} fields, a listpack's size");
        let encoding: String = redis::cmd("OBJECT").arg("ENCODING").arg(&key).query_async(&mut connection).await.unwrap();
        assert_eq!(encoding, "hashtable", "{key}");
    }
    assert_matches_core_fold(&view, &events).await;
    let nodes: std::collections::BTreeSet<&String> = events.iter().map(|event| &event.node).collect();
    assert_eq!(view.watermarks().await.unwrap().nodes.keys().collect::<std::collections::BTreeSet<_>>(), nodes);
    view.clear().await.unwrap();
}

/// Two processes' views of one namespace, each with its own cache of SKU states, fold chunks of
/// the same SKUs at the same time, then each the other's chunks again: every event counts once.
/// Without the write script's version check, a view writing from its stale cache would undo the
/// other's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_on_the_same_skus_with_their_own_caches_count_each_event_once() {
    // 'static for the two spawned loops: the test's data lives until the process ends
    let events: &'static [Event] = Box::leak(simulated_events(31).into_boxed_slice());
    let namespace = namespace("race");
    let first: &'static SpeedView = Box::leak(Box::new(redis_view("race").await));
    let second: &'static SpeedView = Box::leak(Box::new(SpeedView::redis(&redis_url(), &namespace, FoldConfig::default()).await.unwrap()));
    let chunks: Vec<&'static [Event]> = events.chunks(40).collect();
    let (even, odd): (Vec<&'static [Event]>, Vec<&'static [Event]>) = (chunks.iter().step_by(2).copied().collect(), chunks.iter().skip(1).step_by(2).copied().collect());
    let run = |view: &'static SpeedView, own: Vec<&'static [Event]>, other: Vec<&'static [Event]>| async move {
        let mut stats = FoldStats::default();
        for chunk in own.into_iter().chain(other) {
            stats.add(FoldStats::of(&view.fold(chunk, "test").await.unwrap()));
        }
        stats
    };
    let (a, b) = tokio::join!(tokio::spawn(run(first, even.clone(), odd.clone())), tokio::spawn(run(second, odd, even)));
    let (a, b) = (a.unwrap(), b.unwrap());
    let timely = events.iter().filter(|event| !FoldConfig::default().is_too_late(event)).count() as u64;
    assert_eq!(a.applied + b.applied, timely, "{a:?} {b:?}");
    assert_eq!(a.duplicates + b.duplicates, timely, "{a:?} {b:?}");
    assert_matches_core_fold(first, events).await;
    assert_matches_core_fold(second, events).await;
    first.clear().await.unwrap();
}

#[tokio::test]
async fn malformed_events_are_reported_with_their_line_and_the_rest_folded() {
    let events = simulated_events(9);
    let mut lines: Vec<String> = events.iter().map(sellable_core::event::encode_json).collect();
    lines.insert(2, r#"{"event_id":"bad","ts":1,"sku":"S","node":"N","kind":"count","qty":"many"}"#.to_string());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    for view in [redis_view("malformed").await, SpeedView::memory(FoldConfig::default())] {
        let report = view.fold_decoded(read_event_file(&path).unwrap(), None, "file:events.jsonl").await.unwrap();
        let rejected: Vec<String> = report.rejected.iter().map(ToString::to_string).collect();
        assert_eq!(rejected, [r#"line 3: field "qty": expected integer"#]);
        assert_matches_core_fold(&view, &events).await;
        view.clear().await.unwrap();
    }
}

/// Every state on the way, stored and read back, folds on exactly like `core`'s fold: the Redis
/// view reads a SKU's stored state whenever its cache lost it (a restart, a failed write).
#[test]
fn every_state_on_the_way_survives_being_stored_and_read_back() {
    use sellable_speed::sku_state::SkuState;
    let events = events_of(&SimConfig { seed: 41, skus: 2_000, nodes: 100, days: 7.0, ..SimConfig::default() });
    let config = FoldConfig::default();
    let mut states: std::collections::HashMap<&str, SkuState> = std::collections::HashMap::new();
    for (index, event) in events.iter().enumerate() {
        let state = states.entry(event.sku.as_str()).or_default();
        let seen = std::mem::take(&mut state.seen);
        let stored = state.encode(None);
        let mut read = SkuState::decode(&stored).unwrap();
        assert_eq!(read.nodes, state.nodes, "event {index}: {:?} stored and read back", event.sku);
        read.seen = seen;
        read.apply(event, config);
        *state = read;
    }
    let oracle = fold(&events, config);
    for ((sku, node), expected) in &oracle.states {
        assert_eq!(states[sku.as_str()].nodes.get(node), Some(expected), "{sku} at {node}");
    }
}

mod stream {
    use super::*;
    use sellable_speed::stream::{dead_letters, publish, StreamConfig, StreamStats};

    fn names(test: &str) -> (String, String) {
        let stream = format!("sellable-test-stream-{test}-{}", std::process::id());
        (stream.clone(), format!("{stream}:dead"))
    }

    async fn delete(keys: &[&str]) {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let _: i64 = redis::cmd("DEL").arg(keys).query_async(&mut connection).await.unwrap();
    }

    /// Runs `workers` consumers (the binary's loop) until the stream has nothing more for them.
    async fn drain(view: &Arc<SpeedView>, config: StreamConfig, workers: usize) -> StreamStats {
        until_idle(&redis_url(), view, config, workers).await
    }

    #[tokio::test]
    async fn malformed_and_late_entries_are_dead_lettered_and_the_rest_folded() {
        let (stream, dead) = names("malformed");
        delete(&[&stream, &dead]).await;
        let events = simulated_events(13);
        let mut late = events[0].clone();
        late.event_id = "late-one".into();
        late.arrived = Some(late.ts + FoldConfig::default().lateness_ms + 5);
        let mut lines: Vec<String> = events.iter().map(sellable_core::event::encode_json).collect();
        lines.insert(10, r#"{"event_id":"x","ts":1,"sku":"S","node":"N","kind":"count","qty":"lots"}"#.into());
        lines.insert(20, "not json at all".into());
        lines.push(sellable_core::event::encode_json(&late));
        publish(&redis_url(), &stream, lines).await.unwrap();

        let view = Arc::new(redis_view("stream-malformed").await);
        let stats = drain(&view, StreamConfig::new(&stream, "fold", "only"), 1).await;
        // the simulator's own stuck events are too late as well
        let stuck = events.iter().filter(|e| FoldConfig::default().is_too_late(e)).count() as u64;
        assert_eq!(stats.dead_lettered, 3 + stuck, "{stats:?}");
        assert_matches_core_fold(&view, &events).await;
        let letters = dead_letters(&redis_url(), &dead, 100).await.unwrap();
        let reason_of = |raw: &str| letters.iter().find(|l| l.raw.contains(raw)).map(|l| l.error.clone()).unwrap();
        assert_eq!(reason_of(r#""qty":"lots""#), r#"field "qty": expected integer"#);
        assert!(reason_of("not json at all").starts_with("invalid JSON"));
        let lateness = FoldConfig::default().lateness_ms;
        assert_eq!(reason_of("late-one"), format!("too late: arrived {} ms after it happened (allowed {lateness})", lateness + 5));
        view.clear().await.unwrap();
        delete(&[&stream, &dead]).await;
    }

    /// The stream's door: an event from the future, events for a SKU or node the catalog does
    /// not know and one that reuses another's `event_id` with other content are dead-lettered with
    /// the reason; the rest are folded.
    #[tokio::test]
    async fn future_and_unknown_events_are_dead_lettered_at_the_door() {
        let (stream, dead) = names("door");
        delete(&[&stream, &dead]).await;
        let events = simulated_events(29);
        let known = sellable_core::KnownIds {
            skus: events.iter().map(|e| e.sku.clone()).collect(),
            nodes: events.iter().map(|e| e.node.clone()).collect(),
        };
        let far = Event { event_id: "far".into(), ts: 253_402_214_399_000, ..events[0].clone() };
        let ghost = Event { event_id: "ghost".into(), node: "GHOST-NODE".into(), ..events[1].clone() };
        let stranger = Event { event_id: "stranger".into(), sku: "GHOST-SKU".into(), ..events[2].clone() };
        let taken = events.iter().find(|e| !FoldConfig::default().is_too_late(e)).unwrap();
        let impostor = Event { qty: taken.qty + 1_000, ..taken.clone() };
        let mut lines: Vec<String> = events.iter().map(sellable_core::event::encode_json).collect();
        lines.extend([&far, &ghost, &stranger, &impostor].map(sellable_core::event::encode_json));
        publish(&redis_url(), &stream, lines).await.unwrap();

        let view = Arc::new(redis_view("stream-door").await);
        let mut config = StreamConfig::new(&stream, "fold", "only");
        config.known = Some(Arc::new(known));
        let stats = drain(&view, config, 1).await;
        let stuck = events.iter().filter(|e| FoldConfig::default().is_too_late(e)).count() as u64;
        assert_eq!(stats.dead_lettered, 4 + stuck, "{stats:?}");
        assert_eq!(stats.fold.conflicts, 1, "{stats:?}");
        assert_matches_core_fold(&view, &events).await;
        let letters = dead_letters(&redis_url(), &dead, 100).await.unwrap();
        let reason_of = |id: &str| letters.iter().find(|l| l.raw.contains(&format!("\"event_id\":\"{id}\""))).map(|l| l.error.clone()).unwrap();
        let conflict = letters.iter().find(|l| l.raw.contains(&format!("\"qty\":{}", impostor.qty))).unwrap();
        assert!(conflict.error.starts_with(&format!("conflict: event_id '{}'", taken.event_id)), "{conflict:?}");
        assert!(reason_of("far").starts_with("from the future: ts 253402214399000"), "{letters:?}");
        assert_eq!(reason_of("ghost"), "unknown node 'GHOST-NODE': not in the catalog");
        assert_eq!(reason_of("stranger"), "unknown sku 'GHOST-SKU': not in the catalog");
        view.clear().await.unwrap();
        delete(&[&stream, &dead]).await;
    }

    #[tokio::test]
    async fn duplicated_and_shuffled_delivery_through_two_consumers_changes_nothing() {
        let (stream, dead) = names("dupes");
        delete(&[&stream, &dead]).await;
        let events = simulated_events(17);
        let mut delivered = events.clone();
        delivered.extend(events.iter().step_by(3).cloned());
        delivered.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(9));
        publish(&redis_url(), &stream, delivered.iter().map(sellable_core::event::encode_json)).await.unwrap();

        let view = Arc::new(redis_view("stream-dupes").await);
        let both = drain(&view, StreamConfig::new(&stream, "fold", "worker"), 2).await;
        assert_eq!(both.entries, delivered.len() as u64);
        assert_eq!(both.fold.applied, events.len() as u64);
        assert_matches_core_fold(&view, &events).await;
        view.clear().await.unwrap();
        delete(&[&stream, &dead]).await;
    }

    #[tokio::test]
    async fn a_dead_consumers_pending_entries_are_claimed_by_another() {
        let (stream, dead) = names("claim");
        delete(&[&stream, &dead]).await;
        let events = simulated_events(19);
        publish(&redis_url(), &stream, events.iter().map(sellable_core::event::encode_json)).await.unwrap();
        let view = Arc::new(redis_view("stream-claim").await);
        // "ghost" reads a batch and dies before acknowledging it
        let client = redis::Client::open(redis_url()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("XGROUP").arg("CREATE").arg(&stream).arg("fold").arg("0").query_async(&mut connection).await.unwrap();
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP").arg("fold").arg("ghost").arg("COUNT").arg(100).arg("STREAMS").arg(&stream).arg(">")
            .query_async(&mut connection).await.unwrap();
        let mut config = StreamConfig::new(&stream, "fold", "survivor");
        config.claim_after = std::time::Duration::from_millis(0);
        assert_eq!(drain(&view, config, 1).await.entries, events.len() as u64);
        assert_matches_core_fold(&view, &events).await;
        view.clear().await.unwrap();
        delete(&[&stream, &dead]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_folds_into_a_three_master_cluster_exactly_like_core() {
    use sellable_speed::stream::{publish, StreamConfig};
    let cluster = sellable_bench::LocalCluster::start();
    let url = cluster.url();
    let events = simulated_events(23);
    let mut delivered = events.clone();
    delivered.extend(events.iter().step_by(4).cloned());
    delivered.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(4));
    publish(&url, "inventory", delivered.iter().map(sellable_core::event::encode_json)).await.unwrap();

    let view = Arc::new(SpeedView::redis(&url, "cluster", FoldConfig::default()).await.unwrap());
    // sized by the catalog, as an epoch is
    let skus: std::collections::BTreeSet<&str> = events.iter().map(|e| e.sku.as_str()).collect();
    view.set_partitions(sellable_speed::partitions_for(skus.len())).await.unwrap();
    assert_eq!(view.partitions().await.unwrap(), Some(sellable_speed::PARTITIONS));
    let stats = until_idle(&url, &view, StreamConfig::new("inventory", "fold", "one"), 1).await;
    assert_eq!(stats.entries, delivered.len() as u64);
    assert_matches_core_fold(&view, &events).await;
    assert_publishes_and_reads_back(&view, &events).await;

    // the SKUs really are spread over the three masters
    let mut masters_with_keys = 0;
    for port in cluster.ports {
        let keys = std::process::Command::new("redis-cli").args(["-p", &port.to_string(), "DBSIZE"]).output().unwrap();
        let count: u64 = String::from_utf8_lossy(&keys.stdout).trim().parse().unwrap();
        masters_with_keys += (count > 0) as u32;
    }
    assert_eq!(masters_with_keys, 3);

    // a new epoch on a cluster starts clean: clearing finds every key on every master
    view.clear().await.unwrap();
    for port in &cluster.ports {
        let keys = std::process::Command::new("redis-cli").args(["-p", &port.to_string(), "--scan", "--pattern", "cluster:*"]).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&keys.stdout).trim(), "", "master {port} kept keys");
    }
    assert!(view.sku_states(&events[0].sku).await.unwrap().is_empty());
}

/// An event that reuses the id of one folded before with other content is a conflict, refused
/// and counted, and changes no state, with and without a dedup window; a copy is a duplicate.
#[tokio::test]
async fn a_reused_event_id_with_other_content_is_a_conflict_in_redis_too() {
    let events = simulated_events(37);
    let first = events.iter().find(|event| !FoldConfig::default().is_too_late(event)).unwrap().clone();
    let mut copy = first.clone();
    copy.arrived = Some(first.arrival() + 1_000);
    let mut forged = first.clone();
    forged.qty += 1_000;
    for (name, window) in [("conflict-set", None), ("conflict-window", Some(7 * 86_400_000))] {
        let config = FoldConfig { dedup_window_ms: window, ..FoldConfig::default() };
        let view = redis_view_with(name, config).await;
        view.fold(std::slice::from_ref(&first), "test").await.unwrap();
        let before = view.sku_states(&first.sku).await.unwrap();
        // in one batch and in a batch of their own (read back from Redis, not from the cache)
        let outcomes = view.fold(&[copy.clone(), forged.clone()], "test").await.unwrap();
        assert_eq!(outcomes, vec![Outcome::Duplicate, Outcome::Conflict], "{name}");
        let other = SpeedView::redis(&redis_url(), &namespace(name), config).await.unwrap();
        assert_eq!(other.fold(std::slice::from_ref(&forged), "test").await.unwrap(), vec![Outcome::Conflict], "{name}");
        assert_eq!(view.sku_states(&first.sku).await.unwrap(), before, "{name}");
        view.clear().await.unwrap();
    }
}

/// A catch-up at a cutoff of now remembers every id that arrived within the allowed lateness
/// before it: millions on a large marketplace. They are all remembered, each command answered
/// within the connection's response timeout (sent all at once, the last ones waited for all the
/// others past it, and the catch-up failed and started again, for ever). With a dedup window the
/// ids go into the SKUs' states, a fold's chunk at a time.
#[tokio::test]
async fn millions_of_ids_are_remembered_in_one_call() {
    use sellable_core::SpeedSource;
    let template = simulated_events(5).remove(0);
    let event = |sku: String, id: String| Event { sku, event_id: id, ..template.clone() };
    for (name, window, count, skus) in [("remember-set", None, 2_000_000, 100_000), ("remember-window", Some(7 * 86_400_000), 200_000, 20_000)] {
        let view = redis_view_with(name, FoldConfig { dedup_window_ms: window, ..FoldConfig::default() }).await;
        let ids: Vec<(String, String)> = (0..count).map(|n| (format!("SKU-{}", n % skus), format!("e-{n}"))).collect();
        view.remember(&ids, template.arrival()).await.unwrap();
        let asked = [(0, 0), (skus - 1, count - 1), (7, count / 2 + 7), (7, count + 7)].map(|(sku, n)| event(format!("SKU-{sku}"), format!("e-{n}")));
        assert_eq!(SpeedSource::known(&view, &asked).await.unwrap(), [true, true, true, false], "{name}");
        view.clear().await.unwrap();
    }
}

/// What the view knows of events it folded (or remembered), with and without a dedup window:
/// what `POST /v1/events` leaves out of the ingestion stream on a retry.
#[tokio::test]
async fn the_view_knows_the_ids_it_folded_and_remembered() {
    use sellable_core::SpeedSource;
    let events = simulated_events(31);
    let (folded, rest) = events.split_at(40);
    for (name, window) in [("known-set", None), ("known-window", Some(7 * 86_400_000))] {
        let view = redis_view_with(name, FoldConfig { dedup_window_ms: window, ..FoldConfig::default() }).await;
        view.fold(folded, "test").await.unwrap();
        view.remember(&[(rest[0].sku.clone(), rest[0].event_id.clone())], rest[0].arrival()).await.unwrap();
        let asked: Vec<Event> = folded.iter().take(5).chain(&rest[..3]).cloned().collect();
        let known = SpeedSource::known(&view, &asked).await.unwrap();
        // the folded ones that were not too late, the remembered one, not the two others
        let expected: Vec<bool> = asked
            .iter()
            .enumerate()
            .map(|(index, event)| if index < 5 { !FoldConfig::default().is_too_late(event) } else { index == 5 })
            .collect();
        assert_eq!(known, expected, "{name}");
        let memory = SpeedView::memory(FoldConfig { dedup_window_ms: window, ..FoldConfig::default() });
        memory.fold(folded, "test").await.unwrap();
        memory.remember(&[(rest[0].sku.clone(), rest[0].event_id.clone())], rest[0].arrival()).await.unwrap();
        assert_eq!(SpeedSource::known(&memory, &asked).await.unwrap(), expected, "{name}, embedded");
        view.clear().await.unwrap();
    }
}

/// The partition count of a namespace is sized by the catalog and recorded in the namespace:
/// whatever it is, the view folds exactly like `core`, and a view opened later reads it back.
#[tokio::test]
async fn any_partition_count_folds_like_core_and_is_read_back() {
    assert_eq!(sellable_speed::partitions_for(0), sellable_speed::PARTITIONS);
    assert_eq!(sellable_speed::partitions_for(80_000), 16);
    assert_eq!(sellable_speed::partitions_for(80_001), 32);
    assert_eq!(sellable_speed::partitions_for(120_000_000), 16_384);
    let events = simulated_events(41);
    let marks = sellable_core::fold::watermarks(&events, FoldConfig::default());
    // 1,024 partitions spread the node watermarks over 4 hashes
    for partitions in [1, 4, 64, 1_024] {
        let name = format!("partitions-{partitions}");
        let view = redis_view(&name).await;
        view.set_partitions(partitions).await.unwrap();
        for part in events.chunks(500) {
            view.fold(part, "test").await.unwrap();
        }
        assert_matches_core_fold(&view, &events).await;
        let read = view.watermarks().await.unwrap();
        assert_eq!(read.nodes, marks, "{partitions} partitions");
        assert_eq!(read.sources.get("test"), marks.values().max(), "{partitions} partitions");
        let later = SpeedView::redis(&redis_url(), &namespace(&name), FoldConfig::default()).await.unwrap();
        assert_eq!(later.partitions().await.unwrap(), Some(partitions));
        assert_matches_core_fold(&later, &events).await;
        assert_publishes_and_reads_back(&view, &events).await;
        view.clear().await.unwrap();
        assert_eq!(view.batch_meta().await.unwrap(), None, "clear drops the published batch view");
    }
    let embedded = SpeedView::memory(FoldConfig::default());
    embedded.fold(&events, "test").await.unwrap();
    assert_publishes_and_reads_back(&embedded, &events).await;
}

/// Publishes a batch view of `events` (a catalog of their SKUs and one more without events) into
/// `view`, and reads every row back with the SKU's speed states and the catch-up mark.
async fn assert_publishes_and_reads_back(view: &SpeedView, events: &[Event]) {
    use sellable_core::{BatchView, SkuInfo, SpeedSource};
    let half = &events[..events.len() / 2];
    let states = sellable_core::fold(half, FoldConfig::default()).states;
    let features = states.keys().map(|key| (key.clone(), vec![key.0.len() as f64, 0.5])).collect();
    let batch = BatchView { version: "test".into(), asof: 5, states, features };
    let mut names: Vec<String> = events.iter().map(|event| event.sku.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    names.push("SKU-NO-EVENTS".into());
    let skus: Vec<SkuInfo> = names.iter().map(|sku| SkuInfo { sku: sku.clone(), category: "c".into(), price: 1.0, ..SkuInfo::default() }).collect();
    assert_eq!(view.publish(&batch.meta(), batch.rows(&skus)).await.unwrap(), skus.len() as u64);
    assert_eq!(view.batch_meta().await.unwrap(), Some(batch.meta()));
    view.mark_caught_up(5).await.unwrap();
    for (row, info) in batch.rows(&skus).map(Result::unwrap).zip(&skus) {
        let read = view.sku_read(&info.sku).await.unwrap();
        assert_eq!(read.row.as_deref(), Some(&row), "{}", info.sku);
        assert_eq!(read.speed, view.sku_states(&info.sku).await.unwrap());
        assert_eq!(read.caught_up, Some(5));
    }
    let unknown = view.sku_read("SKU-UNKNOWN").await.unwrap();
    assert!(unknown.row.is_none());
    // a listing page's batch reads the same, in one call
    let mut asked: Vec<&str> = skus.iter().map(|info| info.sku.as_str()).collect();
    asked.insert(1, "SKU-UNKNOWN");
    let reads = view.sku_reads(&asked).await.unwrap();
    assert_eq!(reads.len(), asked.len());
    for (sku, read) in asked.iter().zip(&reads) {
        let alone = view.sku_read(sku).await.unwrap();
        assert_eq!((&read.row, &read.speed, read.caught_up), (&alone.row, &alone.speed, alone.caught_up), "{sku}");
    }
    // a reader that has every other SKU's row: the same states and mark, and the rows it lacks
    let have: Vec<bool> = (0..asked.len()).map(|index| index % 2 == 0).collect();
    let having = view.sku_reads_having(&asked, &have).await.unwrap();
    assert_eq!(having.len(), asked.len());
    for ((sku, read), (had, whole)) in asked.iter().zip(&having).zip(have.iter().zip(&reads)) {
        assert_eq!((&read.speed, read.caught_up), (&whole.speed, whole.caught_up), "{sku}");
        if !had {
            assert_eq!(read.row, whole.row, "{sku}: a row the reader lacks is read");
        } else if matches!(view, SpeedView::Redis(_)) {
            assert!(read.row.is_none(), "{sku}: Redis does not send a row the reader has");
        }
    }
    let asked = [names[0].as_str(), "SKU-UNKNOWN", "SKU-NO-EVENTS"];
    assert_eq!(view.skus_known(&asked).await.unwrap(), vec![true, false, true]);
}

/// A reservation's counts of confirmations are read ahead of its SKUs in the same round trip
/// when the hold store is on the view's server: the counts come back with the same reads as
/// without them, and the server ran every count's read before any SKU's (MONITOR lists the
/// commands in the order it ran them). A view on another server does not offer it.
#[tokio::test]
async fn counts_of_confirmations_are_read_before_the_skus_in_the_same_round_trip() {
    use futures::StreamExt;
    use sellable_core::holds::HoldStore;
    use sellable_core::SpeedSource;
    let events = simulated_events(11);
    let view = redis_view("ahead").await;
    view.fold(&events, "test").await.unwrap();
    let skus: Vec<&str> = events.iter().map(|event| event.sku.as_str()).collect::<BTreeSet<_>>().into_iter().take(3).collect();
    let holds = sellable_speed::holds::RedisHolds::connect(&redis_url(), &namespace("ahead")).await.unwrap();
    holds.release("r-any", skus[1], true).await.unwrap();
    holds.release("r-any", skus[1], true).await.unwrap();
    let ahead = holds.confirms_ahead(&skus).expect("a single server offers its counts ahead");
    assert_eq!((HoldStore::server(&holds), SpeedSource::server(&view)), (Some(ahead.server.as_str()), Some(ahead.server.as_str())), "the view is on the hold store's server");

    let mut monitor = redis::Client::open(redis_url()).unwrap().get_async_monitor().await.unwrap();
    let (counts, reads) = view.sku_reads_after(&ahead, &skus, &[]).await.unwrap().expect("the view is on the hold store's server");
    assert_eq!(counts, [None, Some("2".to_string()), None]);
    let plain = view.sku_reads(&skus).await.unwrap();
    for ((sku, read), plain) in skus.iter().zip(&reads).zip(&plain) {
        assert!(!read.speed.is_empty(), "{sku} has speed states");
        assert_eq!(read.speed, plain.speed, "{sku}");
        assert_eq!(read.caught_up, plain.caught_up, "{sku}");
    }

    // the first round trip's commands, as the server ran them: the counts' HGETs, then the SKUs'
    let ns = namespace("ahead");
    let holds_prefix = format!("\"{ns}:holds:");
    let of_states = |line: &String| line.contains(&format!("\"{ns}:{{p")) && line.contains("}:states\"");
    let mut ran = Vec::new();
    let mut lines = monitor.on_message::<String>();
    while ran.iter().filter(|line| of_states(line)).count() < skus.len() {
        let line = tokio::time::timeout(std::time::Duration::from_secs(5), lines.next()).await.expect("MONITOR shows the reads").expect("MONITOR goes on");
        if line.contains(&holds_prefix) || of_states(&line) {
            ran.push(line);
        }
    }
    let first_sku = ran.iter().position(of_states).unwrap();
    assert_eq!(first_sku, skus.len(), "every count is read before any SKU: {ran:#?}");
    assert!(ran[..first_sku].iter().all(|line| line.contains("\"HGET\"") && line.contains("\"#confirms\"")), "{ran:#?}");

    let elsewhere = sellable_core::Ahead { server: "redis://127.0.0.2:6379".to_string(), ..ahead.clone() };
    assert!(view.sku_reads_after(&elsewhere, &skus, &[]).await.unwrap().is_none(), "another server's fields cannot be ordered with this view's reads");
    let memory = SpeedView::memory(FoldConfig::default());
    assert_eq!(memory.server(), None);
    assert!(memory.sku_reads_after(&ahead, &skus, &[]).await.unwrap().is_none());
    view.clear().await.unwrap();
}
