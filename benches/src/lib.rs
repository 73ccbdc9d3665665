//! What the benchmarks of the todo platform share: realistic events
//! ([`sample`]).

pub mod sample;
