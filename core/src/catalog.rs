//! The catalog: what is sold (`skus`) and where it is stocked (`nodes`), with their Arrow
//! schemas so the simulator, the lake and serving read and write one format.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::event::InputError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Warehouse,
    Store,
    Seller,
}

impl NodeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Warehouse => "warehouse",
            NodeKind::Store => "store",
            NodeKind::Seller => "seller",
        }
    }

    pub fn parse(text: &str) -> Option<NodeKind> {
        [NodeKind::Warehouse, NodeKind::Store, NodeKind::Seller].into_iter().find(|kind| kind.as_str() == text)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SkuInfo {
    pub sku: String,
    pub category: String,
    pub seller: Option<String>,
    pub hazmat: bool,
    pub price: f64,
    /// Free-form attributes, a JSON object.
    pub attributes: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub kind: NodeKind,
    /// A shipping region such as "EU", and the ISO country the node is in.
    pub region: String,
    pub country: String,
    pub seller: Option<String>,
    /// How stale the node's feed may be before answers about it are degraded.
    pub feed_sla_ms: i64,
}

impl NodeInfo {
    /// The names a request's `region` may give to be served by this node: its shipping region
    /// and its country.
    pub fn served(&self) -> [&str; 2] {
        [&self.region, &self.country]
    }

    /// A request's `region` names either a shipping region or a country.
    pub fn serves(&self, region: &str) -> bool {
        self.served().contains(&region)
    }
}

pub fn sku_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sku", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("seller", DataType::Utf8, true),
        Field::new("hazmat", DataType::Boolean, false),
        Field::new("price", DataType::Float64, false),
        Field::new("attributes", DataType::Utf8, false),
    ]))
}

pub fn node_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("node", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("region", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("seller", DataType::Utf8, true),
        Field::new("feed_sla_ms", DataType::Int64, false),
    ]))
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.collect::<StringArray>())
}

pub fn skus_to_batch(skus: &[SkuInfo]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        strings(skus.iter().map(|s| Some(s.sku.as_str()))),
        strings(skus.iter().map(|s| Some(s.category.as_str()))),
        strings(skus.iter().map(|s| s.seller.as_deref())),
        Arc::new(skus.iter().map(|s| Some(s.hazmat)).collect::<BooleanArray>()),
        Arc::new(Float64Array::from_iter_values(skus.iter().map(|s| s.price))),
        strings(skus.iter().map(|s| Some(s.attributes.as_str()))),
    ];
    RecordBatch::try_new(sku_schema(), columns).expect("sku columns match sku_schema; this is a bug")
}

pub fn nodes_to_batch(nodes: &[NodeInfo]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        strings(nodes.iter().map(|n| Some(n.node.as_str()))),
        strings(nodes.iter().map(|n| Some(n.kind.as_str()))),
        strings(nodes.iter().map(|n| Some(n.region.as_str()))),
        strings(nodes.iter().map(|n| Some(n.country.as_str()))),
        strings(nodes.iter().map(|n| n.seller.as_deref())),
        Arc::new(Int64Array::from_iter_values(nodes.iter().map(|n| n.feed_sla_ms))),
    ];
    RecordBatch::try_new(node_schema(), columns).expect("node columns match node_schema; this is a bug")
}

/// Reads a catalog table (`skus` or `nodes`) from a Parquet file with `decode`
/// ([`skus_from_batch`] or [`nodes_from_batch`]).
pub fn read_parquet<T>(
    path: &std::path::Path,
    decode: fn(&RecordBatch) -> Result<Vec<T>, InputError>,
) -> Result<Vec<T>, InputError> {
    let file = std::fs::File::open(path).map_err(|source| InputError::Io { path: path.display().to_string(), source })?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
    let mut rows = Vec::new();
    for batch in reader {
        rows.extend(decode(&batch?)?);
    }
    Ok(rows)
}

fn typed<'a, T: 'static>(batch: &'a RecordBatch, name: &'static str) -> Result<&'a T, InputError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| InputError::Schema { column: name, message: "missing".into() })?
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| InputError::Schema { column: name, message: "unexpected type".into() })
}

fn optional(array: &StringArray, row: usize) -> Option<String> {
    (!array.is_null(row)).then(|| array.value(row).to_string())
}

pub fn skus_from_batch(batch: &RecordBatch) -> Result<Vec<SkuInfo>, InputError> {
    let sku = typed::<StringArray>(batch, "sku")?;
    let category = typed::<StringArray>(batch, "category")?;
    let seller = typed::<StringArray>(batch, "seller")?;
    let hazmat = typed::<BooleanArray>(batch, "hazmat")?;
    let price = typed::<Float64Array>(batch, "price")?;
    let attributes = typed::<StringArray>(batch, "attributes")?;
    Ok((0..batch.num_rows())
        .map(|row| SkuInfo {
            sku: sku.value(row).to_string(),
            category: category.value(row).to_string(),
            seller: optional(seller, row),
            hazmat: hazmat.value(row),
            price: price.value(row),
            attributes: attributes.value(row).to_string(),
        })
        .collect())
}

pub fn nodes_from_batch(batch: &RecordBatch) -> Result<Vec<NodeInfo>, InputError> {
    let node = typed::<StringArray>(batch, "node")?;
    let kind = typed::<StringArray>(batch, "kind")?;
    let region = typed::<StringArray>(batch, "region")?;
    let country = typed::<StringArray>(batch, "country")?;
    let seller = typed::<StringArray>(batch, "seller")?;
    let feed_sla_ms = typed::<Int64Array>(batch, "feed_sla_ms")?;
    (0..batch.num_rows())
        .map(|row| {
            let kind_text = kind.value(row);
            Ok(NodeInfo {
                node: node.value(row).to_string(),
                kind: NodeKind::parse(kind_text).ok_or_else(|| InputError::Schema {
                    column: "kind",
                    message: format!("row {row}: unknown node kind '{kind_text}'"),
                })?,
                region: region.value(row).to_string(),
                country: country.value(row).to_string(),
                seller: optional(seller, row),
                feed_sla_ms: feed_sla_ms.value(row),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_round_trips_through_arrow() {
        let skus = vec![SkuInfo {
            sku: "S1".into(),
            category: "toys".into(),
            seller: None,
            hazmat: true,
            price: 9.5,
            attributes: "{}".into(),
        }];
        let nodes = vec![NodeInfo {
            node: "N1".into(),
            kind: NodeKind::Seller,
            region: "EU".into(),
            country: "DE".into(),
            seller: Some("S-1".into()),
            feed_sla_ms: 60_000,
        }];
        assert_eq!(skus_from_batch(&skus_to_batch(&skus)).unwrap(), skus);
        assert_eq!(nodes_from_batch(&nodes_to_batch(&nodes)).unwrap(), nodes);
        assert!(nodes[0].serves("DE") && nodes[0].serves("EU") && !nodes[0].serves("FR"));
    }
}
