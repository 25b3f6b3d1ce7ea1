//! Finds the libtorch that torch-sys linked against and makes vgen's artifacts find it at run time.
//!
//! torch-sys publishes its library folder as `DEP_TCH_LIBTORCH_LIB`, but only to crates that depend on it
//! directly. This script records the folder (canonical, so that a symlinked venv still works) for three uses:
//! - an rpath on this crate's own binaries, tests and benches, so no one sets `LD_LIBRARY_PATH`;
//! - `VGEN_LIBTORCH_LIB` at compile time, the fallback folder where `runtime` looks for `libtorch_cuda.so`;
//! - `links` metadata (`DEP_VGEN_CORE_LIBTORCH_LIB`) for the C library and the Python extension.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report its libtorch folder");
    let lib = PathBuf::from(&lib).canonicalize().unwrap_or_else(|_| PathBuf::from(&lib));
    let lib = lib.display().to_string();
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-env=VGEN_LIBTORCH_LIB={lib}");
    println!("cargo:libtorch_lib={lib}");

    // The version of the libtorch we compiled against; the wheel's version.py carries the CUDA suffix too.
    let torch_dir = PathBuf::from(&lib).join("..");
    let version = std::fs::read_to_string(torch_dir.join("version.py"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| l.strip_prefix("__version__ = ").map(|v| v.trim_matches(['\'', '"']).to_string()))
        })
        .or_else(|| header_version(&torch_dir))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=VGEN_LIBTORCH_VERSION={version}");
}

fn header_version(torch_dir: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(torch_dir.join("include/torch/headeronly/version.h")).ok()?;
    let part = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("#define TORCH_VERSION_{name} ")).map(|v| v.trim().to_string()))
    };
    Some(format!("{}.{}.{}", part("MAJOR")?, part("MINOR")?, part("PATCH")?))
}
