//! The offline feature store: the nightly job computes the batch features of every sku×node as
//! of each cutoff with the SQL of `batch/sql/features.sql` and appends them, with their `asof`,
//! to the Lance dataset `features` (one version per run). Serving and the training-set builder
//! read the features of one cutoff back with [`Lake::load_features`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, RecordBatchIterator};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use indicatif::ProgressBar;
use lance::dataset::WriteMode;
use sellable_core::features::BATCH;
use sellable_core::fold::SkuNode;
use sellable_core::{FoldConfig, Millis};

use crate::shares::{Known, Spill, SpillFile};
use crate::{column, int_column, string_column, BatchError, Lake, Progress};

pub(crate) const FEATURES: &str = "features";

/// Node kind, region and feed SLA come from the catalog.
pub(crate) const NEEDS_CATALOG: &str = "import a catalog first (sellable lake import --from a gen directory)";

/// The feature definitions, compiled in: what runs is what the file says.
pub const FEATURES_SQL: &str = include_str!("../sql/features.sql");

/// What a run of the nightly job wrote.
#[derive(Debug, Clone)]
pub struct FeaturesSummary {
    pub cutoffs: Vec<Millis>,
    pub rows: u64,
    /// The `features` version holding them.
    pub version: u64,
}

/// The batch features of one cutoff, per sku×node, in the order of [`BATCH`].
#[derive(Debug, Clone, Default)]
pub struct BatchFeatures {
    pub asof: Millis,
    /// The `features` version they were read from.
    pub version: u64,
    pub rows: HashMap<SkuNode, Vec<f64>>,
}

impl Lake {
    /// Computes the features as of each cutoff and appends them all as one new version of
    /// `features`. One DataFusion session serves every cutoff, with bounded memory (it spills).
    pub async fn compute_features(&self, cutoffs: &[Millis], config: FoldConfig, progress: &Progress) -> Result<FeaturesSummary, BatchError> {
        self.dataset(crate::NODES, NEEDS_CATALOG).await?;
        let context = self.session().await?;
        let mut computed = Vec::new();
        let bar = progress.bar("features", cutoffs.len() as u64);
        for &asof in cutoffs {
            bar.set_message(format!("as of {}", sellable_core::event::format_millis(asof)));
            let known = self.known_events(&context, asof, config).await?;
            computed.push(self.features_of(&context, &known, asof, &ProgressBar::hidden()).await?.features);
            bar.inc(1);
        }
        bar.finish();
        crate::distributed::release(&context).await;
        self.write_features(&computed.iter().collect::<Vec<_>>(), cutoffs).await
    }

    /// Appends the features of `cutoffs` (those of each cutoff in turn) as one new version of
    /// `features`, read a batch at a time as the writer takes them.
    pub(crate) async fn write_features(&self, rows: &[&Rows], cutoffs: &[Millis]) -> Result<FeaturesSummary, BatchError> {
        let count: usize = rows.iter().map(|rows| rows.count()).sum();
        let parts = rows.iter().map(|rows| rows.batches()).collect::<Result<Vec<_>, _>>()?;
        let batches = parts.into_iter().flatten().map(|batch| batch.map_err(crate::as_arrow_error));
        let version = self.write(FEATURES, RecordBatchIterator::new(batches, features_schema()), WriteMode::Append).await?;
        Ok(FeaturesSummary { cutoffs: cutoffs.to_vec(), rows: count as u64, version })
    }

    /// The cutoffs the feature store holds, ascending.
    pub async fn feature_cutoffs(&self) -> Result<Vec<Millis>, BatchError> {
        let dataset = self.dataset(FEATURES, "compute features first (sellable batch)").await?;
        let mut scanner = dataset.scan();
        scanner.project(&["asof"]).map_err(self.lance_error(FEATURES))?;
        let batches: Vec<RecordBatch> =
            scanner.try_into_stream().await.map_err(self.lance_error(FEATURES))?.try_collect().await.map_err(self.lance_error(FEATURES))?;
        let mut cutoffs = Vec::new();
        for batch in batches {
            let asof = int_column(&batch, "asof", FEATURES)?;
            cutoffs.extend(asof.iter().flatten());
        }
        cutoffs.sort_unstable();
        cutoffs.dedup();
        Ok(cutoffs)
    }

    /// The features as of `asof` (the latest cutoff when `None`). If a cutoff was computed more
    /// than once, the newest run wins.
    pub async fn load_features(&self, asof: Option<Millis>) -> Result<BatchFeatures, BatchError> {
        let dataset = self.dataset(FEATURES, "compute features first (sellable batch)").await?;
        let asof = match asof {
            Some(asof) => asof,
            None => *self.feature_cutoffs().await?.last().ok_or_else(|| BatchError::Corrupt {
                dataset: FEATURES.into(),
                message: "the feature store is empty".into(),
            })?,
        };
        let mut scanner = dataset.scan();
        scanner.filter(&format!("asof = {asof}")).map_err(self.lance_error(FEATURES))?;
        // one batch at a time: a cutoff computed N times has N times the rows, of which one copy is kept
        let mut batches = scanner.try_into_stream().await.map_err(self.lance_error(FEATURES))?;
        let mut features = BatchFeatures { asof, version: dataset.version_id(), rows: HashMap::new() };
        while let Some(batch) = batches.try_next().await.map_err(self.lance_error(FEATURES))? {
            let sku = string_column(&batch, "sku", FEATURES)?;
            let node = string_column(&batch, "node", FEATURES)?;
            let columns: Vec<Float64Array> = BATCH.iter().map(|name| float_column(&batch, name)).collect::<Result<_, _>>()?;
            for row in 0..batch.num_rows() {
                let values = columns.iter().map(|column| if column.is_null(row) { f64::NAN } else { column.value(row) }).collect();
                features.rows.insert((sku.value(row).to_string(), node.value(row).to_string()), values);
            }
        }
        if features.rows.is_empty() {
            return Err(BatchError::Corrupt { dataset: FEATURES.into(), message: format!("no features as of {asof}") });
        }
        Ok(features)
    }
}

/// What one pass of the feature SQL over the events known at a cutoff gives.
pub(crate) struct Computed {
    /// The rows of its last statement, ordered by sku and node within each share of the nodes:
    /// the batch view's (its `view_` columns, in [`crate::view_schema`]) ...
    pub view: Rows,
    /// ... and the features (in [`features_schema`], with their cutoff).
    pub features: Rows,
    /// The batch view's on-hand deltas: the feature SQL's table `deltas`.
    pub deltas: Rows,
    /// How many shares of the nodes it ran in.
    pub shares: usize,
}

/// Rows of a table the job writes: held in memory when the events were in one share, else in one
/// scratch file per share (so that the job holds one share's at a time).
pub(crate) enum Rows {
    Held(Vec<RecordBatch>),
    Spilled(Vec<SpillFile>),
}

impl Rows {
    pub(crate) fn count(&self) -> usize {
        match self {
            Rows::Held(batches) => batches.iter().map(RecordBatch::num_rows).sum(),
            Rows::Spilled(files) => files.iter().map(|file| file.rows).sum(),
        }
    }

    /// Their schema, unless there are none.
    pub(crate) fn schema(&self) -> Option<SchemaRef> {
        match self {
            Rows::Held(batches) => batches.first().map(RecordBatch::schema),
            Rows::Spilled(files) => files.first().map(|file| file.schema.clone()),
        }
    }

    /// Their batches, in order, read one at a time.
    pub(crate) fn batches(&self) -> Result<Box<dyn Iterator<Item = Result<RecordBatch, BatchError>> + Send>, BatchError> {
        match self {
            Rows::Held(batches) => Ok(Box::new(batches.clone().into_iter().map(Ok))),
            Rows::Spilled(files) => {
                let readers = files.iter().map(SpillFile::batches).collect::<Result<Vec<_>, _>>()?;
                Ok(Box::new(readers.into_iter().flatten()))
            }
        }
    }
}

impl Lake {
    /// Runs the feature SQL over the events `known` at `asof`. The statements before the last two
    /// create tables with the rows of one node each (per node or per sku×node): they run once per
    /// share of the nodes, over that share's events. The next one, `sku_totals`, runs once over
    /// the union of the shares' `per_node`; the last one runs once per share again, over that
    /// share's tables, so that its joins and its sort hold one share's sku×nodes. With several
    /// shares, each share's tables and rows go to scratch files as they are made, so what is held
    /// is one share's. `bar` advances once per share.
    pub(crate) async fn features_of(
        &self,
        context: &SessionContext,
        known: &Known,
        asof: Millis,
        bar: &ProgressBar,
    ) -> Result<Computed, BatchError> {
        let sql = FEATURES_SQL.replace("${asof}", &asof.to_string());
        let mut statements = crate::statements(&sql);
        let (last, totals) = (statements.pop().unwrap_or_default(), statements.pop().unwrap_or_default());
        let shares = known.shares();
        // each share's tables in scratch files, when there are several shares (with one, they
        // stay registered)
        let mut spill = if shares.len() > 1 { Some(Spill::claim(&self.local.join(crate::SCRATCH))?) } else { None };
        let mut tables: Vec<BTreeMap<&str, SpillFile>> = Vec::new();
        // a share larger than twice the budget (nodes with many events) streams from its file,
        // unless the queries run on a cluster, whose executors cannot read it
        let hold_limit = match self.engine {
            crate::Engine::Local => self.scratch_limit.saturating_mul(2),
            crate::Engine::Ballista { .. } => usize::MAX,
        };
        for (done, &share) in shares.iter().enumerate() {
            bar.set_message(format!("features and snapshot, share {} of {}", done + 1, shares.len()));
            let started = std::time::Instant::now();
            known.register(context, share, hold_limit).await?;
            tracing::debug!(share, seconds = started.elapsed().as_secs_f64(), "share registered");
            for (part, statement) in statements.iter().enumerate() {
                let started = std::time::Instant::now();
                crate::execute_statement(context, statement).await?;
                tracing::debug!(share, statement = part + 1, seconds = started.elapsed().as_secs_f64(), "features.sql");
            }
            if let Some(spill) = spill.as_mut() {
                // the tables read later: by the last statement, and the deltas of the batch view
                let later = statements.iter().filter_map(|statement| created_table(statement)).filter(|name| *name == "deltas" || last.contains(name));
                let mut created = BTreeMap::new();
                for name in later {
                    let table = context.table(name).await?.execute_stream().await?;
                    created.insert(name, spill.write(name, table).await?);
                }
                tables.push(created);
            }
            bar.inc(1);
        }
        context.deregister_table("timely")?;
        let Some(mut spill) = spill else {
            // one share: its tables are registered
            crate::execute_statement(context, &totals).await?;
            let rows = context.sql(&last).await?.collect().await?;
            let (view, features) = converted(&rows, asof)?;
            let deltas = context.table("deltas").await?.collect().await?;
            return Ok(Computed { view: Rows::Held(view), features: Rows::Held(features), deltas: Rows::Held(deltas), shares: 1 });
        };
        let per_node: Vec<SpillFile> = tables.iter().map(|share| share["per_node"].clone()).collect();
        register_files(context, "per_node", &per_node).await?;
        crate::execute_statement(context, &totals).await?;
        let started = std::time::Instant::now();
        let (mut view, mut features) = (Vec::new(), Vec::new());
        for share in &tables {
            // one share's tables, held while its rows are computed
            for (name, file) in share {
                crate::register_rows(context, name, file.schema.clone(), file.batches()?.collect::<Result<_, _>>()?).await?;
            }
            // one share's rows, held while they are converted and written
            let (share_view, share_features) = converted(&context.sql(&last).await?.collect().await?, asof)?;
            view.push(spill.write("view", crate::batch_stream(crate::view_schema(), share_view.into_iter().map(Ok))).await?);
            features.push(spill.write("features", crate::batch_stream(features_schema(), share_features.into_iter().map(Ok))).await?);
        }
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "features.sql, sku totals and last statement");
        let deltas = tables.iter().map(|share| share["deltas"].clone()).collect();
        Ok(Computed { view: Rows::Spilled(view), features: Rows::Spilled(features), deltas: Rows::Spilled(deltas), shares: shares.len() })
    }
}

/// The batch view's and the features' batches of the feature SQL's `rows` as of `asof`.
pub(crate) fn converted(rows: &[RecordBatch], asof: Millis) -> Result<(Vec<RecordBatch>, Vec<RecordBatch>), BatchError> {
    let view = rows.iter().map(|batch| crate::view_batch(batch, asof)).collect::<Result<_, _>>()?;
    let features = rows.iter().map(|batch| feature_batch(batch, asof)).collect::<Result<_, _>>()?;
    Ok((view, features))
}

/// Registers the rows of `files` (of one schema) as the table `name`: streamed from the files by
/// every query, or, on a cluster, written once into a table shared with the executors.
async fn register_files(context: &SessionContext, name: &str, files: &[SpillFile]) -> Result<(), BatchError> {
    let Some(schema) = files.first().map(|file| file.schema.clone()) else { return Ok(()) };
    match crate::distributed::SharedTables::of(context) {
        Some(shared) => {
            let readers = files.iter().map(SpillFile::batches).collect::<Result<Vec<_>, _>>()?;
            shared.register_stream(context, name, crate::batch_stream(schema, readers.into_iter().flatten())).await
        }
        None => {
            let partitions = files.iter().map(SpillFile::partition).collect();
            context.deregister_table(name)?;
            context.register_table(name, Arc::new(datafusion::catalog::streaming::StreamingTable::try_new(schema, partitions)?))?;
            Ok(())
        }
    }
}

/// The table a `CREATE OR REPLACE TABLE name AS` statement creates.
pub(crate) fn created_table(statement: &str) -> Option<&str> {
    statement
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("CREATE OR REPLACE TABLE "))
        .and_then(|rest| rest.split_whitespace().next())
}

/// The features of one batch of the feature SQL's rows, in [`features_schema`], with their `asof`.
fn feature_batch(batch: &RecordBatch, asof: Millis) -> Result<RecordBatch, BatchError> {
    let mut columns = vec![Arc::new(Int64Array::from(vec![asof; batch.num_rows()])) as Arc<dyn Array>];
    columns.push(arrow_cast::cast(column(batch, "sku", FEATURES)?, &DataType::Utf8).map_err(arrow_error)?);
    columns.push(arrow_cast::cast(column(batch, "node", FEATURES)?, &DataType::Utf8).map_err(arrow_error)?);
    for name in BATCH {
        columns.push(Arc::new(float_column(batch, name)?));
    }
    RecordBatch::try_new(features_schema(), columns).map_err(arrow_error)
}

fn arrow_error(error: arrow_schema::ArrowError) -> BatchError {
    BatchError::Corrupt { dataset: FEATURES.into(), message: error.to_string() }
}

pub(crate) fn float_column(batch: &RecordBatch, name: &str) -> Result<Float64Array, BatchError> {
    let array = arrow_cast::cast(column(batch, name, FEATURES)?, &DataType::Float64).map_err(arrow_error)?;
    Ok(array.as_any().downcast_ref::<Float64Array>().expect("cast to Float64").clone())
}

/// `asof`, `sku`, `node`, then one Float64 column per batch feature.
pub fn features_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("asof", DataType::Int64, false),
        Field::new("sku", DataType::Utf8, false),
        Field::new("node", DataType::Utf8, false),
    ];
    fields.extend(BATCH.iter().map(|name| Field::new(*name, DataType::Float64, true)));
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statements_create_the_tables_of_the_shares_then_the_sku_totals() {
        let statements = crate::statements(FEATURES_SQL);
        let [before @ .., totals, last] = statements.as_slice() else { panic!("too few statements") };
        let created: Vec<&str> = before.iter().filter_map(|statement| created_table(statement)).collect();
        assert_eq!(created, ["per_node", "node_totals", "anchors", "deltas", "counted", "on_hand", "feed"]);
        assert_eq!(created_table(totals), Some("sku_totals"));
        assert_eq!(created_table(last), None);
    }
}
