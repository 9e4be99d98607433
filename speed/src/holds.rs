//! Reservations in Redis ([`HoldStore`]). They outlive epochs, so they live in the base
//! namespace, not an epoch's:
//! - `<ns>:holds:{<sku>}` hash: per live hold, the field `<reservation id>/<line>/<node>` and the
//!   value `<units>:<expiry ms>`. Every key of one SKU is in the slot of its hash tag, so one
//!   script takes a SKU's lines of a cart atomically on a single server and on a cluster. A hold
//!   past its expiry (by the Redis server's clock, `TIME`) no longer counts from that
//!   millisecond on: every script that reads the hash drops it first, and the key itself expires
//!   with its last hold, so nothing can fall behind and a crash leaks nothing.
//! - the field `#confirms` of the same hash: how many confirmations released holds of the SKU
//!   (their units are `reserve` events now). A reservation reads it before it decides and its
//!   hold script refuses to take anything if it changed meanwhile (the decision may predate the
//!   events of a confirmation whose holds are gone): serving decides again. A confirmation keeps
//!   the hash for ten minutes at least, so the count never silently restarts under a decision.
//! - `<ns>:reservation:{<id>}` string: the reservation's record (its answer, to replay for a
//!   retry), `pending:<keep ms>` while the request that claimed the id has not answered yet (it
//!   expires after that long; its age is that less its `PTTL`). A claim is one plain `SET NX`; the
//!   script that also reads what is there runs only when that finds the id taken.
//!
//! A cart whose lines span SKUs (hence slots) takes them SKU by SKU; serving releases what it
//! took when a later SKU is short (`docs/consistency.md`).

use sellable_core::holds::{Begun, Held, HoldLine, HoldOutcome, HoldStore, Taken, Until};
use sellable_core::view::BoxFuture;
use sellable_core::{Ahead, Millis, ViewError};

use crate::{Connection, SpeedError};

/// Claims an id when the plain `SET NX` of [`HoldStore::begin`] found it taken: the same `SET NX`
/// again, else what is there (a pending record with its age: the time it was kept for, which the
/// record names, less what is left of it). KEYS: the record. ARGV: how long to keep it (ms).
/// Reply: `{0}` claimed, `{1, age}` pending, `{2, record}`.
const BEGIN_SCRIPT: &str = r#"
if redis.call('SET', KEYS[1], 'pending:' .. ARGV[1], 'NX', 'PX', ARGV[1]) then
  return {0}
end
local record = redis.call('GET', KEYS[1])
if string.sub(record, 1, 8) == 'pending:' then
  return {1, tostring((tonumber(string.sub(record, 9)) or 0) - redis.call('PTTL', KEYS[1]))}
end
return {2, record}
"#;

/// Takes one SKU's lines of a cart, all or none. KEYS: the SKU's holds. ARGV: the reservation
/// id, the expiry (ms, server clock; `+<ms>`: that long from the server's clock now), the
/// `#confirms` count the decision was made after, the line count, then per line its index, qty,
/// split flag (`1`), option count and per option the node and its promisable units. Live holds of
/// other reservations are subtracted from each node's units (and a line's take from the next
/// line's); expired holds are dropped. Reply: `{1, expiry, line, node, units, …}` taken (the id's
/// existing holds and their expiry if it has any: a replay), `{0, line, available, …}` for the
/// lines that could not be met, or `{2}` when `#confirms` changed since the decision (nothing
/// taken: decide again).
const HOLD_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, expires = ARGV[1], ARGV[2]
if string.sub(expires, 1, 1) == '+' then
  expires = now + tonumber(string.sub(expires, 2))
else
  expires = tonumber(expires)
end
local held, mine, mine_ends, latest = {}, {}, 0, expires
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local owner, line, node = string.match(all[i], '^(.-)/(%d+)/(.*)$')
  if owner then
    local units, ends = string.match(all[i + 1], '^(%d+):(%d+)$')
    units, ends = tonumber(units), tonumber(ends)
    if ends <= now then
      redis.call('HDEL', KEYS[1], all[i])
    elseif owner == id then
      table.insert(mine, line); table.insert(mine, node); table.insert(mine, tostring(units))
      if ends > mine_ends then mine_ends = ends end
    else
      held[node] = (held[node] or 0) + units
      if ends > latest then latest = ends end
    end
  end
end
if #mine > 0 then
  table.insert(mine, 1, tostring(mine_ends))
  table.insert(mine, 1, 1)
  return mine
end
if (redis.call('HGET', KEYS[1], '#confirms') or '0') ~= ARGV[3] then
  return {2}
end
local at, taken, short = 5, {}, {}
for _ = 1, tonumber(ARGV[4]) do
  local line, qty, split, n = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2] == '1', tonumber(ARGV[at + 3])
  at = at + 4
  local free, got, need, most, total = {}, {}, qty, 0, 0
  for _ = 1, n do
    local node, units = ARGV[at], tonumber(ARGV[at + 1]) - (held[ARGV[at]] or 0)
    at = at + 2
    if units < 0 then units = 0 end
    table.insert(free, {node, units})
    total = total + units
    if units > most then most = units end
  end
  for _, option in ipairs(free) do
    if split and need > 0 and option[2] > 0 then
      local units = math.min(need, option[2])
      table.insert(got, {option[1], units})
      need = need - units
    elseif not split and option[2] >= qty then
      got, need = {{option[1], qty}}, 0
      break
    end
  end
  if need > 0 then
    table.insert(short, line); table.insert(short, tostring(split and total or most))
  else
    for _, take in ipairs(got) do
      held[take[1]] = (held[take[1]] or 0) + take[2]
      table.insert(taken, line); table.insert(taken, take[1]); table.insert(taken, tostring(take[2]))
    end
  end
end
if #short > 0 then
  table.insert(short, 1, 0)
  return short
end
for i = 1, #taken, 3 do
  redis.call('HSET', KEYS[1], id .. '/' .. taken[i] .. '/' .. taken[i + 1], taken[i + 2] .. ':' .. expires)
end
if redis.call('PEXPIRETIME', KEYS[1]) < latest then redis.call('PEXPIREAT', KEYS[1], latest) end
table.insert(taken, 1, tostring(expires))
table.insert(taken, 1, 1)
return taken
"#;

/// Sets the expiry of the id's live holds. KEYS: the SKU's holds. ARGV: the id, the new expiry.
/// Reply: how many live holds it had.
const EXTEND_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local prefix, expires, count = ARGV[1] .. '/', tonumber(ARGV[2]), 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local units, ends = string.match(all[i + 1], '^(%d+):(%d+)$')
  if not ends or string.sub(all[i], 1, 1) == '#' then
  elseif tonumber(ends) <= now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif string.sub(all[i], 1, #prefix) == prefix then
    redis.call('HSET', KEYS[1], all[i], units .. ':' .. expires)
    count = count + 1
  end
end
if count > 0 and redis.call('PEXPIRETIME', KEYS[1]) < expires then
  redis.call('PEXPIREAT', KEYS[1], expires)
end
return count
"#;

/// Drops the id's holds. KEYS: the SKU's holds. ARGV: the id, `1` when they were confirmed
/// (their units are events now: `#confirms` counts up, and the hash is kept ten minutes at least).
const RELEASE_SCRIPT: &str = r#"
local prefix = ARGV[1] .. '/'
local fields = redis.call('HKEYS', KEYS[1])
for _, field in ipairs(fields) do
  if string.sub(field, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], field) end
end
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], '#confirms', 1)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 600000 then redis.call('PEXPIRE', KEYS[1], 600000) end
end
return 0
"#;

/// The field of a SKU's holds hash that counts its confirmations.
const CONFIRMS: &str = "#confirms";

/// Reservations in Redis, under `namespace`.
pub struct RedisHolds {
    url: String,
    namespace: String,
    connection: Connection,
    scripts: [redis::Script; 4],
}

impl RedisHolds {
    /// Reservations on the Redis at `url` (a cluster when it lists several nodes); a single
    /// server need not be up yet: it is connected at the first call (reservations fail closed
    /// meanwhile).
    pub async fn connect(url: &str, namespace: &str) -> Result<RedisHolds, SpeedError> {
        let scripts = [BEGIN_SCRIPT, HOLD_SCRIPT, EXTEND_SCRIPT, RELEASE_SCRIPT].map(redis::Script::new);
        let connection = if url.contains(',') { Connection::open(url).await? } else { Connection::open_lazy(url)? };
        Ok(RedisHolds { url: url.to_string(), namespace: namespace.to_string(), connection, scripts })
    }

    fn error(&self, source: redis::RedisError) -> ViewError {
        Box::new(SpeedError::Redis { url: self.url.clone(), source })
    }

    fn holds_key(&self, sku: &str) -> String {
        // not `format!`: a read of holds makes one key per SKU
        [self.namespace.as_str(), ":holds:{", sku, "}"].concat()
    }

    fn record_key(&self, id: &str) -> String {
        format!("{}:reservation:{{{id}}}", self.namespace)
    }

    fn corrupt(&self, key: String, message: &str) -> ViewError {
        Box::new(SpeedError::Corrupt { key, message: message.to_string() })
    }

    async fn run<T: redis::FromRedisValue>(&self, script: usize, invocation: impl FnOnce(&mut redis::ScriptInvocation<'_>)) -> Result<T, ViewError> {
        let mut call = self.scripts[script].prepare_invoke();
        invocation(&mut call);
        let mut connection = self.connection.clone();
        call.invoke_async(&mut connection).await.map_err(|e| self.error(e))
    }
}

/// Reads `{flag, a, b, c, …}` triples of a hold script's reply.
fn triples(values: &[redis::Value]) -> Option<Vec<(String, String, String)>> {
    let text = |value: &redis::Value| redis::from_redis_value_ref::<String>(value).ok();
    values.chunks(3).map(|chunk| Some((text(chunk.first()?)?, text(chunk.get(1)?)?, text(chunk.get(2)?)?))).collect()
}

impl HoldStore for RedisHolds {
    fn now(&self) -> BoxFuture<'_, Result<Millis, ViewError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut connection).await.map_err(|e| self.error(e))?;
            Ok(seconds * 1000 + micros / 1000)
        })
    }

    fn begin<'a>(&'a self, id: &'a str, keep_ms: Millis) -> BoxFuture<'a, Result<Begun, ViewError>> {
        Box::pin(async move {
            let key = self.record_key(id);
            let mut connection = self.connection.clone();
            let pending = format!("pending:{keep_ms}");
            let claimed: Option<String> = redis::cmd("SET").arg(&key).arg(&pending).arg("NX").arg("PX").arg(keep_ms).query_async(&mut connection).await.map_err(|e| self.error(e))?;
            if claimed.is_some() {
                return Ok(Begun::Owner);
            }
            let reply: Vec<redis::Value> = self.run(0, |call| {
                call.key(&key).arg(keep_ms);
            })
            .await?;
            let text = |index: usize| reply.get(index).and_then(|value| redis::from_redis_value_ref::<String>(value).ok());
            match text(0).as_deref() {
                Some("0") => Ok(Begun::Owner),
                Some("1") => {
                    let age = text(1).and_then(|age| age.parse().ok()).ok_or_else(|| self.corrupt(key.clone(), "a pending record without its time"))?;
                    Ok(Begun::Found { record: String::new(), pending_ms: Some(age) })
                }
                Some("2") => Ok(Begun::Found { record: text(1).unwrap_or_default(), pending_ms: None }),
                _ => Err(self.corrupt(key, "an unexpected reply to the claim")),
            }
        })
    }

    fn record<'a>(&'a self, id: &'a str, record: &'a str, keep_ms: Millis) -> BoxFuture<'a, Result<(), ViewError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            redis::cmd("SET").arg(self.record_key(id)).arg(record).arg("PX").arg(keep_ms.max(1)).query_async::<()>(&mut connection).await.map_err(|e| self.error(e))
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<String>, ViewError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let record: Option<String> = redis::cmd("GET").arg(self.record_key(id)).query_async(&mut connection).await.map_err(|e| self.error(e))?;
            Ok(record.filter(|record| !record.starts_with("pending:")))
        })
    }

    fn forget<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), ViewError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            redis::cmd("DEL").arg(self.record_key(id)).query_async::<i64>(&mut connection).await.map_err(|e| self.error(e))?;
            Ok(())
        })
    }

    fn confirms<'a>(&'a self, sku: &'a str) -> BoxFuture<'a, Result<u64, ViewError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let count: Option<u64> = redis::cmd("HGET").arg(self.holds_key(sku)).arg(CONFIRMS).query_async(&mut connection).await.map_err(|e| self.error(e))?;
            Ok(count.unwrap_or(0))
        })
    }

    fn server(&self) -> Option<&str> {
        (!self.connection.is_cluster()).then_some(self.url.as_str())
    }

    fn confirms_ahead(&self, skus: &[&str]) -> Option<Ahead> {
        let server = self.server()?.to_string();
        Some(Ahead { server, fields: skus.iter().map(|sku| (self.holds_key(sku), CONFIRMS.to_string())).collect() })
    }

    fn hold<'a>(&'a self, id: &'a str, sku: &'a str, lines: &'a [HoldLine], until: Until, confirms: u64) -> BoxFuture<'a, Result<HoldOutcome, ViewError>> {
        Box::pin(async move {
            let key = self.holds_key(sku);
            let until = match until {
                Until::After(ms) => format!("+{ms}"),
                Until::At(ms) => ms.to_string(),
            };
            let reply: Vec<redis::Value> = self
                .run(1, |call| {
                    call.key(&key).arg(id).arg(&until).arg(confirms).arg(lines.len());
                    for line in lines {
                        call.arg(line.line).arg(line.qty).arg(u8::from(line.split)).arg(line.options.len());
                        for (node, units) in &line.options {
                            call.arg(node).arg(*units);
                        }
                    }
                })
                .await?;
            let bad = || self.corrupt(key.clone(), "an unexpected reply to a hold");
            let flag: i64 = reply.first().and_then(|value| redis::from_redis_value_ref(value).ok()).ok_or_else(bad)?;
            if flag == 2 {
                return Ok(HoldOutcome::Stale);
            }
            if flag == 0 {
                let pairs: Option<Vec<(usize, i64)>> = reply[1..]
                    .chunks(2)
                    .map(|pair| Some((redis::from_redis_value_ref(pair.first()?).ok()?, redis::from_redis_value_ref(pair.get(1)?).ok()?)))
                    .collect();
                return Ok(HoldOutcome::Short(pairs.ok_or_else(bad)?));
            }
            let expires: Millis = reply.get(1).and_then(|value| redis::from_redis_value_ref::<String>(value).ok()?.parse().ok()).ok_or_else(bad)?;
            let mut taken: Vec<(usize, Vec<Taken>)> = Vec::new();
            for (line, node, units) in triples(&reply[2..]).ok_or_else(bad)? {
                let (line, units) = (line.parse::<usize>().map_err(|_| bad())?, units.parse::<i64>().map_err(|_| bad())?);
                match taken.iter_mut().find(|(index, _)| *index == line) {
                    Some((_, nodes)) => nodes.push(Taken { node, units }),
                    None => taken.push((line, vec![Taken { node, units }])),
                }
            }
            taken.sort_by_key(|(line, _)| *line);
            Ok(HoldOutcome::Held { expires, lines: taken })
        })
    }

    fn extend<'a>(&'a self, id: &'a str, sku: &'a str, expires: Millis) -> BoxFuture<'a, Result<u64, ViewError>> {
        Box::pin(async move {
            let key = self.holds_key(sku);
            self.run(2, |call| {
                call.key(&key).arg(id).arg(expires);
            })
            .await
        })
    }

    fn release<'a>(&'a self, id: &'a str, sku: &'a str, confirmed: bool) -> BoxFuture<'a, Result<(), ViewError>> {
        Box::pin(async move {
            let key = self.holds_key(sku);
            self.run::<i64>(3, |call| {
                call.key(&key).arg(id).arg(u8::from(confirmed));
            })
            .await?;
            Ok(())
        })
    }

    fn held_many<'a>(&'a self, skus: &'a [&'a str]) -> BoxFuture<'a, Result<Vec<Held>, ViewError>> {
        Box::pin(async move {
            // the holds and the server's clock: one pipeline on a server, one call per SKU (each
            // in its slot) at once on a cluster
            let mut connection = self.connection.clone();
            let (seconds, micros, stored): (i64, i64, Vec<Vec<(String, String)>>) = if self.connection.is_cluster() {
                let reads = skus.iter().map(|sku| {
                    let mut connection = self.connection.clone();
                    let key = self.holds_key(sku);
                    async move { redis::cmd("HGETALL").arg(key).query_async::<Vec<(String, String)>>(&mut connection).await }
                });
                let time = redis::cmd("TIME");
                let (time, reads) = tokio::join!(time.query_async::<(i64, i64)>(&mut connection), futures::future::join_all(reads));
                let (seconds, micros) = time.map_err(|e| self.error(e))?;
                (seconds, micros, reads.into_iter().collect::<Result<_, _>>().map_err(|e| self.error(e))?)
            } else {
                let mut pipe = redis::pipe();
                pipe.cmd("TIME");
                for sku in skus {
                    pipe.cmd("HGETALL").arg(self.holds_key(sku));
                }
                let mut replies: Vec<redis::Value> = pipe.query_async(&mut connection).await.map_err(|e| self.error(e))?;
                let bad = |_| self.corrupt(self.holds_key(skus.first().copied().unwrap_or_default()), "an unexpected reply to a read of holds");
                let stored = replies.split_off(1).into_iter().map(|value| redis::from_redis_value(value).map_err(bad)).collect::<Result<_, _>>()?;
                let (seconds, micros): (i64, i64) = redis::from_redis_value(replies.remove(0)).map_err(bad)?;
                (seconds, micros, stored)
            };
            let now = seconds * 1000 + micros / 1000;
            let mut held_of = Vec::with_capacity(skus.len());
            for (sku, fields) in skus.iter().zip(stored) {
                let mut held: Vec<(String, i64)> = Vec::new();
                for (field, value) in fields.iter().filter(|(field, _)| !field.starts_with('#')) {
                    let parsed = field.split_once('/').and_then(|(_, rest)| rest.split_once('/')).zip(value.split_once(':'));
                    let Some(((_, node), (units, ends))) = parsed else { return Err(self.corrupt(self.holds_key(sku), "a hold that does not read as one")) };
                    let (Ok(units), Ok(ends)) = (units.parse::<i64>(), ends.parse::<Millis>()) else {
                        return Err(self.corrupt(self.holds_key(sku), "a hold whose units or expiry are not numbers"));
                    };
                    if ends > now {
                        match held.iter_mut().find(|(name, _)| name == node) {
                            Some((_, total)) => *total += units,
                            None => held.push((node.to_string(), units)),
                        }
                    }
                }
                held_of.push(held);
            }
            Ok(held_of)
        })
    }
}
