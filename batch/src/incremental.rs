//! The incremental nightly job: a night that starts from the state the night before left (the
//! sums of every sku×node, its sums per day over the last 30 days, the events of the last hours)
//! and folds only the events that arrived since, late ones included, with the SQL of
//! `batch/sql/incremental.sql`. Its batch view and features equal the full recompute's
//! (`features.sql` over every event known at the cutoff) row for row, so a full night stays the
//! reference and the way back whenever the state does not apply: a first night, a cutoff that is
//! not a whole number of days after the state's, another lateness or node catalog, or events
//! that arrived by the state's cutoff and were added to the lake after it was computed.
//!
//! The state lives in the lake under `nightly_state/`: `running` (one row per sku×node; its
//! commit records the state's [`StateLineage`], so a night that stops half-way leaves the earlier
//! state whole), `tail` and `feeds` (the versions the lineage names), and one dataset per day,
//! `day-N`, appended by each night with rows marked by its run (rows of runs the lineage does not
//! name, left by a night that stopped, are never read).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{Array, Int64Array, RecordBatch, RecordBatchIterator};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use lance::dataset::{Dataset, InsertBuilder, WriteMode};
use sellable_core::{FoldConfig, Millis};

use crate::features::{Computed, Rows, FEATURES_SQL};
use crate::{BatchError, BatchSummary, Lake, Progress};

/// The fold, compiled in.
pub const INCREMENTAL_SQL: &str = include_str!("../sql/incremental.sql");

const DAY_MS: Millis = 86_400_000;
/// The state per sku×node; its commits carry the lineage.
const RUNNING: &str = "nightly_state/running";
const TAIL: &str = "nightly_state/tail";
const FEEDS: &str = "nightly_state/feeds";
const LINEAGE_PREFIX: &str = "sellable.night.";
/// Before every event time: the tail start of a first night.
const BEFORE_ALL: Millis = -(1 << 62);

fn day_dataset(day: i64) -> String {
    format!("nightly_state/day-{day}")
}

/// How a night was computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Night {
    /// Folded from the state of the night as of `from`.
    Incremental { from: Millis },
    /// Recomputed from every event, for the reason given; it left the state for the next night.
    Full { why: String },
}

/// What the state was computed from, recorded in the commit of `running`.
#[derive(Debug, Clone, PartialEq)]
struct StateLineage {
    asof: Millis,
    lateness_ms: Millis,
    /// Rows of `events` known at `asof` and not too late (copies included).
    known_rows: u64,
    nodes_version: u64,
    tail_version: u64,
    feeds_version: u64,
    deltas_version: u64,
    /// The runs whose rows of the day datasets count.
    runs: Vec<i64>,
}

impl StateLineage {
    fn to_properties(&self) -> HashMap<String, String> {
        let mut properties: HashMap<String, String> = [
            ("asof", self.asof.to_string()),
            ("lateness_ms", self.lateness_ms.to_string()),
            ("known_rows", self.known_rows.to_string()),
            ("nodes_version", self.nodes_version.to_string()),
            ("tail_version", self.tail_version.to_string()),
            ("feeds_version", self.feeds_version.to_string()),
            ("deltas_version", self.deltas_version.to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (format!("{LINEAGE_PREFIX}{name}"), value))
        .collect();
        let runs: Vec<String> = self.runs.iter().map(i64::to_string).collect();
        properties.insert(format!("{LINEAGE_PREFIX}runs"), runs.join(","));
        properties
    }

    fn parse(properties: &HashMap<String, String>) -> Option<StateLineage> {
        let value = |name: &str| properties.get(&format!("{LINEAGE_PREFIX}{name}"));
        let number = |name: &str| value(name)?.parse::<i64>().ok();
        let runs = value("runs")?.split(',').map(|run| run.parse().ok()).collect::<Option<Vec<i64>>>()?;
        Some(StateLineage {
            asof: number("asof")?,
            lateness_ms: number("lateness_ms")?,
            known_rows: number("known_rows")? as u64,
            nodes_version: number("nodes_version")? as u64,
            tail_version: number("tail_version")? as u64,
            feeds_version: number("feeds_version")? as u64,
            deltas_version: number("deltas_version")? as u64,
            runs,
        })
    }
}

/// The state a night starts from, opened at the versions its lineage names.
struct State {
    lineage: StateLineage,
    running: Dataset,
    tail: Dataset,
    feeds: Dataset,
    deltas: Dataset,
}

/// The values of the placeholders of `incremental.sql`.
struct Placeholders {
    asof: Millis,
    /// The cutoffs' time of day: days run from it.
    origin: Millis,
    /// Tonight's day number (`asof` = `origin` + `k` days) and the earlier night's.
    k: i64,
    prev_k: i64,
    /// The tails' starts: the cutoffs minus the lateness (at least 1 h).
    tail: Millis,
    prev_tail: Millis,
    run: i64,
}

impl Placeholders {
    /// For a night as of `asof` after one as of `prev` (a first night: `None`).
    fn of(asof: Millis, prev: Option<Millis>, lateness: Millis, run: i64) -> Placeholders {
        let origin = asof.rem_euclid(DAY_MS);
        let k = (asof - origin) / DAY_MS;
        let tail_of = |cutoff: Millis| cutoff - lateness.max(3_600_000);
        let (prev_k, prev_tail) = match prev {
            Some(prev) => ((prev - origin) / DAY_MS, tail_of(prev)),
            None => (k, BEFORE_ALL),
        };
        Placeholders { asof, origin, k, prev_k, tail: tail_of(asof), prev_tail, run }
    }

    /// `sql` with them replaced.
    fn substituted(&self, sql: &str) -> String {
        let Placeholders { asof, origin, k, prev_k, tail, prev_tail, run } = self;
        [("asof", asof), ("origin", origin), ("k", k), ("prev_k", prev_k), ("tail", tail), ("prev_tail", prev_tail), ("run", run)]
            .into_iter()
            .fold(sql.to_string(), |sql, (name, value)| sql.replace(&format!("${{{name}}}"), &value.to_string()))
    }
}

/// A number for this run, distinct from earlier runs'.
fn run_id() -> i64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    (nanos % (i64::MAX as u128)) as i64
}

impl Lake {
    /// The nightly job as of `asof`, folded from the state of an earlier night when it applies
    /// ([`Night::Incremental`]), else recomputed from every event ([`Night::Full`]); either way it
    /// writes the batch view and the features as [`Lake::nightly`] does, and the state for the
    /// next night. With `full`, it recomputes whatever the state.
    pub async fn nightly_incremental(
        &self,
        asof: Millis,
        config: FoldConfig,
        full: bool,
        progress: &Progress,
    ) -> Result<(BatchSummary, crate::features::FeaturesSummary, Night), BatchError> {
        if !matches!(self.engine, crate::Engine::Local) {
            return Err(BatchError::Location("the incremental nightly job runs on the local engine (a full night runs on Ballista: sellable batch without --incremental)".into()));
        }
        self.dataset(crate::NODES, crate::features::NEEDS_CATALOG).await?;
        let started = std::time::Instant::now();
        // one DataFusion context for the check and the night, made after the events' version is
        // read (as `nightly` does: the view's lineage names it)
        let events_version = self.events_version().await?;
        let context = &self.session().await?;
        let why = if full { Err("a full recompute was asked for".to_string()) } else { self.usable_state(context, asof, config).await? };
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "state checked");
        match why {
            Ok(state) => {
                let from = state.lineage.asof;
                let (view, features) = self.fold_night(context, events_version, state, asof, config, progress).await?;
                Ok((view, features, Night::Incremental { from }))
            }
            Err(why) => {
                let (view, features) = self.full_night(context, events_version, asof, config, progress).await?;
                Ok((view, features, Night::Full { why }))
            }
        }
    }

    /// The stored state, if a night as of `asof` can start from it; else why not.
    async fn usable_state(&self, context: &SessionContext, asof: Millis, config: FoldConfig) -> Result<Result<State, String>, BatchError> {
        let Some(running) = self.existing(RUNNING).await? else {
            return Ok(Err("no earlier night left its state".into()));
        };
        let transaction = running.read_transaction_by_version(running.version_id()).await.map_err(self.lance_error(RUNNING))?;
        let Some(lineage) = transaction.and_then(|t| t.transaction_properties).and_then(|p| StateLineage::parse(&p)) else {
            return Ok(Err("the earlier night's state has no lineage".into()));
        };
        let prev = lineage.asof;
        if lineage.lateness_ms != config.lateness_ms {
            return Ok(Err(format!("the state was computed with a lateness of {} ms, not {}", lineage.lateness_ms, config.lateness_ms)));
        }
        if asof <= prev || (asof - prev) % DAY_MS != 0 {
            return Ok(Err(format!(
                "the cutoff is not a whole number of days after the state's ({})",
                sellable_core::event::format_millis(prev)
            )));
        }
        if self.dataset(crate::NODES, "").await?.version_id() != lineage.nodes_version {
            return Ok(Err("the node catalog changed since the state was computed".into()));
        }
        if self.known_rows(context, prev, config).await? != lineage.known_rows {
            return Ok(Err("events that arrived by the state's cutoff were added to the lake after it was computed".into()));
        }
        let version = |name: &'static str, version: u64| async move {
            let dataset = self.existing(name).await?.ok_or_else(|| BatchError::Missing(self.location.clone(), name, "a full night computes it"))?;
            dataset.checkout_version(version).await.map_err(self.lance_error(name))
        };
        let state = async {
            Ok::<_, BatchError>(State {
                tail: version(TAIL, lineage.tail_version).await?,
                feeds: version(FEEDS, lineage.feeds_version).await?,
                deltas: version(crate::BATCH_DELTAS, lineage.deltas_version).await?,
                running,
                lineage,
            })
        };
        match state.await {
            Ok(state) => Ok(Ok(state)),
            Err(error) => Ok(Err(format!("the state's datasets cannot be read ({error})"))),
        }
    }

    /// How many rows of `events` (copies included) are known at `asof` and not too late.
    async fn known_rows(&self, context: &SessionContext, asof: Millis, config: FoldConfig) -> Result<u64, BatchError> {
        let sql = format!("SELECT COUNT(*) FROM ({}) AS known", crate::known_events_sql(None, asof, config));
        let batches = context.sql(&sql).await?.collect().await?;
        let count = batches.first().and_then(|batch| batch.column(0).as_any().downcast_ref::<Int64Array>()).map(|c| c.value(0));
        Ok(count.unwrap_or(0) as u64)
    }

    /// A full night ([`Lake::nightly`]'s), then the state from scratch over the same events.
    async fn full_night(
        &self,
        context: &SessionContext,
        events_version: u64,
        asof: Millis,
        config: FoldConfig,
        progress: &Progress,
    ) -> Result<(BatchSummary, crate::features::FeaturesSummary), BatchError> {
        let (view, features, known) = self.nightly_in(context, events_version, asof, config, progress).await?;
        let started = std::time::Instant::now();
        known.register_all(context, "fresh").await?;
        let schema = context.table("fresh").await?.schema().inner().clone();
        crate::register_in_memory(context, "tail", schema, Vec::new())?;
        crate::register_in_memory(context, "running", running_schema(), Vec::new())?;
        crate::register_in_memory(context, "old_deltas", crate::deltas_schema(), Vec::new())?;
        register_days(context, Vec::new(), &[]).await?;
        crate::register_in_memory(context, "old_feeds", feeds_schema(), Vec::new())?;
        let run = run_id();
        let statements = crate::statements(&Placeholders::of(asof, None, config.lateness_ms, run).substituted(INCREMENTAL_SQL));
        run_statements(context, &statements).await?;
        let known_rows = self.known_rows(context, asof, config).await?;
        self.write_state(context, asof, config, known_rows, view.deltas_version, vec![run], None).await?;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "state of the night computed from scratch");
        Ok((view, features))
    }

    /// A night folded from `state`.
    async fn fold_night(
        &self,
        context: &SessionContext,
        events_version: u64,
        state: State,
        asof: Millis,
        config: FoldConfig,
        progress: &Progress,
    ) -> Result<(BatchSummary, crate::features::FeaturesSummary), BatchError> {
        let bar = progress.bar("nightly (incremental)", 3);
        let started = std::time::Instant::now();
        let prev = state.lineage.asof;
        bar.set_message("the day's events");
        // the tail, held: every statement reads it, and it holds hours of events
        let tail = crate::scan(&state.tail, TAIL).await?;
        crate::register_in_memory(context, "tail", Arc::new(Schema::from(state.tail.schema())), tail)?;
        // the rows that arrived since (copies included: they count in the lineage), then the
        // events they bring
        let day = context.sql(&crate::known_events_sql(Some(prev), asof, config)).await?;
        let schema = day.schema().inner().clone();
        let day = day.collect().await?;
        let known_rows = state.lineage.known_rows + day.iter().map(RecordBatch::num_rows).sum::<usize>() as u64;
        crate::register_in_memory(context, "day_known", schema, day)?;
        let fresh = context.sql(&crate::fresh_events_sql()).await?;
        let schema = fresh.schema().inner().clone();
        let fresh = fresh.collect().await?;
        crate::register_in_memory(context, "fresh", schema, fresh)?;
        context.deregister_table("day_known")?;
        // the state per sku×node, held: several statements read it
        let running = crate::scan(&state.running, RUNNING).await?;
        crate::register_in_memory(context, "running", Arc::new(Schema::from(state.running.schema())), running)?;
        context.register_table("old_deltas", self.table_of(crate::BATCH_DELTAS, state.deltas))?;
        context.register_table("old_feeds", self.table_of(FEEDS, state.feeds))?;
        let run = run_id();
        let values = Placeholders::of(asof, Some(prev), config.lateness_ms, run);
        let (k, prev_k) = (values.k, values.prev_k);
        // the days that leave a window tonight: of 1, 7 and 30 days
        let days: std::collections::BTreeSet<i64> = [1, 7, 30].into_iter().flat_map(|window| prev_k - window..k - window).collect();
        let mut leaving = Vec::new();
        for day in days {
            if let Some(dataset) = self.existing(&day_dataset(day)).await? {
                leaving.push((day, self.table_of(&day_dataset(day), dataset)));
            }
        }
        register_days(context, leaving, &state.lineage.runs).await?;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "state read, the day's events selected");
        bar.inc(1);
        bar.set_message("folded");
        let mut statements = crate::statements(&values.substituted(INCREMENTAL_SQL));
        let features_sql = crate::statements(&FEATURES_SQL.replace("${asof}", &asof.to_string()));
        statements.extend(features_sql.iter().rev().take(2).rev().cloned());
        let last = statements.pop().unwrap_or_default();
        run_statements(context, &statements).await?;
        let rows = context.sql(&last).await?.collect().await?;
        let (view, features) = crate::features::converted(&rows, asof)?;
        let deltas = context.table("deltas").await?.collect().await?;
        let computed = Computed { view: Rows::Held(view), features: Rows::Held(features), deltas: Rows::Held(deltas), shares: 1 };
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "folded");
        bar.inc(1);
        bar.set_message("batch view, features and state written");
        let view = self.write_batch_view(&computed, asof, events_version, config).await?;
        let features = self.write_features(&[&computed.features], &[asof]).await?;
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "batch view and features written");
        let mut runs = state.lineage.runs.clone();
        runs.push(run);
        self.write_state(context, asof, config, known_rows, view.deltas_version, runs, Some((prev_k, k))).await?;
        bar.inc(1);
        bar.finish();
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "incremental night");
        Ok((view, features))
    }

    /// Writes what a night leaves for the next (the views `days_next`, `tail_next`, `feeds` and
    /// `running_next` of `context`), `running` last with the lineage. Then removes the days that
    /// left every window (those in `[prev_k - 30, k - 30)`).
    #[allow(clippy::too_many_arguments)]
    async fn write_state(
        &self,
        context: &SessionContext,
        asof: Millis,
        config: FoldConfig,
        known_rows: u64,
        deltas_version: u64,
        runs: Vec<i64>,
        days: Option<(i64, i64)>,
    ) -> Result<(), BatchError> {
        let rows = context.sql("SELECT * FROM days_next ORDER BY day").await?.collect().await?;
        for (day, batch) in by_day(&rows)? {
            let batch = crate::conformed(&batch, &days_schema(), &day_dataset(day))?;
            self.write(&day_dataset(day), RecordBatchIterator::new(vec![Ok(batch)], days_schema()), WriteMode::Append).await?;
        }
        let tail = context.sql("SELECT * FROM tail_next").await?.execute_stream().await?;
        let tail_version = self.write_stream(TAIL, tail, None).await?;
        let feeds = context.sql("SELECT * FROM feeds").await?.execute_stream().await?;
        let feeds_version = self.write_stream(FEEDS, conformed_stream(feeds, feeds_schema(), FEEDS), None).await?;
        let nodes_version = self.dataset(crate::NODES, "").await?.version_id();
        let lineage = StateLineage { asof, lateness_ms: config.lateness_ms, known_rows, nodes_version, tail_version, feeds_version, deltas_version, runs };
        let running = context.sql("SELECT * FROM running_next").await?.execute_stream().await?;
        self.write_stream(RUNNING, conformed_stream(running, running_schema(), RUNNING), Some(lineage.to_properties())).await?;
        if let Some((prev_k, k)) = days {
            let mut expired = Vec::new();
            for day in prev_k - 30..k - 30 {
                expired.extend(self.existing(&day_dataset(day)).await?);
            }
            crate::distributed::remove_datasets(expired, "a day of the nightly state that left every window").await;
        }
        Ok(())
    }
}

impl Lake {
    /// Writes `rows` as a new version of the dataset `name` (replacing what it held), recording
    /// `properties` in its commit; gives the version.
    async fn write_stream(&self, name: &str, rows: SendableRecordBatchStream, properties: Option<HashMap<String, String>>) -> Result<u64, BatchError> {
        let params = self.write_params(name, WriteMode::Overwrite, properties).await?;
        let dataset = InsertBuilder::new(self.uri(name).as_str()).with_params(&params).execute_stream(rows).await.map_err(self.lance_error(name))?;
        Ok(dataset.version_id())
    }
}

/// `rows` [`crate::conformed`] to `schema` (the rows of the state's `dataset`).
fn conformed_stream(rows: SendableRecordBatchStream, schema: SchemaRef, dataset: &'static str) -> SendableRecordBatchStream {
    let target = schema.clone();
    let rows = rows.map(move |batch| {
        batch.and_then(|batch| crate::conformed(&batch, &target, dataset).map_err(|error| datafusion::error::DataFusionError::External(Box::new(error))))
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, rows))
}

/// Runs `statements` in turn, each timed in the debug log.
async fn run_statements(context: &SessionContext, statements: &[String]) -> Result<(), BatchError> {
    for (part, statement) in statements.iter().enumerate() {
        let started = std::time::Instant::now();
        crate::execute_statement(context, statement).await?;
        let table = crate::features::created_table(statement).unwrap_or("");
        tracing::debug!(statement = part + 1, table, seconds = started.elapsed().as_secs_f64(), "incremental.sql");
    }
    Ok(())
}

/// Registers `old_days` and `old_feed_days`: the rows of `days` (their day datasets) written by
/// `runs`.
async fn register_days(context: &SessionContext, days: Vec<(i64, Arc<dyn datafusion::catalog::TableProvider>)>, runs: &[i64]) -> Result<(), BatchError> {
    if days.is_empty() {
        crate::register_in_memory(context, "old_days", days_schema(), Vec::new())?;
        crate::register_in_memory(context, "old_feed_days", days_schema(), Vec::new())?;
        return Ok(());
    }
    let mut union = Vec::new();
    for (day, table) in days {
        let name = format!("day_{day}");
        context.deregister_table(&name)?;
        context.register_table(&name, table)?;
        union.push(format!("SELECT * FROM {name}"));
    }
    let runs: Vec<String> = runs.iter().map(i64::to_string).collect();
    let all = format!("(SELECT * FROM ({}) AS days WHERE run IN ({}))", union.join(" UNION ALL "), runs.join(", "));
    context.sql(&format!("CREATE OR REPLACE VIEW old_days AS SELECT * FROM {all} AS d WHERE sku IS NOT NULL")).await?.collect().await?;
    context.sql(&format!("CREATE OR REPLACE VIEW old_feed_days AS SELECT * FROM {all} AS d WHERE lag_s IS NOT NULL")).await?.collect().await?;
    Ok(())
}

/// The rows of `batches` (ordered by day) split by their `day`.
fn by_day(batches: &[RecordBatch]) -> Result<Vec<(i64, RecordBatch)>, BatchError> {
    let mut days: Vec<(i64, Vec<RecordBatch>)> = Vec::new();
    for batch in batches {
        let day = crate::int_column(batch, "day", "days")?;
        let mut start = 0;
        while start < batch.num_rows() {
            let value = day.value(start);
            let end = (start..batch.num_rows()).find(|&row| day.value(row) != value).unwrap_or(batch.num_rows());
            let part = batch.slice(start, end - start);
            match days.last_mut() {
                Some((last, parts)) if *last == value => parts.push(part),
                _ => days.push((value, vec![part])),
            }
            start = end;
        }
    }
    days.into_iter()
        .map(|(day, parts)| {
            let batch = datafusion::arrow::compute::concat_batches(&parts[0].schema(), &parts).map_err(|error| BatchError::Corrupt { dataset: "days".into(), message: error.to_string() })?;
            Ok((day, batch))
        })
        .collect()
}

fn int(name: &str) -> Field {
    Field::new(name, DataType::Int64, true)
}

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}

/// `nightly_state/running`: the columns of `incremental.sql`'s `running_next`.
fn running_schema() -> SchemaRef {
    let mut fields = vec![text("sku"), text("node")];
    fields.extend(
        [
            "reserved", "held", "last_event_ts", "last_arrived", "last_count_ts", "last_receipt_ts", "last_reading_ts",
            "reserve_units_24h", "reserve_count_24h", "reserve_units_7d", "reserve_count_7d", "releases_7d", "returned_7d",
            "shipped_7d", "shorts_30d", "reserves_30d", "disc_sum", "disc_abs", "disc_n", "anchor_ts",
        ]
        .map(int),
    );
    fields.extend([text("anchor_id"), int("anchor_qty"), text("anchor_kind"), int("level_t"), Field::new("has_t", DataType::Boolean, true)]);
    Arc::new(Schema::new(fields))
}

/// `nightly_state/day-N`: the columns of `incremental.sql`'s `days_next`.
fn days_schema() -> SchemaRef {
    let mut fields = vec![int("run"), text("sku"), text("node")];
    fields.extend(
        ["day", "reserve_units", "reserve_count", "releases", "returned", "shipped", "shorts", "disc_sum", "disc_abs", "disc_n", "lag_s", "feeds", "within"]
            .map(int),
    );
    Arc::new(Schema::new(fields))
}

/// `nightly_state/feeds`: the histogram of feed lags per node.
fn feeds_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![text("node"), int("lag_s"), int("feeds"), int("within")]))
}
