//! Integration tests of the batch layer on generated lakes: the DataFusion batch view equals
//! `core`'s fold of the events known at the cutoff, and imports report bad rows and never leave
//! the lake half-written.

use std::path::Path;

use sellable_batch::Lake;
use sellable_bench::{generate, SimConfig, SimSummary};
use sellable_core::event::read_event_file;
use sellable_core::{fold, known_at, Event, FoldConfig};

fn simulate(dir: &Path, seed: u64) -> (SimSummary, Vec<Event>) {
    let config = SimConfig { seed, skus: 80, nodes: 10, days: 3.0, ..SimConfig::default() };
    let summary = generate(&config, dir).unwrap();
    let events = read_event_file(&summary.paths.events).unwrap().map(Result::unwrap).collect();
    (summary, events)
}

#[tokio::test]
async fn batch_view_equals_core_fold_of_events_known_at_the_cutoff() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, mut events) = simulate(&dir.path().join("gen"), 21);
    // a replayed event and one stuck past the lateness must both be ignored, as core does
    events.push(events[10].clone());
    let mut stuck = events[20].clone();
    stuck.event_id = "stuck".into();
    stuck.arrived = Some(stuck.ts + FoldConfig::default().lateness_ms + 1);
    events.push(stuck);
    let lake = Lake::open(&dir.path().join("lake")).unwrap();
    let report = lake.import_events(events.clone().into_iter().map(Ok)).await.unwrap();
    assert_eq!(report.accepted, events.len() as u64);

    for cutoff in [summary.end - 86_400_000, summary.end] {
        lake.compute_batch_view(cutoff, FoldConfig::default()).await.unwrap();
        let view = lake.load_batch_view().await.unwrap();
        let expected = fold(events.iter().filter(|e| known_at(e, cutoff)), FoldConfig::default());
        assert_eq!(view.asof, cutoff);
        assert_eq!(view.states.len(), expected.states.len());
        for (key, state) in &expected.states {
            assert_eq!(view.states.get(key), Some(state), "sku×node {key:?} as of {cutoff}");
        }
        assert!(view.states.values().any(|state| !state.deltas.is_empty()), "deltas should be exercised");
    }
}

#[tokio::test]
async fn import_skips_bad_lines_and_failed_imports_leave_the_lake_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (_, events) = simulate(&dir.path().join("gen"), 3);
    let lake = Lake::open(&dir.path().join("lake")).unwrap();

    let mut lines: Vec<String> = events.iter().take(100).map(sellable_core::event::encode_json).collect();
    lines.insert(4, r#"{"event_id":"x","ts":"soon","sku":"S","node":"N","kind":"count","qty":1}"#.into());
    let jsonl = dir.path().join("events.jsonl");
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let report = lake.import_events(read_event_file(&jsonl).unwrap()).await.unwrap();
    assert_eq!(report.accepted, 100);
    let rejected: Vec<String> = report.rejected.iter().map(ToString::to_string).collect();
    assert_eq!(rejected, [r#"line 5: field "ts": expected RFC 3339 timestamp, got 'soon'"#]);
    assert_eq!(report.version, 1);

    // A Parquet file without the `qty` column fails as a whole: nothing lands.
    let broken = dir.path().join("broken.parquet");
    {
        let batch = sellable_core::event::events_to_batch(&events[..10]);
        let batch = batch.project(&[0, 1, 2, 3, 4, 6, 7]).unwrap();
        let file = std::fs::File::create(&broken).unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
    let error = read_event_file(&broken).err().unwrap();
    assert_eq!(error.to_string(), r#"column "qty": missing"#);
    // An import in which every event is bad creates no version either.
    let nothing = lake.import_events(read_event_file(&jsonl).unwrap().filter(Result::is_err)).await.unwrap();
    assert_eq!((nothing.accepted, nothing.rejected.len(), nothing.version), (0, 1, 1));
    let again = lake.import_events(events[100..110].to_vec().into_iter().map(Ok)).await.unwrap();
    assert_eq!(again.version, 2, "the failed import must not have created a version");
    let cutoff = lake.last_arrival().await.unwrap().unwrap();
    lake.compute_batch_view(cutoff, FoldConfig::default()).await.unwrap();
    let expected = fold(&events[..110], FoldConfig::default());
    assert_eq!(lake.load_batch_view().await.unwrap().states, expected.states);
}
