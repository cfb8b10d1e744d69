//! Retention (SPEC section 9): what the engine stops keeping, when, and why nothing
//! observable changes.
//!
//! Every rule here is checked by property tests against the engine with everything kept
//! ([`Retention::KeepAll`], `tests/retention.rs`) and against the oracle.
//!
//! # The horizon of an event
//!
//! An event at time `t` *retires* once the clock reaches [`Horizon::event_retires`]:
//! `t + max_age + within`, with `within` the longest sequence window. From then on:
//!
//! - its signal occurrences weigh nothing and never will again: a weight is zero once
//!   `now - t >= max_age`, and the clock never goes back (SPEC section 4). Their schedules
//!   have run out, so they hold no state in the dataflow either (their steps sum to zero);
//! - its sequence roles can never earn a bonus ([`Horizon::role_retires`]): a `first` at
//!   `t_A` qualifies only `then` events at `t_B <= t_A + within`, whose bonus weighs nothing
//!   once `now >= t_B + max_age`; a `then` at `t_B` earns a bonus that weighs nothing from
//!   `t_B + max_age` on. So a role leaves the dataflow at `t + max_age + within` (of its own
//!   sequence), and a role already past it on arrival never enters;
//! - what remains of it is identity (its identifiers and links), and its consent and trait
//!   records where they can still win (below). The history keeps those, not the event: a
//!   retired event is counted in the group of events with its identifier set
//!   (`History`'s retired groups), cited by source, line and time.
//!
//! # Records that can never win
//!
//! A consent or trait record decides its profile's slot when it is the greatest there
//! (SPEC section 5). Of the records of one slot from events with one *identifier set*, only
//! the greatest can ever decide ([`Records`]):
//!
//! - the events share their primary identifier, so they belong to one profile whatever
//!   happens to the graph later (a hub forming, an un-merge): an event's profile is that of
//!   its primary identifier, and records are attributed by it alone;
//! - an erasure retracts every event carrying an identifier of its set S (SPEC section 6),
//!   so it retracts all the events of an identifier set together, or none of them: the
//!   greatest never goes while a lesser one stays.
//!
//! So a lesser record never enters the dataflow, and one that stops being the greatest of
//! its group leaves it at the time the greater one arrives. Records of events with
//! different identifier sets are all kept, even in one profile: a later `forget` may take
//! one set and not the other.
//!
//! # The dedup window
//!
//! `messageId`s are kept for the spec's `dedup_window` of engine clock (SPEC section 1,
//! [`crate::event::admit`]), not forever.

use std::collections::{BTreeMap, HashMap};

use super::latest::{Rank, Slot};
use super::{Node, Seq};
use crate::event::Ident;
use crate::spec::Spec;

/// Whether the engine retires state (SPEC section 9) or keeps everything (tests compare the
/// two; nothing observable may differ).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Retention {
    /// Retire what can no longer change any output.
    #[default]
    Retire,
    /// Keep every event's facts for ever (the reference the tests compare with).
    KeepAll,
}

/// When state of an event retires, from the spec's decay and sequence windows.
#[derive(Debug, Clone)]
pub struct Horizon {
    max_age_ms: u64,
    /// Each sequence's `within`, by index.
    within_ms: Vec<u64>,
}

impl Horizon {
    /// The horizon of `spec`.
    pub fn of(spec: &Spec) -> Horizon {
        Horizon {
            max_age_ms: spec.intent.max_age_ms,
            within_ms: spec.intent.sequences.iter().map(|q| q.within_ms).collect(),
        }
    }

    /// The clock from which a role of sequence `q` of an event at `t` can earn no bonus
    /// that weighs anything (see the module docs).
    pub fn role_retires(&self, t: u64, q: u16) -> u64 {
        let within = self.within_ms.get(usize::from(q)).copied().unwrap_or(0);
        t.saturating_add(self.max_age_ms).saturating_add(within)
    }

    /// The clock from which an event at `t` adds no weight, no bonus and no role: what is
    /// left of it is its identifiers, links and records.
    pub fn event_retires(&self, t: u64) -> u64 {
        let within = self.within_ms.iter().copied().max().unwrap_or(0);
        t.saturating_add(self.max_age_ms).saturating_add(within)
    }
}

/// Sequence roles in the dataflow that will retire, by the clock at which they do:
/// `(retires, event, sequence, role)` → `(primary, t)`.
#[derive(Default)]
pub struct Roles {
    due: BTreeMap<(u64, Seq, u16, u8), (Node, u64)>,
}

impl Roles {
    /// Files a role entering the dataflow, to retire at `retires`.
    pub fn file(&mut self, retires: u64, seq: Seq, q: u16, role: u8, primary: Node, t: u64) {
        self.due.insert((retires, seq, q, role), (primary, t));
    }

    /// Unfiles a role being retracted (an erasure); whether it was filed (it was not when
    /// it never entered, or has retired already).
    pub fn unfile(&mut self, retires: u64, seq: Seq, q: u16, role: u8) -> bool {
        self.due.remove(&(retires, seq, q, role)).is_some()
    }

    /// Takes the next role that retires at or before `clock`, as the dataflow holds it.
    pub fn pop_due(&mut self, clock: u64) -> Option<super::intent::Role> {
        let entry = self.due.first_entry()?;
        let &(retires, seq, q, role) = entry.key();
        if retires > clock {
            return None;
        }
        let (primary, t) = entry.remove();
        Some((primary, (q, role, t, seq)))
    }

    /// Roles waiting to retire.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// Whether no role waits.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

/// The consent and trait records that can still win (see the module docs): per identifier
/// set, the greatest record of each slot; and per primary identifier, the greatest of
/// those, which alone enters the dataflow (records are attributed by their primary
/// identifier, so a lesser one of the same primary never decides while the greater stays).
#[derive(Default)]
pub struct Records {
    sets: HashMap<Box<[Ident]>, Vec<(Slot, Rank)>>,
    /// Per primary identifier and slot, the greatest record of each of its sets, counted,
    /// ascending (a sorted vector: a primary has few sets, and a tree's node would cost
    /// a kilobyte each).
    best: HashMap<(Ident, Slot), Vec<(Rank, u32)>>,
    held: usize,
}

/// A change of the record the dataflow holds for (primary, slot): `(slot, rank, diff)`.
pub type RecordChange = (Slot, Rank, isize);

impl Records {
    /// Offers a record of an event with identifier set `idents` (sorted by priority, each
    /// once); returns the changes of the primary's greatest records.
    pub fn offer(&mut self, idents: &[Ident], slot: Slot, rank: Rank) -> Vec<RecordChange> {
        let Some(primary) = idents.first() else {
            return Vec::new();
        };
        let records = match self.sets.get_mut(idents) {
            Some(records) => records,
            None => self.sets.entry(idents.into()).or_default(),
        };
        let superseded = match records.binary_search_by(|(s, _)| s.cmp(&slot)) {
            Ok(i) => match records.get_mut(i) {
                Some((_, held)) if *held < rank => Some(std::mem::replace(held, rank.clone())),
                _ => return Vec::new(),
            },
            Err(i) => {
                records.insert(i, (slot.clone(), rank.clone()));
                self.held += 1;
                None
            }
        };
        let best = self
            .best
            .entry((primary.clone(), slot.clone()))
            .or_default();
        let before = greatest(best);
        if let Some(old) = superseded {
            uncount(best, &old);
        }
        match best.binary_search_by(|(r, _)| r.cmp(&rank)) {
            Ok(i) => {
                if let Some((_, count)) = best.get_mut(i) {
                    *count += 1;
                }
            }
            Err(i) => best.insert(i, (rank, 1)),
        }
        let after = greatest(best);
        changes(slot, before, after)
    }

    /// Takes every record held for identifier set `idents` (an erasure retracts all the
    /// events of a set at once); returns the changes of the primary's greatest records.
    pub fn take(&mut self, idents: &[Ident]) -> Vec<RecordChange> {
        let (Some(primary), Some(taken)) = (idents.first(), self.sets.remove(idents)) else {
            return Vec::new();
        };
        self.held -= taken.len();
        let mut out = Vec::new();
        for (slot, rank) in taken {
            let key = (primary.clone(), slot);
            let Some(best) = self.best.get_mut(&key) else {
                continue;
            };
            let before = greatest(best);
            uncount(best, &rank);
            let after = greatest(best);
            if best.is_empty() {
                self.best.remove(&key);
            }
            out.extend(changes(key.1, before, after));
        }
        out
    }

    /// Records held: the greatest of each slot of each identifier set.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// The greatest record of each slot held for identifier set `idents`.
    pub fn of_set(&self, idents: &[Ident]) -> &[(Slot, Rank)] {
        self.sets.get(idents).map_or(&[], |records| records)
    }
}

/// The greatest of counted records.
fn greatest(best: &[(Rank, u32)]) -> Option<Rank> {
    best.last().map(|(rank, _)| rank.clone())
}

/// Removes one count of `rank`.
fn uncount(best: &mut Vec<(Rank, u32)>, rank: &Rank) {
    if let Ok(i) = best.binary_search_by(|(r, _)| r.cmp(rank))
        && let Some((_, count)) = best.get_mut(i)
    {
        *count -= 1;
        if *count == 0 {
            best.remove(i);
        }
    }
}

/// The dataflow's changes when a slot's greatest record goes from `before` to `after`.
fn changes(slot: Slot, before: Option<Rank>, after: Option<Rank>) -> Vec<RecordChange> {
    if before == after {
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Some(before) = before {
        out.push((slot.clone(), before, -1));
    }
    if let Some(after) = after {
        out.push((slot, after, 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent(t: u64, granted: bool) -> Rank {
        Rank::Consent(super::super::consent::precedence(t, granted))
    }

    #[test]
    fn only_the_greatest_record_of_a_primary_enters_the_dataflow() {
        let mut records = Records::default();
        let a = [Ident::new(0, "a")];
        let ab = [Ident::new(0, "a"), Ident::new(1, "b")];
        let slot = Slot::Consent(0);
        let c = |t, g| consent(t, g);
        let s = || slot.clone();
        assert_eq!(
            records.offer(&a, s(), c(10, true)),
            vec![(s(), c(10, true), 1)]
        );
        // an earlier record of the same set can never win; an equal one changes nothing
        assert!(records.offer(&a, s(), c(5, false)).is_empty());
        assert!(records.offer(&a, s(), c(10, true)).is_empty());
        // a later one replaces it
        let replaced = vec![(s(), c(10, true), -1), (s(), c(12, true), 1)];
        assert_eq!(records.offer(&a, s(), c(12, true)), replaced);
        // another set of the same primary is kept, but does not enter while lesser
        assert!(records.offer(&ab, s(), c(11, true)).is_empty());
        assert_eq!(records.len(), 2);
        // erasing the greater set brings the lesser one back
        let back = vec![(s(), c(12, true), -1), (s(), c(11, true), 1)];
        assert_eq!(records.take(&a), back);
        assert_eq!(records.len(), 1);
        assert!(records.take(&a).is_empty());
        assert_eq!(records.take(&ab), vec![(s(), c(11, true), -1)]);
        assert!(records.is_empty());
    }

    #[test]
    fn roles_retire_in_order_and_once() {
        let mut roles = Roles::default();
        let p = Node(Ident::new(0, "p"));
        roles.file(30, 1, 0, 0, p.clone(), 5);
        roles.file(20, 2, 0, 1, p.clone(), 4);
        assert!(roles.unfile(30, 1, 0, 0));
        assert!(!roles.unfile(30, 1, 0, 0));
        assert_eq!(roles.pop_due(19), None);
        assert_eq!(roles.pop_due(20), Some((p, (0, 1, 4, 2))));
        assert!(roles.is_empty());
    }
}
