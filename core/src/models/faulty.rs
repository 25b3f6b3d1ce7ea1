//! `faulty`: a model that fails on command, for testing how a host (and the engine) handles failure.
//!
//! It wraps a real model and, before running it, injects the faults its prompt asks for. Directives are words
//! starting with `!`; the rest of the prompt goes to the wrapped model:
//!
//! | directive | effect |
//! |---|---|
//! | `!fail=CODE*N` | the first N attempts fail with error CODE (`internal`, `unavailable`, `invalid_argument`, ...) |
//! | `!panic*N` | the first N attempts panic |
//! | `!oom*N` | the first N attempts run out of memory |
//! | `!oom-unless-degraded` | every attempt not in degraded mode runs out of memory |
//! | `!slow=MS` | each step takes at least MS milliseconds |
//!
//! `N` defaults to 1. With [`Faulty::random`] it instead draws faults at random, seeded by the request's seed and
//! the attempt number, for chaos tests.

use super::{Model, ModelInfo};
use crate::device::Device;
use crate::engine::{Attempt, Params, Stage};
use crate::error::{Error, ErrorCode, Result};
use crate::video::Video;
use std::sync::Arc;
use std::time::Duration;

pub const NAME: &str = "faulty";

/// Chances per attempt, in [0, 1], of each random fault.
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultRates {
    pub fail: f64,
    pub panic: f64,
    pub oom: f64,
    pub invalid: f64,
}

pub struct Faulty {
    inner: Arc<dyn Model>,
    info: ModelInfo,
    random: Option<FaultRates>,
}

impl Faulty {
    /// Faults on command, from the prompt's directives.
    pub fn new(inner: Arc<dyn Model>) -> Self {
        let mut info = inner.info().clone();
        info.name = NAME.into();
        Self { inner, info, random: None }
    }

    /// Random faults at these rates, plus any the prompt asks for.
    pub fn random(inner: Arc<dyn Model>, rates: FaultRates) -> Self {
        Self { random: Some(rates), ..Self::new(inner) }
    }

    /// Renames the model (to register several).
    pub fn named(mut self, name: &str) -> Self {
        self.info.name = name.into();
        self
    }
}

enum Fault {
    Fail(ErrorCode),
    Panic,
    Oom,
}

struct Directives {
    faults: Vec<(Fault, u32)>,
    oom_unless_degraded: bool,
    slow: Option<Duration>,
    prompt: String,
}

fn parse(prompt: &str) -> Result<Directives> {
    let mut d = Directives { faults: Vec::new(), oom_unless_degraded: false, slow: None, prompt: String::new() };
    let mut words = Vec::new();
    for word in prompt.split_whitespace() {
        let Some(directive) = word.strip_prefix('!') else {
            words.push(word);
            continue;
        };
        let (body, times) = match directive.split_once('*') {
            Some((b, n)) => (b, n.parse::<u32>().map_err(|_| Error::invalid(format!("bad count in {word}")))?),
            None => (directive, 1),
        };
        match body.split_once('=') {
            Some(("fail", code)) => {
                let code = crate::ErrorCode::ALL
                    .into_iter()
                    .find(|c| c.name() == code)
                    .ok_or_else(|| Error::invalid(format!("unknown error code in {word}")))?;
                d.faults.push((Fault::Fail(code), times));
            }
            Some(("slow", ms)) => {
                d.slow = Some(Duration::from_millis(ms.parse().map_err(|_| Error::invalid(format!("bad {word}")))?))
            }
            None if body == "panic" => d.faults.push((Fault::Panic, times)),
            None if body == "oom" => d.faults.push((Fault::Oom, times)),
            None if body == "oom-unless-degraded" => d.oom_unless_degraded = true,
            _ => return Err(Error::invalid(format!("unknown fault directive {word}"))),
        }
    }
    d.prompt = if words.is_empty() { "test".into() } else { words.join(" ") };
    Ok(d)
}

fn inject(fault: &Fault) -> Result<()> {
    match fault {
        Fault::Fail(code) => Err(Error::new(*code, "injected fault")),
        Fault::Panic => panic!("injected panic"),
        Fault::Oom => Err(Error::new(ErrorCode::ResourceExhausted, "injected out of memory")),
    }
}

impl Model for Faulty {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn memory_estimate(&self, p: &Params, device: Device) -> u64 {
        self.inner.memory_estimate(p, device)
    }

    fn generate(&self, p: &Params, attempt: &mut Attempt<'_>) -> Result<Video> {
        let d = parse(&p.prompt)?;
        let n = attempt.number();
        attempt.stage(Stage::Validating)?;
        for (fault, times) in &d.faults {
            if n <= *times {
                inject(fault)?;
            }
        }
        if d.oom_unless_degraded && !attempt.degraded() {
            inject(&Fault::Oom)?;
        }
        if let Some(rates) = self.random {
            // A fixed draw per (seed, attempt): reruns of a test see the same faults.
            let mut x = p.seed ^ (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut draw = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 11) as f64 / (1u64 << 53) as f64
            };
            if draw() < rates.invalid {
                inject(&Fault::Fail(ErrorCode::InvalidArgument))?;
            }
            if draw() < rates.fail {
                inject(&Fault::Fail(ErrorCode::Internal))?;
            }
            if draw() < rates.oom {
                inject(&Fault::Oom)?;
            }
            if draw() < rates.panic {
                inject(&Fault::Panic)?;
            }
        }
        let params = Params { prompt: d.prompt, ..p.clone() };
        match d.slow {
            None => self.inner.generate(&params, attempt),
            Some(delay) => {
                attempt.stage(Stage::Generating)?;
                for i in 1..=p.steps {
                    std::thread::sleep(delay);
                    attempt.step(i, p.steps)?;
                }
                self.inner.generate(&Params { steps: 1, ..params }, attempt)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_parse_and_bad_ones_are_errors() {
        let d = parse("a red circle !fail=unavailable*2 !slow=5 !panic").unwrap();
        assert_eq!(d.prompt, "a red circle");
        assert_eq!(d.faults.len(), 2);
        assert_eq!(d.slow, Some(Duration::from_millis(5)));
        assert!(parse("x !fail=nonsense").is_err());
        assert!(parse("x !explode").is_err());
    }
}
