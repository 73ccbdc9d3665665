//! What `/ready` says about a consumer beyond its database: whether its loop
//! is consuming (it may be stuck before that: topics it may not create and
//! that do not exist), and whether its dead letters reach their topic (while
//! they do not, the consumer cannot go past the event in hand).

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
pub struct Health {
    consuming: AtomicBool,
    dead_letters_ok: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            consuming: AtomicBool::new(false),
            dead_letters_ok: AtomicBool::new(true),
        }
    }
}

impl Health {
    pub fn consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    pub fn dead_letters_ok(&self) -> bool {
        self.dead_letters_ok.load(Ordering::Relaxed)
    }

    pub(crate) fn set_consuming(&self, on: bool) {
        self.consuming.store(on, Ordering::Relaxed);
    }

    pub(crate) fn set_dead_letters_ok(&self, ok: bool) {
        self.dead_letters_ok.store(ok, Ordering::Relaxed);
    }
}
