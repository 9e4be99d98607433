//! Integration tests of the batch layer on generated lakes: the DataFusion batch view equals
//! `core`'s fold of the events known at the cutoff; imports report bad rows and never leave the
//! lake half-written; features agree with the fold, backfills with single runs, and training rows
//! never see the future.

// `Lake::import_events` takes an iterator that owns its events: the copies are needed
#![allow(clippy::unnecessary_to_owned)]

use std::path::Path;

use sellable_batch::trainset::TrainRow;
use sellable_batch::{Lake, Progress};
use sellable_bench::{generate, SimConfig, SimSummary};
use sellable_core::catalog::{nodes_from_batch, read_parquet, skus_from_batch};
use sellable_core::event::read_event_file;
use sellable_core::features::BATCH;
use sellable_core::fold::batch_states;
use sellable_core::{fold, known_at, Event, EventKind, FoldConfig, Millis};

mod incremental;

const DAY: Millis = 86_400_000;
const HOUR: Millis = 3_600_000;

/// A lake holding the simulated catalog and `events`.
async fn lake_of(dir: &Path, summary: &SimSummary, events: &[Event]) -> Lake {
    let lake = Lake::open(dir).unwrap();
    let skus = read_parquet(&summary.paths.skus, skus_from_batch).unwrap();
    let nodes = read_parquet(&summary.paths.nodes, nodes_from_batch).unwrap();
    lake.import_catalog(&skus, &nodes).await.unwrap();
    lake.import_events(events.to_vec().into_iter().map(Ok)).await.unwrap();
    lake
}

fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn feature(values: &[f64], name: &str) -> f64 {
    values[BATCH.iter().position(|n| *n == name).unwrap()]
}

/// The start of a simulated lake's three days, and a cutoff in the middle of each (the first
/// after half a day: a cutoff without events known has no features).
fn midday_cutoffs(summary: &SimSummary) -> (Millis, Vec<Millis>) {
    let start = summary.end - 3 * DAY;
    (start, (0..3).map(|day| start + DAY / 2 + day * DAY).collect())
}

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
    // a copy of a reserve (it counts whatever comes after it) with another quantity, arriving
    // between the two cutoffs: the first arrival wins at both, whether the lake's other copy is
    // known yet or not
    let original = events
        .iter()
        .position(|e| e.kind == EventKind::Reserve && e.ts > summary.end - DAY - 5 * HOUR && e.arrival() <= summary.end - DAY)
        .expect("an event of the hours before the first cutoff");
    let mut late_copy = events[original].clone();
    late_copy.qty += 5;
    late_copy.arrived = Some(summary.end - DAY + HOUR);
    events.push(late_copy);
    let lake = Lake::open(&dir.path().join("lake")).unwrap();
    let report = lake.import_events(events.clone().into_iter().map(Ok)).await.unwrap();
    assert_eq!(report.accepted, events.len() as u64);

    for cutoff in [summary.end - 86_400_000, summary.end] {
        lake.compute_batch_view(cutoff, FoldConfig::default()).await.unwrap();
        let view = lake.load_batch_view().await.unwrap();
        let expected = batch_states(events.iter().filter(|e| known_at(e, cutoff)), FoldConfig::default());
        assert_eq!(view.asof, cutoff);
        assert_eq!(view.states.len(), expected.len());
        for (key, state) in &expected {
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
    assert_eq!(lake.load_batch_view().await.unwrap().states, batch_states(&events[..110], FoldConfig::default()));
}

#[tokio::test]
async fn an_unreadable_input_fails_the_whole_import_and_the_lake_keeps_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = simulate(&dir.path().join("gen"), 5);
    let lake = lake_of(&dir.path().join("lake"), &summary, &events[..50]).await;
    // more than one write batch of good lines, so Lance has started writing when the file breaks
    let mut bytes = Vec::new();
    for index in 0..70_000 {
        let mut event = events[index % events.len()].clone();
        event.event_id = format!("copy-{index}");
        bytes.extend(sellable_core::event::encode_json(&event).into_bytes());
        bytes.push(b'\n');
    }
    bytes.extend(b"{\"event_id\": \"\xff\xfe broken bytes\"}\n");
    let path = dir.path().join("broken.jsonl");
    std::fs::write(&path, bytes).unwrap();
    let error = lake.import_events(read_event_file(&path).unwrap()).await.unwrap_err().to_string();
    assert!(error.contains("line 70001") && error.contains("unreadable"), "{error}");
    assert_eq!(lake.events_version().await.unwrap(), 1, "no version for a failed import");
    let cutoff = lake.last_arrival().await.unwrap().unwrap();
    lake.compute_batch_view(cutoff, FoldConfig::default()).await.unwrap();
    assert_eq!(lake.load_batch_view().await.unwrap().states, batch_states(&events[..50], FoldConfig::default()));
}

#[tokio::test]
async fn features_agree_with_the_fold_and_with_a_direct_count() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = simulate(&dir.path().join("gen"), 31);
    let lake = lake_of(&dir.path().join("lake"), &summary, &events).await;
    let asof = summary.end - DAY / 2;
    lake.compute_features(&[asof], FoldConfig::default(), &Progress::hidden()).await.unwrap();
    let features = lake.load_features(None).await.unwrap();
    assert_eq!(features.asof, asof);
    let known: Vec<&Event> = events.iter().filter(|e| known_at(e, asof) && !FoldConfig::default().is_too_late(e)).collect();
    let expected = fold(known.iter().copied(), FoldConfig::default());
    assert_eq!(features.rows.len(), expected.states.len());
    let mut with_demand = 0;
    for ((sku, node), state) in &expected.states {
        let row = &features.rows[&(sku.clone(), node.clone())];
        assert_eq!(row.len(), BATCH.len());
        assert_eq!(feature(row, "on_hand"), state.on_hand() as f64, "{sku}×{node}");
        assert_eq!(feature(row, "reserved"), state.reserved as f64);
        assert_eq!(feature(row, "held"), state.held as f64);
        let of_node = || known.iter().filter(|e| &e.sku == sku && &e.node == node);
        let reserves_24h = of_node().filter(|e| e.kind == EventKind::Reserve && e.ts > asof - DAY).count() as f64;
        assert_eq!(feature(row, "reserve_count_24h"), reserves_24h);
        with_demand += (reserves_24h > 0.0) as usize;
        let last_count = of_node().filter(|e| e.kind == EventKind::Count).map(|e| e.ts).max();
        let hours = feature(row, "hours_since_count");
        match last_count {
            Some(ts) => assert_eq!(hours, (asof - ts) as f64 / HOUR as f64),
            None => assert!(hours.is_nan()),
        }
        let discrepancies = count_discrepancies(of_node(), asof);
        let counts = discrepancies.len() as f64;
        assert_eq!(feature(row, "counts_30d"), counts, "{sku}×{node}");
        let (bias, mae) = (feature(row, "count_bias_30d"), feature(row, "count_mae_30d"));
        if discrepancies.is_empty() {
            assert!(bias.is_nan() && mae.is_nan(), "{sku}×{node}: {bias} {mae}");
        } else {
            assert_eq!(bias, discrepancies.iter().sum::<i64>() as f64 / counts, "{sku}×{node}");
            assert_eq!(mae, discrepancies.iter().map(|d| d.abs()).sum::<i64>() as f64 / counts, "{sku}×{node}");
        }
        let feeds = feature(row, "feed_reliability_30d");
        assert!(feeds.is_nan() || (0.0..=1.0).contains(&feeds), "{feeds}");
    }
    assert!(with_demand > 20, "the check should see demand: {with_demand}");
    let counted = features.rows.values().filter(|row| feature(row, "counts_30d") > 0.0).count();
    assert!(counted > 20, "count discrepancies should be computed for many sku×nodes: {counted}");
}

/// The count discrepancies of one sku×node's events, from their definition (docs/batch.md): for
/// each count of the last 30d with on-hand events before it, what it counted minus the level those
/// events give (a reading sets it, a change adds to it, from 0), in (ts, event_id) order.
fn count_discrepancies<'a>(events: impl Iterator<Item = &'a &'a Event>, asof: Millis) -> Vec<i64> {
    let mut events: Vec<&Event> = events.copied().collect();
    events.sort_by(|a, b| (a.ts, &a.event_id).cmp(&(b.ts, &b.event_id)));
    let (mut level, mut before, mut discrepancies) = (0, false, Vec::new());
    for event in events {
        let effect = sellable_core::fold::effect(event.kind, event.qty);
        if effect.absolute.is_none() && effect.on_hand == 0 {
            continue;
        }
        if event.kind == EventKind::Count && event.ts > asof - 30 * DAY && before {
            discrepancies.push(event.qty - level);
        }
        level = effect.absolute.unwrap_or(level + effect.on_hand);
        before = true;
    }
    discrepancies
}

#[tokio::test]
async fn the_nightly_job_gives_the_same_results_in_memory_and_in_shares_of_the_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = simulate(&dir.path().join("gen"), 37);
    let asof = summary.end - DAY / 2;
    let mut results = Vec::new();
    // the scratch limit bounds the bytes of events held at once: all of them; shares of about
    // 256 KiB of events each (held in memory); shares of 0 bytes, as many shares as allowed, each
    // larger than its budget and so streamed from its scratch file by every query
    for (name, scratch_limit) in [("memory", usize::MAX), ("shares", 256 << 10), ("streamed", 0)] {
        let lake = lake_of(&dir.path().join(name), &summary, &events).await.with_scratch_limit(scratch_limit);
        let (view, _) = lake.nightly(asof, FoldConfig::default(), &Progress::hidden()).await.unwrap();
        assert_eq!(view.shares > 1, scratch_limit < usize::MAX, "{name}: {} shares", view.shares);
        assert!(!dir.path().join(name).join("scratch").exists(), "{name}: the scratch files are removed");
        results.push((lake.load_batch_view().await.unwrap(), lake.load_features(Some(asof)).await.unwrap()));
    }
    let (view, features) = &results[0];
    assert!(view.states.len() > 20);
    // the view comes from the features' pass over the events, and is still core's fold
    assert_eq!(view.states, batch_states(events.iter().filter(|e| known_at(e, asof)), FoldConfig::default()));
    for (shared_view, shared_features) in &results[1..] {
        assert_eq!(&view.states, &shared_view.states);
        assert_eq!(features.rows.len(), shared_features.rows.len());
        for (key, row) in &features.rows {
            assert!(same_bits(row, &shared_features.rows[key]), "{key:?}");
        }
    }
}

/// At the smallest memory limit allowed, in memory and in shares, the nightly job runs, and its
/// view is still the fold.
#[tokio::test]
async fn the_nightly_job_runs_at_the_smallest_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = simulate(&dir.path().join("gen"), 53);
    let asof = summary.end - DAY / 2;
    let expected = batch_states(events.iter().filter(|e| known_at(e, asof)), FoldConfig::default());
    let limit = (sellable_batch::MIN_MEMORY_MB as usize) << 20;
    for (name, scratch_limit) in [("memory", limit / 4), ("shares", 64 << 10)] {
        let lake = lake_of(&dir.path().join(name), &summary, &events).await.with_memory_limit(limit).with_scratch_limit(scratch_limit);
        let (view, features) = lake.nightly(asof, FoldConfig::default(), &Progress::hidden()).await.unwrap();
        assert!(view.sku_nodes > 20 && features.rows > 20, "{name}: {view:?} {features:?}");
        assert_eq!(view.shares > 1, name == "shares", "{name}: {} shares", view.shares);
        assert_eq!(lake.load_batch_view().await.unwrap().states, expected, "{name}");
    }
}

/// Two jobs at once on one lake, both splitting their events into shares in scratch files: a
/// training set (its batch view at the first cutoff) and the nightly job of a later cutoff. Each
/// keeps its own files, both give what they give alone, and nothing is left in the scratch space.
#[tokio::test]
async fn two_jobs_at_once_on_one_lake_keep_their_own_scratch_files() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = simulate(&dir.path().join("gen"), 47);
    let (start, cutoffs) = midday_cutoffs(&summary);
    let (config, progress, scratch_limit) = (FoldConfig::default(), Progress::hidden(), 64 << 10);
    let (from, to) = (start, cutoffs[2] - 1);

    let alone = lake_of(&dir.path().join("alone"), &summary, &events).await.with_scratch_limit(scratch_limit);
    alone.compute_features(&cutoffs[..2], config, &progress).await.unwrap();
    let (rows, _, _) = alone.build_trainset(from, to, config, &progress).await.unwrap();
    let (view, _) = alone.nightly(cutoffs[2], config, &progress).await.unwrap();
    assert!(view.shares > 1 && rows.len() > 50, "{} shares, {} rows", view.shares, rows.len());

    let path = dir.path().join("shared");
    let lake = lake_of(&path, &summary, &events).await.with_scratch_limit(scratch_limit);
    lake.compute_features(&cutoffs[..2], config, &progress).await.unwrap();
    let other = Lake::open(&path).unwrap().with_scratch_limit(scratch_limit);
    let (built, nightly) = tokio::join!(lake.build_trainset(from, to, config, &progress), other.nightly(cutoffs[2], config, &progress));
    let (shared_rows, _, _) = built.unwrap();
    nightly.unwrap();

    assert_eq!(shared_rows.len(), rows.len());
    assert!(shared_rows.iter().zip(&rows).all(|(a, b)| a.same_bits(b)), "the training rows differ");
    assert_eq!(lake.load_batch_view().await.unwrap().states, alone.load_batch_view().await.unwrap().states);
    let (features, expected) = (lake.load_features(Some(cutoffs[2])).await.unwrap(), alone.load_features(Some(cutoffs[2])).await.unwrap());
    assert_eq!(features.rows.len(), expected.rows.len());
    for (key, row) in &expected.rows {
        assert!(same_bits(row, &features.rows[key]), "{key:?}");
    }
    assert!(!path.join("scratch").exists(), "the scratch space is left empty");
}

#[tokio::test]
async fn a_backfill_of_n_cutoffs_equals_n_single_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = simulate(&dir.path().join("gen"), 37);
    let cutoffs: Vec<Millis> = (1..=3).map(|day| summary.end - 3 * DAY + day * DAY - DAY / 3).collect();
    let backfilled = lake_of(&dir.path().join("backfill"), &summary, &events).await;
    backfilled.compute_features(&cutoffs, FoldConfig::default(), &Progress::hidden()).await.unwrap();
    let single = lake_of(&dir.path().join("single"), &summary, &events).await;
    for cutoff in &cutoffs {
        single.compute_features(&[*cutoff], FoldConfig::default(), &Progress::hidden()).await.unwrap();
    }
    assert_eq!(backfilled.feature_cutoffs().await.unwrap(), cutoffs);
    assert_eq!(single.feature_cutoffs().await.unwrap(), cutoffs);
    for cutoff in cutoffs {
        let (a, b) = (backfilled.load_features(Some(cutoff)).await.unwrap(), single.load_features(Some(cutoff)).await.unwrap());
        assert!(!a.rows.is_empty());
        assert_eq!(a.rows.len(), b.rows.len());
        for (key, row) in &a.rows {
            assert!(same_bits(row, &b.rows[key]), "{key:?} as of {cutoff}");
        }
    }
}

#[tokio::test]
async fn a_cutoff_computed_again_reads_back_as_its_newest_run() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = simulate(&dir.path().join("gen"), 41);
    let asof = summary.end;
    let half = events.len() / 2;
    let lake = lake_of(&dir.path().join("lake"), &summary, &events[..half]).await;
    lake.compute_features(&[asof], FoldConfig::default(), &Progress::hidden()).await.unwrap();
    let first = lake.load_features(Some(asof)).await.unwrap();
    // the rest of the events arrive late, and the cutoff is computed again
    lake.import_events(events[half..].to_vec().into_iter().map(Ok)).await.unwrap();
    lake.compute_features(&[asof], FoldConfig::default(), &Progress::hidden()).await.unwrap();
    let again = lake.load_features(Some(asof)).await.unwrap();
    let whole = lake_of(&dir.path().join("whole"), &summary, &events).await;
    whole.compute_features(&[asof], FoldConfig::default(), &Progress::hidden()).await.unwrap();
    let expected = whole.load_features(Some(asof)).await.unwrap();
    assert_eq!(again.rows.len(), expected.rows.len());
    for (key, row) in &expected.rows {
        assert!(same_bits(row, &again.rows[key]), "{key:?}");
    }
    let changed = expected.rows.iter().filter(|(key, row)| first.rows.get(*key).is_none_or(|old| !same_bits(old, row))).count();
    assert!(changed > 20, "the second run should differ from the first: {changed} rows");
}

/// An epoch publishes the batch view streamed from the lake (four scans sorted by SKU, merged):
/// the rows it reads are those of the view loaded whole, deltas, features of a cutoff computed
/// twice (the newest run's) and SKUs without a state included, with the same metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_rows_stream_what_the_whole_view_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = simulate(&dir.path().join("gen"), 43);
    let asof = summary.end - DAY / 3;
    let half = events.len() / 2;
    let lake = lake_of(&dir.path().join("lake"), &summary, &events[..half]).await;
    lake.compute_features(&[asof], FoldConfig::default(), &Progress::hidden()).await.unwrap();
    lake.import_events(events[half..].to_vec().into_iter().map(Ok)).await.unwrap();
    lake.nightly(asof, FoldConfig::default(), &Progress::hidden()).await.unwrap();
    let (meta, rows) = lake.load_published().await.unwrap();
    let streamed = tokio::task::spawn_blocking(move || rows.collect::<Result<Vec<_>, _>>()).await.unwrap().unwrap();
    let whole = lake.load_batch_view().await.unwrap();
    assert_eq!(meta, whole.meta());
    let (skus, _) = lake.load_catalog().await.unwrap();
    let mut loaded: Vec<_> = whole.into_rows(skus).map(Result::unwrap).collect();
    loaded.sort_by(|a, b| a.info.sku.cmp(&b.info.sku));
    assert_eq!(streamed.len(), loaded.len());
    for (streamed, loaded) in streamed.iter().zip(&loaded) {
        assert_eq!((&streamed.info, &streamed.states), (&loaded.info, &loaded.states));
        let nodes = |row: &sellable_core::SkuRow| row.features.iter().map(|(node, _)| node.clone()).collect::<Vec<_>>();
        assert_eq!(nodes(streamed), nodes(loaded), "{}", streamed.info.sku);
        assert!(streamed.features.iter().zip(&loaded.features).all(|((_, a), (_, b))| same_bits(a, b)), "{}", streamed.info.sku);
    }
    assert!(streamed.iter().any(|row| row.states.iter().any(|(_, state)| !state.deltas.is_empty())), "deltas travel");
    assert!(streamed.iter().filter(|row| !row.features.is_empty()).count() > 20, "features travel");
}

/// A nightly run that stopped between its two writes (a new view written, its deltas never) leaves
/// the last whole pair in force: the view the newest deltas name, with its cutoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_without_its_deltas_leaves_the_last_whole_pair_in_force() {
    use futures::TryStreamExt;
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = simulate(&dir.path().join("gen"), 47);
    let asof = summary.end - DAY;
    let lake = lake_of(&dir.path().join("lake"), &summary, &events).await;
    lake.nightly(asof, FoldConfig::default(), &Progress::hidden()).await.unwrap();
    let before = lake.load_batch_view().await.unwrap();
    // the half-done run: one row of the view as a new version of its own
    let uri = dir.path().join("lake").join("batch_view.lance");
    let stored = lance::dataset::Dataset::open(uri.to_str().unwrap()).await.unwrap();
    let batches: Vec<arrow_array::RecordBatch> = stored.scan().try_into_stream().await.unwrap().try_collect().await.unwrap();
    let one = batches[0].slice(0, 1);
    let params = lance::dataset::WriteParams { mode: lance::dataset::WriteMode::Overwrite, ..Default::default() };
    let reader = arrow_array::RecordBatchIterator::new([Ok(one.clone())], one.schema());
    lance::dataset::Dataset::write(reader, uri.to_str().unwrap(), Some(params)).await.unwrap();
    assert_eq!(lake.batch_view_asof().await.unwrap(), Some(asof));
    let after = lake.load_batch_view().await.unwrap();
    assert!(before.states.len() > 1);
    assert_eq!((after.version, after.states), (before.version.clone(), before.states.clone()));
    let (meta, rows) = lake.load_published().await.unwrap();
    let rows = tokio::task::spawn_blocking(move || rows.collect::<Result<Vec<_>, _>>()).await.unwrap().unwrap();
    assert_eq!(meta, before.meta());
    assert_eq!(rows.iter().map(|row| row.states.len()).sum::<usize>(), before.states.len());
    // and analysts query that view
    let pool = std::sync::Arc::new(datafusion::execution::memory_pool::GreedyMemoryPool::new(64 << 20));
    let (context, _) = lake.analytics_session(pool).await.unwrap();
    let counted = context.sql("SELECT COUNT(*) AS n FROM batch_view").await.unwrap().collect().await.unwrap();
    let n = counted[0].column(0).as_any().downcast_ref::<arrow_array::Int64Array>().unwrap().value(0);
    assert_eq!(n as usize, before.states.len());
}

/// A training set's replay starts from the batch view of the last cutoff before its period:
/// started at a later cutoff, it gives the same rows as a replay from an earlier one, a copy
/// redelivered just after the later cutoff included.
#[tokio::test]
async fn a_replay_started_at_a_later_cutoff_gives_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, mut events) = simulate(&dir.path().join("gen"), 43);
    let (start, cutoffs) = midday_cutoffs(&summary);
    let later = cutoffs[1];
    // a reserve known at the later cutoff, redelivered after it with another quantity, on a
    // sku×node with an order soon after: counted twice, it would change that order's row
    let order_after = |event: &Event| {
        events.iter().any(|order| {
            order.kind == EventKind::Reserve
                && order.order_id.is_some()
                && (order.sku.as_str(), order.node.as_str()) == (event.sku.as_str(), event.node.as_str())
                && order.ts > later + HOUR
                && order.ts < later + 6 * HOUR
        })
    };
    let copy = events
        .iter()
        .filter(|event| event.kind == EventKind::Reserve && event.ts > later - HOUR && event.arrival() <= later)
        .find(|event| order_after(event))
        .map(|event| Event { qty: event.qty * 5 + 1, arrived: Some(later + HOUR / 2), ..event.clone() })
        .expect("a reserve in the hour before the cutoff");
    events.push(copy);
    let lake = lake_of(&dir.path().join("lake"), &summary, &events).await;
    lake.compute_features(&cutoffs, FoldConfig::default(), &Progress::hidden()).await.unwrap();
    let progress = Progress::hidden();
    let build = |from| lake.build_trainset(from, summary.end, FoldConfig::default(), &progress);
    let (whole, _, whole_summary) = build(start).await.unwrap();
    let (part, _, part_summary) = build(later + 1).await.unwrap();
    assert_eq!((whole_summary.replay_from, part_summary.replay_from), (Some(cutoffs[0]), Some(later)));
    assert!(part_summary.events_replayed < whole_summary.events_replayed, "{part_summary:?}");
    let expected: Vec<&TrainRow> = whole.iter().filter(|row| row.ts > later).collect();
    assert!(expected.len() > 50 && expected.iter().any(|row| row.cutoff == cutoffs[2]), "{} rows", expected.len());
    assert_eq!(part.len(), expected.len());
    for (row, expected) in part.iter().zip(expected) {
        assert!(row.same_bits(expected), "{row:?}\n{expected:?}");
    }
}

/// A training set whose replay starts at the stored batch view's cutoff reads that view instead
/// of computing it again, and gets the same rows; once the lake has more events, or with another
/// lateness, it computes the view again.
#[tokio::test]
async fn a_training_set_starts_from_the_stored_batch_view_while_it_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = simulate(&dir.path().join("gen"), 59);
    let (start, cutoffs) = midday_cutoffs(&summary);
    let (config, progress) = (FoldConfig::default(), Progress::hidden());
    let (first, rest) = events.split_at(events.len() - 10);
    let lake = lake_of(&dir.path().join("stored"), &summary, first).await;
    lake.compute_features(&cutoffs[1..], config, &progress).await.unwrap();
    lake.nightly(cutoffs[0], config, &progress).await.unwrap();
    let (rows, _, stored) = lake.build_trainset(start, summary.end, config, &progress).await.unwrap();
    assert!(stored.stored_view && stored.replay_from == Some(cutoffs[0]), "{stored:?}");

    let computed = lake_of(&dir.path().join("computed"), &summary, first).await;
    computed.compute_features(&cutoffs, config, &progress).await.unwrap();
    let (expected, _, summary_computed) = computed.build_trainset(start, summary.end, config, &progress).await.unwrap();
    assert!(!summary_computed.stored_view && expected.len() > 50, "{summary_computed:?}");
    assert_eq!(rows.len(), expected.len());
    assert!(rows.iter().zip(&expected).all(|(a, b)| a.same_bits(b)), "the stored view gives other rows");

    let other_lateness = FoldConfig { lateness_ms: config.lateness_ms / 2, ..config };
    assert!(!lake.build_trainset(start, summary.end, other_lateness, &progress).await.unwrap().2.stored_view);
    lake.import_events(rest.to_vec().into_iter().map(Ok)).await.unwrap();
    assert!(!lake.build_trainset(start, summary.end, config, &progress).await.unwrap().2.stored_view, "more events");
}

/// Builds a lake from `events`, its features every day, and the training set of the last days.
async fn trainset_of(dir: &Path, summary: &SimSummary, events: &[Event]) -> Vec<TrainRow> {
    let lake = lake_of(dir, summary, events).await;
    let start = summary.end - 3 * DAY;
    let cutoffs: Vec<Millis> = (0..3).map(|day| start + day * DAY).collect();
    lake.compute_features(&cutoffs, FoldConfig::default(), &Progress::hidden()).await.unwrap();
    let (rows, lineage, _) = lake.build_trainset(start, summary.end, FoldConfig::default(), &Progress::hidden()).await.unwrap();
    let version = lake.write_trainset(&rows, &lineage).await.unwrap();
    let stored = lake.load_trainset().await.unwrap();
    assert_eq!((stored.version, stored.lineage), (version, Some(lineage)));
    let stored = stored.rows;
    assert!(stored.len() == rows.len() && stored.iter().zip(&rows).all(|(a, b)| a.same_bits(b)), "the stored set is the built one");
    rows
}

#[tokio::test]
async fn corrupting_every_event_after_an_order_does_not_change_its_training_row() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = simulate(&dir.path().join("gen"), 41);
    let rows = trainset_of(&dir.path().join("clean"), &summary, &events).await;
    assert!(rows.len() > 100 && rows.iter().any(|row| row.label == 1), "{} rows", rows.len());
    // an order in the middle of the period
    let order = rows[rows.len() / 2].clone();
    let corrupted: Vec<Event> = events
        .iter()
        .map(|event| {
            let own_reserve = event.order_id.as_deref() == Some(order.order_id.as_str()) && event.kind == EventKind::Reserve;
            if event.arrival() >= order.ts && !own_reserve {
                Event { qty: event.qty * 3 + 1, ..event.clone() }
            } else {
                event.clone()
            }
        })
        .collect();
    assert!(corrupted.iter().zip(&events).filter(|(a, b)| a != b).count() > 1_000);
    let corrupted_rows = trainset_of(&dir.path().join("corrupted"), &summary, &corrupted).await;
    let same = corrupted_rows.iter().find(|row| row.order_id == order.order_id).unwrap();
    assert!(same.same_bits(&order), "{same:?}\n{order:?}");
    // and the corruption did reach later orders: the test can fail
    let later = |rows: &[TrainRow]| rows.iter().filter(|row| row.ts > order.ts + DAY / 2).map(|row| row.features.clone()).collect::<Vec<_>>();
    assert!(later(&rows).iter().zip(later(&corrupted_rows)).any(|(a, b)| !same_bits(a, &b)));
}

/// An archiver's position is committed with its events, and read back after later appends.
#[tokio::test]
async fn an_appends_position_is_read_back_from_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, events) = simulate(&dir.path().join("gen"), 5);
    let lake = lake_of(&dir.path().join("lake"), &summary, &events[..10]).await;
    assert_eq!(lake.position("stream:s").await.unwrap(), None);
    lake.append_events_at(&events[10..20], "stream:s", "5-0").await.unwrap();
    lake.append_events_at(&events[20..30], "stream:t", "7-1").await.unwrap();
    lake.import_events(events[30..40].to_vec().into_iter().map(Ok)).await.unwrap();
    assert_eq!(lake.position("stream:s").await.unwrap().as_deref(), Some("5-0"));
    assert_eq!(lake.position("stream:t").await.unwrap().as_deref(), Some("7-1"));
    let pinned = lake.pinned(2);
    assert_eq!((pinned.position("stream:t").await.unwrap(), pinned.events_after(Millis::MIN).await.unwrap().len()), (None, 20));
}

/// Every row of a table of the lake, as analysts read it (ordered by `order`), in text.
async fn table_rows(lake: &Lake, table: &str, order: &str) -> Vec<String> {
    let pool = std::sync::Arc::new(datafusion::execution::memory_pool::GreedyMemoryPool::new(256 << 20));
    let (context, _) = lake.analytics_session(pool).await.unwrap();
    let batches = context.sql(&format!("SELECT * FROM {table} ORDER BY {order}")).await.unwrap().collect().await.unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    text.lines().map(str::to_string).collect()
}

/// The nightly job on a Ballista cluster (standalone: a scheduler and an executor in this
/// process, the events read by the executor from the lake's fragments, the job's tables shared
/// as datasets of the lake's scratch space) gives the local job's batch view, deltas and features row for row, in memory
/// and in shares of the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nightly_job_on_ballista_equals_the_local_job_row_for_row() {
    let dir = tempfile::tempdir().unwrap();
    let (summary, mut events) = simulate(&dir.path().join("gen"), 61);
    events.push(events[10].clone()); // a replay: deduplicated on the cluster too
    let asof = summary.end - DAY / 2;
    for (name, scratch_limit) in [("memory", usize::MAX), ("shares", 256 << 10)] {
        let local = lake_of(&dir.path().join(format!("{name}-local")), &summary, &events).await.with_scratch_limit(scratch_limit);
        let cluster = lake_of(&dir.path().join(format!("{name}-ballista")), &summary, &events)
            .await
            .with_scratch_limit(scratch_limit)
            .with_engine(sellable_batch::Engine::Ballista { scheduler: None });
        let (local_view, local_features) = local.nightly(asof, FoldConfig::default(), &Progress::hidden()).await.unwrap();
        let (view, features) = cluster.nightly(asof, FoldConfig::default(), &Progress::hidden()).await.unwrap();
        assert_eq!(view.shares > 1, scratch_limit < usize::MAX, "{name}: {} shares", view.shares);
        assert!(view.sku_nodes > 20 && view.deltas > 0, "{name}: {view:?}");
        // the tables the executors read were datasets of the lake's scratch space, removed after
        assert!(!dir.path().join(format!("{name}-ballista")).join("scratch").exists(), "{name}: the shared tables are removed");
        assert_eq!((view.sku_nodes, view.deltas, features.rows), (local_view.sku_nodes, local_view.deltas, local_features.rows), "{name}");
        for (table, order) in [("batch_view", "sku, node"), ("features", "asof, sku, node")] {
            let expected = table_rows(&local, table, order).await;
            assert!(expected.len() > 20, "{name}: {table}");
            assert_eq!(table_rows(&cluster, table, order).await, expected, "{name}: {table}");
        }
        // the deltas too, and the view is still core's fold
        let stored = cluster.load_batch_view().await.unwrap();
        assert_eq!(stored.states, local.load_batch_view().await.unwrap().states, "{name}");
        assert_eq!(stored.states, batch_states(events.iter().filter(|e| known_at(e, asof)), FoldConfig::default()), "{name}");
    }
}
