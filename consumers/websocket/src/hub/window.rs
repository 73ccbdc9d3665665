//! How far back a resume can reach: the configured window, shortened by a
//! quarter at a time for everyone while the frames kept are over the byte
//! budget, and doubled again (up to the configured one) once they take less
//! than half of it.

use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub(super) struct Window {
    full_ms: u64,
    /// The window in force: `full_ms`, or shorter while over budget.
    current_ms: AtomicU64,
    /// One thread shortens at a time; the others go on with their events.
    shrinking: AtomicBool,
}

impl Window {
    pub fn new(full: Duration) -> Window {
        let full_ms = u64::try_from(full.as_millis()).unwrap_or(u64::MAX);
        Window {
            full_ms,
            current_ms: AtomicU64::new(full_ms),
            shrinking: AtomicBool::new(false),
        }
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.current_ms())
    }

    pub fn current_ms(&self) -> u64 {
        self.current_ms.load(Ordering::Relaxed)
    }

    /// Events older than this are not kept.
    pub fn oldest_kept(&self) -> DateTime<Utc> {
        Utc::now() - self.get()
    }

    /// Runs `shorten_until_fits` unless another thread already is.
    pub fn shrink(&self, shorten_until_fits: impl FnOnce(&Window)) {
        if self.shrinking.swap(true, Ordering::AcqRel) {
            return;
        }
        shorten_until_fits(self);
        self.shrinking.store(false, Ordering::Release);
    }

    /// A quarter shorter (never below 1 ms); false once it cannot shrink.
    pub fn shorten(&self) -> bool {
        let shorter = (self.current_ms() * 3 / 4).max(1);
        self.current_ms.store(shorter, Ordering::Relaxed);
        shorter > 1
    }

    /// Doubles a shortened window (up to the configured one) while the
    /// frames kept take less than half the budget.
    pub fn regrow(&self, bytes: usize, max_bytes: usize) {
        let current = self.current_ms();
        if current < self.full_ms && bytes < max_bytes / 2 {
            self.current_ms.store(
                current.saturating_mul(2).min(self.full_ms),
                Ordering::Relaxed,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_shortens_by_quarters_down_to_a_millisecond_and_grows_back_only_with_room() {
        let w = Window::new(Duration::from_millis(1000));
        assert!(w.shorten());
        assert_eq!(w.current_ms(), 750);
        w.regrow(600, 1000);
        assert_eq!(
            w.current_ms(),
            750,
            "no room: at least half the budget used"
        );
        w.regrow(499, 1000);
        assert_eq!(
            w.current_ms(),
            1000,
            "doubled, but never past the configured window"
        );
        while w.shorten() {}
        assert_eq!(w.current_ms(), 1);
        w.regrow(0, 1000);
        assert_eq!(w.current_ms(), 2);
    }

    #[test]
    fn one_thread_shrinks_at_a_time() {
        let w = Window::new(Duration::from_millis(1000));
        let mut inner_ran = false;
        w.shrink(|w| {
            w.shrink(|_| inner_ran = true);
            w.shorten();
        });
        assert!(!inner_ran, "a second shrink while one runs does nothing");
        assert_eq!(w.current_ms(), 750);
        w.shrink(|w| {
            w.shorten();
        });
        assert_eq!(w.current_ms(), 562, "the role is free again afterwards");
    }
}
