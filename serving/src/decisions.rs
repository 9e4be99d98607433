//! The decision log: every answer serving gives, with what explains it, kept without loss and
//! without slowing a request.
//!
//! - A request hands its records to a bounded queue ([`DecisionLog::record`]) and goes on: it
//!   never waits. A record the queue cannot take is counted in
//!   `sellable_decisions_lost_total`, which must stay 0 (the queue holds
//!   [`DecisionLogConfig::queue`] records).
//! - A thread of its own appends them to the spill directory, one NDJSON line each, in numbered
//!   segments (`<number>.open` while written, flushed every 100 ms; renamed `<number>.ndjson`
//!   when closed, every [`DecisionLogConfig::segment_ms`]). What is flushed survives a crash.
//! - A thread of its own, in the idle scheduling class (it yields the cores to requests at once
//!   and catches up when they leave room), appends each closed segment to the store (the
//!   lake's `decisions` dataset) whole, with
//!   its number in the same commit, then deletes the file. A slow or failing store only makes the
//!   spill directory grow; a segment whose number the store already holds (a crash between the
//!   commit and the delete) is deleted without being appended again.
//! - At start, segments an earlier run left (open ones included, up to their last whole line) are
//!   appended first; at shutdown ([`DecisionLog::close`]) the open segment is closed and the
//!   segments are appended while the store takes them.
//! - Records older than [`DecisionLogConfig::retention_days`] are dropped from the store every
//!   hour.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use sellable_core::{DecisionRecord, DecisionStore, Millis};

use crate::Availability;
use serde::{Deserialize, Serialize};

/// How the decision log keeps what it is given; `[serve.decisions]` of the configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogConfig {
    /// Whether answers are logged at all.
    pub enabled: bool,
    /// The local directory of the segments not yet in the lake; none: `decisions.spill` in the
    /// lake's directory.
    pub spill: Option<PathBuf>,
    /// The share of availability answers logged (reservations always are), 0 to 1.
    pub sample: f64,
    /// Records the queue between requests and the spill file holds.
    pub queue: usize,
    /// How long a segment is written before it is closed and appended to the lake (ms).
    pub segment_ms: u64,
    /// Days the lake keeps a decision.
    pub retention_days: u32,
}

impl Default for DecisionLogConfig {
    fn default() -> DecisionLogConfig {
        DecisionLogConfig { enabled: true, spill: None, sample: 1.0, queue: 200_000, segment_ms: 5_000, retention_days: 30 }
    }
}

impl DecisionLogConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.sample) {
            problems.push(format!("serve.decisions.sample = {}: must be from 0 to 1", self.sample));
        }
        for (name, value) in [("queue", self.queue as u64), ("segment_ms", self.segment_ms), ("retention_days", u64::from(self.retention_days))] {
            if value == 0 {
                problems.push(format!("serve.decisions.{name} = 0: must be more than 0"));
            }
        }
        problems
    }
}

/// What a request hands the log: a record, or a request's answers the log's thread makes records
/// of (their JSON is encoded there, off the request): a batch's answers go as one entry, one
/// hand-over for the request, not one per item.
pub enum Entry {
    Answers { kind: &'static str, request_id: String, at: Millis, answers: Vec<Availability> },
    Record(Box<DecisionRecord>),
}

impl Entry {
    /// The records the entry holds.
    fn records(&self) -> usize {
        match self {
            Entry::Answers { answers, .. } => answers.len(),
            Entry::Record(_) => 1,
        }
    }

    /// Appends the entry to `out` as lines of a segment, one per record: a [`DecisionRecord`], its
    /// lists (reasons, options, rules fired) as JSON values, so that nothing is escaped twice to
    /// write them or unescaped to read them back ([`read_segment`]).
    fn write_lines(&self, out: &mut Vec<u8>) {
        match self {
            Entry::Answers { kind, request_id, at, answers } => {
                for answer in answers {
                    crate::encode::line(out, *at, request_id, kind, answer);
                    out.push(b'\n');
                }
            }
            Entry::Record(record) => {
                serde_json::to_writer(&mut *out, record).expect("a decision record serialises");
                out.push(b'\n');
            }
        }
    }
}

/// The log's counters, in the server's metrics.
#[derive(Clone)]
struct Counters {
    recorded: prometheus::IntCounter,
    lost: prometheus::IntCounter,
    stored: prometheus::IntCounter,
    torn: prometheus::IntCounter,
    pending: prometheus::IntGauge,
}

impl Counters {
    fn new() -> Counters {
        let counter = |name: &str, help: &str| prometheus::IntCounter::new(name, help).expect("a valid metric");
        Counters {
            recorded: counter("sellable_decisions_recorded_total", "Decisions handed to the decision log"),
            lost: counter("sellable_decisions_lost_total", "Decisions the decision log could not keep (its queue was full); must stay 0"),
            stored: counter("sellable_decisions_stored_total", "Decisions appended to the lake"),
            torn: counter("sellable_decisions_torn_total", "Spill-file lines that could not be read back (a crash mid-write)"),
            pending: prometheus::IntGauge::new("sellable_decisions_pending_segments", "Closed segments of the decision log not yet in the lake").expect("a valid metric"),
        }
    }

    fn register(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.recorded.clone()))?;
        registry.register(Box::new(self.lost.clone()))?;
        registry.register(Box::new(self.stored.clone()))?;
        registry.register(Box::new(self.torn.clone()))?;
        registry.register(Box::new(self.pending.clone()))
    }
}

pub struct DecisionLog {
    config: DecisionLogConfig,
    sender: Mutex<Option<mpsc::SyncSender<Entry>>>,
    /// Records in the queue: it holds at most [`DecisionLogConfig::queue`] records, however
    /// they are grouped into entries.
    queued: Arc<AtomicUsize>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    uploader: Mutex<Option<std::thread::JoinHandle<()>>>,
    stop: tokio::sync::Notify,
    dir: PathBuf,
    store: Arc<dyn DecisionStore>,
    counters: Counters,
    /// The spill directory's lock, held while the log runs: one process per directory.
    _lock: std::fs::File,
}

/// A segment's file: `<number>.open` while written, `<number>.ndjson` once closed.
fn segment_path(dir: &Path, number: u64, open: bool) -> PathBuf {
    dir.join(format!("{number:020}.{}", if open { "open" } else { "ndjson" }))
}

/// The segments of `dir`, by number: (number, path, open).
fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf, bool)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let (Some(stem), Some(extension)) = (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|e| e.to_str())) else { continue };
        if let (Ok(number), "open" | "ndjson") = (stem.parse::<u64>(), extension) {
            found.push((number, path.clone(), extension == "open"));
        }
    }
    found.sort();
    Ok(found)
}

fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

impl DecisionLog {
    /// Starts the log: segments left in `dir` by an earlier run are closed (they are appended
    /// first), then the writer thread and the task that appends to `store` run until
    /// [`DecisionLog::close`].
    pub fn start(dir: &Path, store: Arc<dyn DecisionStore>, config: DecisionLogConfig) -> std::io::Result<Arc<DecisionLog>> {
        std::fs::create_dir_all(dir)?;
        let lock = std::fs::File::create(dir.join(".lock"))?;
        if lock.try_lock().is_err() {
            let message = format!("another process keeps its decision log in {}: give each server its own (serve.decisions.spill)", dir.display());
            return Err(std::io::Error::new(std::io::ErrorKind::WouldBlock, message));
        }
        // what a killed run was writing is closed as it is: its whole lines are kept
        for (number, path, open) in segments(dir)? {
            if open {
                std::fs::rename(&path, segment_path(dir, number, false))?;
            }
        }
        let last = segments(dir)?.last().map_or(0, |(number, _, _)| *number);
        let (sender, receiver) = mpsc::sync_channel(config.queue);
        let counters = Counters::new();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (dir, segment_ms, queued) = (dir.to_path_buf(), Duration::from_millis(config.segment_ms), queued.clone());
            // at the requests' priority: it must keep up with them, or the queue fills
            std::thread::Builder::new().name("decision-log".into()).spawn(move || write_segments(&dir, receiver, &queued, last, segment_ms))?
        };
        let log = Arc::new(DecisionLog {
            config,
            sender: Mutex::new(Some(sender)),
            queued,
            writer: Mutex::new(Some(writer)),
            uploader: Mutex::new(None),
            stop: tokio::sync::Notify::new(),
            dir: dir.to_path_buf(),
            store,
            counters,
            _lock: lock,
        });
        let uploader = {
            let log = log.clone();
            std::thread::Builder::new().name("decision-upload".into()).spawn(move || {
                lower_priority();
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(upload_loop(log)),
                    Err(error) => tracing::error!(%error, "the decision log cannot start its uploader; its segments wait in the spill directory for the next start"),
                }
            })?
        };
        *log.uploader.lock().expect("decision log lock poisoned; this is a bug") = Some(uploader);
        Ok(log)
    }

    /// Puts the log's counters into `registry` (the server's metrics).
    pub fn register(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        self.counters.register(registry)
    }

    /// Whether an availability answer is logged (the configured sample; reservations always are).
    pub fn samples(&self) -> bool {
        self.config.sample >= 1.0 || rand::random::<f64>() < self.config.sample
    }

    /// Hands `entry` to the log; never waits. Its records are counted as lost if the queue has
    /// no room for them all or the log is closed.
    pub fn record(&self, entry: Entry) {
        let records = entry.records();
        if records == 0 {
            return;
        }
        let room = self.queued.fetch_add(records, Ordering::Relaxed) + records <= self.config.queue;
        let sender = self.sender.lock().expect("decision log lock poisoned; this is a bug");
        let kept = room && sender.as_ref().is_some_and(|sender| sender.try_send(entry).is_ok());
        drop(sender);
        if kept {
            self.counters.recorded.inc_by(records as u64);
        } else {
            self.queued.fetch_sub(records, Ordering::Relaxed);
            self.counters.lost.inc_by(records as u64);
        }
    }

    /// Decisions lost so far (must be 0).
    pub fn lost(&self) -> u64 {
        self.counters.lost.get()
    }

    /// Stops taking records, closes the open segment, and appends what is closed to the store
    /// for at most `within`; what is left stays in the spill directory for the next start.
    pub async fn close(&self, within: Duration) {
        drop(self.sender.lock().expect("decision log lock poisoned; this is a bug").take());
        let writer = self.writer.lock().expect("decision log lock poisoned; this is a bug").take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
        self.stop.notify_one();
        let uploader = self.uploader.lock().expect("decision log lock poisoned; this is a bug").take();
        if let Some(uploader) = uploader {
            let _ = tokio::task::spawn_blocking(move || uploader.join()).await;
        }
        let _ = tokio::time::timeout(within, self.upload()).await;
    }

    /// Appends every closed segment to the store, oldest first; stops at the first failure
    /// (the segment stays for the next pass).
    async fn upload(&self) -> Result<(), sellable_core::ViewError> {
        let closed: Vec<(u64, PathBuf)> = segments(&self.dir)?.into_iter().filter(|(_, _, open)| !open).map(|(number, path, _)| (number, path)).collect();
        self.counters.pending.set(closed.len() as i64);
        if closed.is_empty() {
            return Ok(());
        }
        let stored = self.store.last_segment().await?.unwrap_or(0);
        for (number, path) in closed {
            if number > stored {
                let (reading, torn) = (path.clone(), self.counters.torn.clone());
                let records = tokio::task::spawn_blocking(move || read_segment(&reading, &torn)).await??;
                if !records.is_empty() {
                    self.store.append_segment(&records, number).await?;
                    self.counters.stored.inc_by(records.len() as u64);
                }
            }
            std::fs::remove_file(&path)?;
            self.counters.pending.dec();
        }
        Ok(())
    }
}

/// A closed segment's records; a line that does not read back (the last one of a segment a crash
/// cut) is counted in `torn` and skipped.
fn read_segment(path: &Path, torn: &prometheus::IntCounter) -> std::io::Result<Vec<DecisionRecord>> {
    let mut records = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(path)?).lines() {
        match serde_json::from_str(&line?) {
            Ok(record) => records.push(record),
            Err(_) => torn.inc(),
        }
    }
    Ok(records)
}

/// Puts the calling thread (and the threads it starts) in the idle scheduling class: the log's
/// read-back and appends run only on a core no request wants, and a request that wakes takes the
/// core at once; they catch up when the requests leave room (the spill directory holds what
/// waits). Where the idle class is refused, the thread runs at nice 19 instead.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid, sched_setscheduler and setpriority read only the parameter passed by
    // reference, which outlives the call; a failure leaves the scheduling as it was.
    unsafe {
        let thread = libc::syscall(libc::SYS_gettid) as libc::pid_t;
        let parameter = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(thread, libc::SCHED_IDLE, &parameter) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, 19);
        }
    }
}

/// Every second, the closed segments into the store; every hour, the old records out of it.
async fn upload_loop(log: Arc<DecisionLog>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let mut trimmed: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = log.stop.notified() => return,
        }
        if let Err(error) = log.upload().await {
            tracing::warn!(%error, "the decision log could not append to the lake now; its segments wait in the spill directory");
        }
        if trimmed.is_none_or(|at| at.elapsed() > Duration::from_secs(3_600)) {
            trimmed = Some(Instant::now());
            let before = now_millis() - i64::from(log.config.retention_days) * 86_400_000;
            match log.store.drop_before(before).await {
                Ok(0) => {}
                Ok(dropped) => tracing::info!(dropped, "decisions past their retention dropped from the lake"),
                Err(error) => tracing::warn!(%error, "dropping old decisions failed; tried again in an hour"),
            }
        }
    }
}

/// How long the writer sleeps once it has emptied the queue. It never blocks on the queue: a
/// request handing a record to a blocked receiver would wake its thread (a system call and a
/// context switch per answer); a sleeping one is woken by nothing, and takes what came meanwhile
/// in one go.
const WRITER_NAP: Duration = Duration::from_millis(10);

/// The writer thread: records into segment files, flushed every 100 ms, a segment closed every
/// `segment_ms` (and at the end); `queued` counts down the records taken off the queue. Numbers
/// grow from `last` and from the clock, so a segment is never numbered at or below one the store
/// holds.
fn write_segments(dir: &Path, receiver: mpsc::Receiver<Entry>, queued: &AtomicUsize, last: u64, segment_ms: Duration) {
    let number = |previous: u64| previous.max(now_millis() as u64 * 1_000) + 1;
    let mut current: Option<(u64, std::io::BufWriter<std::fs::File>, Instant)> = None;
    let mut previous = last;
    let close = |segment: (u64, std::io::BufWriter<std::fs::File>, Instant)| {
        let (number, mut file, _) = segment;
        let closed = file.flush().and_then(|()| file.get_ref().sync_data()).and_then(|()| std::fs::rename(segment_path(dir, number, true), segment_path(dir, number, false)));
        if let Err(error) = closed {
            tracing::error!(%error, number, "closing a decision log segment failed; it is closed at the next start");
        }
    };
    let mut flushed = Instant::now();
    let mut line = Vec::with_capacity(4096);
    loop {
        let received = receiver.try_recv();
        if current.as_ref().is_some_and(|(_, _, opened)| opened.elapsed() >= segment_ms) {
            close(current.take().expect("checked above"));
        }
        match received {
            Ok(record) => {
                queued.fetch_sub(record.records(), Ordering::Relaxed);
                if current.is_none() {
                    previous = number(previous);
                    match std::fs::File::create(segment_path(dir, previous, true)) {
                        Ok(file) => current = Some((previous, std::io::BufWriter::with_capacity(1 << 20, file), Instant::now())),
                        Err(error) => {
                            tracing::error!(%error, "the decision log cannot open a segment in {}", dir.display());
                            continue;
                        }
                    }
                }
                let (_, file, _) = current.as_mut().expect("opened above");
                line.clear();
                record.write_lines(&mut line);
                if let Err(error) = file.write_all(&line) {
                    tracing::error!(%error, "writing the decision log failed");
                }
            }
            Err(mpsc::TryRecvError::Empty) => std::thread::sleep(WRITER_NAP),
            Err(mpsc::TryRecvError::Disconnected) => break,
        }
        if flushed.elapsed() >= Duration::from_millis(100) {
            if let Some((_, file, _)) = current.as_mut() {
                let _ = file.flush();
            }
            flushed = Instant::now();
        }
    }
    if let Some(segment) = current.take() {
        close(segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_reads_back_lines_of_both_ways_of_writing_lists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.ndjson");
        let record = |request_id: &str, options: &str| DecisionRecord {
            at: 1_700_000_000_000,
            request_id: request_id.to_string(),
            kind: "reservation".into(),
            sku: "SKU-1".into(),
            region: "DE".into(),
            qty: 2,
            decision: "held".into(),
            units: 2,
            reasons: r#"["a \"quoted\" reason"]"#.into(),
            options: options.into(),
            rules_fired: "[]".into(),
            batch_view: "2026-01-01".into(),
            model: Some("m1".into()),
            ..DecisionRecord::default()
        };
        // as written now (lists as JSON values), text that is not JSON, and as written before
        // (lists as text holding JSON)
        let (now, not_json, before) = (record("r1", r#"[{"node":"N-1","units":2}]"#), record("r2", "not JSON"), record("r3", r#"[{"node":"N-2","units":1}]"#));
        let mut lines = Vec::new();
        Entry::Record(Box::new(now.clone())).write_lines(&mut lines);
        Entry::Record(Box::new(not_json.clone())).write_lines(&mut lines);
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&lines).unwrap();
        let mut as_text = serde_json::to_value(&before).unwrap();
        for list in ["reasons", "options", "rules_fired"] {
            as_text[list] = serde_json::Value::String(as_text[list].to_string());
        }
        writeln!(file, "{as_text}").unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.lines().next().unwrap().contains(r#""options":[{"node":"N-1""#), "lists are written as JSON values: {written}");
        let torn = prometheus::IntCounter::new("torn", "torn").unwrap();
        assert_eq!(read_segment(&path, &torn).unwrap(), vec![now, not_json, before]);
        assert_eq!(torn.get(), 0);
    }
}
