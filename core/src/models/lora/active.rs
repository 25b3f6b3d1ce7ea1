//! The adapters of the job running on this thread.
//!
//! A worker runs one job at a time, so the adapters a job asked for live in a thread-local for as long as its
//! [`Scope`] does, and every linear layer the job runs consults them by name. Other workers on the same device,
//! sharing the same base weights, see their own.
//!
//! A two-expert model's transformers have the same layer names, so an adapter for one expert only is told apart
//! by the expert the job is running, which the denoising loop sets ([`running_expert`]) when it switches.

use super::merged::{MergedSet, merge};
use super::{Adapter, Delta};
use crate::models::linear::Linear;
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use tch::Tensor;

/// An adapter as a job applies it: its scale, and the one expert it is for (None: every transformer).
#[derive(Clone, Debug)]
pub struct Applied {
    pub adapter: Arc<Adapter>,
    pub scale: f64,
    /// 0: `transformer`, 1: `transformer_2`.
    pub expert: Option<usize>,
}

thread_local! {
    static ACTIVE: RefCell<Vec<Applied>> = const { RefCell::new(Vec::new()) };
    static EXPERT: Cell<usize> = const { Cell::new(0) };
    static MERGED: RefCell<Option<Arc<MergedSet>>> = const { RefCell::new(None) };
}

/// While alive, `adapters` (with their scales) apply to the linear layers this thread runs. Adapters at scale 0
/// are left out, so they change nothing at all.
#[must_use = "the adapters apply only while the scope lives"]
pub struct Scope {
    previous: Vec<Applied>,
    expert: usize,
    merged: Option<Arc<MergedSet>>,
}

/// [`scoped_for_experts`] for adapters that apply to every transformer.
pub fn scoped(adapters: Vec<(Arc<Adapter>, f64)>) -> Scope {
    let adapters = adapters.into_iter().map(|(adapter, scale)| Applied { adapter, scale, expert: None }).collect();
    scoped_for_experts(adapters, None)
}

/// While alive, `adapters` apply to this thread's linear layers, each to its expert's, starting with expert 0:
/// merged into `merged`'s copies of the layers when given (the set must be these adapters'), else unmerged.
pub fn scoped_for_experts(adapters: Vec<Applied>, merged: Option<Arc<MergedSet>>) -> Scope {
    let adapters: Vec<Applied> = adapters.into_iter().filter(|a| a.scale != 0.0).collect();
    let merged = merged.filter(|_| !adapters.is_empty());
    Scope {
        previous: ACTIVE.with(|a| std::mem::replace(&mut *a.borrow_mut(), adapters)),
        expert: EXPERT.with(|e| e.replace(0)),
        merged: MERGED.with(|m| std::mem::replace(&mut *m.borrow_mut(), merged)),
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = std::mem::take(&mut self.previous);
        ACTIVE.with(|a| *a.borrow_mut() = previous);
        EXPERT.with(|e| e.set(self.expert));
        let merged = self.merged.take();
        MERGED.with(|m| *m.borrow_mut() = merged);
    }
}

/// `layer`'s output for `x` with the active adapters: from the merged copy when the job has a merged set (made now
/// if this is the set's first use of the layer), else the base output plus each adapter's deltas. A layer no
/// active adapter touches computes with the base weights either way; a quantized one is never merged (its merged
/// copy would be dense).
pub fn forward(layer: &Linear, x: &Tensor) -> Tensor {
    let (name, _) = layer.describe();
    let expert = EXPERT.with(Cell::get);
    ACTIVE.with(|a| {
        let active = a.borrow();
        // The deltas for this layer of the expert the job is running, each with its scale.
        let deltas: Vec<(&Delta, f64)> = active
            .iter()
            .filter(|a| a.expert.is_none_or(|e| e == expert))
            .filter_map(|a| a.adapter.layers.get(name).map(|d| (d, a.scale)))
            .collect();
        let merged = MERGED.with(|m| m.borrow().clone()).filter(|_| !layer.is_quantized() && !deltas.is_empty());
        if let Some(set) = merged {
            let merged = set.layer(expert, name, || merge(&layer.weight(x.kind()), layer.bias(), &deltas));
            return x.linear(&merged.weight, merged.bias.as_ref());
        }
        let mut y = x.linear(&layer.weight(x.kind()), layer.bias());
        for (delta, scale) in deltas {
            if let Some(d) = delta.apply(x, scale) {
                y += d.to_kind(y.kind());
            }
        }
        y
    })
}

/// The expert whose layers this thread runs from now on (0: `transformer`, 1: `transformer_2`).
pub fn running_expert(expert: usize) {
    EXPERT.with(|e| e.set(expert));
}

/// Whether any adapter is active on this thread.
pub fn any() -> bool {
    ACTIVE.with(|a| !a.borrow().is_empty())
}
