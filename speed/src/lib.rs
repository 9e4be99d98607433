//! sellable-speed: the speed layer. It folds the events that arrived after the batch cutoff into
//! a [`SpeedView`]: Redis in production, or the embedded in-memory store that `sellable demo`
//! uses when no Redis URL is configured. Both give exactly the state of `core`'s fold.
//!
//! Redis layout: every SKU belongs to one of the namespace's partitions ([`partition`]; their
//! number is recorded in `<ns>:{layout}`, [`PARTITIONS`] when none is, and an epoch sizes it by
//! its catalog, [`partitions_for`]), and the keys of a partition share the hash tag `{p<n>}`, so a
//! Redis Cluster keeps them in one slot and no script crosses slots:
//! - `<ns>:{p<n>}:states` hash: per SKU (the field), the [`SkuState`] of all its nodes, encoded
//!   as [`sku_state`] describes (with a dedup window, it also holds the SKU's ids within it)
//! - `<ns>:{p<n>}:tokens` hash: per SKU, the token of its stored state (`<writer>.<n>`, new with
//!   every write), which a write names to be sure nobody changed the state since it was read
//! - `<ns>:{p<n>}:seen`   hash of folded `(sku, event_id)`s (idempotency), each with its
//!   content's print ([`Event::print`]; `0` for an id folded into the batch view), when no dedup
//!   window is set (keep one setting per namespace)
//! - `<ns>:{w<n>}`: latest arrival folded per node, the nodes spread over
//!   [`watermark_partitions`] hashes by [`partition`] of their name; `<ns>:{w0}:sources`:
//!   per source; `<ns>:dead`: the dead-letter stream of events refused outside a stream worker
//! - `<ns>:{p<n>}:batch` hash: per SKU of the epoch's catalog, its row of the batch view the
//!   speed view continues ([`SpeedView::publish`]; encoded as [`sku_state::encode_row`]), in the
//!   slot of its speed state so that one round trip reads both; `<ns>:{batch}:meta`: that batch
//!   view's name, cutoff and node watermarks (JSON), written last
//!
//! A fold reads its SKUs' states (or takes them from its cache), applies the events with
//! `core`'s rules, and writes each SKU back with [`WRITE_SCRIPT`] only if it is unchanged: a
//! handful of commands per partition and batch rather than several per event.
//!
//! Tests: unit tests in [`sku_state`]; the Redis integration tests are in `tests/it/` (need a
//! real Redis).

pub mod archive;
pub mod holds;
pub mod registry;
mod catch_up;
pub mod sku_state;
pub mod stream;

pub use catch_up::{catch_up, keep_caught_up, BatchRows, CatchUp, CatchUpSource};

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use sellable_core::event::DecodeError;
use sellable_core::fold::watermarks;
use sellable_core::view::{BoxFuture, Rows};
use sku_state::SkuState;
use sellable_core::fold::UNKNOWN_PRINT;
use sellable_core::{known_at, Ahead, BatchMeta, DeadLetter, Event, Fold, FoldConfig, FoldStats, Millis, NodeState, Outcome, SeenIds, SkuRead, SkuRow, ViewError, Watermarks};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    #[error("redis at {url}: {source}")]
    Redis { url: String, source: redis::RedisError },
    #[error("redis state of {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
    #[error("redis state of {key} was changed by other writers {attempts} times in a row while this fold tried to write it")]
    Contended { key: String, attempts: usize },
    #[error("reading the event log: {0}")]
    EventLog(#[source] ViewError),
    #[error("reading the batch view to publish: {0}")]
    BatchView(#[source] ViewError),
    #[error("reading {path}: {source}")]
    File { path: String, source: sellable_core::event::InputError },
}

/// The speed view: events since the batch cutoff, folded.
pub enum SpeedView {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl SpeedView {
    pub fn memory(config: FoldConfig) -> SpeedView {
        SpeedView::Memory(MemoryStore::new(config))
    }

    /// Connects to Redis; keys live under `namespace` so several views can share one server.
    pub async fn redis(url: &str, namespace: &str, config: FoldConfig) -> Result<SpeedView, SpeedError> {
        Ok(SpeedView::Redis(RedisStore::with(url, namespace, config, Connection::open(url).await?)))
    }

    /// A view on a Redis that need not be up yet: the connection is made at the first call and
    /// made again after a failure, each attempt bounded to a second (a server answering while
    /// Redis is away). A cluster URL connects at once, as [`SpeedView::redis`].
    pub async fn redis_lazy(url: &str, namespace: &str, config: FoldConfig) -> Result<SpeedView, SpeedError> {
        let connection = if url.contains(',') { Connection::open(url).await? } else { Connection::open_lazy(url)? };
        Ok(SpeedView::Redis(RedisStore::with(url, namespace, config, connection)))
    }

    pub fn config(&self) -> FoldConfig {
        match self {
            SpeedView::Memory(store) => store.fold.lock().expect("speed view lock poisoned; this is a bug").config,
            SpeedView::Redis(store) => store.config,
        }
    }

    /// Where the view lives, for logs and answers.
    pub fn describe(&self) -> String {
        match self {
            SpeedView::Memory(_) => "embedded".to_string(),
            SpeedView::Redis(store) => format!("redis {}", store.url),
        }
    }

    /// Folds events that came from `source` (for its watermark) atomically and idempotently;
    /// one outcome per event, in order.
    pub async fn fold(&self, events: &[Event], source: &str) -> Result<Vec<Outcome>, SpeedError> {
        match self {
            SpeedView::Memory(store) => Ok(store.fold(events, source)),
            SpeedView::Redis(store) => store.fold(events, source).await,
        }
    }

    /// Makes a fold of `events` ready to [`commit`](Self::commit): in Redis, their SKUs' new
    /// states are computed now, so a stream worker prepares its next batch while this one is
    /// sent. Folds may be prepared ahead of those committed before them, never committed out of
    /// order without loss: a write built on another that did not land is refused and redone.
    pub async fn prepare(&self, events: Vec<Event>) -> Result<Prepared<'static>, SpeedError> {
        match self {
            SpeedView::Memory(_) => Ok(Prepared { events: Cow::Owned(events), ops: BTreeMap::new(), calls: Vec::new(), after: None, sent: None }),
            SpeedView::Redis(store) => store.prepare(Cow::Owned(events)).await,
        }
    }

    /// Folds a prepared batch (from `source`, for its watermark): its events back, and one
    /// outcome per event, in order.
    pub async fn commit(&self, prepared: Prepared<'static>, source: &str) -> Result<(Vec<Event>, Vec<Outcome>), SpeedError> {
        match self {
            SpeedView::Memory(store) => {
                let outcomes = store.fold(&prepared.events, source);
                Ok((prepared.events.into_owned(), outcomes))
            }
            SpeedView::Redis(store) => {
                let (events, outcomes) = store.commit(prepared, source).await?;
                Ok((events.into_owned(), outcomes))
            }
        }
    }

    /// Keeps refused input: in the dead-letter stream `<namespace>:dead` in Redis, or the
    /// newest [`MEMORY_DEAD_LETTERS`] in memory.
    pub async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), SpeedError> {
        match self {
            SpeedView::Memory(store) => {
                let mut kept = store.dead_letters.lock().expect("speed view lock poisoned; this is a bug");
                for letter in letters {
                    let id = kept.back().map_or(1, |last: &DeadLetter| last.id.parse::<u64>().unwrap_or(0) + 1);
                    kept.push_back(DeadLetter { id: id.to_string(), ..letter.clone() });
                    if kept.len() > MEMORY_DEAD_LETTERS {
                        kept.pop_front();
                    }
                }
                Ok(())
            }
            SpeedView::Redis(store) => store.dead_letter(letters).await,
        }
    }

    /// The newest `count` dead letters, oldest first.
    pub async fn dead_letters(&self, count: usize) -> Result<Vec<DeadLetter>, SpeedError> {
        match self {
            SpeedView::Memory(store) => {
                let kept = store.dead_letters.lock().expect("speed view lock poisoned; this is a bug");
                Ok(kept.iter().skip(kept.len().saturating_sub(count)).cloned().collect())
            }
            SpeedView::Redis(store) => stream::dead_letters(&store.url, &store.dead_letter_key(), count).await,
        }
    }

    /// Folds decoded events (a file, a lake scan) from `source` in chunks, skipping those known
    /// at `cutoff` (they are in the batch view already). Malformed, too-late and expired events
    /// are dead-lettered and reported, not fatal.
    pub async fn fold_decoded(
        &self,
        decoded: impl IntoIterator<Item = Result<Event, DecodeError>>,
        cutoff: Option<Millis>,
        source: &str,
    ) -> Result<FoldReport, SpeedError> {
        let mut report = FoldReport::default();
        let mut chunk = Vec::with_capacity(FOLD_CHUNK);
        let mut decoded = decoded.into_iter().peekable();
        while decoded.peek().is_some() {
            chunk.clear();
            let mut dead = Vec::new();
            for event in decoded.by_ref() {
                match event {
                    Ok(event) if cutoff.is_some_and(|cutoff| known_at(&event, cutoff)) => report.before_cutoff += 1,
                    Ok(event) => chunk.push(event),
                    Err(error) => {
                        dead.push(DeadLetter {
                            entry: format!("{source} {}", error.location),
                            // the file keeps the raw line; the entry says where
                            raw: String::new(),
                            error: error.to_string(),
                            ..DeadLetter::default()
                        });
                        report.rejected.push(error);
                    }
                }
                if chunk.len() == FOLD_CHUNK {
                    break;
                }
            }
            let outcomes = self.fold(&chunk, source).await?;
            for (event, outcome) in chunk.iter().zip(&outcomes) {
                if let Some(reason) = outcome.refusal(event, self.config()) {
                    let raw = sellable_core::event::encode_json(event);
                    dead.push(DeadLetter { entry: format!("{source} event {}", event.event_id), raw, error: reason, ..DeadLetter::default() });
                }
            }
            self.dead_letter(&dead).await?;
            report.stats.add(FoldStats::of(&outcomes));
        }
        Ok(report)
    }

    /// Per node and per source, the latest arrival folded.
    pub async fn watermarks(&self) -> Result<Watermarks, SpeedError> {
        match self {
            SpeedView::Memory(store) => Ok(store.watermarks.lock().expect("speed view lock poisoned; this is a bug").clone()),
            SpeedView::Redis(store) => store.watermarks().await,
        }
    }

    /// Records `(sku, event_id)`s folded into the batch view (known at `arrival`, the cutoff),
    /// so that a copy redelivered after the cutoff counts as a duplicate instead of twice.
    pub async fn remember(&self, ids: &[(String, String)], arrival: Millis) -> Result<(), SpeedError> {
        match self {
            SpeedView::Memory(store) => {
                let mut fold = store.fold.lock().expect("speed view lock poisoned; this is a bug");
                ids.iter().for_each(|(sku, event_id)| fold.remember(sku, event_id, arrival));
                Ok(())
            }
            SpeedView::Redis(store) => store.remember(ids, arrival).await,
        }
    }

    /// Publishes the batch view this speed view continues: its `rows` (one per SKU of the
    /// catalog) then its `meta`, which readers take as the sign that every row is there. Call it
    /// on a view that holds no other batch view (after [`SpeedView::clear`]).
    pub async fn publish(&self, meta: &BatchMeta, rows: Rows) -> Result<u64, SpeedError> {
        match self {
            SpeedView::Memory(store) => {
                let (mut rows, mut all) = (rows, HashMap::new());
                loop {
                    let chunk;
                    (rows, chunk) = take_rows(rows, PUBLISH_CHUNK).await?;
                    if chunk.is_empty() {
                        break;
                    }
                    all.extend(chunk.into_iter().map(|row| (row.info.sku.clone(), Arc::new(row))));
                }
                let mut published = store.published.lock().expect("speed view lock poisoned; this is a bug");
                published.rows = all;
                published.meta = Some(meta.clone());
                Ok(published.rows.len() as u64)
            }
            SpeedView::Redis(store) => store.publish(meta, rows).await,
        }
    }

    /// The metadata of the published batch view, if one is published.
    pub async fn batch_meta(&self) -> Result<Option<BatchMeta>, SpeedError> {
        match self {
            SpeedView::Memory(store) => Ok(store.published.lock().expect("speed view lock poisoned; this is a bug").meta.clone()),
            SpeedView::Redis(store) => store.batch_meta().await,
        }
    }

    /// The state of every node that has one for `sku`, ordered by node.
    pub async fn sku_states(&self, sku: &str) -> Result<Vec<(String, NodeState)>, SpeedError> {
        match self {
            SpeedView::Memory(store) => Ok(store.sku_states(sku)),
            SpeedView::Redis(store) => store.sku_states(sku).await,
        }
    }

    /// Rewrites the state of one sku×node atomically (`None` removes it): how `sellable
    /// reconcile --repair` brings a drifted counter back to the truth. The record of folded
    /// event ids is left as it is.
    pub async fn replace(&self, sku: &str, node: &str, state: Option<&NodeState>) -> Result<(), SpeedError> {
        match self {
            SpeedView::Memory(store) => {
                let mut fold = store.fold.lock().expect("speed view lock poisoned; this is a bug");
                let key = (sku.to_string(), node.to_string());
                match state {
                    Some(state) => fold.states.insert(key, state.clone()),
                    None => fold.states.remove(&key),
                };
                Ok(())
            }
            SpeedView::Redis(store) => store.replace(sku, node, state).await,
        }
    }

    /// Sets the partition count of a Redis namespace that holds nothing yet (just cleared); the
    /// embedded view has no partitions.
    pub async fn set_partitions(&self, partitions: u64) -> Result<(), SpeedError> {
        match self {
            SpeedView::Memory(_) => Ok(()),
            SpeedView::Redis(store) => store.set_partitions(partitions).await,
        }
    }

    /// The partition count of a Redis namespace as recorded in it (`None` for the embedded view).
    pub async fn partitions(&self) -> Result<Option<u64>, SpeedError> {
        match self {
            SpeedView::Memory(_) => Ok(None),
            SpeedView::Redis(store) => store.layout(false).await.map(Some),
        }
    }

    /// Forgets everything (a new batch cutoff starts a new speed view).
    pub async fn clear(&self) -> Result<(), SpeedError> {
        match self {
            SpeedView::Memory(store) => {
                let mut fold = store.fold.lock().expect("speed view lock poisoned; this is a bug");
                *fold = Fold::new(fold.config);
                *store.watermarks.lock().expect("speed view lock poisoned; this is a bug") = Watermarks::default();
                *store.caught_up.lock().expect("speed view lock poisoned; this is a bug") = None;
                *store.published.lock().expect("speed view lock poisoned; this is a bug") = Published::default();
                Ok(())
            }
            SpeedView::Redis(store) => store.clear().await,
        }
    }

    /// Records that the view holds every event of the lake that arrived after `cutoff`
    /// ([`catch_up`] does, last). A view that lost its data (Redis restarted empty) loses the
    /// mark with it, so readers can tell it is no longer complete.
    pub async fn mark_caught_up(&self, cutoff: Millis) -> Result<(), SpeedError> {
        match self {
            SpeedView::Memory(store) => {
                *store.caught_up.lock().expect("speed view lock poisoned; this is a bug") = Some(cutoff);
                Ok(())
            }
            SpeedView::Redis(store) => {
                let mut connection = store.connection.clone();
                let () = redis::cmd("SET").arg(store.caught_up_key()).arg(cutoff).query_async(&mut connection).await.map_err(|e| store.error(e))?;
                Ok(())
            }
        }
    }

    /// Takes the mark of [`SpeedView::mark_caught_up`] away: the view is not to be trusted
    /// until it is marked again (an epoch whose stream part is still being folded).
    pub async fn unmark_caught_up(&self) -> Result<(), SpeedError> {
        match self {
            SpeedView::Memory(store) => {
                *store.caught_up.lock().expect("speed view lock poisoned; this is a bug") = None;
                Ok(())
            }
            SpeedView::Redis(store) => {
                let mut connection = store.connection.clone();
                let _: i64 = redis::cmd("DEL").arg(store.caught_up_key()).query_async(&mut connection).await.map_err(|e| store.error(e))?;
                Ok(())
            }
        }
    }

    /// The cutoff the view was last caught up from, if its mark is there.
    pub async fn caught_up_to(&self) -> Result<Option<Millis>, SpeedError> {
        match self {
            SpeedView::Memory(store) => Ok(*store.caught_up.lock().expect("speed view lock poisoned; this is a bug")),
            SpeedView::Redis(store) => {
                let mut connection = store.connection.clone();
                let key = store.caught_up_key();
                let mark: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut connection).await.map_err(|e| store.error(e))?;
                parse_mark(key, mark)
            }
        }
    }
}

/// The catch-up mark as stored under `key` (milliseconds), if there is one.
fn parse_mark(key: String, mark: Option<String>) -> Result<Option<Millis>, SpeedError> {
    mark.map(|text| text.parse().map_err(|_| SpeedError::Corrupt { key, message: format!("'{text}' is not milliseconds") })).transpose()
}

impl sellable_core::SpeedSource for SpeedView {
    fn watermarks(&self) -> BoxFuture<'_, Result<Watermarks, ViewError>> {
        Box::pin(async move { Ok(SpeedView::watermarks(self).await?) })
    }

    fn fold<'a>(&'a self, events: &'a [Event], source: &'a str) -> BoxFuture<'a, Result<Vec<Outcome>, ViewError>> {
        Box::pin(async move { Ok(SpeedView::fold(self, events, source).await?) })
    }

    fn dead_letter<'a>(&'a self, letters: &'a [DeadLetter]) -> BoxFuture<'a, Result<(), ViewError>> {
        Box::pin(async move { Ok(SpeedView::dead_letter(self, letters).await?) })
    }

    fn caught_up_to(&self) -> BoxFuture<'_, Result<Option<Millis>, ViewError>> {
        Box::pin(async move { Ok(SpeedView::caught_up_to(self).await?) })
    }

    fn known<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<Vec<bool>, ViewError>> {
        Box::pin(async move {
            match self {
                SpeedView::Memory(store) => {
                    let fold = store.fold.lock().expect("speed view lock poisoned; this is a bug");
                    Ok(events.iter().map(|event| fold.knows(&event.sku, &event.event_id)).collect())
                }
                SpeedView::Redis(store) => Ok(store.known(events).await?),
            }
        })
    }

    fn sku_read<'a>(&'a self, sku: &'a str) -> BoxFuture<'a, Result<SkuRead, ViewError>> {
        Box::pin(async move {
            match self {
                SpeedView::Memory(store) => Ok(SkuRead {
                    row: store.published.lock().expect("speed view lock poisoned; this is a bug").rows.get(sku).cloned(),
                    speed: store.sku_states(sku),
                    caught_up: *store.caught_up.lock().expect("speed view lock poisoned; this is a bug"),
                }),
                SpeedView::Redis(store) => Ok(store.sku_reads(&[sku], &[]).await?.pop().expect("one read per SKU")),
            }
        })
    }

    fn sku_reads<'a>(&'a self, skus: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<SkuRead>, ViewError>> {
        Box::pin(async move {
            match self {
                SpeedView::Memory(_) => sellable_core::view::read_each(self, skus).await,
                SpeedView::Redis(store) => Ok(store.sku_reads(skus, &[]).await?),
            }
        })
    }

    fn sku_reads_having<'a>(&'a self, skus: &'a [&'a str], have: &'a [bool]) -> BoxFuture<'a, Result<Vec<SkuRead>, ViewError>> {
        Box::pin(async move {
            match self {
                SpeedView::Memory(_) => sellable_core::view::read_each(self, skus).await,
                SpeedView::Redis(store) => Ok(store.sku_reads(skus, have).await?),
            }
        })
    }

    fn server(&self) -> Option<&str> {
        match self {
            SpeedView::Redis(store) if !store.connection.is_cluster() => Some(&store.url),
            _ => None,
        }
    }

    fn sku_reads_after<'a>(&'a self, ahead: &'a Ahead, skus: &'a [&'a str], have: &'a [bool]) -> BoxFuture<'a, Result<Option<sellable_core::view::ReadsAfter>, ViewError>> {
        Box::pin(async move {
            match self {
                SpeedView::Redis(store) if self.server() == Some(ahead.server.as_str()) => Ok(Some(store.sku_reads_after(&ahead.fields, skus, have).await?)),
                _ => Ok(None),
            }
        })
    }

    fn batch_meta(&self) -> BoxFuture<'_, Result<Option<BatchMeta>, ViewError>> {
        Box::pin(async move { Ok(SpeedView::batch_meta(self).await?) })
    }

    fn skus_known<'a>(&'a self, skus: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<bool>, ViewError>> {
        Box::pin(async move {
            match self {
                SpeedView::Memory(store) => {
                    let published = store.published.lock().expect("speed view lock poisoned; this is a bug");
                    Ok(skus.iter().map(|sku| published.rows.contains_key(*sku)).collect())
                }
                SpeedView::Redis(store) => Ok(store.skus_known(skus).await?),
            }
        })
    }

    fn describe(&self) -> String {
        SpeedView::describe(self)
    }

    fn config(&self) -> FoldConfig {
        SpeedView::config(self)
    }
}

/// Events folded per call when folding a stream.
const FOLD_CHUNK: usize = 10_000;

/// Dead letters the embedded view keeps (the oldest go first).
pub const MEMORY_DEAD_LETTERS: usize = 10_000;

/// What folding a stream did.
#[derive(Debug, Default)]
pub struct FoldReport {
    pub stats: FoldStats,
    /// Events already in the batch view (arrived at or before the cutoff), skipped.
    pub before_cutoff: u64,
    /// Malformed events, with their line or row and field.
    pub rejected: Vec<DecodeError>,
}

/// The embedded speed view: `core`'s reference fold behind a lock.
pub struct MemoryStore {
    fold: Mutex<Fold>,
    watermarks: Mutex<Watermarks>,
    dead_letters: Mutex<VecDeque<DeadLetter>>,
    caught_up: Mutex<Option<Millis>>,
    published: Mutex<Published>,
}

/// The batch view published in an embedded view.
#[derive(Default)]
struct Published {
    meta: Option<BatchMeta>,
    rows: HashMap<String, Arc<SkuRow>>,
}

impl MemoryStore {
    pub fn new(config: FoldConfig) -> MemoryStore {
        MemoryStore {
            fold: Mutex::new(Fold::new(config)),
            watermarks: Mutex::new(Watermarks::default()),
            dead_letters: Mutex::new(VecDeque::new()),
            caught_up: Mutex::new(None),
            published: Mutex::new(Published::default()),
        }
    }

    fn fold(&self, events: &[Event], source: &str) -> Vec<Outcome> {
        let mut fold = self.fold.lock().expect("speed view lock poisoned; this is a bug");
        let outcomes: Vec<Outcome> = events.iter().map(|event| fold.apply(event)).collect();
        let mut marks = self.watermarks.lock().expect("speed view lock poisoned; this is a bug");
        let nodes = watermarks(events, fold.config);
        if let Some(newest) = nodes.values().max() {
            raise(&mut marks.sources, source.to_string(), *newest);
        }
        for (node, arrived) in nodes {
            raise(&mut marks.nodes, node, arrived);
        }
        outcomes
    }

    fn sku_states(&self, sku: &str) -> Vec<(String, NodeState)> {
        let fold = self.fold.lock().expect("speed view lock poisoned; this is a bug");
        let start = (sku.to_string(), String::new());
        fold.states
            .range(start..)
            .take_while(|((state_sku, _), _)| state_sku == sku)
            .map(|((_, node), state)| (node.clone(), state.clone()))
            .collect()
    }
}

/// Writes the new states of a batch of SKUs of one partition, each only if nobody changed it
/// since it was read. KEYS: the partition's hash of states, hash of tokens and hash of folded
/// ids. ARGV, per SKU: the SKU, the token of the state it was folded from (empty: none yet), the
/// new state's token (unique to this write), its new state (empty: remove it), the number of ids
/// it folds, then those ids (as [`id_member`] spells them) each followed by its print. A SKU is
/// written, its token replaced and its ids added only if its token is still the one it was
/// folded from and none of its ids was folded meanwhile. The reply has one flag per SKU: 1
/// written, 0 not (read it again and fold again). Commands per call: HMGET (two), HSET (three),
/// HDEL (one each per 1,000 ids), whatever the number of SKUs.
///
/// Both hashes also hold the field `{hashtable}` (no SKU or node has braces) with a value longer
/// than Redis keeps in a listpack (`hash-max-listpack-value`, 64 bytes by default), which makes
/// them hash tables for good: a small hash (up to `hash-max-listpack-entries` fields, 128 to
/// 512) is otherwise a listpack, where every field looked up is a scan of all of them, and each
/// call looks hundreds up (a quarter of the script's time at 150 SKUs per partition).
const WRITE_SCRIPT: &str = r#"
local states, tokens, ids = KEYS[1], KEYS[2], KEYS[3]
local skus, from, token, to, members, prints, first, last = {}, {}, {}, {}, {}, {}, {}, {}
local i = 1
while i <= #ARGV do
  local k = #skus + 1
  skus[k], from[k], token[k], to[k] = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local n = tonumber(ARGV[i + 4])
  first[k], last[k] = #members + 1, #members + n
  for j = 1, n do members[#members + 1], prints[#members + 1] = ARGV[i + 3 + 2 * j], ARGV[i + 4 + 2 * j] end
  i = i + 5 + 2 * n
end
local current = redis.call('HMGET', tokens, unpack(skus))
-- Lua unpacks a few thousand values at most: the ids go 1000 per command
local known = {}
for s = 1, #members, 1000 do
  local part = redis.call('HMGET', ids, unpack(members, s, math.min(s + 999, #members)))
  for j = 1, #part do known[s + j - 1] = part[j] end
end
local written, retoken, sets, dels, adds = {}, {}, {}, {}, {}
for k = 1, #skus do
  local ok = (current[k] or '') == from[k]
  for j = first[k], last[k] do
    if known[j] then ok = false end
  end
  written[k] = ok and 1 or 0
  if ok then
    retoken[#retoken + 1], retoken[#retoken + 2] = skus[k], token[k]
    if to[k] == '' then
      dels[#dels + 1] = skus[k]
    else
      sets[#sets + 1], sets[#sets + 2] = skus[k], to[k]
    end
    for j = first[k], last[k] do adds[#adds + 1], adds[#adds + 2] = members[j], prints[j] end
  end
end
local function hset(hash, pairs)
  if #pairs == 0 then return end
  pairs[#pairs + 1], pairs[#pairs + 2] = '{hashtable}', string.rep('-', 256)
  redis.call('HSET', hash, unpack(pairs))
end
hset(tokens, retoken)
hset(states, sets)
if #dels > 0 then redis.call('HDEL', states, unpack(dels)) end
for s = 1, #adds, 1000 do redis.call('HSET', ids, unpack(adds, s, math.min(s + 999, #adds))) end
return written
"#;

/// Raises watermarks: KEYS are hashes of watermarks in one slot (the nodes of one watermark
/// partition, and with the first partition the sources' hash); ARGV is, per key, the number of
/// name/arrival pairs, then the pairs. A watermark never goes back. One `HMGET` and one `HSET`
/// per 1,000 names (a fold raises hundreds), not one of each per name.
const WATERMARK_SCRIPT: &str = r#"
local function raise(hash, first, last)
  local fields, arrivals = {}, {}
  for i = first, last, 2 do
    fields[#fields + 1], arrivals[#arrivals + 1] = ARGV[i], ARGV[i + 1]
  end
  -- Lua unpacks a few thousand values at most: 1000 nodes per command
  for s = 1, #fields, 1000 do
    local e = math.min(s + 999, #fields)
    local current = redis.call('HMGET', hash, unpack(fields, s, e))
    local rises = {}
    for k = s, e do
      local now = current[k - s + 1]
      if not now or tonumber(arrivals[k]) > tonumber(now) then
        rises[#rises + 1], rises[#rises + 2] = fields[k], arrivals[k]
      end
    end
    if #rises > 0 then
      -- kept a hash table, as the write script's hashes are (see there)
      rises[#rises + 1], rises[#rises + 2] = '{hashtable}', string.rep('-', 256)
      redis.call('HSET', hash, unpack(rises))
    end
  end
end
local at = 1
for k = 1, #KEYS do
  local n = tonumber(ARGV[at])
  raise(KEYS[k], at + 1, at + 2 * n)
  at = at + 1 + 2 * n
end
return 1
"#;

/// A connection to one Redis server (reconnecting by itself) or to a Redis Cluster (routing each
/// command to the node of its key's slot). A URL with commas names the nodes of a cluster:
/// `redis://10.0.0.1:7000,redis://10.0.0.2:7000`.
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// One server, a connection per lane ([`sellable_core::lane`]), each made at the lane's first
    /// command, in the lane's runtime: a request's command goes out and its reply comes back on
    /// the thread that asked.
    Lanes(Arc<Lanes>),
}

/// The connections of [`Connection::Lanes`].
pub struct Lanes {
    client: redis::Client,
    config: redis::aio::ConnectionManagerConfig,
    made: [std::sync::OnceLock<ConnectionManager>; sellable_core::lane::MOST],
}

impl Lanes {
    /// This lane's connection (made now if it is the lane's first command).
    fn here(&self) -> redis::RedisResult<ConnectionManager> {
        let place = &self.made[sellable_core::lane::place()];
        if let Some(made) = place.get() {
            return Ok(made.clone());
        }
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())?;
        Ok(place.get_or_init(|| made).clone())
    }
}

impl Connection {
    pub async fn open(url: &str) -> Result<Connection, SpeedError> {
        let error = |source| SpeedError::Redis { url: url.to_string(), source };
        if url.contains(',') {
            let client = redis::cluster::ClusterClient::new(url.split(',').map(str::trim)).map_err(error)?;
            Ok(Connection::Cluster(client.get_async_connection().await.map_err(error)?))
        } else {
            let client = redis::Client::open(url).map_err(error)?;
            Ok(Connection::Single(ConnectionManager::new(client).await.map_err(error)?))
        }
    }

    /// One server, connected at each lane's first command.
    pub(crate) fn open_lazy(url: &str) -> Result<Connection, SpeedError> {
        let error = |source| SpeedError::Redis { url: url.to_string(), source };
        let client = redis::Client::open(url).map_err(error)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(1)))
            .set_number_of_retries(1);
        Ok(Connection::Lanes(Arc::new(Lanes { client, config, made: std::array::from_fn(|_| std::sync::OnceLock::new()) })))
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }
}

/// Why a single Redis server's persistence could lose or replay acknowledged writes after two
/// crashes, if it could; `None` also when the server does not say (`CONFIG` renamed away, or a
/// cluster, whose nodes are asked nothing). With an append-only file, Redis 7's own repair of a
/// torn last write (`aof-load-truncated yes`, its default) can keep half of a Lua script's writes
/// for the next restart to replay, and lose what came after them: `scripts/redis-durable.sh`
/// starts Redis so that it cannot.
pub async fn persistence_hazard(url: &str) -> Option<String> {
    if url.contains(',') {
        return None;
    }
    let mut connection = redis::Client::open(url).ok()?.get_multiplexed_async_connection().await.ok()?;
    let config: HashMap<String, String> =
        redis::cmd("CONFIG").arg("GET").arg("appendonly").arg("aof-load-truncated").query_async(&mut connection).await.ok()?;
    let set = |name: &str| config.get(name).is_some_and(|value| value == "yes");
    (set("appendonly") && set("aof-load-truncated")).then(|| {
        format!(
            "redis at {url} keeps an append-only file with aof-load-truncated yes: after a crash that tears its last write, \
             the next restart but one can lose acknowledged writes (events folded twice or lost); \
             start it with scripts/redis-durable.sh, or set aof-load-truncated no (see docs/operations.md, \"Redis persistence\")"
        )
    })
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
            Connection::Lanes(lanes) => {
                let here = lanes.here();
                Box::pin(async move {
                    let mut here = here?;
                    here.req_packed_command(cmd).await
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
            Connection::Lanes(lanes) => {
                let here = lanes.here();
                Box::pin(async move {
                    let mut here = here?;
                    here.req_packed_commands(pipeline, offset, count).await
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
            Connection::Lanes(lanes) => lanes.client.get_connection_info().redis_settings().db(),
        }
    }
}

/// The speed view in Redis (a single server or a cluster). Every SKU belongs to one of
/// [`PARTITIONS`] partitions, whose keys share a hash tag: each script and each read touches one
/// slot. Events are folded here, with `core`'s rules, into the SKU's stored state; the write
/// script stores the new state only if nobody changed it meanwhile (see [`WRITE_SCRIPT`]).
pub struct RedisStore {
    url: String,
    namespace: String,
    config: FoldConfig,
    connection: Connection,
    /// The namespace's partition count as read from (or written to) `<ns>:{layout}`; 0 until then.
    partitions: AtomicU64,
    script: redis::Script,
    watermark_script: redis::Script,
    /// Names this store's writes: a SKU's token is `<writer>.<n>`, unique to the write.
    writer: String,
    writes: AtomicU64,
    /// Per SKU, the state this process wrote last (or is writing: see [`RedisStore::prepare`])
    /// and its token, so that folding it again needs no read first: the write script tells
    /// when it is not what Redis holds.
    cache: Mutex<HashMap<String, (String, SkuState)>>,
    /// Folds of this store are prepared one at a time and sent in the order they were prepared:
    /// this holds the signal that the last one prepared has been sent. So this process's folds
    /// build on each other's states instead of racing for them.
    order: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

/// The field the scripts add to the hashes they look many fields up in, to keep them hash
/// tables (see [`WRITE_SCRIPT`]); never a SKU or a node, which have no braces.
const HASHTABLE_FIELD: &str = "{hashtable}";

/// Partitions of a namespace that records none: a few large commands per partition and batch,
/// whatever the number of SKUs, and on a cluster as many slots to spread over its masters.
pub const PARTITIONS: u64 = 16;

/// SKUs per partition that [`partitions_for`] aims at.
const SKUS_PER_PARTITION: u64 = 5_000;

/// The partition count for a catalog of `skus` SKUs: about [`SKUS_PER_PARTITION`] SKUs each, a
/// power of two from [`PARTITIONS`] to 16,384 (a Redis Cluster's slots), so that the keys spread
/// over every master of a cluster and no one hash grows without bound (120M SKUs: 16,384
/// partitions of 7,300).
pub fn partitions_for(skus: usize) -> u64 {
    (skus as u64).div_ceil(SKUS_PER_PARTITION).next_power_of_two().clamp(PARTITIONS, 16_384)
}

/// Hashes the node watermarks are spread over, for `partitions` partitions: one per 256
/// partitions, 1 to 64 (a fold raises each hash it touches with a call of its own, and serving
/// reads them all every second).
pub fn watermark_partitions(partitions: u64) -> u64 {
    (partitions / 256).clamp(1, 64)
}

/// SKUs per call of the write script: the call's cost is shared by many SKUs, and its arguments
/// stay far below Lua's limit on unpacking.
const SKUS_PER_CALL: usize = 500;

/// Rows encoded and sent at a time when a batch view is published.
const PUBLISH_CHUNK: usize = 20_000;

/// Up to `count` rows of `rows`, taken off the async runtime (a streamed view's iterator blocks
/// while it reads the next rows); fewer only at the end.
async fn take_rows(rows: Rows, count: usize) -> Result<(Rows, Vec<SkuRow>), SpeedError> {
    let (rows, chunk) = tokio::task::spawn_blocking(move || {
        let mut rows = rows;
        let chunk = rows.by_ref().take(count).collect::<Result<Vec<_>, _>>();
        (rows, chunk)
    })
    .await
    .map_err(|error| SpeedError::BatchView(Box::new(error)))?;
    Ok((rows, chunk.map_err(SpeedError::BatchView)?))
}

/// Ids per command when recording ids folded into the batch view.
const IDS_PER_COMMAND: usize = 2_000;

/// Commands of a bulk write (a batch view published, ids remembered) on their way at once.
const COMMANDS_IN_FLIGHT: usize = 8;

/// SKUs whose stored state the cache keeps; past that it starts again empty.
const CACHE_SKUS: usize = 500_000;

/// How often a SKU is read and folded again because another writer changed it first, before
/// the fold gives up with an error (each round, at least one writer gets through).
const ATTEMPTS: usize = 1_000;

/// What a fold does to the state of one SKU.
enum Op<'a> {
    /// The event at this index of the fold's events.
    Fold(usize),
    /// An id folded into the batch view (known at that arrival).
    Remember(&'a str, Millis),
    /// A node's state rewritten as it is (`None`: removed).
    Replace(&'a str, Option<&'a NodeState>),
}

/// Per SKU, its ops with the index of their outcome.
type Ops<'a> = BTreeMap<String, Vec<(usize, Op<'a>)>>;

/// One SKU's write: the token of the state it was folded from ('' for none) and of the new one,
/// the new state's stored form, the ids it adds with their prints, and the outcomes of its ops.
struct Write {
    sku: String,
    from: String,
    token: String,
    to: Vec<u8>,
    ids: Vec<(String, u32)>,
    outcomes: Vec<(usize, Outcome)>,
}

/// The calls of the write script that one attempt of a fold sends: per partition, its SKUs.
type Calls = Vec<(u64, Vec<Write>)>;

/// A fold made ready by [`SpeedView::prepare`]: its events, and, in Redis, their ops per SKU and
/// the writes of the first attempt. [`SpeedView::commit`] sends them.
pub struct Prepared<'e> {
    events: Cow<'e, [Event]>,
    ops: Ops<'e>,
    calls: Calls,
    /// Resolves once the fold prepared before this one has been sent.
    after: Option<oneshot::Receiver<()>>,
    /// Tells the fold prepared after this one that this one has been sent (or dropped).
    sent: Option<oneshot::Sender<()>>,
}

impl Prepared<'_> {
    pub fn events(&self) -> &[Event] {
        &self.events
    }
}

/// The partition of a SKU (or a node's watermark) among `partitions`: FNV-1a of its bytes, so
/// every process and version agrees.
pub fn partition(name: &str, partitions: u64) -> u64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3));
    hash % partitions.max(1)
}

/// A member of a partition's set of folded ids: the SKU's length, then the SKU and the id, so no
/// two (sku, id) pairs share one whatever they contain.
fn id_member(sku: &str, event_id: &str) -> String {
    format!("{}:{sku}{event_id}", sku.len())
}

impl RedisStore {
    fn with(url: &str, namespace: &str, config: FoldConfig, connection: Connection) -> RedisStore {
        RedisStore {
            url: url.to_string(),
            namespace: namespace.to_string(),
            config,
            connection,
            partitions: AtomicU64::new(0),
            script: redis::Script::new(WRITE_SCRIPT),
            watermark_script: redis::Script::new(WATERMARK_SCRIPT),
            writer: format!("{:016x}", RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))),
            writes: AtomicU64::new(0),
            cache: Mutex::new(HashMap::new()),
            order: tokio::sync::Mutex::new(None),
        }
    }

    fn error(&self, source: redis::RedisError) -> SpeedError {
        SpeedError::Redis { url: self.url.clone(), source }
    }

    fn layout_key(&self) -> String {
        format!("{}:{{layout}}", self.namespace)
    }

    /// Reads the namespace's partition count, once: every call that places a SKU or a node
    /// starts here. With none recorded, a writer records [`PARTITIONS`]; a reader takes it
    /// without keeping it (and asks again next time), so it never keeps a count that a writer is
    /// about to set.
    async fn layout(&self, writing: bool) -> Result<u64, SpeedError> {
        let known = self.partitions.load(Ordering::Relaxed);
        if known != 0 {
            return Ok(known);
        }
        let mut connection = self.connection.clone();
        let key = self.layout_key();
        if writing {
            let _: Option<String> = redis::cmd("SET").arg(&key).arg(PARTITIONS).arg("NX").query_async(&mut connection).await.map_err(|e| self.error(e))?;
        }
        let stored: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut connection).await.map_err(|e| self.error(e))?;
        let Some(stored) = stored else { return Ok(PARTITIONS) };
        let partitions = stored.parse::<u64>().ok().filter(|count| (1..=16_384).contains(count));
        let partitions = partitions.ok_or_else(|| SpeedError::Corrupt { key, message: format!("partition count '{stored}' is not a number from 1 to 16384") })?;
        self.partitions.store(partitions, Ordering::Relaxed);
        Ok(partitions)
    }

    /// Records the partition count of a namespace that holds nothing yet (after [`Self::clear`]).
    async fn set_partitions(&self, partitions: u64) -> Result<(), SpeedError> {
        let partitions = partitions.clamp(1, 16_384);
        let mut connection = self.connection.clone();
        redis::cmd("SET").arg(self.layout_key()).arg(partitions).query_async::<()>(&mut connection).await.map_err(|e| self.error(e))?;
        self.partitions.store(partitions, Ordering::Relaxed);
        Ok(())
    }

    /// The partition of `sku` under the layout [`Self::layout`] read.
    fn partition(&self, sku: &str) -> u64 {
        partition(sku, self.partition_count())
    }

    /// The partition count [`Self::layout`] read ([`PARTITIONS`] if none is recorded).
    fn partition_count(&self) -> u64 {
        match self.partitions.load(Ordering::Relaxed) {
            0 => PARTITIONS,
            known => known,
        }
    }

    /// A partition's hash of SKU states (field: the SKU), hash of their tokens (new with every
    /// write) and hash of folded ids with their prints (used when no dedup window is set; with
    /// one, the ids are kept in each SKU's state, trimmed to it).
    fn partition_keys(&self, partition: u64) -> [String; 3] {
        ["states", "tokens", "seen"].map(|name| self.partition_key(partition, name))
    }

    /// The first of [`Self::partition_keys`], alone (a read needs no other).
    fn states_key(&self, partition: u64) -> String {
        self.partition_key(partition, "states")
    }

    /// The key `name` of a partition, in its slot (written without `format!`, which costs more
    /// than the rest of a SKU's read).
    fn partition_key(&self, partition: u64, name: &str) -> String {
        [self.namespace.as_str(), ":{p", &partition.to_string(), "}:", name].concat()
    }

    fn corrupt(&self, sku: &str, message: String) -> SpeedError {
        SpeedError::Corrupt { key: format!("{} field {sku}", self.states_key(self.partition(sku))), message }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, SkuState)>> {
        self.cache.lock().expect("speed view lock poisoned; this is a bug")
    }

    /// The hashes of node watermarks (one per watermark partition), then that of the sources (in
    /// the first one's slot).
    fn watermark_keys(&self) -> (Vec<String>, String) {
        let nodes = (0..watermark_partitions(self.partition_count())).map(|partition| format!("{}:{{w{partition}}}", self.namespace)).collect();
        (nodes, format!("{}:{{w0}}:sources", self.namespace))
    }

    /// A partition's hash of published batch rows (field: the SKU), in the slot of its states.
    fn batch_key(&self, partition: u64) -> String {
        self.partition_key(partition, "batch")
    }

    /// The published batch view's metadata, written after its rows.
    fn meta_key(&self) -> String {
        format!("{}:{{batch}}:meta", self.namespace)
    }

    fn dead_letter_key(&self) -> String {
        format!("{}:dead", self.namespace)
    }

    /// The cutoff the view was caught up from ([`SpeedView::mark_caught_up`]), beside the
    /// watermarks.
    fn caught_up_key(&self) -> String {
        format!("{}:{{watermarks}}:caught_up", self.namespace)
    }

    /// Raises the watermarks of the events' nodes and of `source`: one script call per
    /// watermark partition touched (the source's with the first), sent together.
    async fn raise_watermarks(&self, events: &[Event], source: &str) -> Result<(), SpeedError> {
        let marks = watermarks(events, self.config);
        let Some(newest) = marks.values().max().copied() else { return Ok(()) };
        let (node_keys, sources_key) = self.watermark_keys();
        // per watermark partition, its nodes' marks; the first one's call raises the source too
        let mut by_slot: Vec<Vec<(&str, Millis)>> = vec![Vec::new(); node_keys.len()];
        for (node, arrived) in &marks {
            by_slot[partition(node, node_keys.len() as u64) as usize].push((node, *arrived));
        }
        let sources = vec![(source, newest)];
        let calls = by_slot.into_iter().enumerate().filter(|(slot, nodes)| *slot == 0 || !nodes.is_empty()).map(|(slot, nodes)| {
            let mut invocation = self.watermark_script.prepare_invoke();
            let mut hashes = vec![(node_keys[slot].as_str(), nodes)];
            if slot == 0 {
                hashes.push((sources_key.as_str(), sources.clone()));
            }
            for (key, marks) in hashes {
                invocation.key(key);
                invocation.arg(marks.len());
                for (name, arrived) in marks {
                    invocation.arg(name).arg(arrived);
                }
            }
            let mut connection = self.connection.clone();
            async move { invocation.invoke_async::<i64>(&mut connection).await }
        });
        for raised in futures::future::join_all(calls).await {
            raised.map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    async fn watermarks(&self) -> Result<Watermarks, SpeedError> {
        self.layout(false).await?;
        let (node_keys, sources_key) = self.watermark_keys();
        let reads = node_keys.iter().chain([&sources_key]).map(|key| {
            let mut connection = self.connection.clone();
            async move { redis::cmd("HGETALL").arg(key).query_async::<BTreeMap<String, String>>(&mut connection).await }
        });
        let mut read = Vec::with_capacity(node_keys.len() + 1);
        for hash in futures::future::join_all(reads).await {
            read.push(hash.map_err(|e| self.error(e))?);
        }
        let parse = |key: &str, hash: BTreeMap<String, String>| -> Result<BTreeMap<String, Millis>, SpeedError> {
            hash.into_iter()
                .filter(|(name, _)| name != HASHTABLE_FIELD)
                .map(|(name, arrived)| match arrived.parse() {
                    Ok(arrived) => Ok((name, arrived)),
                    Err(_) => Err(SpeedError::Corrupt { key: format!("{key} field {name}"), message: format!("watermark '{arrived}' is not milliseconds") }),
                })
                .collect()
        };
        let sources = parse(&sources_key, read.pop().unwrap_or_default())?;
        let mut nodes = BTreeMap::new();
        for (key, hash) in node_keys.iter().zip(read) {
            nodes.extend(parse(key, hash)?);
        }
        Ok(Watermarks { nodes, sources })
    }

    async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), SpeedError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        dead_letter_pipe(&self.dead_letter_key(), letters).query_async::<()>(&mut connection).await.map_err(|e| self.error(e))
    }

    /// Stages a fold: groups the events by SKU, takes each SKU's state from the cache or reads
    /// it, applies the events, and puts the new states in the cache as if already written, so
    /// the next fold can be prepared while this one is sent. If this one's write of a SKU is
    /// refused, the next one's is too (it names a token that never landed) and is done again.
    async fn prepare<'e>(&self, events: Cow<'e, [Event]>) -> Result<Prepared<'e>, SpeedError> {
        self.layout(true).await?;
        // too-late events change nothing: they are answered at commit and never sent
        let mut ops: Ops = BTreeMap::new();
        for (index, event) in events.iter().enumerate().filter(|(_, event)| !self.config.is_too_late(event)) {
            match ops.get_mut(event.sku.as_str()) {
                Some(sku_ops) => sku_ops.push((index, Op::Fold(index))),
                None => drop(ops.insert(event.sku.clone(), vec![(index, Op::Fold(index))])),
            }
        }
        let skus: Vec<&str> = ops.keys().map(String::as_str).collect();
        let mut last = self.order.lock().await;
        let calls = self.stage(&events, &ops, &skus, &HashSet::new()).await?;
        let (sent, next) = oneshot::channel();
        let after = last.replace(next);
        Ok(Prepared { events, ops, calls, after, sent: Some(sent) })
    }

    /// Sends a prepared fold and raises the watermarks: one outcome per event.
    async fn commit<'e>(&self, prepared: Prepared<'e>, source: &str) -> Result<(Cow<'e, [Event]>, Vec<Outcome>), SpeedError> {
        let Prepared { events, ops, calls, after, sent } = prepared;
        if let Some(after) = after {
            // an error means the one before was dropped unsent: nothing to wait for
            let _ = after.await;
        }
        let mut outcomes = vec![Outcome::TooLate; events.len()];
        for (index, outcome) in self.run(&events, &ops, calls, sent).await? {
            outcomes[index] = outcome;
        }
        self.raise_watermarks(&events, source).await?;
        Ok((events, outcomes))
    }

    async fn fold(&self, events: &[Event], source: &str) -> Result<Vec<Outcome>, SpeedError> {
        let prepared = self.prepare(Cow::Borrowed(events)).await?;
        Ok(self.commit(prepared, source).await?.1)
    }

    /// Applies `ops` (none of them `Op::Fold`) to their SKUs.
    async fn update(&self, ops: &Ops<'_>) -> Result<(), SpeedError> {
        self.layout(true).await?;
        let skus: Vec<&str> = ops.keys().map(String::as_str).collect();
        let calls = self.stage(&[], ops, &skus, &HashSet::new()).await?;
        self.run(&[], ops, calls, None).await.map(drop)
    }

    /// Sends `calls`, then, as long as some SKU was refused (another writer changed it first),
    /// reads it, folds it again and sends it again. Returns the outcome of each `Op::Fold` by
    /// its index: each SKU's ops are applied once, atomically, whatever runs at the same time.
    /// `sent` is signalled once the first attempt is answered.
    async fn run(&self, events: &[Event], ops: &Ops<'_>, mut calls: Calls, mut sent: Option<oneshot::Sender<()>>) -> Result<Vec<(usize, Outcome)>, SpeedError> {
        let mut outcomes = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..ATTEMPTS {
            refused = self.send(calls, &mut outcomes).await?;
            if let Some(sent) = sent.take() {
                let _ = sent.send(());
            }
            if refused.is_empty() {
                return Ok(outcomes);
            }
            let stale: HashSet<&str> = refused.iter().map(String::as_str).collect();
            let skus: Vec<&str> = stale.iter().copied().collect();
            calls = self.stage(events, ops, &skus, &stale).await?;
        }
        Err(SpeedError::Contended { key: format!("{} field {}", self.states_key(self.partition(&refused[0])), refused[0]), attempts: ATTEMPTS })
    }

    /// Folds `skus`' ops into their states (from the cache, unless `stale`, or read) and caches
    /// the results under their new tokens; returns the calls that write them.
    async fn stage(&self, events: &[Event], ops: &Ops<'_>, skus: &[&str], stale: &HashSet<&str>) -> Result<Calls, SpeedError> {
        let mut bases: HashMap<&str, (String, SkuState)> = HashMap::new();
        let mut unread = Vec::new();
        {
            let mut cache = self.cache();
            for sku in skus {
                match cache.remove(*sku).filter(|_| !stale.contains(sku)) {
                    Some(base) => drop(bases.insert(*sku, base)),
                    None => unread.push(*sku),
                }
            }
        }
        let folded = self.read(events, &unread, ops, &mut bases).await?;
        let mut calls: Calls = Vec::new();
        let mut open: HashMap<u64, usize> = HashMap::new();
        let mut staged = Vec::with_capacity(skus.len());
        for (done, sku) in skus.iter().enumerate() {
            stream::let_write_go_on(done + 1).await;
            let (from, state) = bases.remove(sku).unwrap_or_default();
            let (write, state) = self.apply(events, sku, from, state, &ops[*sku], &folded);
            staged.push((write.sku.clone(), (write.token.clone(), state)));
            let partition = self.partition(sku);
            let call = match open.get(&partition) {
                Some(call) if calls[*call].1.len() < SKUS_PER_CALL => *call,
                _ => {
                    calls.push((partition, Vec::new()));
                    open.insert(partition, calls.len() - 1);
                    calls.len() - 1
                }
            };
            calls[call].1.push(write);
        }
        let mut cache = self.cache();
        if cache.len() + staged.len() > CACHE_SKUS {
            cache.clear();
        }
        cache.extend(staged);
        Ok(calls)
    }

    /// Sends the calls at once; records the outcomes of the SKUs written and returns those refused
    /// (out of the cache now). A failed call empties the cache: it may or may not have landed.
    async fn send(&self, calls: Calls, outcomes: &mut Vec<(usize, Outcome)>) -> Result<Vec<String>, SpeedError> {
        let replies = futures::future::join_all(calls.iter().map(|(partition, chunk)| self.write(*partition, chunk))).await;
        let mut refused = Vec::new();
        let mut cache = self.cache();
        for ((partition, chunk), reply) in calls.into_iter().zip(replies) {
            let written = reply.inspect_err(|_| cache.clear())?;
            if written.len() != chunk.len() {
                cache.clear();
                return Err(SpeedError::Corrupt { key: self.states_key(partition), message: format!("write script answered {written:?}") });
            }
            for (write, flag) in chunk.into_iter().zip(written) {
                if flag == 1 {
                    outcomes.extend(write.outcomes);
                } else {
                    cache.remove(&write.sku);
                    refused.push(write.sku);
                }
            }
        }
        Ok(refused)
    }

    /// One call of [`WRITE_SCRIPT`] for SKUs of one partition: `EVALSHA`, or `EVAL` when the
    /// server does not know the script (it restarted, or is a cluster node not asked before).
    async fn write(&self, partition: u64, chunk: &[Write]) -> Result<Vec<i64>, SpeedError> {
        let command = |verb: &str, script: &str| {
            let mut command = redis::cmd(verb);
            command.arg(script).arg(3).arg(&self.partition_keys(partition));
            for write in chunk {
                command.arg(&write.sku).arg(&write.from).arg(&write.token).arg(&write.to[..]).arg(write.ids.len());
                for (id, print) in &write.ids {
                    command.arg(id).arg(print);
                }
            }
            command
        };
        let mut connection = self.connection.clone();
        match command("EVALSHA", self.script.get_hash()).query_async(&mut connection).await {
            Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                command("EVAL", WRITE_SCRIPT).query_async(&mut connection).await.map_err(|e| self.error(e))
            }
            written => written.map_err(|e| self.error(e)),
        }
    }

    /// Reads the tokens and stored states of `skus` into `bases` and, without a dedup window,
    /// which of the ids their ops fold are folded already (as [`id_member`]s, with their prints):
    /// per partition, three `HMGET`s, the tokens first (a state newer than its token read is then
    /// refused by the write, never an older one taken for newer).
    async fn read<'a>(
        &self,
        events: &[Event],
        skus: &[&'a str],
        ops: &Ops<'_>,
        bases: &mut HashMap<&'a str, (String, SkuState)>,
    ) -> Result<HashMap<String, u32>, SpeedError> {
        let mut by_partition: BTreeMap<u64, (Vec<&'a str>, Vec<String>)> = BTreeMap::new();
        for sku in skus {
            let (skus, ids) = by_partition.entry(self.partition(sku)).or_default();
            skus.push(*sku);
            if self.config.dedup_window_ms.is_none() {
                ids.extend(ops[*sku].iter().filter_map(|(_, op)| match op {
                    Op::Fold(index) => Some(id_member(sku, &events[*index].event_id)),
                    _ => None,
                }));
            }
        }
        type Stored = (Vec<Option<String>>, Vec<Option<Vec<u8>>>);
        let replies = futures::future::join_all(by_partition.iter().map(|(partition, (skus, ids))| {
            let [states, tokens, ids_key] = self.partition_keys(*partition);
            let mut pipe = redis::pipe();
            pipe.cmd("HMGET").arg(tokens).arg(skus).cmd("HMGET").arg(states).arg(skus);
            let with_ids = !ids.is_empty();
            if with_ids {
                pipe.cmd("HMGET").arg(ids_key).arg(ids);
            }
            let mut connection = self.connection.clone();
            async move {
                if with_ids {
                    pipe.query_async::<(Vec<Option<String>>, Vec<Option<Vec<u8>>>, Vec<Option<u32>>)>(&mut connection).await
                } else {
                    let (tokens, states) = pipe.query_async::<Stored>(&mut connection).await?;
                    Ok((tokens, states, Vec::new()))
                }
            }
        }))
        .await;
        let mut folded = HashMap::new();
        for ((_, (skus, ids)), reply) in by_partition.into_iter().zip(replies) {
            let (tokens, states, known) = reply.map_err(|e| self.error(e))?;
            for ((sku, token), stored) in skus.into_iter().zip(tokens).zip(states) {
                let state = SkuState::decode(&stored.unwrap_or_default()).map_err(|message| self.corrupt(sku, message))?;
                bases.insert(sku, (token.unwrap_or_default(), state));
            }
            folded.extend(ids.into_iter().zip(known).filter_map(|(id, print)| Some((id, print?))));
        }
        Ok(folded)
    }

    /// Folds one SKU's ops into its `state` (token `from`); `folded` holds ids known to be folded
    /// already, with their prints. Returns the write and the new state as the cache keeps it.
    fn apply(&self, events: &[Event], sku: &str, from: String, mut state: SkuState, ops: &[(usize, Op)], folded: &HashMap<String, u32>) -> (Write, SkuState) {
        let window = self.config.dedup_window_ms;
        let mut ids = Vec::new();
        let mut outcomes = Vec::new();
        for (index, op) in ops {
            match op {
                Op::Fold(event) => {
                    let event = &events[*event];
                    let id = (window.is_none()).then(|| id_member(sku, &event.event_id));
                    if let Some(print) = id.as_ref().and_then(|id| folded.get(id)) {
                        state.seen.insert(&event.event_id, event.arrival(), *print, window);
                    }
                    let outcome = state.apply(event, self.config);
                    if outcome == Outcome::Applied {
                        ids.extend(id.map(|id| (id, event.print())));
                    }
                    outcomes.push((*index, outcome));
                }
                Op::Remember(event_id, arrival) => {
                    state.seen.insert(event_id, *arrival, UNKNOWN_PRINT, window);
                }
                Op::Replace(node, None) => drop(state.nodes.remove(*node)),
                Op::Replace(node, Some(node_state)) => drop(state.nodes.insert(node.to_string(), (*node_state).clone())),
            }
        }
        let to = state.encode(window);
        match window {
            Some(window) => state.seen.trim(window),
            // the ids are in Redis: a later fold learns of them from the write script
            None => state.seen = SeenIds::default(),
        }
        let token = format!("{}.{}", self.writer, self.writes.fetch_add(1, Ordering::Relaxed));
        (Write { sku: sku.to_string(), from, token, to, ids, outcomes }, state)
    }

    async fn replace(&self, sku: &str, node: &str, state: Option<&NodeState>) -> Result<(), SpeedError> {
        self.update(&BTreeMap::from([(sku.to_string(), vec![(0, Op::Replace(node, state))])])).await
    }

    /// Records ids folded into the batch view (their content not kept: any copy is a duplicate):
    /// without a dedup window, added to their partitions' id hashes; with one, into their SKUs'
    /// states (which keep the window's ids).
    async fn remember(&self, ids: &[(String, String)], arrival: Millis) -> Result<(), SpeedError> {
        self.layout(true).await?;
        if self.config.dedup_window_ms.is_some() {
            // a fold's chunk at a time, as events are folded, for the same reason as below
            for chunk in ids.chunks(FOLD_CHUNK) {
                let mut ops: Ops = BTreeMap::new();
                for (sku, event_id) in chunk {
                    ops.entry(sku.clone()).or_default().push((0, Op::Remember(event_id, arrival)));
                }
                self.update(&ops).await?;
            }
            return Ok(());
        }
        let mut by_partition: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (sku, event_id) in ids {
            by_partition.entry(self.partition(sku)).or_default().push(id_member(sku, event_id));
        }
        // a few commands at once, not all: a catch-up at a cutoff of now remembers millions of
        // ids, and with every command sent at once the last ones would wait for all the others
        // past the connection's response timeout (and each retry would queue them all again)
        let mut adds = Vec::new();
        for (partition, members) in &by_partition {
            let [_, _, ids_key] = self.partition_keys(*partition);
            for chunk in members.chunks(IDS_PER_COMMAND) {
                let mut command = redis::cmd("HSET");
                command.arg(&ids_key);
                for member in chunk {
                    command.arg(member).arg(UNKNOWN_PRINT);
                }
                adds.push(command);
            }
        }
        self.send_few_at_once(adds).await
    }

    async fn sku_states(&self, sku: &str) -> Result<Vec<(String, NodeState)>, SpeedError> {
        self.layout(false).await?;
        let [states, ..] = self.partition_keys(self.partition(sku));
        let mut connection = self.connection.clone();
        let stored: Option<Vec<u8>> = redis::cmd("HGET").arg(states).arg(sku).query_async(&mut connection).await.map_err(|e| self.error(e))?;
        self.decode_states(sku, stored)
    }

    /// Whether each event's id was folded (or remembered) for its SKU: in the SKUs' states with a
    /// dedup window, in the partitions' id sets without. The reads go out at once (one per SKU,
    /// or per partition and [`IDS_PER_COMMAND`] ids), not one after another.
    async fn known(&self, events: &[Event]) -> Result<Vec<bool>, SpeedError> {
        self.layout(false).await?;
        let mut known = vec![false; events.len()];
        if self.config.dedup_window_ms.is_some() {
            let skus: Vec<&str> = events.iter().map(|event| event.sku.as_str()).collect::<HashSet<_>>().into_iter().collect();
            let reads = skus.iter().map(|sku| {
                let mut connection = self.connection.clone();
                let key = self.states_key(self.partition(sku));
                async move { redis::cmd("HGET").arg(key).arg(*sku).query_async::<Option<Vec<u8>>>(&mut connection).await }
            });
            let mut states: HashMap<&str, SkuState> = HashMap::with_capacity(skus.len());
            for (sku, stored) in skus.iter().zip(futures::future::join_all(reads).await) {
                let stored = stored.map_err(|e| self.error(e))?;
                states.insert(sku, SkuState::decode(&stored.unwrap_or_default()).map_err(|message| self.corrupt(sku, message))?);
            }
            for (index, event) in events.iter().enumerate() {
                known[index] = states[event.sku.as_str()].seen.ids.contains_key(&event.event_id);
            }
            return Ok(known);
        }
        let mut by_partition: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (index, event) in events.iter().enumerate() {
            by_partition.entry(self.partition(&event.sku)).or_default().push(index);
        }
        let chunks: Vec<(u64, &[usize])> = by_partition.iter().flat_map(|(partition, indices)| indices.chunks(IDS_PER_COMMAND).map(|chunk| (*partition, chunk))).collect();
        let reads = chunks.iter().map(|(partition, chunk)| {
            let mut connection = self.connection.clone();
            let ids_key = self.partition_key(*partition, "seen");
            let members: Vec<String> = chunk.iter().map(|index| id_member(&events[*index].sku, &events[*index].event_id)).collect();
            async move { redis::cmd("HMGET").arg(ids_key).arg(members).query_async::<Vec<Option<u32>>>(&mut connection).await }
        });
        for ((_, chunk), found) in chunks.iter().zip(futures::future::join_all(reads).await) {
            for (index, found) in chunk.iter().zip(found.map_err(|e| self.error(e))?) {
                known[*index] = found.is_some();
            }
        }
        Ok(known)
    }

    fn decode_states(&self, sku: &str, stored: Option<Vec<u8>>) -> Result<Vec<(String, NodeState)>, SpeedError> {
        let state = SkuState::decode(&stored.unwrap_or_default()).map_err(|message| self.corrupt(sku, message))?;
        Ok(state.nodes.into_iter().collect())
    }

    /// The published rows of `skus` (but not of those whose `have[i]`: the reader has them; an
    /// empty `have` has none), their speed states and the catch-up mark, read together: one
    /// pipeline on one server; on a cluster one pipeline per partition (a SKU's row and states
    /// share its slot) and the mark, all at once.
    async fn sku_reads(&self, skus: &[&str], have: &[bool]) -> Result<Vec<SkuRead>, SpeedError> {
        Ok(self.sku_reads_after(&[], skus, have).await?.1)
    }

    /// [`RedisStore::sku_reads`], with the hash fields `ahead` (`(key, field)`) read first in the
    /// same pipeline: one server only (a cluster's pipelines go to several), which runs one
    /// connection's commands in the order sent, so every value of `ahead` is from before the
    /// SKUs' reads.
    async fn sku_reads_after(&self, ahead: &[(String, String)], skus: &[&str], have: &[bool]) -> Result<sellable_core::view::ReadsAfter, SpeedError> {
        type Stored = Option<Vec<u8>>;
        assert!(ahead.is_empty() || !self.connection.is_cluster(), "fields are read ahead of SKUs on one server only");
        self.layout(false).await?;
        let key = self.caught_up_key();
        let wanted = |index: usize| !have.get(index).copied().unwrap_or(false);
        // per SKU its states, then its row where wanted
        let read = |pipe: &mut redis::Pipeline, indices: &[usize]| {
            for index in indices {
                let (sku, partition) = (skus[*index], self.partition(skus[*index]));
                pipe.cmd("HGET").arg(self.states_key(partition)).arg(sku);
                if wanted(*index) {
                    pipe.cmd("HGET").arg(self.batch_key(partition)).arg(sku);
                }
            }
        };
        let parse = |indices: &[usize], values: Vec<redis::Value>, stored: &mut [(Stored, Stored)]| -> Result<(), SpeedError> {
            let mut values = values.into_iter();
            let mut next = || match values.next() {
                Some(value) => redis::from_redis_value::<Stored>(value).map_err(|e| self.error(e.into())),
                None => Err(SpeedError::Corrupt { key: self.namespace.clone(), message: "fewer replies than SKUs' reads sent".to_string() }),
            };
            for index in indices {
                stored[*index].0 = next()?;
                if wanted(*index) {
                    stored[*index].1 = next()?;
                }
            }
            Ok(())
        };
        let mut connection = self.connection.clone();
        let mut stored: Vec<(Stored, Stored)> = vec![(None, None); skus.len()];
        let mut values_ahead = Vec::with_capacity(ahead.len());
        let mark: Option<String> = if self.connection.is_cluster() {
            let mut by_partition: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for (index, sku) in skus.iter().enumerate() {
                by_partition.entry(self.partition(sku)).or_default().push(index);
            }
            let reads = by_partition.into_values().map(|indices| {
                let mut pipe = redis::pipe();
                read(&mut pipe, &indices);
                let mut connection = self.connection.clone();
                async move { pipe.query_async::<Vec<redis::Value>>(&mut connection).await.map(|values| (indices, values)) }
            });
            let mut read_mark = redis::cmd("GET");
            read_mark.arg(&key);
            let (reads, mark) = tokio::join!(futures::future::join_all(reads), read_mark.query_async(&mut connection));
            for read in reads {
                let (indices, values) = read.map_err(|e| self.error(e))?;
                parse(&indices, values, &mut stored)?;
            }
            mark.map_err(|e| self.error(e))?
        } else {
            let indices: Vec<usize> = (0..skus.len()).collect();
            let mut pipe = redis::pipe();
            for (hash, field) in ahead {
                pipe.cmd("HGET").arg(hash).arg(field);
            }
            read(&mut pipe, &indices);
            pipe.cmd("GET").arg(&key);
            let mut values: Vec<redis::Value> = pipe.query_async(&mut connection).await.map_err(|e| self.error(e))?;
            let mark = redis::from_redis_value(values.pop().unwrap_or(redis::Value::Nil)).map_err(|e| self.error(e.into()))?;
            if values.len() < ahead.len() {
                return Err(SpeedError::Corrupt { key: self.namespace.clone(), message: "fewer replies than fields' reads sent".to_string() });
            }
            let values_of_skus = values.split_off(ahead.len());
            for value in values {
                values_ahead.push(redis::from_redis_value::<Option<String>>(value).map_err(|e| self.error(e.into()))?);
            }
            parse(&indices, values_of_skus, &mut stored)?;
            mark
        };
        let caught_up = parse_mark(key, mark)?;
        let reads = skus
            .iter()
            .zip(stored)
            .map(|(sku, (states, row))| {
                // the row's key is named only when the row does not decode
                let corrupt = |message| SpeedError::Corrupt { key: format!("{} field {sku}", self.batch_key(self.partition(sku))), message };
                let row = row.map(|bytes| sku_state::decode_row(&bytes).map_err(corrupt));
                Ok(SkuRead { row: row.transpose()?.map(Arc::new), speed: self.decode_states(sku, states)?, caught_up })
            })
            .collect::<Result<_, SpeedError>>()?;
        Ok((values_ahead, reads))
    }

    /// Writes the rows [`PUBLISH_CHUNK`] at a time (per partition, [`SKUS_PER_CALL`] per
    /// command, a few commands at once), then the metadata. Returns the rows written.
    async fn publish(&self, meta: &BatchMeta, rows: Rows) -> Result<u64, SpeedError> {
        self.layout(true).await?;
        let (mut rows, mut written) = (rows, 0);
        loop {
            let chunk;
            (rows, chunk) = take_rows(rows, PUBLISH_CHUNK).await?;
            if chunk.is_empty() {
                break;
            }
            let mut by_partition: BTreeMap<u64, Vec<(String, Vec<u8>)>> = BTreeMap::new();
            for row in chunk {
                by_partition.entry(self.partition(&row.info.sku)).or_default().push((row.info.sku.clone(), sku_state::encode_row(&row)));
                written += 1;
            }
            self.publish_chunk(by_partition).await?;
        }
        let json = serde_json::to_string(meta).expect("batch metadata serialises");
        let mut connection = self.connection.clone();
        let () = redis::cmd("SET").arg(self.meta_key()).arg(json).query_async(&mut connection).await.map_err(|e| self.error(e))?;
        Ok(written)
    }

    async fn publish_chunk(&self, by_partition: BTreeMap<u64, Vec<(String, Vec<u8>)>>) -> Result<(), SpeedError> {
        // the commands are made before any is sent, so they take the rows' bytes from `fields`
        // as they are, with no copy of each chunk to own
        let mut commands = Vec::new();
        for (partition, fields) in &by_partition {
            let key = self.batch_key(*partition);
            for chunk in fields.chunks(SKUS_PER_CALL) {
                let mut command = redis::cmd("HSET");
                command.arg(&key);
                for (sku, row) in chunk {
                    command.arg(sku).arg(row);
                }
                commands.push(command);
            }
        }
        drop(by_partition);
        self.send_few_at_once(commands).await
    }

    /// Sends `commands` (each answered by an integer), [`COMMANDS_IN_FLIGHT`] at a time: each is
    /// answered within the connection's response timeout however many there are.
    async fn send_few_at_once(&self, commands: Vec<redis::Cmd>) -> Result<(), SpeedError> {
        use futures::StreamExt;
        let mut sent = futures::stream::iter(commands)
            .map(|command| {
                let mut connection = self.connection.clone();
                async move { command.query_async::<i64>(&mut connection).await }
            })
            .buffer_unordered(COMMANDS_IN_FLIGHT);
        while let Some(done) = sent.next().await {
            done.map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    async fn batch_meta(&self) -> Result<Option<BatchMeta>, SpeedError> {
        let mut connection = self.connection.clone();
        let key = self.meta_key();
        let stored: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut connection).await.map_err(|e| self.error(e))?;
        stored.map(|json| serde_json::from_str(&json).map_err(|error| SpeedError::Corrupt { key, message: error.to_string() })).transpose()
    }

    /// Whether each SKU has a published row: one pipeline of `HEXISTS` per partition, all at once.
    async fn skus_known(&self, skus: &[&str]) -> Result<Vec<bool>, SpeedError> {
        self.layout(false).await?;
        let mut by_partition: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (index, sku) in skus.iter().enumerate() {
            by_partition.entry(self.partition(sku)).or_default().push(index);
        }
        let reads = by_partition.into_iter().map(|(partition, indices)| {
            let key = self.batch_key(partition);
            let mut pipe = redis::pipe();
            for index in &indices {
                pipe.cmd("HEXISTS").arg(&key).arg(skus[*index]);
            }
            let mut connection = self.connection.clone();
            async move { pipe.query_async::<Vec<bool>>(&mut connection).await.map(|found| (indices, found)) }
        });
        let mut known = vec![false; skus.len()];
        for read in futures::future::join_all(reads).await {
            let (indices, found) = read.map_err(|e| self.error(e))?;
            for (index, found) in indices.into_iter().zip(found) {
                known[index] = found;
            }
        }
        Ok(known)
    }

    async fn clear(&self) -> Result<(), SpeedError> {
        self.cache().clear();
        let mut connection = self.connection.clone();
        self.layout(false).await?;
        // a cluster has no one keyspace to scan: every key of the layout, by name, each in its slot
        let named = self.connection.is_cluster().then(|| {
            let mut keys: Vec<String> =
                (0..self.partition_count()).flat_map(|partition| self.partition_keys(partition).into_iter().chain([self.batch_key(partition)])).collect();
            let (node_keys, sources_key) = self.watermark_keys();
            keys.extend(node_keys);
            keys.extend([sources_key, self.dead_letter_key(), self.caught_up_key(), self.meta_key(), self.layout_key()]);
            keys
        });
        self.partitions.store(0, Ordering::Relaxed);
        if let Some(keys) = named {
            for key in keys {
                let _: i64 = redis::cmd("UNLINK").arg(key).query_async(&mut connection).await.map_err(|e| self.error(e))?;
            }
            return Ok(());
        }
        unlink_matching(&mut connection, &format!("{}:*", self.namespace)).await.map_err(|e| self.error(e))
    }
}

/// Unlinks every key of one Redis server that matches `pattern`, a page of `SCAN` at a time (not
/// one `KEYS`, which would block every other client of a large Redis meanwhile).
pub async fn unlink_matching(connection: &mut impl redis::aio::ConnectionLike, pattern: &str) -> redis::RedisResult<()> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(connection).await?;
        if !keys.is_empty() {
            redis::cmd("UNLINK").arg(keys).query_async::<i64>(connection).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// Entries a dead-letter stream in Redis keeps, about (`XADD MAXLEN ~`): the oldest go first, so
/// no client can grow it without bound.
pub const REDIS_DEAD_LETTERS: usize = 1_000_000;

/// Appends dead letters to a dead-letter stream (fields `entry`, `raw`, `error`), trimmed to
/// about [`REDIS_DEAD_LETTERS`].
fn dead_letter_pipe(stream: &str, letters: &[DeadLetter]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for letter in letters {
        pipe.cmd("XADD").arg(stream).arg("MAXLEN").arg("~").arg(REDIS_DEAD_LETTERS).arg("*").arg("entry").arg(&letter.entry).arg("raw").arg(&letter.raw);
        pipe.arg("error").arg(&letter.error).ignore();
    }
    pipe
}

/// Raises a watermark; it never goes back.
fn raise(marks: &mut BTreeMap<String, Millis>, key: String, arrived: Millis) {
    let mark = marks.entry(key).or_insert(arrived);
    *mark = (*mark).max(arrived);
}
