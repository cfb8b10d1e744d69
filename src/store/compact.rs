//! Log compaction: rewrites the event log so that it keeps only what the spec still needs
//! and nothing of erased events (SPEC section 6), while a replay of the result reaches
//! exactly the state, clock, deduplication set, counters and dead letters that a replay of
//! the original reaches.
//!
//! Admission (SPEC section 1) is re-run over the log with the dataflow spec and the data
//! directory's salt; each `forget` request's erasure set S comes from the erasures file the
//! engine wrote when it carried the request out. Each line is then kept, or replaced one for
//! one (so line numbers stay valid) by its [`Residue`]:
//!
//! | line                                              | becomes                          |
//! |---------------------------------------------------|----------------------------------|
//! | a dead letter                                     | `Dead` (reason and detail)       |
//! | a duplicate                                       | `Duplicate`                      |
//! | an event suppressed by an earlier erasure         | `Suppressed`                     |
//! | an accepted event carrying an identifier of any S | `Accepted` (timestamp, id hash)  |
//! | a carried-out `forget`                            | `Erasure` (the salted hashes)    |
//! | any other accepted event                          | kept as received                 |
//!
//! A `forget` the engine has not carried out yet (no erasure set recorded) ends the rewrite:
//! it and every line after it are kept as they are, for a later compaction. So does a
//! `forget` the sinks have not all confirmed yet (its line is past `confirmed`, the least
//! position every sink has confirmed: see [`crate::io::sink`]): a crash may still make the
//! replay regenerate the retractions those sinks owe, which needs the erased events. Its
//! values leave the disk at the first compaction after the sinks confirm
//! ([`Rewritten::deferred`] says which line waits).

use std::collections::HashSet;

use crate::event::Kind;
use crate::event::admit::{Admission, Line};
use crate::event::residue::{Residue, message_id_hash};
use crate::spec::Spec;

use super::erasures::ErasureSets;
use super::log::Record;

/// What pass one decided for a line.
enum Fate {
    Keep,
    Reduce(Residue),
    /// Accepted: reduced if it carries an identifier (by salted hash) of any erasure set.
    Accepted {
        timestamp_ms: u64,
        message_id: Option<u128>,
        idents: Vec<u128>,
    },
}

/// A rewritten log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The records, one for each of the original's.
    pub records: Vec<Record>,
    /// How many of them this rewrite reduced (earlier residues not counted).
    pub reduced: u64,
    /// The line of the first carried-out `forget` kept as it is because some sink has not
    /// confirmed its retractions yet, if any.
    pub deferred: Option<u64>,
}

/// Rewrites the log's records (line numbers from 1) as described in the module docs;
/// `confirmed` is the least position every sink has confirmed (`u64::MAX` without sinks).
pub fn rewrite(
    records: Vec<Record>,
    spec: &Spec,
    salt: u128,
    sets: &ErasureSets,
    confirmed: u64,
) -> Rewritten {
    let mut gate = Admission::new(spec, salt);
    let mut erased: HashSet<u128> = HashSet::new();
    let mut fates = Vec::with_capacity(records.len());
    let mut deferred = None;
    for (index, record) in records.iter().enumerate() {
        let number = index as u64 + 1;
        let line = gate.classify(
            spec,
            &record.line,
            record.residue,
            Some(record.wall_ms),
            record.wall_ms,
        );
        let fate = match line {
            // an earlier compaction's residue: replayed into the gate, kept as it is
            Line::Replayed { erasure, .. } => {
                erased.extend(erasure.unwrap_or_default());
                Fate::Keep
            }
            _ if record.residue => Fate::Keep,
            Line::Accepted { event, .. } if event.kind == Kind::Forget => {
                let Some(set) = sets.get(&number) else {
                    break; // a forget not carried out yet
                };
                if number > confirmed {
                    deferred = Some(number); // the sinks still owe its retractions
                    break;
                }
                for h in set {
                    gate.suppress_hash(*h);
                    erased.insert(*h);
                }
                Fate::Reduce(Residue::Erasure {
                    timestamp_ms: event.timestamp_ms,
                    message_id: event.message_id.as_deref().map(message_id_hash),
                    suppressed: set.clone(),
                })
            }
            Line::Accepted { event, .. } => Fate::Accepted {
                timestamp_ms: event.timestamp_ms,
                message_id: event.message_id.as_deref().map(message_id_hash),
                idents: event.idents.iter().map(|i| gate.salted(i)).collect(),
            },
            Line::Duplicate => Fate::Reduce(Residue::Duplicate),
            Line::Suppressed => Fate::Reduce(Residue::Suppressed),
            Line::Dead { reason, detail } => Fate::Reduce(Residue::Dead { reason, detail }),
            Line::Unreadable(_) => Fate::Keep,
        };
        fates.push(fate);
    }
    // lines from a forget not carried out yet onwards are kept as they are
    fates.resize_with(records.len(), || Fate::Keep);
    let mut reduced = 0;
    let records = records
        .into_iter()
        .zip(fates)
        .map(|(record, fate)| {
            let residue = match fate {
                Fate::Keep => return record,
                Fate::Reduce(r) => r,
                Fate::Accepted {
                    timestamp_ms,
                    message_id,
                    idents,
                } => {
                    if !idents.iter().any(|h| erased.contains(h)) {
                        return record;
                    }
                    Residue::Accepted {
                        timestamp_ms,
                        message_id,
                    }
                }
            };
            reduced += 1;
            Record {
                wall_ms: record.wall_ms,
                line: residue.encode(),
                residue: true,
                origin: record.origin,
            }
        })
        .collect();
    Rewritten {
        records,
        reduced,
        deferred,
    }
}
