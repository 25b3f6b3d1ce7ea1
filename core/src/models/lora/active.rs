//! The adapters of the job running on this thread.
//!
//! A worker runs one job at a time, so the adapters a job asked for live in a thread-local for as long as its
//! [`Scope`] does, and every linear layer the job runs consults them by name. Other workers on the same device,
//! sharing the same base weights, see their own.
//!
//! A two-expert model's transformers have the same layer names, so an adapter for one expert only is told apart
//! by the expert the job is running, which the denoising loop sets ([`running_expert`]) when it switches.

use super::Adapter;
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
}

/// While alive, `adapters` (with their scales) apply to the linear layers this thread runs. Adapters at scale 0
/// are left out, so they change nothing at all.
#[must_use = "the adapters apply only while the scope lives"]
pub struct Scope {
    previous: Vec<Applied>,
    expert: usize,
}

/// [`scoped_for_experts`] for adapters that apply to every transformer.
pub fn scoped(adapters: Vec<(Arc<Adapter>, f64)>) -> Scope {
    scoped_for_experts(adapters.into_iter().map(|(adapter, scale)| Applied { adapter, scale, expert: None }).collect())
}

/// While alive, `adapters` apply to this thread's linear layers, each to its expert's, starting with expert 0.
pub fn scoped_for_experts(adapters: Vec<Applied>) -> Scope {
    let adapters = adapters.into_iter().filter(|a| a.scale != 0.0).collect();
    Scope {
        previous: ACTIVE.with(|a| std::mem::replace(&mut *a.borrow_mut(), adapters)),
        expert: EXPERT.with(|e| e.replace(0)),
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = std::mem::take(&mut self.previous);
        ACTIVE.with(|a| *a.borrow_mut() = previous);
        EXPERT.with(|e| e.set(self.expert));
    }
}

/// The expert whose layers this thread runs from now on (0: `transformer`, 1: `transformer_2`).
pub fn running_expert(expert: usize) {
    EXPERT.with(|e| e.set(expert));
}

/// `y` (the layer `name`'s output for `x`) plus the deltas of every active adapter for that layer and expert.
pub fn add_deltas(name: &str, x: &Tensor, y: Tensor) -> Tensor {
    let expert = EXPERT.with(Cell::get);
    ACTIVE.with(|a| {
        let active = a.borrow();
        let mut y = y;
        for applied in active.iter().filter(|a| a.expert.is_none_or(|e| e == expert)) {
            if let Some(delta) = applied.adapter.layers.get(name).and_then(|d| d.apply(x, applied.scale)) {
                y += delta.to_kind(y.kind());
            }
        }
        y
    })
}

/// Whether any adapter is active on this thread.
pub fn any() -> bool {
    ACTIVE.with(|a| !a.borrow().is_empty())
}
