//! Ingestion from a Redis Stream with a consumer group: at-least-once delivery (an entry is
//! acknowledged only after its event is folded or dead-lettered) plus the idempotent fold gives an
//! exactly-once effect, whatever crashes or redeliveries happen.
//!
//! Entry format: one event per entry, its JSON in the field `event` (what `sellable publish`
//! writes). Malformed and too-late events go to the dead-letter stream with the raw payload and
//! the reason, then are acknowledged: they never block the stream.

use std::time::Duration;

use redis::streams::StreamReadOptions;
use redis::{ErrorKind, RedisError, Value};
use sellable_core::event::decode_json;
use sellable_core::{DeadLetter, Event, FoldStats};

use crate::{Connection, Prepared, SpeedError, SpeedView};

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub stream: String,
    pub group: String,
    pub consumer: String,
    /// Where malformed and too-late events go.
    pub dead_letters: String,
    /// Entries read per call.
    pub batch: usize,
    /// How long one read waits for new entries.
    pub block: Duration,
    /// Entries pending this long with another consumer are taken over (it is presumed dead).
    pub claim_after: Duration,
    /// The catalog's names: an event for a SKU or node it does not know is dead-lettered
    /// (`None`: names are not checked).
    pub known: Option<std::sync::Arc<sellable_core::KnownIds>>,
    /// How far past this machine's clock an event's times may be before it is dead-lettered.
    pub max_skew_ms: sellable_core::Millis,
    /// Where a new group starts: `0`, the whole stream, or an entry id (the group reads the
    /// entries after it). A group that exists keeps its own position.
    pub start: String,
}

impl StreamConfig {
    pub fn new(stream: &str, group: &str, consumer: &str) -> StreamConfig {
        StreamConfig {
            stream: stream.to_string(),
            group: group.to_string(),
            consumer: consumer.to_string(),
            dead_letters: format!("{stream}:dead"),
            batch: 4_000,
            block: Duration::from_millis(200),
            claim_after: Duration::from_secs(10),
            known: None,
            max_skew_ms: sellable_core::door::DEFAULT_MAX_SKEW_MS,
            start: "0".to_string(),
        }
    }

    /// The door a worker or the archiver checks each entry's event at.
    pub(crate) fn door(&self) -> sellable_core::Door<'_> {
        sellable_core::Door { max_skew_ms: self.max_skew_ms, known: self.known.as_deref() }
    }
}

/// What a worker did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub entries: u64,
    pub fold: FoldStats,
    pub dead_lettered: u64,
}

/// One consumer of the group.
pub struct StreamWorker<'a> {
    url: String,
    config: StreamConfig,
    connection: Connection,
    /// Reads the next batch while this one is folded (a blocking read would hold up the
    /// acknowledgements on a shared connection).
    reader: Connection,
    /// New entries read, decoded and prepared while the previous batch was folded.
    ahead: Option<Batch>,
    /// New entries read (not yet decoded) while the previous batch was folded.
    read_ahead: Option<Vec<Entry>>,
    view: &'a SpeedView,
    pub stats: StreamStats,
}

impl<'a> StreamWorker<'a> {
    pub async fn connect(url: &str, config: StreamConfig, view: &'a SpeedView) -> Result<StreamWorker<'a>, SpeedError> {
        let connection = Connection::open(url).await?;
        let reader = Connection::open(url).await?;
        let mut worker = StreamWorker {
            url: url.to_string(),
            config,
            connection,
            reader,
            ahead: None,
            read_ahead: None,
            view,
            stats: StreamStats::default(),
        };
        worker.create_group().await?;
        Ok(worker)
    }

    fn error(&self, source: redis::RedisError) -> SpeedError {
        SpeedError::Redis { url: self.url.clone(), source }
    }

    async fn create_group(&mut self) -> Result<(), SpeedError> {
        create_group(&mut self.connection, &self.config).await.map_err(|e| self.error(e))
    }

    /// Processes one round: this consumer's own unacknowledged entries first (after a restart),
    /// then entries idle too long with a dead consumer, then new ones. Returns how many entries
    /// it handled (0 when the stream had nothing for it within the block time).
    pub async fn step(&mut self) -> Result<usize, SpeedError> {
        let batch = match self.ahead.take() {
            Some(batch) => batch,
            None => {
                let entries = match self.read_ahead.take() {
                    Some(entries) => entries,
                    None => self.next_entries().await?,
                };
                if entries.is_empty() {
                    return Ok(0);
                }
                let batch = Batch::prepare(self.view, &self.config, entries).await?;
                // fill the pipeline below with what is there already, without waiting
                self.read_ahead = match self.read(">", false).await {
                    Ok(entries) => Some(entries).filter(|entries| !entries.is_empty()),
                    Err(error) => {
                        tracing::warn!(%error, stream = %self.config.stream, "reading ahead failed");
                        None
                    }
                };
                batch
            }
        };
        // Redis writes this batch while the next one, read during the last step, is decoded and
        // folded here, and the one after it is read: so the read does not wait for the writes,
        // nor the fold here for the read. Only new entries are read ahead, and without waiting
        // for them: a worker blocked on an empty stream holds no prepared fold, which the other
        // workers' folds, sent in the order they were prepared, would wait for. Pending entries
        // are read when the stream runs dry, when nothing of this worker's is in flight.
        let (mut reader, config, view, unprepared) = (self.reader.clone(), self.config.clone(), self.view, self.read_ahead.take());
        let ahead = async move {
            let read = async { read(&mut reader, &config, ">", false).await.map_err(|error| error.to_string()) };
            let prepare = async {
                match unprepared {
                    Some(entries) => Batch::prepare(view, &config, entries).await.map(Some).map_err(|error| error.to_string()),
                    None => Ok(None),
                }
            };
            tokio::join!(read, prepare)
        };
        let ((read, prepared), handled) = tokio::join!(ahead, self.handle(batch));
        // what a failed read or fold took stays pending: it is read again once the stream runs dry
        for failed in [read.as_ref().err(), prepared.as_ref().err()].into_iter().flatten() {
            tracing::warn!(error = %failed, stream = %self.config.stream, "reading ahead failed");
        }
        self.ahead = prepared.ok().flatten();
        self.read_ahead = read.ok().filter(|entries| !entries.is_empty());
        handled
    }

    async fn next_entries(&mut self) -> Result<Vec<Entry>, SpeedError> {
        let own = self.read(">", true).await?;
        let own = if own.is_empty() { self.read("0", false).await? } else { own };
        if !own.is_empty() {
            return Ok(own);
        }
        self.claim().await
    }

    async fn read(&mut self, from: &str, wait: bool) -> Result<Vec<Entry>, SpeedError> {
        read(&mut self.reader, &self.config, from, wait).await.map_err(|e| self.error(e))
    }

    async fn claim(&mut self) -> Result<Vec<Entry>, SpeedError> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg(self.config.claim_after.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(self.config.batch)
            .query_async(&mut self.connection)
            .await
            .map_err(|e| self.error(e))?;
        // [next cursor, claimed entries, ids of entries deleted meanwhile]
        let claimed = match reply {
            Value::Array(parts) => parts.into_iter().nth(1).unwrap_or(Value::Nil),
            other => other,
        };
        entries(claimed).map_err(|e| self.error(e))
    }

    async fn handle(&mut self, batch: Batch) -> Result<usize, SpeedError> {
        let Batch { ids, raws, mut dead, prepared } = batch;
        let source = format!("stream:{}", self.config.stream);
        let (events, outcomes) = self.view.commit(prepared, &source).await?;
        let config = self.view.config();
        for ((event, outcome), (entry, raw)) in events.iter().zip(&outcomes).zip(raws) {
            if let Some(error) = outcome.refusal(event, config) {
                dead.push(DeadLetter { entry: ids[entry].clone(), raw, error, ..DeadLetter::default() });
            }
        }
        if !dead.is_empty() {
            let pipe = crate::dead_letter_pipe(&self.config.dead_letters, &dead);
            let () = pipe.query_async(&mut self.connection).await.map_err(|e| self.error(e))?;
            tracing::warn!(dead = dead.len(), stream = %self.config.stream, "events dead-lettered");
        }
        // Only now is every entry done: acknowledge them.
        let _: i64 = redis::cmd("XACK")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(&ids)
            .query_async(&mut self.connection)
            .await
            .map_err(|e| self.error(e))?;
        self.stats.entries += ids.len() as u64;
        self.stats.fold.add(FoldStats::of(&outcomes));
        self.stats.dead_lettered += dead.len() as u64;
        Ok(ids.len())
    }
}

/// A group of consumers run in one process by [`run_workers`].
#[derive(Debug, Clone)]
pub struct Workers {
    /// The stream and group; with more than one worker, each is named `<consumer>-<n>`.
    pub config: StreamConfig,
    pub count: usize,
    /// Stop once the stream has had nothing new for this long (`None`: until shutdown).
    pub idle_limit: Option<Duration>,
    /// How long a worker waits after a failed step (Redis restarting, failing over) before the
    /// next one.
    pub retry_after: Duration,
}

impl Workers {
    pub fn new(config: StreamConfig, count: usize) -> Workers {
        Workers { config, count: count.max(1), idle_limit: None, retry_after: Duration::from_millis(500) }
    }
}

/// What the workers did together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkersReport {
    pub stats: StreamStats,
    /// From the start to the last step that handled entries: a rate over it leaves out the
    /// final idle wait.
    pub busy: Duration,
}

impl StreamStats {
    pub fn add(&mut self, other: StreamStats) {
        self.entries += other.entries;
        self.fold.add(other.fold);
        self.dead_lettered += other.dead_lettered;
    }
}

/// Runs `workers.count` consumers of the stream's group on `view` until `shutdown` completes or,
/// with an idle limit, the stream stays quiet that long. A failed step (Redis away) is logged
/// and retried: what it had taken stays pending and is read again. Only a worker that cannot
/// start (no Redis at all, no group) ends the run with an error.
pub async fn run_workers(
    url: &str,
    view: std::sync::Arc<SpeedView>,
    workers: Workers,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<WorkersReport, SpeedError> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let started = std::time::Instant::now();
    let mut handles = Vec::new();
    for index in 1..=workers.count.max(1) {
        let mut config = workers.config.clone();
        if workers.count > 1 {
            config.consumer = format!("{}-{index}", config.consumer);
        }
        let (view, url, mut stopped, workers) = (view.clone(), url.to_string(), stopped.clone(), workers.clone());
        handles.push(tokio::spawn(async move {
            let mut worker = StreamWorker::connect(&url, config, &view).await?;
            let mut last_work = std::time::Instant::now();
            loop {
                tokio::select! {
                    // (the guard `wait_for` returns is not `Send`: dropped inside)
                    _ = async { drop(stopped.wait_for(|stop| *stop).await) } => break,
                    handled = worker.step() => match handled {
                        Ok(0) if workers.idle_limit.is_some_and(|limit| last_work.elapsed() >= limit) => break,
                        Ok(0) => {}
                        Ok(_) => last_work = std::time::Instant::now(),
                        Err(error) => {
                            tracing::warn!(%error, stream = %worker.config.stream, "stream step failed; retrying");
                            tokio::time::sleep(workers.retry_after).await;
                        }
                    }
                }
            }
            Ok::<_, SpeedError>((worker.stats, last_work))
        }));
    }
    let mut report = WorkersReport::default();
    let mut last_work = started;
    let mut failed = None;
    for handle in handles {
        match handle.await {
            Ok(Ok((stats, worked))) => {
                report.stats.add(stats);
                last_work = last_work.max(worked);
            }
            Ok(Err(error)) => failed = failed.or(Some(error)),
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
    signal.abort();
    report.busy = last_work - started;
    failed.map_or(Ok(report), Err)
}

/// Creates the config's group at `config.start`, unless it exists.
pub(crate) async fn create_group(connection: &mut Connection, config: &StreamConfig) -> Result<(), RedisError> {
    let created: Result<(), RedisError> =
        redis::cmd("XGROUP").arg("CREATE").arg(&config.stream).arg(&config.group).arg(&config.start).arg("MKSTREAM").query_async(connection).await;
    match created {
        Err(error) if error.to_string().contains("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Orders stream entry ids (`<ms>-<seq>`) as Redis does.
pub(crate) fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Asks a stream how far its consumer groups are, over one connection kept for the purpose
/// (the lifecycle polls it while a new epoch reads the stream).
pub struct GroupProbe {
    url: String,
    connection: Connection,
}

impl GroupProbe {
    pub async fn open(url: &str) -> Result<GroupProbe, SpeedError> {
        Ok(GroupProbe { url: url.to_string(), connection: Connection::open(url).await? })
    }

    /// Whether `group` has read and acknowledged every entry `stream` holds now (its last entry
    /// at or before the group's last delivered one, nothing pending).
    pub async fn caught_up(&mut self, stream: &str, group: &str) -> Result<bool, SpeedError> {
        let url = &self.url;
        let error = |source| SpeedError::Redis { url: url.clone(), source };
        let last: Value = redis::cmd("XREVRANGE").arg(stream).arg("+").arg("-").arg("COUNT").arg(1).query_async(&mut self.connection).await.map_err(error)?;
        let Some(last) = entries(last).map_err(error)?.into_iter().next().map(|entry| entry.id) else { return Ok(true) };
        let groups: Vec<std::collections::HashMap<String, Value>> =
            redis::cmd("XINFO").arg("GROUPS").arg(stream).query_async(&mut self.connection).await.map_err(error)?;
        let text = |value: Option<&Value>| match value {
            Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(Value::SimpleString(text)) => text.clone(),
            _ => String::new(),
        };
        Ok(groups.iter().any(|info| {
            text(info.get("name")) == group
                && matches!(info.get("pending"), Some(Value::Int(0)))
                && entry_order(&text(info.get("last-delivered-id"))) >= entry_order(&last)
        }))
    }
}

/// Deletes `stream` with its consumer groups.
pub async fn delete_stream(url: &str, stream: &str) -> Result<(), SpeedError> {
    let mut connection = Connection::open(url).await?;
    let _: i64 = redis::cmd("DEL").arg(stream).query_async(&mut connection).await.map_err(|source| SpeedError::Redis { url: url.to_string(), source })?;
    Ok(())
}

/// Creates the group of `config` at `config.start` unless it exists (an epoch's group, before
/// fold workers elsewhere join it).
pub async fn ensure_group(url: &str, config: &StreamConfig) -> Result<(), SpeedError> {
    let mut connection = Connection::open(url).await?;
    create_group(&mut connection, config).await.map_err(|source| SpeedError::Redis { url: url.to_string(), source })
}

/// Removes `group` from `stream` (a retired epoch's fold workers); a missing stream or group, or
/// a key that is not a stream (it holds no group), is not an error.
pub async fn destroy_group(url: &str, stream: &str, group: &str) -> Result<(), SpeedError> {
    let mut connection = Connection::open(url).await?;
    let destroyed: Result<i64, RedisError> = redis::cmd("XGROUP").arg("DESTROY").arg(stream).arg(group).query_async(&mut connection).await;
    match destroyed {
        // no stream, or a key that is not one: no group to destroy
        Err(error) if error.to_string().contains("requires the key to exist") || error.to_string().contains("WRONGTYPE") => Ok(()),
        other => other.map(|_| ()).map_err(|source| SpeedError::Redis { url: url.to_string(), source }),
    }
}

/// This machine's clock, in milliseconds since the epoch: what the door checks times against.
pub(crate) fn clock_now() -> sellable_core::Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as sellable_core::Millis)
}

/// Entries decoded (or SKUs folded, see [`crate::RedisStore`]) between two chances for the
/// batch being written beside them to go on: a worker prepares one batch while it writes the one
/// before, both in one task.
const YIELD_EVERY: usize = 128;

/// Called after each of `done` items of a batch's preparation: every [`YIELD_EVERY`] of them,
/// lets the write of the batch before, in the same task, go on meanwhile.
pub(crate) async fn let_write_go_on(done: usize) {
    if done.is_multiple_of(YIELD_EVERY) {
        tokio::task::yield_now().await;
    }
}

/// A batch of entries, decoded, its fold prepared: the entries' ids, each event's entry (its
/// index in `ids`) and raw payload, and the malformed entries' dead letters.
struct Batch {
    ids: Vec<String>,
    raws: Vec<(usize, String)>,
    dead: Vec<DeadLetter>,
    prepared: Prepared<'static>,
}

impl Batch {
    /// Decodes the entries and checks them at the door (times against this machine's clock,
    /// names against the catalog, when the config has one).
    async fn prepare(view: &SpeedView, config: &StreamConfig, entries: Vec<Entry>) -> Result<Batch, SpeedError> {
        let mut events: Vec<Event> = Vec::with_capacity(entries.len());
        let mut raws = Vec::with_capacity(entries.len());
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut ids = Vec::with_capacity(entries.len());
        let (door, now) = (config.door(), clock_now());
        for Entry { id, event } in entries {
            let decoded = event.and_then(|raw| match decode_json(&raw) {
                Ok(event) => match door.check(&event, now) {
                    Ok(()) => Ok((event, raw)),
                    Err(refusal) => Err((refusal.to_string(), Some(raw))),
                },
                Err(error) => Err((error.to_string(), Some(raw))),
            });
            match decoded {
                Ok((event, raw)) => {
                    events.push(event);
                    raws.push((ids.len(), raw));
                }
                Err((error, raw)) => dead.push(DeadLetter { entry: id.clone(), raw: raw.unwrap_or_default(), error, ..DeadLetter::default() }),
            }
            ids.push(id);
            let_write_go_on(ids.len()).await;
        }
        Ok(Batch { ids, raws, dead, prepared: view.prepare(events).await? })
    }
}

/// Reads up to a batch of entries: new ones (`>`) or this consumer's pending ones (`0`); `wait`:
/// waiting up to the block time for new ones to come.
pub(crate) async fn read(connection: &mut Connection, config: &StreamConfig, from: &str, wait: bool) -> Result<Vec<Entry>, redis::RedisError> {
    let mut options = StreamReadOptions::default().group(&config.group, &config.consumer).count(config.batch);
    if wait {
        options = options.block(config.block.as_millis() as usize);
    }
    let reply: Value =
        redis::cmd("XREADGROUP").arg(&options).arg("STREAMS").arg(&config.stream).arg(from).query_async(connection).await?;
    // [[stream, entries]], or nil when nothing came within the block time
    match reply {
        Value::Nil => Ok(Vec::new()),
        Value::Array(streams) => {
            let mut all = Vec::new();
            for stream in streams {
                match stream {
                    Value::Array(parts) if parts.len() == 2 => all.extend(entries(parts.into_iter().nth(1).unwrap_or(Value::Nil))?),
                    other => return Err(unexpected("a [stream, entries] pair", &other)),
                }
            }
            Ok(all)
        }
        other => Err(unexpected("an array of streams", &other)),
    }
}

/// A stream entry: its id, and its `event` field or why there is none to decode (with the raw
/// payload when there is one).
pub struct Entry {
    pub id: String,
    pub event: Result<String, (String, Option<String>)>,
}

/// Reads entries straight from a reply (`[[id, [field, value, …]], …]`), keeping only the
/// `event` field: the general conversion of redis-rs builds a map per entry, a large share of a
/// worker's time.
fn entries(reply: Value) -> Result<Vec<Entry>, RedisError> {
    let list = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(list) => list,
        other => return Err(unexpected("an array of entries", &other)),
    };
    let text = |value: Value| match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).map_err(|error| String::from_utf8_lossy(error.as_bytes()).into_owned()),
        Value::SimpleString(text) => Ok(text),
        other => Err(format!("{other:?}")),
    };
    let mut found = Vec::with_capacity(list.len());
    for entry in list {
        let Value::Array(parts) = entry else { return Err(unexpected("an [id, fields] entry", &entry)) };
        let mut parts = parts.into_iter();
        let id = parts.next().map(text).and_then(Result::ok).ok_or_else(|| RedisError::from((ErrorKind::UnexpectedReturnType, "stream entry without an id")))?;
        // a pending entry deleted from the stream has no fields
        let mut event = Err(("entry has no `event` field".to_string(), None));
        if let Some(Value::Array(fields)) = parts.next() {
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                if matches!(&name, Value::BulkString(name) if name == b"event") {
                    event = text(value).map_err(|raw| ("field `event` is not UTF-8".to_string(), Some(raw)));
                }
            }
        }
        found.push(Entry { id, event });
    }
    Ok(found)
}

fn unexpected(wanted: &'static str, got: &Value) -> RedisError {
    (ErrorKind::UnexpectedReturnType, wanted, format!("got {got:?}")).into()
}

/// Appends events to a stream, one entry each, pipelined.
pub async fn publish(url: &str, stream: &str, lines: impl IntoIterator<Item = String>) -> Result<u64, SpeedError> {
    append(url, &mut Connection::open(url).await?, stream, lines).await
}

/// XADDs `lines` to `stream`, a thousand per round trip.
async fn append(url: &str, connection: &mut Connection, stream: &str, lines: impl IntoIterator<Item = String>) -> Result<u64, SpeedError> {
    let error = |source| SpeedError::Redis { url: url.to_string(), source };
    let mut published = 0u64;
    let mut pipe = redis::pipe();
    let mut pending = 0;
    for line in lines {
        pipe.cmd("XADD").arg(stream).arg("*").arg("event").arg(line).ignore();
        pending += 1;
        if pending == 1_000 {
            let () = pipe.query_async(connection).await.map_err(error)?;
            published += pending;
            pending = 0;
            pipe = redis::pipe();
        }
    }
    if pending > 0 {
        let () = pipe.query_async(connection).await.map_err(error)?;
        published += pending;
    }
    Ok(published)
}

/// The ingestion stream `POST /v1/events` appends accepted events to (`sellable serve
/// --ingest-stream`), one entry each as `sellable publish` writes them.
pub struct StreamIntake {
    url: String,
    stream: String,
    connection: Connection,
}

impl StreamIntake {
    /// Connects at the first append (Redis need not be up yet).
    pub fn new(url: &str, stream: &str) -> Result<StreamIntake, SpeedError> {
        Ok(StreamIntake { url: url.to_string(), stream: stream.to_string(), connection: Connection::open_lazy(url)? })
    }
}

impl sellable_core::EventIntake for StreamIntake {
    fn append<'a>(&'a self, events: &'a [Event]) -> sellable_core::view::BoxFuture<'a, Result<(), sellable_core::ViewError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            append(&self.url, &mut connection, &self.stream, events.iter().map(sellable_core::event::encode_json)).await?;
            Ok(())
        })
    }

    fn describe(&self) -> String {
        format!("stream {} at {}", self.stream, self.url)
    }
}

/// The newest `count` dead letters of a dead-letter stream, oldest first.
pub async fn dead_letters(url: &str, dead_letters: &str, count: usize) -> Result<Vec<DeadLetter>, SpeedError> {
    let error = |source| SpeedError::Redis { url: url.to_string(), source };
    let mut connection = Connection::open(url).await?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(dead_letters)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(count)
        .query_async(&mut connection)
        .await
        .map_err(error)?;
    let mut letters: Vec<DeadLetter> = reply
        .ids
        .into_iter()
        .map(|entry| DeadLetter {
            entry: entry.get("entry").unwrap_or_default(),
            raw: entry.get("raw").unwrap_or_default(),
            error: entry.get("error").unwrap_or_default(),
            id: entry.id,
        })
        .collect();
    letters.reverse();
    Ok(letters)
}
