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
//! it and every line after it are kept as they are, for a later compaction.

use std::collections::HashSet;

use crate::event::admit::{Admission, Verdict};
use crate::event::residue::{Residue, message_id_hash};
use crate::event::{self, DeadReason, Kind};
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
}

/// Rewrites the log's records (line numbers from 1) as described in the module docs.
pub fn rewrite(records: Vec<Record>, spec: &Spec, salt: u128, sets: &ErasureSets) -> Rewritten {
    let mut gate = Admission::new(spec.intent.max_future_ms, salt);
    let mut erased: HashSet<u128> = HashSet::new();
    let mut fates = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let number = index as u64 + 1;
        let fate = if record.residue {
            replay_residue(&mut gate, &mut erased, record)
        } else {
            match judge(&mut gate, spec, record, number, sets) {
                Some((fate, set)) => {
                    for h in set {
                        gate.suppress_hash(*h);
                        erased.insert(*h);
                    }
                    fate
                }
                None => break, // a forget not carried out yet
            }
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
    Rewritten { records, reduced }
}

/// Pass one over a line: its fate, and the erasure set it adds (a carried-out forget), or
/// `None` for a forget whose set is not recorded.
fn judge<'s>(
    gate: &mut Admission,
    spec: &Spec,
    record: &Record,
    number: u64,
    sets: &'s ErasureSets,
) -> Option<(Fate, &'s [u128])> {
    let dead = |reason: DeadReason, detail: String| Fate::Reduce(Residue::Dead { reason, detail });
    let event = match event::parse(&record.line, spec, Some(record.wall_ms)) {
        Ok(e) => e,
        Err(r) => return Some((dead(r.reason, r.detail), &[])),
    };
    let message_id = event.message_id.as_deref().map(message_id_hash);
    match gate.admit(&event, record.wall_ms) {
        Verdict::Duplicate => Some((Fate::Reduce(Residue::Duplicate), &[])),
        Verdict::Suppressed => Some((Fate::Reduce(Residue::Suppressed), &[])),
        Verdict::Dead(r) => Some((dead(r.reason, r.detail), &[])),
        Verdict::Accepted { .. } if event.kind == Kind::Forget => {
            let set = sets.get(&number)?;
            let residue = Residue::Erasure {
                timestamp_ms: event.timestamp_ms,
                message_id,
                suppressed: set.clone(),
            };
            Some((Fate::Reduce(residue), set.as_slice()))
        }
        Verdict::Accepted { .. } => Some((
            Fate::Accepted {
                timestamp_ms: event.timestamp_ms,
                message_id,
                idents: event.idents.iter().map(|i| gate.salted(i)).collect(),
            },
            &[],
        )),
    }
}

/// Pass one over a line an earlier compaction reduced: replays it into the gate; kept as is.
fn replay_residue(gate: &mut Admission, erased: &mut HashSet<u128>, record: &Record) -> Fate {
    match Residue::decode(&record.line) {
        Ok(Residue::Accepted {
            timestamp_ms,
            message_id,
        }) => {
            gate.accept(timestamp_ms, message_id, record.wall_ms);
        }
        Ok(Residue::Erasure {
            timestamp_ms,
            message_id,
            suppressed,
        }) => {
            gate.accept(timestamp_ms, message_id, record.wall_ms);
            for h in suppressed {
                gate.suppress_hash(h);
                erased.insert(h);
            }
        }
        // counted only, or unreadable (the engine reports it; kept as it is)
        Ok(Residue::Duplicate | Residue::Suppressed | Residue::Dead { .. }) | Err(_) => {}
    }
    Fate::Keep
}
