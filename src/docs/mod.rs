//! Guides that go with the code: the choices made where SPEC.md is silent, the measured
//! performance record, and the stable JSON of explanations. Each is a Markdown file beside
//! this one, rendered here by `cargo doc`, except the performance record, which lives beside
//! the harness that measures it (`tests/bench/performance.md`).

#[doc = include_str!("semantics.md")]
pub mod semantics {}

#[doc = include_str!("../../tests/bench/performance.md")]
pub mod performance {}

#[doc = include_str!("explain.md")]
pub mod explain {}
