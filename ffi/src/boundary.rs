//! The boundary between C and Rust: every exported function runs its body here, so that no panic crosses into C,
//! errors become a status plus a per-thread message, and pointer arguments are checked before use.

use crate::status::vgen_status;
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records the message of the last error on this thread.
pub(crate) fn set_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The message of the last error on the calling thread ("" if none). The pointer stays valid until the next vgen
/// call on this thread; the caller does not free it. Any thread: each has its own.
#[unsafe(no_mangle)]
pub extern "C" fn vgen_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Runs an exported body: catches panics and turns errors into a status and a message.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), (vgen_status, String)>) -> vgen_status {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(())) => vgen_status::VGEN_STATUS_OK,
        Ok(Err((status, message))) => {
            set_error(&message);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            set_error(&format!("vgen panicked: {what}"));
            vgen_status::VGEN_STATUS_PANIC
        }
    }
}

pub(crate) type Fallible<T> = Result<T, (vgen_status, String)>;

pub(crate) fn core(e: vgen_core::Error) -> (vgen_status, String) {
    (e.code().into(), e.message().to_string())
}

pub(crate) fn null(what: &str) -> (vgen_status, String) {
    (vgen_status::VGEN_STATUS_NULL_PARAMETER, format!("{what} is NULL"))
}

/// A borrowed `&T` from a non-NULL pointer.
///
/// # Safety
/// `p` must be NULL or point to a live `T` for the duration of the call.
pub(crate) unsafe fn borrow<'a, T>(p: *const T, what: &str) -> Fallible<&'a T> {
    // SAFETY: the caller promises p is NULL or valid.
    unsafe { p.as_ref() }.ok_or_else(|| null(what))
}

/// A `&str` from a NUL-terminated C string.
///
/// # Safety
/// `p` must be NULL or a valid NUL-terminated string for the duration of the call.
pub(crate) unsafe fn string<'a>(p: *const c_char, what: &str) -> Fallible<&'a str> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's promise.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| (vgen_status::VGEN_STATUS_INVALID_UTF8, format!("{what} is not valid UTF-8")))
}

/// Writes an out-parameter, only on success.
///
/// # Safety
/// `out` must be NULL or valid for writes of `T`.
pub(crate) unsafe fn write<T>(out: *mut T, value: T, what: &str) -> Fallible<()> {
    if out.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-NULL and writable by the caller's promise.
    unsafe { out.write(value) };
    Ok(())
}

/// A string the caller frees with `vgen_string_free`.
pub(crate) fn owned_string(s: String) -> *mut c_char {
    CString::new(s.replace('\0', " ")).unwrap_or_default().into_raw()
}

/// Frees a string returned by vgen (`vgen_job_events`, `vgen_engine_metrics`, ...). NULL is accepted. Any thread.
///
/// # Safety
/// `s` must be NULL or a string returned by vgen and not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vgen_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: s came from CString::into_raw in owned_string and is freed once.
        drop(unsafe { CString::from_raw(s) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_status_and_a_message_on_this_thread_only() {
        let status = guard(|| panic!("boom {}", 7));
        assert_eq!(status, vgen_status::VGEN_STATUS_PANIC);
        // SAFETY: vgen_last_error returns a valid NUL-terminated string.
        let message = unsafe { CStr::from_ptr(vgen_last_error()) }.to_str().unwrap().to_string();
        assert_eq!(message, "vgen panicked: boom 7");
        let other = std::thread::spawn(|| unsafe { CStr::from_ptr(vgen_last_error()) }.to_bytes().len());
        assert_eq!(other.join().unwrap(), 0, "another thread has its own last error");
        assert_eq!(guard(|| Ok(())), vgen_status::VGEN_STATUS_OK);
    }
}
