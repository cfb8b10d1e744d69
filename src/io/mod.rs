//! The outside world: files and pipes (`source`: the reader thread that splits input into
//! lines for the engine), Kafka topics in (`kafka`), the sinks the change stream goes to
//! (`sink`: Kafka topics, a file, webhooks, PostgreSQL; `tls` for those that need it), the HTTP endpoints (`http`, `route`, `transport`) and the
//! console (`console`). The formats they carry are the
//! engine's ([`crate::engine::input`], [`crate::engine::output`]).

pub mod console;
pub mod http;
pub mod kafka;
pub mod route;
pub mod sink;
pub mod source;
pub mod tls;
pub mod transport;
