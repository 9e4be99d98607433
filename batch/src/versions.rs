//! `features_at(N)`: the feature store as its Lance version `N` holds it, for analysts who need
//! the features as they were when a model was trained (the table `features` is the newest).

use std::sync::Arc;

use arrow_schema::SchemaRef;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::scalar::ScalarValue;
use lance::dataset::Dataset;

/// The table function over the newest version of a dataset, whose schema the versions share.
#[derive(Debug)]
pub(crate) struct DatasetAt {
    pub dataset: Arc<Dataset>,
    pub schema: SchemaRef,
}

impl TableFunctionImpl for DatasetAt {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let version = match args.exprs() {
            [Expr::Literal(ScalarValue::Int64(Some(version)), _)] if *version > 0 => *version as u64,
            _ => return Err(DataFusionError::Plan("features_at takes one dataset version, e.g. features_at(3) (`sellable lake info` lists the versions)".into())),
        };
        Ok(Arc::new(VersionedTable { dataset: self.dataset.clone(), version, schema: self.schema.clone() }))
    }
}

/// One version of a dataset, opened when a query scans it.
#[derive(Debug)]
struct VersionedTable {
    /// The newest version, checked out at `version` when a query scans it.
    dataset: Arc<Dataset>,
    version: u64,
    schema: SchemaRef,
}

impl VersionedTable {
    async fn provider(&self) -> Result<lance::datafusion::LanceTableProvider> {
        let external = |error: lance::Error| DataFusionError::External(Box::new(error));
        let dataset = self.dataset.checkout_version(self.version).await.map_err(external)?;
        Ok(lance::datafusion::LanceTableProvider::new(Arc::new(dataset), false, false))
    }
}

#[async_trait::async_trait]
impl TableProvider for VersionedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(&self, state: &dyn Session, projection: Option<&Vec<usize>>, filters: &[Expr], limit: Option<usize>) -> Result<Arc<dyn ExecutionPlan>> {
        self.provider().await?.scan(state, projection, filters, limit).await
    }
}
