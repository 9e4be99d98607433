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

use crate::shares::Known;
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
        let mut batches = Vec::new();
        let bar = progress.bar("features", cutoffs.len() as u64);
        for &asof in cutoffs {
            bar.set_message(format!("as of {}", sellable_core::event::format_millis(asof)));
            let known = self.known_events(&context, asof, config).await?;
            let computed = self.features_of(&context, &known, asof, &ProgressBar::hidden()).await?;
            batches.extend(feature_batches(&computed.rows, asof)?);
            bar.inc(1);
        }
        bar.finish();
        self.write_features(batches, cutoffs).await
    }

    /// Appends the features of `cutoffs` as one new version of `features`.
    pub(crate) async fn write_features(&self, batches: Vec<RecordBatch>, cutoffs: &[Millis]) -> Result<FeaturesSummary, BatchError> {
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let schema = features_schema();
        let version = self.write(FEATURES, RecordBatchIterator::new(batches.into_iter().map(Ok), schema), WriteMode::Append).await?;
        Ok(FeaturesSummary { cutoffs: cutoffs.to_vec(), rows: rows as u64, version })
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
    /// The rows of its last statement: the features and the snapshot (the batch view's `view_`
    /// columns), ordered by sku and node within each share of the nodes.
    pub rows: Vec<RecordBatch>,
    /// The batch view's on-hand deltas: the feature SQL's table `deltas`.
    pub deltas: Vec<RecordBatch>,
    /// How many shares of the nodes it ran in.
    pub shares: usize,
}

impl Lake {
    /// Runs the feature SQL over the events `known` at `asof`. The statements before the last two
    /// create tables with the rows of one node each (per node or per sku×node): they run once per
    /// share of the nodes, over that share's events. The next one, `sku_totals`, runs once over
    /// the union of the shares' `per_node`; the last one runs once per share again, over that
    /// share's tables, so that its joins and its sort hold one share's sku×nodes. `bar` advances
    /// once per share.
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
        // each share's tables, when there are several shares (with one, they stay registered)
        let mut tables: Vec<Tables> = Vec::new();
        for (done, &share) in shares.iter().enumerate() {
            bar.set_message(format!("features and snapshot, share {} of {}", done + 1, shares.len()));
            // a share larger than twice the budget (nodes with many events) streams from its file,
            // unless the queries run on a cluster, whose executors read what the plan carries
            let hold_limit = match self.engine {
                crate::Engine::Local => self.scratch_limit.saturating_mul(2),
                crate::Engine::Ballista { .. } => usize::MAX,
            };
            let started = std::time::Instant::now();
            known.register(context, share, hold_limit).await?;
            tracing::debug!(share, seconds = started.elapsed().as_secs_f64(), "share registered");
            for (part, statement) in statements.iter().enumerate() {
                let started = std::time::Instant::now();
                crate::execute_statement(context, statement).await?;
                tracing::debug!(share, statement = part + 1, seconds = started.elapsed().as_secs_f64(), "features.sql");
            }
            if shares.len() > 1 {
                let mut created = Tables::new();
                for name in statements.iter().filter_map(|statement| created_table(statement)) {
                    let table = context.table(name).await?;
                    created.insert(name.to_string(), (Arc::new(table.schema().as_arrow().clone()), table.collect().await?));
                }
                tables.push(created);
            }
            bar.inc(1);
        }
        context.deregister_table("timely")?;
        union(context, &tables, "per_node").await?;
        crate::execute_statement(context, &totals).await?;
        let started = std::time::Instant::now();
        let mut rows = Vec::new();
        if tables.is_empty() {
            rows = context.sql(&last).await?.collect().await?;
        }
        for share in &tables {
            for (name, (schema, batches)) in share {
                crate::register_rows(context, name, schema.clone(), batches.clone()).await?;
            }
            rows.extend(context.sql(&last).await?.collect().await?);
        }
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "features.sql, sku totals and last statement");
        union(context, &tables, "deltas").await?;
        let deltas = context.table("deltas").await?.collect().await?;
        Ok(Computed { rows, deltas, shares: shares.len() })
    }
}

/// Tables by name, with their schema and rows.
type Tables = BTreeMap<String, (SchemaRef, Vec<RecordBatch>)>;

/// Registers the union of every share's table `name` (nothing when there is one share: its
/// tables stay registered).
async fn union(context: &SessionContext, tables: &[Tables], name: &str) -> Result<(), BatchError> {
    let Some((schema, _)) = tables.first().and_then(|first| first.get(name)) else { return Ok(()) };
    let batches = tables.iter().flat_map(|share| share[name].1.iter().cloned()).collect();
    crate::register_rows(context, name, schema.clone(), batches).await
}

/// The table a `CREATE OR REPLACE TABLE name AS` statement creates.
pub(crate) fn created_table(statement: &str) -> Option<&str> {
    statement
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("CREATE OR REPLACE TABLE "))
        .and_then(|rest| rest.split_whitespace().next())
}

/// The features of the feature SQL's rows, in [`features_schema`], with their `asof`.
pub(crate) fn feature_batches(rows: &[RecordBatch], asof: Millis) -> Result<Vec<RecordBatch>, BatchError> {
    let schema = features_schema();
    rows.iter()
        .map(|batch| {
            let mut columns = vec![Arc::new(Int64Array::from(vec![asof; batch.num_rows()])) as Arc<dyn Array>];
            columns.push(arrow_cast::cast(column(batch, "sku", FEATURES)?, &DataType::Utf8).map_err(arrow_error)?);
            columns.push(arrow_cast::cast(column(batch, "node", FEATURES)?, &DataType::Utf8).map_err(arrow_error)?);
            for name in BATCH {
                columns.push(Arc::new(float_column(batch, name)?));
            }
            RecordBatch::try_new(schema.clone(), columns).map_err(arrow_error)
        })
        .collect()
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
