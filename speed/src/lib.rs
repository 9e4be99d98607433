//! sellable-speed: the speed layer. It folds the events that arrived after the batch cutoff into
//! a [`SpeedView`]: Redis in production, or the embedded in-memory store that `sellable demo`
//! uses when no Redis URL is configured. Both give exactly the state of `core`'s fold.
//!
//! Redis layout (every key of one SKU shares the hash tag `{sku}`, so a Redis Cluster keeps them
//! in one slot and the fold script never crosses slots):
//! - `<ns>:{<sku>}:ids`     set of folded `event_id`s (idempotency) when no dedup window is set
//! - `<ns>:{<sku>}:seen`    instead, with a dedup window: sorted set of folded `event_id`s by
//!   arrival, trimmed to the window (keep one setting per namespace: the fold reads only the key
//!   of its own setting)
//! - `<ns>:{<sku>}:nodes`   set of nodes with state for the SKU
//! - `<ns>:{<sku>}:n:<node>` hash: `reserved`, `held`, `last_ts`, `last_arrived` and the anchor
//!   (`anchor_ts`, `anchor_id`, `anchor_qty`, `anchor_kind`)
//! - `<ns>:{<sku>}:d:<node>` sorted set of on-hand deltas after the anchor, score = event time,
//!   member = `<event_id>|<delta>`
//! - `<ns>:{watermarks}` and `<ns>:{watermarks}:sources`: latest arrival folded per node and per
//!   source; `<ns>:dead`: the dead-letter stream of events refused outside a stream worker
//!
//! Tests: unit tests below; the Redis integration tests are in `tests/it/` (need a real Redis).

pub mod stream;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use sellable_core::fold::{effect, Anchor, EventKey};
use sellable_core::event::DecodeError;
use sellable_core::fold::watermarks;
use sellable_core::{known_at, DeadLetter, Event, EventKind, Fold, FoldConfig, FoldStats, Millis, NodeState, Outcome, Watermarks};

#[derive(Debug, thiserror::Error)]
pub enum SpeedError {
    #[error("redis at {url}: {source}")]
    Redis { url: String, source: redis::RedisError },
    #[error("redis state of {key} is corrupt: {message}")]
    Corrupt { key: String, message: String },
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
        Ok(SpeedView::Redis(RedisStore::connect(url, namespace, config).await?))
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

    /// Forgets everything (a new batch cutoff starts a new speed view).
    pub async fn clear(&self) -> Result<(), SpeedError> {
        match self {
            SpeedView::Memory(store) => {
                let mut fold = store.fold.lock().expect("speed view lock poisoned; this is a bug");
                *fold = Fold::new(fold.config);
                *store.watermarks.lock().expect("speed view lock poisoned; this is a bug") = Watermarks::default();
                Ok(())
            }
            SpeedView::Redis(store) => store.clear().await,
        }
    }
}

impl sellable_core::SpeedSource for SpeedView {
    fn sku_states<'a>(
        &'a self,
        sku: &'a str,
    ) -> sellable_core::view::BoxFuture<'a, Result<Vec<(String, NodeState)>, String>> {
        Box::pin(async move { SpeedView::sku_states(self, sku).await.map_err(|error| error.to_string()) })
    }

    fn watermarks(&self) -> sellable_core::view::BoxFuture<'_, Result<Watermarks, String>> {
        Box::pin(async move { SpeedView::watermarks(self).await.map_err(|error| error.to_string()) })
    }

    fn fold<'a>(&'a self, events: &'a [Event], source: &'a str) -> sellable_core::view::BoxFuture<'a, Result<Vec<Outcome>, String>> {
        Box::pin(async move { SpeedView::fold(self, events, source).await.map_err(|error| error.to_string()) })
    }

    fn dead_letter<'a>(&'a self, letters: &'a [DeadLetter]) -> sellable_core::view::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { SpeedView::dead_letter(self, letters).await.map_err(|error| error.to_string()) })
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
}

impl MemoryStore {
    pub fn new(config: FoldConfig) -> MemoryStore {
        MemoryStore {
            fold: Mutex::new(Fold::new(config)),
            watermarks: Mutex::new(Watermarks::default()),
            dead_letters: Mutex::new(VecDeque::new()),
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

/// Folds a batch of events, each atomically into the keys of its sku×node. ARGV[1] is the dedup
/// window in ms (-1: none); then per event, KEYS holds 4 keys (seen, nodes, state hash, deltas)
/// and ARGV 6 values (see `fold_invocation`). What an event does comes from the table `effects`
/// that [`fold_script`] puts before this text, generated from `core`'s [`effect`]. The reply has
/// one flag per event: 1 applied, 0 duplicate (its `event_id` was folded before), 2 expired (it arrived before the SKU's dedup
/// window). On a cluster, a batch holds events of one SKU only (one hash tag, one slot). String
/// order is compared byte by byte, as Rust does, because Lua's `<` follows the server's locale.
/// Per event it costs 4 or 5 calls (SADD ids or ZADD seen, HMGET, HSET, and ZADD for an on-hand
/// delta or SADD nodes for a new node), plus one lookup of the newest arrival when a window is set.
const FOLD_SCRIPT: &str = r#"
local function after(ts, id, anchor_ts, anchor_id)
  if not anchor_ts then return true end
  anchor_ts = tonumber(anchor_ts)
  if ts ~= anchor_ts then return ts > anchor_ts end
  local n = math.min(#id, #anchor_id)
  for i = 1, n do
    local a, b = string.byte(id, i), string.byte(anchor_id, i)
    if a ~= b then return a > b end
  end
  return #id > #anchor_id
end

local window = tonumber(ARGV[1])

local function fold(k, a)
  local seen, nodes, state, deltas = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local id, ts_text, node, kind = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local qty, arrived_text = ARGV[a + 5], ARGV[a + 6]
  local ts, arrived = tonumber(ts_text), tonumber(arrived_text)
  local e, units = effects[kind], tonumber(qty)
  local absolute, d_on_hand, d_reserved, d_held = e[1] == 1, e[2] * units, e[3] * units, e[4] * units

  if window >= 0 then
    local newest = redis.call('ZRANGE', seen, -1, -1, 'WITHSCORES')[2]
    if newest then
      newest = tonumber(newest)
      if arrived < newest - window then return 2 end
      if arrived > newest then redis.call('ZREMRANGEBYSCORE', seen, '-inf', '(' .. (arrived - window)) end
    end
    if redis.call('ZADD', seen, 'NX', arrived_text, id) == 0 then return 0 end
  elseif redis.call('SADD', seen, id) == 0 then
    return 0
  end
  local h = redis.call('HMGET', state, 'reserved', 'held', 'last_ts', 'last_arrived', 'anchor_ts', 'anchor_id')
  -- only the fields that change are written ('reserved' always when the node is new: it marks
  -- that the state exists); fewer arguments are fewer conversions between Lua and Redis
  local fields, n = {}, 0
  local function put(name, value)
    fields[n + 1], fields[n + 2] = name, value
    n = n + 2
  end
  if not h[1] then
    redis.call('SADD', nodes, node)
    put('reserved', d_reserved)
  elseif d_reserved ~= 0 then
    put('reserved', tonumber(h[1]) + d_reserved)
  end
  if d_held ~= 0 then put('held', (tonumber(h[2]) or 0) + d_held) end
  if not h[3] or ts > tonumber(h[3]) then put('last_ts', ts_text) end
  if not h[4] or arrived > tonumber(h[4]) then put('last_arrived', arrived_text) end
  local later = after(ts, id, h[5], h[6])
  if later and absolute then
    put('anchor_ts', ts_text); put('anchor_id', id); put('anchor_qty', qty); put('anchor_kind', kind)
  end
  if n > 0 then redis.call('HSET', state, unpack(fields, 1, n)) end
  if not later then return 1 end
  if absolute then
    -- the deltas up to the new anchor go; usually there are none, and one call tells
    local upto = redis.call('ZRANGEBYSCORE', deltas, '-inf', ts_text, 'WITHSCORES')
    if #upto > 0 then
      redis.call('ZREMRANGEBYSCORE', deltas, '-inf', '(' .. ts_text)
      for i = 1, #upto, 2 do
        if tonumber(upto[i + 1]) == ts and not after(ts, string.match(upto[i], '^(.*)|'), ts_text, id) then
          redis.call('ZREM', deltas, upto[i])
        end
      end
    end
  elseif d_on_hand ~= 0 then
    redis.call('ZADD', deltas, ts_text, id .. '|' .. d_on_hand)
  end
  return 1
end

local applied = {}
for i = 0, #KEYS / 4 - 1 do
  applied[i + 1] = fold(i * 4, 1 + i * 6)
end
return applied
"#;

/// The fold script: [`FOLD_SCRIPT`] after the table of what each kind of event does per unit,
/// `effects[kind] = {absolute (1/0), on-hand, reserved, held}`, from `core`'s [`effect`].
fn fold_script() -> String {
    let effects: Vec<String> = EventKind::ALL
        .into_iter()
        .map(|kind| {
            let unit = effect(kind, 1);
            format!("['{kind}'] = {{{}, {}, {}, {}}}", i64::from(unit.absolute.is_some()), unit.on_hand, unit.reserved, unit.held)
        })
        .collect();
    format!("local effects = {{{}}}\n{FOLD_SCRIPT}", effects.join(", "))
}

/// Raises watermarks: KEYS are the node hash `<ns>:{watermarks}` and the source hash
/// `<ns>:{watermarks}:sources` (one slot); ARGV is the source and its arrival, then node/arrival
/// pairs. A watermark never goes back.
const WATERMARK_SCRIPT: &str = r#"
local function raise(hash, field, arrived)
  local current = redis.call('HGET', hash, field)
  if not current or tonumber(arrived) > tonumber(current) then redis.call('HSET', hash, field, arrived) end
end
raise(KEYS[2], ARGV[1], ARGV[2])
for i = 3, #ARGV, 2 do raise(KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"#;

/// Replaces the keys of one sku×node in one step. ARGV: node, present (1/0), then the hash
/// fields as name/value pairs up to a `--` separator, then score/member pairs of the deltas.
const REPLACE_SCRIPT: &str = r#"
local nodes, state, deltas = KEYS[1], KEYS[2], KEYS[3]
redis.call('DEL', state, deltas)
if ARGV[2] == '0' then
  redis.call('SREM', nodes, ARGV[1])
  return 0
end
redis.call('SADD', nodes, ARGV[1])
local i = 3
while ARGV[i] ~= '--' do
  redis.call('HSET', state, ARGV[i], ARGV[i + 1])
  i = i + 2
end
i = i + 1
while ARGV[i] do
  redis.call('ZADD', deltas, ARGV[i], ARGV[i + 1])
  i = i + 2
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

    fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
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
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The speed view in Redis (a single server or a cluster: every key of one SKU shares a hash
/// tag, so each script and each read touches one slot).
pub struct RedisStore {
    url: String,
    namespace: String,
    config: FoldConfig,
    connection: Connection,
    script: redis::Script,
}

/// Events per pipeline: large enough to hide round trips, small enough to bound memory.
const PIPELINE: usize = 512;

/// Events per call of the fold script: the call's overhead is shared by the batch, and Redis
/// stays responsive to readers between two calls.
const SCRIPT_BATCH: usize = 128;

impl RedisStore {
    pub async fn connect(url: &str, namespace: &str, config: FoldConfig) -> Result<RedisStore, SpeedError> {
        let connection = Connection::open(url).await?;
        let store = RedisStore {
            url: url.to_string(),
            namespace: namespace.to_string(),
            config,
            connection,
            script: redis::Script::new(&fold_script()),
        };
        store.load_script().await?;
        Ok(store)
    }

    fn error(&self, source: redis::RedisError) -> SpeedError {
        SpeedError::Redis { url: self.url.clone(), source }
    }

    async fn load_script(&self) -> Result<(), SpeedError> {
        if self.connection.is_cluster() {
            // Each node learns the script on first use (EVALSHA falls back to EVAL there).
            return Ok(());
        }
        let mut connection = self.connection.clone();
        let _: String = self.script.prepare_invoke().load_async(&mut connection).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    fn sku_key(&self, sku: &str, suffix: &str) -> String {
        format!("{}:{{{sku}}}:{suffix}", self.namespace)
    }

    /// The key of a SKU's folded event ids: a sorted set by arrival (`seen`) when a dedup window
    /// trims it, else a plain set (`ids`), cheaper to add to.
    fn seen_key(&self, sku: &str) -> String {
        self.sku_key(sku, if self.config.dedup_window_ms.is_some() { "seen" } else { "ids" })
    }

    fn keys(&self, sku: &str, node: &str) -> [String; 4] {
        [
            self.seen_key(sku),
            self.sku_key(sku, "nodes"),
            self.sku_key(sku, &format!("n:{node}")),
            self.sku_key(sku, &format!("d:{node}")),
        ]
    }

    fn watermark_keys(&self) -> [String; 2] {
        [format!("{}:{{watermarks}}", self.namespace), format!("{}:{{watermarks}}:sources", self.namespace)]
    }

    fn dead_letter_key(&self) -> String {
        format!("{}:dead", self.namespace)
    }

    async fn raise_watermarks(&self, events: &[Event], source: &str) -> Result<(), SpeedError> {
        let marks = watermarks(events, self.config);
        let Some(newest) = marks.values().max() else { return Ok(()) };
        let script = redis::Script::new(WATERMARK_SCRIPT);
        let mut invocation = script.prepare_invoke();
        self.watermark_keys().into_iter().for_each(|key| {
            invocation.key(key);
        });
        invocation.arg(source).arg(*newest);
        for (node, arrived) in marks {
            invocation.arg(node).arg(arrived);
        }
        let mut connection = self.connection.clone();
        let _: i64 = invocation.invoke_async(&mut connection).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn watermarks(&self) -> Result<Watermarks, SpeedError> {
        let mut connection = self.connection.clone();
        let [nodes, sources] = self.watermark_keys();
        let (nodes, sources) = redis::pipe()
            .cmd("HGETALL")
            .arg(nodes)
            .cmd("HGETALL")
            .arg(sources)
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        Ok(Watermarks { nodes, sources })
    }

    async fn dead_letter(&self, letters: &[DeadLetter]) -> Result<(), SpeedError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        dead_letter_pipe(&self.dead_letter_key(), letters).query_async::<()>(&mut connection).await.map_err(|e| self.error(e))
    }

    async fn fold(&self, events: &[Event], source: &str) -> Result<Vec<Outcome>, SpeedError> {
        let outcomes = self.fold_events(events).await?;
        self.raise_watermarks(events, source).await?;
        Ok(outcomes)
    }

    async fn fold_events(&self, events: &[Event]) -> Result<Vec<Outcome>, SpeedError> {
        let timely: Vec<&Event> = events.iter().filter(|event| !self.config.is_too_late(event)).collect();
        let flags: Vec<i64> = if self.connection.is_cluster() {
            // A script touches one slot: one batch per SKU, the batches sent concurrently, each
            // routed to its SKU's node.
            let mut by_sku: BTreeMap<&str, (Vec<usize>, Vec<&Event>)> = BTreeMap::new();
            for (index, event) in timely.iter().enumerate() {
                let (indices, batch) = by_sku.entry(event.sku.as_str()).or_default();
                indices.push(index);
                batch.push(event);
            }
            let folds = by_sku.values().map(|(_, batch)| {
                let mut connection = self.connection.clone();
                let invocation = self.fold_invocation(batch);
                async move { invocation.invoke_async::<Vec<i64>>(&mut connection).await }
            });
            let mut flags = vec![-1; timely.len()];
            for ((indices, _), applied) in by_sku.values().zip(futures::future::join_all(folds).await) {
                for (index, flag) in indices.iter().zip(applied.map_err(|e| self.error(e))?) {
                    flags[*index] = flag;
                }
            }
            flags
        } else {
            // One round trip for the whole call: a pipeline of batches of events.
            let mut pipe = redis::pipe();
            for batch in timely.chunks(SCRIPT_BATCH) {
                pipe.invoke_script(&self.fold_invocation(batch));
            }
            let mut connection = self.connection.clone();
            let flags: Vec<Vec<i64>> = match pipe.query_async(&mut connection).await {
                Ok(flags) => flags,
                // A restarted server forgot the script: load it and send the batches again.
                // Events already folded by the first attempt are deduplicated by the script.
                Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    self.load_script().await?;
                    pipe.query_async(&mut connection).await.map_err(|e| self.error(e))?
                }
                Err(error) => return Err(self.error(error)),
            };
            flags.concat()
        };
        // back in the order of `events`; too-late events were never sent
        let mut flags = flags.into_iter();
        let outcomes = events.iter().map(|event| {
            if self.config.is_too_late(event) {
                return Ok(Outcome::TooLate);
            }
            match flags.next() {
                Some(1) => Ok(Outcome::Applied),
                Some(0) => Ok(Outcome::Duplicate),
                Some(2) => Ok(Outcome::Expired),
                other => Err(SpeedError::Corrupt { key: self.seen_key(&event.sku), message: format!("fold script answered {other:?}") }),
            }
        });
        outcomes.collect()
    }

    async fn replace(&self, sku: &str, node: &str, state: Option<&NodeState>) -> Result<(), SpeedError> {
        let [_, nodes, hash, deltas] = self.keys(sku, node);
        let script = redis::Script::new(REPLACE_SCRIPT);
        let mut invocation = script.prepare_invoke();
        invocation.key(nodes).key(hash).key(deltas).arg(node).arg(if state.is_some() { "1" } else { "0" });
        if let Some(state) = state {
            let mut fields: Vec<(&str, String)> = vec![("reserved", state.reserved.to_string()), ("held", state.held.to_string())];
            fields.extend(state.last_event_ts.map(|ts| ("last_ts", ts.to_string())));
            fields.extend(state.last_arrived.map(|ts| ("last_arrived", ts.to_string())));
            if let Some(anchor) = &state.anchor {
                fields.push(("anchor_ts", anchor.key.ts.to_string()));
                fields.push(("anchor_id", anchor.key.event_id.clone()));
                fields.push(("anchor_qty", anchor.qty.to_string()));
                fields.push(("anchor_kind", anchor.kind.as_str().to_string()));
            }
            for (name, value) in fields {
                invocation.arg(name).arg(value);
            }
            invocation.arg("--");
            for (key, delta) in &state.deltas {
                invocation.arg(key.ts).arg(format!("{}|{delta}", key.event_id));
            }
        }
        let mut connection = self.connection.clone();
        let _: i64 = invocation.invoke_async(&mut connection).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Adds an event id to its SKU's folded ids, as the fold script would.
    fn remember_command(&self, sku: &str, event_id: &str, arrival: Millis) -> redis::Cmd {
        let mut add = redis::cmd(if self.config.dedup_window_ms.is_some() { "ZADD" } else { "SADD" });
        add.arg(self.seen_key(sku));
        if self.config.dedup_window_ms.is_some() {
            add.arg("NX").arg(arrival);
        }
        add.arg(event_id);
        add
    }

    async fn remember(&self, ids: &[(String, String)], arrival: Millis) -> Result<(), SpeedError> {
        if self.connection.is_cluster() {
            for chunk in ids.chunks(PIPELINE) {
                let adds = chunk.iter().map(|(sku, event_id)| {
                    let mut connection = self.connection.clone();
                    let add = self.remember_command(sku, event_id, arrival);
                    async move { add.query_async::<i64>(&mut connection).await }
                });
                for added in futures::future::join_all(adds).await {
                    added.map_err(|e| self.error(e))?;
                }
            }
            return Ok(());
        }
        for chunk in ids.chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            for (sku, event_id) in chunk {
                pipe.add_command(self.remember_command(sku, event_id, arrival)).ignore();
            }
            let mut connection = self.connection.clone();
            let () = pipe.query_async(&mut connection).await.map_err(|e| self.error(e))?;
        }
        Ok(())
    }

    /// One call of the fold script for a batch of events: 4 keys and 6 arguments each.
    fn fold_invocation(&self, events: &[&Event]) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(self.config.dedup_window_ms.unwrap_or(-1));
        for event in events {
            for key in self.keys(&event.sku, &event.node) {
                invocation.key(key);
            }
            invocation.arg(&event.event_id).arg(event.ts).arg(&event.node).arg(event.kind.as_str()).arg(event.qty).arg(event.arrival());
        }
        invocation
    }

    async fn sku_states(&self, sku: &str) -> Result<Vec<(String, NodeState)>, SpeedError> {
        let mut connection = self.connection.clone();
        let mut nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.sku_key(sku, "nodes"))
            .query_async(&mut connection)
            .await
            .map_err(|e| self.error(e))?;
        nodes.sort();
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for node in &nodes {
            let [_, _, state, deltas] = self.keys(sku, node);
            pipe.cmd("HGETALL").arg(state).cmd("ZRANGE").arg(deltas).arg(0).arg(-1).arg("WITHSCORES");
        }
        let replies: Vec<redis::Value> = pipe.query_async(&mut connection).await.map_err(|e| self.error(e))?;
        let mut states = Vec::with_capacity(nodes.len());
        for (node, pair) in nodes.into_iter().zip(replies.chunks(2)) {
            let key = self.sku_key(sku, &format!("n:{node}"));
            let corrupt = |message: String| SpeedError::Corrupt { key: key.clone(), message };
            let hash: BTreeMap<String, String> =
                redis::from_redis_value(pair[0].clone()).map_err(|e| corrupt(e.to_string()))?;
            let deltas: Vec<(String, f64)> =
                redis::from_redis_value(pair[1].clone()).map_err(|e| corrupt(e.to_string()))?;
            states.push((node, decode_state(&hash, &deltas).map_err(corrupt)?));
        }
        Ok(states)
    }

    async fn clear(&self) -> Result<(), SpeedError> {
        if self.connection.is_cluster() {
            let message = "clearing is not supported on a cluster: start a new namespace instead".to_string();
            return Err(SpeedError::Corrupt { key: format!("{}:*", self.namespace), message });
        }
        let mut connection = self.connection.clone();
        let pattern = format!("{}:*", self.namespace);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .map_err(|e| self.error(e))?;
            for key in keys {
                let _: i64 = redis::cmd("UNLINK").arg(key).query_async(&mut connection).await.map_err(|e| self.error(e))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// Appends dead letters to a dead-letter stream (fields `entry`, `raw`, `error`).
fn dead_letter_pipe(stream: &str, letters: &[DeadLetter]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for letter in letters {
        pipe.cmd("XADD").arg(stream).arg("*").arg("entry").arg(&letter.entry).arg("raw").arg(&letter.raw);
        pipe.arg("error").arg(&letter.error).ignore();
    }
    pipe
}

/// Raises a watermark; it never goes back.
fn raise(marks: &mut BTreeMap<String, Millis>, key: String, arrived: Millis) {
    let mark = marks.entry(key).or_insert(arrived);
    *mark = (*mark).max(arrived);
}

fn decode_state(hash: &BTreeMap<String, String>, deltas: &[(String, f64)]) -> Result<NodeState, String> {
    fn number(hash: &BTreeMap<String, String>, field: &str) -> Result<Option<i64>, String> {
        hash.get(field)
            .map(|text| text.parse::<i64>().map_err(|_| format!("field {field}: not an integer: '{text}'")))
            .transpose()
    }
    let anchor = match number(hash, "anchor_ts")? {
        None => None,
        Some(ts) => {
            let kind_text = hash.get("anchor_kind").map(String::as_str).unwrap_or("");
            Some(Anchor {
                key: EventKey {
                    ts,
                    event_id: hash.get("anchor_id").cloned().ok_or("field anchor_id: missing")?,
                },
                qty: number(hash, "anchor_qty")?.ok_or("field anchor_qty: missing")?,
                kind: EventKind::parse(kind_text).ok_or_else(|| format!("field anchor_kind: '{kind_text}'"))?,
            })
        }
    };
    let mut state = NodeState {
        anchor,
        deltas: BTreeMap::new(),
        reserved: number(hash, "reserved")?.unwrap_or(0),
        held: number(hash, "held")?.unwrap_or(0),
        last_event_ts: number(hash, "last_ts")?,
        last_arrived: number(hash, "last_arrived")?,
    };
    for (member, ts) in deltas {
        let (event_id, delta) = member.rsplit_once('|').ok_or_else(|| format!("delta member '{member}'"))?;
        let delta = delta.parse::<i64>().map_err(|_| format!("delta member '{member}'"))?;
        state.deltas.insert(EventKey { ts: *ts as i64, event_id: event_id.to_string() }, delta);
    }
    Ok(state)
}
