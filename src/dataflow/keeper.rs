//! Keepers: the per-event state of the dataflow's input side, partitioned over the workers
//! by identifier set (issue 31).
//!
//! Admission (SPEC section 1) is sequential: the input's order, the clock, the dedup check
//! and suppression. Nothing after it needs to be. Worker 0 admits each line and sends the
//! accepted event's facts, as a [`Command`] on a timely stream, to the worker that keeps
//! its identifier set (the same worker for every event of that set, [`route`]). Each
//! worker's [`Keeper`] then does the per-event work on its share:
//! - the [`History`] of its live events (erasure and explanations read it), retiring them
//!   as the clock reaches their horizon (SPEC section 9);
//! - the [`Inputs`] state: presence counts of identifiers and links, the decay timer
//!   (decay steps enter at their own times), sequence roles, and what retention keeps per
//!   identifier set ([`super::retention::Sets`]: every set lives in one keeper);
//! - and puts out the updates of the input collections ([`super::Updates`]) the stages
//!   read.
//!
//! A `forget` reaches every keeper ([`Command::Erase`]), each retracting its own events.
//! The clock reaches a keeper as the frontier of its command stream: as worker 0 moves
//! its input forward, every keeper releases the decay steps and retires the events that
//! fall due, even one that received no event.
//!
//! Worker 0 reads the keepers' state (explanations, `/metrics`) through [`Keepers`], once
//! the times it asks about are complete. In a cluster of processes the keepers are the
//! workers of process 0 (their state is shared in memory with worker 0); the other
//! processes run their share of the stages after the keepers.
//!
//! Like Materialize's storage and compute split, what must be sequential (the order of the
//! input) is a thin stage, and the state it feeds is sharded by key.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use differential_dataflow::AsCollection;
use differential_dataflow::input::InputSession;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::{InputHandleVec, Scope, StreamVec};

use super::history::History;
use super::retention::{Horizon, Retention, Set, Sets, Summary};
use super::{Coll, EventFacts, Inputs, Node, Seq, Time, clock_of, intent, latest, timer};
use crate::event::Ident;
use crate::spec::Spec;

/// A command, the keeper it goes to, and the time it holds at (see [`Feed`]).
type Sent = (u32, (Command, Time));

/// What worker 0 sends a keeper.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// An accepted event (its `seq`, arrival and origin set): insert it and keep it.
    Insert(EventFacts),
    /// Insert (`1`) or retract (`-1`) an event's facts without keeping it (tests).
    Update(EventFacts, isize),
    /// What a compacted span kept of an identifier set ([`Inputs::restore`]).
    Restore(Summary),
    /// Erasure (SPEC section 6) of the identifiers of S: every keeper retracts its events
    /// carrying one, live or retired.
    Erase(Vec<Ident>),
}

/// One worker's share of the per-event state.
pub struct Keeper {
    inputs: Inputs,
    history: History,
    /// An invariant broke (a history that cannot be read back): a bug, reported by the
    /// engine at its next round.
    failed: Option<String>,
}

impl Keeper {
    fn new(spec: &Spec, retention: Retention) -> Keeper {
        Keeper {
            inputs: Inputs::new(spec, retention),
            history: History::new(retention, Horizon::of(spec)),
            failed: None,
        }
    }

    /// Moves to time `t`: decay steps and sequence roles that fall due, and (when the clock
    /// moves) the events that retire (SPEC section 9).
    fn advance(&mut self, t: Time) {
        let before = self.inputs.time();
        if t <= before {
            return;
        }
        self.inputs.advance_to(t);
        if clock_of(t) > clock_of(before) {
            match self.history.retire(clock_of(t)) {
                Ok(retired) => retired.iter().for_each(|facts| self.inputs.retire(facts)),
                Err(e) => self.fail(e),
            }
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Insert(mut facts) => {
                self.inputs.insert(&mut facts);
                self.history.push(facts);
            }
            Command::Update(facts, diff) => self.inputs.update(&facts, diff),
            Command::Restore(summary) => self.inputs.restore(&summary),
            Command::Erase(erased) => {
                let erased: HashSet<Ident> = erased.into_iter().collect();
                // events retired long ago first (SPEC section 9): their links, and the
                // records kept for every identifier set carrying one of S
                self.inputs.erase_retired(&erased);
                match self.history.take_carrying(&erased) {
                    Ok(taken) => taken.iter().for_each(|f| self.inputs.update(f, -1)),
                    Err(e) => self.fail(e),
                }
            }
        }
    }

    fn fail(&mut self, why: String) {
        self.failed.get_or_insert(why);
    }
}

/// Every keeper of this process, by worker index, for worker 0 to read.
#[derive(Clone)]
pub struct Keepers {
    /// Workers that keep events: every worker of a single process, or of process 0 of a
    /// cluster (see the module documentation).
    count: u32,
    held: Arc<Mutex<Vec<Arc<Mutex<Keeper>>>>>,
}

impl Keepers {
    /// The keepers of `count` workers (this process's workers).
    pub fn new(count: usize) -> Keepers {
        Keepers {
            count: u32::try_from(count.max(1)).unwrap_or(u32::MAX),
            held: Arc::default(),
        }
    }

    /// A keeper for the worker building its dataflow.
    fn make(&self, spec: &Spec, retention: Retention) -> Arc<Mutex<Keeper>> {
        let keeper = Arc::new(Mutex::new(Keeper::new(spec, retention)));
        if let Ok(mut held) = self.held.lock() {
            held.push(Arc::clone(&keeper));
        }
        keeper
    }

    /// Every keeper of this process, in the order their workers built them (readers lock
    /// each; worker 0 reads them between rounds, when they are idle).
    fn all(&self) -> Vec<Arc<Mutex<Keeper>>> {
        self.held
            .lock()
            .map(|held| held.clone())
            .unwrap_or_default()
    }

    /// The first broken invariant any keeper met (a bug), if any.
    pub fn failure(&self) -> Option<String> {
        let keepers = self.all();
        let failed = keepers.iter().filter_map(|k| k.lock().ok()?.failed.clone());
        failed.into_iter().next()
    }

    /// Reads every keeper's state: `read` gets the histories and identifier sets, their
    /// identifier indexes brought up to date first if `index` (for many reads).
    pub fn read<R>(&self, index: bool, read: impl FnOnce(&Held<'_>) -> R) -> Result<R, String> {
        let keepers = self.all();
        let mut guards: Vec<MutexGuard<'_, Keeper>> = Vec::with_capacity(keepers.len());
        for keeper in &keepers {
            guards.push(
                keeper
                    .lock()
                    .map_err(|_| "internal error: a worker panicked".to_string())?,
            );
        }
        if let Some(why) = guards.iter().find_map(|k| k.failed.clone()) {
            return Err(why);
        }
        for keeper in guards.iter_mut().filter(|_| index) {
            keeper.history.catch_up();
        }
        let held = Held {
            shares: guards
                .iter()
                .map(|k| (&k.history, k.inputs.sets()))
                .collect(),
            roles: guards.iter().map(|k| k.inputs.roles_waiting()).sum(),
        };
        Ok(read(&held))
    }
}

/// The keepers' state, read together (explanations, [`crate::engine`]'s retained counts).
pub struct Held<'k> {
    shares: Vec<(&'k History, &'k Sets)>,
    roles: usize,
}

impl Held<'_> {
    /// The live events carrying `ident`, in arrival order.
    pub fn carrying(&self, ident: &Ident) -> Vec<EventFacts> {
        let mut events: Vec<EventFacts> = self
            .shares
            .iter()
            .flat_map(|(history, _)| history.carrying(ident))
            .collect();
        events.sort_by_key(|facts| facts.seq);
        events
    }

    /// Whether event `seq` is live (held, not retired, not erased).
    pub fn is_live(&self, seq: Seq) -> bool {
        self.shares.iter().any(|(history, _)| history.is_live(seq))
    }

    /// The identifier sets carrying `ident` (what retention keeps of retired events).
    pub fn sets_carrying<'a>(&'a self, ident: &'a Ident) -> impl Iterator<Item = &'a Set> + 'a {
        self.shares
            .iter()
            .flat_map(move |(_, sets)| sets.carrying(ident))
    }

    /// Live events.
    pub fn live_events(&self) -> u64 {
        self.shares.iter().map(|(h, _)| h.len() as u64).sum()
    }

    /// Retired events, identifier sets and records kept for them.
    pub fn retired(&self) -> (u64, u64, u64) {
        self.shares.iter().fold((0, 0, 0), |(e, s, r), (_, sets)| {
            (
                e + sets.retired(),
                s + sets.len() as u64,
                r + sets.records() as u64,
            )
        })
    }

    /// Sequence roles waiting to retire.
    pub fn roles(&self) -> u64 {
        self.roles as u64
    }
}

/// The keeper of identifier set `idents`, among `count`: every event with the same
/// identifiers goes to the same one (their records and retired counts are kept together).
pub fn route(idents: &[Ident], count: u32) -> u32 {
    let mixed = idents.iter().fold(0x9e37_79b9_7f4a_7c15_u64, |h, id| {
        (h ^ u64::from(id.short_hash())).wrapping_mul(0x100_0000_01b3)
    });
    ((mixed >> 32) as u32) % count.max(1)
}

/// Worker 0's side of the keepers: the commands it sends them, and the profile queries
/// (lookups and erasure, answered in [`super::Outputs::answers`]).
pub struct Feed {
    /// Commands with the time each holds at. Like differential's `InputSession`, the
    /// handle's own time moves only when the feed is flushed: moving it closes a timely
    /// epoch, which sends what is buffered as a message of its own (one per clock value:
    /// a message per event on a replay whose every event moves the clock).
    commands: Option<InputHandleVec<Time, Sent>>,
    /// Commands not yet sent: they go at the next flush, together, so that each keeper
    /// takes a round's events in one activation (as an `InputSession` holds its updates).
    buffer: Vec<Sent>,
    now: Time,
    queries: InputSession<Time, (Node, u64), isize>,
    keepers: Keepers,
}

impl Feed {
    fn send(&mut self, to: u32, command: Command) {
        if self.commands.is_some() {
            self.buffer.push((to, (command, self.now)));
        }
    }

    /// Inserts an accepted event at the current time (its keeper keeps it).
    pub fn insert(&mut self, facts: EventFacts) {
        let to = route(&facts.idents, self.keepers.count);
        self.send(to, Command::Insert(facts));
    }

    /// Inserts (`1`) or retracts (`-1`) an event's facts at the current time, without
    /// keeping it in a history.
    pub fn update(&mut self, facts: &EventFacts, diff: isize) {
        let to = route(&facts.idents, self.keepers.count);
        self.send(to, Command::Update(facts.clone(), diff));
    }

    /// Restores what a compacted span kept of an identifier set ([`Inputs::restore`]).
    pub fn restore(&mut self, summary: Summary) {
        let to = route(&summary.idents, self.keepers.count);
        self.send(to, Command::Restore(summary));
    }

    /// Erases the identifiers of `erased` at the current time, in every keeper.
    pub fn erase(&mut self, erased: &HashSet<Ident>) {
        let mut list: Vec<Ident> = erased.iter().cloned().collect();
        list.sort_by(Ident::hash_cmp);
        for to in 0..self.keepers.count {
            self.send(to, Command::Erase(list.clone()));
        }
    }

    /// Asks (`diff = 1`) or withdraws (`diff = -1`) query `id`: the facts of the profile of
    /// `ident`, answered in [`super::Outputs::answers`] once the current time is complete.
    pub fn query(&mut self, ident: Ident, id: u64, diff: isize) {
        self.queries.update((Node(ident), id), diff);
    }

    /// Moves the inputs forward to `time` (never backwards).
    pub fn advance_to(&mut self, time: Time) {
        if time > self.now {
            self.now = time;
            self.queries.advance_to(time);
        }
    }

    /// Sends what is buffered into the dataflow, and closes the times before the current.
    pub fn flush(&mut self) {
        if let Some(commands) = &mut self.commands {
            commands.send_batch(&mut self.buffer);
            self.buffer.clear();
            commands.flush();
            if *commands.time() < self.now {
                commands.advance_to(self.now);
            }
        }
        self.queries.flush();
    }

    /// Closes the inputs: the dataflow completes once every worker has drained them.
    pub fn close(&mut self) {
        self.commands = None;
        self.queries = InputSession::new();
    }

    /// The current input time.
    pub fn time(&self) -> Time {
        self.now
    }

    /// The keepers of this process.
    pub fn keepers(&self) -> &Keepers {
        &self.keepers
    }
}

/// The input collections the keepers maintain.
pub struct Collections<'s> {
    /// Identifiers.
    pub nodes: Coll<'s, Node>,
    /// Links, both ways.
    pub pairs: Coll<'s, (Node, Node)>,
    /// Identifiers of too-wide events.
    pub wide: Coll<'s, Node>,
    /// Signal weights and activity markers by primary identifier.
    pub signals: Coll<'s, (Node, (u16, timer::Stream))>,
    /// Sequence bonuses by event.
    pub bonuses: Coll<'s, intent::Bonus>,
    /// Sequence roles by primary identifier.
    pub roles: Coll<'s, intent::Role>,
    /// Consent and trait records by primary identifier.
    pub records: Coll<'s, (Node, (latest::Slot, latest::Rank))>,
    /// Profile queries (worker 0's lookups).
    pub queries: Coll<'s, (Node, u64)>,
}

/// Builds the keeper of this worker and the collections it maintains, and the feed worker
/// 0 drives them with (every worker gets one; the others close theirs).
pub fn kept<'s>(
    scope: Scope<'s, Time>,
    spec: &Spec,
    retention: Retention,
    keepers: &Keepers,
) -> (Feed, Collections<'s>) {
    use differential_dataflow::input::Input as _;
    use timely::dataflow::operators::Input as _;
    let (commands_in, commands) = scope.new_input::<Vec<Sent>>();
    let (queries_in, queries) = scope.new_collection::<(Node, u64), isize>();
    let keeper = keepers.make(spec, retention);
    let collections = maintained(commands, keeper, queries);
    let feed = Feed {
        commands: Some(commands_in),
        buffer: Vec::new(),
        now: Time::default(),
        queries: queries_in,
        keepers: keepers.clone(),
    };
    (feed, collections)
}

/// The input collections that this worker's share of the events makes (SPEC sections 3 to
/// 5 and 9, through [`Inputs`]), with their updates at the times they hold: an event's at
/// the time worker 0 sent it, a decay step at its own time once the clock reaches it.
///
/// Each activation gives every collection's updates in a few large messages, under the
/// capabilities held at the input's frontier (never ahead of the keeper's time): each
/// update carries its own time, never earlier, as a differential collection's do. (A message
/// per time cost progress tracking per event on a replay, see `tests/bench/performance.md`.)
fn maintained<'s>(
    commands: StreamVec<'s, Time, Sent>,
    keeper: Arc<Mutex<Keeper>>,
    queries: Coll<'s, (Node, u64)>,
) -> Collections<'s> {
    let mut builder = OperatorBuilder::new("Keeper".to_owned(), commands.scope());
    let route = Exchange::new(|(to, _): &Sent| u64::from(*to));
    let mut input = builder.new_input(commands, route);
    let (mut nodes_out, nodes) = builder.new_output();
    let (mut pairs_out, pairs) = builder.new_output();
    let (mut wide_out, wide) = builder.new_output();
    let (mut signals_out, signals) = builder.new_output();
    let (mut bonuses_out, bonuses) = builder.new_output();
    let (mut roles_out, roles) = builder.new_output();
    let (mut records_out, records) = builder.new_output();
    builder.build(move |capabilities| {
        let mut held = Some(capabilities);
        move |frontiers| {
            let Ok(mut keeper) = keeper.lock() else {
                return; // another thread panicked holding it: the run is failing
            };
            // each command at its own time, never before the message's (see `Feed`)
            input.for_each(|_, data| {
                for (_, (command, t)) in data.drain(..) {
                    keeper.advance(t);
                    keeper.apply(command);
                }
            });
            let frontier = frontiers.first().map(|f| f.frontier());
            if let Some(&t) = frontier.as_ref().and_then(|f| f.iter().next()) {
                keeper.advance(t);
            }
            let Some(caps) = held.as_mut() else {
                return;
            };
            let mut out = keeper.inputs.take_updates();
            // (a session flushes its output when dropped)
            if let [n, p, w, s, b, r, c] = caps.as_slice() {
                nodes_out.activate().give(n, &mut out.nodes);
                pairs_out.activate().give(p, &mut out.pairs);
                wide_out.activate().give(w, &mut out.wide);
                signals_out.activate().give(s, &mut out.signals);
                bonuses_out.activate().give(b, &mut out.bonuses);
                roles_out.activate().give(r, &mut out.roles);
                records_out.activate().give(c, &mut out.records);
            }
            if frontier.is_none_or(|f| f.is_empty()) {
                held = None;
            } else {
                let now = keeper.inputs.time();
                let now = frontier
                    .as_ref()
                    .and_then(|f| f.iter().next().copied())
                    .map_or(now, |f| f.min(now));
                caps.iter_mut().for_each(|cap| cap.downgrade(&now));
            }
        }
    });
    Collections {
        nodes: nodes.as_collection(),
        pairs: pairs.as_collection(),
        wide: wide.as_collection(),
        signals: signals.as_collection(),
        bonuses: bonuses.as_collection(),
        roles: roles.as_collection(),
        records: records.as_collection(),
        queries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event of one identifier set goes to one keeper, and sets spread evenly.
    #[test]
    fn sets_spread_evenly_over_the_keepers() {
        let count = 4;
        let mut per = [0usize; 4];
        for i in 0..10_000 {
            let set = vec![
                Ident::new(0, &format!("u-{i}")),
                Ident::new(3, &format!("anon-{i}-0")),
            ];
            let to = route(&set, count);
            assert_eq!(to, route(&set.clone(), count));
            per[to as usize] += 1;
        }
        for n in per {
            assert!((2_200..2_800).contains(&n), "{per:?}");
        }
        assert_eq!(route(&[Ident::new(1, "x@y.org")], 1), 0);
    }
}
