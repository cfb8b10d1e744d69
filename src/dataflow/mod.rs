//! The dataflow: one module per maintained collection, wired together by [`build`].
//!
//! Data flows one way: input sessions (fed by the engine from accepted events) →
//! [`identity`] (links, hubs, labels, profiles, attribution) → [`views`] (rows) → the
//! output capture that the engine writes to the sinks.
//!
//! Time is the engine clock in epoch ms refined by a step counter, packed in a `u64` as
//! `ms << STEP_BITS | step` (see [`time`]), so the engine can complete part of one clock
//! value (for low latency on live input) and still report consolidated changes per
//! millisecond.

pub mod identity;
pub mod views;

use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::rc::Rc;

use differential_dataflow::VecCollection;
use differential_dataflow::input::{Input, InputSession};
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::worker::Worker;

use crate::event::{Event, Ident};
use crate::spec::Spec;
pub use views::ViewRow;

/// Dataflow time: `ms << STEP_BITS | step` (engine clock in epoch ms, step within that ms).
pub type Time = u64;
/// Bits of a [`Time`] that count steps within one millisecond.
pub const STEP_BITS: u32 = 20;
/// The largest engine clock value a [`Time`] can hold (ms since 1970, in the year 2527).
pub const MAX_CLOCK_MS: u64 = (1 << (64 - STEP_BITS)) - 1;

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
/// A collection at dataflow time with integer multiplicities.
pub type Coll<'s, D> = VecCollection<'s, Time, D, isize>;

/// What one accepted event contributes to the dataflow. A pure function of the event, so
/// retracting an event is exactly the negation of inserting it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFacts {
    /// Arrival order of the event.
    pub seq: Seq,
    /// Its identifiers, sorted by priority, each once, never empty.
    pub idents: Vec<Ident>,
    /// More than `max_links + 1` identifiers: every one of them is a hub by this event alone.
    pub wide: bool,
}

impl EventFacts {
    /// The facts of an accepted event.
    pub fn of(seq: Seq, event: &Event, spec: &Spec) -> EventFacts {
        EventFacts {
            seq,
            idents: event.idents.clone(),
            wide: event.idents.len() > spec.identity.max_links + 1,
        }
    }
}

/// The input sessions of one worker's dataflow.
///
/// Nodes, links and wide marks are sets in the SPEC but arrive as multisets (every event
/// repeats its identifiers). A local count per element forwards only the transitions between
/// absent and present, so the dataflow sees each element once instead of once per event.
/// The dataflow still applies `distinct`, so inputs fed from several places (processes)
/// compose, and a retraction that brings a count back to zero removes the element.
pub struct Inputs {
    nodes: InputSession<Time, Ident, isize>,
    pairs: InputSession<Time, (Ident, Ident), isize>,
    wide: InputSession<Time, Ident, isize>,
    primary: InputSession<Time, (Ident, Seq), isize>,
    node_counts: Presence<Ident>,
    pair_counts: Presence<(Ident, Ident)>,
    wide_counts: Presence<Ident>,
}

/// Counts of a multiset, reporting when an element appears or disappears.
struct Presence<K> {
    counts: HashMap<K, u32>,
}

impl<K: Hash + Eq> Presence<K> {
    fn new() -> Self {
        Presence {
            counts: HashMap::new(),
        }
    }

    /// Applies `diff` to `key`; returns +1 if it appeared, -1 if it disappeared.
    fn update(&mut self, key: K, diff: isize) -> Option<isize> {
        match self.counts.entry(key) {
            Entry::Vacant(slot) if diff > 0 => {
                slot.insert(diff as u32);
                Some(1)
            }
            Entry::Vacant(_) => None,
            Entry::Occupied(mut slot) => {
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

impl Inputs {
    /// Inserts (`diff = 1`) or retracts (`diff = -1`) an event's facts at the current time.
    pub fn update(&mut self, facts: &EventFacts, diff: isize) {
        for id in &facts.idents {
            if let Some(d) = self.node_counts.update(id.clone(), diff) {
                self.nodes.update(id.clone(), d);
            }
        }
        if facts.wide {
            for id in &facts.idents {
                if let Some(d) = self.wide_counts.update(id.clone(), diff) {
                    self.wide.update(id.clone(), d);
                }
            }
        } else {
            // idents are sorted and distinct: each unordered pair once, sent both ways
            for (i, a) in facts.idents.iter().enumerate() {
                for b in &facts.idents[i + 1..] {
                    if let Some(d) = self.pair_counts.update((a.clone(), b.clone()), diff) {
                        self.pairs.update((a.clone(), b.clone()), d);
                        self.pairs.update((b.clone(), a.clone()), d);
                    }
                }
            }
        }
        if let Some(first) = facts.idents.first() {
            self.primary.update((first.clone(), facts.seq), diff);
        }
    }

    /// Moves every input forward to `time` (never backwards).
    pub fn advance_to(&mut self, time: Time) {
        self.nodes.advance_to(time);
        self.pairs.advance_to(time);
        self.wide.advance_to(time);
        self.primary.advance_to(time);
    }

    /// Sends buffered updates into the dataflow.
    pub fn flush(&mut self) {
        self.nodes.flush();
        self.pairs.flush();
        self.wide.flush();
        self.primary.flush();
    }

    /// The current input time.
    pub fn time(&self) -> Time {
        *self.nodes.time()
    }
}

/// View changes and profile-count changes captured at worker 0 (other workers' copies stay
/// empty), with the probe that says which times are complete.
pub struct Outputs {
    /// View row changes not yet taken by the engine.
    pub changes: Rc<RefCell<Vec<(ViewRow, Time, isize)>>>,
    /// Net change in the number of profiles, not yet taken by the engine.
    pub profiles: Rc<RefCell<i64>>,
    /// Passes a time once all outputs up to it are captured.
    pub probe: ProbeHandle<Time>,
}

/// Builds the dataflow for `spec` on this worker. Every worker must call it.
pub fn build(worker: &mut Worker, spec: &Spec) -> (Inputs, Outputs) {
    let probe = ProbeHandle::new();
    let changes = Rc::new(RefCell::new(Vec::new()));
    let profiles = Rc::new(RefCell::new(0i64));
    let anchors: Vec<bool> = spec.identity.identifiers.iter().map(|t| t.anchor).collect();
    let max_links = spec.identity.max_links;

    let inputs = worker.dataflow::<Time, _, _>(|scope| {
        let (nodes_in, nodes) = scope.new_collection::<Ident, isize>();
        let (pairs_in, pairs) = scope.new_collection::<(Ident, Ident), isize>();
        let (wide_in, wide) = scope.new_collection::<Ident, isize>();
        let (primary_in, primary) = scope.new_collection::<(Ident, Seq), isize>();

        let links = identity::links(pairs);
        let hubs = identity::hubs(links.clone(), wide, max_links);
        let edges = identity::edges(links, hubs);
        let labels = identity::labels(nodes.distinct(), edges, anchors);
        let members = identity::members(labels.clone());
        // Attribution is what intent, consent and traits join with; built here so its cost
        // and correctness are part of every run.
        let _attribution = identity::attribution(primary, labels);

        let identifiers = views::profile_identifiers(members.clone());
        let mut rows: Vec<Coll<ViewRow>> = Vec::new();
        for (index, view) in spec.views.iter().enumerate() {
            if view.identity_only() {
                rows.push(views::identity_rows(
                    identifiers.clone(),
                    index as u16,
                    view,
                    spec,
                ));
            }
        }
        let rows = differential_dataflow::collection::concatenate(scope, rows);

        let sink = Rc::clone(&changes);
        rows.inner
            .exchange(|_| 0)
            .inspect(move |(row, time, diff): &(ViewRow, Time, isize)| {
                sink.borrow_mut().push((row.clone(), *time, *diff));
            })
            .probe_with(&probe);
        let count = Rc::clone(&profiles);
        members
            .map(|(profile, _)| profile)
            .distinct()
            .inner
            .exchange(|_| 0)
            .inspect(move |(_, _, diff): &(Ident, Time, isize)| {
                *count.borrow_mut() += *diff as i64;
            })
            .probe_with(&probe);

        Inputs {
            nodes: nodes_in,
            pairs: pairs_in,
            wide: wide_in,
            primary: primary_in,
            node_counts: Presence::new(),
            pair_counts: Presence::new(),
            wide_counts: Presence::new(),
        }
    });
    (
        inputs,
        Outputs {
            changes,
            profiles,
            probe,
        },
    )
}
