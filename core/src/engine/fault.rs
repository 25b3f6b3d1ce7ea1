//! Whose fault a failed attempt is: the device's, the request's, or not known yet.
//!
//! Only the device's faults count against its circuit breaker; otherwise one user's bad request, retried, could
//! take a device (or, on a one-device engine, the whole service) out of rotation for everyone. The rules:
//! - **The device**: a CUDA or driver error, `unavailable` (a lost device), running out of memory even in degraded
//!   mode, and a request whose attempts fail in *different* ways (the same computation giving different
//!   failures points at the hardware). These count against the device's breaker and are retried by policy.
//! - **The request**: an attempt that fails with the same code and message as the request's previous attempt.
//!   It is not retried again (so at most one retry) and fails alone, saying so; the breaker is not touched.
//! - **Not known yet**: any other first failure of a request (an internal error, a numerical one, a panic). It is
//!   retried once, which tells the two apart, and counts nothing meanwhile.

use crate::error::{Error, ErrorCode};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    Device,
    Request,
    Unknown,
}

/// How an attempt failed, to compare with the next attempt's failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    code: ErrorCode,
    message: String,
}

impl Failure {
    pub fn of(error: &Error) -> Self {
        Self { code: error.code(), message: error.message().to_string() }
    }
}

/// Words with which libtorch and CUDA report a fault of the device itself rather than of the computation.
const DEVICE_WORDS: [&str; 7] =
    ["cuda error", "cuda driver", "cudaerror", "cublas_status", "cudnn_status", "nccl error", "device lost"];

/// The blame for `error` from attempt `attempt` (in degraded mode or not), given the request's previous failure.
pub fn blame(error: &Error, degraded: bool, previous: Option<&Failure>) -> Blame {
    let lower = error.message().to_ascii_lowercase();
    match error.code() {
        ErrorCode::Unavailable => return Blame::Device,
        ErrorCode::ResourceExhausted if degraded => return Blame::Device,
        ErrorCode::ResourceExhausted => return Blame::Unknown,
        _ if DEVICE_WORDS.iter().any(|w| lower.contains(w)) => return Blame::Device,
        _ => {}
    }
    match previous {
        Some(p) if *p == Failure::of(error) => Blame::Request,
        Some(_) => Blame::Device,
        None => Blame::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_faults_request_faults_and_first_failures_are_told_apart() {
        let internal = Error::internal("the model panicked: index out of range");
        assert_eq!(blame(&internal, false, None), Blame::Unknown, "a first failure proves nothing yet");
        assert_eq!(blame(&internal, false, Some(&Failure::of(&internal))), Blame::Request, "the same way twice");
        let other = Error::internal("libtorch: some other failure");
        assert_eq!(blame(&other, false, Some(&Failure::of(&internal))), Blame::Device, "different ways");
        let cuda = Error::internal("libtorch: CUDA error: an illegal memory access was encountered");
        assert_eq!(blame(&cuda, false, None), Blame::Device);
        assert_eq!(blame(&Error::new(ErrorCode::Unavailable, "x"), false, None), Blame::Device);
        let oom = Error::new(ErrorCode::ResourceExhausted, "CUDA out of memory");
        assert_eq!(blame(&oom, false, None), Blame::Unknown, "out of memory first retries in degraded mode");
        assert_eq!(blame(&oom, true, Some(&Failure::of(&oom))), Blame::Device, "even degraded: the device's");
        let numerical = Error::new(ErrorCode::Numerical, "NaN or Inf in the latents after step 3");
        assert_eq!(blame(&numerical, false, Some(&Failure::of(&numerical))), Blame::Request);
    }
}
