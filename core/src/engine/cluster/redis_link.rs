//! Connections to Redis: a small pool, every command under a timeout, and every failure of the link turned into
//! `unavailable` (retryable), so that a host sees "try again later" and not a crash while Redis restarts.

use crate::error::{Error, ErrorCode, Result};
use parking_lot::Mutex;
use std::time::Duration;

pub(crate) struct RedisLink {
    client: redis::Client,
    idle: Mutex<Vec<redis::Connection>>,
    timeout: Duration,
}

/// Connections kept for reuse; more may be open at a moment of contention.
const POOL: usize = 8;

impl RedisLink {
    pub fn open(url: &str, timeout: Duration) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|e| Error::invalid(format!("backend.redis.url {url:?}: {e}")))?;
        Ok(Self { client, idle: Mutex::new(Vec::new()), timeout })
    }

    fn connect(&self) -> Result<redis::Connection> {
        let con = self.client.get_connection_with_timeout(self.timeout).map_err(unavailable)?;
        con.set_read_timeout(Some(self.timeout)).map_err(unavailable)?;
        con.set_write_timeout(Some(self.timeout)).map_err(unavailable)?;
        Ok(con)
    }

    /// Returns a working connection to the pool, unless the pool is full.
    fn keep(&self, con: redis::Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < POOL {
            idle.push(con);
        }
    }

    /// Runs `f` on a pooled connection. A connection that failed is dropped, not returned to the pool.
    pub fn with<T>(&self, f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>) -> Result<T> {
        let pooled = self.idle.lock().pop();
        let mut con = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        match f(&mut con) {
            Ok(v) => {
                self.keep(con);
                Ok(v)
            }
            Err(e) => {
                let broken =
                    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal();
                // A restarted Redis answers LOADING while it replays its append-only file.
                let starting = matches!(e.code(), Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "BUSY"));
                if starting {
                    return Err(unavailable(e));
                }
                if !broken {
                    self.keep(con);
                    return Err(Error::new(ErrorCode::Internal, format!("redis: {e}")));
                }
                self.idle.lock().clear();
                Err(unavailable(e))
            }
        }
    }
}

fn unavailable(e: redis::RedisError) -> Error {
    Error::new(ErrorCode::Unavailable, format!("the job queue (Redis) is unreachable: {e}")).with_retry_after(1_000)
}
