//! Callbacks for jobs submitted through this engine: their events are read back from Redis, wherever the job
//! runs, and handed to the engine's dispatcher thread, in order, the terminal one exactly once, as in one process.

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
        let logs: Vec<Vec<String>> = self.link.with(|c| {
            let mut pipe = redis::pipe();
            for (id, seen) in &jobs {
                pipe.cmd("LRANGE").arg(self.keys.events(*id)).arg(*seen).arg(-1);
            }
            pipe.query(c)
        })?;
        let engine_callbacks = self.callbacks.read().clone();
        for ((id, _), log) in jobs.into_iter().zip(logs) {
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
}
