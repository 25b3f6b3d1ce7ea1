//! One copy of something per device, made once: a model's weights, loaded by the first job on a device while the
//! device's other workers wait for that copy instead of loading their own (on a GPU, a second copy during the
//! first burst of jobs is an out-of-memory).

use crate::device::Device;
use crate::error::Result;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Values by device, each made at most once at a time and kept once made.
///
/// Invariant: for each device, `load` runs only while that device's slot is locked, and only if the slot is
/// empty; so however many threads ask at once, one loads and the rest wait and share its value. A failed load
/// leaves the slot empty: the next caller tries again (a later attempt may succeed, e.g. after memory is freed).
/// The map's own lock is held only to find a slot, never during a load, so loads on different devices overlap.
pub struct PerDevice<T> {
    slots: Mutex<HashMap<Device, Slot<T>>>,
}

/// One device's value, once made; its lock is held while it is made.
type Slot<T> = Arc<Mutex<Option<Arc<T>>>>;

impl<T> Default for PerDevice<T> {
    fn default() -> Self {
        Self { slots: Mutex::new(HashMap::new()) }
    }
}

impl<T> PerDevice<T> {
    /// The value for `device`, made by `load` if there is none yet.
    pub fn get_or_load(&self, device: Device, load: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        let slot = self.slots.lock().entry(device).or_default().clone();
        let mut value = slot.lock();
        if let Some(v) = &*value {
            return Ok(v.clone());
        }
        let v = Arc::new(load()?);
        *value = Some(v.clone());
        Ok(v)
    }

    /// The value for `device` if it has been made.
    pub fn get(&self, device: Device) -> Option<Arc<T>> {
        let slot = self.slots.lock().get(&device).cloned()?;
        let value = slot.lock();
        value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn concurrent_first_uses_load_once_and_share_the_copy() {
        let weights = Arc::new(PerDevice::<usize>::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (weights, loads, barrier) = (weights.clone(), loads.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    weights
                        .get_or_load(Device::Cpu, || {
                            std::thread::sleep(Duration::from_millis(50)); // a load takes a while
                            Ok(loads.fetch_add(1, Ordering::SeqCst))
                        })
                        .unwrap()
                })
            })
            .collect();
        let copies: Vec<Arc<usize>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(loads.load(Ordering::SeqCst), 1, "one load for eight first uses");
        assert!(copies.iter().all(|c| Arc::ptr_eq(c, &copies[0])), "one copy, shared");
    }

    #[test]
    fn a_failed_load_is_tried_again_by_the_next_caller() {
        let weights = PerDevice::<u32>::default();
        let err = weights.get_or_load(Device::Cpu, || Err(Error::internal("out of memory"))).unwrap_err();
        assert_eq!(err.message(), "out of memory");
        assert!(weights.get(Device::Cpu).is_none());
        assert_eq!(*weights.get_or_load(Device::Cpu, || Ok(7)).unwrap(), 7);
        assert_eq!(*weights.get_or_load(Device::Cpu, || Ok(8)).unwrap(), 7, "kept once made");
        assert_eq!(weights.get(Device::Cuda(0)), None);
    }
}
