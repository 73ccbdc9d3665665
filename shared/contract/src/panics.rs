//! Containing panics: a failure while handling one user's input must stay
//! that input's failure. A service that dies on an event reads the same
//! event when it restarts, and dies again, for every user.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a caught panic said.
pub fn message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Runs synchronous `work` (calendar code, a third-party parser), turning a
/// panic into an error that says so.
pub fn contained<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|panic| format!("panicked: {}", message(&*panic)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        assert_eq!(contained(|| 2 + 2), Ok(4));
        let err = contained(|| -> i32 { panic!("local time out of range") }).unwrap_err();
        assert_eq!(err, "panicked: local time out of range");
    }
}
