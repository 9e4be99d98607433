//! The decision log's record and the store it ends in. Serving records every answer it gives
//! (an availability answer, a batch item, a reservation line) with what explains it; the log
//! keeps records in numbered segments on local disk first and appends each segment to the store
//! (the lake) whole, recording the segment's number with the data, so a segment replayed after a
//! crash is never appended twice.

use serde::{Deserialize, Serialize};

use crate::event::Millis;
use crate::view::{BoxFuture, ViewError};

/// One decision as the log keeps it. The lists (reasons, options, rules fired) are JSON text, as
/// the API answered them; serialised, each is the JSON value it holds (nothing escaped twice), and
/// it reads back from that or from a string ([`listed`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// When it was answered, by the server's clock (milliseconds since the epoch).
    pub at: Millis,
    /// The request's id (`x-request-id`).
    pub request_id: String,
    /// `availability`, `batch` or `reservation`.
    pub kind: String,
    pub sku: String,
    pub region: String,
    pub qty: i64,
    /// `promise` or `deny`; for a reservation line `held` or `short`.
    pub decision: String,
    /// Units promised (or held).
    pub units: i64,
    /// `fresh`, `bounded_stale`, `conservative` or `unavailable`; empty for a reservation line.
    pub grade: String,
    /// The answer's `reasons` and `degraded_reasons`, as a JSON array of text.
    #[serde(with = "listed")]
    pub reasons: String,
    /// The answer's ranked options with `p_fulfill` (or a reservation line's nodes), as JSON.
    #[serde(with = "listed")]
    pub options: String,
    /// The rules that fired, as JSON.
    #[serde(with = "listed")]
    pub rules_fired: String,
    /// The names of the rules that fired, `|` between them (for `string_to_array`).
    pub rules: String,
    pub batch_view: String,
    pub model: Option<String>,
    pub ruleset: Option<String>,
}

/// A list of a [`DecisionRecord`] in its JSON: written as the JSON value its text holds (text
/// that is not JSON, never written so, as a string); read back from either, as text.
mod listed {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<&RawValue>(text) {
            Ok(raw) => raw.serialize(serializer),
            Err(_) => serializer.serialize_str(text),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        // a list (the usual) is kept as its JSON text; only a JSON string is unquoted
        match raw.get() {
            text if text.starts_with('"') => Ok(serde_json::from_str::<String>(text).unwrap_or_else(|_| text.to_string())),
            text => Ok(text.to_string()),
        }
    }
}

/// Where the decision log's segments end (the lake's `decisions` dataset).
pub trait DecisionStore: Send + Sync {
    /// The number of the last segment appended, if any.
    fn last_segment(&self) -> BoxFuture<'_, Result<Option<u64>, ViewError>>;

    /// Appends `records` and records `segment` with them, atomically: both or neither.
    fn append_segment<'a>(&'a self, records: &'a [DecisionRecord], segment: u64) -> BoxFuture<'a, Result<(), ViewError>>;

    /// Drops the records answered before `before`; how many.
    fn drop_before(&self, before: Millis) -> BoxFuture<'_, Result<u64, ViewError>>;
}
