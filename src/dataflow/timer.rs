//! Decay steps that are not yet due (SPEC section 4), held outside the dataflow.
//!
//! An occurrence's weight schedule ([`super::intent::Decay::schedule`]) is known when it is
//! inserted, but most of its steps lie in the future. Handing those to differential as
//! updates at future times parks them in the merge batchers, which re-merge every
//! outstanding update at each frontier advance (differential-dataflow issue #460): the cost
//! of every round then grows with the whole pending schedule. Materialize met the same
//! problem with temporal filters and buckets future updates by time. Here the input layer
//! keeps each occurrence in a [`DecayTimer`] under the due time of its next step and inserts
//! each step at its own time when the clock reaches it, so the dataflow sees exactly the
//! updates it saw before, at the same times, and a round costs only what is due. An
//! occurrence is one entry, not one per step: its steps are computed again from its
//! timestamp and arrival when one falls due.
//!
//! A retraction files the negated occurrence under the same next step, which cancels the
//! pending one in place, so a retracted event's future steps leave the timer at once.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use super::{Node, Seq};

/// Which of an occurrence's two updates a step is: both travel in one input collection
/// (one for signals, one for sequence bonuses, see [`super::Inputs`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Stream {
    /// The weight, carried as multiplicity (scores sum it).
    Weight,
    /// The +1/-1 activity marker (active signals).
    Active,
}

/// An occurrence (of a signal or sequence bonus, by event and scored id) whose schedule
/// still has steps to come: what the schedule is computed from
/// ([`super::intent::Decay::steps`]), and its multiplicity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Occurrence {
    /// The event's primary identifier (its updates are keyed by it, see
    /// [`super::Inputs`]).
    pub primary: Node,
    /// The event's timestamp.
    pub t: u64,
    /// The clock when the event was inserted.
    pub arrival: u64,
    /// +1 for an insertion; a retraction's -1 cancels it.
    pub mult: i64,
}

/// Occurrences with steps not yet due, each once, under the due time of its next step:
/// `(due ms, event, scored id)`. When the clock reaches an entry, the engine sends that
/// step and files the occurrence again under its following step, so an occurrence costs
/// one entry however many steps its schedule has. Invariant: no entry has a zero
/// multiplicity; at most one entry per `(event, scored id)`.
#[derive(Debug, Default)]
pub struct DecayTimer {
    due: BTreeMap<(u64, Seq, u16), Occurrence>,
}

impl DecayTimer {
    /// Files `occurrence` of `(seq, id)` under its next step at clock `ms`, cancelling
    /// against an entry of the same occurrence there (a retraction of a pending insertion).
    pub fn add(&mut self, ms: u64, seq: Seq, id: u16, occurrence: Occurrence) {
        match self.due.entry((ms, seq, id)) {
            Entry::Vacant(slot) => {
                if occurrence.mult != 0 {
                    slot.insert(occurrence);
                }
            }
            Entry::Occupied(mut slot) => {
                slot.get_mut().mult += occurrence.mult;
                if slot.get().mult == 0 {
                    slot.remove();
                }
            }
        }
    }

    /// Removes and returns the earliest entry due at or before `ms`:
    /// `((due ms, event, scored id), occurrence)`.
    pub fn pop_due(&mut self, ms: u64) -> Option<((u64, Seq, u16), Occurrence)> {
        let first = self.due.first_entry()?;
        let (due, _, _) = *first.key();
        (due <= ms).then(|| first.remove_entry())
    }

    /// The earliest due time, if anything is pending.
    pub fn next_due(&self) -> Option<u64> {
        self.due.keys().next().map(|(ms, _, _)| *ms)
    }

    /// Number of pending occurrences.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occurrence(mult: i64) -> Occurrence {
        Occurrence {
            primary: Node(crate::event::Ident::new(0, "u")),
            t: 0,
            arrival: 0,
            mult,
        }
    }

    #[test]
    fn retraction_cancels_in_place() {
        let mut timer = DecayTimer::default();
        timer.add(10, 1, 0, occurrence(-1));
        timer.add(10, 2, 0, occurrence(1));
        timer.add(10, 1, 0, occurrence(1));
        timer.add(20, 1, 1, occurrence(1));
        assert_eq!(timer.len(), 2);
        assert_eq!(timer.next_due(), Some(10));
        assert_eq!(timer.pop_due(15), Some(((10, 2, 0), occurrence(1))));
        assert_eq!(timer.pop_due(15), None);
        assert_eq!(timer.next_due(), Some(20));
        assert_eq!(timer.pop_due(20), Some(((20, 1, 1), occurrence(1))));
        assert!(timer.is_empty());
        assert_eq!(timer.next_due(), None);
    }

    #[test]
    fn pops_only_what_is_due_in_time_order() {
        let mut timer = DecayTimer::default();
        for ms in [5, 1, 9, 3] {
            timer.add(ms, ms, 0, occurrence(1));
        }
        let mut due = Vec::new();
        while let Some(((ms, _, _), _)) = timer.pop_due(4) {
            due.push(ms);
        }
        assert_eq!(due, vec![1, 3]);
        assert_eq!(timer.len(), 2);
    }
}
