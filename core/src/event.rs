//! The one input format: an inventory [`Event`], its Arrow schema, and decoders for JSON Lines,
//! Arrow record batches and Parquet that report errors per line or row and keep going.

use std::fmt;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// What happened to the stock of one SKU at one node. See DESIGN.md, "Events".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A physical count or scan: on-hand is now exactly `qty`.
    Count,
    /// A third-party seller's self-reported on-hand: absolute like `count`.
    Feed,
    Receipt,
    Return,
    /// ± on hand: damage, shrink, corrections. The only kind whose `qty` may be negative.
    Adjust,
    Reserve,
    Release,
    Ship,
    /// A reserved order could not be picked: an oversell.
    Short,
    Hold,
    Unhold,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Count,
        EventKind::Feed,
        EventKind::Receipt,
        EventKind::Return,
        EventKind::Adjust,
        EventKind::Reserve,
        EventKind::Release,
        EventKind::Ship,
        EventKind::Short,
        EventKind::Hold,
        EventKind::Unhold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Count => "count",
            EventKind::Feed => "feed",
            EventKind::Receipt => "receipt",
            EventKind::Return => "return",
            EventKind::Adjust => "adjust",
            EventKind::Reserve => "reserve",
            EventKind::Release => "release",
            EventKind::Ship => "ship",
            EventKind::Short => "short",
            EventKind::Hold => "hold",
            EventKind::Unhold => "unhold",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// `count` and `feed` set on-hand to an absolute value.
    pub fn is_absolute(self) -> bool {
        matches!(self, EventKind::Count | EventKind::Feed)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest quantity one event may carry: far above any real stock movement, far below where
/// sums could overflow.
pub const MAX_QTY: i64 = 1_000_000_000;

/// Latest time an event may carry: 9999-12-31T23:59:59.999Z.
pub const MAX_TIME: Millis = 253_402_300_799_999;

/// One inventory mutation, as decoded and validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The idempotency key: a replayed event changes nothing.
    pub event_id: String,
    /// When it happened at the node.
    pub ts: Millis,
    pub sku: String,
    pub node: String,
    pub kind: EventKind,
    pub qty: i64,
    pub order_id: Option<String>,
    /// When the platform received it; `None` means `ts`.
    pub arrived: Option<Millis>,
}

impl Event {
    /// Arrival time: what replays, backtests and the batch cutoff order by.
    pub fn arrival(&self) -> Millis {
        self.arrived.unwrap_or(self.ts)
    }

    /// A fingerprint of what the event says (everything but its id and its arrival): two copies
    /// of one event share it, a different event reusing the id almost surely does not. 32 bits
    /// of FNV-1a, the same in every process and version; never 0, which stands for "content not
    /// known" ([`crate::SeenIds`]).
    pub fn print(&self) -> u32 {
        let mut hash = 0xcbf2_9ce4_8422_2325_u64;
        let mut add = |bytes: &[u8]| {
            for byte in bytes.iter().chain(&[0xff]) {
                hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        add(&self.ts.to_le_bytes());
        add(self.sku.as_bytes());
        add(self.node.as_bytes());
        add(self.kind.as_str().as_bytes());
        add(&self.qty.to_le_bytes());
        add(self.order_id.as_deref().unwrap_or("\u{0}").as_bytes());
        ((hash >> 32) as u32 ^ hash as u32).max(1)
    }

    /// Checks the invariants that the schema alone cannot express.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (field, value) in [("event_id", &self.event_id), ("sku", &self.sku), ("node", &self.node)] {
            if value.is_empty() {
                return Err(FieldError::new(field, "must not be empty"));
            }
        }
        for (field, value) in [("sku", &self.sku), ("node", &self.node)] {
            // Braces are what Redis Cluster reads as a hash tag in a key: keep them out of names
        // that may become part of one.
            if value.contains(['{', '}']) || value.chars().any(char::is_control) {
                return Err(FieldError::new(field, format!("must not contain braces or control characters: '{value}'")));
            }
        }
        for (field, time) in [("ts", Some(self.ts)), ("arrived", self.arrived)] {
            if time.is_some_and(|time| !(0..=MAX_TIME).contains(&time)) {
                return Err(FieldError::new(field, format!("must be between 1970 and 9999, got {} ms", time.unwrap_or(0))));
            }
        }
        if self.qty.abs() > MAX_QTY {
            return Err(FieldError::new("qty", format!("must be within ±{MAX_QTY}, got {}", self.qty)));
        }
        if self.qty < 0 && self.kind != EventKind::Adjust {
            return Err(FieldError::new(
                "qty",
                format!("must be >= 0 for kind '{}', got {}", self.kind, self.qty),
            ));
        }
        Ok(())
    }
}

/// A problem with one field of one event, before we know where the event came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<&'static str>,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            Some(field) => write!(f, "field \"{field}\": {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl FieldError {
    fn new(field: &'static str, message: impl Into<String>) -> FieldError {
        FieldError { field: Some(field), message: message.into() }
    }

    fn record(message: impl Into<String>) -> FieldError {
        FieldError { field: None, message: message.into() }
    }

    fn at(self, location: Location) -> DecodeError {
        DecodeError { location, field: self.field, message: self.message, unreadable: false }
    }
}

impl From<DecodeError> for FieldError {
    /// The error without its location (for callers that report the location themselves).
    fn from(error: DecodeError) -> FieldError {
        FieldError { field: error.field, message: error.message }
    }
}

/// Where a bad event was found: a 1-based line of a JSON Lines input, or a 0-based row of a
/// columnar input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Line(u64),
    Row(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(line) => write!(f, "line {line}"),
            Location::Row(row) => write!(f, "row {row}"),
        }
    }
}

/// A rejected event: `line 17: field "qty": expected integer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    pub location: Location,
    pub field: Option<&'static str>,
    pub message: String,
    /// The input itself could not be read there (an IO error, a corrupt Parquet page): not a bad
    /// event but a broken file, which an import must not half-apply.
    pub unreadable: bool,
}

impl DecodeError {
    pub fn unreadable(location: Location, message: String) -> DecodeError {
        DecodeError { location, field: None, message, unreadable: true }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = FieldError { field: self.field, message: self.message.clone() };
        write!(f, "{}: {field}", self.location)
    }
}

/// Errors that stop a whole input, not one event.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("column \"{column}\": {message}")]
    Schema { column: &'static str, message: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("{0}")]
    Unreadable(DecodeError),
}

// ---------------------------------------------------------------------------------------------
// JSON Lines

/// An event as `encode_json` writes it (times in integer milliseconds): read straight into
/// its fields, the fast path of [`decode_json`].
#[derive(Deserialize)]
struct Encoded<'a> {
    event_id: String,
    ts: Millis,
    sku: String,
    node: String,
    kind: &'a str,
    qty: i64,
    #[serde(default)]
    order_id: Option<String>,
    #[serde(default)]
    arrived: Option<Millis>,
}

/// Decodes one JSON object (one line of a JSON Lines file) into a validated event.
/// `ts` and `arrived` may be RFC 3339 strings or integer milliseconds.
pub fn decode_json(text: &str) -> Result<Event, FieldError> {
    // The common case, an event as `encode_json` writes it, in one pass; anything else (RFC 3339
    // times, a wrong type, a missing field, an unknown kind) goes through the general path
    // below, which accepts every form and names the field at fault.
    if let Ok(encoded) = serde_json::from_str::<Encoded>(text) {
        if let Some(kind) = EventKind::parse(encoded.kind) {
            let event = Event {
                event_id: encoded.event_id,
                ts: encoded.ts,
                sku: encoded.sku,
                node: encoded.node,
                kind,
                qty: encoded.qty,
                order_id: encoded.order_id,
                arrived: encoded.arrived,
            };
            event.validate()?;
            return Ok(event);
        }
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| FieldError::record(format!("invalid JSON: {error}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| FieldError::record("expected a JSON object"))?;

    let string = |field: &'static str| -> Result<String, FieldError> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Err(FieldError::new(field, "missing")),
            Some(serde_json::Value::String(text)) => Ok(text.clone()),
            Some(_) => Err(FieldError::new(field, "expected string")),
        }
    };
    let optional_string = |field: &'static str| -> Result<Option<String>, FieldError> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
            Some(_) => Err(FieldError::new(field, "expected string or null")),
        }
    };
    let optional_time = |field: &'static str| -> Result<Option<Millis>, FieldError> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(number)) => number
                .as_i64()
                .map(Some)
                .ok_or_else(|| FieldError::new(field, "expected integer milliseconds")),
            Some(serde_json::Value::String(text)) => parse_rfc3339(text)
                .map(Some)
                .ok_or_else(|| FieldError::new(field, format!("expected RFC 3339 timestamp, got '{text}'"))),
            Some(_) => Err(FieldError::new(field, "expected RFC 3339 string or integer milliseconds")),
        }
    };

    let kind_text = string("kind")?;
    let kind = EventKind::parse(&kind_text)
        .ok_or_else(|| FieldError::new("kind", format!("unknown kind '{kind_text}'")))?;
    let qty = match object.get("qty") {
        None | Some(serde_json::Value::Null) => return Err(FieldError::new("qty", "missing")),
        Some(value) => value.as_i64().ok_or_else(|| FieldError::new("qty", "expected integer"))?,
    };
    let event = Event {
        event_id: string("event_id")?,
        ts: optional_time("ts")?.ok_or_else(|| FieldError::new("ts", "missing"))?,
        sku: string("sku")?,
        node: string("node")?,
        kind,
        qty,
        order_id: optional_string("order_id")?,
        arrived: optional_time("arrived")?,
    };
    event.validate()?;
    Ok(event)
}

/// Encodes an event as one JSON Lines record (timestamps as integer milliseconds).
pub fn encode_json(event: &Event) -> String {
    serde_json::to_string(event).expect("serialising an Event cannot fail; this is a bug")
}

/// Parses an RFC 3339 timestamp into milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|time| time.timestamp_millis())
}

/// Formats milliseconds as RFC 3339, UTC, to the millisecond.
pub fn format_millis(millis: Millis) -> String {
    match chrono::DateTime::from_timestamp_millis(millis) {
        Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("{millis} ms"),
    }
}

/// Decodes JSON Lines text, one result per non-blank line, errors carrying their line number.
pub fn decode_json_lines(text: &str) -> impl Iterator<Item = Result<Event, DecodeError>> + '_ {
    text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()).map(|(index, line)| {
        decode_json(line).map_err(|error| error.at(Location::Line(index as u64 + 1)))
    })
}

/// Decodes JSON Lines from a reader, streaming; a line that cannot be read is an error for that
/// line, and decoding goes on.
pub fn decode_json_reader<R: std::io::BufRead>(reader: R) -> impl Iterator<Item = Result<Event, DecodeError>> {
    reader.lines().enumerate().filter_map(|(index, line)| {
        let location = Location::Line(index as u64 + 1);
        match line {
            Err(error) => Some(Err(DecodeError::unreadable(location, format!("unreadable: {error}")))),
            Ok(line) if line.trim().is_empty() => None,
            Ok(line) => Some(decode_json(&line).map_err(|error| error.at(location))),
        }
    })
}

/// Events read from a file: Parquet, or JSON Lines (`.jsonl`, `.ndjson`, `.json`). This and
/// [`ParquetEvents::open`] (and `catalog::read_parquet` for catalog tables) are the only places `core` touches a file, and only one it is handed.
pub fn read_event_file(
    path: &std::path::Path,
) -> Result<Box<dyn Iterator<Item = Result<Event, DecodeError>> + Send>, InputError> {
    let file = std::fs::File::open(path).map_err(|source| InputError::Io { path: path.display().to_string(), source })?;
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(extension, "jsonl" | "ndjson" | "json") {
        return Ok(Box::new(decode_json_reader(std::io::BufReader::new(file))));
    }
    Ok(Box::new(ParquetEvents::open(file)?))
}

// ---------------------------------------------------------------------------------------------
// Arrow and Parquet

/// The Arrow schema of events, shared by Parquet files, Lance datasets and DataFusion queries.
pub fn event_schema() -> SchemaRef {
    let time = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("ts", time.clone(), false),
        Field::new("sku", DataType::Utf8, false),
        Field::new("node", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("qty", DataType::Int64, false),
        Field::new("order_id", DataType::Utf8, true),
        Field::new("arrived", time, true),
    ]))
}

/// Builds one record batch in [`event_schema`] from events.
pub fn events_to_batch(events: &[Event]) -> RecordBatch {
    let strings = |get: fn(&Event) -> &str| -> ArrayRef {
        Arc::new(events.iter().map(|event| Some(get(event))).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        strings(|event| &event.event_id),
        Arc::new(TimestampMillisecondArray::from_iter_values(events.iter().map(|e| e.ts)).with_timezone("UTC")),
        strings(|event| &event.sku),
        strings(|event| &event.node),
        strings(|event| event.kind.as_str()),
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.qty))),
        Arc::new(events.iter().map(|e| e.order_id.as_deref()).collect::<StringArray>()),
        Arc::new(TimestampMillisecondArray::from(events.iter().map(|e| e.arrived).collect::<Vec<_>>()).with_timezone("UTC")),
    ];
    RecordBatch::try_new(event_schema(), columns).expect("event columns match event_schema; this is a bug")
}

/// Fails an input whose columns can never hold events, before any row is read.
pub fn check_event_columns(schema: &Schema) -> Result<(), InputError> {
    for wanted in event_schema().fields() {
        let name = event_column_name(wanted.name());
        match schema.field_with_name(name) {
            Err(_) if !wanted.is_nullable() => {
                return Err(InputError::Schema { column: name, message: "missing".into() });
            }
            Err(_) => {}
            Ok(found) => {
                let readable = arrow_cast::can_cast_types(found.data_type(), wanted.data_type())
                    || matches!(found.data_type(), DataType::Int64 | DataType::Timestamp(_, _))
                        && matches!(wanted.data_type(), DataType::Timestamp(_, _));
                if !readable {
                    let message = format!("cannot read {} as {}", found.data_type(), wanted.data_type());
                    return Err(InputError::Schema { column: name, message });
                }
            }
        }
    }
    Ok(())
}

/// The `'static` name of an event column.
fn event_column_name(name: &str) -> &'static str {
    ["event_id", "ts", "sku", "node", "kind", "qty", "order_id", "arrived"]
        .into_iter()
        .find(|column| *column == name)
        .expect("event_schema names only these columns; this is a bug")
}

/// The event columns of a record batch, cast to the canonical types.
struct EventColumns {
    event_id: StringArray,
    ts: Int64Array,
    sku: StringArray,
    node: StringArray,
    kind: StringArray,
    qty: Int64Array,
    order_id: Option<StringArray>,
    arrived: Option<Int64Array>,
}

fn column(batch: &RecordBatch, name: &'static str, required: bool) -> Result<Option<ArrayRef>, InputError> {
    match batch.column_by_name(name) {
        Some(array) => Ok(Some(array.clone())),
        None if required => Err(InputError::Schema { column: name, message: "missing".into() }),
        None => Ok(None),
    }
}

fn cast_to<T: Array + Clone + 'static>(array: &ArrayRef, name: &'static str, to: &DataType) -> Result<T, InputError> {
    // Timestamps in any unit are read as milliseconds; integers are taken as milliseconds.
    let array = match (array.data_type(), to) {
        (DataType::Timestamp(_, _), DataType::Int64) => arrow_cast::cast(
            array,
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )?,
        _ => array.clone(),
    };
    let cast = arrow_cast::cast(&array, to).map_err(|error| InputError::Schema {
        column: name,
        message: format!("cannot read {} as {to}: {error}", array.data_type()),
    })?;
    Ok(cast
        .as_any()
        .downcast_ref::<T>()
        .expect("cast produced the requested type; this is a bug")
        .clone())
}

impl EventColumns {
    fn of(batch: &RecordBatch) -> Result<EventColumns, InputError> {
        let text = |name: &'static str| -> Result<StringArray, InputError> {
            cast_to(&column(batch, name, true)?.expect("required"), name, &DataType::Utf8)
        };
        let int = |name: &'static str| -> Result<Int64Array, InputError> {
            cast_to(&column(batch, name, true)?.expect("required"), name, &DataType::Int64)
        };
        Ok(EventColumns {
            event_id: text("event_id")?,
            ts: int("ts")?,
            sku: text("sku")?,
            node: text("node")?,
            kind: text("kind")?,
            qty: int("qty")?,
            order_id: column(batch, "order_id", false)?
                .map(|array| cast_to(&array, "order_id", &DataType::Utf8))
                .transpose()?,
            arrived: column(batch, "arrived", false)?
                .map(|array| cast_to(&array, "arrived", &DataType::Int64))
                .transpose()?,
        })
    }

    fn event(&self, row: usize) -> Result<Event, FieldError> {
        let text = |array: &StringArray, field: &'static str| -> Result<String, FieldError> {
            if array.is_null(row) {
                Err(FieldError::new(field, "missing"))
            } else {
                Ok(array.value(row).to_string())
            }
        };
        let int = |array: &Int64Array, field: &'static str| -> Result<i64, FieldError> {
            if array.is_null(row) {
                Err(FieldError::new(field, "missing"))
            } else {
                Ok(array.value(row))
            }
        };
        let kind_text = text(&self.kind, "kind")?;
        let kind = EventKind::parse(&kind_text)
            .ok_or_else(|| FieldError::new("kind", format!("unknown kind '{kind_text}'")))?;
        let event = Event {
            event_id: text(&self.event_id, "event_id")?,
            ts: int(&self.ts, "ts")?,
            sku: text(&self.sku, "sku")?,
            node: text(&self.node, "node")?,
            kind,
            qty: int(&self.qty, "qty")?,
            order_id: self.order_id.as_ref().filter(|a| !a.is_null(row)).map(|a| a.value(row).to_string()),
            arrived: self.arrived.as_ref().filter(|a| !a.is_null(row)).map(|a| a.value(row)),
        };
        event.validate()?;
        Ok(event)
    }
}

/// Decodes a record batch; `first_row` is the row number of its first row in the whole input.
/// A missing or unreadable column fails the batch; a bad value fails only its row.
pub fn events_from_batch(
    batch: &RecordBatch,
    first_row: u64,
) -> Result<Vec<Result<Event, DecodeError>>, InputError> {
    let columns = EventColumns::of(batch)?;
    Ok((0..batch.num_rows())
        .map(|row| columns.event(row).map_err(|error| error.at(Location::Row(first_row + row as u64))))
        .collect())
}

/// Streams the events of a Parquet file batch by batch, with per-row errors. A batch that cannot
/// be read at all is one error naming its first row; reading goes on with the next.
pub struct ParquetEvents {
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    next_row: u64,
    pending: std::collections::VecDeque<Result<Event, DecodeError>>,
}

impl ParquetEvents {
    pub fn open<R: parquet::file::reader::ChunkReader + 'static>(input: R) -> Result<ParquetEvents, InputError> {
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(input)?;
        check_event_columns(builder.schema())?;
        let reader = builder.with_batch_size(8192).build()?;
        Ok(ParquetEvents { reader, next_row: 0, pending: Default::default() })
    }
}

impl Iterator for ParquetEvents {
    type Item = Result<Event, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending.is_empty() {
            let location = Location::Row(self.next_row);
            let decoded = match self.reader.next()? {
                Ok(batch) => {
                    self.next_row += batch.num_rows() as u64;
                    events_from_batch(&batch, location_row(location))
                }
                Err(error) => Err(error.into()),
            };
            match decoded {
                Ok(events) => self.pending.extend(events),
                Err(error) => {
                    let message = format!("unreadable batch: {error}");
                    return Some(Err(DecodeError::unreadable(location, message)));
                }
            }
        }
        self.pending.pop_front()
    }
}

fn location_row(location: Location) -> u64 {
    match location {
        Location::Line(n) | Location::Row(n) => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_error(line: &str, expect: &str) {
        let error = decode_json_lines(line).next().unwrap().unwrap_err();
        assert_eq!(error.to_string(), expect);
    }

    #[test]
    fn json_errors_name_line_and_field() {
        check_error(
            r#"{"event_id":"e1","ts":1,"sku":"S","node":"N","kind":"count","qty":"x"}"#,
            r#"line 1: field "qty": expected integer"#,
        );
        check_error(
            r#"{"event_id":"e1","ts":1,"sku":"S","node":"N","kind":"teleport","qty":1}"#,
            r#"line 1: field "kind": unknown kind 'teleport'"#,
        );
        check_error(r#"{"event_id":"e1","ts":1,"node":"N","kind":"count","qty":1}"#, r#"line 1: field "sku": missing"#);
        check_error(
            r#"{"event_id":"e1","ts":1,"sku":"S","node":"N","kind":"ship","qty":-2}"#,
            r#"line 1: field "qty": must be >= 0 for kind 'ship', got -2"#,
        );
        check_error(
            r#"{"event_id":"e1","ts":"yesterday","sku":"S","node":"N","kind":"count","qty":1}"#,
            r#"line 1: field "ts": expected RFC 3339 timestamp, got 'yesterday'"#,
        );
        check_error(
            r#"{"event_id":"e1","ts":1,"sku":"S}","node":"N","kind":"count","qty":1}"#,
            r#"line 1: field "sku": must not contain braces or control characters: 'S}'"#,
        );
        check_error(
            r#"{"event_id":"e1","ts":1,"sku":"S","node":"N","kind":"receipt","qty":9223372036854775807}"#,
            r#"line 1: field "qty": must be within ±1000000000, got 9223372036854775807"#,
        );
        check_error(
            r#"{"event_id":"e1","ts":-5,"sku":"S","node":"N","kind":"count","qty":1}"#,
            r#"line 1: field "ts": must be between 1970 and 9999, got -5 ms"#,
        );
        check_error("{not json", "line 1: invalid JSON: key must be a string at line 1 column 2");
    }

    #[test]
    fn json_accepts_rfc3339_and_millis() {
        let line = r#"{"event_id":"e1","ts":"2026-01-01T00:00:01Z","sku":"S","node":"N","kind":"adjust","qty":-3,"arrived":1767225602000}"#;
        let event = decode_json_lines(line).next().unwrap().unwrap();
        assert_eq!(event.ts, 1_767_225_601_000);
        assert_eq!(event.arrival(), 1_767_225_602_000);
        assert_eq!(decode_json(&encode_json(&event)).unwrap(), event);
    }

    #[test]
    fn batch_round_trip_and_row_errors() {
        let good = Event {
            event_id: "e1".into(),
            ts: 5,
            sku: "S".into(),
            node: "N".into(),
            kind: EventKind::Reserve,
            qty: 2,
            order_id: Some("o1".into()),
            arrived: None,
        };
        let bad = Event { event_id: "e2".into(), qty: -1, ..good.clone() };
        let decoded = events_from_batch(&events_to_batch(&[good.clone(), bad]), 10).unwrap();
        assert_eq!(decoded[0], Ok(good));
        assert_eq!(
            decoded[1].as_ref().unwrap_err().to_string(),
            r#"row 11: field "qty": must be >= 0 for kind 'reserve', got -1"#
        );
    }
}
