//! The `live` table: the merged batch + speed view per sku×node, read from the epoch's store
//! (Redis) when a query runs. A filter on `sku` (`sku = '…'` or `sku IN (…)`) is pushed into the
//! read, so a point query reads those SKUs alone; without one, the catalog's SKUs are read in
//! pipelined chunks.

use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DataFusionError;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::scalar::ScalarValue;
use sellable_batch::Lake;
use sellable_core::{merge_views, SpeedSource};

/// The store of the epoch serving answers from now (it changes at a cutover).
pub type LiveSource = Arc<dyn Fn() -> Arc<dyn SpeedSource> + Send + Sync>;

/// SKUs read from the store in one round trip.
const CHUNK: usize = 1_000;

pub struct LiveTable {
    source: LiveSource,
    lake: Arc<Lake>,
}

impl std::fmt::Debug for LiveTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveTable")
    }
}

impl LiveTable {
    pub fn new(source: LiveSource, lake: Arc<Lake>) -> LiveTable {
        LiveTable { source, lake }
    }
}

pub fn live_schema() -> SchemaRef {
    let number = |name: &str| Field::new(name, DataType::Int64, false);
    Arc::new(Schema::new(vec![
        Field::new("sku", DataType::Utf8, false),
        Field::new("node", DataType::Utf8, false),
        number("on_hand"),
        number("reserved"),
        number("held"),
        number("atp"),
        Field::new("last_arrived", DataType::Int64, true),
    ]))
}

/// The SKUs a filter names, if it is `sku = 'x'`, `'x' = sku` or `sku IN ('x', …)`.
fn skus_of(filter: &Expr) -> Option<Vec<String>> {
    let is_sku = |expr: &Expr| matches!(expr, Expr::Column(column) if column.name == "sku");
    let text = |expr: &Expr| match expr {
        Expr::Literal(ScalarValue::Utf8(Some(text)) | ScalarValue::LargeUtf8(Some(text)) | ScalarValue::Utf8View(Some(text)), _) => Some(text.clone()),
        _ => None,
    };
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) if is_sku(left) => text(right).map(|sku| vec![sku]),
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) if is_sku(right) => text(left).map(|sku| vec![sku]),
        Expr::InList(list) if !list.negated && is_sku(&list.expr) => list.list.iter().map(text).collect(),
        _ => None,
    }
}

#[tonic::async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        live_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| if skus_of(filter).is_some() { TableProviderFilterPushDown::Exact } else { TableProviderFilterPushDown::Unsupported })
            .collect())
    }

    async fn scan(&self, _state: &dyn Session, projection: Option<&Vec<usize>>, filters: &[Expr], _limit: Option<usize>) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        // the SKUs every pushed filter allows (their intersection), else the whole catalog
        let mut named: Option<Vec<String>> = None;
        for skus in filters.iter().filter_map(skus_of) {
            named = Some(match named {
                None => skus,
                Some(before) => before.into_iter().filter(|sku| skus.contains(sku)).collect(),
            });
        }
        let skus = match named {
            Some(skus) => skus,
            None => self.lake.load_catalog().await.map_err(|error| DataFusionError::External(Box::new(error)))?.0.into_iter().map(|info| info.sku).collect(),
        };
        let speed = (self.source)();
        let mut batches = Vec::new();
        for chunk in skus.chunks(CHUNK) {
            let names: Vec<&str> = chunk.iter().map(String::as_str).collect();
            let reads = speed.sku_reads(&names).await.map_err(DataFusionError::External)?;
            let (mut sku, mut node, mut on_hand, mut reserved, mut held, mut atp, mut arrived) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
            for (name, read) in names.iter().zip(&reads) {
                let Some(row) = &read.row else { continue };
                for (at, state) in merge_views(row.states(), &read.speed) {
                    sku.push(name.to_string());
                    node.push(at.to_string());
                    on_hand.push(state.on_hand());
                    reserved.push(state.reserved);
                    held.push(state.held);
                    atp.push(state.atp());
                    arrived.push(state.last_arrived);
                }
            }
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(sku)),
                Arc::new(StringArray::from(node)),
                Arc::new(Int64Array::from(on_hand)),
                Arc::new(Int64Array::from(reserved)),
                Arc::new(Int64Array::from(held)),
                Arc::new(Int64Array::from(atp)),
                Arc::new(Int64Array::from(arrived)),
            ];
            batches.push(RecordBatch::try_new(live_schema(), columns)?);
        }
        Ok(MemorySourceConfig::try_new_exec(&[batches], live_schema(), projection.cloned())?)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    #[test]
    fn a_filter_on_sku_names_the_skus_to_read() {
        assert_eq!(super::skus_of(&col("sku").eq(lit("SKU-1"))), Some(vec!["SKU-1".to_string()]));
        assert_eq!(super::skus_of(&lit("SKU-2").eq(col("sku"))), Some(vec!["SKU-2".to_string()]));
        assert_eq!(super::skus_of(&col("sku").in_list(vec![lit("A"), lit("B")], false)), Some(vec!["A".to_string(), "B".to_string()]));
        assert_eq!(super::skus_of(&col("sku").in_list(vec![lit("A")], true)), None);
        assert_eq!(super::skus_of(&col("node").eq(lit("N"))), None);
    }
}
