//! An engine whose start fails part way (a thread that cannot be started) returns the error and leaves no thread
//! behind. Its own test binary: the failure is injected through the environment, which every engine of the
//! process reads.

use vgen_core::engine::EngineConfig;
use vgen_core::models::Models;
use vgen_core::{Device, Engine, ErrorCode};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn a_failed_start_returns_an_error_and_leaks_no_thread() {
    let config = || EngineConfig { devices: vec![Device::Cpu], workers_per_device: 4, ..EngineConfig::default() };
    drop(Engine::with_models(config(), Models::builtin()).unwrap()); // libtorch's own threads start once
    let before = threads();
    for failing in ["vgen-worker-cpu-2", "vgen-supervisor"] {
        // SAFETY: this test binary has no other test, and no other thread reads the environment now.
        unsafe { std::env::set_var("VGEN_TEST_FAIL_THREAD_START", failing) };
        let err = Engine::with_models(config(), Models::builtin()).err().expect("the start fails");
        assert_eq!(err.code(), ErrorCode::Internal);
        assert!(err.message().contains(&format!("could not start the {failing} thread")), "{}", err.message());
        assert_eq!(threads(), before, "every thread started before {failing} was stopped and joined");
    }
    // SAFETY: as above.
    unsafe { std::env::remove_var("VGEN_TEST_FAIL_THREAD_START") };
    let e = Engine::with_models(config(), Models::builtin()).unwrap();
    assert!(threads() > before);
    drop(e);
    assert_eq!(threads(), before);
}
