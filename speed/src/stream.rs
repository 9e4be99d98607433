//! Ingestion from a Redis Stream with a consumer group: at-least-once delivery (an entry is
//! acknowledged only after its event is folded or dead-lettered) plus the idempotent fold gives an
//! exactly-once effect, whatever crashes or redeliveries happen.
//!
//! Entry format: one event per entry, its JSON in the field `event` (what `sellable publish`
//! writes). Malformed and too-late events go to the dead-letter stream with the raw payload and
//! the reason, then are acknowledged: they never block the stream.

use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
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
}

impl StreamConfig {
    pub fn new(stream: &str, group: &str, consumer: &str) -> StreamConfig {
        StreamConfig {
            stream: stream.to_string(),
            group: group.to_string(),
            consumer: consumer.to_string(),
            dead_letters: format!("{stream}:dead"),
            batch: 2_000,
            block: Duration::from_millis(200),
            claim_after: Duration::from_secs(10),
        }
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
            view,
            stats: StreamStats::default(),
        };
        worker.create_group().await?;
        Ok(worker)
    }

    fn error(&self, source: redis::RedisError) -> SpeedError {
        SpeedError::Redis { url: self.url.clone(), source }
    }

    /// Creates the group at the start of the stream, unless it exists.
    async fn create_group(&mut self) -> Result<(), SpeedError> {
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.connection)
            .await;
        match created {
            Err(error) if error.to_string().contains("BUSYGROUP") => Ok(()),
            other => other.map_err(|e| self.error(e)),
        }
    }

    /// Processes one round: this consumer's own unacknowledged entries first (after a restart),
    /// then entries idle too long with a dead consumer, then new ones. Returns how many entries
    /// it handled (0 when the stream had nothing for it within the block time).
    pub async fn step(&mut self) -> Result<usize, SpeedError> {
        let batch = match self.ahead.take() {
            Some(batch) => batch,
            None => {
                let entries = self.next_entries().await?;
                if entries.is_empty() {
                    return Ok(0);
                }
                Batch::prepare(self.view, entries).await?
            }
        };
        // Redis writes this batch while the next one is read, decoded and folded here. Only new
        // entries are read ahead: pending ones are read when the stream runs dry, when nothing of
        // this worker's is in flight.
        let (mut reader, config, view) = (self.reader.clone(), self.config.clone(), self.view);
        let ahead = async move {
            let entries = read(&mut reader, &config, ">", false).await.map_err(|error| error.to_string())?;
            match entries.is_empty() {
                true => Ok(None),
                false => Batch::prepare(view, entries).await.map(Some).map_err(|error| error.to_string()),
            }
        };
        let (handled, ahead) = tokio::join!(self.handle(batch), ahead);
        match ahead {
            Ok(ahead) => self.ahead = ahead,
            // what the failed read took stays pending: it is read again once the stream runs dry
            Err(error) => tracing::warn!(%error, stream = %self.config.stream, "reading ahead failed"),
        }
        handled
    }

    async fn next_entries(&mut self) -> Result<Vec<StreamId>, SpeedError> {
        let own = self.read(">", false).await?;
        let own = if own.is_empty() { self.read("0", true).await? } else { own };
        if !own.is_empty() {
            return Ok(own);
        }
        self.claim().await
    }

    async fn read(&mut self, from: &str, pending: bool) -> Result<Vec<StreamId>, SpeedError> {
        read(&mut self.reader, &self.config, from, pending).await.map_err(|e| self.error(e))
    }

    async fn claim(&mut self) -> Result<Vec<StreamId>, SpeedError> {
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
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
        Ok(reply.claimed)
    }

    async fn handle(&mut self, batch: Batch) -> Result<usize, SpeedError> {
        let Batch { ids, raws, mut dead, prepared } = batch;
        let source = format!("stream:{}", self.config.stream);
        let (events, outcomes) = self.view.commit(prepared, &source).await?;
        let config = self.view.config();
        for ((event, outcome), (id, raw)) in events.iter().zip(&outcomes).zip(raws) {
            if let Some(error) = outcome.refusal(event, config) {
                dead.push(DeadLetter { entry: id, raw, error, ..DeadLetter::default() });
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

/// A batch of entries, decoded, its fold prepared: the entries' ids, each event's entry id and
/// raw payload, and the malformed entries' dead letters.
struct Batch {
    ids: Vec<String>,
    raws: Vec<(String, String)>,
    dead: Vec<DeadLetter>,
    prepared: Prepared<'static>,
}

impl Batch {
    async fn prepare(view: &SpeedView, entries: Vec<StreamId>) -> Result<Batch, SpeedError> {
        let mut events: Vec<Event> = Vec::with_capacity(entries.len());
        let mut raws = Vec::with_capacity(entries.len());
        let mut dead: Vec<DeadLetter> = Vec::new();
        let mut ids = Vec::with_capacity(entries.len());
        for entry in entries {
            let raw: Option<String> = entry.get("event");
            let letter = |error: String, raw: Option<String>| DeadLetter { entry: entry.id.clone(), raw: raw.unwrap_or_default(), error, ..DeadLetter::default() };
            match raw.as_deref().map(decode_json) {
                None => dead.push(letter("entry has no `event` field".to_string(), None)),
                Some(Err(error)) => dead.push(letter(error.to_string(), raw)),
                Some(Ok(event)) => {
                    events.push(event);
                    raws.push((entry.id.clone(), raw.unwrap_or_default()));
                }
            }
            ids.push(entry.id);
        }
        Ok(Batch { ids, raws, dead, prepared: view.prepare(events).await? })
    }
}

/// Reads up to a batch of entries: new ones (`>`, waiting up to the block time) or this
/// consumer's pending ones (`0`).
async fn read(connection: &mut Connection, config: &StreamConfig, from: &str, pending: bool) -> Result<Vec<StreamId>, redis::RedisError> {
    let mut options = StreamReadOptions::default().group(&config.group, &config.consumer).count(config.batch);
    if !pending {
        options = options.block(config.block.as_millis() as usize);
    }
    let reply: Option<StreamReadReply> =
        redis::cmd("XREADGROUP").arg(&options).arg("STREAMS").arg(&config.stream).arg(from).query_async(connection).await?;
    Ok(reply.map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect()).unwrap_or_default())
}

/// Appends events to a stream, one entry each, pipelined.
pub async fn publish(url: &str, stream: &str, lines: impl IntoIterator<Item = String>) -> Result<u64, SpeedError> {
    let error = |source| SpeedError::Redis { url: url.to_string(), source };
    let mut connection = Connection::open(url).await?;
    let mut published = 0u64;
    let mut pipe = redis::pipe();
    let mut pending = 0;
    for line in lines {
        pipe.cmd("XADD").arg(stream).arg("*").arg("event").arg(line).ignore();
        pending += 1;
        if pending == 1_000 {
            let () = pipe.query_async(&mut connection).await.map_err(error)?;
            published += pending;
            pending = 0;
            pipe = redis::pipe();
        }
    }
    if pending > 0 {
        let () = pipe.query_async(&mut connection).await.map_err(error)?;
        published += pending;
    }
    Ok(published)
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
