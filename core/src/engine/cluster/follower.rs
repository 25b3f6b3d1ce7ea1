//! Jobs submitted through this engine: every tick their events and status are read back from Redis, wherever the
//! job runs. The events go to the engine's dispatcher thread, in order, the terminal one exactly once, as in one
//! process; the status goes to the mirror that `poll` and `peek` answer from.

use super::{Cluster, parse};
use crate::engine::dispatcher;
use crate::engine::event::Event;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often the event logs of followed jobs are read.
const TICK: Duration = Duration::from_millis(20);

impl Cluster {
    pub(super) fn follow_loop(&self) {
        while !self.stopping.load(Ordering::Acquire) {
            std::thread::sleep(TICK);
            self.forget_expired();
            if self.followed.lock().is_empty() {
                continue;
            }
            // A failed read is retried at the next tick: the log keeps everything until the job expires.
            let _ = self.follow_once();
        }
    }

    fn follow_once(&self) -> crate::Result<()> {
        let jobs: Vec<(crate::engine::JobId, u64)> =
            self.followed.lock().iter().map(|(id, (_, n))| (*id, *n)).collect();
        // Each job's new events, then its status: read in one round trip, so a status is never older than the
        // events delivered with it.
        let mut cmds = Vec::with_capacity(jobs.len() * 2);
        for (id, seen) in &jobs {
            cmds.push(redis::cmd("LRANGE").arg(self.keys.events(*id)).arg(*seen).arg(-1).clone());
            cmds.push(redis::cmd("HGET").arg(self.keys.job(*id)).arg("status").clone());
        }
        let replies: Vec<(Vec<String>, Option<String>)> = self
            .link
            .pipeline::<Vec<redis::Value>>(cmds)?
            .chunks(2)
            .map(|pair| {
                let log = redis::from_redis_value(pair[0].clone()).unwrap_or_default();
                let status = redis::from_redis_value(pair[1].clone()).unwrap_or(None);
                (log, status)
            })
            .collect();
        let engine_callbacks = self.callbacks.read().clone();
        for ((id, _), (log, status)) in jobs.into_iter().zip(replies) {
            self.mirror_status(id, status.as_deref());
            if log.is_empty() {
                continue;
            }
            let mut followed = self.followed.lock();
            let Some((callback, seen)) = followed.get_mut(&id) else { continue };
            let mut callbacks = engine_callbacks.clone();
            callbacks.extend(callback.iter().cloned());
            let mut outbox = Vec::new();
            let mut ended = false;
            for text in &log {
                let event: Event = parse(text, "job event")?;
                *seen += 1;
                ended |= event.kind.is_terminal();
                if !callbacks.is_empty() {
                    outbox.push((callbacks.clone(), event));
                }
            }
            if ended {
                followed.remove(&id);
            }
            drop(followed);
            dispatcher::send(&self.shared.dispatcher, outbox);
        }
        Ok(())
    }

    /// Moves the mirror of a job submitted here to the status just read.
    fn mirror_status(&self, id: crate::engine::JobId, status: Option<&str>) {
        let status: Option<crate::engine::JobStatus> = status.and_then(|s| parse(s, "job status").ok());
        if let (Some(status), Some(m)) = (status, self.mirrored.write().get_mut(&id)) {
            m.advance(status);
        }
    }

    /// Drops the mirror of jobs that ended more than `job_ttl_ms` ago, as Redis drops the jobs themselves, and the
    /// videos read that long ago.
    fn forget_expired(&self) {
        let ttl = Duration::from_millis(self.config.job_ttl_ms);
        let expired = |m: &super::Mirrored| m.ended_at.is_some_and(|at| at.elapsed() >= ttl);
        if self.mirrored.read().values().any(expired) {
            self.mirrored.write().retain(|_, m| !expired(m));
        }
        self.results.lock().retain(|_, read| read.read_at.elapsed() < ttl);
    }
}
