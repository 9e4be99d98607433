//! sellable-serving: the REST API. It merges the batch view with the speed view, decides, and
//! explains every answer. Only this crate knows about JSON and HTTP; its API types convert
//! explicitly from the domain types of `core`.
//!
//! Tests: `tests/it/` (the end-to-end test gen → batch → fold → REST, with real Redis and with
//! the embedded store).

pub mod backtest;
pub mod decisions;
pub mod door;
mod encode;
mod gather;
pub mod grading;
pub mod models;
pub mod openapi;
pub mod reservations;
pub mod rules;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use sellable_core::{decide, merge_views, BatchMeta, Event, EventKind, Grade, Millis, Moment, NodeInfo, NodeState, SkuInfo, SkuRow, SpeedSource, Verdict, ViewError};
use grading::{Grading, Limits};
use gather::Also;
use sellable_dsl::{Facts, RuleSet, Schema, Value};

pub use models::{ModelBook, ModelBookError, ModelStatus};
pub use rules::{RuleBook, RulesError};
use sellable_models::Model;

/// Everything an answer is computed from. Immutable except for the epoch's store, which changes
/// underneath as events are folded, and the epoch, the rules and the model, which swap
/// atomically. What grows with the catalog (each SKU's catalog entry, batch state and features)
/// is not held here: it is read per request from the epoch's store, beside the speed view, and
/// only a bounded cache of the epoch's rows read lately is kept ([`HOT_ROWS`]).
pub struct Serving {
    pub nodes: HashMap<String, NodeInfo>,
    /// The batch view and the speed view merged with it, swapped together at a cutover.
    epoch: std::sync::RwLock<Arc<Epoch>>,
    pub rules: Arc<RuleBook>,
    pub models: Arc<ModelBook>,
    /// Where reservations hold units, if anywhere (none: `POST /v1/reservations` answers 503).
    holds: Option<Arc<dyn sellable_core::holds::HoldStore>>,
    /// Per region and per country, the nodes that serve it (`NodeInfo::serves`), computed once:
    /// a request costs the same whatever the number of nodes in the catalog.
    regions: HashMap<String, std::collections::HashSet<String>>,
    clock: Clock,
    /// Per node, the latest arrival folded (batch view and speed view), refreshed by
    /// [`Serving::refresh_watermarks`].
    watermarks: std::sync::RwLock<HashMap<String, Millis>>,
    /// Where accepted events are appended before they are folded (the ingestion stream), if
    /// anywhere.
    intake: Option<Arc<dyn sellable_core::EventIntake>>,
    /// Why the speed view cannot be trusted now, if it cannot (refreshed with the watermarks).
    distrust: std::sync::RwLock<Option<String>>,
    limits: Limits,
    metrics: Metrics,
    /// Where every answer is logged, if anywhere.
    decisions: Option<Arc<decisions::DecisionLog>>,
    /// Oversell budgets by SKU category, for requests that name none.
    budgets: HashMap<String, f64>,
    /// Concurrent requests' single-SKU reads, sent together.
    gather: gather::Gather,
}

/// A batch view and the speed view that holds exactly the events after its cutoff, in one store
/// (the batch view's rows published beside the speed view). A request takes the epoch once
/// ([`Serving::epoch`]), so a cutover ([`Serving::swap_epoch`]) never mixes the two of one epoch
/// with those of another, and never fails a request.
pub struct Epoch {
    pub batch: BatchMeta,
    pub speed: Arc<dyn SpeedSource>,
    /// The batch rows read lately, per SKU, up to [`HOT_ROWS`]: an epoch's published rows do not
    /// change while it is served, so a read asks the store only for the speed states of these
    /// SKUs, and an answer while the store cannot be read still has them.
    rows: std::sync::Mutex<HotRows>,
    /// The store as answers name it ([`SpeedSource::describe`], once).
    described: String,
}

impl Epoch {
    pub fn new(batch: BatchMeta, speed: Arc<dyn SpeedSource>) -> Epoch {
        Epoch { batch, described: speed.describe(), speed, rows: std::sync::Mutex::new(HotRows::default()) }
    }

    /// The row of `sku` read lately in this epoch, if it was.
    pub(crate) fn row(&self, sku: &str) -> Option<Arc<SkuRow>> {
        self.rows().rows.get(sku).cloned()
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, HotRows> {
        self.rows.lock().expect("epoch rows lock poisoned; this is a bug")
    }

    /// The rows of `skus` read lately in this epoch (`None` where not), under one lock.
    pub(crate) fn rows_of(&self, skus: &[&str]) -> Vec<Option<Arc<SkuRow>>> {
        let hot = self.rows();
        skus.iter().map(|sku| hot.rows.get(*sku).cloned()).collect()
    }

    /// Keeps `read`, rows just read from the store, among the rows read lately; past
    /// [`HOT_ROWS`] of them, each row kept lets the oldest go. The rows let go are freed by the
    /// request, after the lock other requests wait for: one per row kept, so no request frees
    /// many at once.
    fn remember<'a>(&self, read: impl IntoIterator<Item = (&'a str, &'a Arc<SkuRow>)>) {
        let mut read = read.into_iter().peekable();
        if read.peek().is_none() {
            return;
        }
        let mut hot = self.rows();
        let let_go: Vec<Arc<SkuRow>> = read.filter_map(|(sku, row)| hot.keep(sku, row, HOT_ROWS)).collect();
        drop(hot);
        drop(let_go);
    }
}

/// The batch rows an epoch read lately ([`Epoch::remember`]), by SKU, and their SKUs from the
/// oldest kept to the newest.
#[derive(Default)]
struct HotRows {
    rows: HashMap<Arc<str>, Arc<SkuRow>>,
    order: std::collections::VecDeque<Arc<str>>,
}

impl HotRows {
    /// Keeps `row` as the row of `sku` unless one is kept already; past `most` rows, the oldest
    /// kept goes, and is returned to be freed.
    fn keep(&mut self, sku: &str, row: &Arc<SkuRow>, most: usize) -> Option<Arc<SkuRow>> {
        if self.rows.contains_key(sku) {
            return None;
        }
        let oldest = if self.order.len() >= most { self.order.pop_front().and_then(|oldest| self.rows.remove(&oldest)) } else { None };
        let sku: Arc<str> = Arc::from(sku);
        self.order.push_back(sku.clone());
        self.rows.insert(sku, row.clone());
        oldest
    }
}

/// SKUs whose batch rows a server keeps per epoch from its reads (past that, the oldest kept
/// goes first): the reads it need not send again, and what it can still answer conservatively
/// for while the epoch's store cannot be read.
pub const HOT_ROWS: usize = 50_000;

/// What one read of a SKU gave an answer to build on.
enum SkuView {
    /// The batch row, and the speed states when they can be trusted (else why not).
    Row(Arc<SkuRow>, Result<Vec<(String, NodeState)>, String>),
    /// Neither the row nor a remembered copy of it: why.
    Nothing(String),
}

/// What "now" is for answers: the wall clock, or a fixed instant (replays, tests).
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    Wall,
    Fixed(Millis),
    /// Simulated time running `speed` times faster than the wall clock, `start` at `wall` (the
    /// demo's replay of a day in minutes).
    Scaled { wall: Millis, start: Millis, speed: f64 },
}

impl Clock {
    pub fn now(self) -> Millis {
        match self {
            Clock::Wall => chrono::Utc::now().timestamp_millis(),
            Clock::Fixed(now) => now,
            Clock::Scaled { wall, start, speed } => start + ((chrono::Utc::now().timestamp_millis() - wall) as f64 * speed) as Millis,
        }
    }
}

/// Prometheus metrics of the server (`GET /metrics`).
struct Metrics {
    registry: prometheus::Registry,
    /// Answers by decision and by grade, at [`decision_index`] and [`grade_index`]: each label's
    /// counter resolved once, not looked up per answer.
    answers: [prometheus::IntCounter; 2],
    grades: [prometheus::IntCounter; 4],
    degraded: prometheus::IntCounter,
    errors: prometheus::IntCounterVec,
    events: prometheus::IntCounterVec,
    feed_lag: prometheus::GaugeVec,
    source_lag: prometheus::GaugeVec,
    /// Now minus the batch view's cutoff (refreshed every second).
    batch_age: prometheus::Gauge,
    /// Cutovers done, and how long the last one took.
    cutovers: prometheus::IntCounter,
    cutover_seconds: prometheus::Gauge,
    /// Now minus the arrival time the archiver has reached (the stream's entry time).
    archive_lag: prometheus::Gauge,
    /// Shadow score minus live score, per scored node.
    shadow: prometheus::Histogram,
    /// Request latency per route, method and status.
    http: prometheus::HistogramVec,
    /// Requests per gathered read of single SKUs ([`gather`]).
    gathered: prometheus::Histogram,
    /// Requests the door refused, by reason.
    refused: prometheus::IntCounterVec,
    outcomes: prometheus::IntCounterVec,
    target: prometheus::Gauge,
}

/// Every `every`, if `changed`, runs `reload` on a blocking thread: reloads read and parse
/// files, which must not stall the request threads. The rules and the model reload this way.
fn poll<T: Send + Sync + 'static>(
    book: Arc<T>,
    every: std::time::Duration,
    changed: fn(&T) -> bool,
    reload: fn(&T),
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            if changed(&book) {
                let book = book.clone();
                let _ = tokio::task::spawn_blocking(move || reload(&book)).await;
            }
        }
    })
}

/// A metric, registered: the names and labels are fixed in the code, so failing is a bug.
fn registered<M: prometheus::core::Collector + Clone + 'static>(registry: &prometheus::Registry, metric: prometheus::Result<M>) -> M {
    let metric = metric.expect("valid metric");
    registry.register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

/// Bounds of the request latency histogram, in seconds: they resolve 0.5 ms to 100 ms finely
/// (the 80 ms budget of an answer), then coarser to the longest timeout.
pub const HTTP_BUCKETS: [f64; 23] = [
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0,
];

/// Where a decision's counter is in [`Metrics`]' `answers`: a match, so that a new decision
/// cannot count under another's label.
fn decision_index(decision: Verdict) -> usize {
    match decision {
        Verdict::Promise => 0,
        Verdict::Deny => 1,
    }
}

/// Where a grade's counter is in [`Metrics`]' `grades` (as [`decision_index`]).
fn grade_index(grade: Grade) -> usize {
    match grade {
        Grade::Fresh => 0,
        Grade::BoundedStale => 1,
        Grade::Conservative => 2,
        Grade::Unavailable => 3,
    }
}

impl Metrics {
    fn new() -> Metrics {
        let registry = prometheus::Registry::new();
        let counter = |name: &str, help: &str, label: &str| {
            registered(&registry, prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), &[label]))
        };
        let gauge = |name: &str, help: &str, label: &str| {
            registered(&registry, prometheus::GaugeVec::new(prometheus::Opts::new(name, help), &[label]))
        };
        let answers = counter("sellable_answers_total", "Availability answers, by decision", "decision");
        let verdicts = [Verdict::Promise, Verdict::Deny];
        let answers = verdicts.map(|verdict| answers.with_label_values(&[verdict.as_str()]));
        let grades = counter("sellable_answers_by_grade_total", "Availability answers, by grade", "grade");
        let ranks = [Grade::Fresh, Grade::BoundedStale, Grade::Conservative, Grade::Unavailable];
        let grades = ranks.map(|grade| grades.with_label_values(&[grade.as_str()]));
        debug_assert!(verdicts.iter().enumerate().all(|(index, verdict)| decision_index(*verdict) == index));
        debug_assert!(ranks.iter().enumerate().all(|(index, grade)| grade_index(*grade) == index));
        let errors = counter("sellable_request_errors_total", "Requests refused, by error", "error");
        let events = counter("sellable_posted_events_total", "Events posted to /v1/events, by outcome", "outcome");
        let degraded = registered(&registry, prometheus::IntCounter::new("sellable_degraded_answers_total", "Answers marked degraded"));
        let feed_lag = gauge("sellable_node_feed_lag_seconds", "How far behind now each node's newest folded event arrived", "node");
        let source_lag = gauge("sellable_source_lag_seconds", "How far behind now each ingestion source's newest folded event arrived", "source");
        let buckets = vec![-0.5, -0.2, -0.1, -0.05, -0.02, -0.01, 0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5];
        let shadow = registered(
            &registry,
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("sellable_shadow_score_difference", "Shadow model p_fulfill minus the live model's, per scored node").buckets(buckets)),
        );
        let plain = |name: &str, help: &str| registered(&registry, prometheus::Gauge::new(name, help));
        let batch_age = plain("sellable_batch_view_age_seconds", "Now minus the cutoff of the batch view answers merge");
        let cutover_seconds = plain("sellable_cutover_seconds", "How long the last cutover to a new epoch took, from the nightly job to the swap");
        let archive_lag = plain("sellable_archive_lag_seconds", "Now minus the time of the last stream entry the archiver has brought to the lake");
        let cutovers = registered(&registry, prometheus::IntCounter::new("sellable_cutovers_total", "Cutovers to a new epoch"));
        let http = registered(
            &registry,
            prometheus::HistogramVec::new(
                prometheus::HistogramOpts::new("sellable_http_request_duration_seconds", "Time from a request's head to its answer, per route, method and status").buckets(HTTP_BUCKETS.to_vec()),
                &["route", "method", "status"],
            ),
        );
        let gathered = registered(
            &registry,
            prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new("sellable_gathered_reads", "Requests whose single-SKU reads went to the store together, per read").buckets(gather::SIZE_BUCKETS.to_vec()),
            ),
        );
        let refused = counter("sellable_http_refused_total", "Requests the door refused before a handler saw them, by reason", "reason");
        let outcomes = counter(
            "sellable_order_outcomes_total",
            "Orders' outcomes posted to /v1/events and accepted: ship (fulfilled) or short (oversold); their ratio over a day is the realised oversell rate",
            "outcome",
        );
        let target = plain("sellable_model_target_oversell_rate", "The oversell rate among promised orders the live model's threshold was chosen for (0 without a live model)");
        Metrics { registry, answers, grades, degraded, errors, events, feed_lag, source_lag, batch_age, cutovers, cutover_seconds, archive_lag, shadow, http, gathered, refused, outcomes, target }
    }
}

impl Serving {
    /// Serving over `nodes` and the epoch of `batch` whose rows `speed`'s store holds
    /// ([`sellable_core::SpeedSource::sku_read`]).
    pub fn new(nodes: Vec<NodeInfo>, batch: BatchMeta, speed: Arc<dyn SpeedSource>, rules: Arc<RuleBook>) -> Serving {
        let watermarks = batch.watermarks.clone().into_iter().collect();
        let mut regions: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for node in &nodes {
            for region in node.served() {
                regions.entry(region.to_string()).or_default().insert(node.node.clone());
            }
        }
        let metrics = Metrics::new();
        Serving {
            gather: gather::Gather::new(metrics.gathered.clone()),
            regions,
            nodes: nodes.into_iter().map(|node| (node.node.clone(), node)).collect(),
            epoch: std::sync::RwLock::new(Arc::new(Epoch::new(batch, speed))),
            rules,
            models: Arc::new(ModelBook::none()),
            holds: None,
            clock: Clock::Wall,
            watermarks: std::sync::RwLock::new(watermarks),
            intake: None,
            distrust: std::sync::RwLock::new(None),
            limits: Limits::default(),
            metrics,
            decisions: None,
            budgets: HashMap::new(),
        }
    }

    /// Oversell budgets by SKU category: an answer for a SKU of one of them, whose request names
    /// no budget, decides within the category's.
    pub fn with_budgets(mut self, budgets: impl IntoIterator<Item = (String, f64)>) -> Serving {
        self.budgets = budgets.into_iter().collect();
        self
    }

    /// `POST /v1/events` appends what it accepts to `intake` (the ingestion stream the fold
    /// workers and the archiver read) before folding it, so every event also reaches the lake.
    pub fn with_intake(mut self, intake: Arc<dyn sellable_core::EventIntake>) -> Serving {
        self.intake = Some(intake);
        self
    }

    /// Every answer (a configured share of availability answers) and every reservation is
    /// logged to `log`, its counters in this server's metrics.
    pub fn with_decisions(mut self, log: Arc<decisions::DecisionLog>) -> Serving {
        if let Err(error) = log.register(&self.metrics.registry) {
            tracing::warn!(%error, "the decision log's metrics are not shown");
        }
        self.decisions = Some(log);
        self
    }

    /// The decision log, if answers are logged.
    pub fn decisions(&self) -> Option<&Arc<decisions::DecisionLog>> {
        self.decisions.as_ref()
    }

    /// Reservations hold units in `holds`, and answers subtract their live holds.
    pub fn with_holds(mut self, holds: Arc<dyn sellable_core::holds::HoldStore>) -> Serving {
        self.holds = Some(holds);
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Serving {
        self.limits = limits;
        self
    }

    /// The epoch answers are computed from now.
    pub fn epoch(&self) -> Arc<Epoch> {
        self.epoch.read().expect("epoch lock poisoned; this is a bug").clone()
    }

    /// Makes `batch` and `speed` (caught up from the batch view's cutoff) the epoch of every
    /// answer from now on, atomically. The node watermarks keep the newest of both views.
    pub fn swap_epoch(&self, batch: BatchMeta, speed: Arc<dyn SpeedSource>) {
        self.raise_watermarks(batch.watermarks.clone());
        let (from, to) = (self.epoch().batch.version.clone(), batch.version.clone());
        *self.epoch.write().expect("epoch lock poisoned; this is a bug") = Arc::new(Epoch::new(batch, speed));
        self.set_distrust(None);
        tracing::info!(from, to, "cutover: answers now merge the new batch view with its speed view");
    }

    /// Keeps, per node, the newest of its watermark and `marks`'.
    fn raise_watermarks(&self, marks: impl IntoIterator<Item = (String, Millis)>) {
        let mut known = self.watermarks.write().expect("watermarks lock poisoned; this is a bug");
        for (node, arrived) in marks {
            let mark = known.entry(node).or_insert(arrived);
            *mark = (*mark).max(arrived);
        }
    }

    /// Records a cutover that took `seconds` (`sellable_cutovers_total`, `sellable_cutover_seconds`).
    pub fn record_cutover(&self, seconds: f64) {
        self.metrics.cutovers.inc();
        self.metrics.cutover_seconds.set(seconds);
    }

    /// Records how far behind now the archiver is (`sellable_archive_lag_seconds`).
    pub fn record_archive_lag(&self, seconds: f64) {
        self.metrics.archive_lag.set(seconds);
    }

    /// Why the speed view is not used now, if it is not.
    pub fn speed_distrust(&self) -> Option<String> {
        self.distrust.read().expect("distrust lock poisoned; this is a bug").clone()
    }

    fn set_distrust(&self, reason: Option<String>) {
        *self.distrust.write().expect("distrust lock poisoned; this is a bug") = reason;
    }

    pub fn with_models(mut self, models: Arc<ModelBook>) -> Serving {
        self.models = models;
        self
    }

    pub fn with_clock(mut self, clock: Clock) -> Serving {
        self.clock = clock;
        self
    }

    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    /// Takes the speed view's node watermarks (the batch view's stand unless newer) and
    /// publishes each node's and each source's lag as metrics. Serving calls it every second.
    pub async fn refresh_watermarks(&self) -> Result<(), ViewError> {
        let timeout = self.limits.speed_timeout.max(std::time::Duration::from_secs(1));
        let epoch = self.epoch();
        let read = async { Ok::<_, ViewError>((epoch.speed.caught_up_to().await?, epoch.speed.watermarks().await?)) };
        let (caught_up, speed) = match grading::within(timeout, read).await {
            Ok(read) => read,
            Err(reason) => {
                self.set_distrust(Some(reason.clone()));
                return Err(reason.into());
            }
        };
        self.set_distrust(grading::distrust(caught_up, epoch.batch.asof));
        let now = self.now();
        self.metrics.batch_age.set((now - epoch.batch.asof) as f64 / 1000.0);
        self.raise_watermarks(speed.nodes);
        let marks = self.watermarks.read().expect("watermarks lock poisoned; this is a bug");
        for (node, arrived) in marks.iter() {
            self.metrics.feed_lag.with_label_values(&[node.as_str()]).set((now - arrived) as f64 / 1000.0);
        }
        for (source, arrived) in &speed.sources {
            self.metrics.source_lag.with_label_values(&[source.as_str()]).set((now - arrived) as f64 / 1000.0);
        }
        Ok(())
    }

    /// Refreshes the watermarks and the trust in the speed view every `every` (failures are
    /// logged; the answers meanwhile say what they could not use).
    pub fn spawn_refresh(self: Arc<Self>, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                if let Err(error) = self.refresh_watermarks().await {
                    tracing::warn!(%error, "could not read the speed view's watermarks");
                }
            }
        })
    }

    /// An error naming `region` unless some node serves it: checked before anything is read.
    fn known_region(&self, region: &str) -> Result<(), ApiError> {
        match self.regions.contains_key(region) {
            true => Ok(()),
            false => Err(ApiError::BadRequest(format!("unknown region '{region}': no node serves it"))),
        }
    }

    /// The newest arrival this server knows of from `node`.
    fn watermark(&self, node: &str) -> Option<Millis> {
        self.watermarks.read().expect("watermarks lock poisoned; this is a bug").get(node).copied()
    }

    /// The model's feature vector for an order of `qty` units of `sku` at `node` at `now`: the
    /// batch features of the batch view's cutoff and the real-time features of the merged state
    /// (`core::features`, the same function the training-set builder calls).
    pub async fn features(&self, sku: &str, node: &str, qty: i64, now: Millis) -> Result<Vec<f64>, ApiError> {
        let epoch = self.epoch();
        let (row, speed) = match self.read_sku(&epoch, sku, Also::Nothing).await?.0 {
            SkuView::Row(row, Ok(speed)) => (row, speed),
            SkuView::Row(_, Err(reason)) | SkuView::Nothing(reason) => return Err(ApiError::Unavailable(reason)),
        };
        let merged = merge_views(row.states(), &speed);
        Ok(sellable_core::features::vector(row.features_of(node), merged.binary_search_by(|(at, _)| (*at).cmp(node)).ok().map(|at| &*merged[at].1), qty, now))
    }

    /// Merges both views for `sku`, keeps the nodes serving `region`, and decides; live
    /// reservations' holds are subtracted from what each node can promise.
    #[tracing::instrument(level = "debug", name = "availability", skip_all, fields(sku = ?sku, region = ?region, qty))]
    pub async fn availability(&self, sku: &str, region: &str, qty: i64, now: Millis) -> Result<Availability, ApiError> {
        self.availability_within(sku, region, qty, None, now).await
    }

    /// [`Self::availability`] within an oversell `budget` (else the SKU's category's, if
    /// [`Self::with_budgets`] names one): each node's score must reach the threshold that kept
    /// the oversell rate among promised orders within it on the live model's validation days,
    /// instead of the model's own threshold.
    pub async fn availability_within(&self, sku: &str, region: &str, qty: i64, budget: Option<f64>, now: Millis) -> Result<Availability, ApiError> {
        Ok(self.decide_sku(sku, region, None, qty, budget, now, Also::Held).await?.0)
    }

    /// The answer for `qty` units of `sku` in `region` (at `only` that node, if given), per node
    /// the units it can promise before live holds are subtracted (the model's gate and the rules
    /// applied), ranked by `p_fulfill`, then units, then node, and the count of confirmations
    /// read before the SKU when `also` asks for it. With [`Also::Held`], the answer subtracts the
    /// live holds; a reservation ([`Also::Confirms`]) leaves that to the store, atomically.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn decide_sku(
        &self,
        sku: &str,
        region: &str,
        only: Option<&str>,
        qty: i64,
        budget: Option<f64>,
        now: Millis,
        also: Also,
    ) -> Result<(Availability, Vec<(String, i64)>, Option<Result<u64, String>>), ApiError> {
        self.known_region(region)?;
        let epoch = self.epoch();
        let (view, held, confirms) = self.read_sku(&epoch, sku, also).await?;
        let (answer, promisable) = self.decide_read(&epoch, &|node| self.watermark(node), sku, region, only, qty, budget, now, view, held)?;
        Ok((answer, promisable, confirms))
    }

    /// Up to [`MAX_BATCH`] answers for a listing page, in order, one per item: the SKUs are read
    /// from the epoch's store in one call (and their holds in another, at the same time); an item
    /// that cannot be answered (an unknown SKU or region) is an error of its own.
    pub async fn availability_batch(&self, items: &[(String, String, i64)], now: Millis) -> Vec<Result<Availability, ApiError>> {
        let epoch = self.epoch();
        let distrust = self.speed_distrust();
        let skus: Vec<&str> = items.iter().map(|(sku, _, _)| sku.as_str()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let (reads, held, _) = gather::read_together(&epoch, self.holds.as_ref(), self.limits.speed_timeout, &skus, &skus, &[]).await;
        let indexes: Vec<usize> = items.iter().map(|(sku, _, _)| skus.binary_search(&sku.as_str()).expect("every item's SKU is read")).collect();
        // no store of holds: none held
        let held = held.map(|mut held| {
            held.resize(skus.len(), Vec::new());
            held
        });
        items
            .iter()
            .zip(gather::handed_out(reads, &indexes))
            .zip(gather::handed_out(held, &indexes))
            .map(|(((sku, region, qty), read), held)| {
                self.known_region(region)?;
                let view = self.judge(&epoch, sku, distrust.clone(), read)?;
                Ok(self.decide_read(&epoch, &|node| self.watermark(node), sku, region, None, *qty, None, now, view, held)?.0)
            })
            .collect()
    }

    /// The answer serving would have given at `now`, from a replay's [`Moment`] (the SKU's
    /// states, features and node watermarks then) and nothing else: the decision of live
    /// answers, for backtests. No live reservation is subtracted.
    pub fn decide_moment(&self, moment: Moment, info: SkuInfo, region: &str, qty: i64, now: Millis) -> Result<Availability, ApiError> {
        self.known_region(region)?;
        let Moment { cutoff, states, speed, features, watermarks } = moment;
        let sku = info.sku.clone();
        let batch = BatchMeta { version: format!("replayed as of {}", sellable_core::event::format_millis(cutoff)), asof: cutoff, watermarks };
        let epoch = Epoch::new(batch, self.epoch().speed.clone());
        let row = Arc::new(SkuRow { info, states, features });
        let marks = |node: &str| epoch.batch.watermarks.get(node).copied();
        Ok(self.decide_read(&epoch, &marks, &sku, region, None, qty, None, now, SkuView::Row(row, Ok(speed)), Ok(Vec::new()))?.0)
    }

    /// [`Self::decide_sku`] from what was read of the SKU and of its live holds; `watermark`
    /// tells each node's newest arrival (a feed beyond its SLA promises nothing).
    #[allow(clippy::too_many_arguments)]
    fn decide_read(
        &self,
        epoch: &Epoch,
        watermark: &dyn Fn(&str) -> Option<Millis>,
        sku: &str,
        region: &str,
        only: Option<&str>,
        qty: i64,
        budget: Option<f64>,
        now: Millis,
        read: SkuView,
        held: Result<Vec<(String, i64)>, String>,
    ) -> Result<(Availability, Vec<(String, i64)>), ApiError> {
        let serving_region = &self.regions[region];
        let model = self.models.current();
        let shadow = self.models.shadow();
        // the request's budget, else its SKU's category's
        let budget = budget.or_else(|| match &read {
            SkuView::Row(row, _) => self.budgets.get(&row.info.category).copied(),
            SkuView::Nothing(_) => None,
        });
        // a budget the live model cannot keep promises nothing, and says why
        let (budget, unkept) = match (budget, &model) {
            (None, _) => (None, None),
            (Some(budget), Some(model)) => match model.threshold_for(budget) {
                Some(threshold) => (Some(Budget { budget, threshold }), None),
                None => (None, Some(format!("model {} was trained without oversell budgets: nothing promised within the budget {budget}", model.version()))),
            },
            (Some(budget), None) => (None, Some(format!("no model is live: nothing promised within the oversell budget {budget}"))),
        };
        let mut grading = Grading::default();
        let budget_unkept = unkept.is_some();
        if let Some(reason) = unkept {
            grading.note(reason);
        }
        let mut margin = 0;
        if model.is_none() {
            margin = self.models.fallback_safety_stock();
            grading.note(format!("model unavailable: the static safety stock ({margin} unit(s) per node) and rules"));
        }
        let (read, held) = match (read, held) {
            (read, Ok(held)) => (read, held),
            (SkuView::Row(row, Ok(_)), Err(problem)) => (SkuView::Row(row, Err(format!("live reservations cannot be read ({problem})"))), Vec::new()),
            (read, Err(_)) => (read, Vec::new()),
        };
        let (row, speed) = match read {
            SkuView::Row(row, Ok(speed)) => (row, Some(speed)),
            SkuView::Row(row, Err(problem)) => {
                static WITHOUT_SPEED: Throttled = Throttled::new();
                WITHOUT_SPEED.warn(&problem, "answering without the speed view");
                grading.lower(Grade::Conservative, format!("{problem}: the batch view minus what may have left since its cutoff"));
                (row, None)
            }
            SkuView::Nothing(problem) => {
                static WITHOUT_VIEWS: Throttled = Throttled::new();
                WITHOUT_VIEWS.warn(&problem, "answering without the batch view or the speed view");
                grading.lower(Grade::Unavailable, format!("{problem}, and this server has not read the SKU's batch view lately: nothing promised"));
                (Arc::new(SkuRow { info: SkuInfo { sku: sku.to_string(), ..SkuInfo::default() }, ..SkuRow::default() }), None)
            }
        };
        margin += self.grade_batch_age(&epoch.batch, speed.is_some(), now, &mut grading);
        // only the nodes that may serve the order are merged
        let serves = |node: &str| serving_region.contains(node) && only.is_none_or(|only| only == node);
        let merged = merge_views(row.states().filter(|(node, _)| serves(node)), speed.as_deref().unwrap_or(&[]).iter().filter(|(node, _)| serves(node)));
        let in_region: Vec<(&NodeInfo, &NodeState)> = merged.iter().filter_map(|(node, state)| Some((self.nodes.get(*node)?, &**state))).collect();
        let newest = in_region.iter().filter_map(|(_, state)| state.last_arrived).max();

        // Per node: the model scores, then the rules run last, on top of the score.
        let ruleset = self.rules.current();
        let mut rules_fired = Vec::new();
        let mut node_reasons = Vec::new();
        let mut units = Vec::with_capacity(in_region.len());
        // (node, p_fulfill) of the nodes scored: a few per SKU, looked up by a scan
        let mut scores: Vec<(&str, f64)> = Vec::with_capacity(in_region.len());
        let score = |scores: &[(&str, f64)], node: &str| scores.iter().find(|(scored, _)| *scored == node).map(|(_, p)| *p);
        for (info, state) in &in_region {
            let _node = tracing::debug_span!("node", node = %info.node).entered();
            // A node whose feed is beyond its SLA may hold phantom stock: promise nothing from it.
            if let Some(lag) = watermark(&info.node).map(|arrived| now - arrived).filter(|lag| *lag > info.feed_sla_ms) {
                let reason = format!("feed of {} is {} s behind (SLA {} s): nothing promised from it", info.node, lag / 1000, info.feed_sla_ms / 1000);
                grading.lower(Grade::BoundedStale, reason);
                units.push((info.node.clone(), 0));
                continue;
            }
            if grading.grade == Grade::Unavailable || budget_unkept {
                units.push((info.node.clone(), 0));
                continue;
            }
            let features = row.features_of(&info.node);
            let mut facts = NodeFacts { margin, budget, ..NodeFacts::of(state, now) };
            if speed.is_none() {
                facts.atp = sellable_core::grade::conservative_atp(state, features, epoch.batch.asof, now);
            }
            if model.is_some() || shadow.is_some() {
                let vector = sellable_core::features::vector(features, Some(state), qty, now);
                facts.p_fulfill = model.as_ref().map(|model| model.p_fulfill(&vector));
                if let Some(shadow) = &shadow {
                    let candidate = shadow.p_fulfill(&vector);
                    if let Some(live) = facts.p_fulfill {
                        self.metrics.shadow.observe(candidate - live);
                    }
                    tracing::info!(live = ?facts.p_fulfill, shadow = candidate, shadow_version = shadow.version(), "shadow score");
                }
            }
            if let Some(p) = facts.p_fulfill {
                scores.push((&info.node, p));
            }
            let decision = self.decide_at_node(ruleset.as_deref(), model.as_deref(), Some(&row.info), region, qty, info, &facts);
            node_reasons.extend(decision.reasons);
            rules_fired.extend(decision.fired);
            units.push((info.node.clone(), decision.units));
        }
        let mut promisable = units.clone();
        promisable.sort_by(|(a, units_a), (b, units_b)| {
            let (p_a, p_b) = (score(&scores, a).unwrap_or(0.0), score(&scores, b).unwrap_or(0.0));
            p_b.total_cmp(&p_a).then(units_b.cmp(units_a)).then(a.cmp(b))
        });
        for (node, units) in &mut units {
            let taken: i64 = held.iter().filter(|(held_at, _)| held_at == node).map(|(_, units)| units).sum();
            if taken > 0 {
                node_reasons.push(format!("{node}: {taken} unit(s) held by live reservations"));
                *units = (*units - taken).max(0);
            }
        }
        let mut decision = decide(qty, units);
        decision.reasons.extend(node_reasons);
        let ruleset_version = ruleset.map(|r| format!("{}@{}", r.name, r.version));
        let mut options: Vec<OptionJson> = decision
            .options
            .into_iter()
            .map(|option| OptionJson { p_fulfill: score(&scores, &option.node), node: option.node, units: option.units })
            .collect();
        options.sort_by(|a, b| b.p_fulfill.unwrap_or(0.0).total_cmp(&a.p_fulfill.unwrap_or(0.0)).then(b.units.cmp(&a.units)).then(a.node.cmp(&b.node)));
        let plan = match decision.verdict {
            Verdict::Deny => Vec::new(),
            Verdict::Promise => match options.iter().find(|option| option.units >= qty) {
                Some(option) => vec![sellable_core::holds::Taken { node: option.node.clone(), units: qty }],
                None => {
                    let mut left = qty;
                    options
                        .iter()
                        .map_while(|option| {
                            let units = option.units.min(left);
                            left -= units;
                            (units > 0).then(|| sellable_core::holds::Taken { node: option.node.clone(), units })
                        })
                        .collect()
                }
            },
        };
        let answer = Availability {
            sku: sku.to_string(),
            region: region.to_string(),
            qty,
            decision: decision.verdict,
            units: decision.units,
            available: decision.available,
            options,
            plan,
            reasons: decision.reasons,
            rules_fired,
            grade: grading.grade,
            degraded: grading.grade != Grade::Fresh || !grading.reasons.is_empty(),
            degraded_reasons: grading.reasons,
            freshness_ms: newest.map(|t| now - t),
            versions: Versions {
                batch_view: epoch.batch.version.clone(),
                speed_view: epoch.described.clone(),
                model: model.map(|model| model.version().to_string()),
                ruleset: ruleset_version,
            },
        };
        Ok((answer, promisable))
    }

    /// The SKU's batch row and speed states, read together from the epoch's store (gathered with
    /// other requests' reads), and what `also` asks of the hold store. The speed states are not
    /// used when the view is not trusted (not caught up from this epoch's cutoff, an error, no
    /// answer within the timeout); the row then comes from the read if it has it, else from the
    /// rows read lately ([`HOT_ROWS`]). A SKU the complete store has no row for is not in the
    /// catalog.
    async fn read_sku(&self, epoch: &Arc<Epoch>, sku: &str, also: Also) -> Result<(SkuView, Result<sellable_core::holds::Held, String>, Option<Result<u64, String>>), ApiError> {
        let distrust = self.speed_distrust();
        let remembered = distrust.as_ref().and_then(|_| epoch.row(sku));
        if let (Some(reason), Some(row)) = (&distrust, remembered) {
            // the store is known to be away or incomplete: no need to wait for it (nor to count
            // confirmations: such an answer is not reserved against)
            let held = match self.holds.as_ref().filter(|_| also == Also::Held) {
                Some(store) => grading::within(self.limits.speed_timeout, store.held(sku)).await,
                None => Ok(Vec::new()),
            };
            let confirms = (also == Also::Confirms).then(|| Err(reason.clone()));
            return Ok((SkuView::Row(row, Err(reason.clone())), held, confirms));
        }
        let got = self.gather.read(self.holds.as_ref(), self.limits.speed_timeout, epoch.clone(), sku, also).await;
        Ok((self.judge(epoch, sku, distrust, got.read)?, got.held, got.confirms))
    }

    /// What a read of the SKU (or its failure) gives an answer to build on ([`Self::read_sku`]).
    fn judge(&self, epoch: &Epoch, sku: &str, distrust: Option<String>, read: Result<sellable_core::SkuRead, String>) -> Result<SkuView, ApiError> {
        let problem = match read {
            Ok(read) => match (distrust.or_else(|| grading::distrust(read.caught_up, epoch.batch.asof)), read.row) {
                (None, Some(row)) => return Ok(SkuView::Row(row, Ok(read.speed))),
                (None, None) => return Err(ApiError::UnknownSku(sku.to_string())),
                (Some(reason), Some(row)) => return Ok(SkuView::Row(row, Err(reason))),
                (Some(reason), None) => reason,
            },
            Err(reason) => reason,
        };
        Ok(match epoch.row(sku) {
            Some(row) => SkuView::Row(row, Err(problem)),
            None => SkuView::Nothing(problem),
        })
    }

    /// Grades the batch view's age; returns the units each node holds back for it.
    fn grade_batch_age(&self, batch: &BatchMeta, speed_usable: bool, now: Millis, grading: &mut Grading) -> i64 {
        let age = now - batch.asof;
        if age <= self.limits.batch_max_age_ms {
            return 0;
        }
        let (hours, expected) = (age / 3_600_000, self.limits.batch_max_age_ms / 3_600_000);
        if speed_usable {
            let reason = format!("batch view is {hours} h old (expected at most {expected} h): {} unit(s) held back per node", grading::STALE_BATCH_MARGIN);
            grading.lower(Grade::BoundedStale, reason);
            grading::STALE_BATCH_MARGIN
        } else {
            grading.lower(Grade::Unavailable, format!("batch view is {hours} h old (expected at most {expected} h) and the speed view cannot be used: nothing promised"));
            0
        }
    }

    /// One node's answer for an order: the model's gate (a score under the threshold promises
    /// nothing), then the rules on top. Live answers and backtests both decide here.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_at_node(
        &self,
        ruleset: Option<&RuleSet>,
        model: Option<&Model>,
        sku: Option<&SkuInfo>,
        region: &str,
        qty: i64,
        node: &NodeInfo,
        facts: &NodeFacts,
    ) -> NodeDecision {
        let mut decision = NodeDecision { units: (facts.atp - facts.margin).max(0), reasons: Vec::new(), fired: Vec::new() };
        if let (Some(model), Some(p)) = (model, facts.p_fulfill) {
            let (threshold, within) = match facts.budget {
                Some(Budget { budget, threshold }) => (threshold, format!(" for the oversell budget {budget}")),
                None => (model.threshold(), String::new()),
            };
            if p < threshold {
                decision.units = 0;
                decision.reasons.push(format!("{}: p_fulfill {p:.3} is under the threshold {threshold:.3} of model {}{within}", node.node, model.version()));
            }
        }
        if let Some(ruleset) = ruleset {
            let evaluation = ruleset.evaluate(&self.facts(ruleset, sku, region, qty, node, facts));
            if let Some(reason) = &evaluation.denied {
                decision.reasons.push(format!("{}: {reason}", node.node));
            }
            decision.units = evaluation.units(decision.units);
            decision.fired.extend(evaluation.fired.into_iter().map(|fired| RuleFired {
                node: node.node.clone(),
                rule: fired.rule.to_string(),
                action: fired.action.to_string(),
                saw: fired.saw.iter().map(ToString::to_string).collect(),
            }));
        }
        decision
    }

    /// The facts rules see for one node. Unknown facts (no model score, no feed lag)
    /// stay unset: rules that need them do not fire, and `require` denies.
    #[allow(clippy::too_many_arguments)]
    fn facts(&self, ruleset: &RuleSet, sku: Option<&SkuInfo>, region: &str, qty: i64, node: &NodeInfo, numbers: &NodeFacts) -> Facts {
        let schema = ruleset.schema();
        let mut facts = ruleset.facts();
        let mut set = |name: &str, value: Value| {
            if let Some(slot) = schema.slot(name) {
                facts.set(slot, value);
            }
        };
        if let Some(info) = sku {
            set("sku.id", Value::Text(info.sku.as_str().into()));
            set("sku.category", Value::Text(info.category.as_str().into()));
            if let Some(seller) = &info.seller {
                set("sku.seller", Value::Text(seller.as_str().into()));
            }
            set("sku.hazmat", Value::Bool(info.hazmat));
            set("sku.price", Value::Number(info.price));
        }
        set("node.id", Value::Text(node.node.as_str().into()));
        set("node.kind", Value::Text(node.kind.as_str().into()));
        set("node.region", Value::Text(node.region.as_str().into()));
        set("node.country", Value::Text(node.country.as_str().into()));
        if let Some(seller) = &node.seller {
            set("node.seller", Value::Text(seller.as_str().into()));
        }
        if let Some(lag) = numbers.feed_lag_s {
            set("node.feed_lag_s", Value::Number(lag));
        }
        if let Some(p) = numbers.p_fulfill {
            set("p_fulfill", Value::Number(p));
        }
        set("region", Value::Text(region.into()));
        set("qty", Value::Number(qty as f64));
        set("atp", Value::Number(numbers.atp as f64));
        set("on_hand", Value::Number(numbers.on_hand as f64));
        set("reserved", Value::Number(numbers.reserved as f64));
        set("held", Value::Number(numbers.held as f64));
        set("velocity_5m", Value::Number(numbers.velocity_5m as f64));
        set("velocity_1h", Value::Number(numbers.velocity_1h as f64));
        for (slot, value) in sku.map(|info| attribute_facts(info, schema)).into_iter().flatten() {
            facts.set(slot, value);
        }
        facts
    }

    /// The REST API with what every route shares ([`Serving::harden`]) and no door: every route
    /// open, the default body limits. What `sellable serve` answers is [`Serving::guarded`].
    pub fn router(self: Arc<Serving>) -> Router {
        let routes = self.clone().routes(&door::Limits::default());
        self.harden(routes)
    }

    /// The door of `config`, counting what it refuses in this server's metrics.
    pub fn door(&self, config: &door::DoorConfig) -> Result<door::Door, String> {
        door::Door::new(config, self.metrics.refused.clone())
    }

    /// The REST API behind `door`: keys and scopes, hosts, media types, rates, load shedding
    /// and timeouts ([`door::guard`]), bodies bounded per route by the door's limits.
    pub fn guarded(self: Arc<Serving>, door: Arc<door::Door>) -> Router {
        let routes = self.clone().routes(door.limits()).layer(axum::middleware::from_fn_with_state(door, door::guard));
        self.harden(routes)
    }

    /// The routes alone, each body bounded by `limits` ([`door::body_limit`]); an unknown path is
    /// a 404 in the JSON error body. [`Serving::harden`] adds what every route shares.
    pub fn routes(self: Arc<Serving>, limits: &door::Limits) -> Router {
        use axum::extract::DefaultBodyLimit;
        let bounded = |path: &str| DefaultBodyLimit::max(door::body_limit(limits, path));
        Router::new()
            .route("/v1/availability/{sku}", get(availability))
            .route("/v1/availability:batch", post(availability_batch).layer(bounded("/v1/availability:batch")))
            .route("/v1/events", post(post_events).layer(bounded("/v1/events")))
            .route("/v1/reservations", post(reservations::create).layer(bounded("/v1/reservations")))
            .route("/v1/reservations/{id}", get(reservations::show).delete(reservations::release))
            .route("/v1/reservations/{id}/extend", post(reservations::extend).layer(bounded("/v1/reservations")))
            .route("/v1/reservations/{id}/confirm", post(reservations::confirm))
            .route("/v1/features/{sku}", get(features))
            .route("/v1/model", get(model_status))
            .route("/v1/model:reload", post(model_reload))
            .route("/v1/rules", get(rules_status))
            .route("/v1/rules:reload", post(rules_reload))
            .route("/v1/rules:check", post(rules_check).layer(bounded("/v1/rules:check")))
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/openapi.json", get(openapi::document))
            .fallback(|| async { ApiError::NotFound("no such route; the routes are listed in /openapi.json".to_string()) })
            .layer(axum::Extension(Arc::new(limits.clone())))
            .with_state(self)
    }

    /// What every route shares: each request runs in a `request` span (its id from an
    /// `x-request-id` header of up to 64 letters, digits, `-` and `_`, else a new one, sent back in
    /// the answer) and is timed per route and status (`sellable_http_request_duration_seconds`);
    /// every error is the JSON error body, the framework's own included ([`door::json_errors`]);
    /// a handler that panics is answered as a 500 while the server goes on.
    pub fn harden(self: Arc<Serving>, router: Router) -> Router {
        // the span outside, so that a panic is logged inside it and the answer still carries the id
        router
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
            .layer(axum::middleware::from_fn(door::json_errors))
            .layer(axum::middleware::from_fn_with_state(self, request_span))
    }
}

/// `GET /healthz`: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "The process answers", body = Object, example = json!({"status": "ok"}))))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Runs the request inside its span, and times it into
/// `sellable_http_request_duration_seconds{route, method, status}` (the route as declared, e.g.
/// `/v1/availability/{sku}`; `unmatched` for unknown paths).
async fn request_span(State(serving): State<Arc<Serving>>, mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tracing::Instrument;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // asked of the system once: it is a system call
    static PROCESS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let given = request.headers().get("x-request-id").and_then(|value| value.to_str().ok()).filter(|id| {
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let id = given.map(str::to_string).unwrap_or_else(|| format!("{:x}-{}", PROCESS.get_or_init(std::process::id), NEXT.fetch_add(1, Ordering::Relaxed)));
    let header = axum::http::HeaderValue::from_str(&id).expect("the id is ASCII letters, digits, - and _");
    request.headers_mut().insert("x-request-id", header.clone());
    // the path as a quoted string: a client's text never forges a log line
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = ?request.uri().path(), key = tracing::field::Empty);
    let started = std::time::Instant::now();
    let route = request.extensions().get::<axum::extract::MatchedPath>().cloned();
    let method = request.method().clone();
    let mut response = next.run(request).instrument(span).await;
    serving
        .metrics
        .http
        .with_label_values(&[route.as_ref().map_or("unmatched", |path| path.as_str()), method.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response.headers_mut().insert("x-request-id", header);
    response
}

/// The answer to a request whose handler panicked (the panic is logged with its message).
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    ApiError::internal("a request handler panicked", message).into_response()
}

/// The JSON decision of DESIGN.md.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Availability {
    pub sku: String,
    pub region: String,
    pub qty: i64,
    /// `promise` or `deny`.
    pub decision: Verdict,
    /// Units promised (the requested quantity, or 0 on deny).
    pub units: i64,
    /// Units available in the region, all options together.
    pub available: i64,
    /// Ranked by expected fulfilment: `p_fulfill` (when a model scores), then units, then node.
    pub options: Vec<OptionJson>,
    /// Where the order would be served from on a promise: the first option that can serve `qty`
    /// alone, else a split over the ranked options; empty on a deny.
    pub plan: Vec<sellable_core::holds::Taken>,
    pub reasons: Vec<String>,
    pub rules_fired: Vec<RuleFired>,
    /// How current the inputs are: `fresh`, `bounded_stale`, `conservative` or `unavailable`.
    pub grade: Grade,
    pub degraded: bool,
    pub degraded_reasons: Vec<String>,
    /// Age of the newest event behind this answer, by arrival; null if no event at all.
    pub freshness_ms: Option<i64>,
    pub versions: Versions,
}

/// The numbers one node's decision reads: the merged view's and the model's score.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    pub atp: i64,
    pub on_hand: i64,
    pub reserved: i64,
    pub held: i64,
    /// Seconds since the node's newest event arrived.
    pub feed_lag_s: Option<f64>,
    /// Units reserved at the node in the last 5 minutes and the last hour, by event time.
    pub velocity_5m: i64,
    pub velocity_1h: i64,
    pub p_fulfill: Option<f64>,
    /// Units held back before the model and the rules: the static safety stock while no model
    /// is live, and the margin of a batch view older than expected.
    pub margin: i64,
    /// The request's oversell budget and the threshold it asks of the model, if any (else the
    /// model's own threshold).
    pub budget: Option<Budget>,
}

/// An oversell budget and the live model's threshold for it ([`sellable_models::Model::threshold_for`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub budget: f64,
    pub threshold: f64,
}

impl NodeFacts {
    pub fn of(state: &NodeState, now: Millis) -> NodeFacts {
        NodeFacts {
            atp: state.atp(),
            on_hand: state.on_hand(),
            reserved: state.reserved,
            held: state.held,
            feed_lag_s: state.last_arrived.map(|arrived| (now - arrived) as f64 / 1000.0),
            velocity_5m: state.demand(now, 5),
            velocity_1h: state.demand(now, 60),
            p_fulfill: None,
            margin: 0,
            budget: None,
        }
    }
}

/// One node's answer: the units it can promise, why it promises fewer, the rules that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeDecision {
    pub units: i64,
    pub reasons: Vec<String>,
    pub fired: Vec<RuleFired>,
}

/// A rule that fired for one node, with the facts it saw.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RuleFired {
    pub node: String,
    pub rule: String,
    pub action: String,
    pub saw: Vec<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OptionJson {
    pub node: String,
    pub units: i64,
    pub p_fulfill: Option<f64>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Versions {
    pub batch_view: String,
    pub speed_view: String,
    pub model: Option<String>,
    pub ruleset: Option<String>,
}

/// Every failure a client can see, answered as `{"error": "...", "message": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("unknown sku '{0}'")]
    UnknownSku(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidRules(String),
    #[error("the speed view is unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    InvalidModel(String),
    /// A reservation refused without taking anything: the client may retry later.
    #[error("{0}")]
    Refused(String),
    #[error("unknown reservation '{0}'")]
    UnknownReservation(String),
    /// The request is valid but the resource's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// No valid API key.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key without the scope the route needs.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooLarge(String),
    /// Too busy or too slow to answer now: nothing was done, the client may retry.
    #[error("{0}")]
    Overloaded(String),
    /// A failure that is not the client's: logged in full where it happens, answered with a
    /// generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::UnknownSku(_) => (StatusCode::NOT_FOUND, "unknown_sku"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::InvalidRules(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_rules"),
            ApiError::InvalidModel(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_model"),
            ApiError::Unavailable(_) | ApiError::Refused(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::UnknownReservation(_) => (StatusCode::NOT_FOUND, "unknown_reservation"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The speed view failed: the client may retry.
    pub(crate) fn unavailable(error: ViewError) -> ApiError {
        ApiError::Unavailable(error.to_string())
    }

    /// Logs a failure that is not the client's with everything known about it.
    fn internal(context: &str, error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "{context}");
        ApiError::Internal(context.to_string())
    }
}

impl ApiError {
    /// The JSON error body: `{"error": code, "message": text}`.
    fn body(&self) -> serde_json::Value {
        let message = match self {
            ApiError::Internal(_) => "internal error; this is a bug, and it was logged".to_string(),
            _ => self.to_string(),
        };
        serde_json::json!({ "error": self.code(), "message": message })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status_and_code().0, Json(self.body())).into_response()
    }
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    items: Vec<BatchItem>,
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    sku: String,
    region: String,
    #[serde(default = "one")]
    qty: i64,
}

/// `POST /v1/availability:batch`: up to [`MAX_BATCH`] items answered in order, one entry each (an
/// answer, or the error body of the item alone).
#[utoipa::path(post, path = "/v1/availability:batch", tag = "availability", request_body = BatchRequest,
    responses((status = 200, description = "One entry per item, in order: its answer or its error", body = openapi::BatchAnswer)))]
async fn availability_batch(State(serving): State<Arc<Serving>>, id: RequestId, body: String) -> Result<Response, ApiError> {
    let request: BatchRequest = serde_json::from_str(&body).map_err(|error| ApiError::BadRequest(format!("the body is not a batch of items: {error}")))?;
    if request.items.is_empty() || request.items.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!("a batch has 1 to {MAX_BATCH} items, got {}", request.items.len())));
    }
    let mut items = Vec::with_capacity(request.items.len());
    for (index, item) in request.items.into_iter().enumerate() {
        if !(1..=MAX_QTY).contains(&item.qty) {
            return Err(ApiError::BadRequest(format!("item {index}: qty must be an integer from 1 to {MAX_QTY}, got {}", item.qty)));
        }
        items.push((item.sku, item.region, item.qty));
    }
    let answers = serving.availability_batch(&items, serving.now()).await;
    // each entry written straight to the body's bytes (through a `serde_json::Value` each would be
    // built as a tree first), which have room for answers of a few nodes each
    let mut body = Vec::with_capacity(16 + 768 * items.len());
    body.extend_from_slice(b"{\"answers\":[");
    // the sampled answers go to the decision log together, once their JSON is written
    let mut logged = Vec::with_capacity(if serving.decisions.is_some() { items.len() } else { 0 });
    for (index, ((sku, region, qty), answer)) in items.iter().zip(answers).enumerate() {
        if index > 0 {
            body.push(b',');
        }
        match serving.answered(sku, region, *qty, answer, &mut body) {
            Ok(answer) => {
                if serving.sampled().is_some() {
                    logged.push(answer);
                }
            }
            Err(error) => serde_json::to_writer(&mut body, &error.body()).expect("an error body serialises"),
        }
    }
    body.extend_from_slice(b"]}");
    if let Some(log) = serving.decisions.as_deref() {
        log.record(decisions::Entry::Answers { kind: "batch", request_id: id.as_str().to_string(), at: serving.now(), answers: logged });
    }
    Ok(json_response(body))
}

/// A 200 answer of JSON bytes.
pub(crate) fn json_response(body: Vec<u8>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"))], body).into_response()
}

/// Items of one `POST /v1/availability:batch`, at most.
pub const MAX_BATCH: usize = 200;

/// Largest quantity one request may ask for; anything above is a client bug.
pub(crate) const MAX_QTY: i64 = 1_000_000;

/// What an oversell budget may be, in a request or the configuration: a rate from 0.0001 to 1.
pub const OVERSELL_BUDGETS: std::ops::RangeInclusive<f64> = 0.0001..=1.0;

/// An oversell budget: a rate in [`OVERSELL_BUDGETS`].
fn parse_budget(text: &str) -> Result<f64, ApiError> {
    match text.parse::<f64>() {
        Ok(budget) if OVERSELL_BUDGETS.contains(&budget) => Ok(budget),
        _ => Err(ApiError::BadRequest(format!("oversell_budget must be a rate from 0.0001 to 1, e.g. 0.01, got '{text}'"))),
    }
}

fn parse_qty(text: Option<&String>) -> Result<i64, ApiError> {
    let Some(text) = text else { return Ok(1) };
    match text.parse::<i64>() {
        Ok(qty) if (1..=MAX_QTY).contains(&qty) => Ok(qty),
        _ => Err(ApiError::BadRequest(format!("qty must be an integer from 1 to {MAX_QTY}, got '{text}'"))),
    }
}

#[utoipa::path(get, path = "/v1/availability/{sku}", tag = "availability",
    params(("sku" = String, Path, description = "The SKU", example = "SKU-000001"),
           ("region" = String, Query, description = "A shipping region or a country", example = "DE"),
           ("qty" = Option<i64>, Query, description = "Units wanted, 1 to 1000000 (default 1)", minimum = 1, maximum = 1000000),
           ("oversell_budget" = Option<f64>, Query, description = "Answer within this oversell rate among promised orders (0.0001 to 1), as the live model measured it on its validation days, instead of the model's own threshold; with no live model, or one trained without budgets, nothing is promised (said in degraded_reasons)", minimum = 0.0001, maximum = 1.0)),
    responses((status = 200, description = "The decision, explained", body = Availability),
              (status = 404, description = "The catalog does not know the SKU", body = openapi::ErrorBody)))]
async fn availability(
    State(serving): State<Arc<Serving>>,
    id: RequestId,
    Path(sku): Path<String>,
    Query(params): Query<AvailabilityQuery>,
) -> Result<Response, ApiError> {
    let qty = parse_qty(params.qty.as_ref())?;
    let region = params
        .region
        .as_ref()
        .filter(|region| !region.is_empty())
        .ok_or_else(|| ApiError::BadRequest("region is required, e.g. ?region=DE".to_string()))?;
    let budget = params.oversell_budget.as_deref().map(parse_budget).transpose()?;
    let answer = serving.availability_within(&sku, region, qty, budget, serving.now()).await;
    let mut body = Vec::with_capacity(1024);
    let answer = serving.answered(&sku, region, qty, answer, &mut body)?;
    if let Some(log) = serving.sampled() {
        // encoded first, then moved into the log, not copied
        log.record(decisions::Entry::Answers { kind: "availability", request_id: id.as_str().to_string(), at: serving.now(), answers: vec![answer] });
    }
    Ok(json_response(body))
}

/// The query of `GET /v1/availability/{sku}`, read as text: each value is checked where it is
/// used, so that a bad one gets its own message. Parameters it does not name are ignored.
#[derive(Debug, serde::Deserialize)]
struct AvailabilityQuery {
    region: Option<String>,
    qty: Option<String>,
    oversell_budget: Option<String>,
}

impl Serving {
    /// Counts an answer (or its error) in the metrics and appends the answer's JSON to `body`;
    /// gives the answer back, for the decision log.
    fn answered(&self, sku: &str, region: &str, qty: i64, answer: Result<Availability, ApiError>, body: &mut Vec<u8>) -> Result<Availability, ApiError> {
        match answer {
            Ok(answer) => {
                let decision = answer.decision.as_str();
                self.metrics.answers[decision_index(answer.decision)].inc();
                self.metrics.grades[grade_index(answer.grade)].inc();
                if answer.degraded {
                    self.metrics.degraded.inc();
                }
                tracing::debug!(sku, region, qty, decision, "answered");
                encode::answer(body, &answer);
                Ok(answer)
            }
            Err(error) => {
                self.metrics.errors.with_label_values(&[error.code()]).inc();
                tracing::info!(sku, region, qty, %error, "rejected");
                Err(error)
            }
        }
    }

    /// The decision log, when it takes this availability answer (its sample).
    fn sampled(&self) -> Option<&decisions::DecisionLog> {
        self.decisions.as_deref().filter(|log| log.samples())
    }
}

/// The id `harden` gave the request (its `x-request-id`).
pub(crate) fn request_id(headers: &axum::http::HeaderMap) -> &str {
    id_text(headers.get("x-request-id"))
}

/// A request id's text; empty when there is none.
fn id_text(value: Option<&axum::http::HeaderValue>) -> &str {
    value.and_then(|value| value.to_str().ok()).unwrap_or("")
}

/// The id `harden` gave the request, as an extractor: the one header, not a copy of them all.
pub(crate) struct RequestId(Option<axum::http::HeaderValue>);

impl RequestId {
    fn as_str(&self) -> &str {
        id_text(self.0.as_ref())
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<RequestId, Self::Rejection> {
        Ok(RequestId(parts.headers.get("x-request-id").cloned()))
    }
}

/// What `GET /readyz` says: whether answers can be given now, and at which grade at best.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Answers can promise something (the best grade is not `unavailable`).
    pub ready: bool,
    /// The best grade an answer can have now.
    pub grade: Grade,
    pub reasons: Vec<String>,
    pub batch_view: String,
    pub batch_view_age_s: i64,
    pub speed_view: String,
    pub model: Option<String>,
}

impl Serving {
    /// The best grade answers can have now, from what the last refresh saw (no call is made).
    pub fn readiness(&self) -> Readiness {
        let mut grading = Grading::default();
        if let Some(reason) = self.speed_distrust() {
            grading.lower(Grade::Conservative, reason);
        }
        let now = self.now();
        let epoch = self.epoch();
        self.grade_batch_age(&epoch.batch, grading.grade != Grade::Conservative, now, &mut grading);
        let model = self.models.current().map(|model| model.version().to_string());
        if model.is_none() {
            grading.note(format!("no model live: the static safety stock ({} unit(s) per node)", self.models.fallback_safety_stock()));
        }
        Readiness {
            ready: grading.grade != Grade::Unavailable,
            grade: grading.grade,
            reasons: grading.reasons,
            batch_view: epoch.batch.version.clone(),
            batch_view_age_s: (now - epoch.batch.asof) / 1000,
            speed_view: epoch.speed.describe(),
            model,
        }
    }
}

/// 200 when answers can promise something, 503 when not; the body says at which grade and why.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "Answers can promise", body = Readiness), (status = 503, description = "Answers cannot promise now: why", body = Readiness)))]
async fn readyz(State(serving): State<Arc<Serving>>) -> (StatusCode, Json<Readiness>) {
    let readiness = serving.readiness();
    let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(readiness))
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(serving): State<Arc<Serving>>) -> Result<String, ApiError> {
    serving.metrics.target.set(serving.models.current().map_or(0.0, |model| model.manifest.target_oversell_rate));
    let families = serving.metrics.registry.gather();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .map_err(|error| ApiError::internal("encoding the metrics", error))
}

/// Reads the free-form attributes (a JSON object) the schema declares, as rule facts.
fn attribute_facts(sku: &SkuInfo, schema: &Schema) -> Vec<(usize, Value)> {
    let Ok(serde_json::Value::Object(attributes)) = serde_json::from_str::<serde_json::Value>(&sku.attributes) else {
        return Vec::new();
    };
    attributes
        .iter()
        .filter_map(|(name, value)| {
            let slot = schema.slot(&format!("sku.{name}"))?;
            let value = match value {
                serde_json::Value::Bool(b) => Value::Bool(*b),
                serde_json::Value::Number(n) => Value::Number(n.as_f64()?),
                serde_json::Value::String(s) => Value::Text(s.as_str().into()),
                _ => return None,
            };
            Some((slot, value))
        })
        .collect()
}

/// What `POST /v1/events` did.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct EventsAccepted {
    /// Events folded now.
    pub accepted: u64,
    /// Events folded before (same `event_id`): nothing changed.
    pub duplicates: u64,
    /// Events that arrived later than the allowed lateness: not folded.
    pub too_late: u64,
    /// Events that arrived before their SKU's dedup window: not folded.
    pub expired: u64,
    /// Events that reuse the `event_id` of one folded before with other content: not folded.
    pub conflicts: u64,
    /// Malformed, refused, too-late, expired and conflicting items, by position (0-based for a
    /// JSON array, 1-based line for NDJSON), each with the reason: the first [`MAX_REJECTED`].
    /// They are all dead-lettered.
    pub rejected: Vec<Rejected>,
    /// Items rejected in all (listed or not).
    pub rejected_total: u64,
}

/// Rejected items an answer of `POST /v1/events` lists; `rejected_total` counts them all.
pub const MAX_REJECTED: usize = 100;

/// The items of a JSON array, or `None` if it has more than `most`: read no further than that.
fn bounded_array(body: &str, most: usize) -> Result<Option<Vec<serde_json::Value>>, serde_json::Error> {
    use serde::de::{DeserializeSeed, SeqAccess, Visitor};
    struct Bounded(usize);
    impl<'de> Visitor<'de> for Bounded {
        type Value = Option<Vec<serde_json::Value>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a JSON array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                if items.len() == self.0 {
                    return Ok(None);
                }
                items.push(item);
            }
            Ok(Some(items))
        }
    }
    impl<'de> DeserializeSeed<'de> for Bounded {
        type Value = Option<Vec<serde_json::Value>>;
        fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_seq(self)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let items = Bounded(most).deserialize(&mut deserializer)?;
    if items.is_some() {
        deserializer.end()?;
    }
    Ok(items)
}

#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Rejected {
    pub item: u64,
    pub error: String,
}

impl Serving {
    /// The one ingestion path of events accepted over HTTP: appended to the intake (the stream
    /// every fold worker and the archiver read), if any, then folded into the epoch's speed view.
    /// One outcome per event.
    pub(crate) async fn ingest(&self, epoch: &Epoch, events: &[Event]) -> Result<Vec<sellable_core::Outcome>, ApiError> {
        if let Some(intake) = &self.intake {
            // what the view knows already (a retried body) is not appended again: the lake gets each
            // event once; not appended, not accepted: the client retries the whole body
            let known = epoch.speed.known(events).await.map_err(ApiError::unavailable)?;
            let new: Vec<Event> = events.iter().zip(known).filter(|(_, known)| !known).map(|(event, _)| event.clone()).collect();
            intake.append(&new).await.map_err(|error| ApiError::Unavailable(format!("the ingestion {} did not take the events ({error}); nothing was accepted", intake.describe())))?;
        }
        epoch.speed.fold(events, "http").await.map_err(ApiError::unavailable)
    }

    /// The door of `POST /v1/events`: stamps each decoded event's arrival with the server's
    /// clock, then refuses (in place, with the reason) those from the future or for a SKU or node
    /// the catalog does not know (the SKUs are looked up in the epoch's published batch view).
    /// Returns how many it refused.
    async fn admit(&self, epoch: &Epoch, items: &mut [(u64, String, Result<Event, String>)]) -> Result<u64, ApiError> {
        let now = self.now();
        let door = sellable_core::Door { max_skew_ms: sellable_core::door::DEFAULT_MAX_SKEW_MS, known: None };
        let skus: std::collections::BTreeSet<&str> = items.iter().filter_map(|(_, _, decoded)| Some(decoded.as_ref().ok()?.sku.as_str())).collect();
        let skus: Vec<&str> = skus.into_iter().collect();
        let found = epoch.speed.skus_known(&skus).await.map_err(ApiError::unavailable)?;
        let unknown: std::collections::HashSet<String> = skus.iter().zip(found).filter(|(_, found)| !found).map(|(sku, _)| sku.to_string()).collect();
        let mut refused = 0;
        for (_, _, decoded) in items.iter_mut() {
            if let Ok(event) = decoded {
                sellable_core::Door::stamp(event, now);
                let named = if unknown.contains(&event.sku) {
                    Err(sellable_core::Refusal::UnknownSku(event.sku.clone()))
                } else if !self.nodes.contains_key(&event.node) {
                    Err(sellable_core::Refusal::UnknownNode(event.node.clone()))
                } else {
                    Ok(())
                };
                if let Err(refusal) = door.check(event, now).and(named) {
                    self.metrics.events.with_label_values(&[refusal.label()]).inc();
                    refused += 1;
                    *decoded = Err(refusal.to_string());
                }
            }
        }
        Ok(refused)
    }
}

/// Folds events posted as a JSON array or as NDJSON into the speed view; 202 with what happened
/// to each. Each event's `arrived` is the server's clock (a client's value is dropped); events
/// from the future or for a SKU or node the catalog does not know are refused at the door.
/// Malformed, refused, too-late, expired and conflicting items are listed, dead-lettered and
/// skipped; the rest are folded.
#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body(description = "Events as a JSON array, or NDJSON (one event per line)", content(
        (Vec<openapi::EventBody> = "application/json"),
        (String = "application/x-ndjson", example = json!("{\"event_id\":\"e-1\",\"ts\":1767225600000,\"sku\":\"SKU-000001\",\"node\":\"ST-0001\",\"kind\":\"receipt\",\"qty\":5}")))),
    responses((status = 202, description = "What happened to each event", body = EventsAccepted)))]
async fn post_events(
    State(serving): State<Arc<Serving>>,
    axum::Extension(limits): axum::Extension<Arc<door::Limits>>,
    body: String,
) -> Result<(StatusCode, Json<EventsAccepted>), ApiError> {
    let most = limits.events_per_request;
    let too_many = || ApiError::TooLarge(format!("at most {most} events per request; send the rest in another"));
    // (item number, raw text, decoded event or the error)
    let mut items: Vec<(u64, String, Result<Event, String>)> = Vec::new();
    if body.trim_start().starts_with('[') {
        let values = bounded_array(&body, most)
            .map_err(|error| ApiError::BadRequest(format!("the body is not a JSON array of events: {error}")))?
            .ok_or_else(too_many)?;
        for (item, value) in values.iter().enumerate() {
            let raw = value.to_string();
            let decoded = sellable_core::event::decode_json(&raw).map_err(|error| error.to_string());
            items.push((item as u64, raw, decoded));
        }
    } else {
        let lines = body.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
        if lines.clone().nth(most).is_some() {
            return Err(too_many());
        }
        for (index, line) in lines {
            let decoded = sellable_core::event::decode_json(line).map_err(|error| error.to_string());
            items.push((index as u64 + 1, line.to_string(), decoded));
        }
        if !items.is_empty() && items.iter().all(|(_, raw, decoded)| decoded.is_err() && !raw.trim_start().starts_with('{')) {
            return Err(ApiError::BadRequest("the body is neither a JSON array of events nor NDJSON (one event object per line)".to_string()));
        }
    }
    let epoch = serving.epoch();
    let refused = serving.admit(&epoch, &mut items).await?;
    let events: Vec<Event> = items.iter().filter_map(|(_, _, decoded)| decoded.as_ref().ok().cloned()).collect();
    let speed = epoch.speed.clone();
    let outcomes = serving.ingest(&epoch, &events).await?;
    let stats = sellable_core::FoldStats::of(&outcomes);
    let mut outcomes = outcomes.into_iter();
    let mut dead = Vec::new();
    let mut rejected = Vec::new();
    let mut rejected_total = 0u64;
    for (item, raw, decoded) in items {
        let error = match decoded {
            Err(error) => error,
            Ok(event) => {
                let outcome = outcomes.next();
                match outcome.and_then(|outcome| outcome.refusal(&event, speed.config())) {
                    Some(reason) => reason,
                    None => {
                        if outcome == Some(sellable_core::Outcome::Applied) && event.order_id.is_some() && matches!(event.kind, EventKind::Ship | EventKind::Short) {
                            serving.metrics.outcomes.with_label_values(&[event.kind.as_str()]).inc();
                        }
                        continue;
                    }
                }
            }
        };
        if rejected.len() < MAX_REJECTED {
            rejected.push(Rejected { item, error: error.clone() });
        }
        rejected_total += 1;
        dead.push(sellable_core::DeadLetter { entry: format!("http item {item}"), raw, error, ..Default::default() });
    }
    if !dead.is_empty() {
        tracing::warn!(rejected = dead.len(), "posted events refused");
        speed.dead_letter(&dead).await.map_err(ApiError::unavailable)?;
    }
    let malformed = rejected_total - stats.too_late - stats.expired - stats.conflicts - refused;
    let counts = [
        ("accepted", stats.applied),
        ("duplicate", stats.duplicates),
        ("too_late", stats.too_late),
        ("expired", stats.expired),
        ("conflict", stats.conflicts),
        ("malformed", malformed),
    ];
    for (outcome, count) in counts {
        serving.metrics.events.with_label_values(&[outcome]).inc_by(count);
    }
    let accepted = EventsAccepted {
        accepted: stats.applied,
        duplicates: stats.duplicates,
        too_late: stats.too_late,
        expired: stats.expired,
        conflicts: stats.conflicts,
        rejected,
        rejected_total,
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[derive(Debug, serde::Deserialize)]
struct FeaturesQuery {
    node: String,
    #[serde(default = "one")]
    qty: i64,
}

fn one() -> i64 {
    1
}

/// The feature vector the model would see for an order, by name (`null` for missing).
#[utoipa::path(get, path = "/v1/features/{sku}", tag = "availability",
    params(("sku" = String, Path, description = "The SKU"),
           ("node" = String, Query, description = "The node", example = "ST-0001"),
           ("qty" = Option<i64>, Query, description = "Units of the order (default 1)")),
    responses((status = 200, description = "The model's features by name, null where missing", body = Object),
              (status = 404, description = "The catalog does not know the SKU", body = openapi::ErrorBody)))]
async fn features(
    State(serving): State<Arc<Serving>>,
    Path(sku): Path<String>,
    Query(query): Query<FeaturesQuery>,
) -> Result<Json<serde_json::Map<String, serde_json::Value>>, ApiError> {
    let values = serving.features(&sku, &query.node, query.qty, serving.now()).await?;
    let named = sellable_core::features::names().into_iter().zip(values);
    Ok(Json(named.map(|(name, value)| (name.to_string(), serde_json::json!(value.is_finite().then_some(value)))).collect()))
}

#[utoipa::path(get, path = "/v1/model", tag = "operations", responses((status = 200, description = "The live and shadow models", body = ModelStatus)))]
async fn model_status(State(serving): State<Arc<Serving>>) -> Json<ModelStatus> {
    Json(serving.models.status())
}

/// Loads the registry's live version now instead of at the next poll.
#[utoipa::path(post, path = "/v1/model:reload", tag = "operations",
    responses((status = 200, description = "The registry's live version was loaded", body = ModelStatus),
              (status = 422, description = "It does not load: the last good model keeps serving", body = openapi::ErrorBody)))]
async fn model_reload(State(serving): State<Arc<Serving>>) -> Result<Json<ModelStatus>, ApiError> {
    let book = serving.models.clone();
    let reloaded = tokio::task::spawn_blocking(move || book.reload())
        .await
        .map_err(|error| ApiError::internal("reloading the model", error))?;
    match reloaded {
        Ok(_) => Ok(Json(serving.models.status())),
        Err(error) => Err(ApiError::InvalidModel(error.to_string())),
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct RulesStatus {
    live: Option<String>,
    rules: usize,
    directory: Option<String>,
    last_reload: Option<rules::ReloadStatus>,
}

#[utoipa::path(get, path = "/v1/rules", tag = "rules", responses((status = 200, description = "The live rule set and the last reload", body = RulesStatus)))]
async fn rules_status(State(serving): State<Arc<Serving>>) -> Json<RulesStatus> {
    let live = serving.rules.current();
    Json(RulesStatus {
        live: live.as_ref().map(|r| format!("{}@{}", r.name, r.version)),
        rules: live.map_or(0, |r| r.len()),
        directory: serving.rules.dir().map(|d| d.display().to_string()),
        last_reload: serving.rules.status(),
    })
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ReloadQuery {
    /// Load the files even if they drop a whole ruleset or most rules.
    #[serde(default)]
    force: bool,
}

/// Loads the rule directory now; a reload that would drop a whole ruleset or most rules is
/// refused (409) unless `?force=true`.
#[utoipa::path(post, path = "/v1/rules:reload", tag = "rules", params(ReloadQuery),
    responses((status = 200, description = "The directory was loaded and is live", body = RulesStatus),
              (status = 409, description = "It would drop a whole ruleset or most rules: the live rules keep serving", body = openapi::ErrorBody),
              (status = 422, description = "It does not load: the last good rules keep serving", body = openapi::ErrorBody)))]
async fn rules_reload(State(serving): State<Arc<Serving>>, Query(query): Query<ReloadQuery>) -> Result<Json<RulesStatus>, ApiError> {
    let book = serving.rules.clone();
    let reloaded = tokio::task::spawn_blocking(move || book.reload(query.force))
        .await
        .map_err(|error| ApiError::internal("reloading the rules", error))?;
    match reloaded {
        Ok(_) => Ok(rules_status(State(serving)).await),
        Err(error @ RulesError::Dropping(_)) => Err(ApiError::Conflict(error.to_string())),
        Err(error) => Err(ApiError::InvalidRules(error.to_string())),
    }
}

/// Checks a rule file sent as the body (plain text); `?name=` names it in diagnostics. It is
/// parsed and its tests run on a blocking thread, within the write timeout.
#[utoipa::path(post, path = "/v1/rules:check", tag = "rules",
    params(("name" = Option<String>, Query, description = "The file's name in diagnostics")),
    request_body(content = String, content_type = "text/plain", description = "A rule file"),
    responses((status = 200, description = "Its diagnostics and test results", body = openapi::RulesCheck)))]
async fn rules_check(
    State(serving): State<Arc<Serving>>,
    Query(params): Query<HashMap<String, String>>,
    body: String,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = params.get("name").cloned().unwrap_or_else(|| "request.rules".to_string());
    let rules = serving.rules.clone();
    tokio::task::spawn_blocking(move || check_rules(name, body, rules.schema()))
        .await
        .map(Json)
        .map_err(|error| ApiError::internal("checking a rule file", error))
}

/// The diagnostics of one rule file, and the results of its tests when it loads.
fn check_rules(name: String, text: String, schema: &Schema) -> serde_json::Value {
    let loaded = sellable_dsl::load(&[sellable_dsl::Source { name, text }], schema);
    let diagnostics: Vec<serde_json::Value> = loaded
        .diagnostics
        .iter()
        .map(|d| {
            let mut json = serde_json::to_value(d).unwrap_or_default();
            json["rendered"] = serde_json::Value::String(d.to_string());
            json
        })
        .collect();
    let tests: Vec<serde_json::Value> = loaded
        .ruleset
        .as_ref()
        .map(|ruleset| ruleset.run_tests())
        .unwrap_or_default()
        .into_iter()
        .map(|t| serde_json::json!({ "name": t.name, "line": t.line, "passed": t.passed(), "failures": t.failures }))
        .collect();
    serde_json::json!({ "ok": loaded.ruleset.is_some(), "diagnostics": diagnostics, "tests": tests })
}

/// A warning logged at most once a second, with the number of answers it concerned since the
/// last line: a part that fails under load would otherwise log a line per answer, and the lines
/// would take the cores the answers need (each answer says why in its reasons, and
/// `sellable_degraded_answers_total` counts them).
struct Throttled {
    /// The second of the last line, since the epoch.
    last: std::sync::atomic::AtomicI64,
    /// Answers since the last line.
    since: std::sync::atomic::AtomicU64,
}

impl Throttled {
    const fn new() -> Throttled {
        Throttled { last: std::sync::atomic::AtomicI64::new(0), since: std::sync::atomic::AtomicU64::new(0) }
    }

    fn warn(&self, problem: &str, message: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        self.since.fetch_add(1, Relaxed);
        let second = chrono::Utc::now().timestamp();
        let last = self.last.load(Relaxed);
        if second > last && self.last.compare_exchange(last, second, Relaxed, Relaxed).is_ok() {
            let answers = self.since.swap(0, Relaxed);
            tracing::warn!(%problem, answers, "{message}");
        }
    }
}

#[cfg(test)]
mod hot_rows_tests {
    use std::sync::Arc;

    use sellable_core::{SkuInfo, SkuRow};

    fn row(sku: &str) -> Arc<SkuRow> {
        Arc::new(SkuRow { info: SkuInfo { sku: sku.to_string(), ..Default::default() }, ..Default::default() })
    }

    #[test]
    fn past_the_bound_each_row_kept_lets_the_oldest_go_and_a_row_kept_already_stays() {
        let mut hot = super::HotRows::default();
        for n in 0..3 {
            assert!(hot.keep(&format!("SKU-{n}"), &row(&format!("SKU-{n}")), 3).is_none());
        }
        // kept already: nothing is replaced or let go
        assert!(hot.keep("SKU-1", &row("another"), 3).is_none());
        assert_eq!(hot.rows["SKU-1"].info.sku, "SKU-1");
        let let_go = hot.keep("SKU-3", &row("SKU-3"), 3).expect("the oldest goes");
        assert_eq!(let_go.info.sku, "SKU-0");
        assert_eq!(hot.keep("SKU-4", &row("SKU-4"), 3).map(|row| row.info.sku.clone()).as_deref(), Some("SKU-1"));
        let mut kept: Vec<&str> = hot.rows.keys().map(|sku| &**sku).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["SKU-2", "SKU-3", "SKU-4"]);
        assert_eq!(hot.order.len(), 3);
    }
}

#[cfg(test)]
mod throttled_tests {
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn a_warning_repeated_within_a_second_is_logged_once_then_counted() {
        let throttled = super::Throttled::new();
        let started = chrono::Utc::now().timestamp();
        for _ in 0..1_000 {
            throttled.warn("the speed view did not answer", "answering without the speed view");
        }
        // the first call logged (and set the second of its line); each line resets the count,
        // so what is left is the calls after the last line: not every call logged
        assert!(throttled.last.load(Relaxed) >= started);
        assert!(throttled.since.load(Relaxed) > 0);
    }
}
