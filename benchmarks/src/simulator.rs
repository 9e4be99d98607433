//! The marketplace simulator behind `sellable gen`: a discrete-event simulation of SKUs stocked at
//! warehouses, stores and sellers, deterministic from its seed.
//!
//! What it models, and why each piece is there:
//! - **Demand**: Zipf-like popularity over SKUs, a daily cycle and random bursts (several times the
//!   base rate for up to an hour; tens of times for a flash sale, `burst_factor`, with stock
//!   levels planned for it). Orders reserve at the node with the most recorded ATP.
//! - **Truth vs records**: every sku×node has a true physical stock and the stock its events
//!   imply. Hidden shrink makes units vanish without an event; sellers may over-report in feeds.
//!   When a pick finds fewer units than reserved the order ends in `short` (an oversell) and the
//!   node recounts. Nodes differ in hidden ways (shrink rate, over-reporting, lag) that a model
//!   can learn from history.
//! - **Delays**: events carry `arrived` as well as `ts`; scans from stores and seller feeds lag,
//!   and a few events arrive later than any sane lateness allows. Events are written in arrival
//!   order, as a stream would deliver them.
//!
//! Memory stays flat whatever `--days`: the agenda holds a bounded number of future actions per
//! sku×node and the write buffer only what has happened but not yet arrived.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, Zipf};
use sellable_core::catalog::{nodes_to_batch, skus_to_batch};
use sellable_core::event::events_to_batch;
use sellable_core::{Event, EventKind, Millis, NodeInfo, NodeKind, SkuInfo};

const SECOND: Millis = 1_000;
const MINUTE: Millis = 60 * SECOND;
const HOUR: Millis = 60 * MINUTE;
const DAY: Millis = 24 * HOUR;

/// How many units a flash sale's cached availability lags the checkouts by.
const FLASH_SALE_LAG_UNITS: i64 = 4;

/// 2026-01-01T00:00:00Z: the default start, so a seed alone fixes the output.
pub const DEFAULT_START: Millis = 1_767_225_600_000;

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub skus: usize,
    pub nodes: usize,
    pub days: f64,
    pub start: Millis,
    /// Mean orders per SKU per day before popularity, cycle and bursts.
    pub orders_per_sku_day: f64,
    /// How many times the base rate demand runs at during a burst (a flash sale: tens).
    pub burst_factor: f64,
    /// The nodes' hidden dynamics.
    pub dynamics: Dynamics,
    pub show_progress: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            seed: 42,
            skus: 1_000,
            nodes: 40,
            days: 7.0,
            start: DEFAULT_START,
            orders_per_sku_day: 6.0,
            burst_factor: 5.0,
            dynamics: Dynamics::default(),
            show_progress: false,
        }
    }
}

/// How the nodes behave where no event shows it: what changes from one marketplace to another.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dynamics {
    /// Multiplies every node's hidden shrink (units lost without an event).
    pub shrink_scale: f64,
    /// The share of sellers whose feeds over-report what they have (phantom stock).
    pub over_reporting_sellers: f64,
    /// Multiplies the units an over-reporting seller's feed adds (1 to 3 by default).
    pub over_report_scale: f64,
    /// Multiplies every node's delay between an event and its arrival (slower feeds).
    pub lag_scale: f64,
    /// Multiplies the time between a store's or a warehouse's cycle counts.
    pub count_scale: f64,
}

impl Default for Dynamics {
    fn default() -> Dynamics {
        Dynamics { shrink_scale: 1.0, over_reporting_sellers: 0.25, over_report_scale: 1.0, lag_scale: 1.0, count_scale: 1.0 }
    }
}

impl Dynamics {
    /// Another marketplace: twice the hidden shrink (phantom stock) at stores and warehouses,
    /// caught by cycle counts five times as frequent; fewer sellers over-reporting; every feed
    /// three times slower. Its short rate is near 1%.
    pub fn quiet_with_phantom_stock() -> Dynamics {
        Dynamics { shrink_scale: 2.0, over_reporting_sellers: 0.1, over_report_scale: 1.0, lag_scale: 3.0, count_scale: 0.2 }
    }
}

impl SimConfig {
    /// Units stocked for a level drawn for the default bursts: stock is planned for the demand a
    /// burst brings, so it scales with the burst factor past the default's.
    fn stocked(&self, units: i64) -> i64 {
        (units as f64 * (self.burst_factor / 20.0).max(1.0)).round() as i64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid simulation config: {0}")]
    Config(String),
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
}

/// What a run produced, for the CLI and for tests.
#[derive(Debug, Clone)]
pub struct SimSummary {
    pub events: u64,
    pub orders: u64,
    pub shorts: u64,
    pub late_events: u64,
    pub end: Millis,
    pub paths: SimPaths,
}

#[derive(Debug, Clone)]
pub struct SimPaths {
    pub skus: PathBuf,
    pub nodes: PathBuf,
    pub events: PathBuf,
    pub truth: PathBuf,
}

impl SimPaths {
    pub fn in_dir(dir: &Path) -> SimPaths {
        SimPaths {
            skus: dir.join("skus.parquet"),
            nodes: dir.join("nodes.parquet"),
            events: dir.join("events.parquet"),
            truth: dir.join("truth.parquet"),
        }
    }
}

/// Hidden traits of a node: what a model may learn from history, never written out.
struct NodeTraits {
    info: NodeInfo,
    /// Units lost per sku×node per day without any event.
    shrink_per_day: f64,
    /// Units a seller's feed adds to the truth.
    over_report: i64,
    /// Typical delay between an event at the node and its arrival.
    lag: Millis,
    count_every: Millis,
}

struct Pair {
    sku: usize,
    node: usize,
    truth: i64,
    /// What the events imply, as a naive observer sees it.
    recorded: i64,
    reserved: i64,
    held: i64,
    replenishing: bool,
}

impl Pair {
    fn recorded_atp(&self) -> i64 {
        self.recorded - self.reserved - self.held
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Order,
    Pick { pair: usize, order: u64, qty: i64 },
    Cancel { pair: usize, order: u64, qty: i64 },
    Return { pair: usize, order: u64, qty: i64 },
    Count { pair: usize, scheduled: bool },
    Shrink { pair: usize },
    Receipt { pair: usize, qty: i64 },
    Damage { pair: usize },
    Hold { pair: usize, qty: i64, release: bool },
    Burst,
}

struct Simulator {
    config: SimConfig,
    rng: ChaCha8Rng,
    nodes: Vec<NodeTraits>,
    sku_ids: Vec<String>,
    pairs: Vec<Pair>,
    pairs_of_sku: Vec<Vec<usize>>,
    agenda: BinaryHeap<Reverse<(Millis, u64, Action)>>,
    sequence: u64,
    next_event: u64,
    next_order: u64,
    burst_until: Millis,
    popularity: Zipf<f64>,
    /// Happened, not yet arrived: ordered by arrival.
    in_flight: BinaryHeap<Reverse<(Millis, u64, EventSlot)>>,
    writer: EventWriter,
    summary: Counts,
}

#[derive(Default)]
struct Counts {
    orders: u64,
    shorts: u64,
    late: u64,
}

/// An event parked in the arrival queue (ordered only by the queue's key).
struct EventSlot(Event);

impl PartialEq for EventSlot {
    fn eq(&self, other: &Self) -> bool {
        self.0.event_id == other.0.event_id
    }
}
impl Eq for EventSlot {}
impl PartialOrd for EventSlot {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for EventSlot {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.event_id.cmp(&other.0.event_id)
    }
}

/// Streams events to Parquet in row groups of bounded size.
struct EventWriter {
    path: PathBuf,
    writer: ArrowWriter<File>,
    buffer: Vec<Event>,
    written: u64,
}

const WRITE_BATCH: usize = 65_536;

impl EventWriter {
    fn create(path: &Path) -> Result<EventWriter, SimError> {
        let file = File::create(path).map_err(|source| SimError::Io { path: path.to_path_buf(), source })?;
        let writer = ArrowWriter::try_new(file, sellable_core::event::event_schema(), Some(writer_properties()))
            .map_err(|source| SimError::Parquet { path: path.to_path_buf(), source })?;
        Ok(EventWriter { path: path.to_path_buf(), writer, buffer: Vec::with_capacity(WRITE_BATCH), written: 0 })
    }

    fn push(&mut self, event: Event) -> Result<(), SimError> {
        self.buffer.push(event);
        if self.buffer.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SimError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let batch = events_to_batch(&self.buffer);
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        self.writer.write(&batch).map_err(|source| SimError::Parquet { path: self.path.clone(), source })
    }

    fn finish(mut self) -> Result<u64, SimError> {
        self.flush()?;
        self.writer.close().map_err(|source| SimError::Parquet { path: self.path.clone(), source })?;
        Ok(self.written)
    }
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder().set_compression(Compression::SNAPPY).build()
}

fn write_batch(path: &Path, batch: &RecordBatch) -> Result<(), SimError> {
    let parquet_error = |source| SimError::Parquet { path: path.to_path_buf(), source };
    let file = File::create(path).map_err(|source| SimError::Io { path: path.to_path_buf(), source })?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(writer_properties())).map_err(parquet_error)?;
    writer.write(batch).map_err(parquet_error)?;
    writer.close().map_err(parquet_error)?;
    Ok(())
}

const COUNTRIES: [(&str, &str); 6] = [("EU", "DE"), ("EU", "FR"), ("EU", "IT"), ("EU", "ES"), ("EU", "NL"), ("NA", "US")];

/// Runs a simulation and writes `skus`, `nodes`, `events` and `truth` Parquet files into `dir`.
pub fn generate(config: &SimConfig, dir: &Path) -> Result<SimSummary, SimError> {
    // negated, so that NaN is refused too
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    if config.skus == 0 || config.nodes == 0 || !(config.days > 0.0) || !(config.orders_per_sku_day >= 0.0) {
        return Err(SimError::Config(format!(
            "skus ({}), nodes ({}) and days ({}) must be positive",
            config.skus, config.nodes, config.days
        )));
    }
    let dynamics = config.dynamics;
    let scale = |value: f64| (0.0..=100.0).contains(&value);
    if !(scale(dynamics.shrink_scale) && (0.0..=1.0).contains(&dynamics.over_reporting_sellers) && scale(dynamics.over_report_scale) && scale(dynamics.lag_scale) && dynamics.lag_scale > 0.0 && scale(dynamics.count_scale) && dynamics.count_scale > 0.0) {
        return Err(SimError::Config(format!("dynamics out of range (scales 0 to 100, the lag's and the counts' above 0; over-reporting share 0 to 1): {dynamics:?}")));
    }
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    if !(config.burst_factor >= 1.0 && config.burst_factor <= 1000.0) {
        return Err(SimError::Config(format!("the burst factor must be from 1 to 1000, got {}", config.burst_factor)));
    }
    std::fs::create_dir_all(dir).map_err(|source| SimError::Io { path: dir.to_path_buf(), source })?;
    let paths = SimPaths::in_dir(dir);
    let mut simulator = Simulator::new(config.clone(), &paths)?;
    write_batch(&paths.nodes, &nodes_to_batch(&simulator.nodes.iter().map(|n| n.info.clone()).collect::<Vec<_>>()))?;
    write_batch(&paths.skus, &skus_to_batch(&simulator.catalog()))?;
    let end = simulator.run()?;
    write_batch(&paths.truth, &simulator.truth_batch())?;
    let Counts { orders, shorts, late } = simulator.summary;
    let events = simulator.writer.finish()?;
    Ok(SimSummary { events, orders, shorts, late_events: late, end, paths })
}

impl Simulator {
    fn new(config: SimConfig, paths: &SimPaths) -> Result<Simulator, SimError> {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let nodes: Vec<NodeTraits> = (0..config.nodes).map(|index| node_traits(index, config.dynamics, &mut rng)).collect();
        let sku_ids: Vec<String> = (0..config.skus).map(|index| format!("SKU-{index:06}")).collect();
        let mut pairs = Vec::new();
        let mut pairs_of_sku = vec![Vec::new(); config.skus];
        for (sku, sku_pairs) in pairs_of_sku.iter_mut().enumerate() {
            let stocked_at = rng.gen_range(1..=4.min(config.nodes));
            let mut chosen: Vec<usize> = Vec::new();
            while chosen.len() < stocked_at {
                let node = rng.gen_range(0..config.nodes);
                if !chosen.contains(&node) {
                    chosen.push(node);
                }
            }
            chosen.sort();
            for node in chosen {
                let truth = config.stocked(rng.gen_range(0..25));
                sku_pairs.push(pairs.len());
                pairs.push(Pair { sku, node, truth, recorded: truth, reserved: 0, held: 0, replenishing: false });
            }
        }
        let popularity = Zipf::new(config.skus as u64, 1.1).map_err(|e| SimError::Config(e.to_string()))?;
        Ok(Simulator {
            rng,
            nodes,
            sku_ids,
            pairs,
            pairs_of_sku,
            agenda: BinaryHeap::new(),
            sequence: 0,
            next_event: 0,
            next_order: 0,
            burst_until: 0,
            popularity,
            in_flight: BinaryHeap::new(),
            writer: EventWriter::create(&paths.events)?,
            summary: Counts::default(),
            config,
        })
    }

    fn catalog(&mut self) -> Vec<SkuInfo> {
        let categories = ["toys", "electronics", "home", "garden", "beauty", "grocery", "sports"];
        (0..self.config.skus)
            .map(|index| {
                let category = categories[self.rng.gen_range(0..categories.len())];
                let hazmat = self.rng.gen_bool(if category == "beauty" { 0.2 } else { 0.03 });
                SkuInfo {
                    sku: self.sku_ids[index].clone(),
                    category: category.to_string(),
                    seller: self.rng.gen_bool(0.3).then(|| format!("S-{}", 1000 + self.rng.gen_range(0..50))),
                    hazmat,
                    price: (self.rng.gen_range(100..20_000) as f64) / 100.0,
                    attributes: format!(r#"{{"fragile":{}}}"#, self.rng.gen_bool(0.1)),
                }
            })
            .collect()
    }

    fn schedule(&mut self, at: Millis, action: Action) {
        self.sequence += 1;
        self.agenda.push(Reverse((at, self.sequence, action)));
    }

    fn end(&self) -> Millis {
        self.config.start + (self.config.days * DAY as f64) as Millis
    }

    fn run(&mut self) -> Result<Millis, SimError> {
        let start = self.config.start;
        let end = self.end();
        let progress = if self.config.show_progress {
            let bar = ProgressBar::new(((end - start) / MINUTE) as u64);
            bar.set_style(
                ProgressStyle::with_template("gen {bar:40} {percent:>3}% simulated {msg} ({eta} left)")
                    .expect("valid template"),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        // Every sku×node starts with a count, then the recurring processes.
        for pair in 0..self.pairs.len() {
            self.schedule(start, Action::Count { pair, scheduled: true });
            let shrink = self.shrink_delay(pair);
            self.schedule(start + shrink, Action::Shrink { pair });
            let damage = self.rng.gen_range(0..30 * DAY);
            self.schedule(start + damage, Action::Damage { pair });
            if self.rng.gen_bool(0.05) {
                let at = start + self.rng.gen_range(0..(end - start).max(1));
                let qty = self.rng.gen_range(1..=3);
                self.schedule(at, Action::Hold { pair, qty, release: false });
            }
        }
        self.schedule(start, Action::Order);
        let first_burst = self.rng.gen_range(0..DAY);
        self.schedule(start + first_burst, Action::Burst);

        while let Some(Reverse((at, _, action))) = self.agenda.pop() {
            if at > end {
                break;
            }
            self.release_arrived(at)?;
            if at / MINUTE != (at - 1) / MINUTE {
                progress.set_position(((at - start) / MINUTE) as u64);
                progress.set_message(format!("{} events", self.writer.written + self.writer.buffer.len() as u64));
            }
            self.step(at, action)?;
        }
        self.release_arrived(Millis::MAX)?;
        progress.finish_and_clear();
        Ok(end)
    }

    fn release_arrived(&mut self, now: Millis) -> Result<(), SimError> {
        while let Some(Reverse((arrived, _, _))) = self.in_flight.peek() {
            if *arrived > now {
                break;
            }
            let Reverse((_, _, EventSlot(event))) = self.in_flight.pop().expect("peeked");
            self.writer.push(event)?;
        }
        Ok(())
    }

    fn emit(&mut self, at: Millis, pair: usize, kind: EventKind, qty: i64, order: Option<u64>) {
        let node = &self.nodes[self.pairs[pair].node];
        // Checkout writes reservations itself; everything else comes from the node.
        let delay = match kind {
            EventKind::Reserve | EventKind::Release => self.rng.gen_range(0..200),
            _ => {
                let base = node.lag;
                let scan_extra = if kind == EventKind::Count { base * 2 } else { 0 };
                self.rng.gen_range(base / 4..=base + scan_extra)
            }
        };
        // A few events get stuck for days (a store's scanner offline): later than any lateness.
        let stuck = self.rng.gen_bool(0.0005);
        let delay = if stuck { self.rng.gen_range(DAY..3 * DAY) } else { delay };
        self.summary.late += stuck as u64;
        self.next_event += 1;
        let event = Event {
            event_id: format!("E{:010}", self.next_event),
            ts: at,
            sku: self.sku_ids[self.pairs[pair].sku].clone(),
            node: node.info.node.clone(),
            kind,
            qty,
            order_id: order.map(|order| format!("O{order:09}")),
            arrived: Some(at + delay),
        };
        self.in_flight.push(Reverse((at + delay, self.next_event, EventSlot(event))));
    }

    fn shrink_delay(&mut self, pair: usize) -> Millis {
        let rate = self.nodes[self.pairs[pair].node].shrink_per_day;
        let days = Exp::new(rate.max(1e-6)).expect("positive rate").sample(&mut self.rng);
        (days * DAY as f64).min(1e15) as Millis
    }

    fn demand_rate_per_ms(&self, at: Millis) -> f64 {
        let base = self.config.orders_per_sku_day * self.config.skus as f64 / DAY as f64;
        let hour = ((at % DAY) / HOUR) as f64;
        let cycle = 1.0 + 0.6 * ((hour - 14.0) / 24.0 * std::f64::consts::TAU).cos();
        let burst = if at < self.burst_until { self.config.burst_factor } else { 1.0 };
        base * cycle * burst
    }

    fn step(&mut self, at: Millis, action: Action) -> Result<(), SimError> {
        match action {
            Action::Order => {
                self.place_order(at);
                let rate = self.demand_rate_per_ms(at);
                if rate > 0.0 {
                    let wait = Exp::new(rate).expect("positive rate").sample(&mut self.rng).ceil() as Millis;
                    self.schedule(at + wait.max(1), Action::Order);
                }
            }
            Action::Burst => {
                self.burst_until = at + self.rng.gen_range(10 * MINUTE..HOUR);
                let next = self.rng.gen_range(6 * HOUR..2 * DAY);
                self.schedule(at + next, Action::Burst);
            }
            Action::Pick { pair, order, qty } => {
                let state = &mut self.pairs[pair];
                state.reserved -= qty;
                if state.truth >= qty {
                    state.truth -= qty;
                    state.recorded -= qty;
                    self.emit(at, pair, EventKind::Ship, qty, Some(order));
                    if self.rng.gen_bool(0.06) {
                        let after = self.rng.gen_range(2 * DAY..10 * DAY);
                        self.schedule(at + after, Action::Return { pair, order, qty });
                    }
                    self.maybe_replenish(at, pair);
                } else {
                    self.summary.shorts += 1;
                    self.emit(at, pair, EventKind::Short, qty, Some(order));
                    let after = self.rng.gen_range(10 * MINUTE..2 * HOUR);
                    self.schedule(at + after, Action::Count { pair, scheduled: false });
                }
            }
            Action::Cancel { pair, order, qty } => {
                self.pairs[pair].reserved -= qty;
                self.emit(at, pair, EventKind::Release, qty, Some(order));
            }
            Action::Return { pair, order, qty } => {
                self.pairs[pair].truth += qty;
                self.pairs[pair].recorded += qty;
                self.emit(at, pair, EventKind::Return, qty, Some(order));
            }
            Action::Count { pair, scheduled } => {
                let node = &self.nodes[self.pairs[pair].node];
                let (kind, bias, every) = match node.info.kind {
                    NodeKind::Seller => (EventKind::Feed, node.over_report, node.count_every),
                    _ => (EventKind::Count, 0, node.count_every),
                };
                let reported = (self.pairs[pair].truth + bias).max(0);
                self.pairs[pair].recorded = reported;
                self.emit(at, pair, kind, reported, None);
                if scheduled {
                    let jitter = self.rng.gen_range(0..every / 4 + 1);
                    self.schedule(at + every + jitter, Action::Count { pair, scheduled: true });
                }
                self.maybe_replenish(at, pair);
            }
            Action::Shrink { pair } => {
                let state = &mut self.pairs[pair];
                state.truth = (state.truth - 1).max(0);
                let next = self.shrink_delay(pair);
                self.schedule(at + next, Action::Shrink { pair });
            }
            Action::Receipt { pair, qty } => {
                let state = &mut self.pairs[pair];
                state.truth += qty;
                state.recorded += qty;
                state.replenishing = false;
                self.emit(at, pair, EventKind::Receipt, qty, None);
            }
            Action::Damage { pair } => {
                if self.pairs[pair].truth > 0 {
                    self.pairs[pair].truth -= 1;
                    self.pairs[pair].recorded -= 1;
                    self.emit(at, pair, EventKind::Adjust, -1, None);
                }
                let next = self.rng.gen_range(5 * DAY..40 * DAY);
                self.schedule(at + next, Action::Damage { pair });
            }
            Action::Hold { pair, qty, release } => {
                if release {
                    self.pairs[pair].held -= qty;
                    self.emit(at, pair, EventKind::Unhold, qty, None);
                } else {
                    self.pairs[pair].held += qty;
                    self.emit(at, pair, EventKind::Hold, qty, None);
                    let after = self.rng.gen_range(HOUR..2 * DAY);
                    self.schedule(at + after, Action::Hold { pair, qty, release: true });
                }
            }
        }
        Ok(())
    }

    fn place_order(&mut self, at: Millis) {
        let sku = self.popularity.sample(&mut self.rng) as usize - 1;
        let qty = match self.rng.gen_range(0..100) {
            0..=79 => 1,
            80..=94 => 2,
            _ => 3,
        };
        // The naive engine: reserve where the recorded ATP is largest. In a flash sale (a burst
        // past the default factor) its cached availability lags the checkouts by a few units,
        // so it takes orders the last units cannot serve.
        let lag = if at < self.burst_until && self.config.burst_factor > SimConfig::default().burst_factor { FLASH_SALE_LAG_UNITS } else { 0 };
        let Some(&pair) = self.pairs_of_sku[sku]
            .iter()
            .filter(|&&pair| self.pairs[pair].recorded_atp() + lag >= qty)
            .max_by_key(|&&pair| (self.pairs[pair].recorded_atp(), Reverse(pair)))
        else {
            return;
        };
        self.next_order += 1;
        self.summary.orders += 1;
        let order = self.next_order;
        self.pairs[pair].reserved += qty;
        self.emit(at, pair, EventKind::Reserve, qty, Some(order));
        if self.rng.gen_bool(0.08) {
            let after = self.rng.gen_range(5 * MINUTE..3 * HOUR);
            self.schedule(at + after, Action::Cancel { pair, order, qty });
        } else {
            let after = self.rng.gen_range(30 * MINUTE..8 * HOUR);
            self.schedule(at + after, Action::Pick { pair, order, qty });
        }
    }

    fn maybe_replenish(&mut self, at: Millis, pair: usize) {
        let state = &self.pairs[pair];
        if state.replenishing || state.recorded_atp() > 3 {
            return;
        }
        let target = self.config.stocked(self.rng.gen_range(10..40));
        let qty = (target - state.recorded_atp()).max(1);
        self.pairs[pair].replenishing = true;
        let lead = self.rng.gen_range(6 * HOUR..3 * DAY);
        self.schedule(at + lead, Action::Receipt { pair, qty });
    }

    fn truth_batch(&self) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("sku", DataType::Utf8, false),
            Field::new("node", DataType::Utf8, false),
            Field::new("true_on_hand", DataType::Int64, false),
            Field::new("recorded_on_hand", DataType::Int64, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.pairs.iter().map(|p| Some(self.sku_ids[p.sku].as_str())).collect::<StringArray>()),
            Arc::new(self.pairs.iter().map(|p| Some(self.nodes[p.node].info.node.as_str())).collect::<StringArray>()),
            Arc::new(Int64Array::from_iter_values(self.pairs.iter().map(|p| p.truth))),
            Arc::new(Int64Array::from_iter_values(self.pairs.iter().map(|p| p.recorded))),
        ];
        RecordBatch::try_new(schema, columns).expect("truth columns match; this is a bug")
    }
}

fn node_traits(index: usize, dynamics: Dynamics, rng: &mut ChaCha8Rng) -> NodeTraits {
    let (region, country) = COUNTRIES[rng.gen_range(0..COUNTRIES.len())];
    let roll: f64 = rng.gen();
    let kind = if roll < 0.2 {
        NodeKind::Warehouse
    } else if roll < 0.7 {
        NodeKind::Store
    } else {
        NodeKind::Seller
    };
    // The feed SLA: how long a node may stay silent before answers stop promising from it.
    let (prefix, shrink_per_day, lag, count_every, sla) = match kind {
        NodeKind::Warehouse => ("WH", rng.gen_range(0.01..0.05), rng.gen_range(200..5 * SECOND), DAY, 2 * HOUR),
        // Some stores shrink far more than others: the hidden trait a model can learn.
        NodeKind::Store => (
            "ST",
            if rng.gen_bool(0.3) { rng.gen_range(0.3..0.8) } else { rng.gen_range(0.02..0.1) },
            rng.gen_range(5 * SECOND..5 * MINUTE),
            3 * DAY,
            4 * HOUR,
        ),
        NodeKind::Seller => (
            "SL",
            rng.gen_range(0.02..0.2),
            if rng.gen_bool(0.2) { rng.gen_range(30 * MINUTE..2 * HOUR) } else { rng.gen_range(MINUTE..15 * MINUTE) },
            rng.gen_range(HOUR..6 * HOUR),
            8 * HOUR,
        ),
    };
    let seller = (kind == NodeKind::Seller).then(|| format!("S-{}", 1000 + index % 50));
    // A quarter of sellers (by default) over-report what they have.
    let over_report = if kind == NodeKind::Seller && rng.gen_bool(dynamics.over_reporting_sellers) { rng.gen_range(1..4i64) } else { 0 };
    let over_report = (over_report as f64 * dynamics.over_report_scale).round() as i64;
    let (shrink_per_day, lag) = (shrink_per_day * dynamics.shrink_scale, (lag as f64 * dynamics.lag_scale) as Millis);
    let count_every = if kind == NodeKind::Seller { count_every } else { (count_every as f64 * dynamics.count_scale).max(HOUR as f64) as Millis };
    NodeTraits {
        info: NodeInfo {
            node: format!("{prefix}-{index:04}"),
            kind,
            region: region.to_string(),
            country: country.to_string(),
            seller,
            feed_sla_ms: sla,
        },
        shrink_per_day,
        over_report,
        lag,
        count_every,
    }
}
