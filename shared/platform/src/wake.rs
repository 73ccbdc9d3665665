//! When a background loop (a clock, a scheduler, a channel worker) next
//! looks at its table: the database says how many seconds remain until the
//! next due row, by its own clock, and the loop sleeps that long, but never
//! longer than its cap, so that a row another process added without waking
//! this one is still seen in time.

use std::time::Duration;

/// How long to sleep when the next due row is `seconds` away (`None`:
/// nothing is due), at most `cap`; a row already due wakes the loop at once.
pub fn after(seconds: Option<f64>, cap: Duration) -> Duration {
    match seconds {
        // No duration at all: the cap, rather than a loop that never sleeps.
        Some(s) if s.is_nan() => cap,
        Some(s) => Duration::try_from_secs_f64(s.max(0.0))
            .unwrap_or(cap)
            .min(cap),
        None => cap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_the_next_row_but_never_past_the_cap() {
        let cap = Duration::from_secs(30);
        assert_eq!(after(Some(1.5), cap), Duration::from_millis(1500));
        assert_eq!(after(Some(0.0), cap), Duration::ZERO);
        assert_eq!(after(Some(90.0), cap), cap);
        assert_eq!(after(None, cap), cap);
        // Overdue: at once.
        assert_eq!(after(Some(-1.0), cap), Duration::ZERO);
        // What no Duration holds: the cap, never a panic.
        assert_eq!(after(Some(f64::NAN), cap), cap);
        assert_eq!(after(Some(f64::INFINITY), cap), cap);
    }
}
