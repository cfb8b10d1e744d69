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
//! the greatest can ever decide ([`Sets`]):
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

use bincode::Options;
use serde::{Deserialize, Serialize};

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

/// An event as retention cites it once the event itself is gone: by source, line and time
/// (SPEC section 9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cite {
    /// Its sequence number.
    pub seq: Seq,
    /// Where it was read.
    pub origin: super::Origin,
    /// Its timestamp (epoch ms).
    pub timestamp_ms: u64,
    /// The clock when it arrived.
    pub arrival_ms: u64,
}

impl Cite {
    /// Of two retired events, the one that retired last: the later timestamp (an event
    /// retires at `t` plus the horizon), then the later arrival.
    pub fn later(self, other: Cite) -> Cite {
        if (other.timestamp_ms, other.seq) >= (self.timestamp_ms, self.seq) {
            other
        } else {
            self
        }
    }

    /// The citation of an event.
    pub fn of(facts: &super::EventFacts) -> Cite {
        Cite {
            seq: facts.seq,
            origin: facts.origin,
            timestamp_ms: facts.timestamp_ms,
            arrival_ms: facts.arrival_ms,
        }
    }
}

/// A record kept for an identifier set: the greatest of its slot among the set's events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// What it decides.
    pub slot: Slot,
    /// Its rank ([`super::latest::Rank`]).
    pub rank: Rank,
    /// The event it came from.
    pub cite: Cite,
}

/// What is kept of the events with one identifier set (see the module docs): the greatest
/// record of each slot, and how many of the events retired.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Set {
    /// The identifiers, sorted by priority (the first is the primary).
    pub idents: Box<[Ident]>,
    /// Retired events with this set.
    pub retired: u32,
    /// Their signal occurrences (all weigh nothing).
    pub expired: u32,
    /// The last event of the set to retire.
    pub last: Cite,
    /// The greatest record of each slot, ascending by slot, each encoded ([`encode`]: a
    /// third of the decoded record with its strings; a set's records are read only when
    /// one of its events brings a record, or an erasure or explanation reads it).
    records: Vec<Box<[u8]>>,
}

/// The encoding of a kept record (varint `bincode`, which never fails on these types).
fn encode(kept: &Kept) -> Box<[u8]> {
    let bytes = bincode::DefaultOptions::new().serialize(kept);
    bytes.unwrap_or_default().into_boxed_slice()
}

/// Decodes what [`encode`] wrote.
fn decode(bytes: &[u8]) -> Option<Kept> {
    bincode::DefaultOptions::new().deserialize(bytes).ok()
}

impl Set {
    /// Counts `retired` more retired events with `expired` signal occurrences, `last` the
    /// latest of them: the set's last is then whichever retired last ([`Cite::later`]).
    fn count(&mut self, retired: u32, expired: u32, last: Cite) {
        self.last = if self.retired == 0 {
            last
        } else {
            self.last.later(last)
        };
        self.retired += retired;
        self.expired += expired;
    }

    /// The records kept, ascending by slot.
    pub fn records(&self) -> impl Iterator<Item = Kept> + '_ {
        self.records.iter().filter_map(|bytes| decode(bytes))
    }

    /// The index of `slot`'s record, or where it goes, and the record.
    fn find(&self, slot: &Slot) -> (Result<usize, usize>, Option<Kept>) {
        let (mut low, mut high) = (0, self.records.len());
        while low < high {
            let mid = (low + high) / 2;
            let Some(kept) = self.records.get(mid).and_then(|bytes| decode(bytes)) else {
                return (Err(low), None);
            };
            match kept.slot.cmp(slot) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return (Ok(mid), Some(kept)),
            }
        }
        (Err(low), None)
    }

    fn rank(&self, slot: &Slot) -> Option<Rank> {
        self.find(slot).1.map(|kept| kept.rank)
    }
}

/// What is kept of the retired events of one identifier set once compaction folds them
/// into a [`crate::event::residue::Span`] of the log: a replay restores it
/// ([`crate::dataflow::Inputs::restore`]) to exactly what the engine held for them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The identifiers, sorted by priority.
    pub idents: Vec<Ident>,
    /// Retired events with this set.
    pub retired: u32,
    /// Their signal occurrences.
    pub expired: u32,
    /// The last of them.
    pub last: Cite,
    /// The greatest record of each slot among them.
    pub records: Vec<Kept>,
}

impl Summary {
    /// Its stored form (varint `bincode`, which never fails on these types).
    pub fn encode(&self) -> Vec<u8> {
        bincode::DefaultOptions::new()
            .serialize(self)
            .unwrap_or_default()
    }

    /// Reads what [`Summary::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Summary, String> {
        bincode::DefaultOptions::new()
            .deserialize(bytes)
            .map_err(|e| format!("unreadable identifier set in a compacted span: {e}"))
    }
}

/// A change of the record the dataflow holds for (primary, slot): `(slot, rank, diff)`.
pub type RecordChange = (Slot, Rank, isize);

/// The identifier sets that retention keeps something of (records that can still win,
/// retired events), found by their identifiers, and per primary identifier and slot the
/// sets ordered by their record, whose greatest alone enters the dataflow (records are
/// attributed by their primary identifier, so a lesser one of the same primary never
/// decides while the greater stays).
#[derive(Default)]
pub struct Sets {
    /// Sets by id; `None` once erased (the id is reused).
    slab: Vec<Option<Set>>,
    free: Vec<u32>,
    /// Ids by the hash of their identifiers (compared through the slab).
    table: hashbrown::HashTable<u32>,
    /// Ids by the 32-bit hash of each of their identifiers.
    by_ident: griddle::HashMap<u32, Vec<u32>>,
    /// Per (primary, slot): ids of the sets with a record of the slot, ascending by it.
    best: HashMap<(Ident, Slot), Vec<u32>>,
    records: usize,
    retired: u64,
}

fn set_hash(idents: &[Ident]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for id in idents {
        hash = (hash ^ u64::from(id.short_hash())).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

impl Sets {
    fn get(&self, id: u32) -> Option<&Set> {
        self.slab.get(id as usize)?.as_ref()
    }

    fn get_mut(&mut self, id: u32) -> Option<&mut Set> {
        self.slab.get_mut(id as usize)?.as_mut()
    }

    /// The id of set `idents`, if kept.
    fn find(&self, idents: &[Ident]) -> Option<u32> {
        let slab = &self.slab;
        let same = |id: &u32| {
            let set = slab.get(*id as usize).and_then(Option::as_ref);
            set.is_some_and(|s| *s.idents == *idents)
        };
        self.table.find(set_hash(idents), same).copied()
    }

    /// The id of set `idents`, made if new.
    fn find_or_make(&mut self, idents: &[Ident], cite: Cite) -> u32 {
        if let Some(id) = self.find(idents) {
            return id;
        }
        let set = Set {
            idents: idents.into(),
            retired: 0,
            expired: 0,
            last: cite,
            records: Vec::new(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                if let Some(slot) = self.slab.get_mut(id as usize) {
                    *slot = Some(set);
                }
                id
            }
            None => {
                self.slab.push(Some(set));
                (self.slab.len() - 1) as u32
            }
        };
        let slab = &self.slab;
        let rehash = |id: &u32| {
            let set = slab.get(*id as usize).and_then(Option::as_ref);
            set.map_or(0, |s| set_hash(&s.idents))
        };
        self.table.insert_unique(set_hash(idents), id, rehash);
        for ident in idents {
            self.by_ident
                .entry(ident.short_hash())
                .or_default()
                .push(id);
        }
        id
    }

    /// Offers a record of an event with identifier set `idents` (sorted by priority, each
    /// once): kept if it is the greatest of its slot for the set. Returns the changes of
    /// the record the dataflow holds for the primary and slot.
    pub fn offer(&mut self, idents: &[Ident], kept: Kept) -> Vec<RecordChange> {
        let Some(primary) = idents.first() else {
            return Vec::new();
        };
        let key = (primary.clone(), kept.slot.clone());
        let before = self.greatest(&key);
        let id = self.find_or_make(idents, kept.cite);
        let Some(set) = self.get_mut(id) else {
            return Vec::new();
        };
        let slot = kept.slot.clone();
        match set.find(&slot) {
            (Ok(i), Some(held)) if held.rank < kept.rank => {
                if let Some(bytes) = set.records.get_mut(i) {
                    *bytes = encode(&kept);
                }
            }
            (Err(i), _) => {
                set.records.insert(i, encode(&kept));
                self.records += 1;
            }
            _ => return Vec::new(),
        }
        let mut ids = self.best.remove(&key).unwrap_or_default();
        ids.retain(|&other| other != id);
        let rank = self.get(id).and_then(|s| s.rank(&key.1));
        let at = ids.partition_point(|&other| self.get(other).and_then(|s| s.rank(&key.1)) <= rank);
        ids.insert(at, id);
        self.best.insert(key.clone(), ids);
        let after = self.greatest(&key);
        changes(key.1, before, after)
    }

    /// The greatest record the sets of (primary, slot) hold.
    fn greatest(&self, key: &(Ident, Slot)) -> Option<Rank> {
        let &id = self.best.get(key)?.last()?;
        self.get(id)?.rank(&key.1)
    }

    /// Counts a retired event in its set.
    pub fn retire(&mut self, facts: &super::EventFacts) {
        let cite = Cite::of(facts);
        let id = self.find_or_make(&facts.idents, cite);
        if let Some(set) = self.get_mut(id) {
            set.count(1, facts.signals.len() as u32, cite);
        }
        self.retired += 1;
    }

    /// Adds what a span kept of an identifier set (the events it counts retired, its
    /// records offered in turn); returns the changes of the records the dataflow holds.
    pub fn absorb(&mut self, summary: &Summary) -> Vec<RecordChange> {
        let id = self.find_or_make(&summary.idents, summary.last);
        if let Some(set) = self.get_mut(id) {
            set.count(summary.retired, summary.expired, summary.last);
        }
        self.retired += u64::from(summary.retired);
        let mut out = Vec::new();
        for kept in &summary.records {
            out.extend(self.offer(&summary.idents, kept.clone()));
        }
        out
    }

    /// What is kept of each set with retired events, in the order the sets were made.
    pub fn summaries(&self) -> Vec<Summary> {
        let sets = self.slab.iter().flatten().filter(|s| s.retired > 0);
        sets.map(|set| Summary {
            idents: set.idents.to_vec(),
            retired: set.retired,
            expired: set.expired,
            last: set.last,
            records: set.records().collect(),
        })
        .collect()
    }

    /// Takes set `idents` (an erasure retracts all the events of a set at once): how many
    /// of its events had retired, and the changes of the records the dataflow holds.
    pub fn take(&mut self, idents: &[Ident]) -> (u32, Vec<RecordChange>) {
        let Some(id) = self.find(idents) else {
            return (0, Vec::new());
        };
        let Some(set) = self.slab.get_mut(id as usize).and_then(Option::take) else {
            return (0, Vec::new());
        };
        if let Ok(entry) = self
            .table
            .find_entry(set_hash(idents), |&other| other == id)
        {
            entry.remove();
        }
        self.free.push(id);
        for ident in idents {
            let hash = ident.short_hash();
            if let Some(ids) = self.by_ident.get_mut(&hash) {
                ids.retain(|&other| other != id);
                if ids.is_empty() {
                    self.by_ident.remove(&hash);
                }
            }
        }
        self.records -= set.records.len();
        self.retired -= u64::from(set.retired);
        let mut out = Vec::new();
        if let Some(primary) = idents.first() {
            for kept in set.records() {
                let key = (primary.clone(), kept.slot);
                // the set left the slab: the greatest before is either it or still there
                let still = self.greatest(&key);
                let before = match &still {
                    Some(rank) if *rank > kept.rank => Some(rank.clone()),
                    _ => Some(kept.rank.clone()),
                };
                if let Some(ids) = self.best.get_mut(&key) {
                    ids.retain(|&other| other != id);
                    if ids.is_empty() {
                        self.best.remove(&key);
                    }
                }
                let after = self.greatest(&key);
                out.extend(changes(key.1, before, after));
            }
        }
        (set.retired, out)
    }

    /// The sets whose identifiers include `ident`.
    pub fn carrying<'a>(&'a self, ident: &'a Ident) -> impl Iterator<Item = &'a Set> + 'a {
        let ids = self.by_ident.get(&ident.short_hash()).into_iter().flatten();
        ids.filter_map(|&id| self.get(id))
            .filter(move |set| set.idents.contains(ident))
    }

    /// The identifier sets carrying an identifier in `erased`.
    pub fn carrying_any(&self, erased: &std::collections::HashSet<Ident>) -> Vec<Box<[Ident]>> {
        let mut ids: Vec<u32> = erased
            .iter()
            .flat_map(|id| self.by_ident.get(&id.short_hash()).into_iter().flatten())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| self.get(id))
            .filter(|set| set.idents.iter().any(|i| erased.contains(i)))
            .map(|set| set.idents.clone())
            .collect()
    }

    /// Records kept (the greatest of each slot of each set).
    pub fn records(&self) -> usize {
        self.records
    }

    /// Retired events counted.
    pub fn retired(&self) -> u64 {
        self.retired
    }

    /// Sets kept.
    pub fn len(&self) -> usize {
        self.slab.len() - self.free.len()
    }

    /// Whether no set is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        let mut sets = Sets::default();
        let a = [Ident::new(0, "a")];
        let ab = [Ident::new(0, "a"), Ident::new(1, "b")];
        let slot = Slot::Consent(0);
        let c = |t, g| consent(t, g);
        let s = || slot.clone();
        let kept = |rank| Kept {
            slot: s(),
            rank,
            cite: Cite::default(),
        };
        assert_eq!(
            sets.offer(&a, kept(c(10, true))),
            vec![(s(), c(10, true), 1)]
        );
        // an earlier record of the same set can never win; an equal one changes nothing
        assert!(sets.offer(&a, kept(c(5, false))).is_empty());
        assert!(sets.offer(&a, kept(c(10, true))).is_empty());
        // a later one replaces it
        let replaced = vec![(s(), c(10, true), -1), (s(), c(12, true), 1)];
        assert_eq!(sets.offer(&a, kept(c(12, true))), replaced);
        // another set of the same primary is kept, but does not enter while lesser
        assert!(sets.offer(&ab, kept(c(11, true))).is_empty());
        assert_eq!(sets.records(), 2);
        // erasing the greater set brings the lesser one back
        let back = vec![(s(), c(12, true), -1), (s(), c(11, true), 1)];
        assert_eq!(sets.take(&a), (0, back));
        assert_eq!(sets.records(), 1);
        assert_eq!(sets.take(&a), (0, Vec::new()));
        assert_eq!(sets.take(&ab), (0, vec![(s(), c(11, true), -1)]));
        assert!(sets.is_empty());
        assert_eq!(sets.records(), 0);
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
