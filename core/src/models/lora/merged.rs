//! Merged adapters: a job's adapter set folded into copies of the weights it touches, `W + Σ s·(B·A + diff)` and
//! `b + Σ s·diff_b`, so that an adapted layer costs one matmul, as the base layer does.
//!
//! Applied unmerged, an adapter adds two thin matmuls and an add to every layer it touches (about 5 to 20% of a
//! 1.3B-sized layer on the CPU for ranks 4 to 128), and a full delta (`diff`) a second full matmul; merged, none
//! of that, for the memory of one copy of each layer touched (`benches/README.md`). A model keeps merged sets
//! for recent adapter sets within a memory budget ([`Budget`]) and runs a set that does not fit unmerged.
//!
//! A [`MergedSet`] is filled layer by layer, the first time any job with that set runs the layer, and is shared
//! by every later job with the same set (same files, hashes, scales and experts). The base weights are never
//! written: a job without adapters, or with another set, computes with the base as before.

use super::Delta;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

/// One layer merged: its weight and bias with the set's deltas folded in.
#[derive(Debug)]
pub struct MergedLayer {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

/// The merged layers of one adapter set on one device, per expert (0, or 1 for a second), by layer name.
#[derive(Debug)]
pub struct MergedSet {
    layers: Mutex<[HashMap<String, Arc<MergedLayer>>; 2]>,
    /// The bytes the set takes once every layer it touches is merged (what the budget counts).
    pub bytes: u64,
}

// SAFETY: a merged layer's tensors are written only while it is made, before it is shared; every use reads them
// in new operations (the layer's matmul), which libtorch supports from several threads at once.
unsafe impl Send for MergedLayer {}
unsafe impl Sync for MergedLayer {}
unsafe impl Send for MergedSet {}
unsafe impl Sync for MergedSet {}

impl MergedSet {
    pub fn new(bytes: u64) -> Self {
        Self { layers: Mutex::new(Default::default()), bytes }
    }

    /// Layer `name` of `expert` merged, made now by `make` if no job has run it yet. Two jobs that reach a layer
    /// at once may both make it; the first kept is the one every later job uses (they are equal).
    pub fn layer(&self, expert: usize, name: &str, make: impl FnOnce() -> MergedLayer) -> Arc<MergedLayer> {
        if let Some(l) = self.layers.lock().unwrap_or_else(|e| e.into_inner())[expert].get(name) {
            return l.clone();
        }
        let made = Arc::new(make());
        let mut layers = self.layers.lock().unwrap_or_else(|e| e.into_inner());
        layers[expert].entry(name.to_string()).or_insert(made).clone()
    }

    /// How many layers are merged so far.
    pub fn merged_layers(&self) -> usize {
        self.layers.lock().unwrap_or_else(|e| e.into_inner()).iter().map(HashMap::len).sum()
    }
}

/// `weight` `[out, in]` and `bias` with `deltas` (each at its scale) folded in, computed in fp32 and returned in
/// the weight's dtype.
pub fn merge(weight: &Tensor, bias: Option<&Tensor>, deltas: &[(&Delta, f64)]) -> MergedLayer {
    // Copies, always: `to_kind` to the same dtype would return the base tensor itself, which the in-place adds
    // below must never touch.
    let kind = weight.kind();
    let mut w = weight.to_dtype(Kind::Float, false, true);
    let mut b = bias.map(|b| b.to_dtype(Kind::Float, false, true));
    for (delta, scale) in deltas {
        if let Some((down, up)) = &delta.low_rank {
            w += up.to_kind(Kind::Float).matmul(&down.to_kind(Kind::Float)) * *scale;
        }
        if let Some(d) = &delta.weight {
            w += d.to_kind(Kind::Float) * *scale;
        }
        if let Some(d) = &delta.bias {
            let d = d.to_kind(Kind::Float) * *scale;
            b = Some(match b {
                Some(b) => b + d,
                None => d,
            });
        }
    }
    MergedLayer { weight: w.to_kind(kind), bias: b.map(|b| b.to_kind(kind)) }
}

/// The bytes a set of adapters takes merged: one copy of every layer any of them touches (a bias delta alone
/// copies the weight too), per expert it applies to, in `kind`. `adapters` are `(adapter, the experts it applies
/// to)`; `shape_of` gives a layer's `[out, in]` in the model.
pub fn set_bytes<'a>(
    adapters: impl IntoIterator<Item = (&'a super::Adapter, &'a [usize])>,
    kind: Kind,
    shape_of: impl Fn(&str) -> Option<[i64; 2]>,
) -> u64 {
    let mut touched: HashMap<(usize, &str), [i64; 2]> = HashMap::new();
    for (adapter, experts) in adapters {
        for (name, delta) in &adapter.layers {
            // The text encoder runs once a job, with the first expert's adapters: one copy.
            let experts = if name.starts_with(crate::models::wan::umt5::PREFIX) { &experts[..1] } else { experts };
            if let Some(shape) = shape_of(name).or_else(|| delta.shape()) {
                for e in experts {
                    touched.insert((*e, name), shape);
                }
            }
        }
    }
    touched.values().map(|[o, i]| (o * i) as u64 * kind.elt_size_in_bytes() as u64).sum()
}

/// The merged sets a model keeps, most recently used last, within `limit` bytes.
#[derive(Debug)]
pub struct Budget<K> {
    limit: u64,
    sets: Vec<(K, Arc<MergedSet>)>,
}

impl<K: PartialEq> Budget<K> {
    pub fn new(limit: u64) -> Self {
        Self { limit, sets: Vec::new() }
    }

    /// The merged set for `key`: the kept one, or a new one of `bytes` if it fits the budget once idle older
    /// sets are let go, least recently used first. A set a running job still uses is never let go (its memory is
    /// still taken), so the kept sets never exceed the budget. None: the set runs unmerged (so does any set when
    /// the budget is 0, and a set with nothing to merge).
    pub fn get_or_start(&mut self, key: K, bytes: u64) -> Option<Arc<MergedSet>> {
        if let Some(i) = self.sets.iter().position(|(k, _)| *k == key) {
            let kept = self.sets.remove(i);
            let set = kept.1.clone();
            self.sets.push(kept);
            return Some(set);
        }
        if bytes == 0 || bytes > self.limit {
            return None;
        }
        let in_use: u64 = self.sets.iter().filter(|(_, s)| Arc::strong_count(s) > 1).map(|(_, s)| s.bytes).sum();
        if in_use + bytes > self.limit {
            return None;
        }
        while self.sets.iter().map(|(_, s)| s.bytes).sum::<u64>() + bytes > self.limit {
            let idle = self.sets.iter().position(|(_, s)| Arc::strong_count(s) == 1)?;
            self.sets.remove(idle);
        }
        let set = Arc::new(MergedSet::new(bytes));
        self.sets.push((key, set.clone()));
        Some(set)
    }

    /// The bytes of each kept set, oldest first.
    pub fn kept(&self) -> Vec<u64> {
        self.sets.iter().map(|(_, s)| s.bytes).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_recent_sets_and_refuses_one_larger_than_itself() {
        let mut budget = Budget::new(100);
        let a = budget.get_or_start("a", 60).expect("fits");
        assert!(Arc::ptr_eq(&a, &budget.get_or_start("a", 60).unwrap()), "the same set, kept");
        drop(a); // the job that used it has ended
        budget.get_or_start("b", 30).unwrap();
        assert_eq!(budget.kept(), [60, 30]);
        budget.get_or_start("a", 60).unwrap();
        budget.get_or_start("c", 50).unwrap();
        assert_eq!(budget.kept(), [50], "the least recently used go first, until the new one fits");
        assert!(budget.get_or_start("huge", 101).is_none(), "larger than the budget: unmerged");
        assert_eq!(budget.kept(), [50]);
        // A set a job still uses stays, and counts: another that would not fit beside it runs unmerged.
        let running = budget.get_or_start("c", 50).unwrap();
        assert!(budget.get_or_start("d", 60).is_none());
        assert_eq!(budget.kept(), [50]);
        drop(running);
        budget.get_or_start("d", 60).unwrap();
        assert_eq!(budget.kept(), [60], "idle, it may go");
        assert!(Budget::new(0).get_or_start("a", 0).is_none(), "nothing to merge, or no budget: unmerged");
    }

    #[test]
    fn a_merged_layer_is_the_base_plus_each_delta_at_its_scale() {
        let w = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let down = Tensor::from_slice(&[1.0f32, 0.0]).view([1, 2]);
        let up = Tensor::from_slice(&[1.0f32, 1.0]).view([2, 1]);
        let low = Delta { low_rank: Some((down, up)), weight: None, bias: None };
        let full =
            Delta { low_rank: None, weight: Some(w.ones_like()), bias: Some(Tensor::from_slice(&[1.0f32, 2.0])) };
        let m = merge(&w, None, &[(&low, 0.5), (&full, 2.0)]);
        assert_eq!(Vec::<f32>::try_from(m.weight.reshape([-1])).unwrap(), [3.5, 4.0, 5.5, 6.0]);
        assert_eq!(Vec::<f32>::try_from(w.reshape([-1])).unwrap(), [1.0, 2.0, 3.0, 4.0], "the base is left as it was");
        assert_eq!(Vec::<f32>::try_from(m.bias.unwrap()).unwrap(), [2.0, 4.0]);
    }
}
