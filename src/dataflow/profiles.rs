//! Every profile's facts and view rows, maintained by one operator per worker (SPEC sections
//! 4, 5 and 7): the score, the active signals, the decided consent and traits, the rows of
//! every view, the answers to lookups, and the number of profiles.
//!
//! Everything attributed to a profile arrives in one collection of [`Part`]s keyed by
//! profile: its members, its counted occurrences (weights and activity markers as
//! multiplicities) and its consent and trait records. The operator holds each profile's
//! parts in a map and, at every completed time at which a profile's parts changed, renders
//! the profile's rows ([`super::views`]) and emits the difference from the rows it held.
//! Updates wait until their time completes and are then applied sorted by profile and time
//! (`apply_completed`), so a round visits each profile once. When only the final rows are
//! wanted ([`super::RowsOnly`]) nothing is rendered until the input is done, and then each
//! profile once. Time is totally ordered, so applying each completed time's updates in
//! time order gives exactly the collections that `count_total` (scores), `distinct_total`
//! (active signals), a `reduce` per slot (the greatest record) and a `reduce` per profile
//! (the rows) would maintain, with no arrangement of the facts or the rows, no replay of
//! their histories, and one operator instead of eight. The same holds for the rows Materialize computes:
//! its `reduce` of a totally ordered collection is a map from key to accumulated value.

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use differential_dataflow::{AsCollection, Hashable};

use super::latest::{self, Decision, Rank, Slot};
use super::timer::Stream;
use super::views::{Fact, Renderer, State, ViewCommand, ViewRow};
use super::{Coll, Node, Rows, RowsOnly, Time, add_count};
use crate::event::Ident;
use crate::spec::Spec;

/// One thing attributed to a profile, with a multiplicity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Part {
    /// An identifier of the profile (SPEC section 3).
    Member(Ident),
    /// A counted occurrence of a signal or sequence (by id): its weight (the multiplicity of
    /// a [`Stream::Weight`] part) or its activity marker (SPEC section 4).
    Occurrence(u16, Stream),
    /// A consent or trait record and its rank (SPEC section 5).
    Record(Box<(Slot, Rank)>),
}

/// What is known of one profile: its parts, accumulated, and the rows rendered from them.
#[derive(Default)]
struct Profile {
    /// Identifiers with their counts, in the SPEC's (type, value) order.
    members: Vec<(Ident, isize)>,
    /// Sum of the current weights of the counted occurrences, in thousandths of a point.
    score_milli: i64,
    /// Activity markers summed per signal or sequence id, ascending by id.
    active: Vec<(u16, isize)>,
    /// Records per slot, with their counts: ascending by slot, each slot's ascending by
    /// rank (sorted vectors: a map node per slot would cost hundreds of bytes per profile).
    records: Vec<(Slot, Vec<(Rank, isize)>)>,
    /// The rows held: (view, row), ascending by view.
    rows: Vec<(u16, String)>,
}

/// Adds `diff` to `key`'s count in a sorted vector of counts, dropping it at zero; returns
/// whether `key` appeared or disappeared.
fn add_sorted<K: Ord>(counts: &mut Vec<(K, isize)>, key: K, diff: isize) -> bool {
    match counts.binary_search_by(|(k, _)| k.cmp(&key)) {
        Ok(i) => {
            let Some((_, count)) = counts.get_mut(i) else {
                return false;
            };
            *count += diff;
            if *count == 0 {
                counts.remove(i);
                return true;
            }
            false
        }
        Err(i) if diff != 0 => {
            counts.insert(i, (key, diff));
            true
        }
        Err(_) => false,
    }
}

impl Profile {
    /// Accumulates one part; returns whether a fact of the profile changed (a member, the
    /// score, an active signal, or a slot's greatest record), so that only then are its
    /// rows rendered again.
    fn apply(&mut self, part: Part, diff: isize) -> bool {
        match part {
            Part::Member(id) => add_sorted(&mut self.members, id, diff),
            // scores (SPEC section 4): the sum of the weights, carried as multiplicities
            Part::Occurrence(_, Stream::Weight) => {
                self.score_milli += diff as i64;
                diff != 0
            }
            // active signals (SPEC section 7): a non-zero sum of activity markers
            Part::Occurrence(id, Stream::Active) => add_sorted(&mut self.active, id, diff),
            Part::Record(record) => {
                let (slot, rank) = *record;
                let at = match self.records.binary_search_by(|(s, _)| s.cmp(&slot)) {
                    Ok(at) => at,
                    Err(at) => {
                        self.records.insert(at, (slot, Vec::new()));
                        at
                    }
                };
                let Some((_, ranks)) = self.records.get_mut(at) else {
                    return false;
                };
                // only a record at or above the greatest can change which one is greatest
                let changed = ranks.last().is_none_or(|(greatest, _)| rank >= *greatest);
                add_sorted(ranks, rank, diff);
                if ranks.is_empty() {
                    self.records.remove(at);
                }
                changed
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.members.is_empty()
            && self.score_milli == 0
            && self.active.is_empty()
            && self.records.is_empty()
    }

    /// The decided consent and traits: each slot's greatest record ([`latest::decide`]).
    fn decided(&self) -> impl Iterator<Item = Decision<'_>> + '_ {
        self.records.iter().filter_map(|(slot, ranks)| {
            let (rank, _) = ranks.last()?;
            latest::decide(slot, rank)
        })
    }

    /// The profile's facts, as [`Fact`]s in the order a lookup reads them.
    fn facts(&self) -> Vec<Fact> {
        let mut facts: Vec<Fact> = self
            .members
            .iter()
            .map(|(id, _)| Fact::Member(id.clone()))
            .collect();
        if self.score_milli != 0 {
            facts.push(Fact::Score(self.score_milli));
        }
        facts.extend(self.active.iter().map(|(id, _)| Fact::Signal(*id)));
        facts.extend(self.decided().map(|d| d.fact()));
        facts
    }

    /// Every view's row for the profile now, ascending by view (none without members).
    fn render(&self, render: &Renderer) -> Vec<(u16, String)> {
        if self.members.is_empty() {
            return Vec::new();
        }
        let state = self.state();
        (0..render.views.len())
            .filter_map(|index| Some((index as u16, render.row(index, &state)?)))
            .collect()
    }

    /// What the views read of the profile now.
    fn state(&self) -> State<'_> {
        let mut state = State {
            members: self.members.iter().map(|(id, _)| id).collect(),
            score_milli: self.score_milli,
            signals: self.active.iter().map(|(id, _)| *id).collect(),
            consent: Vec::new(),
            traits: Vec::new(),
        };
        for decision in self.decided() {
            match decision {
                Decision::Consent(purpose, granted) => state.consent.push((purpose, granted)),
                Decision::Trait(key, json) => state.traits.push((key, json)),
            }
        }
        state
    }

    /// Re-renders view `index` after its definition changed: the row changes, and the
    /// profile's rows updated.
    fn render_again(&mut self, index: u16, render: &Renderer) -> Vec<(String, isize)> {
        let mut out = Vec::new();
        let now = match self.members.is_empty() || !render.may_hold(index.into(), self.score_milli)
        {
            true => None,
            false => render.row(index.into(), &self.state()),
        };
        let at = self.rows.binary_search_by_key(&index, |(v, _)| *v);
        let old = at.ok().map(|i| &self.rows[i].1);
        if old == now.as_ref() {
            return out;
        }
        if let Some(old) = old {
            out.push((old.clone(), -1));
        }
        match (at, now) {
            (Ok(i), Some(row)) => {
                out.push((row.clone(), 1));
                self.rows[i].1 = row;
            }
            (Ok(i), None) => {
                self.rows.remove(i);
            }
            (Err(i), Some(row)) => {
                out.push((row.clone(), 1));
                self.rows.insert(i, (index, row));
            }
            (Err(_), None) => {}
        }
        out
    }
}

/// An answer to a lookup: `(query, (profile, fact))`.
pub type Answer = (u64, (Ident, Fact));

/// Updates of a collection: `(data, time, diff)`.
type Updates<D> = Vec<(D, Time, isize)>;

/// An update waiting for its time to complete: a part, or a lookup (`Query`), with its
/// multiplicity. The labels join can bring a lookup for a profile and its withdrawal at the
/// same time (the identifier moved to another profile at that time), so only a positive
/// sum at a time is a lookup.
enum Item {
    Part(Part, isize),
    Query(u64, isize),
}

/// Updates waiting for their times to complete, with the least and greatest of those times,
/// so that an invocation with nothing complete touches none of them.
#[derive(Default)]
struct Waiting {
    updates: Vec<(Node, Time, Item)>,
    /// `(least, greatest)` time among `updates`, if any.
    span: Option<(Time, Time)>,
}

impl Waiting {
    fn extend(&mut self, more: impl Iterator<Item = (Node, Time, Item)>) {
        for update in more {
            self.span = widen(self.span, update.1);
            self.updates.push(update);
        }
    }

    /// Removes and returns the updates at times before `frontier` (all of them once the
    /// inputs are done: `None`).
    fn take_before(&mut self, frontier: Option<Time>) -> Vec<(Node, Time, Item)> {
        match (frontier, self.span) {
            (_, None) => Vec::new(),
            (Some(f), Some((least, _))) if least >= f => Vec::new(),
            (Some(f), Some((_, greatest))) if greatest >= f => {
                let (ready, later): (Vec<_>, Vec<_>) =
                    self.updates.drain(..).partition(|(_, t, _)| *t < f);
                self.updates = later;
                self.span = self.updates.iter().fold(None, |span, u| widen(span, u.1));
                ready
            }
            _ => {
                self.span = None;
                std::mem::take(&mut self.updates)
            }
        }
    }
}

/// `span` widened to include `t`.
fn widen(span: Option<(Time, Time)>, t: Time) -> Option<(Time, Time)> {
    Some(span.map_or((t, t), |(least, greatest)| (least.min(t), greatest.max(t))))
}

/// Every view's rows, and the answers to lookups. Invariant: `(v, p, row)` is present at a
/// time iff profile `p` has members then, meets view `v`'s condition (purpose consent,
/// `score_gte`, `has_signal`, trait predicates) and `row` holds exactly `v`'s fields
/// rendered from `p`'s facts ([`super::views`]); a lookup `(profile, query)` asked at time
/// `t` is answered at `t` with `(query, (profile, fact))` for every fact of the profile at
/// `t` (its withdrawal answers nothing: the engine reads an answer once). A
/// [`ViewCommand`] at `t` redefines its view from `t` on: the view's rows change at `t` to
/// those of its new definition over every profile's facts at `t` (none once deleted), as if
/// it had been defined so from the start.
pub fn rows_and_answers<'s>(
    parts: Coll<'s, (Node, Part)>,
    queries: Coll<'s, (Node, u64)>,
    views: Coll<'s, ViewCommand>,
    spec: &Spec,
    rows_only: Option<RowsOnly>,
) -> Maintained<'s> {
    let mut render = Renderer::new(spec);
    let mut builder = OperatorBuilder::new("Profiles".to_string(), parts.inner.scope());
    // both inputs are partitioned by profile, so a profile's parts and lookups meet
    let part_owner = |((profile, _), _, _): &((Node, Part), Time, isize)| profile.hashed();
    let query_owner = |((profile, _), _, _): &((Node, u64), Time, isize)| profile.hashed();
    let mut parts_in = builder.new_input(parts.inner, Exchange::new(part_owner));
    let mut queries_in = builder.new_input(queries.inner, Exchange::new(query_owner));
    // every worker renders every view: each takes every view change
    let views = timely::dataflow::operators::vec::Broadcast::broadcast(views.inner);
    let mut views_in = builder.new_input(views, timely::dataflow::channels::pact::Pipeline);
    let (rows_out, rows) = builder.new_output();
    let (answers_out, answers) = builder.new_output();
    let (counts_out, counts) = builder.new_output();
    let mut rows_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(rows_out);
    let mut answers_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(answers_out);
    let mut counts_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(counts_out);

    builder.build(move |capabilities| {
        // held at the least time an input may still bring, dropped when both are done
        let mut held: Option<Vec<Capability<Time>>> = Some(capabilities);
        let mut profiles: griddle::HashMap<Node, Profile> = griddle::HashMap::new();
        let mut pending = Waiting::default();
        let mut commands: Updates<ViewCommand> = Vec::new();
        move |frontiers| {
            views_in.for_each(|_, data| commands.append(data));
            parts_in.for_each(|_, data| {
                let parts = data.drain(..);
                pending.extend(parts.map(|((p, part), t, diff)| (p, t, Item::Part(part, diff))));
            });
            queries_in.for_each(|_, data| {
                let queries = data.drain(..);
                pending.extend(queries.map(|((p, q), t, diff)| (p, t, Item::Query(q, diff))));
            });
            let frontier = frontiers
                .iter()
                .filter_map(|f| f.frontier().first().copied())
                .min();
            let Some(caps) = held.as_mut() else { return };
            let ready = pending.take_before(frontier);
            let changes = take_commands(&mut commands, frontier);
            if let ([rows_cap, answers_cap, counts_cap], false) =
                (caps.as_slice(), ready.is_empty() && changes.is_empty())
            {
                // every ready time is at or after the held capabilities
                let rows_only = rows_only.is_some();
                let out = apply_with_views(ready, changes, &mut profiles, &mut render, rows_only);
                let mut session = rows_out.activate();
                session
                    .session(rows_cap)
                    .give_iterator(out.rows.into_iter());
                let mut session = answers_out.activate();
                session
                    .session(answers_cap)
                    .give_iterator(out.answers.into_iter());
                let mut session = counts_out.activate();
                session
                    .session(counts_cap)
                    .give_iterator(out.counts.into_iter());
            }
            match (frontier, &rows_only) {
                (Some(f), _) => caps.iter_mut().for_each(|cap| cap.downgrade(&f)),
                (None, Some(sink)) if sink.streamed => {
                    if let Some(rows_cap) = caps.first() {
                        let rows = final_rows(&profiles, &render).into_iter();
                        let t = *rows_cap.time();
                        let mut session = rows_out.activate();
                        let mut session = session.session(rows_cap);
                        session.give_iterator(rows.map(|(row, diff)| (row, t, diff)));
                    }
                    held = None;
                }
                (None, sink) => {
                    held = None;
                    if let Some(sink) = sink {
                        hand_over(final_rows(&profiles, &render), sink);
                    }
                }
            }
        }
    });
    Maintained {
        rows: rows.as_collection(),
        answers: answers.as_collection(),
        profiles: counts.as_collection(),
    }
}

/// What [`rows_and_answers`] maintains.
pub struct Maintained<'s> {
    /// Every view's rows: `(view, profile, row)`.
    pub rows: Coll<'s, ViewRow>,
    /// Answers to lookups, each at the time it was asked.
    pub answers: Coll<'s, Answer>,
    /// One `()` per profile with members (SPEC section 3), on the worker that owns it.
    pub profiles: Coll<'s, ()>,
}

/// What [`apply_completed`] emits.
#[derive(Default)]
struct Emitted {
    rows: Updates<ViewRow>,
    answers: Updates<Answer>,
    counts: Updates<()>,
}

/// The view changes at times before `frontier` (all once the inputs are done), by time.
fn take_commands(
    commands: &mut Updates<ViewCommand>,
    frontier: Option<Time>,
) -> Updates<ViewCommand> {
    if commands.is_empty() {
        return Vec::new(); // nearly always: views rarely change
    }
    let (mut ready, later): (Vec<_>, Vec<_>) = std::mem::take(commands)
        .into_iter()
        .partition(|(_, t, _)| frontier.is_none_or(|f| *t < f));
    *commands = later;
    ready.sort_by(|(c1, t1, _), (c2, t2, _)| (t1, c1).cmp(&(t2, c2)));
    ready
}

/// [`apply_completed`], with the view changes of the same completed times: the updates
/// before a change's time, then the change (every profile's row of the view rendered again,
/// [`Profile::render_again`]), then the rest.
fn apply_with_views(
    mut ready: Vec<(Node, Time, Item)>,
    changes: Updates<ViewCommand>,
    profiles: &mut griddle::HashMap<Node, Profile>,
    render: &mut Renderer,
    rows_only: bool,
) -> Emitted {
    if changes.is_empty() {
        return apply_completed(ready, profiles, render, rows_only);
    }
    let mut out = Emitted::default();
    for (command, time, diff) in changes {
        if diff <= 0 {
            continue; // commands are only ever added
        }
        let (before, after): (Vec<_>, Vec<_>) = ready.into_iter().partition(|(_, t, _)| *t < time);
        ready = after;
        let done = apply_completed(before, profiles, render, rows_only);
        out.rows.extend(done.rows);
        out.answers.extend(done.answers);
        out.counts.extend(done.counts);
        render.apply(&command);
        if rows_only {
            continue;
        }
        for (profile, state) in profiles.iter_mut() {
            let changed = state.render_again(command.index, render);
            if changed.is_empty() {
                continue;
            }
            let key = render.key(&profile.0);
            for (row, diff) in changed {
                out.rows
                    .push(((command.index, key.clone(), row), time, diff));
            }
        }
    }
    let done = apply_completed(ready, profiles, render, rows_only);
    out.rows.extend(done.rows);
    out.answers.extend(done.answers);
    out.counts.extend(done.counts);
    render.sort(&mut out.rows);
    out
}

/// Applies the updates of completed times to the profiles they name, each profile's in time
/// order: after a time's parts, the profile's rows are rendered again if a fact changed (the
/// difference is emitted at that time), then its lookups at that time are answered. Sorting
/// by profile visits each profile once per round, as a `reduce` over an arrangement would.
/// With `rows_only` no row is rendered here ([`hand_over`] renders the final ones). The row
/// changes leave keyed as the output names them and sorted in its order
/// ([`Renderer::sort`]): rendering keys and sorting are spread over the workers, and
/// worker 0 only merges.
fn apply_completed(
    mut ready: Vec<(Node, Time, Item)>,
    profiles: &mut griddle::HashMap<Node, Profile>,
    render: &Renderer,
    rows_only: bool,
) -> Emitted {
    let mut out = Emitted::default();
    ready.sort_by(|(p1, t1, i1), (p2, t2, i2)| {
        let queries_last = matches!(i1, Item::Query(..)).cmp(&matches!(i2, Item::Query(..)));
        p1.cmp(p2).then(t1.cmp(t2)).then(queries_last)
    });
    let mut updates = ready.into_iter().peekable();
    while let Some((profile, _, _)) = updates.peek() {
        let profile = profile.clone();
        let state = match profiles.get_mut(&profile) {
            Some(state) => state,
            None => profiles.entry(profile.clone()).or_default(),
        };
        while let Some(&(_, time, _)) = updates.peek().filter(|(p, _, _)| *p == profile) {
            let (mut changed, mut queries) = (false, Vec::new());
            let existed = !state.members.is_empty();
            while let Some((_, _, item)) = updates.next_if(|(p, t, _)| *t == time && *p == profile)
            {
                match item {
                    // a profile can only become empty by a change of its facts
                    Item::Part(part, diff) => changed |= state.apply(part, diff),
                    Item::Query(query, diff) => queries.push((query, diff)),
                }
            }
            if changed {
                if !rows_only {
                    let now = state.render(render);
                    let mut key = None;
                    for (view, row, diff) in changes(&state.rows, &now) {
                        let key = key.get_or_insert_with(|| render.key(&profile.0));
                        out.rows
                            .push(((view, key.clone(), row.clone()), time, diff));
                    }
                    state.rows = now;
                }
                match (existed, state.members.is_empty()) {
                    (false, false) => out.counts.push(((), time, 1)),
                    (true, true) => out.counts.push(((), time, -1)),
                    _ => {}
                }
            }
            differential_dataflow::consolidation::consolidate(&mut queries);
            for (query, _) in queries.into_iter().filter(|(_, count)| *count > 0) {
                for fact in state.facts() {
                    out.answers
                        .push(((query, (profile.0.clone(), fact)), time, 1));
                }
            }
        }
        if state.is_empty() {
            profiles.remove(&profile);
        }
    }
    render.sort(&mut out.rows);
    out
}

/// The row changes from `old` rows to `new` (both ascending by view, one row per view):
/// `(view, row, -1)` for each row that went, `(view, row, 1)` for each that came.
fn changes<'a>(
    old: &'a [(u16, String)],
    new: &'a [(u16, String)],
) -> impl Iterator<Item = (u16, &'a String, isize)> + 'a {
    let went = old
        .iter()
        .filter(|r| !new.contains(r))
        .map(|(v, row)| (*v, row, -1));
    let came = new
        .iter()
        .filter(|r| !old.contains(r))
        .map(|(v, row)| (*v, row, 1));
    went.chain(came)
}

/// The rows of every profile this worker holds (`run --snapshot`, once the input is done:
/// the rows of the final facts are the final rows).
fn final_rows(profiles: &griddle::HashMap<Node, Profile>, render: &Renderer) -> Rows {
    let mut rows = Rows::new();
    for (profile, state) in profiles.iter() {
        let rendered = state.render(render);
        if rendered.is_empty() {
            continue;
        }
        let key = render.key(&profile.0);
        for (view, row) in rendered {
            add_count(&mut rows, (view, key.clone(), row), 1);
        }
    }
    rows
}

/// Hands this worker's final rows to worker 0 in memory ([`RowsOnly::done`]).
fn hand_over(rows: Rows, sink: &RowsOnly) {
    if let Ok(mut done) = sink.done.lock() {
        done.push(rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A part drawn from a small universe, so that insertions and retractions meet.
    fn part(kind: u8, n: u8) -> Part {
        match kind % 5 {
            0 => Part::Member(Ident::new(n % 3, &format!("id-{}", n % 4))),
            1 => Part::Occurrence(u16::from(n % 3), Stream::Weight),
            2 => Part::Occurrence(u16::from(n % 3), Stream::Active),
            3 => Part::Record(Box::new((
                Slot::Consent(n % 2),
                Rank::Consent((u64::from(n % 4), n.is_multiple_of(3))),
            ))),
            _ => Part::Record(Box::new((
                Slot::Trait(format!("k{}", n % 2)),
                Rank::Trait((u64::from(n % 4), String::new(), 0, 1, format!("\"v{n}\""))),
            ))),
        }
    }

    /// The facts of a multiset of parts by the rules [`Profile`] applies incrementally:
    /// members and active signals with a non-zero count, the score as the sum of weights,
    /// each slot's greatest record with a non-zero count.
    fn from_scratch(counts: &BTreeMap<Part, isize>) -> Vec<Fact> {
        let mut profile = Profile::default();
        for (part, count) in counts.iter().filter(|(_, c)| **c != 0) {
            profile.apply(part.clone(), *count);
        }
        profile.facts()
    }

    proptest! {
        /// After any sequence of parts (each later retracted or not), the profile's facts are
        /// those of the accumulated parts, and `apply` said so whenever they changed.
        #[test]
        fn facts_follow_the_accumulated_parts(
            steps in proptest::collection::vec((0u8..5, 0u8..8, prop_oneof![Just(1isize), Just(-1), Just(2)]), 1..60)
        ) {
            let mut profile = Profile::default();
            let mut counts: BTreeMap<Part, isize> = BTreeMap::new();
            for (kind, n, diff) in steps {
                let part = part(kind, n);
                // weights are multiplicities and may go negative; the rest never do
                let count = counts.entry(part.clone()).or_insert(0);
                if *count + diff < 0 && !matches!(part, Part::Occurrence(_, Stream::Weight)) {
                    continue;
                }
                *count += diff;
                let before = profile.facts();
                let changed = profile.apply(part, diff);
                let after = profile.facts();
                prop_assert_eq!(&after, &from_scratch(&counts));
                prop_assert!(changed || before == after, "a change of facts went unreported");
            }
        }
    }

    #[test]
    fn changes_are_the_difference_of_two_row_sets() {
        let old = vec![(0, "a".to_string()), (1, "b".to_string())];
        let new = vec![(1, "b".to_string()), (2, "c".to_string())];
        let (a, c) = ("a".to_string(), "c".to_string());
        assert_eq!(
            changes(&old, &new).collect::<Vec<_>>(),
            vec![(0, &a, -1), (2, &c, 1)]
        );
        assert_eq!(changes(&new, &new).count(), 0);
    }
}
