//! The registry of open epochs: a Redis hash, per epoch's cutoff, the stream entry its consumer
//! group starts after. The batch role opens an epoch here once its speed view is caught up from
//! the lake and closes it when the epoch retires; fold workers in processes of their own
//! (`sellable run --role fold`) follow it, so they fold every open epoch's group and stop with it.

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

    /// Records the epoch of `cutoff`, its group starting after the entry `start`.
    pub async fn open(&self, cutoff: Millis, start: &str) -> Result<(), SpeedError> {
        let mut connection = self.connection.clone();
        redis::cmd("HSET").arg(&self.key).arg(cutoff).arg(start).query_async::<i64>(&mut connection).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Forgets the epoch of `cutoff`.
    pub async fn close(&self, cutoff: Millis) -> Result<(), SpeedError> {
        let mut connection = self.connection.clone();
        redis::cmd("HDEL").arg(&self.key).arg(cutoff).query_async::<i64>(&mut connection).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    /// The open epochs: cutoff → where their group starts. A field that is not a cutoff is an
    /// error naming it.
    pub async fn list(&self) -> Result<BTreeMap<Millis, String>, SpeedError> {
        let mut connection = self.connection.clone();
        let fields: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&self.key).query_async(&mut connection).await.map_err(|e| self.error(e))?;
        fields
            .into_iter()
            .map(|(cutoff, start)| match cutoff.parse() {
                Ok(cutoff) => Ok((cutoff, start)),
                Err(_) => Err(SpeedError::Corrupt { key: self.key.clone(), message: format!("field '{cutoff}' is not a cutoff in milliseconds") }),
            })
            .collect()
    }
}
