//! Block offload: a transformer's repeated blocks live in host memory (pinned, when the device is a GPU) and are
//! lent to the device a few at a time, so that the device holds the other weights, `ahead + 1` blocks and the
//! activations, whatever the model's depth.
//!
//! [`Schedule`] is the plan of one pass: which block is fetched, run and released when. It keeps two invariants,
//! which its tests check: a block is resident whenever it runs, and at most `ahead + 1` blocks are resident at
//! once. [`BlockOffload`] carries it out on a model's variables by swapping each variable's data between its
//! host copy and a device copy (`set_data`), so the modules that hold the variables need no change.
//!
//! The copies are issued non-blocking from pinned memory on the current CUDA stream: the host runs ahead and
//! queues the next blocks' copies while the device computes, but the device does the copies between the
//! kernels, not beside them (tch 0.24 exposes no side stream). What the GPU check measures is the peak memory;
//! overlapping copies with compute needs a side stream and is future work.

use crate::error::Result;
use tch::{Device, Tensor, nn::VarStore};

/// One move of a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Move {
    /// Start copying block `i` to the device.
    Fetch(usize),
    /// Run block `i` (its copy is complete before its kernels run: same stream).
    Run(usize),
    /// Drop the device copy of block `i`.
    Release(usize),
}

/// The moves of one pass over `blocks` blocks, keeping `ahead` blocks in flight beyond the one that runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub blocks: usize,
    pub ahead: usize,
}

impl Schedule {
    pub fn moves(&self) -> Vec<Move> {
        let mut out = Vec::with_capacity(self.blocks * 3);
        out.extend((0..(self.ahead + 1).min(self.blocks)).map(Move::Fetch));
        for i in 0..self.blocks {
            out.push(Move::Run(i));
            out.push(Move::Release(i));
            let next = i + self.ahead + 1;
            if next < self.blocks {
                out.push(Move::Fetch(next));
            }
        }
        out
    }

    /// The most blocks resident at once.
    pub fn max_resident(&self) -> usize {
        (self.ahead + 1).min(self.blocks)
    }
}

/// Variables lent to a device: each with the host copy that stays (pinned when the device is a GPU), and the
/// variable the modules read, pointed at the host copy or at a device copy (`set_data`). Block offload lends one
/// per block; expert swap (`models::expert_swap`) one per expert.
#[derive(Debug, Default)]
pub struct Lent {
    host: Vec<Tensor>,
    vars: Vec<Tensor>,
}

impl Lent {
    /// Moves `var` to host memory, pinned when `device` (where it will be lent) is a GPU, and keeps it lendable.
    pub fn take(&mut self, mut var: Tensor, device: Device) {
        let host = var.to_device(Device::Cpu);
        let host = if device.is_cuda() { host.pin_memory(device) } else { host };
        var.set_data(&host);
        self.host.push(host);
        self.vars.push(var);
    }

    /// Points every variable at a copy on `device`, issued non-blocking from pinned memory. On an error (the
    /// device out of memory) the variables copied so far stay on the device: `release` them.
    pub fn fetch(&self, device: Device) -> std::result::Result<(), tch::TchError> {
        for (var, host) in self.vars.iter().zip(&self.host) {
            var.shallow_clone().set_data(&host.f_to_device_(device, host.kind(), true, false)?);
        }
        Ok(())
    }

    /// Points every variable back at its host copy (dropping any device copy).
    pub fn release(&self) {
        for (var, host) in self.vars.iter().zip(&self.host) {
            var.shallow_clone().set_data(host);
        }
    }

    /// The bytes of the variables.
    pub fn bytes(&self) -> u64 {
        self.host.iter().map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64).sum()
    }
}

/// A model's blocks (variables named `{prefix}{i}.…`) kept on the host and lent to `device` by a [`Schedule`].
#[derive(Debug)]
pub struct BlockOffload {
    blocks: Vec<Lent>,
    device: Device,
    pub schedule: Schedule,
    /// Bytes of one block's variables, the largest.
    pub block_bytes: u64,
}

impl BlockOffload {
    /// Moves the variables of blocks `0..blocks` under `prefix` (e.g. `blocks.`) to host memory, pinned when
    /// `device` is a GPU, and the store's other variables to `device` (a store read on the host never puts the
    /// blocks on the device at all).
    pub fn new(vs: &VarStore, prefix: &str, blocks: usize, ahead: usize, device: Device) -> Self {
        let mut lent: Vec<Lent> = (0..blocks).map(|_| Lent::default()).collect();
        let _guard = tch::no_grad_guard();
        for (name, mut var) in vs.variables() {
            let block = name.strip_prefix(prefix).and_then(|rest| rest.split('.').next()?.parse::<usize>().ok());
            let Some(i) = block.filter(|i| *i < blocks) else {
                if var.device() != device {
                    var.set_data(&var.to_device(device));
                }
                continue;
            };
            lent[i].take(var, device);
        }
        let block_bytes = lent.iter().map(Lent::bytes).max().unwrap_or(0);
        Self { blocks: lent, device, schedule: Schedule { blocks, ahead }, block_bytes }
    }

    /// Runs `run(i)` for every block in order, each with its variables on the device.
    pub fn pass(&self, mut run: impl FnMut(usize) -> Result<()>) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for m in self.schedule.moves() {
            match m {
                // A failed copy panics, as libtorch's own copy did before `Lent` returned the error: the worker
                // turns it into a retryable `internal` error.
                Move::Fetch(i) => self.blocks[i]
                    .fetch(self.device)
                    .unwrap_or_else(|e| panic!("block offload: block {i} could not be copied to the device: {e}")),
                Move::Run(i) => run(i)?,
                Move::Release(i) => self.blocks[i].release(),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays a schedule: every block runs once, in order, while resident; never more than `max_resident` at once;
    /// nothing is left on the device after the pass.
    fn check(s: Schedule) {
        let mut resident = std::collections::BTreeSet::new();
        let mut ran = Vec::new();
        let mut most = 0;
        for m in s.moves() {
            match m {
                Move::Fetch(i) => assert!(resident.insert(i), "{s:?}: block {i} fetched twice"),
                Move::Run(i) => {
                    assert!(resident.contains(&i), "{s:?}: block {i} runs while not resident");
                    ran.push(i);
                }
                Move::Release(i) => assert!(resident.remove(&i), "{s:?}: block {i} released while not resident"),
            }
            most = most.max(resident.len());
        }
        assert_eq!(ran, (0..s.blocks).collect::<Vec<_>>(), "{s:?}: every block once, in order");
        assert!(resident.is_empty(), "{s:?}: {resident:?} left on the device");
        assert_eq!(most, s.max_resident(), "{s:?}");
    }

    #[test]
    fn each_block_is_resident_when_it_runs_and_at_most_ahead_plus_one_are() {
        for blocks in [0, 1, 2, 3, 30, 40] {
            for ahead in [0, 1, 2, 5] {
                check(Schedule { blocks, ahead });
            }
        }
        // Wan2.1-14B's 40 blocks, one in flight: two resident while block i runs and block i+1 copies.
        let s = Schedule { blocks: 40, ahead: 1 };
        assert_eq!(&s.moves()[..5], &[Move::Fetch(0), Move::Fetch(1), Move::Run(0), Move::Release(0), Move::Fetch(2)]);
    }
}
