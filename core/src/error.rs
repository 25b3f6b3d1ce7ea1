//! The one error model of vgen.
//!
//! Every failure anywhere in the engine is an [`Error`]: an [`ErrorCode`] with a stable number, whether retrying
//! can help, and a message that says what went wrong and, where possible, what to change. The C ABI returns the
//! code as its status and Python raises one exception class per code, so the numbers below are a public contract:
//! **never renumber a code; a retired number stays here as a comment.**

use std::fmt;

/// Stable error codes. `0` is success in the C ABI and is never an error here.
/// In JSON (events, results) a code is its name, as `name()` gives it: `"invalid_argument"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u32)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A request or configuration is invalid: an unknown field, a value out of range, a size the model cannot make.
    InvalidArgument = 1,
    /// A job, model or device that does not exist.
    NotFound = 2,
    /// An idempotency key reused with a different request.
    AlreadyExists = 3,
    /// The queue is full: backpressure. Retry later.
    QueueFull = 4,
    /// The job was cancelled by its host.
    Cancelled = 5,
    /// The job's deadline passed before it finished.
    DeadlineExceeded = 6,
    /// A device ran out of memory, or a request could never fit it.
    ResourceExhausted = 7,
    /// No device can take the job now (every circuit breaker is open, or the device failed).
    Unavailable = 8,
    /// A model folder or weight file is missing, malformed or does not match its config.
    Model = 9,
    /// A bug in vgen or libtorch: an unexpected failure or a caught panic.
    Internal = 10,
    /// The engine is shutting down and takes no more work.
    ShuttingDown = 11,
    /// Reading or writing a file failed.
    Io = 12,
    /// The request asks for something this build or device does not support.
    Unsupported = 13,
    /// A wait ended before the job did. The job goes on.
    Timeout = 14,
    /// The job has not finished, so it has no result yet.
    NotReady = 15,
    /// The numbers went bad (NaN or Inf in the latents); the attempt stopped before decoding garbage.
    Numerical = 16,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 16] = [
        Self::InvalidArgument,
        Self::NotFound,
        Self::AlreadyExists,
        Self::QueueFull,
        Self::Cancelled,
        Self::DeadlineExceeded,
        Self::ResourceExhausted,
        Self::Unavailable,
        Self::Model,
        Self::Internal,
        Self::ShuttingDown,
        Self::Io,
        Self::Unsupported,
        Self::Timeout,
        Self::NotReady,
        Self::Numerical,
    ];

    /// Whether the same request may succeed if tried again later, unchanged.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::QueueFull
                | Self::ResourceExhausted
                | Self::Unavailable
                | Self::Internal
                | Self::Timeout
                | Self::NotReady
                | Self::Numerical
        )
    }

    /// A short snake_case name, used in JSON events and as the Python exception's name stem.
    pub fn name(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::QueueFull => "queue_full",
            Self::Cancelled => "cancelled",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::ResourceExhausted => "resource_exhausted",
            Self::Unavailable => "unavailable",
            Self::Model => "model",
            Self::Internal => "internal",
            Self::ShuttingDown => "shutting_down",
            Self::Io => "io",
            Self::Unsupported => "unsupported",
            Self::Timeout => "timeout",
            Self::NotReady => "not_ready",
            Self::Numerical => "numerical",
        }
    }

    /// The code with this number, if there is one.
    pub fn from_u32(n: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as u32 == n)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error with its code and a message for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    code: ErrorCode,
    message: String,
    retry_after_ms: Option<u64>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after_ms: None }
    }
    /// Adds a hint for how long to wait before retrying (backpressure, an open circuit breaker).
    pub fn with_retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }
    /// How long the engine suggests waiting before retrying, where it knows.
    pub fn retry_after_ms(&self) -> Option<u64> {
        self.retry_after_ms
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn code(&self) -> ErrorCode {
        self.code
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn retryable(&self) -> bool {
        self.code.retryable()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::new(ErrorCode::Io, e.to_string())
    }
}

impl From<tch::TchError> for Error {
    /// libtorch reports running out of memory as an ordinary error; it is told apart by its message so that the
    /// engine can retry or degrade instead of failing the job outright.
    fn from(e: tch::TchError) -> Self {
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        if lower.contains("out of memory")
            || lower.contains("can't allocate memory")
            || lower.contains("cannot allocate memory")
        {
            Self::new(ErrorCode::ResourceExhausted, text)
        } else {
            Self::new(ErrorCode::Internal, format!("libtorch: {text}"))
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses host-given JSON into `T`; an error is `invalid_argument` and names the field it is about (`bad request
/// JSON: field \`steps\`: invalid type: string "2", expected u32 at line 1 column 24`).
pub(crate) fn from_json_strict<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<T> {
    let mut de = serde_json::Deserializer::from_str(json);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            Error::invalid(format!("bad {what} JSON: {inner}"))
        } else {
            Error::invalid(format!("bad {what} JSON: field `{path}`: {inner}"))
        }
    })?;
    de.end().map_err(|e| Error::invalid(format!("bad {what} JSON: {e}")))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_a_code_as_name_does() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.name()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn codes_are_stable_and_round_trip() {
        // The numbers are a public ABI: this list may grow at the end but never change.
        let expected = [
            (ErrorCode::InvalidArgument, 1),
            (ErrorCode::NotFound, 2),
            (ErrorCode::AlreadyExists, 3),
            (ErrorCode::QueueFull, 4),
            (ErrorCode::Cancelled, 5),
            (ErrorCode::DeadlineExceeded, 6),
            (ErrorCode::ResourceExhausted, 7),
            (ErrorCode::Unavailable, 8),
            (ErrorCode::Model, 9),
            (ErrorCode::Internal, 10),
            (ErrorCode::ShuttingDown, 11),
            (ErrorCode::Io, 12),
            (ErrorCode::Unsupported, 13),
            (ErrorCode::Timeout, 14),
            (ErrorCode::NotReady, 15),
            (ErrorCode::Numerical, 16),
        ];
        for (code, n) in expected {
            assert_eq!(code as u32, n);
            assert_eq!(ErrorCode::from_u32(n), Some(code));
        }
        assert_eq!(ErrorCode::from_u32(0), None);
        assert_eq!(ErrorCode::ALL.len(), expected.len());
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        assert!(!ErrorCode::InvalidArgument.retryable());
        assert!(!ErrorCode::Cancelled.retryable());
        assert!(ErrorCode::QueueFull.retryable());
        assert!(ErrorCode::ResourceExhausted.retryable());
    }

    #[test]
    fn libtorch_out_of_memory_is_recognised() {
        let e: Error = tch::TchError::Torch("CUDA out of memory. Tried to allocate 2.00 GiB".into()).into();
        assert_eq!(e.code(), ErrorCode::ResourceExhausted);
        let e: Error = tch::TchError::Torch("shape mismatch".into()).into();
        assert_eq!(e.code(), ErrorCode::Internal);
    }
}
