//! The run queue: priority order, FIFO within a priority, with aging, and delayed entries for retries.
//!
//! Aging without re-sorting: each entry's rank is fixed when it enters, `enqueued_at − priority · aging`, and the
//! lowest rank runs first. A job at priority p that has waited one aging interval ranks with a job at p + 1 that
//! just arrived, so low priorities move up as they wait and are never starved, and the order never needs updating.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An entry's place in the queue. Lower runs first; `seq` breaks ties in arrival order (FIFO).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    score: i128,
    seq: u64,
}

pub struct Queue<T> {
    origin: Instant,
    aging: Duration,
    next_seq: u64,
    ready: BTreeMap<Rank, T>,
    /// Entries that may not run before a time (retries waiting out their backoff), soonest first.
    delayed: BinaryHeap<Reverse<(Instant, Rank)>>,
    delayed_items: BTreeMap<Rank, T>,
    /// Bumped by every change that can move an entry's position, so that readers without the lock (poll) can
    /// tell whether a position they computed earlier still holds.
    version: Arc<AtomicU64>,
}

impl<T> Queue<T> {
    pub fn new(aging: Duration) -> Self {
        Self {
            origin: Instant::now(),
            aging: aging.max(Duration::from_micros(1)),
            next_seq: 0,
            ready: BTreeMap::new(),
            delayed: BinaryHeap::new(),
            delayed_items: BTreeMap::new(),
            version: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The change counter, readable without the queue's lock.
    pub fn version(&self) -> Arc<AtomicU64> {
        self.version.clone()
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The rank of an entry with this priority that arrived at `at`.
    pub fn rank(&mut self, priority: i32, at: Instant) -> Rank {
        let us = at.saturating_duration_since(self.origin).as_micros() as i128;
        let seq = self.next_seq;
        self.next_seq += 1;
        Rank { score: us - priority as i128 * self.aging.as_micros() as i128, seq }
    }

    /// Adds an entry that may run from `not_before` on (now, for a new job).
    pub fn push(&mut self, rank: Rank, item: T, not_before: Option<Instant>) {
        match not_before {
            Some(t) => {
                self.delayed.push(Reverse((t, rank)));
                self.delayed_items.insert(rank, item);
            }
            None => {
                self.ready.insert(rank, item);
            }
        }
        self.changed();
    }

    fn promote(&mut self, now: Instant) {
        while let Some(Reverse((t, rank))) = self.delayed.peek().copied() {
            if t > now {
                break;
            }
            self.delayed.pop();
            if let Some(item) = self.delayed_items.remove(&rank) {
                self.ready.insert(rank, item);
                self.changed();
            }
        }
    }

    /// Whether an entry may run now.
    pub fn has_ready(&mut self, now: Instant) -> bool {
        self.promote(now);
        !self.ready.is_empty()
    }

    /// Takes the best entry that may run now.
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        self.promote(now);
        let item = self.ready.pop_first().map(|(_, item)| item);
        if item.is_some() {
            self.changed();
        }
        item
    }

    /// Removes an entry wherever it is. Returns it if it was there.
    pub fn remove(&mut self, rank: Rank) -> Option<T> {
        let item = self.ready.remove(&rank).or_else(|| self.delayed_items.remove(&rank));
        if item.is_some() {
            self.changed();
        }
        item
    }

    /// The entries ahead of `rank` among those ready, or `None` if it is not queued.
    pub fn position(&self, rank: Rank) -> Option<u32> {
        if self.ready.contains_key(&rank) {
            Some(self.ready.range(..rank).count() as u32)
        } else if self.delayed_items.contains_key(&rank) {
            Some(self.ready.len() as u32)
        } else {
            None
        }
    }

    /// When the soonest delayed entry becomes ready.
    pub fn next_ready_at(&self) -> Option<Instant> {
        self.delayed.iter().filter(|Reverse((_, r))| self.delayed_items.contains_key(r)).map(|Reverse((t, _))| *t).min()
    }

    pub fn len(&self) -> usize {
        self.ready.len() + self.delayed_items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_then_fifo() {
        let mut q = Queue::new(Duration::from_secs(10));
        let t = Instant::now();
        for (name, p) in [("a", 0), ("b", 5), ("c", 0), ("d", 5)] {
            let r = q.rank(p, t);
            q.push(r, name, None);
        }
        let order: Vec<_> = std::iter::from_fn(|| q.pop(t)).collect();
        assert_eq!(order, ["b", "d", "a", "c"]);
    }

    #[test]
    fn waiting_long_enough_beats_a_higher_priority_newcomer() {
        let mut q = Queue::new(Duration::from_millis(100));
        let t0 = Instant::now();
        let old = q.rank(0, t0);
        q.push(old, "old low", None);
        // 250 ms later: worth 2.5 priority levels of waiting.
        let new = q.rank(2, t0 + Duration::from_millis(250));
        q.push(new, "new high", None);
        assert_eq!(q.pop(t0 + Duration::from_millis(250)), Some("old low"));
    }

    #[test]
    fn delayed_entries_wait_and_removal_works_anywhere() {
        let mut q = Queue::new(Duration::from_secs(1));
        let t = Instant::now();
        let a = q.rank(0, t);
        q.push(a, "retry", Some(t + Duration::from_millis(50)));
        let b = q.rank(0, t);
        q.push(b, "fresh", None);
        assert_eq!(q.position(b), Some(0));
        assert_eq!(q.pop(t), Some("fresh"));
        assert_eq!(q.pop(t), None, "not before its time");
        assert_eq!(q.next_ready_at(), Some(t + Duration::from_millis(50)));
        assert_eq!(q.pop(t + Duration::from_millis(60)), Some("retry"));
        let c = q.rank(0, t);
        q.push(c, "cancel me", None);
        assert_eq!(q.remove(c), Some("cancel me"));
        assert!(q.is_empty());
    }
}
