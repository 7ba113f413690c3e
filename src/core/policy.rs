//! Error policies: what happens to an event whose handler fails.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::HandlerError;
use super::event::Event;

/// One failure of one event, as a policy sees it.
pub struct Failure<'a> {
    pub projection: &'a str,
    pub event: &'a Event,
    pub error: &'a HandlerError,
    /// 1 for the first failure of this event, 2 after one retry, …
    pub attempt: u32,
}

/// What to do with a failing event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try the event again after this delay.
    Retry(Duration),
    /// Move past the event; it is counted as an error.
    Skip,
    /// Record the event as a dead letter and move past it.
    DeadLetter,
    /// Pause the projection and mark it unhealthy until it is resumed.
    Stop,
}

/// A custom error policy. The built-in [`ErrorPolicy`] implements it too.
pub trait ErrorHandler: Send + Sync + 'static {
    fn decide(&self, failure: &Failure<'_>) -> Decision;
}

impl<F> ErrorHandler for F
where
    F: Fn(&Failure<'_>) -> Decision + Send + Sync + 'static,
{
    fn decide(&self, failure: &Failure<'_>) -> Decision {
        self(failure)
    }
}

/// Exponential backoff for retries: `initial × 2^(attempt-1)`, capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    #[serde(with = "millis")]
    pub initial: Duration,
    #[serde(with = "millis")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// The built-in error policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum ErrorPolicy {
    /// Skip the failing event (it is counted as an error).
    Skip,
    /// Retry with exponential backoff, up to `max_retries` times, then stop the projection.
    Retry { max_retries: u32, backoff: Backoff },
    /// Record the failing event as a dead letter and go on.
    DeadLetter,
    /// Retry up to `max_retries` times, then record a dead letter and go on.
    RetryThenDeadLetter { max_retries: u32, backoff: Backoff },
    /// Pause the projection and mark it unhealthy until resumed.
    Stop,
}

impl Default for ErrorPolicy {
    /// `retry_then_dead_letter` with 3 retries: a transient fault heals, a poison event is kept
    /// aside, and the projection goes on.
    fn default() -> Self {
        ErrorPolicy::RetryThenDeadLetter {
            max_retries: 3,
            backoff: Backoff::default(),
        }
    }
}

impl ErrorPolicy {
    pub fn retry(max_retries: u32) -> Self {
        ErrorPolicy::Retry {
            max_retries,
            backoff: Backoff::default(),
        }
    }

    pub fn retry_then_dead_letter(max_retries: u32) -> Self {
        ErrorPolicy::RetryThenDeadLetter {
            max_retries,
            backoff: Backoff::default(),
        }
    }

    /// The policy's name as written in config files.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorPolicy::Skip => "skip",
            ErrorPolicy::Retry { .. } => "retry",
            ErrorPolicy::DeadLetter => "dead_letter",
            ErrorPolicy::RetryThenDeadLetter { .. } => "retry_then_dead_letter",
            ErrorPolicy::Stop => "stop",
        }
    }

    /// Builds a policy from its config name.
    pub fn from_name(name: &str, max_retries: u32, backoff: Backoff) -> Option<Self> {
        Some(match name {
            "skip" => ErrorPolicy::Skip,
            "retry" => ErrorPolicy::Retry { max_retries, backoff },
            "dead_letter" => ErrorPolicy::DeadLetter,
            "retry_then_dead_letter" => ErrorPolicy::RetryThenDeadLetter { max_retries, backoff },
            "stop" => ErrorPolicy::Stop,
            _ => return None,
        })
    }

    /// Every config name, for error messages.
    pub const NAMES: &'static [&'static str] =
        &["skip", "retry", "dead_letter", "retry_then_dead_letter", "stop"];
}

impl ErrorHandler for ErrorPolicy {
    fn decide(&self, failure: &Failure<'_>) -> Decision {
        match self {
            ErrorPolicy::Skip => Decision::Skip,
            ErrorPolicy::DeadLetter => Decision::DeadLetter,
            ErrorPolicy::Stop => Decision::Stop,
            ErrorPolicy::Retry { max_retries, backoff } => {
                if failure.attempt <= *max_retries {
                    Decision::Retry(backoff.delay(failure.attempt))
                } else {
                    Decision::Stop
                }
            }
            ErrorPolicy::RetryThenDeadLetter { max_retries, backoff } => {
                if failure.attempt <= *max_retries {
                    Decision::Retry(backoff.delay(failure.attempt))
                } else {
                    Decision::DeadLetter
                }
            }
        }
    }
}

/// A projection's policy: a built-in one or the user's own.
#[derive(Clone)]
pub enum Policy {
    Builtin(ErrorPolicy),
    Custom(Arc<dyn ErrorHandler>),
}

impl Policy {
    pub fn decide(&self, failure: &Failure<'_>) -> Decision {
        match self {
            Policy::Builtin(p) => p.decide(failure),
            Policy::Custom(h) => h.decide(failure),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Policy::Builtin(p) => p.name(),
            Policy::Custom(_) => "custom",
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::Builtin(ErrorPolicy::default())
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Builtin(p) => p.fmt(f),
            Policy::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl From<ErrorPolicy> for Policy {
    fn from(p: ErrorPolicy) -> Self {
        Policy::Builtin(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        };
        assert_eq!(b.delay(1), Duration::from_millis(10));
        assert_eq!(b.delay(2), Duration::from_millis(20));
        assert_eq!(b.delay(3), Duration::from_millis(40));
        assert_eq!(b.delay(4), Duration::from_millis(50));
        assert_eq!(b.delay(400), Duration::from_millis(50));
    }

    #[test]
    fn names_round_trip() {
        for name in ErrorPolicy::NAMES {
            let p = ErrorPolicy::from_name(name, 2, Backoff::default()).map(|p| p.name());
            assert_eq!(p, Some(*name));
        }
        assert!(ErrorPolicy::from_name("explode", 1, Backoff::default()).is_none());
    }
}
