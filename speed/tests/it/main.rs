//! Integration tests of the speed layer against a real Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`) and the embedded store, with `core`'s fold as the oracle.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use sellable_bench::{generate, SimConfig};
use sellable_core::event::read_event_file;
use sellable_core::{fold, Event, FoldConfig, NodeState};
use sellable_speed::SpeedView;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// A Redis speed view in a namespace of its own, emptied first. Fails loudly without a server.
async fn redis_view(test: &str) -> SpeedView {
    let url = redis_url();
    let namespace = format!("sellable-test-{test}-{}", std::process::id());
    let view = SpeedView::redis(&url, &namespace, FoldConfig::default()).await.unwrap_or_else(|error| {
        panic!("these tests need a Redis server at {url} ({error}); start one with `redis-server --daemonize yes` or set REDIS_URL")
    });
    view.clear().await.unwrap();
    view
}

fn simulated_events(seed: u64) -> Vec<Event> {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig { seed, skus: 60, nodes: 8, days: 2.0, ..SimConfig::default() };
    let summary = generate(&config, dir.path()).unwrap();
    read_event_file(&summary.paths.events).unwrap().map(Result::unwrap).collect()
}

/// Every sku×node of the oracle, compared with what the view holds.
async fn assert_matches_core_fold(view: &SpeedView, events: &[Event]) {
    let expected = fold(events, FoldConfig::default());
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
        let first = view.fold(&shuffled).await.unwrap();
        assert!(first.applied > 1000 && first.too_late > 0, "{first:?}");
        assert_matches_core_fold(&view, &events).await;
        // a replay of everything, in yet another order, changes nothing
        let replay = view.fold(&events).await.unwrap();
        assert_eq!((replay.applied, replay.duplicates), (0, first.applied), "{}", view.describe());
        assert_matches_core_fold(&view, &events).await;
        view.clear().await.unwrap();
    }
}

#[tokio::test]
async fn fold_recovers_when_redis_forgets_the_script() {
    let events = simulated_events(5);
    let (first, second) = events.split_at(events.len() / 2);
    let view = redis_view("noscript").await;
    view.fold(first).await.unwrap();
    // what a restarted Redis looks like to a client: scripts are gone
    let client = redis::Client::open(redis_url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut connection).await.unwrap();
    view.fold(second).await.unwrap();
    assert_matches_core_fold(&view, &events).await;
    view.clear().await.unwrap();
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
        let report = view.fold_decoded(read_event_file(&path).unwrap(), None).await.unwrap();
        let rejected: Vec<String> = report.rejected.iter().map(ToString::to_string).collect();
        assert_eq!(rejected, [r#"line 3: field "qty": expected integer"#]);
        assert_matches_core_fold(&view, &events).await;
        view.clear().await.unwrap();
    }
}
