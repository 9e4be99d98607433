//! The registry of open epochs: a Redis hash, per epoch's cutoff, the stream entry its consumer
//! group starts after. The batch role opens an epoch here once its speed view is caught up from
//! the lake and closes it when the epoch retires; fold workers in processes of their own
//! (`sellable run --role fold`) follow it, so they fold every open epoch's group and stop with it.
//! Beside it, a second hash names the epochs whose namespace may hold keys while they are not
//! open: one being opened (named before anything is written to it) and one closed and not yet
//! retired. A process stopped in either window leaves the epoch named there, and the next start
//! retires it: no epoch's keys stay in Redis for good.

use std::collections::BTreeMap;

use sellable_core::Millis;

use crate::{Connection, SpeedError};

pub struct Registry {
    url: String,
    key: String,
    connection: Connection,
}

impl Registry {
    pub async fn connect(url: &str, key: &str) -> Result<Registry, SpeedError> {
        Ok(Registry { url: url.to_string(), key: key.to_string(), connection: Connection::open(url).await? })
    }

    fn error(&self, source: redis::RedisError) -> SpeedError {
        SpeedError::Redis { url: self.url.clone(), source }
    }

    /// The hash of the epochs whose namespace may hold keys while they are not open.
    fn pending_key(&self) -> String {
        format!("{}:pending", self.key)
    }

    /// `HSET key cutoff value` or `HDEL key cutoff`.
    async fn command(&self, command: &str, key: String, cutoff: Millis, value: Option<&str>) -> Result<(), SpeedError> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd(command);
        command.arg(key).arg(cutoff);
        if let Some(value) = value {
            command.arg(value);
        }
        command.query_async::<i64>(&mut connection).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Names the epoch of `cutoff` as being opened, before anything is written to its namespace.
    pub async fn opening(&self, cutoff: Millis) -> Result<(), SpeedError> {
        self.command("HSET", self.pending_key(), cutoff, Some("1")).await
    }

    /// Records the epoch of `cutoff` as open, its group starting after the entry `start`; then no
    /// longer as being opened (a stop between the two leaves it named in both).
    pub async fn open(&self, cutoff: Millis, start: &str) -> Result<(), SpeedError> {
        self.command("HSET", self.key.clone(), cutoff, Some(start)).await?;
        self.command("HDEL", self.pending_key(), cutoff, None).await
    }

    /// Closes the epoch of `cutoff`: no longer open (fold roles stop its workers), named as not yet
    /// retired until [`Registry::retired`].
    pub async fn close(&self, cutoff: Millis) -> Result<(), SpeedError> {
        self.command("HSET", self.pending_key(), cutoff, Some("1")).await?;
        self.command("HDEL", self.key.clone(), cutoff, None).await
    }

    /// Forgets the epoch of `cutoff` once its namespace is dropped.
    pub async fn retired(&self, cutoff: Millis) -> Result<(), SpeedError> {
        self.command("HDEL", self.pending_key(), cutoff, None).await
    }

    /// The epochs being opened or closed and not retired: a process stopped meanwhile left them.
    pub async fn pending(&self) -> Result<Vec<Millis>, SpeedError> {
        let (mut connection, key) = (self.connection.clone(), self.pending_key());
        let fields: Vec<String> = redis::cmd("HKEYS").arg(&key).query_async(&mut connection).await.map_err(|e| self.error(e))?;
        fields.iter().map(|cutoff| self.cutoff(&key, cutoff)).collect()
    }

    /// The open epochs: cutoff → where their group starts. A field that is not a cutoff is an
    /// error naming it.
    pub async fn list(&self) -> Result<BTreeMap<Millis, String>, SpeedError> {
        let mut connection = self.connection.clone();
        let fields: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&self.key).query_async(&mut connection).await.map_err(|e| self.error(e))?;
        fields.into_iter().map(|(cutoff, start)| Ok((self.cutoff(&self.key, &cutoff)?, start))).collect()
    }

    /// A field of `key` read as a cutoff; a field that is not one is an error naming it.
    fn cutoff(&self, key: &str, field: &str) -> Result<Millis, SpeedError> {
        field.parse().map_err(|_| SpeedError::Corrupt { key: key.to_string(), message: format!("field '{field}' is not a cutoff in milliseconds") })
    }
}
