//! Durable storage for the long-lived server: the data directory (`data_dir`), the event
//! log (`log`), the persisted erasure sets (`erasures`) and log compaction (`compact`).

pub mod compact;
pub mod data_dir;
pub mod erasures;
pub mod log;
