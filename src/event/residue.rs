//! What log compaction leaves of a line: enough for a replay to reach exactly the state,
//! counters, clock and deduplication set the original line produced, and nothing of its raw
//! content (SPEC section 6: after an erasure and the next compaction no raw value remains).
//!
//! A residue is stored in the event log in place of the line it replaces (one for one, so
//! line numbers in dead letters stay valid) and replayed by the engine like a line.

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
        ] {
            assert_eq!(Residue::decode(&r.encode()), Ok(r));
        }
        assert!(Residue::decode(&[200]).is_err());
    }
}
