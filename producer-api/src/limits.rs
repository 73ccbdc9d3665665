//! Writes per user: one user creating without end must not take the API's
//! capacity (or the consumers') from everyone else. Each user has a token
//! bucket (GCRA, by `governor`): `per_second` sustained, bursts up to
//! `burst`; past it a write answers 429 with `Retry-After`.

use crate::error::ApiError;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;
use todo_contract::domain::UserId;
use todo_platform::config::{ConfigError, Env};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteQuota {
    /// `API_WRITES_PER_SECOND`: sustained writes per user per second.
    pub per_second: NonZeroU32,
    /// `API_WRITE_BURST`: writes a user may make at once after a pause.
    pub burst: NonZeroU32,
}

impl Default for WriteQuota {
    fn default() -> Self {
        Self {
            per_second: NonZeroU32::new(50).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN),
        }
    }
}

impl WriteQuota {
    pub fn from_lookup<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let nonzero = |var: &'static str, default: NonZeroU32| -> Result<NonZeroU32, ConfigError> {
            let n: u32 = env.parse_or(var, default.get())?;
            NonZeroU32::new(n).ok_or(ConfigError::Invalid {
                var,
                reason: "must be at least 1".into(),
            })
        };
        Ok(Self {
            per_second: nonzero("API_WRITES_PER_SECOND", defaults.per_second)?,
            burst: nonzero("API_WRITE_BURST", defaults.burst)?,
        })
    }
}

pub struct WriteLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
}

impl WriteLimiter {
    pub fn new(quota: WriteQuota) -> Self {
        Self {
            limiter: RateLimiter::keyed(
                Quota::per_second(quota.per_second).allow_burst(quota.burst),
            ),
        }
    }

    /// Takes one write from `user`'s allowance, or says when to retry.
    pub fn check(&self, user: &UserId) -> Result<(), ApiError> {
        self.limiter
            .check_key(&user.as_str().to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                ApiError::TooManyRequests {
                    retry_after: wait.max(Duration::from_millis(1)),
                }
            })
    }

    /// Forgets users whose bucket is full again (run now and then: the map
    /// would otherwise keep every user ever seen).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_user_waits_and_others_do_not() {
        let limiter = WriteLimiter::new(WriteQuota {
            per_second: NonZeroU32::new(1).unwrap(),
            burst: NonZeroU32::new(3).unwrap(),
        });
        let alice = UserId::try_from("alice".to_string()).unwrap();
        let bob = UserId::try_from("bob".to_string()).unwrap();
        for _ in 0..3 {
            assert!(limiter.check(&alice).is_ok());
        }
        match limiter.check(&alice) {
            Err(ApiError::TooManyRequests { retry_after }) => {
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}")
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(
            limiter.check(&bob).is_ok(),
            "one user's bucket is their own"
        );
    }
}
