//! Tests of the marketplace simulator: deterministic, realistic enough to exercise every layer.

use std::collections::BTreeSet;

use sellable_bench::{generate, SimConfig};
use sellable_core::event::read_event_file;
use sellable_core::{Event, EventKind};

/// Six days: returns come two to ten days after shipping.
fn config(seed: u64) -> SimConfig {
    SimConfig { seed, skus: 100, nodes: 10, days: 6.0, ..SimConfig::default() }
}

fn events_of(dir: &std::path::Path, seed: u64) -> (sellable_bench::SimSummary, Vec<Event>) {
    let summary = generate(&config(seed), dir).unwrap();
    let events = read_event_file(&summary.paths.events).unwrap().map(Result::unwrap).collect();
    (summary, events)
}

#[test]
fn same_seed_same_files_other_seed_other_files() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, _) = events_of(a.path(), 1);
    let (second, _) = events_of(b.path(), 1);
    let (third, _) = events_of(c.path(), 2);
    for (x, y) in [(&first.paths.events, &second.paths.events), (&first.paths.truth, &second.paths.truth)] {
        assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap(), "{}", x.display());
    }
    assert_ne!(std::fs::read(&first.paths.events).unwrap(), std::fs::read(&third.paths.events).unwrap());
}

#[test]
fn events_arrive_in_order_late_and_cover_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = events_of(dir.path(), 3);
    assert_eq!(summary.events, events.len() as u64);
    assert!(events.windows(2).all(|pair| pair[0].arrival() <= pair[1].arrival()), "written in arrival order");
    assert!(events.iter().filter(|e| e.arrival() > e.ts).count() > events.len() / 2, "most events arrive late");
    let kinds: BTreeSet<EventKind> = events.iter().map(|e| e.kind).collect();
    for kind in EventKind::ALL {
        assert!(kinds.contains(&kind), "no {kind} event in {} events", events.len());
    }
    // hidden shrink and over-reporting sellers turn some reservations into oversells
    assert!(summary.shorts > 0 && summary.orders > 1000, "{summary:?}");
    let ids: BTreeSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), events.len(), "event ids are unique");
}
