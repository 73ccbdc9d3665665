//! Nothing but tests: see `tests/`. They start every service from the
//! binaries that `cargo test --workspace` (or `cargo build --workspace
//! --bins`) built next to them, so each is a process of its own, with its
//! own trace exporter and `/metrics`, as deployed.
