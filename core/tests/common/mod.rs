//! Helpers shared by the integration tests.

use std::path::Path;
use vgen_core::models::Models;

/// The built-in models with the test card as the default, as these tests submit most jobs: an engine never makes a
/// test model its default by itself.
#[allow(dead_code)] // each test file compiles this module; not all of them use this
pub fn test_models() -> Models {
    let mut models = Models::builtin();
    models.set_default("testcard").unwrap();
    models
}

/// Held by a test that compares outputs bit for bit, so that no other test of its file computes beside it: jobs of
/// two tests at once oversubscribe a small CPU, and libtorch's CPU kernels (MKL's dynamic threads) may then sum in
/// another order, which changes a last bit (seen 3 times in 30 runs of `expert_swap.rs` with no swap at all).
#[allow(dead_code)] // each test file compiles this module; not all of them use this
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Copies a folder tree (a model fixture) so that a test can change its copy.
#[allow(dead_code)] // each test file compiles this module; not all of them use this
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A private copy of the tiny Wan fixture at `to`, served as `name` at 32×32 with `num_frames` frames and 2 steps.
#[allow(dead_code)] // each test file compiles this module; not all of them use this
pub fn tiny_wan(to: &Path, name: &str, num_frames: u32) {
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wan/tiny-wan"), to);
    let serving = format!(
        r#"{{"name": "{name}", "max_sequence_length": 16, "width": 32, "height": 32, "num_frames": {num_frames}, "steps": 2}}"#
    );
    std::fs::write(to.join("vgen.json"), serving).unwrap();
}
