//! Connections to Redis, one server or a Redis Cluster: a small pool, every command under a timeout, and every
//! failure of the link turned into `unavailable` (retryable), so that a host sees "try again later" and not a crash
//! while Redis restarts or a cluster fails over.
//!
//! Every key the backend uses carries the namespace's hash tag (`Keys`), so on a cluster every command, pipeline
//! and script of a namespace goes to the one node that holds its slot, and the cluster client routes it there.

use crate::error::{Error, ErrorCode, Result};
use parking_lot::Mutex;
use redis::ConnectionLike;
use std::time::Duration;

enum Client {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// One connection: to the server, or to the cluster (which holds a connection per node it has talked to).
pub(crate) enum Connection {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl Connection {
    fn as_dyn(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Connection::Single(c) => c,
            Connection::Cluster(c) => c.as_mut(),
        }
    }
}

pub(crate) struct RedisLink {
    client: Client,
    idle: Mutex<Vec<Connection>>,
    timeout: Duration,
}

/// Connections kept for reuse; more may be open at a moment of contention.
const POOL: usize = 8;

impl RedisLink {
    /// `url`: one server's URL; with `cluster`, the URLs of one or more of its nodes, separated by commas.
    pub fn open(url: &str, cluster: bool, timeout: Duration) -> Result<Self> {
        let bad = |e: redis::RedisError| Error::invalid(format!("backend.redis.url {url:?}: {e}"));
        let client = if cluster {
            let nodes: Vec<&str> = url.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
            let client = redis::cluster::ClusterClient::builder(nodes)
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()
                .map_err(bad)?;
            Client::Cluster(client)
        } else {
            Client::Single(redis::Client::open(url).map_err(bad)?)
        };
        Ok(Self { client, idle: Mutex::new(Vec::new()), timeout })
    }

    /// A new connection whose commands may take `timeout` to answer.
    fn connect(&self, timeout: Duration) -> Result<Connection> {
        match &self.client {
            Client::Single(client) => {
                let con = client.get_connection_with_timeout(self.timeout).map_err(unavailable)?;
                con.set_read_timeout(Some(timeout)).map_err(unavailable)?;
                con.set_write_timeout(Some(self.timeout)).map_err(unavailable)?;
                Ok(Connection::Single(con))
            }
            Client::Cluster(client) => {
                let con = client.get_connection().map_err(unavailable)?;
                con.set_read_timeout(Some(timeout)).map_err(unavailable)?;
                con.set_write_timeout(Some(self.timeout)).map_err(unavailable)?;
                Ok(Connection::Cluster(Box::new(con)))
            }
        }
    }

    /// Returns a working connection to the pool, unless the pool is full.
    fn keep(&self, con: Connection) {
        let mut idle = self.idle.lock();
        if idle.len() < POOL {
            idle.push(con);
        }
    }

    /// Runs `f` on a pooled connection. A connection that failed is dropped, not returned to the pool.
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn ConnectionLike) -> redis::RedisResult<T>) -> Result<T> {
        self.with_connection(|c| f(c.as_dyn()))
    }

    /// Runs `cmds` as one pipeline (one round trip) and reads their replies, in order, as `T` (a tuple or a `Vec`
    /// of one item a command; `()` ignores them). On a cluster it is the client's cluster pipeline (a plain one is
    /// refused there); every key of a namespace is in one slot, so it still goes to one node.
    pub fn pipeline<T: redis::FromRedisValue>(&self, cmds: Vec<redis::Cmd>) -> Result<T> {
        self.with_connection(|con| match con {
            Connection::Single(c) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query(c)
            }
            Connection::Cluster(c) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query(c.as_mut())
            }
        })
    }

    fn with_connection<T>(&self, f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>) -> Result<T> {
        let pooled = self.idle.lock().pop();
        let mut con = match pooled {
            Some(c) => c,
            None => self.connect(self.timeout)?,
        };
        let outcome = f(&mut con);
        match &outcome {
            Err(e) if is_broken(e) => self.idle.lock().clear(),
            _ => self.keep(con),
        }
        settle(outcome)
    }

    /// A connection of its own for commands that block in Redis for up to `block` (`XREADGROUP ... BLOCK`): its
    /// reads wait that long plus the usual timeout. It is not pooled; the caller keeps it across calls and runs
    /// them through `on`.
    fn blocking(&self, block: Duration) -> Result<Connection> {
        self.connect(block + self.timeout)
    }

    /// Runs `f` on a connection from `blocking`. A failed connection is dropped (`*con` becomes None), and the
    /// next call opens another.
    pub fn on<T>(
        &self,
        con: &mut Option<Connection>,
        block: Duration,
        f: impl FnOnce(&mut dyn ConnectionLike) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut c = match con.take() {
            Some(c) => c,
            None => self.blocking(block)?,
        };
        let outcome = f(c.as_dyn());
        let broken = outcome.as_ref().err().is_some_and(is_broken);
        if !broken {
            *con = Some(c);
        }
        settle(outcome)
    }
}

/// A command's outcome as the engine's: a broken link or a server that is starting or failing over is
/// `unavailable` (retryable); any other refusal is `internal`.
fn settle<T>(outcome: redis::RedisResult<T>) -> Result<T> {
    outcome.map_err(|e| {
        // A restarted Redis answers LOADING while it replays its append-only file; a cluster answers TRYAGAIN,
        // MASTERDOWN or CLUSTERDOWN while a slot moves or fails over.
        let starting = matches!(e.code(), Some("LOADING" | "TRYAGAIN" | "MASTERDOWN" | "BUSY" | "CLUSTERDOWN"));
        if starting || is_broken(&e) { unavailable(e) } else { Error::new(ErrorCode::Internal, format!("redis: {e}")) }
    })
}

fn is_broken(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_connection_refusal()
}

fn unavailable(e: redis::RedisError) -> Error {
    Error::new(ErrorCode::Unavailable, format!("the job queue (Redis) is unreachable: {e}")).with_retry_after(1_000)
}
