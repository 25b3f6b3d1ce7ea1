//! Status codes: the core's error codes one to one, plus the ABI's own. Never renumbered.

use vgen_core::ErrorCode;

/// The result of every fallible call. `VGEN_STATUS_OK` is 0; 1–16 are the engine's error codes (the same numbers
/// as the Rust and Python APIs); 100 and up are errors of the C ABI itself. Numbers are never reused.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum vgen_status {
    VGEN_STATUS_OK = 0,
    VGEN_STATUS_INVALID_ARGUMENT = 1,
    VGEN_STATUS_NOT_FOUND = 2,
    VGEN_STATUS_ALREADY_EXISTS = 3,
    VGEN_STATUS_QUEUE_FULL = 4,
    VGEN_STATUS_CANCELLED = 5,
    VGEN_STATUS_DEADLINE_EXCEEDED = 6,
    VGEN_STATUS_RESOURCE_EXHAUSTED = 7,
    VGEN_STATUS_UNAVAILABLE = 8,
    VGEN_STATUS_MODEL = 9,
    VGEN_STATUS_INTERNAL = 10,
    VGEN_STATUS_SHUTTING_DOWN = 11,
    VGEN_STATUS_IO = 12,
    VGEN_STATUS_UNSUPPORTED = 13,
    VGEN_STATUS_TIMEOUT = 14,
    VGEN_STATUS_NOT_READY = 15,
    VGEN_STATUS_NUMERICAL = 16,
    /// A required pointer argument was NULL.
    VGEN_STATUS_NULL_PARAMETER = 100,
    /// vgen panicked inside this call; the panic was caught. The engine may still be usable.
    VGEN_STATUS_PANIC = 101,
    /// A string argument was not valid UTF-8.
    VGEN_STATUS_INVALID_UTF8 = 102,
}

impl From<ErrorCode> for vgen_status {
    fn from(code: ErrorCode) -> Self {
        use vgen_status::*;
        match code {
            ErrorCode::InvalidArgument => VGEN_STATUS_INVALID_ARGUMENT,
            ErrorCode::NotFound => VGEN_STATUS_NOT_FOUND,
            ErrorCode::AlreadyExists => VGEN_STATUS_ALREADY_EXISTS,
            ErrorCode::QueueFull => VGEN_STATUS_QUEUE_FULL,
            ErrorCode::Cancelled => VGEN_STATUS_CANCELLED,
            ErrorCode::DeadlineExceeded => VGEN_STATUS_DEADLINE_EXCEEDED,
            ErrorCode::ResourceExhausted => VGEN_STATUS_RESOURCE_EXHAUSTED,
            ErrorCode::Unavailable => VGEN_STATUS_UNAVAILABLE,
            ErrorCode::Model => VGEN_STATUS_MODEL,
            ErrorCode::Internal => VGEN_STATUS_INTERNAL,
            ErrorCode::ShuttingDown => VGEN_STATUS_SHUTTING_DOWN,
            ErrorCode::Io => VGEN_STATUS_IO,
            ErrorCode::Unsupported => VGEN_STATUS_UNSUPPORTED,
            ErrorCode::Timeout => VGEN_STATUS_TIMEOUT,
            ErrorCode::NotReady => VGEN_STATUS_NOT_READY,
            ErrorCode::Numerical => VGEN_STATUS_NUMERICAL,
            _ => VGEN_STATUS_INTERNAL,
        }
    }
}

/// A short name for a status, such as `"invalid_argument"`.
///
/// \param status a `vgen_status` value. It is taken as a plain number, so that any value a host holds (one from
/// a newer vgen, or garbage) is safe to pass: numbers vgen does not know give `"unknown"`.
/// \return a static NUL-terminated string; never NULL; not to be freed. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn vgen_status_name(status: u32) -> *const std::ffi::c_char {
    const OK: u32 = vgen_status::VGEN_STATUS_OK as u32;
    const NULL_PARAMETER: u32 = vgen_status::VGEN_STATUS_NULL_PARAMETER as u32;
    const PANIC: u32 = vgen_status::VGEN_STATUS_PANIC as u32;
    const INVALID_UTF8: u32 = vgen_status::VGEN_STATUS_INVALID_UTF8 as u32;
    let s: &'static str = match status {
        OK => "ok\0",
        NULL_PARAMETER => "null_parameter\0",
        PANIC => "panic\0",
        INVALID_UTF8 => "invalid_utf8\0",
        other => match ErrorCode::from_u32(other) {
            Some(c) => NAMES[c as usize - 1],
            None => "unknown\0",
        },
    };
    s.as_ptr().cast()
}

const NAMES: [&str; 16] = [
    "invalid_argument\0",
    "not_found\0",
    "already_exists\0",
    "queue_full\0",
    "cancelled\0",
    "deadline_exceeded\0",
    "resource_exhausted\0",
    "unavailable\0",
    "model\0",
    "internal\0",
    "shutting_down\0",
    "io\0",
    "unsupported\0",
    "timeout\0",
    "not_ready\0",
    "numerical\0",
];

/// Whether the same call may succeed if retried later unchanged (a full queue, a busy or failing device, ...).
///
/// \param status a `vgen_status` value, taken as a plain number as in `vgen_status_name`; unknown numbers are
/// not retryable. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn vgen_status_is_retryable(status: u32) -> bool {
    ErrorCode::from_u32(status).is_some_and(|c| c.retryable())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_core_code_maps_to_the_same_number_and_name() {
        for code in ErrorCode::ALL {
            let s = vgen_status::from(code);
            assert_eq!(s as u32, code as u32);
            let name = unsafe { std::ffi::CStr::from_ptr(vgen_status_name(s as u32)) }.to_str().unwrap();
            assert_eq!(name, code.name());
            assert_eq!(vgen_status_is_retryable(s as u32), code.retryable());
        }
    }
}
