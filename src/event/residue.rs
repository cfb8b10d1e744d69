//! What log compaction leaves of a line: enough for a replay to reach exactly the state,
//! counters, clock and deduplication set the original line produced, and nothing of its raw
//! content (SPEC section 6: after an erasure and the next compaction no raw value remains).
//!
//! A residue is stored in the event log in place of the line it replaces (one for one, so
//! line numbers in dead letters stay valid) and replayed by the engine like a line. A
//! [`Span`] stands for a run of consecutive lines that retired (SPEC section 9): the log
//! record holding it counts as that many lines, so line numbers stay valid there too.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use super::DeadReason;

/// What remains of a compacted line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Residue {
    /// An accepted event whose content was erased: it still moved the engine clock, and its
    /// `messageId` (as a hash) stays in the deduplication set.
    Accepted {
        /// Its timestamp, epoch ms.
        timestamp_ms: u64,
        /// [`message_id_hash`] of its `messageId`.
        message_id: Option<u128>,
    },
    /// A materialised `forget` request: accepted like an event, and the salted hashes of
    /// everything it erased stay suppressed.
    Erasure {
        /// Its timestamp, epoch ms.
        timestamp_ms: u64,
        /// [`message_id_hash`] of its `messageId`.
        message_id: Option<u128>,
        /// Salted hashes of the erased identifiers (the set S of SPEC section 6).
        suppressed: Vec<u128>,
    },
    /// A duplicate (counted, nothing else).
    Duplicate,
    /// An event dropped for carrying an erased identifier (counted, nothing else).
    Suppressed,
    /// A dead letter: its reason and detail, without the line.
    Dead {
        /// Why it was rejected.
        reason: DeadReason,
        /// The detail the dead letter carried.
        detail: String,
    },
    /// A run of retired lines folded into one record (see [`Span`]).
    Span(Box<Span>),
}

/// What a run of consecutive lines leaves once every event among them has retired (SPEC
/// section 9, `crate::store::compact`): the clock they moved, what they counted, the
/// erasures and dead letters among them, and what the engine keeps of their events by
/// identifier set (identifiers, links, the records that can still win), encoded by the
/// dataflow's retention (`crate::dataflow::retention::Summary`), which alone reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Lines it stands for.
    pub lines: u64,
    /// The engine clock after its last line.
    pub clock: u64,
    /// Accepted lines (`forget` requests included).
    pub accepted: u64,
    /// Accepted events other than `forget`s: the sequence numbers they took.
    pub events: u64,
    /// Carried-out `forget` requests.
    pub forgets: u64,
    /// Duplicates.
    pub duplicates: u64,
    /// Suppressed events.
    pub suppressed: u64,
    /// Salted hashes the `forget`s among them erased (they stay suppressed).
    pub erasures: Vec<u128>,
    /// Dead letters among them: (source, line) as cited, reason, detail.
    pub dead: Vec<(u16, u64, DeadReason, String)>,
    /// Per Kafka partition, the offset after the last record read from it.
    pub kafka: Vec<(i32, i64)>,
    /// What is kept of their events, per identifier set (opaque here).
    pub sets: Vec<Vec<u8>>,
}

impl Residue {
    /// Its stored form.
    pub fn encode(&self) -> Vec<u8> {
        // encoding plain enums of integers and strings into a Vec cannot fail
        bincode::serialize(self).unwrap_or_default()
    }

    /// Reads a stored residue.
    pub fn decode(bytes: &[u8]) -> Result<Residue, String> {
        bincode::deserialize(bytes).map_err(|e| format!("unreadable compacted record: {e}"))
    }
}

/// The deduplication key of a `messageId`: a 128-bit hash (a collision is ~2^-100 at 10^9
/// ids), so neither the set in memory nor a residue holds the raw id.
pub fn message_id_hash(message_id: &str) -> u128 {
    xxh3_128(message_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for r in [
            Residue::Accepted {
                timestamp_ms: 7,
                message_id: Some(9),
            },
            Residue::Erasure {
                timestamp_ms: 1,
                message_id: None,
                suppressed: vec![1, u128::MAX],
            },
            Residue::Duplicate,
            Residue::Suppressed,
            Residue::Dead {
                reason: DeadReason::BadTimestamp,
                detail: "x".into(),
            },
            Residue::Span(Box::new(Span {
                lines: 9,
                clock: 4,
                dead: vec![(1, 2, DeadReason::BadTimestamp, "y".into())],
                sets: vec![vec![1, 2, 3]],
                ..Span::default()
            })),
        ] {
            assert_eq!(Residue::decode(&r.encode()), Ok(r));
        }
        assert!(Residue::decode(&[200]).is_err());
    }
}
