//! Throughline: identity-resolved profiles, intent scores and consent-filtered views,
//! maintained incrementally on differential dataflow from Segment-spec NDJSON events.
//! The semantics are those of `SPEC.md`.
//!
//! # Module graph
//!
//! Modules depend only on modules before them in this order (`tests/layout.rs` checks it):
//!
//! 1. [`spec`]: the dataflow spec model and its checks.
//! 2. [`event`]: parsing, validation and admission of one line (SPEC section 1), identifiers,
//!    timestamps, signals, consent and traits of one event.
//! 3. [`dataflow`]: the differential stages (SPEC sections 3 to 7), the keepers of the
//!    input side (each worker's share of the events: [`dataflow::keeper`], with the
//!    [`dataflow::history`] kept for erasure and explanations) and what retention keeps of
//!    retired events (SPEC section 9, [`dataflow::retention`]).
//! 4. [`explain`]: why a profile is what it is, from the history.
//! 5. [`engine`]: drives the timely workers; defines what it takes in
//!    ([`engine::input`]: batches and requests) and what it puts out ([`engine::output`]:
//!    the change stream, snapshots, dead letters, subscriptions).
//! 6. [`store`]: the server's data directory, durable log, erasure sets and compaction.
//! 7. [`io`]: the outside world: files and pipes, Kafka in, the sinks the change stream
//!    goes to (Kafka topics, a file: [`io::sink`]), HTTP, the console.
//! 8. [`server`]: wires the long-lived server.
//! 9. [`replay`], [`workload`] and [`cli`]: the commands.
//!
//! [`docs`] holds documents only.

#![warn(missing_docs)]

pub mod cli;
pub mod dataflow;
pub mod docs;
pub mod engine;
pub mod event;
pub mod explain;
pub mod io;
pub mod replay;
pub mod server;
pub mod spec;
pub mod store;
pub mod workload;
