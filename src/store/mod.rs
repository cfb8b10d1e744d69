//! Durable storage for the long-lived server: the data directory (`data_dir`), the event
//! log (`log`), the persisted erasure sets (`erasures`), the changes made to the views while running (`views`) and log compaction (`compact`, and `compactor`, which runs it in a live server).

pub mod compact;
pub mod compactor;
pub mod data_dir;
pub mod erasures;
pub mod log;
pub mod views;
