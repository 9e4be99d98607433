//! Training sets: one row per order (a `reserve` with an `order_id`), labelled by what became of
//! it, with the feature vector an answer at the order's time would have used.
//!
//! - **Label**: 1 if the order was ever `short` (an oversell), else 0 if it shipped; orders that
//!   were released (cancelled) or have no outcome yet are excluded.
//! - **Decision time** `T` = the order's `ts`. The row's features are
//!   [`sellable_core::features::vector`] of the batch features as of the last cutoff strictly
//!   before `T` and of the merged state at `T`. That state is what serving's would be: the batch
//!   view as of the cutoff where the replay starts (the last one before `from`: the stored view
//!   when it was computed for that cutoff from the same events and lateness, else computed from
//!   the lake as it is now), merged ([`NodeState::merge`]) with the speed fold (`core`'s [`Fold`],
//!   the embedded speed view) of the events that arrived after that cutoff, replayed in arrival
//!   order up to, and not including, `T` ([`sellable_core::features::known_before_decision`]).
//!   Serving computes the same vector with the same function from its batch view merged with its
//!   speed view, so training and serving cannot disagree (tested bit for bit in the workspace's
//!   `tests/it`).
//! - **No leakage**: nothing that arrived at or after `T` reaches a row's features; the feature
//!   store's cutoffs before `T`, and the batch view where the replay starts, only hold events
//!   that arrived at or before them.
//!
//! The replay starts as serving's speed view does: it remembers the ids of the events that
//! arrived within the allowed lateness before its cutoff, so a copy arriving after it counts
//! once. It deduplicates with a window equal to the allowed lateness: in arrival order, a copy
//! of an event arriving more than that after the first copy is too late anyway, so this equals
//! the batch view's global deduplication while keeping memory bounded. Only the events after
//! the starting cutoff are replayed, so the cost follows the period, not the whole lake.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::StreamExt;
use lance::dataset::WriteMode;
use sellable_core::event::events_from_batch;
use sellable_core::features::{self, known_before_decision};
use sellable_core::fold::SkuNode;
use sellable_core::{Fold, FoldConfig, Millis, Moment, NodeState};

use crate::features::{BatchFeatures, FEATURES_SQL};
use crate::{int_column, scan, string_column, BatchError, Lake, Progress, EVENTS};

pub(crate) const TRAINSET: &str = "trainset";

pub use sellable_core::features::{Lineage, TrainRow, TrainingSet};

/// What building a training set found.
#[derive(Debug, Clone, Default)]
pub struct TrainsetSummary {
    pub rows: u64,
    pub positives: u64,
    /// Orders placed before the first cutoff of the feature store: no batch features.
    pub before_first_cutoff: u64,
    pub released: u64,
    pub no_outcome_yet: u64,
    /// The cutoff whose batch view the replay started from (`None`: no cutoff, nothing replayed).
    pub replay_from: Option<Millis>,
    /// Whether that view was the stored one (the nightly job's for the same cutoff, events and
    /// lateness) rather than computed again.
    pub stored_view: bool,
    pub events_replayed: u64,
}

/// What an order's row is computed from: the feature store's cutoffs, the batch view where the
/// replay started, and the speed fold of the events replayed since.
#[derive(Clone, Copy)]
struct Views<'a> {
    cutoffs: &'a [Millis],
    base: &'a BTreeMap<SkuNode, NodeState>,
    speed: &'a Fold,
    /// The node watermarks, when moments are wanted.
    marks: Option<&'a HashMap<String, Millis>>,
}

/// Raises `node`'s watermark to `arrived`.
fn raise(marks: &mut HashMap<String, Millis>, node: &str, arrived: Option<Millis>) {
    if let Some(arrived) = arrived {
        match marks.get_mut(node) {
            Some(mark) => *mark = (*mark).max(arrived),
            None => {
                marks.insert(node.to_string(), arrived);
            }
        }
    }
}

/// The cutoff whose epoch the replay is in: serving's speed view starts again at each cutoff, so
/// its recent demand ([`NodeState::demand`]) holds only the events that arrived after the
/// cutoff; the replay forgets its demand there too.
struct Epoch<'a> {
    cutoffs: &'a [Millis],
    current: Millis,
}

impl Epoch<'_> {
    /// Moves to the epoch of the last cutoff before `at`, if it is a later one.
    fn enter(&mut self, at: Millis, speed: &mut Fold) {
        if let Some(cutoff) = self.cutoffs.iter().rev().find(|cutoff| **cutoff < at).filter(|cutoff| **cutoff > self.current) {
            self.current = *cutoff;
            speed.states.values_mut().for_each(|state| state.demand.clear());
        }
    }
}

/// The code version stamped on training sets: changes whenever a feature definition does.
pub fn code_version() -> String {
    // FNV-1a: stable across builds and platforms
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in FEATURES_SQL.bytes().chain(features::names().join(",").bytes()) {
        hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("sellable {} features {hash:016x}", env!("CARGO_PKG_VERSION"))
}

impl Lake {
    /// Builds the training rows of the orders placed in `[from, to)`.
    pub async fn build_trainset(
        &self,
        from: Millis,
        to: Millis,
        config: FoldConfig,
        progress: &Progress,
    ) -> Result<(Vec<TrainRow>, Lineage, TrainsetSummary), BatchError> {
        let mut rows = Vec::new();
        let (lineage, summary) = self.replay(from, to, config, progress, false, |row, _| rows.push(row)).await?;
        Ok((rows, lineage, summary))
    }

    /// Replays the orders placed in `[from, to)` as [`Self::build_trainset`] does, handing each
    /// order's row to `visit` with the [`Moment`] serving would have answered it from: the SKU's
    /// states and features and the node watermarks, as of the order's time.
    pub async fn replay_orders(
        &self,
        from: Millis,
        to: Millis,
        config: FoldConfig,
        progress: &Progress,
        mut visit: impl FnMut(TrainRow, Moment),
    ) -> Result<TrainsetSummary, BatchError> {
        let visit = |row, moment: Option<Moment>| visit(row, moment.expect("asked for moments"));
        Ok(self.replay(from, to, config, progress, true, visit).await?.1)
    }

    async fn replay(
        &self,
        from: Millis,
        to: Millis,
        config: FoldConfig,
        progress: &Progress,
        moments: bool,
        mut visit: impl FnMut(TrainRow, Option<Moment>),
    ) -> Result<(Lineage, TrainsetSummary), BatchError> {
        let cutoffs = self.feature_cutoffs().await?;
        let features_version = self.dataset(crate::features::FEATURES, "").await?.version_id();
        let lineage = Lineage { lake_version: self.events_version().await?, features_version, code_version: code_version() };
        let mut summary = TrainsetSummary::default();
        let started = std::time::Instant::now();
        let orders = self.labelled_orders(from, to, &mut summary).await?;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), orders = orders.len(), "labelled orders");

        // The replay starts at the cutoff of the first order that can have a row, from the batch
        // view as of that cutoff, as serving starts from its batch view: orders before the first
        // cutoff have none, and the state at any later order is that view merged with the fold
        // of the events that arrived after it.
        let Some(start) = cutoffs.iter().rev().find(|cutoff| **cutoff < from).or(cutoffs.first()).copied() else {
            summary.before_first_cutoff = orders.len() as u64;
            return Ok((lineage, summary));
        };
        summary.replay_from = Some(start);
        let (started, bar) = (std::time::Instant::now(), progress.bar("start", 1));
        let (base, stored_view) = self.batch_states_at(start, config, &bar).await?;
        summary.stored_view = stored_view;
        bar.finish();
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), sku_nodes = base.len(), stored_view, "batch view where the replay starts");
        let started = std::time::Instant::now();
        let mut speed = Fold::new(FoldConfig { dedup_window_ms: Some(config.lateness_ms), ..config });
        // One scan, in arrival order: first the events that arrived within the lateness before
        // the cutoff, whose ids are remembered (what a copy redelivered after the cutoff must be
        // recognised by, as serving's speed view remembers them), then those replayed.
        let context = self.session().await?;
        let sql = format!(
            "SELECT * FROM {EVENTS} WHERE CAST(COALESCE(arrived, ts) AS BIGINT) > {remembered} \
             AND CAST(COALESCE(arrived, ts) AS BIGINT) < {to} ORDER BY COALESCE(arrived, ts), event_id",
            remembered = start - config.lateness_ms
        );
        let mut stream = context.sql(&sql).await?.execute_stream().await?;
        let bar = progress.bar("trainset", orders.len() as u64);
        let mut batch_features = BatchFeatures::default();
        let mut pending = orders.into_iter().peekable();
        let mut epoch = Epoch { cutoffs: &cutoffs, current: start };
        // serving's node watermarks, for moments: the batch view's, raised by every event folded since
        let mut marks: HashMap<String, Millis> = HashMap::new();
        if moments {
            for ((_, node), state) in &base {
                raise(&mut marks, node, state.last_arrived);
            }
        }
        let (mut scanned, mut replayed) = (0u64, 0u64);
        let mut visit = |row: TrainRow, moment: Option<Moment>| {
            summary.rows += 1;
            summary.positives += u64::from(row.label == 1);
            visit(row, moment);
        };
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let events = events_from_batch(&batch, scanned)?;
            scanned += batch.num_rows() as u64;
            for event in events {
                // malformed rows cannot be in the lake (import checks them); skip defensively
                let Ok(event) = event else { continue };
                if event.arrival() <= start {
                    speed.remember(&event.sku, &event.event_id, start);
                    continue;
                }
                replayed += 1;
                // every order decided before this event arrived is answered now
                while let Some(order) = pending.next_if(|order| !known_before_decision(&event, order.ts)) {
                    bar.inc(1);
                    epoch.enter(order.ts, &mut speed);
                    let views = Views { cutoffs: &cutoffs, base: &base, speed: &speed, marks: moments.then_some(&marks) };
                    if let Some((row, moment)) = self.row_for(order, views, &mut batch_features, &mut summary.before_first_cutoff).await? {
                        visit(row, moment);
                    }
                }
                epoch.enter(event.arrival(), &mut speed);
                if moments && !config.is_too_late(&event) {
                    raise(&mut marks, &event.node, Some(event.arrival()));
                }
                speed.apply(&event);
            }
        }
        for order in pending {
            bar.inc(1);
            epoch.enter(order.ts, &mut speed);
            let views = Views { cutoffs: &cutoffs, base: &base, speed: &speed, marks: moments.then_some(&marks) };
            if let Some((row, moment)) = self.row_for(order, views, &mut batch_features, &mut summary.before_first_cutoff).await? {
                visit(row, moment);
            }
        }
        bar.finish();
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), events = replayed, "ids remembered, events replayed, rows built");
        summary.events_replayed = replayed;
        Ok((lineage, summary))
    }

    /// The row of one order (a row without features yet), with the features of the last cutoff
    /// before it (loaded when the orders, in time order, reach a new cutoff), and its moment when
    /// `views` has watermarks; `None` before the first cutoff.
    async fn row_for(
        &self,
        order: TrainRow,
        views: Views<'_>,
        batch_features: &mut BatchFeatures,
        before_first_cutoff: &mut u64,
    ) -> Result<Option<(TrainRow, Option<Moment>)>, BatchError> {
        let Some(cutoff) = views.cutoffs.iter().rev().find(|cutoff| **cutoff < order.ts).copied() else {
            *before_first_cutoff += 1;
            return Ok(None);
        };
        if batch_features.rows.is_empty() || batch_features.asof != cutoff {
            *batch_features = self.load_features(Some(cutoff)).await?;
        }
        let key = (order.sku.clone(), order.node.clone());
        // merged as serving merges its two views (`core::merge_views`)
        let state = match (views.base.get(&key), views.speed.states.get(&key)) {
            (Some(base), Some(speed)) => Some(Cow::Owned(base.merge(speed))),
            (base, speed) => base.or(speed).map(Cow::Borrowed),
        };
        let batch = batch_features.rows.get(&key).map(Vec::as_slice);
        let features = features::vector(batch, state.as_deref(), order.qty, order.ts);
        let moment = views.marks.map(|marks| {
            let of_sku = |states: &BTreeMap<SkuNode, NodeState>| -> Vec<(String, NodeState)> {
                states
                    .range((order.sku.clone(), String::new())..)
                    .take_while(|((sku, _), _)| *sku == order.sku)
                    .map(|((_, node), state)| (node.clone(), state.clone()))
                    .collect()
            };
            let (states, speed) = (of_sku(views.base), of_sku(&views.speed.states));
            let nodes: BTreeSet<&String> = states.iter().chain(&speed).map(|(node, _)| node).collect();
            let features_of = |node: &&String| Some(((*node).clone(), batch_features.rows.get(&(order.sku.clone(), (*node).clone()))?.clone()));
            Moment {
                cutoff,
                features: nodes.iter().filter_map(features_of).collect(),
                watermarks: nodes.iter().filter_map(|node| Some(((*node).clone(), *marks.get(*node)?))).collect(),
                states,
                speed,
            }
        });
        Ok(Some((TrainRow { cutoff: batch_features.asof, features, ..order }, moment)))
    }

    /// Orders placed in `[from, to)` with their label, in time order (ties by `order_id`): rows
    /// without their cutoff and features yet.
    async fn labelled_orders(&self, from: Millis, to: Millis, summary: &mut TrainsetSummary) -> Result<Vec<TrainRow>, BatchError> {
        let context = self.session().await?;
        let sql = format!(
            "WITH outcomes AS (
               SELECT order_id,
                      MAX(CASE WHEN kind = 'short' THEN 1 ELSE 0 END) AS shorted,
                      MAX(CASE WHEN kind = 'ship' THEN 1 ELSE 0 END) AS shipped,
                      MAX(CASE WHEN kind = 'release' THEN 1 ELSE 0 END) AS released
               FROM {EVENTS} WHERE order_id IS NOT NULL GROUP BY order_id),
             orders AS (
               SELECT order_id, CAST(ts AS BIGINT) AS ts, sku, node, qty,
                      ROW_NUMBER() OVER (PARTITION BY order_id ORDER BY COALESCE(arrived, ts), event_id) AS copy
               FROM {EVENTS}
               WHERE kind = 'reserve' AND order_id IS NOT NULL
                 AND CAST(ts AS BIGINT) >= {from} AND CAST(ts AS BIGINT) < {to})
             SELECT o.order_id, o.ts, o.sku, o.node, o.qty, c.shorted, c.shipped, c.released
             FROM orders o JOIN outcomes c ON o.order_id = c.order_id
             WHERE o.copy = 1
             ORDER BY o.ts, o.order_id"
        );
        let mut orders = Vec::new();
        for batch in context.sql(&sql).await?.collect().await? {
            let text = |name| string_column(&batch, name, EVENTS);
            let int = |name| int_column(&batch, name, EVENTS);
            let (order_id, sku, node) = (text("order_id")?, text("sku")?, text("node")?);
            let (ts, qty, shorted, shipped, released) = (int("ts")?, int("qty")?, int("shorted")?, int("shipped")?, int("released")?);
            for row in 0..batch.num_rows() {
                let label = match (shorted.value(row), shipped.value(row), released.value(row)) {
                    (1, _, _) => 1,
                    (_, 1, _) => 0,
                    (_, _, 1) => {
                        summary.released += 1;
                        continue;
                    }
                    _ => {
                        summary.no_outcome_yet += 1;
                        continue;
                    }
                };
                orders.push(TrainRow {
                    order_id: order_id.value(row).to_string(),
                    ts: ts.value(row),
                    sku: sku.value(row).to_string(),
                    node: node.value(row).to_string(),
                    qty: qty.value(row),
                    label,
                    cutoff: 0,
                    features: Vec::new(),
                });
            }
        }
        Ok(orders)
    }

    /// Writes a training set as a new version of the `trainset` dataset, lineage in every row.
    pub async fn write_trainset(&self, rows: &[TrainRow], lineage: &Lineage) -> Result<u64, BatchError> {
        let schema = trainset_schema();
        let text = |values: Vec<&str>| Arc::new(StringArray::from(values)) as Arc<dyn Array>;
        let int = |values: Vec<i64>| Arc::new(Int64Array::from(values)) as Arc<dyn Array>;
        let mut batches = Vec::new();
        for chunk in rows.chunks(crate::WRITE_BATCH) {
            let mut columns = vec![
                text(chunk.iter().map(|row| row.order_id.as_str()).collect()),
                int(chunk.iter().map(|row| row.ts).collect()),
                text(chunk.iter().map(|row| row.sku.as_str()).collect()),
                text(chunk.iter().map(|row| row.node.as_str()).collect()),
                int(chunk.iter().map(|row| row.qty).collect()),
                int(chunk.iter().map(|row| row.label).collect()),
                int(chunk.iter().map(|row| row.cutoff).collect()),
            ];
            for index in 0..features::names().len() {
                columns.push(Arc::new(Float64Array::from(chunk.iter().map(|row| row.features[index]).collect::<Vec<_>>())));
            }
            columns.push(int(vec![lineage.lake_version as i64; chunk.len()]));
            columns.push(int(vec![lineage.features_version as i64; chunk.len()]));
            columns.push(text(vec![lineage.code_version.as_str(); chunk.len()]));
            batches.push(RecordBatch::try_new(schema.clone(), columns).map_err(|error| BatchError::Corrupt {
                dataset: TRAINSET.into(),
                message: error.to_string(),
            })?);
        }
        self.write(TRAINSET, RecordBatchIterator::new(batches.into_iter().map(Ok), schema), WriteMode::Overwrite).await
    }

    /// The latest training set, with its version and lineage.
    pub async fn load_trainset(&self) -> Result<TrainingSet, BatchError> {
        let dataset = self.dataset(TRAINSET, "build one first (sellable trainset)").await?;
        let names = features::names();
        let mut rows = Vec::new();
        let mut lineage = None;
        for batch in scan(&dataset, TRAINSET).await? {
            let text = |name| string_column(&batch, name, TRAINSET);
            let int = |name| int_column(&batch, name, TRAINSET);
            let (order_id, sku, node, code) = (text("order_id")?, text("sku")?, text("node")?, text("code_version")?);
            let (ts, qty, label, cutoff, lake, store) = (int("ts")?, int("qty")?, int("label")?, int("cutoff")?, int("lake_version")?, int("features_version")?);
            let columns: Vec<&Float64Array> = names
                .iter()
                .map(|name| {
                    batch.column_by_name(name).and_then(|column| column.as_any().downcast_ref::<Float64Array>()).ok_or_else(|| {
                        BatchError::Corrupt { dataset: TRAINSET.into(), message: format!("feature column {name} missing or not Float64") }
                    })
                })
                .collect::<Result<_, _>>()?;
            for row in 0..batch.num_rows() {
                lineage.get_or_insert_with(|| Lineage {
                    lake_version: lake.value(row) as u64,
                    features_version: store.value(row) as u64,
                    code_version: code.value(row).to_string(),
                });
                rows.push(TrainRow {
                    order_id: order_id.value(row).to_string(),
                    ts: ts.value(row),
                    sku: sku.value(row).to_string(),
                    node: node.value(row).to_string(),
                    qty: qty.value(row),
                    label: label.value(row),
                    cutoff: cutoff.value(row),
                    features: columns.iter().map(|column| column.value(row)).collect(),
                });
            }
        }
        Ok(TrainingSet { version: dataset.version_id(), rows, lineage })
    }
}

fn trainset_schema() -> SchemaRef {
    let int = |name: &str| Field::new(name, DataType::Int64, false);
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    let mut fields = vec![text("order_id"), int("ts"), text("sku"), text("node"), int("qty"), int("label"), int("cutoff")];
    fields.extend(features::names().into_iter().map(|name| Field::new(name, DataType::Float64, false)));
    fields.extend([int("lake_version"), int("features_version"), text("code_version")]);
    Arc::new(Schema::new(fields))
}
