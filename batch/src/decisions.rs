//! The lake's `decisions` dataset: the decision log's segments, each appended whole in one
//! version whose commit records the segment's number (so a segment replayed after a crash is
//! recognised and not appended twice), and dropped by age.

use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use lance::dataset::WriteMode;
use sellable_core::{DecisionRecord, Millis};

use crate::{BatchError, Lake};

pub(crate) const DECISIONS: &str = "decisions";

/// The commit property holding a version's segment number.
const SEGMENT_KEY: &str = "sellable.decisions.segment";

/// The columns of `decisions` (`at` in milliseconds since the epoch; `reasons`, `options` and
/// `rules_fired` JSON text, as the API answered them).
pub fn decision_schema() -> SchemaRef {
    let text = |name: &str| Field::new(name, DataType::Utf8, false);
    let number = |name: &str| Field::new(name, DataType::Int64, false);
    Arc::new(Schema::new(vec![
        number("at"),
        text("request_id"),
        text("kind"),
        text("sku"),
        text("region"),
        number("qty"),
        text("decision"),
        number("units"),
        text("grade"),
        text("reasons"),
        text("options"),
        text("rules_fired"),
        text("rules"),
        text("batch_view"),
        Field::new("model", DataType::Utf8, true),
        Field::new("ruleset", DataType::Utf8, true),
    ]))
}

fn to_batch(records: &[DecisionRecord]) -> RecordBatch {
    let text = |get: fn(&DecisionRecord) -> &str| -> ArrayRef { Arc::new(records.iter().map(|r| Some(get(r))).collect::<StringArray>()) };
    let number = |get: fn(&DecisionRecord) -> i64| -> ArrayRef { Arc::new(Int64Array::from_iter_values(records.iter().map(get))) };
    let columns: Vec<ArrayRef> = vec![
        number(|r| r.at),
        text(|r| &r.request_id),
        text(|r| &r.kind),
        text(|r| &r.sku),
        text(|r| &r.region),
        number(|r| r.qty),
        text(|r| &r.decision),
        number(|r| r.units),
        text(|r| &r.grade),
        text(|r| &r.reasons),
        text(|r| &r.options),
        text(|r| &r.rules_fired),
        text(|r| &r.rules),
        text(|r| &r.batch_view),
        Arc::new(records.iter().map(|r| r.model.as_deref()).collect::<StringArray>()),
        Arc::new(records.iter().map(|r| r.ruleset.as_deref()).collect::<StringArray>()),
    ];
    RecordBatch::try_new(decision_schema(), columns).expect("decision columns match decision_schema; this is a bug")
}

impl Lake {
    /// Appends one segment of the decision log as one new version of `decisions`, its number
    /// recorded in the same commit.
    pub async fn append_decisions(&self, records: &[DecisionRecord], segment: u64) -> Result<u64, BatchError> {
        let batch = to_batch(records);
        let reader = RecordBatchIterator::new(vec![Ok(batch)], decision_schema());
        let properties = std::collections::HashMap::from([(SEGMENT_KEY.to_string(), segment.to_string())]);
        self.write_with(DECISIONS, reader, WriteMode::Append, Some(properties)).await
    }

    /// The number of the last segment appended (looking back through the versions, newest first,
    /// past those that only dropped rows); `None` before the first.
    pub async fn last_decision_segment(&self) -> Result<Option<u64>, BatchError> {
        let segment = self.newest_commit_property(DECISIONS, SEGMENT_KEY).await?;
        segment
            .map(|text| text.parse().map_err(|_| BatchError::Corrupt { dataset: DECISIONS.into(), message: format!("the segment number {text:?} of a commit is not a number") }))
            .transpose()
    }

    /// Drops the decisions answered before `before`; how many.
    pub async fn drop_decisions_before(&self, before: Millis) -> Result<u64, BatchError> {
        let mut dataset = match self.dataset(DECISIONS, "").await {
            Ok(dataset) => dataset,
            Err(BatchError::Missing(..)) => return Ok(0),
            Err(error) => return Err(error),
        };
        let rows = dataset.count_rows(None).await.map_err(self.lance_error(DECISIONS))?;
        dataset.delete(&format!("at < {before}")).await.map_err(self.lance_error(DECISIONS))?;
        let left = dataset.count_rows(None).await.map_err(self.lance_error(DECISIONS))?;
        Ok((rows - left) as u64)
    }

    /// The decisions the lake holds, oldest first.
    pub async fn load_decisions(&self) -> Result<Vec<RecordBatch>, BatchError> {
        match self.dataset(DECISIONS, "").await {
            Ok(dataset) => crate::scan(&dataset, DECISIONS).await,
            Err(BatchError::Missing(..)) => Ok(Vec::new()),
            Err(error) => Err(error),
        }
    }
}

/// The lake keeps the decision log.
impl sellable_core::DecisionStore for Lake {
    fn last_segment(&self) -> sellable_core::view::BoxFuture<'_, Result<Option<u64>, sellable_core::ViewError>> {
        Box::pin(async move { Ok(self.last_decision_segment().await?) })
    }

    fn append_segment<'a>(&'a self, records: &'a [DecisionRecord], segment: u64) -> sellable_core::view::BoxFuture<'a, Result<(), sellable_core::ViewError>> {
        Box::pin(async move {
            self.append_decisions(records, segment).await?;
            Ok(())
        })
    }

    fn drop_before(&self, before: Millis) -> sellable_core::view::BoxFuture<'_, Result<u64, sellable_core::ViewError>> {
        Box::pin(async move { Ok(self.drop_decisions_before(before).await?) })
    }
}
