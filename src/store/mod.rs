//! Durable storage for the long-lived server: the event log (`log`).

pub mod log;
