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
//! Every worker of every process is a keeper. Worker 0 reads what they hold by asking
//! ([`Command::Ask`]): each keeper answers on a stream exchanged to worker 0 once it has
//! applied every command sent before the question (the commands from worker 0 to one
//! keeper stay in order), so worker 0 waits for every keeper's reply, wherever it runs.
//! Explanations fetch the events and identifier sets of each identifier they walk this
//! way ([`Held`]); `/metrics` reads the counts of a single process's keepers in memory
//! ([`Keepers::counts`]) and a cluster's as they last answered (asked after every round).
//!
//! Like Materialize's storage and compute split, what must be sequential (the order of the
//! input) is a thin stage, and the state it feeds is sharded by key.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use differential_dataflow::AsCollection;
use differential_dataflow::input::InputSession;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Probe as _;
use timely::dataflow::operators::generic::Operator as _;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::{InputHandleVec, Scope, StreamVec};

use super::history::History;
use super::retention::{Horizon, Retention, Set, Summary};
use super::views::ViewCommand;
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
    /// A question (numbered by worker 0), answered on the replies stream once every
    /// command sent before it is applied.
    Ask(u64, Ask),
}

/// What worker 0 asks every keeper, wherever it runs (this process or another).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Ask {
    /// What the keeper holds about one identifier (explanations, [`Held`]).
    Carrying(Ident),
    /// How much the keeper holds ([`Counts`]).
    Counts,
}

/// A keeper's answer to an [`Ask`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Answer {
    /// See [`Fetched`].
    Carrying(Fetched),
    /// See [`Counts`].
    Counts(Counts),
}

/// One keeper's reply to ask `ask`, and the broken invariant it met, if any (a bug).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    /// The ask's number.
    pub ask: u64,
    /// The answer.
    pub answer: Answer,
    /// The keeper's broken invariant, if any.
    pub failed: Option<String>,
}

/// What a keeper holds about one identifier.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Fetched {
    /// Its live events carrying it, in arrival order.
    pub events: Vec<EventFacts>,
    /// The identifier sets carrying it (what retention keeps of retired events).
    pub sets: Vec<Set>,
    /// The events cited by those sets' records that are still live.
    pub live_records: Vec<Seq>,
}

/// How much a keeper holds (the engine's retained counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Live events.
    pub live_events: u64,
    /// Retired events counted in identifier sets.
    pub retired_events: u64,
    /// Identifier sets.
    pub sets: u64,
    /// Records kept for them.
    pub records: u64,
    /// Sequence roles waiting to retire.
    pub roles: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.live_events += other.live_events;
        self.retired_events += other.retired_events;
        self.sets += other.sets;
        self.records += other.records;
        self.roles += other.roles;
    }
}

/// One worker's share of the per-event state.
pub struct Keeper {
    inputs: Inputs,
    history: History,
    /// An invariant broke (a history that cannot be read back): a bug, reported by the
    /// engine at its next round.
    failed: Option<String>,
    /// Replies not yet given.
    replies: Vec<Reply>,
}

impl Keeper {
    fn new(spec: &Spec, retention: Retention) -> Keeper {
        Keeper {
            inputs: Inputs::new(spec, retention),
            history: History::new(retention, Horizon::of(spec)),
            failed: None,
            replies: Vec::new(),
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
            Command::Ask(ask, question) => {
                let answer = self.answer(question);
                let failed = self.failed.clone();
                self.replies.push(Reply {
                    ask,
                    answer,
                    failed,
                });
            }
        }
    }

    fn answer(&mut self, ask: Ask) -> Answer {
        match ask {
            Ask::Carrying(ident) => {
                self.history.catch_up();
                let sets: Vec<Set> = self.inputs.sets().carrying(&ident).cloned().collect();
                let cited = sets
                    .iter()
                    .flat_map(|set| set.records().map(|k| k.cite.seq));
                let mut live_records: Vec<Seq> =
                    cited.filter(|&seq| self.history.is_live(seq)).collect();
                live_records.sort_unstable();
                live_records.dedup();
                Answer::Carrying(Fetched {
                    events: self.history.carrying(&ident).collect(),
                    sets,
                    live_records,
                })
            }
            Ask::Counts => Answer::Counts(self.counts()),
        }
    }

    fn counts(&self) -> Counts {
        let sets = self.inputs.sets();
        Counts {
            live_events: self.history.len() as u64,
            retired_events: sets.retired(),
            sets: sets.len() as u64,
            records: sets.records() as u64,
            roles: self.inputs.roles_waiting() as u64,
        }
    }

    fn fail(&mut self, why: String) {
        self.failed.get_or_insert(why);
    }
}

/// The keepers: how many there are (one per worker of the cluster), and those of this
/// process, for worker 0 to read.
#[derive(Clone)]
pub struct Keepers {
    /// Every worker keeps events, in every process.
    count: u32,
    /// Every keeper is in this process (one process): worker 0 reads their counts in
    /// memory rather than asking ([`Ask::Counts`]).
    local: bool,
    held: Arc<Mutex<Vec<Arc<Mutex<Keeper>>>>>,
}

impl Keepers {
    /// `count` keepers (every worker of the cluster), every one in this process if `local`.
    pub fn new(count: usize, local: bool) -> Keepers {
        Keepers {
            count: u32::try_from(count.max(1)).unwrap_or(u32::MAX),
            local,
            held: Arc::default(),
        }
    }

    /// How many keepers there are (each answers every [`Ask`]).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether every keeper is in this process.
    pub fn is_local(&self) -> bool {
        self.local
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

    /// The first broken invariant any keeper of this process met (a bug), if any.
    pub fn failure(&self) -> Option<String> {
        let keepers = self.all();
        let failed = keepers.iter().filter_map(|k| k.lock().ok()?.failed.clone());
        failed.into_iter().next()
    }

    /// What the keepers of this process hold together.
    pub fn counts(&self) -> Result<Counts, String> {
        let mut counts = Counts::default();
        for keeper in self.all() {
            let keeper = keeper
                .lock()
                .map_err(|_| "internal error: a worker panicked".to_string())?;
            if let Some(why) = &keeper.failed {
                return Err(why.clone());
            }
            counts += keeper.counts();
        }
        Ok(counts)
    }
}

/// What the keepers hold about the identifiers an explanation reads: each identifier is
/// fetched from every keeper on first use ([`Ask::Carrying`], wherever the keeper runs) and
/// the shares merged.
pub struct Held<'a> {
    fetch: RefCell<FetchFn<'a>>,
    fetched: RefCell<HashMap<Ident, Rc<Fetched>>>,
    /// The live events among those fetched.
    live: RefCell<HashSet<Seq>>,
    failed: RefCell<Option<String>>,
}

/// Asks every keeper what it holds about an identifier.
type FetchFn<'a> = Box<dyn FnMut(&Ident) -> Result<Vec<Fetched>, String> + 'a>;

impl<'a> Held<'a> {
    /// Reads through `fetch`, which asks every keeper about one identifier.
    pub fn new(fetch: impl FnMut(&Ident) -> Result<Vec<Fetched>, String> + 'a) -> Held<'a> {
        Held {
            fetch: RefCell::new(Box::new(fetch)),
            fetched: RefCell::default(),
            live: RefCell::default(),
            failed: RefCell::default(),
        }
    }

    /// What every keeper holds about `ident`, merged: its live events in arrival order,
    /// and the identifier sets carrying it.
    pub fn fetched(&self, ident: &Ident) -> Rc<Fetched> {
        if let Some(fetched) = self.fetched.borrow().get(ident) {
            return Rc::clone(fetched);
        }
        let shares = (self.fetch.borrow_mut())(ident).unwrap_or_else(|why| {
            self.failed.borrow_mut().get_or_insert(why);
            Vec::new()
        });
        let mut merged = Fetched::default();
        for share in shares {
            merged.events.extend(share.events);
            merged.sets.extend(share.sets);
            merged.live_records.extend(share.live_records);
        }
        merged.events.sort_by_key(|facts| facts.seq);
        let mut live = self.live.borrow_mut();
        live.extend(merged.events.iter().map(|facts| facts.seq));
        live.extend(merged.live_records.iter().copied());
        let merged = Rc::new(merged);
        self.fetched
            .borrow_mut()
            .insert(ident.clone(), Rc::clone(&merged));
        merged
    }

    /// Whether event `seq` (one read through [`Held::fetched`]) is live.
    pub fn is_live(&self, seq: Seq) -> bool {
        self.live.borrow().contains(&seq)
    }

    /// The first error met asking the keepers (a keeper's broken invariant), if any.
    pub fn failure(&self) -> Option<String> {
        self.failed.borrow().clone()
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
    /// Changes of the views ([`crate::dataflow::views::ViewCommand`]), for every worker.
    views: InputSession<Time, ViewCommand, isize>,
    keepers: Keepers,
    /// The keepers' replies, as they reach worker 0.
    replies: Rc<RefCell<Vec<Reply>>>,
    /// The last ask's number.
    asked: u64,
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

    /// Asks every keeper `question`, after every command sent so far: the ask's number, or
    /// `None` once the inputs are closed. It goes out when the time next moves (a timely
    /// exchange sends what it holds when an epoch closes), and the replies come in
    /// [`Feed::replies`].
    pub fn ask(&mut self, question: Ask) -> Option<u64> {
        self.commands.as_ref()?;
        self.asked += 1;
        for to in 0..self.keepers.count {
            self.send(to, Command::Ask(self.asked, question.clone()));
        }
        Some(self.asked)
    }

    /// Every keeper's reply to ask `ask`, taken out, once each has replied.
    pub fn replies(&mut self, ask: u64) -> Option<Vec<Reply>> {
        let mut replies = self.replies.borrow_mut();
        let got = replies.iter().filter(|r| r.ask == ask).count();
        if got < self.keepers.count as usize {
            return None;
        }
        let (mine, rest) = std::mem::take(&mut *replies)
            .into_iter()
            .partition(|r| r.ask == ask);
        *replies = rest;
        Some(mine)
    }

    /// Asks (`diff = 1`) or withdraws (`diff = -1`) query `id`: the facts of the profile of
    /// `ident`, answered in [`super::Outputs::answers`] once the current time is complete.
    pub fn query(&mut self, ident: Ident, id: u64, diff: isize) {
        self.queries.update((Node(ident), id), diff);
    }

    /// Changes a view from the current time on (see [`ViewCommand`]).
    pub fn view(&mut self, command: ViewCommand) {
        self.views.insert(command);
    }

    /// Moves the inputs forward to `time` (never backwards).
    pub fn advance_to(&mut self, time: Time) {
        if time > self.now {
            self.now = time;
            self.queries.advance_to(time);
            self.views.advance_to(time);
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
        self.views.flush();
    }

    /// Closes the inputs: the dataflow completes once every worker has drained them.
    pub fn close(&mut self) {
        self.commands = None;
        self.queries = InputSession::new();
        self.views = InputSession::new();
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
    /// Changes of the views (worker 0's, from `PUT` and `DELETE /v1/views/NAME`).
    pub views: Coll<'s, ViewCommand>,
}

/// Builds the keeper of this worker and the collections it maintains, and the feed worker
/// 0 drives them with (every worker gets one; the others close theirs).
pub fn kept<'s>(
    scope: Scope<'s, Time>,
    spec: &Spec,
    retention: Retention,
    keepers: &Keepers,
    probe: &ProbeHandle<Time>,
) -> (Feed, Collections<'s>) {
    use differential_dataflow::input::Input as _;
    use timely::dataflow::operators::Input as _;
    let (commands_in, commands) = scope.new_input::<Vec<Sent>>();
    let (queries_in, queries) = scope.new_collection::<(Node, u64), isize>();
    let (views_in, views) = scope.new_collection::<ViewCommand, isize>();
    let keeper = keepers.make(spec, retention);
    let (collections, replies) = maintained(commands, keeper, (queries, views));
    let gathered = Rc::new(RefCell::new(Vec::new()));
    let into = Rc::clone(&gathered);
    // probed with the outputs: once a time is complete, every reply sent at it is in
    replies
        .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            Exchange::new(|_: &Reply| 0),
            "Replies",
            move |_, _| {
                move |input, _output| {
                    input.for_each(|_, data| into.borrow_mut().append(data));
                }
            },
        )
        .probe_with(probe);
    let feed = Feed {
        commands: Some(commands_in),
        buffer: Vec::new(),
        now: Time::default(),
        queries: queries_in,
        views: views_in,
        keepers: keepers.clone(),
        replies: gathered,
        asked: 0,
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
    (queries, views): (Coll<'s, (Node, u64)>, Coll<'s, ViewCommand>),
) -> (Collections<'s>, StreamVec<'s, Time, Reply>) {
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
    let (mut replies_out, replies) = builder.new_output();
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
            if let [n, p, w, s, b, r, c, a] = caps.as_slice() {
                nodes_out.activate().give(n, &mut out.nodes);
                pairs_out.activate().give(p, &mut out.pairs);
                wide_out.activate().give(w, &mut out.wide);
                signals_out.activate().give(s, &mut out.signals);
                bonuses_out.activate().give(b, &mut out.bonuses);
                roles_out.activate().give(r, &mut out.roles);
                records_out.activate().give(c, &mut out.records);
                replies_out.activate().give(a, &mut keeper.replies);
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
    let collections = Collections {
        nodes: nodes.as_collection(),
        pairs: pairs.as_collection(),
        wide: wide.as_collection(),
        signals: signals.as_collection(),
        bonuses: bonuses.as_collection(),
        roles: roles.as_collection(),
        records: records.as_collection(),
        queries,
        views,
    };
    (collections, replies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::history::tests::facts;

    /// An explanation's reads merge every keeper's share: events in arrival order whatever
    /// keeper held them, live records counted live, each identifier asked once.
    #[test]
    fn held_merges_the_keepers_shares_and_asks_once() {
        let asked = std::cell::Cell::new(0);
        let held = Held::new(|id: &Ident| {
            asked.set(asked.get() + 1);
            assert_eq!(id, &Ident::new(0, "a"));
            Ok(vec![
                Fetched {
                    events: vec![facts(3, &["a", "b"]), facts(7, &["a"])],
                    sets: Vec::new(),
                    live_records: vec![11],
                },
                Fetched {
                    events: vec![facts(5, &["a", "c"])],
                    sets: Vec::new(),
                    live_records: Vec::new(),
                },
            ])
        });
        let a = Ident::new(0, "a");
        let seqs: Vec<Seq> = held.fetched(&a).events.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, vec![3, 5, 7]);
        held.fetched(&a);
        assert_eq!(asked.get(), 1);
        assert!(held.is_live(5) && held.is_live(11) && !held.is_live(4));
        assert_eq!(held.failure(), None);
        let failing = Held::new(|_: &Ident| Err("broken".to_string()));
        assert!(failing.fetched(&a).events.is_empty());
        assert_eq!(failing.failure().as_deref(), Some("broken"));
    }

    /// A keeper answers after the commands sent before the question: what it holds about
    /// an identifier, and its counts.
    #[test]
    fn a_keeper_answers_from_what_it_was_sent() {
        let spec = Spec::default_spec();
        let mut keeper = Keeper::new(&spec, Retention::Retire);
        keeper.apply(Command::Insert(facts(0, &["a", "b"])));
        keeper.apply(Command::Ask(1, Ask::Counts));
        keeper.apply(Command::Insert(facts(1, &["a"])));
        keeper.apply(Command::Ask(2, Ask::Carrying(Ident::new(0, "a"))));
        keeper.apply(Command::Ask(3, Ask::Counts));
        let replies = std::mem::take(&mut keeper.replies);
        let asks: Vec<u64> = replies.iter().map(|r| r.ask).collect();
        assert_eq!(asks, vec![1, 2, 3]);
        let live = |r: &Reply| match &r.answer {
            Answer::Counts(c) => Some(c.live_events),
            Answer::Carrying(_) => None,
        };
        assert_eq!(live(&replies[0]), Some(1));
        assert_eq!(live(&replies[2]), Some(2));
        match &replies[1].answer {
            Answer::Carrying(fetched) => {
                let seqs: Vec<Seq> = fetched.events.iter().map(|f| f.seq).collect();
                assert_eq!(seqs, vec![0, 1]);
            }
            Answer::Counts(_) => panic!("a count answered a carrying question"),
        }
    }

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
