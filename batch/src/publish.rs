//! The batch view as an epoch publishes it, streamed: a row per SKU of the catalog, made from
//! four scans sorted by SKU (the catalog, the view, its deltas, the features of its cutoff) and
//! merged as they are read. The process holds a few batches of each and the rows waiting to be
//! published, whatever the size of the catalog; the sorts spill to disk beyond the lake's memory
//! limit.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow_array::RecordBatch;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::TryStreamExt;
use lance::dataset::Dataset;
use sellable_core::catalog::{sku_schema, skus_from_batch};
use sellable_core::fold::EventKey;
use sellable_core::view::Rows;
use sellable_core::{BatchMeta, NodeState, SkuInfo, SkuRow, ViewError};

use crate::features::{float_column, FEATURES};
use crate::{int_column, string_column, BatchError, Lake, ViewColumns, BATCH_DELTAS, BATCH_VIEW, CATALOG_HINT, SKUS};

/// Rows made ahead of the publisher.
const AHEAD: usize = 4_096;

impl Lake {
    /// The stored batch view as an epoch publishes it ([`sellable_core::BatchView::rows`]): its
    /// metadata, and a row per SKU of the catalog, in SKU order, read from the lake while they
    /// are taken (the view and deltas of one nightly run, pinned at the call).
    pub async fn load_published(&self) -> Result<(BatchMeta, Rows), BatchError> {
        let (lineage, view, deltas) = self.stored_view_or_missing().await?;
        let asof = lineage.asof;
        let skus = self.dataset(SKUS, CATALOG_HINT).await?;
        // the feature store's features of the same cutoff, if it has them
        let features = match self.existing(FEATURES).await? {
            Some(features) if features.count_rows(Some(format!("asof = {asof}"))).await.map_err(self.lance_error(FEATURES))? > 0 => Some(features),
            _ => None,
        };
        let version = format!(
            "batch_view v{} asof {}{}",
            view.version_id(),
            sellable_core::event::format_millis(asof),
            features.as_ref().map(|features| format!(", features v{}", features.version_id())).unwrap_or_default()
        );
        let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(FairSpillPool::new(self.memory_limit))).build_arc()?;
        let context = SessionContext::new_with_config_rt(SessionConfig::new().with_target_partitions(2), runtime);
        let register = |name: &str, dataset: Dataset, row_addresses: bool| {
            context.register_table(name, Arc::new(lance::datafusion::LanceTableProvider::new(Arc::new(dataset), false, row_addresses))).map(|_| ())
        };
        register(SKUS, skus, false)?;
        register(BATCH_VIEW, view, false)?;
        register(BATCH_DELTAS, deltas, false)?;
        let mut watermarks = std::collections::BTreeMap::new();
        let marks = context.sql(&format!("SELECT node, MAX(last_arrived) AS mark FROM {BATCH_VIEW} WHERE last_arrived IS NOT NULL GROUP BY node")).await?;
        for batch in marks.collect().await? {
            let (node, mark) = (string_column(&batch, "node", BATCH_VIEW)?, int_column(&batch, "mark", BATCH_VIEW)?);
            watermarks.extend((0..batch.num_rows()).map(|row| (node.value(row).to_string(), mark.value(row))));
        }
        let stream = |sql: String| {
            let context = context.clone();
            async move { context.sql(&sql).await?.execute_stream().await }
        };
        let catalog = Cursor::new(stream(format!("SELECT * FROM {SKUS} ORDER BY sku")).await?, decode_skus, |info| &info.sku);
        let view_rows = Cursor::new(stream(format!("SELECT * FROM {BATCH_VIEW} ORDER BY sku, node")).await?, decode_view, |row| &row.0);
        let delta_rows = Cursor::new(stream(format!("SELECT sku, node, ts, event_id, delta FROM {BATCH_DELTAS} ORDER BY sku, node")).await?, decode_deltas, |row| &row.0);
        let feature_rows = match features {
            Some(features) => {
                register(FEATURES, features, true)?;
                // a cutoff computed more than once: the newest rows (last by row address) win
                let sql = format!("SELECT * FROM {FEATURES} WHERE asof = {asof} ORDER BY sku, node, _rowaddr");
                Some(Cursor::new(stream(sql).await?, decode_features, |row| &row.0))
            }
            None => None,
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(AHEAD);
        tokio::spawn(async move {
            if let Err(error) = merge(catalog, view_rows, delta_rows, feature_rows, &sender).await {
                let _ = sender.send(Err(Box::new(error) as ViewError)).await;
            }
        });
        Ok((BatchMeta { version, asof, watermarks }, Box::new(Received(receiver))))
    }
}

/// The rows of [`Lake::load_published`] as its merge sends them (blocking while it reads).
struct Received(tokio::sync::mpsc::Receiver<Result<SkuRow, ViewError>>);

impl Iterator for Received {
    type Item = Result<SkuRow, ViewError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.blocking_recv()
    }
}

type ViewRow = (String, String, NodeState);
type DeltaRow = (String, String, EventKey, i64);
type FeatureRow = (String, String, Vec<f64>);

/// Makes each catalog SKU's row from the rows of the three other scans with its SKU (all sorted
/// by SKU: rows of SKUs the catalog lacks are passed over), and sends it; stops when the rows'
/// reader has gone.
async fn merge(
    mut catalog: Cursor<SkuInfo>,
    mut view: Cursor<ViewRow>,
    mut deltas: Cursor<DeltaRow>,
    mut features: Option<Cursor<FeatureRow>>,
    sender: &tokio::sync::mpsc::Sender<Result<SkuRow, ViewError>>,
) -> Result<(), BatchError> {
    while let Some(info) = catalog.next().await? {
        let mut states: Vec<(String, NodeState)> = view.take(&info.sku).await?.into_iter().map(|(_, node, state)| (node, state)).collect();
        for (_, node, key, delta) in deltas.take(&info.sku).await? {
            let found = states.binary_search_by(|(stocked, _)| stocked.as_str().cmp(&node)).map_err(|_| BatchError::Corrupt {
                dataset: BATCH_DELTAS.into(),
                message: format!("delta for {}×{node}, missing from batch_view", info.sku),
            })?;
            states[found].1.deltas.insert(key, delta);
        }
        let mut by_node: Vec<(String, Vec<f64>)> = Vec::new();
        if let Some(features) = &mut features {
            for (_, node, values) in features.take(&info.sku).await? {
                match by_node.last_mut() {
                    Some((last, kept)) if *last == node => *kept = values,
                    _ => by_node.push((node, values)),
                }
            }
        }
        if sender.send(Ok(SkuRow { info, states, features: by_node })).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// A scan sorted by SKU, decoded a batch at a time.
struct Cursor<T> {
    stream: SendableRecordBatchStream,
    decode: fn(&RecordBatch) -> Result<Vec<T>, BatchError>,
    sku: fn(&T) -> &String,
    items: VecDeque<T>,
}

impl<T> Cursor<T> {
    fn new(stream: SendableRecordBatchStream, decode: fn(&RecordBatch) -> Result<Vec<T>, BatchError>, sku: fn(&T) -> &String) -> Cursor<T> {
        Cursor { stream, decode, sku, items: VecDeque::new() }
    }

    /// Whether an item is next (reading batches until one is).
    async fn fill(&mut self) -> Result<bool, BatchError> {
        while self.items.is_empty() {
            match self.stream.try_next().await? {
                Some(batch) => self.items.extend((self.decode)(&batch)?),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn next(&mut self) -> Result<Option<T>, BatchError> {
        Ok(if self.fill().await? { self.items.pop_front() } else { None })
    }

    /// The items of `sku`, passing over those of SKUs before it.
    async fn take(&mut self, sku: &str) -> Result<Vec<T>, BatchError> {
        let mut taken = Vec::new();
        while self.fill().await? {
            let front = self.items.pop_front().expect("filled");
            match (self.sku)(&front).as_str().cmp(sku) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => taken.push(front),
                std::cmp::Ordering::Greater => {
                    self.items.push_front(front);
                    break;
                }
            }
        }
        Ok(taken)
    }
}

fn decode_skus(batch: &RecordBatch) -> Result<Vec<SkuInfo>, BatchError> {
    // the catalog's own types (a query may read strings as views)
    Ok(skus_from_batch(&crate::conformed(batch, &sku_schema(), SKUS)?)?)
}

fn decode_view(batch: &RecordBatch) -> Result<Vec<ViewRow>, BatchError> {
    let rows = ViewColumns::of(batch)?;
    (0..batch.num_rows()).map(|row| Ok((rows.sku.value(row).to_string(), rows.node.value(row).to_string(), rows.state(row)?))).collect()
}

fn decode_deltas(batch: &RecordBatch) -> Result<Vec<DeltaRow>, BatchError> {
    let (sku, node) = (string_column(batch, "sku", BATCH_DELTAS)?, string_column(batch, "node", BATCH_DELTAS)?);
    let (ts, event_id, delta) = (int_column(batch, "ts", BATCH_DELTAS)?, string_column(batch, "event_id", BATCH_DELTAS)?, int_column(batch, "delta", BATCH_DELTAS)?);
    Ok((0..batch.num_rows())
        .map(|row| {
            let key = EventKey { ts: ts.value(row), event_id: event_id.value(row).to_string() };
            (sku.value(row).to_string(), node.value(row).to_string(), key, delta.value(row))
        })
        .collect())
}

fn decode_features(batch: &RecordBatch) -> Result<Vec<FeatureRow>, BatchError> {
    let (sku, node) = (string_column(batch, "sku", FEATURES)?, string_column(batch, "node", FEATURES)?);
    let columns = sellable_core::features::BATCH.iter().map(|name| float_column(batch, name)).collect::<Result<Vec<_>, _>>()?;
    Ok((0..batch.num_rows())
        .map(|row| {
            use arrow_array::Array;
            let values = columns.iter().map(|column| if column.is_null(row) { f64::NAN } else { column.value(row) }).collect();
            (sku.value(row).to_string(), node.value(row).to_string(), values)
        })
        .collect())
}
