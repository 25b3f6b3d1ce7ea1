//! `libvgen`: the C ABI of vgen.
//!
//! # Conventions
//! - Every symbol is `vgen_<noun>_<verb>`; every constant `VGEN_*`. Handles are opaque and each has one free
//!   function, which accepts NULL.
//! - Fallible calls return a `vgen_status` (0 is success; the numbers equal the Rust and Python error codes and
//!   are never renumbered). Outputs go through out-parameters written only on success. `vgen_last_error` gives the
//!   message of the last error on the calling thread.
//! - No panic crosses into C: one becomes `VGEN_STATUS_PANIC`.
//!
//! # Thread safety
//! A `const` pointer may be shared across threads; each type says what else holds. Strings that vgen returns are
//! either static (documented as such) or freed by the caller with `vgen_string_free`.

mod boundary;
mod engine;
mod pixels;
mod status;
mod video;

pub use boundary::{vgen_last_error, vgen_string_free};
pub use engine::*;
pub use pixels::*;
pub use status::*;
pub use video::*;

use std::ffi::c_char;

/// The version of the C ABI this header describes. It rises when the ABI changes: a function or constant is
/// added, or a struct that carries its size grows. Compare it with `vgen_abi_version()`: a library whose version
/// is at least the header's has everything the header declares.
pub const VGEN_ABI_VERSION: u32 = 2;

/// The version of the C ABI of the libvgen loaded at run time (`VGEN_ABI_VERSION` of the header it was built
/// with). A host built against an older header works with any libvgen whose ABI version is at least its own.
///
/// \return the ABI version; never fails. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn vgen_abi_version() -> u32 {
    VGEN_ABI_VERSION
}

/// The version of vgen, for example `"0.1.0"`.
///
/// \return a NUL-terminated static string; never NULL, never freed by the caller. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn vgen_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The version of libtorch vgen was built against, for example `"2.11.0+cu130"`.
///
/// \return a NUL-terminated static string; never NULL, never freed by the caller. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn vgen_libtorch_version() -> *const c_char {
    static VERSION: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| std::ffi::CString::new(vgen_core::runtime::LIBTORCH_VERSION).unwrap_or_default()).as_ptr()
}

/// The number of CUDA GPUs libtorch sees. Loads libtorch's CUDA backend on first use when a driver is present.
///
/// \return 0 where there is no GPU; jobs then run on the CPU. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn vgen_cuda_device_count() -> usize {
    std::panic::catch_unwind(|| vgen_core::Device::all().iter().filter(|d| d.is_cuda()).count()).unwrap_or(0)
}
