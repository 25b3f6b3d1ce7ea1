//! The libtorch runtime: which libtorch vgen runs on, and making its CUDA backend visible.
//!
//! libtorch's CUDA support lives in `libtorch_cuda.so`, which registers itself with the CPU library when it is
//! loaded. vgen calls nothing in it directly, so a linker that uses `--as-needed` (the default on Debian and
//! Ubuntu) drops it, and then `tch::Cuda::is_available()` is false even on a GPU machine. Rather than depend on
//! link flags that every host application would have to repeat, [`init`] loads the library at start-up, once,
//! from the folder the CPU library was loaded from. It skips the load where there is no NVIDIA driver, which keeps
//! start-up fast on CPU-only machines.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The libtorch version vgen was built against, for example `2.11.0+cu130`.
pub const LIBTORCH_VERSION: &str = env!("VGEN_LIBTORCH_VERSION");

/// vgen's own version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What happened to libtorch's CUDA backend at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CudaBackend {
    /// `libtorch_cuda.so` is loaded; `tch::Cuda` reports the GPUs the driver sees.
    Loaded { library: PathBuf },
    /// No NVIDIA driver (`libcuda.so.1`) on this machine, so there is nothing for CUDA to run on.
    NoDriver,
    /// This libtorch is a CPU-only build.
    NotBuilt,
    /// The driver is there but the CUDA backend failed to load; the message says why.
    LoadFailed(String),
}

impl CudaBackend {
    /// One line for a person.
    pub fn describe(&self) -> String {
        match self {
            Self::Loaded { library } => format!("CUDA backend loaded from {}", library.display()),
            Self::NoDriver => "no NVIDIA driver found (libcuda.so.1), so CUDA is off".to_string(),
            Self::NotBuilt => "this libtorch is a CPU-only build".to_string(),
            Self::LoadFailed(why) => format!("the CUDA backend failed to load: {why}"),
        }
    }
}

static CUDA: OnceLock<CudaBackend> = OnceLock::new();

/// Prepares libtorch for use: loads the CUDA backend where a driver exists. Idempotent and thread-safe; every
/// public entry point that touches devices calls it first.
pub fn init() -> &'static CudaBackend {
    CUDA.get_or_init(load_cuda_backend)
}

fn load_cuda_backend() -> CudaBackend {
    let Some(dir) = libtorch_lib_dir() else {
        return CudaBackend::LoadFailed("could not locate the libtorch library folder".into());
    };
    let library = dir.join("libtorch_cuda.so");
    if !library.exists() {
        return CudaBackend::NotBuilt;
    }
    // SAFETY: libcuda.so.1 is the NVIDIA driver's user-space library; loading it runs no code of ours and its
    // initialisers are safe to run at any time. It stays loaded for the life of the process.
    if unsafe { libloading::Library::new("libcuda.so.1") }.map(std::mem::forget).is_err() {
        return CudaBackend::NoDriver;
    }
    match open_cuda_library(&library) {
        Ok(()) => CudaBackend::Loaded { library },
        Err(why) => CudaBackend::LoadFailed(why),
    }
}

/// Loads `libtorch_cuda.so` for good. Its own rpath finds the CUDA libraries of the wheel (`nvidia/*/lib`).
fn open_cuda_library(library: &Path) -> std::result::Result<(), String> {
    let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL;
    // SAFETY: libtorch_cuda.so is the CUDA half of the very libtorch this process runs on (same folder, same
    // build); its static initialisers register the CUDA hooks with libtorch_cpu, which is what we want. The
    // library is leaked on purpose: libtorch expects it to stay loaded until exit.
    let lib = unsafe { libloading::os::unix::Library::open(Some(library), flags) }.map_err(|e| e.to_string())?;
    std::mem::forget(lib);
    Ok(())
}

/// The folder that holds the libtorch this process runs on: where `libtorch_cpu.so` was actually mapped from
/// (a Python host may bring its own torch), else the folder vgen was built against.
pub fn libtorch_lib_dir() -> Option<PathBuf> {
    let mapped = std::fs::read_to_string("/proc/self/maps").ok().and_then(|maps| {
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.ends_with("/libtorch_cpu.so"))
            .and_then(|p| Path::new(p).parent().map(Path::to_path_buf))
    });
    mapped.or_else(|| Some(PathBuf::from(env!("VGEN_LIBTORCH_LIB")))).filter(|d| d.is_dir())
}

/// The number of threads libtorch uses for intra-op parallelism on the CPU.
pub fn cpu_threads() -> i32 {
    tch::get_num_threads()
}

/// Limits libtorch's CPU threads (`EngineConfig::cpu_threads`): its intra-op threads for the calling thread and
/// the threads that start parallel work after it (OpenMP keeps the setting per thread, so each inference worker
/// calls this when it starts), and, once per process and only before any inter-op work has begun, its inter-op
/// pool (libtorch refuses to resize that pool later; the intra-op threads are the ones inference uses).
pub fn limit_cpu_threads(threads: usize) {
    let n = threads.clamp(1, i32::MAX as usize) as i32;
    tch::set_num_threads(n);
    static INTEROP: std::sync::Once = std::sync::Once::new();
    INTEROP.call_once(|| {
        // tch panics on libtorch's refusal; a refusal only means the pool already exists.
        let set = std::panic::catch_unwind(|| tch::set_num_interop_threads(n));
        if set.is_err() {
            tracing::debug!("libtorch's inter-op threads were already started; only the intra-op threads are limited");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_is_found_where_it_was_mapped() {
        // Touch libtorch so that it is certainly mapped, then check we locate the very folder it came from.
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        let dir = libtorch_lib_dir().expect("libtorch folder");
        assert!(dir.join("libtorch_cpu.so").exists(), "{}", dir.display());
    }

    #[test]
    fn init_is_idempotent_and_consistent_with_tch() {
        let first = init().clone();
        assert_eq!(&first, init());
        if !matches!(first, CudaBackend::Loaded { .. }) {
            assert!(!tch::Cuda::is_available(), "CUDA reported without a loaded backend: {first:?}");
        }
        assert!(LIBTORCH_VERSION.starts_with("2.11."), "{LIBTORCH_VERSION}");
    }

    #[test]
    fn the_cuda_backend_of_a_cuda_build_loads_even_without_a_driver() {
        // The start-up load must resolve libtorch_cuda.so's own dependencies (cuBLAS, cuDNN, ... from the wheel)
        // with no LD_LIBRARY_PATH. Without a driver, libtorch must then still report no GPU rather than crash.
        let library = libtorch_lib_dir().unwrap().join("libtorch_cuda.so");
        if !library.exists() {
            return; // a CPU-only libtorch: nothing to load
        }
        open_cuda_library(&library).expect("libtorch_cuda.so should load");
        if matches!(init(), CudaBackend::NoDriver) {
            assert_eq!(tch::Cuda::device_count(), 0);
        }
    }
}
