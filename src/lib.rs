//! Throughline: identity-resolved profiles, intent scores and consent-filtered views,
//! maintained incrementally on differential dataflow from Segment-spec NDJSON events.
//!
//! Data flows one way: [`io`] (sources) → [`event`] (parsing, validation, admission) →
//! [`dataflow`] stages → views → [`io`] (sinks). [`engine`] drives the timely workers;
//! [`spec`] holds the dataflow spec model. [`server`] wires the long-lived server: [`store`]
//! (data directory, durable log, compaction), the engine, and [`io::http`] (the endpoints) on
//! [`io::transport`] (hyper: timeouts, limits, connection bound, shutdown). The semantics are those of `SPEC.md`.

#![warn(missing_docs)]

pub mod cli;
pub mod dataflow;
pub mod docs;
pub mod engine;
pub mod event;
pub mod explain;
pub mod history;
pub mod io;
pub mod replay;
pub mod server;
pub mod spec;
pub mod store;
pub mod workload;
