//! Sources (the reader thread that splits input into lines) and sinks (the change stream,
//! snapshots and dead letters).

pub mod console;
pub mod http;
pub mod kafka;
pub mod route;
pub mod sink;
pub mod source;
pub mod transport;
