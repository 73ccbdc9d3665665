//! Retry delays shared by the relay and the consumer runtime.

use std::time::Duration;

/// Exponential backoff with jitter: about 100 ms × 2^attempt, capped at
/// 10 s, each delay drawn from the upper half of its range so that many
/// clients retrying together spread out.
pub fn backoff(attempt: u32) -> Duration {
    let cap = Duration::from_secs(10);
    let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(10));
    let ceiling = base.min(cap);
    let jitter = rand::random::<f64>();
    ceiling.mul_f64(0.5 + jitter / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
            assert!(backoff(30) <= Duration::from_secs(10));
            assert!(backoff(30) >= Duration::from_secs(5));
        }
    }
}
