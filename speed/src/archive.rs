//! The archiver: every event accepted on a stream reaches the lake, exactly once, within a bounded
//! delay. It is a consumer group of its own on the stream (`sellable-archive`), beside the fold
//! workers' group, so the speed view and the lake each get every entry.
//!
//! Exactly once across crashes: each micro-batch is appended to the archive together with the id
//! of its last entry, in one commit ([`sellable_core::EventArchive`]). Entries are handled in
//! stream order by one consumer, so after a restart every entry at or before the recorded id was
//! written already: it is acknowledged without being written again. An entry is acknowledged only
//! after its batch's commit; a crash in between leaves it pending, and it is read again.
//!
//! What is archived: the events that decode and pass the door (the same checks as the fold
//! workers'); the others are the fold workers' dead letters, and are only acknowledged here.

use std::time::{Duration, Instant};

use sellable_core::event::decode_json;
use sellable_core::{Event, EventArchive};

use crate::stream::{self, entry_order, Entry, StreamConfig};
use crate::{Connection, SpeedError};

/// The consumer group the archiver reads a stream with.
pub const ARCHIVE_GROUP: &str = "sellable-archive";

/// What an archiver did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Entries read and acknowledged.
    pub entries: u64,
    /// Events appended to the archive.
    pub archived: u64,
    /// Entries acknowledged without writing: already archived before a restart.
    pub already_archived: u64,
    /// Entries not archived: malformed, or refused at the door.
    pub refused: u64,
    /// Appends (micro-batches) written.
    pub batches: u64,
}

/// The key the archive records a stream's position under.
pub fn position_key(stream: &str) -> String {
    format!("stream:{stream}")
}

/// Archives the stream of `config` (its group is replaced by [`ARCHIVE_GROUP`]) into `archive`
/// until `shutdown` completes or, with `idle_limit`, the stream has had nothing new that long.
/// A micro-batch is written when `config.batch` entries are waiting, or at the latest `max_delay`
/// after its first entry was read. `progress`, if given, holds the time (ms) of the last entry
/// archived and acknowledged.
pub async fn run_archiver(
    url: &str,
    archive: &dyn EventArchive,
    config: StreamConfig,
    max_delay: Duration,
    idle_limit: Option<Duration>,
    progress: Option<std::sync::Arc<std::sync::atomic::AtomicI64>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<ArchiveStats, SpeedError> {
    let config = StreamConfig { group: ARCHIVE_GROUP.to_string(), block: config.block.min(max_delay), ..config };
    let mut connection = Connection::open(url).await?;
    let error = |source| SpeedError::Redis { url: url.to_string(), source };
    stream::create_group(&mut connection, &config).await.map_err(error)?;
    let archived_to = archive.position(&position_key(&config.stream)).await.map_err(SpeedError::EventLog)?;
    let mut archived_to = archived_to.as_deref().map(entry_order);
    let mut stats = ArchiveStats::default();
    let mut last_work = Instant::now();
    tokio::pin!(shutdown);
    // this consumer's own pending entries first (a restart), then new ones
    let mut from = "0";
    loop {
        let mut batch: Vec<Entry> = Vec::new();
        let started = Instant::now();
        while batch.len() < config.batch && started.elapsed() < max_delay {
            let read = tokio::select! {
                _ = &mut shutdown => return Ok(stats),
                read = stream::read(&mut connection, &config, from, from == ">") => read,
            };
            let entries = match read {
                Ok(entries) => entries,
                Err(source) => {
                    // a Redis that came back empty lost the group with the stream: make it again
                    if source.to_string().contains("NOGROUP") {
                        stream::create_group(&mut connection, &config).await.map_err(error)?;
                        from = "0";
                        continue;
                    }
                    tracing::warn!(error = %error(source), "reading the stream to archive failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if entries.is_empty() {
                if from == "0" {
                    from = ">";
                    continue;
                }
                break;
            }
            batch.extend(entries);
            // pending entries stay pending until written: reading them again would repeat them
            if from == "0" {
                break;
            }
        }
        if batch.is_empty() {
            if idle_limit.is_some_and(|limit| last_work.elapsed() >= limit) {
                return Ok(stats);
            }
            continue;
        }
        last_work = Instant::now();
        let last = batch.iter().map(|entry| entry_order(&entry.id)).max();
        if let Err(error) = write(url, &mut connection, archive, &config, &mut archived_to, batch, &mut stats).await {
            // what was not acknowledged stays pending: read again from this consumer's own
            tracing::warn!(%error, stream = %config.stream, "archiving a batch failed; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            from = "0";
        } else if let (Some(progress), Some((ms, _))) = (&progress, last) {
            progress.store(ms as i64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Appends the batch's new events with its last entry id, then acknowledges every entry.
async fn write(
    url: &str,
    connection: &mut Connection,
    archive: &dyn EventArchive,
    config: &StreamConfig,
    archived_to: &mut Option<(u64, u64)>,
    batch: Vec<Entry>,
    stats: &mut ArchiveStats,
) -> Result<(), SpeedError> {
    let (door, now) = (config.door(), stream::clock_now());
    let ids: Vec<String> = batch.iter().map(|entry| entry.id.clone()).collect();
    let mut events: Vec<Event> = Vec::new();
    let mut already = 0;
    for Entry { id, event } in batch {
        if archived_to.is_some_and(|to| entry_order(&id) <= to) {
            already += 1;
            continue;
        }
        match event.ok().and_then(|raw| decode_json(&raw).ok()).filter(|event| door.check(event, now).is_ok()) {
            Some(event) => events.push(event),
            None => stats.refused += 1,
        }
    }
    // a batch of nothing new (all archived before, or all refused) writes nothing: what it would
    // record is read and refused again after a crash
    if !events.is_empty() {
        let last = ids.iter().max_by_key(|id| entry_order(id)).expect("a batch has entries").clone();
        archive.append_at(&events, &position_key(&config.stream), &last).await.map_err(SpeedError::EventLog)?;
        *archived_to = Some(entry_order(&last));
        stats.batches += 1;
    }
    let _: i64 = redis::cmd("XACK")
        .arg(&config.stream)
        .arg(&config.group)
        .arg(&ids)
        .query_async(connection)
        .await
        .map_err(|source| SpeedError::Redis { url: url.to_string(), source })?;
    stats.entries += ids.len() as u64;
    stats.archived += events.len() as u64;
    stats.already_archived += already;
    Ok(())
}
