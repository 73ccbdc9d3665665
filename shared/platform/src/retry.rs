//! Retry delays shared by the relay and the consumer runtime, and the loop
//! of the services that sleep until their next piece of work is due.

use crate::shutdown::Shutdown;
use futures::FutureExt;
use std::future::Future;
use std::time::Duration;
use tokio::sync::Notify;

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

/// Runs `round` until shutdown. A round does what is due and returns how
/// long until the next thing is; the loop sleeps that long, or until `wake`
/// is notified (something nearer was scheduled). A failed round is logged
/// and tried again after [`backoff`].
pub async fn run_rounds<F, Fut>(what: &str, wake: &Notify, mut shutdown: Shutdown, mut round: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Duration>>,
{
    let mut failures = 0;
    loop {
        // A round that panics is a failed round: the loop must outlive it,
        // or the work it schedules would silently stop for everyone.
        let outcome = std::panic::AssertUnwindSafe(round())
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                Err(anyhow::anyhow!(
                    "round panicked: {}",
                    todo_contract::panics::message(&*panic)
                ))
            });
        let sleep = match outcome {
            Ok(next) => {
                failures = 0;
                next
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %format!("{e:#}"), failures, "{what} round failed; retrying");
                backoff(failures)
            }
        };
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
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
