//! The dataflow: one module per maintained collection, wired together by [`build`].
//!
//! Data flows one way: accepted events (sent by the engine's worker 0) → [`keeper`]s (each
//! worker's share of the events, partitioned by identifier set: their history, presence
//! counts, decay timer and retention) → the input collections → [`identity`] ([`labels`] of the links, profiles; every per-event input is keyed by the
//! event's primary identifier, whose label is its profile) → [`intent`], [`latest`] →
//! [`views`] (rows) → the output capture that the engine writes to the sinks.
//!
//! Time is the engine clock in epoch ms refined by a step counter, packed in a `u64` as
//! `ms << STEP_BITS | step` (see [`time()`]), so the engine can complete part of one clock
//! value (for low latency on live input) and still report consolidated changes per
//! millisecond.

pub mod consent;
pub mod history;
pub mod identity;
pub mod intent;
pub mod keeper;
pub mod labels;
pub mod latest;
pub mod lookup;
pub mod profiles;
pub mod retention;
pub mod timer;
pub mod traits;
pub mod views;

use std::cell::RefCell;

use griddle::hash_map::{Entry, RawEntryMut};
use std::hash::BuildHasher;
use std::hash::Hash;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Exchange as _, Inspect, Probe};
use timely::worker::Worker;

use crate::event::{Event, Ident};
use crate::spec::Spec;
pub use keeper::{Feed, Keepers};
pub use views::ViewRow;

/// Dataflow time: `ms << STEP_BITS | step` (engine clock in epoch ms, step within that ms).
pub type Time = u64;
/// Bits of a [`Time`] that count steps within one millisecond.
pub const STEP_BITS: u32 = 20;
pub use crate::event::timestamp::MAX_CLOCK_MS;
// every clock value up to MAX_CLOCK_MS, and every step, fits in a `Time`
const _: () = assert!(MAX_CLOCK_MS == (1 << (64 - STEP_BITS)) - 1);

/// An identifier as a dataflow key. Arrangements order their keys, but no stage's result
/// depends on the order of identifier keys (the SPEC's order decides only inside values:
/// labels, and identifier lists in rows), so keys are ordered by [`Ident::hash_cmp`], which
/// compares the cached hashes and reads the strings only on a tie.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Node(pub Ident);

impl Ord for Node {
    fn cmp(&self, other: &Node) -> std::cmp::Ordering {
        self.0.hash_cmp(&other.0)
    }
}

impl PartialOrd for Node {
    fn partial_cmp(&self, other: &Node) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The dataflow time of step `step` at clock `ms`.
pub fn time(ms: u64, step: u32) -> Time {
    (ms << STEP_BITS) | u64::from(step)
}

/// The engine clock (epoch ms) of a dataflow time.
pub fn clock_of(t: Time) -> u64 {
    t >> STEP_BITS
}

/// The step of a dataflow time within its millisecond.
pub fn step_of(t: Time) -> u32 {
    (t & ((1 << STEP_BITS) - 1)) as u32
}
/// An accepted event's sequence number (arrival order).
pub type Seq = u64;
/// An arrangement of `(key, value)` pairs at dataflow time, built once and shared by the
/// stages that join with it.
pub type ByKey<'s, K, V> = differential_dataflow::operators::arrange::Arranged<
    's,
    differential_dataflow::operators::arrange::TraceAgent<
        differential_dataflow::trace::implementations::ValSpine<K, V, Time, isize>,
    >,
>;
/// A collection at dataflow time with integer multiplicities.
pub type Coll<'s, D> = VecCollection<'s, Time, D, isize>;

/// What one accepted event contributes to the dataflow. A pure function of the event and
/// the clock when it arrived, so retracting an event is exactly the negation of inserting it
/// (scheduled decay included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFacts {
    /// Arrival order of the event.
    pub seq: Seq,
    /// Its identifiers, sorted by priority, each once, never empty.
    pub idents: Vec<Ident>,
    /// More than `max_links + 1` identifiers: every one of them is a hub by this event alone.
    pub wide: bool,
    /// The event's own timestamp (epoch ms).
    pub timestamp_ms: u64,
    /// The engine clock when it was inserted (its weights are evaluated from then on).
    pub arrival_ms: u64,
    /// Signals it matches (indices into the spec's signals).
    pub signals: Vec<u16>,
    /// Its roles in sequences: (sequence index, 0 = first, 1 = then).
    pub roles: Vec<(u16, u8)>,
    /// Its consent records: (purpose index, granted).
    pub consent: Vec<(u8, bool)>,
    /// Its trait values: (key, source: 1 = traits, 0 = context.traits, JSON text).
    pub traits: Vec<(String, u8, String)>,
    /// Its messageId (trait order uses it; explanations name events by it).
    pub message_id: Option<Box<str>>,
    /// Where it was read.
    pub origin: Origin,
    /// Blocklisted values it carried (explanations report them).
    pub blocked: Box<[Ident]>,
}

/// Where an accepted event was read: its input source (by index) and line number there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Index of the source (stdin, an `--input` file, the server's log).
    pub source: u16,
    /// 1-based line number within it.
    pub line: u64,
}

/// The names lines are cited under in dead letters and explanations, by source index.
#[derive(Debug, Clone, Default)]
pub struct SourceNames {
    names: Vec<String>,
    /// The Kafka topic whose partition `p` is source `names.len() + p` (`serve --source`,
    /// whose partitions are not known when the engine starts).
    partitions: Option<String>,
}

impl SourceNames {
    /// Sources `0..names.len()`.
    pub fn new(names: Vec<String>) -> SourceNames {
        SourceNames {
            names,
            partitions: None,
        }
    }

    /// Also the partitions of `topic` (`kafka://HOST/TOPIC`), after the named sources.
    pub fn with_partitions(mut self, topic: String) -> SourceNames {
        self.partitions = Some(topic);
        self
    }

    /// The name of source `index`: `kafka://HOST/TOPIC#P` for a partition; empty when unknown.
    pub fn name(&self, index: u16) -> String {
        let index = usize::from(index);
        match (self.names.get(index), &self.partitions) {
            (Some(name), _) => name.clone(),
            (None, Some(topic)) => format!("{topic}#{}", index - self.names.len()),
            (None, None) => String::new(),
        }
    }
}

impl EventFacts {
    /// The facts of an accepted event read at `origin` and inserted when the clock is
    /// `arrival_ms`.
    pub fn of(seq: Seq, event: &Event, spec: &Spec, arrival_ms: u64, origin: Origin) -> EventFacts {
        let signals = crate::event::signals::matched(&spec.intent, event);
        let mut roles = Vec::new();
        for (q, sequence) in spec.intent.sequences.iter().enumerate() {
            if signals.contains(&(sequence.first as u16)) {
                roles.push((q as u16, 0));
            }
            if signals.contains(&(sequence.then as u16)) {
                roles.push((q as u16, 1));
            }
        }
        let traits = crate::event::profile_data::traits(event);
        EventFacts {
            seq,
            idents: event.idents.clone(),
            wide: labels::is_wide(event.idents.len(), spec.identity.max_links),
            timestamp_ms: event.timestamp_ms,
            arrival_ms,
            signals,
            roles,
            consent: crate::event::profile_data::consent(event, &spec.consent),
            message_id: event.message_id.as_deref().map(Box::from),
            traits,
            origin,
            blocked: event.blocked.clone().into_boxed_slice(),
        }
    }
}

/// Updates of one collection: `(data, time, diff)`.
pub type Updated<D> = Vec<(D, Time, isize)>;

/// Changes to the dataflow's input collections, as a keeper makes them ([`Inputs`],
/// [`keeper`]): `(data, time, diff)` per collection, each at the keeper's time or later.
#[derive(Default)]
pub struct Updates {
    /// Identifiers (the nodes of the identity graph).
    pub nodes: Updated<Node>,
    /// Links, each way.
    pub pairs: Updated<(Node, Node)>,
    /// Identifiers of events with too many identifiers (hubs by that event alone).
    pub wide: Updated<Node>,
    /// Weights and activity markers of signal occurrences, by the event's primary
    /// identifier: `(primary, (signal id, stream))`.
    pub signals: Updated<(Node, (u16, timer::Stream))>,
    /// The same for sequence bonuses, by event and sequence id (whether a bonus counts
    /// depends on the event): `((event, id), (primary, stream))`.
    pub bonuses: Updated<intent::Bonus>,
    /// Sequence roles by primary identifier: `(primary, (sequence, role, time, event))`.
    pub roles: Updated<intent::Role>,
    /// Consent and trait records, by primary identifier and what they decide (see
    /// [`latest`]).
    pub records: Updated<(Node, (latest::Slot, latest::Rank))>,
}

/// What one keeper ([`keeper`]) feeds the dataflow: the updates its share of the events
/// makes to the input collections ([`Updates`]).
///
/// Nodes, links and wide marks are sets in the SPEC but arrive as multisets (every event
/// repeats its identifiers). A local count per element forwards only the transitions between
/// absent and present, so the dataflow sees each element once per keeper holding it instead
/// of once per event, and a retraction that brings a count back to zero removes it. The
/// labels count what they receive ([`labels::Graph`]), so an element two keepers hold is
/// one element, and the dataflow needs no `distinct` (nor its arrangement).
///
/// An event belongs to the profile of its highest-priority identifier (SPEC section 3), so
/// its occurrences, sequence roles and records are keyed by that identifier and joined with
/// the labels directly; a signal's occurrences need no event at all, and those of one
/// identifier sum into one update.
///
/// Weighted occurrences carry their weight as multiplicity. Of each weight schedule
/// ([`intent::Decay::schedule`]) only the steps already due enter the dataflow; the rest wait
/// in a [`timer::DecayTimer`] and enter at their own times as the clock reaches them.
pub struct Inputs {
    /// The current time: updates are made at it, or later (decay steps).
    now: Time,
    /// Updates made and not yet taken ([`Inputs::take_updates`]).
    out: Updates,
    node_counts: Presence<Ident>,
    pair_counts: Presence<(Ident, Ident)>,
    wide_counts: Presence<Ident>,
    decay: intent::Decay,
    /// Weight and activity steps not yet due.
    timer: timer::DecayTimer,
    /// Points × 1000 by scored id: signals, then sequences.
    points: Vec<i64>,
    num_signals: u16,
    max_links: usize,
    /// Whether roles and records retire (SPEC section 9, [`retention`]).
    retention: retention::Retention,
    horizon: retention::Horizon,
    /// Roles in the dataflow, by when they retire.
    retiring: retention::Roles,
    /// The records that can still win and the retired events, per identifier set.
    sets: retention::Sets,
}

/// Counts of a multiset, reporting when an element appears or disappears.
struct Presence<K> {
    /// Grows without stalls (see `griddle` in Cargo.toml).
    counts: griddle::HashMap<K, u32>,
}

impl<K: Hash + Eq> Presence<K> {
    fn new() -> Self {
        Presence {
            counts: griddle::HashMap::new(),
        }
    }

    /// Counts one more `key` and replaces it by the copy held, if any (so every live copy
    /// shares the held one's string); returns whether it appeared.
    fn add_shared(&mut self, key: &mut K) -> bool
    where
        K: Clone,
    {
        if let Some((held, count)) = self.counts.get_key_value_mut(key) {
            *count += 1;
            *key = held.clone();
            return false;
        }
        self.counts.insert(key.clone(), 1);
        true
    }

    /// Applies `diff` to the key `probe` stands for (it hashes as the key does, and `is`
    /// recognises the key); returns +1 if it appeared, -1 if it disappeared. The key is made
    /// (`key`) only when it appears: a count that moves copies nothing.
    fn update<Q: Hash>(
        &mut self,
        probe: Q,
        is: impl Fn(&K) -> bool,
        key: impl FnOnce() -> K,
        diff: isize,
    ) -> Option<isize> {
        let hash = self.counts.hasher().hash_one(probe);
        match self.counts.raw_entry_mut().from_hash(hash, is) {
            RawEntryMut::Vacant(slot) if diff > 0 => {
                slot.insert_hashed_nocheck(hash, key(), diff as u32);
                Some(1)
            }
            RawEntryMut::Vacant(_) => None,
            RawEntryMut::Occupied(mut slot) => {
                let next = *slot.get() as isize + diff;
                if next <= 0 {
                    slot.remove();
                    Some(-1)
                } else {
                    *slot.get_mut() = next as u32;
                    None
                }
            }
        }
    }
}

impl Presence<Ident> {
    /// [`Presence::update`] of one identifier.
    fn update_one(&mut self, id: &Ident, diff: isize) -> Option<isize> {
        self.update(id, |k| k == id, || id.clone(), diff)
    }
}

impl Inputs {
    /// The input state of a keeper for `spec`, at time 0.
    pub fn new(spec: &Spec, retention: retention::Retention) -> Inputs {
        let num_signals = spec.intent.signals.len() as u16;
        Inputs {
            now: 0,
            out: Updates::default(),
            node_counts: Presence::new(),
            pair_counts: Presence::new(),
            wide_counts: Presence::new(),
            decay: intent::Decay::of(&spec.intent),
            timer: timer::DecayTimer::default(),
            points: spec.intent.scored().map(|(_, points)| points).collect(),
            num_signals,
            max_links: spec.identity.max_links,
            retention,
            horizon: retention::Horizon::of(spec),
            retiring: retention::Roles::default(),
            sets: retention::Sets::default(),
        }
    }

    /// Inserts a new event's facts at the current time, replacing each identifier by the
    /// handle the dataflow already holds for it, if any: every live copy of an identifier
    /// shares one string (less memory, and equal identifiers compare by pointer).
    pub fn insert(&mut self, facts: &mut EventFacts) {
        for id in &mut facts.idents {
            if self.node_counts.add_shared(id) {
                self.out.nodes.push((Node(id.clone()), self.now, 1));
            }
        }
        self.update_edges_and_records(facts, 1);
    }

    /// Inserts (`diff = 1`) or retracts (`diff = -1`) an event's facts at the current time.
    pub fn update(&mut self, facts: &EventFacts, diff: isize) {
        for id in &facts.idents {
            if let Some(d) = self.node_counts.update_one(id, diff) {
                self.out.nodes.push((Node(id.clone()), self.now, d));
            }
        }
        self.update_edges_and_records(facts, diff);
    }

    /// Counts an event that retired (left the history, [`retention`]) in its identifier
    /// set: what it still adds to the dataflow (identifiers, links, records) stays.
    pub fn retire(&mut self, facts: &EventFacts) {
        self.sets.retire(facts);
    }

    /// Erasure (SPEC section 6) of the retired events carrying an identifier in `erased`:
    /// their identifiers, links or wide marks, and the records kept for their sets. What
    /// else they inserted has retired already ([`retention`]).
    pub fn erase_retired(&mut self, erased: &std::collections::HashSet<Ident>) {
        for idents in self.sets.carrying_any(erased) {
            let (retired, records) = self.sets.take(&idents);
            self.apply_records(&idents, records);
            self.count_identity(&idents, -(retired as isize));
        }
    }

    /// Counts `n` more (or fewer) events with identifier set `idents` in the nodes and the
    /// links (or wide marks): all that a retired event still adds to the graph.
    fn count_identity(&mut self, idents: &[Ident], n: isize) {
        if n == 0 {
            return;
        }
        for id in idents {
            if let Some(d) = self.node_counts.update_one(id, n) {
                self.out.nodes.push((Node(id.clone()), self.now, d));
            }
        }
        let wide = labels::is_wide(idents.len(), self.max_links);
        self.update_links(idents, wide, n);
    }

    /// Restores what a compacted span kept of an identifier set's retired events
    /// ([`retention::Summary`]): their identifiers and links (or wide marks), counted once
    /// per event, and their records: what [`Inputs::insert`] and then
    /// [`Inputs::retire`] of each left in the dataflow.
    pub fn restore(&mut self, summary: &retention::Summary) {
        self.count_identity(&summary.idents, summary.retired as isize);
        let changes = self.sets.absorb(summary);
        self.apply_records(&summary.idents, changes);
    }

    /// What retention keeps of identifier sets (explanations read it).
    pub fn sets(&self) -> &retention::Sets {
        &self.sets
    }

    /// Sends changes of the records held for the primary of `idents`.
    fn apply_records(&mut self, idents: &[Ident], changes: Vec<retention::RecordChange>) {
        let Some(first) = idents.first() else {
            return;
        };
        let primary = Node(first.clone());
        for (slot, rank, diff) in changes {
            self.out
                .records
                .push(((primary.clone(), (slot, rank)), self.now, diff));
        }
    }

    /// Links between every two identifiers of an event, or its wide marks, times `diff`.
    fn update_links(&mut self, idents: &[Ident], wide: bool, diff: isize) {
        if wide {
            for id in idents {
                if let Some(d) = self.wide_counts.update_one(id, diff) {
                    self.out.wide.push((Node(id.clone()), self.now, d));
                }
            }
            return;
        }
        // idents are sorted and distinct: each unordered pair once, sent both ways
        for (i, a) in idents.iter().enumerate() {
            for b in idents.get(i + 1..).unwrap_or_default() {
                // hashes as the pair `(a, b)` does (a reference hashes as its referent)
                let is = |(x, y): &(Ident, Ident)| x == a && y == b;
                let pair = || (a.clone(), b.clone());
                if let Some(d) = self.pair_counts.update((a, b), is, pair, diff) {
                    let (a, b) = (Node(a.clone()), Node(b.clone()));
                    self.out.pairs.push(((a.clone(), b.clone()), self.now, d));
                    self.out.pairs.push(((b, a), self.now, d));
                }
            }
        }
    }

    /// What [`Inputs::update`] and [`Inputs::insert`] do besides the nodes: links or wide
    /// marks, the primary identifier, occurrences, sequence roles and records.
    fn update_edges_and_records(&mut self, facts: &EventFacts, diff: isize) {
        self.update_links(&facts.idents, facts.wide, diff);
        // every per-event fact is keyed by the event's primary identifier, which the
        // labels attribute to a profile (SPEC section 3, last paragraph)
        let Some(first) = facts.idents.first() else {
            return;
        };
        let primary = Node(first.clone());
        for &signal in &facts.signals {
            self.schedule(facts, &primary, signal, diff);
        }
        for &(q, role) in &facts.roles {
            self.role(facts, &primary, q, role, diff);
            if role == 1 {
                self.schedule(facts, &primary, self.num_signals + q, diff);
            }
        }
        for (slot, rank) in latest::records_of(facts) {
            self.record(facts, &primary, slot, rank, diff);
        }
        if diff < 0 && self.retention == retention::Retention::Retire {
            self.retract_records(&facts.idents);
        }
    }

    /// Inserts or retracts a sequence role; with retention, only while it can still earn
    /// a bonus that weighs anything ([`retention::Horizon::role_retires`]).
    fn role(&mut self, facts: &EventFacts, primary: &Node, q: u16, role: u8, diff: isize) {
        let (t, seq) = (facts.timestamp_ms, facts.seq);
        if self.retention == retention::Retention::Retire {
            let retires = self.horizon.role_retires(t, q);
            let live = if diff > 0 {
                let live = retires > clock_of(self.time());
                if live {
                    self.retiring
                        .file(retires, seq, q, role, primary.clone(), t);
                }
                live
            } else {
                self.retiring.unfile(retires, seq, q, role)
            };
            if !live {
                return;
            }
        }
        self.out
            .roles
            .push(((primary.clone(), (q, role, t, seq)), self.now, diff));
    }

    /// Inserts a consent or trait record (`diff > 0`); with retention only if it is the
    /// greatest of its slot for the event's identifier set, retracting the one it
    /// supersedes ([`retention::Sets::offer`]). Without retention, also retracts; with it, a
    /// retraction takes the set's records at once ([`Inputs::retract_records`], the one
    /// path by which a retraction of a set's events, live or retired, reaches the records).
    fn record(
        &mut self,
        facts: &EventFacts,
        primary: &Node,
        slot: latest::Slot,
        rank: latest::Rank,
        diff: isize,
    ) {
        if self.retention == retention::Retention::KeepAll {
            self.out
                .records
                .push(((primary.clone(), (slot, rank)), self.now, diff));
            return;
        }
        if diff <= 0 {
            return; // the set's records go at once (`retract_records`)
        }
        let kept = retention::Kept {
            slot,
            rank,
            cite: retention::Cite::of(facts),
        };
        let changes = self.sets.offer(&facts.idents, kept);
        self.apply_records(&facts.idents, changes);
    }

    /// Retracts the records kept for identifier set `idents` (an erasure retracts all its
    /// events at once).
    fn retract_records(&mut self, idents: &[Ident]) {
        let (_, changes) = self.sets.take(idents);
        self.apply_records(idents, changes);
    }

    /// Roles waiting to retire (for `/metrics`).
    pub fn roles_waiting(&self) -> usize {
        self.retiring.len()
    }

    /// Inserts an occurrence's weight schedule and activity interval (times `diff`): the
    /// steps due now go to the dataflow at the current time, the occurrence to the timer
    /// under its next step.
    fn schedule(&mut self, facts: &EventFacts, primary: &Node, id: u16, diff: isize) {
        let occurrence = timer::Occurrence {
            primary: primary.clone(),
            t: facts.timestamp_ms,
            arrival: facts.arrival_ms,
            mult: diff as i64,
        };
        let now = self.time();
        self.release(facts.seq, id, occurrence, 0..=clock_of(now), Some(now));
    }

    /// Sends the steps of `occurrence` due in `due` (clock ms) to the dataflow, at `at` or
    /// else each at its own time, and files the occurrence in the timer under its first
    /// step after `due`, if any. Insertion, retraction and the timer's firing all go
    /// through here, so a retraction's entry meets the insertion's under the same step.
    fn release(
        &mut self,
        seq: Seq,
        id: u16,
        occurrence: timer::Occurrence,
        due: std::ops::RangeInclusive<u64>,
        at: Option<Time>,
    ) {
        let steps = self.steps(id, &occurrence);
        for &(ms, stream, delta) in steps.iter().filter(|(ms, _, _)| due.contains(ms)) {
            let time = at.unwrap_or(self::time(ms, 0));
            let (primary, delta) = (&occurrence.primary, delta * occurrence.mult);
            self.occur(seq, id, primary, stream, delta, time);
        }
        if let Some(&(next, _, _)) = steps.iter().find(|(ms, _, _)| ms > due.end()) {
            self.timer.add(next, seq, id, occurrence);
        }
    }

    /// The steps of `occurrence` of scored id `id` ([`intent::Decay::steps`]).
    fn steps(&self, id: u16, occurrence: &timer::Occurrence) -> Vec<(u64, timer::Stream, i64)> {
        let points = self.points.get(id as usize).copied().unwrap_or(0);
        self.decay.steps(points, occurrence.t, occurrence.arrival)
    }

    /// Sends a step to the dataflow at `time`: a signal's by the event's primary identifier,
    /// a sequence bonus's by event (whether it counts depends on the event).
    fn occur(
        &mut self,
        seq: Seq,
        id: u16,
        primary: &Node,
        stream: timer::Stream,
        delta: i64,
        time: Time,
    ) {
        let delta = delta as isize;
        if id < self.num_signals {
            let key = (primary.clone(), (id, stream));
            self.out.signals.push((key, time, delta));
        } else {
            let key = ((seq, id), (primary.clone(), stream));
            self.out.bonuses.push((key, time, delta));
        }
    }

    /// Moves every input forward to `time` (never backwards). Decay steps that fall due in
    /// between enter the dataflow at their own times.
    pub fn advance_to(&mut self, time: Time) {
        if clock_of(time) > clock_of(self.time()) {
            // in due order; an occurrence's next step may fall due in the same advance
            while let Some(((ms, seq, id), occurrence)) = self.timer.pop_due(clock_of(time)) {
                self.release(seq, id, occurrence, ms..=ms, None);
            }
        }
        self.now = self.now.max(time);
        while let Some(role) = self.retiring.pop_due(clock_of(time)) {
            self.out.roles.push((role, self.now, -1));
        }
    }

    /// The current input time.
    pub fn time(&self) -> Time {
        self.now
    }

    /// Takes the updates made since the last call: `(update, time, diff)`, each at the
    /// current time or later.
    pub fn take_updates(&mut self) -> Updates {
        std::mem::take(&mut self.out)
    }
}

/// Captured updates: (data, time, diff), in arrival order.
pub type Captured<D> = Rc<RefCell<Vec<(D, Time, isize)>>>;

/// View changes and profile-count changes captured at worker 0 (other workers' copies stay
/// empty), with the probe that says which times are complete.
pub struct Outputs {
    /// View row changes not yet taken by the engine.
    pub changes: Captured<ViewRow>,
    /// Net change in the number of profiles, not yet taken by the engine.
    pub profiles: Rc<RefCell<i64>>,
    /// Answers to [`Feed::query`]: ((query id, (profile, fact)), time, diff).
    pub answers: Captured<(u64, (Ident, views::Fact))>,
    /// Passes a time once all outputs up to it are captured.
    pub probe: ProbeHandle<Time>,
}

/// Moves every update of `collection` to worker 0's `sink`; `probe` passes a time once the
/// sink holds every update at it.
fn capture<D: differential_dataflow::ExchangeData>(
    collection: Coll<'_, D>,
    sink: Captured<D>,
    probe: &ProbeHandle<Time>,
) {
    collection
        .inner
        .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(|_: &(D, Time, isize)| 0),
            "Capture",
            move |_, _| {
                move |input, _output| {
                    input.for_each(|_, data| sink.borrow_mut().append(data));
                }
            },
        )
        .probe_with(probe);
}

/// The rows of the views a worker holds at the end of a run: (view, profile key, row) →
/// multiplicity (see [`RowsOnly`]).
pub type Rows = griddle::HashMap<ViewRow, isize>;

/// Where the view rows go when only the final rows are wanted (`run --snapshot`, nothing
/// else reading the changes): each worker's profiles operator ([`profiles`]) renders no
/// rows while the input runs and emits no row changes; once the dataflow is complete it
/// renders every profile it holds once and hands the rows over, instead of rendering each
/// profile at every time its facts change and moving every change to worker 0 to be
/// consolidated, sorted and applied there. A view's rows are a function of the profile's
/// facts at the time (SPEC section 7), so the rows rendered from the final facts are the
/// final rows.
///
/// In a cluster of processes the rows of another process's workers cannot be handed over
/// in memory: there (`streamed`) every worker gives its final rows on the row stream, to
/// worker 0, as the dataflow completes.
#[derive(Clone, Default)]
pub struct RowsOnly {
    /// Every worker's rows, once the dataflow is complete (one entry per worker).
    pub done: Arc<Mutex<Vec<Rows>>>,
    /// The final rows go to worker 0 on the row stream ([`Outputs::changes`]) instead.
    pub streamed: bool,
}

/// Adds `diff` to `key`'s multiplicity in `counts`, dropping it at zero: a multiset kept as
/// a map (the rows of [`RowsOnly`], and the engine's snapshot).
pub fn add_count<K: Hash + Eq>(counts: &mut griddle::HashMap<K, isize>, key: K, diff: isize) {
    match counts.entry(key) {
        Entry::Vacant(slot) => {
            if diff != 0 {
                slot.insert(diff);
            }
        }
        Entry::Occupied(mut slot) => {
            *slot.get_mut() += diff;
            if *slot.get() == 0 {
                slot.remove();
            }
        }
    }
}

/// Builds the dataflow for `spec` on this worker. Every worker must call it. With
/// `rows_only`, each worker hands over the view rows it holds at the end ([`RowsOnly`])
/// instead of capturing their changes at worker 0 ([`Outputs::changes`] stays empty).
pub fn build(
    worker: &mut Worker,
    spec: &Spec,
    rows_only: Option<RowsOnly>,
    retention: retention::Retention,
    keepers: &keeper::Keepers,
) -> (Feed, Outputs) {
    let probe = ProbeHandle::new();
    let changes = Rc::new(RefCell::new(Vec::new()));
    let profiles = Rc::new(RefCell::new(0i64));
    let answers = Rc::new(RefCell::new(Vec::new()));
    let anchors: Vec<bool> = spec.identity.identifiers.iter().map(|t| t.anchor).collect();
    let max_links = spec.identity.max_links;

    let num_signals = spec.intent.signals.len() as u16;
    let within: Vec<u64> = spec.intent.sequences.iter().map(|q| q.within_ms).collect();

    let feed = worker.dataflow::<Time, _, _>(|scope| {
        // the input side: each worker's keeper maintains the input collections of its
        // share of the events
        let (feed, collections) = keeper::kept(scope, spec, retention, keepers, &probe);
        let keeper::Collections {
            nodes,
            pairs,
            wide,
            signals,
            bonuses,
            roles,
            records,
            queries,
            views,
        } = collections;

        // identity (SPEC section 3)
        // `nodes` and `links` enter as sets, up to a count per keeper (see `Inputs`)
        let links = pairs;
        let rules = labels::Rules {
            anchor: anchors,
            max_links,
        };
        let labels = identity::labels(nodes, links, wide, rules);
        let members = identity::members(labels.clone());
        // arranged once, shared by every stage that joins with them
        let labels_by_node = labels.arrange_by_key();

        // intent (SPEC section 4)
        let qualified = intent::qualified_sequences(roles, labels_by_node.clone(), within);
        let counted = intent::counted(signals, bonuses, qualified, num_signals);
        let occurrences = intent::attributed(counted, labels_by_node.clone());
        // consent and traits (SPEC section 5)
        let records = latest::attributed(records, labels_by_node.clone());

        // profiles and views (SPEC sections 4, 5 and 7), and profile lookups (erasure,
        // SPEC section 6; GET /v1/profiles)
        let parts = members
            .map(|(profile, id)| (profile, profiles::Part::Member(id.0)))
            .concat(
                occurrences.map(|(p, (id, stream))| (p, profiles::Part::Occurrence(id, stream))),
            )
            .concat(
                records
                    .map(|(p, (slot, rank))| (p, profiles::Part::Record(Box::new((slot, rank))))),
            );
        let queries = lookup::profiles_of(queries, labels_by_node);
        // (the same operators whatever the outputs wanted: every process of a cluster
        // builds the same dataflow)
        let maintained = profiles::rows_and_answers(parts, queries, views, spec, rows_only);
        capture(maintained.answers, Rc::clone(&answers), &probe);
        capture(maintained.rows, Rc::clone(&changes), &probe);
        let count = Rc::clone(&profiles);
        maintained
            .profiles
            .inner
            .exchange(|_| 0)
            .inspect(move |(_, _, diff): &((), Time, isize)| {
                *count.borrow_mut() += *diff as i64;
            })
            .probe_with(&probe);
        feed
    });
    (
        feed,
        Outputs {
            changes,
            profiles,
            answers,
            probe,
        },
    )
}
