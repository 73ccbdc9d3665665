//! Connections per user: one user opening thousands of sockets must not
//! take a replica's memory and file descriptors from everyone else. A slot
//! is taken before the upgrade and given back when its guard drops (the
//! session ended, or the upgrade never happened).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct ConnectionSlots {
    per_user: usize,
    taken: Mutex<HashMap<String, usize>>,
}

/// A user's connection slot, given back on drop.
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    user: String,
}

impl ConnectionSlots {
    pub fn new(per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            per_user,
            taken: Mutex::default(),
        })
    }

    pub fn per_user(&self) -> usize {
        self.per_user
    }

    /// A slot for `user`, unless they hold all of theirs.
    pub fn take(self: &Arc<Self>, user: &str) -> Option<Slot> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let n = taken.entry(user.to_owned()).or_insert(0);
        if *n >= self.per_user {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut taken = self.slots.taken.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = taken.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                taken.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_their_slots_and_gets_them_back() {
        let slots = ConnectionSlots::new(2);
        let a = slots.take("alice").expect("first");
        let _b = slots.take("alice").expect("second");
        assert!(slots.take("alice").is_none(), "third refused");
        assert!(slots.take("bob").is_some(), "bob has his own");
        drop(a);
        assert!(slots.take("alice").is_some(), "a slot came back");
    }
}
