//! The incremental nightly job against the full recompute, night after night.

use sellable_batch::{Night, Progress};
use sellable_bench::{generate, SimConfig};
use sellable_core::event::read_event_file;
use sellable_core::fold::batch_states;
use sellable_core::{known_at, Event, EventKind, FoldConfig, Millis};

use super::{lake_of, table_rows, DAY, HOUR};

/// Events that cross each cutoff of `cutoffs`: some of the hours before it arrive after it
/// (late, within the lateness: a count among them when there is one, which changes the
/// discrepancy of the counts after it), one known at it is replayed after it, one arrives too
/// late to count, and one known at it is dated nearly a day after it (in the next night's last
/// hour).
fn crossing(events: &mut Vec<Event>, cutoffs: &[Millis]) {
    for (night, &cutoff) in cutoffs.iter().enumerate() {
        let before: Vec<usize> = (0..events.len())
            .filter(|&i| events[i].ts > cutoff - 3 * HOUR && events[i].ts <= cutoff && events[i].arrival() <= cutoff)
            .collect();
        assert!(before.len() > 10, "events in the hours before night {night}");
        let count = before.iter().copied().find(|&i| events[i].kind == EventKind::Count);
        for &i in before.iter().step_by(7).take(6).chain(count.iter()) {
            events[i].arrived = Some(cutoff + HOUR);
        }
        let mut replay = events[before[1]].clone();
        replay.arrived = Some(cutoff + 2 * HOUR);
        let mut too_late = events[before[2]].clone();
        too_late.event_id = format!("too-late-{night}");
        too_late.arrived = Some(too_late.ts + FoldConfig::default().lateness_ms + 1);
        let mut ahead = events[before[3]].clone();
        ahead.event_id = format!("ahead-{night}");
        ahead.kind = EventKind::Reserve;
        ahead.ts = cutoff + DAY - 10 * 60_000;
        ahead.arrived = Some(cutoff - HOUR);
        events.extend([replay, too_late, ahead]);
    }
}

/// Over consecutive nights a whole day apart, with late events crossing each cutoff and enough
/// history (34 days) that days leave the 24h, 7d and 30d windows, each incremental night gives
/// the full recompute's batch view, deltas and features row for row, and both are core's fold.
/// A cutoff that is not a whole number of days after the state's is recomputed, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_incremental_nights_equal_full_recomputes_row_for_row() {
    let dir = tempfile::tempdir().unwrap();
    let config = SimConfig { seed: 73, skus: 30, nodes: 6, days: 34.0, orders_per_sku_day: 4.0, ..SimConfig::default() };
    let summary = generate(&config, &dir.path().join("gen")).unwrap();
    let mut events: Vec<Event> = read_event_file(&summary.paths.events).unwrap().map(Result::unwrap).collect();
    let cutoffs: Vec<Millis> = (0..4).rev().map(|night| summary.end - 2 * HOUR - night * DAY).collect();
    crossing(&mut events, &cutoffs);
    let incremental = lake_of(&dir.path().join("incremental"), &summary, &events).await;
    let full = lake_of(&dir.path().join("full"), &summary, &events).await;
    let progress = Progress::hidden();
    for (night, &asof) in cutoffs.iter().enumerate() {
        let (view, features, how) = incremental.nightly_incremental(asof, FoldConfig::default(), false, &progress).await.unwrap();
        match night {
            0 => assert!(matches!(&how, Night::Full { why } if why.contains("no earlier night")), "{how:?}"),
            _ => assert_eq!(how, Night::Incremental { from: cutoffs[night - 1] }),
        }
        let (full_view, full_features) = full.nightly(asof, FoldConfig::default(), &progress).await.unwrap();
        assert_eq!((view.sku_nodes, view.deltas, features.rows), (full_view.sku_nodes, full_view.deltas, full_features.rows), "night {night}");
        for (table, order) in [("batch_view", "sku, node"), ("features", "asof, sku, node")] {
            let expected = table_rows(&full, table, order).await;
            assert!(expected.len() > 40, "night {night}: {table}: {} lines", expected.len());
            assert_eq!(table_rows(&incremental, table, order).await, expected, "night {night}: {table}");
        }
        let stored = incremental.load_batch_view().await.unwrap();
        assert_eq!(stored.states, full.load_batch_view().await.unwrap().states, "night {night}: the deltas");
        assert_eq!(stored.states, batch_states(events.iter().filter(|e| known_at(e, asof)), FoldConfig::default()), "night {night}");
        // what the windows hold is not trivial: counts with discrepancies, feeds, 7d demand
        for (held, least) in [("count_mae_30d > 0", 5), ("feed_lag_p95_s > 0", 5), ("reserve_units_7d > 0", 5), ("reserve_units_1h > 0", 1)] {
            let rows = table_rows(&incremental, &format!("(SELECT sku FROM features WHERE asof = {asof} AND {held}) AS held"), "sku").await;
            // four lines of borders and header
            assert!(rows.len() >= 4 + least, "night {night}: {} rows with {held}", rows.len() - 4);
        }
    }
    // half a day later: not a whole number of days after the state's cutoff
    let asof = cutoffs[3] + DAY / 2;
    let (_, _, how) = incremental.nightly_incremental(asof, FoldConfig::default(), false, &progress).await.unwrap();
    assert!(matches!(&how, Night::Full { why } if why.contains("whole number of days")), "{how:?}");
    // and a day after that one, folded from the state it left
    let (_, _, how) = incremental.nightly_incremental(asof + DAY, FoldConfig::default(), false, &progress).await.unwrap();
    assert_eq!(how, Night::Incremental { from: asof });
    full.nightly(asof + DAY, FoldConfig::default(), &progress).await.unwrap();
    assert_eq!(table_rows(&incremental, "batch_view", "sku, node").await, table_rows(&full, "batch_view", "sku, node").await);
    // events that arrived by the state's cutoff, added to the lake since: recomputed
    let mut added = events[5].clone();
    added.event_id = "backfilled".into();
    added.ts = asof - HOUR;
    added.arrived = Some(asof);
    incremental.import_events(vec![Ok(added)].into_iter()).await.unwrap();
    let (_, _, how) = incremental.nightly_incremental(asof + 2 * DAY, FoldConfig::default(), false, &progress).await.unwrap();
    assert!(matches!(&how, Night::Full { why } if why.contains("added to the lake")), "{how:?}");
}

