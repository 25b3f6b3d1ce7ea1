//! Expert swap: a two-expert model (Wan2.2 A14B) whose experts do not both fit the device keeps both in host
//! memory (pinned, on a GPU) and lends one at a time to the device, whole.
//!
//! A job runs the high-noise expert for its first steps and the low-noise one for the rest, so it swaps at most
//! twice (in for the first expert, then the second), whatever its step count: one transfer of an expert's weights
//! per switch, where block offload would move every block every step. That is why the memory plan prefers it
//! whenever one expert fits beside the rest of the model.
//!
//! Invariants, kept by [`ExpertSwap::hold`] and [`Held`]'s drop:
//! - at most one expert is resident on the device at any time;
//! - an expert is resident for as long as any job holds it, and is never swapped out from under a holder;
//! - a job that wants the other expert waits until no job holds the resident one; jobs that want the resident
//!   expert share it, unless a job is already waiting for the other (then they queue behind it, so that a steady
//!   stream of one expert's jobs cannot starve the other's);
//! - a failed copy (the device out of memory) leaves no expert resident and every weight in host memory, and the
//!   job gets the error: the next job copies its expert afresh.
//!
//! Swapping sets each variable's data to its host copy or to a device copy (`set_data`), as block offload does,
//! so the transformer modules that hold the variables need no change, and the host copy is never written.

use super::offload::Lent;
use crate::error::{Error, ErrorCode, Result};
use tch::{Device, nn::VarStore};

#[derive(Debug, Default)]
struct Residency {
    /// The expert on the device (0 or 1), if any.
    resident: Option<usize>,
    /// Jobs holding the resident expert.
    holders: usize,
    /// Jobs waiting for each expert while the other is held.
    waiting: [usize; 2],
    /// Swaps made so far (an expert copied to the device).
    swaps: u64,
}

/// Both experts of one model on one device, one lent at a time (see the module's invariants).
#[derive(Debug)]
pub struct ExpertSwap {
    experts: [Lent; 2],
    device: Device,
    state: std::sync::Mutex<Residency>,
    changed: std::sync::Condvar,
}

// SAFETY: the variables are written (`set_data`) only under `state`'s lock, by the one caller that found no
// holder of the resident expert; every other use reads the weights through the transformer's forward, which a
// `Held` guard keeps from overlapping with a swap of that expert.
unsafe impl Send for ExpertSwap {}
unsafe impl Sync for ExpertSwap {}

impl ExpertSwap {
    /// Moves every variable of the two experts' stores (`high` for `transformer`, `low` for `transformer_2`) to
    /// host memory, pinned when `device` (where they will be lent) is a GPU. Neither is resident until a job holds
    /// one.
    pub fn new(high: &VarStore, low: &VarStore, device: Device) -> Self {
        let _guard = tch::no_grad_guard();
        let to_host = |vs: &VarStore| {
            let mut expert = Lent::default();
            for (_, var) in vs.variables() {
                expert.take(var, device);
            }
            expert
        };
        Self { experts: [to_host(high), to_host(low)], device, state: Default::default(), changed: Default::default() }
    }

    /// Makes expert `which` (0: high noise, 1: low noise) resident and holds it there until the guard drops,
    /// waiting while other jobs hold the other one. An error when the device cannot take the expert.
    pub fn hold(&self, which: usize) -> Result<Held<'_>> {
        assert!(which < 2, "a two-expert model has experts 0 and 1");
        let other = 1 - which;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let must_wait = |s: &Residency| match s.resident {
            Some(r) if r != which => s.holders > 0,
            Some(_) => s.waiting[other] > 0 && s.holders > 0,
            None => false,
        };
        if must_wait(&state) {
            state.waiting[which] += 1;
            while must_wait(&state) {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            state.waiting[which] -= 1;
        }
        if state.resident != Some(which) {
            let _guard = tch::no_grad_guard();
            // Nothing is resident from here until the copy has succeeded.
            if let Some(out) = state.resident.take() {
                self.experts[out].release();
            }
            if let Err(err) = self.experts[which].fetch(self.device) {
                self.experts[which].release();
                self.changed.notify_all();
                return Err(Error::new(
                    ErrorCode::ResourceExhausted,
                    format!("expert swap: the device could not take expert {which}'s weights: {err}"),
                ));
            }
            state.resident = Some(which);
            state.swaps += 1;
        }
        state.holders += 1;
        Ok(Held { swap: self })
    }

    /// Expert copies to the device so far: two per job when jobs run one after another.
    pub fn swaps(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).swaps
    }

    /// The bytes of each expert's weights (what the device holds of them while that expert is resident).
    pub fn expert_bytes(&self) -> [u64; 2] {
        [self.experts[0].bytes(), self.experts[1].bytes()]
    }
}

/// An expert held resident by one job (see [`ExpertSwap::hold`]).
#[must_use = "the expert stays resident only while this lives"]
pub struct Held<'a> {
    swap: &'a ExpertSwap,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut state = self.swap.state.lock().unwrap_or_else(|e| e.into_inner());
        state.holders -= 1;
        self.swap.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store(value: f64) -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let _ = vs.root().var("w", &[4], tch::nn::Init::Const(value));
        vs
    }

    #[test]
    fn one_expert_is_resident_at_a_time_and_holders_share_it() {
        let (high, low) = (store(1.0), store(2.0));
        let swap = ExpertSwap::new(&high, &low, Device::Cpu);
        assert_eq!(swap.expert_bytes(), [16, 16]);
        assert_eq!(swap.swaps(), 0, "nothing is lent before a job asks");
        {
            let _a = swap.hold(0).unwrap();
            let _b = swap.hold(0).unwrap();
            assert_eq!(swap.swaps(), 1, "a second holder of the resident expert shares it");
        }
        let _c = swap.hold(1).unwrap();
        let _d = swap.hold(1).unwrap();
        assert_eq!(swap.swaps(), 2);
        // The weights each holder reads are its expert's own.
        assert_eq!(low.variables()["w"].double_value(&[0]), 2.0);
        assert_eq!(high.variables()["w"].double_value(&[0]), 1.0);
    }

    #[test]
    fn a_job_that_wants_the_other_expert_waits_until_the_resident_one_is_released() {
        let swap = Arc::new(ExpertSwap::new(&store(1.0), &store(2.0), Device::Cpu));
        let held = swap.hold(0).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = {
            let swap = swap.clone();
            std::thread::spawn(move || {
                let _low = swap.hold(1).unwrap();
                tx.send(()).unwrap();
            })
        };
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "it must wait for the holder");
        assert_eq!(swap.swaps(), 1);
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("released: the other expert comes in");
        other.join().unwrap();
        assert_eq!(swap.swaps(), 2);
    }

    #[test]
    fn a_job_for_the_resident_expert_queues_behind_one_waiting_for_the_other() {
        let swap = Arc::new(ExpertSwap::new(&store(1.0), &store(2.0), Device::Cpu));
        let first = swap.hold(0).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let spawn = |which: usize, tx: std::sync::mpsc::Sender<usize>| {
            let swap = swap.clone();
            std::thread::spawn(move || {
                let _held = swap.hold(which).unwrap();
                tx.send(which).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(50));
            })
        };
        let low = spawn(1, tx.clone());
        std::thread::sleep(std::time::Duration::from_millis(100)); // the low-noise job is waiting now
        let high = spawn(0, tx);
        assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "both wait while the first holds");
        drop(first);
        let order: Vec<usize> = (0..2).map(|_| rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap()).collect();
        assert_eq!(order, [1, 0], "the waiter for the other expert goes first; the newcomer does not jump it");
        low.join().unwrap();
        high.join().unwrap();
        assert_eq!(swap.swaps(), 3);
    }
}
