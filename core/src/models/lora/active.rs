//! The adapters of the job running on this thread.
//!
//! A worker runs one job at a time, so the adapters a job asked for live in a thread-local for as long as its
//! [`Scope`] does, and every linear layer the job runs consults them by name. Other workers on the same device,
//! sharing the same base weights, see their own.

use super::Adapter;
use std::cell::RefCell;
use std::sync::Arc;
use tch::Tensor;

thread_local! {
    static ACTIVE: RefCell<Vec<(Arc<Adapter>, f64)>> = const { RefCell::new(Vec::new()) };
}

/// While alive, `adapters` (with their scales) apply to the linear layers this thread runs. Adapters at scale 0
/// are left out, so they change nothing at all.
#[must_use = "the adapters apply only while the scope lives"]
pub struct Scope {
    previous: Vec<(Arc<Adapter>, f64)>,
}

pub fn scoped(adapters: Vec<(Arc<Adapter>, f64)>) -> Scope {
    let adapters = adapters.into_iter().filter(|(_, s)| *s != 0.0).collect();
    Scope { previous: ACTIVE.with(|a| std::mem::replace(&mut *a.borrow_mut(), adapters)) }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let previous = std::mem::take(&mut self.previous);
        ACTIVE.with(|a| *a.borrow_mut() = previous);
    }
}

/// `y` (the layer `name`'s output for `x`) plus every active adapter's deltas for that layer.
pub fn add_deltas(name: &str, x: &Tensor, y: Tensor) -> Tensor {
    ACTIVE.with(|a| {
        let active = a.borrow();
        let mut y = y;
        for (adapter, scale) in active.iter() {
            if let Some(delta) = adapter.layers.get(name).and_then(|d| d.apply(x, *scale)) {
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
