//! Explanations: why a profile looks the way it does, from the live events that caused it.
//!
//! An explanation is recomputed from the keepers' histories ([`Held`]: the facts of every
//! live event), not read from the dataflow, using the same rule functions the dataflow uses
//! ([`Label`], [`Decay`], consent precedence, trait records, sequence windows, view
//! rendering). So it can cite each event, and the tests can check it against the views: its
//! contributions sum to the score the views show, and its view decisions are the views'.
//!
//! The JSON form ([`Outcome`]) is stable and documented in `src/docs/explain.md`; [`render`]
//! turns it into a report for a person (`text`) or a Graphviz graph (`dot`).
//!
//! What an explanation shows of other profiles is limited to the identifiers and events that
//! link them to this one (SPEC section 3's edges); an erased identifier is only "suppressed".

mod graph;
pub mod render;

use std::collections::BTreeMap;
use std::rc::Rc;

use serde::Serialize;
use serde_json::Value;

use crate::dataflow::intent::{Decay, qualifying_first};
use crate::dataflow::keeper::Held;
use crate::dataflow::labels::Label;
use crate::dataflow::views::{self, Fact, milli_json};
use crate::dataflow::{EventFacts, SourceNames, consent, traits};
use crate::event::Ident;
use crate::spec::{Predicate, PredicateTest, Spec};
pub use graph::HubReason;
use graph::{Graph, Resolved};

/// At most this many events are cited per edge or blocklisted value (the total is given).
pub const MAX_CITED: usize = 5;

/// The answer to "explain this identifier".
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The identifier belongs to a profile.
    Found(Box<Explanation>),
    /// The identifier was erased (SPEC section 6): nothing else is said.
    Suppressed {
        /// The identifier asked about.
        identifier: String,
    },
    /// No live event carries the identifier.
    NotFound {
        /// The identifier asked about.
        identifier: String,
    },
}

/// Why a profile looks the way it does at clock `at`.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// The identifier asked about, `type:value`.
    pub identifier: String,
    /// The engine clock the state is evaluated at (epoch ms).
    pub at: u64,
    /// The profile key.
    pub profile: String,
    /// Identity resolution (SPEC section 3).
    pub identity: Identity,
    /// The intent score (SPEC section 4).
    pub score: Score,
    /// Consent per purpose, in the spec's order (SPEC section 5).
    pub consent: Vec<ConsentDecision>,
    /// Current traits, by key (SPEC section 5).
    pub traits: Vec<TraitValue>,
    /// Every view of the spec, in its order.
    pub views: Vec<ViewDecision>,
}

/// An event, as an explanation cites it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct EventRef {
    /// Its `messageId`, when it had one.
    #[serde(rename = "messageId", skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The input it was read from (`-` for stdin, a file, `http` for what the server took over
    /// HTTP, `kafka://HOST/TOPIC#PARTITION` for a Kafka record).
    pub source: String,
    /// Its line number there (for a Kafka record, its offset).
    pub line: u64,
    /// Its timestamp (epoch ms).
    pub timestamp: u64,
    /// It retired (SPEC section 9): only its source, line and time are kept. A retired
    /// event cited for a link stands for every retired event with its identifier set
    /// (the last of them is cited).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retired: bool,
}

/// The identity part.
#[derive(Clone, Debug, Serialize)]
pub struct Identity {
    /// Whether an anchor names the profile (otherwise its least identifier does).
    pub anchored: bool,
    /// Number of events that belong to the profile (by their highest-priority identifier),
    /// retired ones included.
    pub events: usize,
    /// Every identifier of the profile, sorted.
    pub identifiers: Vec<Member>,
    /// Every edge between two of the profile's identifiers (each once, `from < to`).
    pub edges: Vec<Link>,
    /// Edges from the profile's identifiers to other profiles' identifiers, and edges
    /// dropped because one end is a hub.
    pub links_out: Vec<Link>,
    /// Hubs among the profile's identifiers and their neighbours.
    pub hubs: Vec<Hub>,
    /// Blocklisted values carried by events of the profile's identifiers (never linked).
    pub blocklisted: Vec<Blocked>,
}

/// One identifier of the profile.
#[derive(Clone, Debug, Serialize)]
pub struct Member {
    /// `type:value`.
    pub identifier: String,
    /// Its label.
    pub label: LabelJson,
    /// The edges from it to its anchor (or to the least identifier), in order.
    pub path: Vec<Link>,
    /// Anchors at the same distance that lost on (rank, value), at most 8.
    pub contenders: Vec<String>,
}

/// A label `(class, distance, root)`.
#[derive(Clone, Debug, Serialize)]
pub struct LabelJson {
    /// 0: an anchor's label; 1: an anonymous profile's.
    pub class: u8,
    /// Edges from the anchor (0 for class 1).
    pub distance: u32,
    /// The identifier naming the profile.
    pub root: String,
}

/// An edge between two identifiers, with the events that created it.
#[derive(Clone, Debug, Serialize)]
pub struct Link {
    /// One end (the profile's identifier for links out).
    pub from: String,
    /// The other end.
    pub to: String,
    /// For a link out: the profile the other end belongs to (absent when dropped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// `"hub"` when the edge is dropped because an end is a hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
    /// The first events carrying both ends (at most 5).
    pub events: Vec<EventRef>,
    /// How many live events carry both ends.
    pub events_total: usize,
}

/// A hub met.
#[derive(Clone, Debug, Serialize)]
pub struct Hub {
    /// `type:value`.
    pub identifier: String,
    /// Why: `"more than N distinct neighbours"` or `"an event with more than N identifiers"`.
    pub reason: String,
}

/// A blocklisted value met.
#[derive(Clone, Debug, Serialize)]
pub struct Blocked {
    /// `type:value` as normalised.
    pub identifier: String,
    /// The first events carrying it (at most 5).
    pub events: Vec<EventRef>,
    /// How many.
    pub events_total: usize,
}

/// The score and every occurrence adding to it.
#[derive(Clone, Debug, Serialize)]
pub struct Score {
    /// The score in points: exactly the sum of the contributions' weights.
    pub value: Value,
    /// Every signal or sequence occurrence with non-zero weight now, by event.
    pub contributions: Vec<Contribution>,
    /// Occurrences of the profile's events whose weight is zero now (decayed away, older
    /// than `max_age` on arrival, or rounded down to nothing).
    pub expired: usize,
}

/// One occurrence of a signal or sequence.
#[derive(Clone, Debug, Serialize)]
pub struct Contribution {
    /// `"signal"` or `"sequence"`.
    pub kind: &'static str,
    /// The signal's or sequence's name.
    pub name: String,
    /// The event (for a sequence: the `then` event).
    pub event: EventRef,
    /// For a sequence: the `first` event that earned the bonus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_event: Option<EventRef>,
    /// The points it is worth undecayed.
    pub points: Value,
    /// Half-lives elapsed since the event: `floor((at - timestamp) / half_life)`.
    pub halvings: u64,
    /// Its weight now, in points.
    pub weight: Value,
    /// When its weight next changes, and to what.
    pub next_change: Option<NextChange>,
    /// Its weight over time, from its arrival until it reaches zero: every change, past and
    /// to come (the decay schedule of SPEC section 4), for charts.
    pub curve: Vec<NextChange>,
}

/// A future weight change.
#[derive(Clone, Debug, Serialize)]
pub struct NextChange {
    /// Clock value (epoch ms).
    pub at: u64,
    /// The weight from then on, in points.
    pub weight: Value,
}

/// Consent for one purpose.
#[derive(Clone, Debug, Serialize)]
pub struct ConsentDecision {
    /// The purpose.
    pub purpose: String,
    /// Granted or not.
    pub granted: bool,
    /// The record that decided it; absent when the default applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<EventRef>,
    /// Whether the spec's default applies (no record).
    pub default: bool,
    /// Whether a grant at the deciding timestamp lost to this denial.
    pub tie: bool,
    /// How many records the profile's events hold for this purpose.
    pub records: usize,
}

/// One current trait.
#[derive(Clone, Debug, Serialize)]
pub struct TraitValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Value,
    /// `"traits"` or `"context.traits"`.
    pub from: &'static str,
    /// The event it came from.
    pub event: EventRef,
}

/// One view.
#[derive(Clone, Debug, Serialize)]
pub struct ViewDecision {
    /// The view's name.
    pub view: String,
    /// Whether the profile has a row in it.
    #[serde(rename = "in")]
    pub is_in: bool,
    /// Each condition with the profile's value; the profile is in iff all hold.
    pub conditions: Vec<Condition>,
    /// The row, when in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<Value>,
}

/// One condition of a view.
#[derive(Clone, Debug, Serialize)]
pub struct Condition {
    /// The condition as the spec writes it.
    pub condition: String,
    /// The profile's value it was tested on.
    pub value: Value,
    /// Whether it holds.
    pub holds: bool,
}

/// Explains the profile `ident` belongs to, from the live events that arrived by clock
/// `at`, evaluated at `now = at`. `sources` name the events' input sources.
pub fn explain(
    held: &Held<'_>,
    spec: &Spec,
    sources: &SourceNames,
    ident: &Ident,
    at: u64,
) -> Outcome {
    let mut graph = Graph::new(held, spec, at);
    let key = |id: &Ident| id.key(&spec.identity);
    if !graph.is_node(ident) {
        return Outcome::NotFound {
            identifier: key(ident),
        };
    }
    let resolved = graph.resolve(ident);
    let cite = |f: &EventFacts| event_ref(f, sources, !held.is_live(f.seq));
    // each member's events, decoded once and held for the explanation (no copies)
    let carrying: Vec<(&Ident, Rc<[EventFacts]>)> = resolved
        .members
        .keys()
        .map(|m| (m, graph.events(m)))
        .collect();
    let events = profile_events(&carrying);
    let (mut score, score_milli, active) = score(spec, &events, at, &cite);
    // retired events (SPEC section 9) count, and weigh nothing
    let (retired, expired) = resolved.members.keys().fold((0, 0), |(e, x), m| {
        let (events, expired) = graph.retired_of(m);
        (e + events, x + expired)
    });
    score.expired += expired as usize;
    let consent = consent_decisions(spec, &events, &cite);
    let traits = trait_values(&events, &cite);
    let live = events.iter().filter(|f| held.is_live(f.seq)).count();
    let identity = identity(&mut graph, spec, &resolved, live + retired as usize, &cite);
    let views = view_decisions(spec, &resolved, score_milli, &active, &consent, &traits);
    Outcome::Found(Box::new(Explanation {
        identifier: key(ident),
        at,
        profile: key(&resolved.root),
        identity,
        score,
        consent,
        traits,
        views,
    }))
}

fn event_ref(facts: &EventFacts, sources: &SourceNames, retired: bool) -> EventRef {
    EventRef {
        message_id: (!retired)
            .then(|| facts.message_id.as_deref().map(str::to_string))
            .flatten(),
        source: sources.name(facts.origin.source),
        line: facts.origin.line,
        timestamp: facts.timestamp_ms,
        retired,
    }
}

fn points(milli: i64) -> Value {
    serde_json::from_str(&milli_json(milli)).unwrap_or(Value::Null)
}

/// The profile's events (SPEC section 3: by their highest-priority identifier), in arrival
/// order, from the events carrying each member.
fn profile_events<'e>(carrying: &'e [(&Ident, Rc<[EventFacts]>)]) -> Vec<&'e EventFacts> {
    let mut events: Vec<&EventFacts> = carrying
        .iter()
        .flat_map(|(m, events)| events.iter().filter(|f| f.idents.first() == Some(*m)))
        .collect();
    events.sort_by_key(|f| f.seq);
    events
}

/// The events carrying both `a` and `b`: the first [`MAX_CITED`] cited, and the total.
fn link(
    graph: &Graph,
    a: &Ident,
    b: &Ident,
    cite: &dyn Fn(&EventFacts) -> EventRef,
) -> (Vec<EventRef>, usize) {
    // retired events count by their groups; each group is cited once, by its last event
    let mut total = graph.retired_carrying_both(a, b) as usize;
    let mut cited: Vec<EventRef> = Vec::new();
    for facts in graph.events(a).iter().filter(|f| f.idents.contains(b)) {
        let reference = cite(facts);
        if !reference.retired {
            total += 1;
        }
        if cited.len() < MAX_CITED && !cited.contains(&reference) {
            cited.push(reference);
        }
    }
    (cited, total)
}

fn label_json(label: &Label, spec: &Spec) -> LabelJson {
    LabelJson {
        class: label.class,
        distance: label.dist,
        root: label.root.key(&spec.identity),
    }
}

fn hub_reason(reason: &HubReason, spec: &Spec) -> String {
    let max = spec.identity.max_links;
    match reason {
        HubReason::Neighbours(_) => format!("more than {max} distinct neighbours"),
        HubReason::WideEvent => format!("an event with more than {} identifiers", max + 1),
    }
}

fn identity(
    graph: &mut Graph,
    spec: &Spec,
    resolved: &Resolved,
    events: usize,
    cite: &dyn Fn(&EventFacts) -> EventRef,
) -> Identity {
    let key = |id: &Ident| id.key(&spec.identity);
    let edge = |graph: &Graph, a: &Ident, b: &Ident| {
        let (events, events_total) = link(graph, a, b, cite);
        Link {
            from: key(a),
            to: key(b),
            profile: None,
            dropped: None,
            events,
            events_total,
        }
    };
    let mut identifiers = Vec::new();
    for (id, labelled) in &resolved.members {
        let mut path = Vec::new();
        let mut at = id.clone();
        while let Some(parent) = resolved.members.get(&at).and_then(|l| l.parent.clone()) {
            path.push(edge(graph, &at, &parent));
            at = parent;
        }
        identifiers.push(Member {
            identifier: key(id),
            label: label_json(&labelled.label, spec),
            path,
            contenders: labelled.contenders.iter().map(key).collect(),
        });
    }
    let (mut edges, mut links_out) = (Vec::new(), Vec::new());
    let (mut hubs, mut blocked) = (BTreeMap::new(), BTreeMap::new());
    let mut carrying_blocked: BTreeMap<u64, EventFacts> = BTreeMap::new();
    for member in resolved.members.keys() {
        if let Some(reason) = graph.hub(member) {
            hubs.insert(member.clone(), reason);
        }
        for n in graph.neighbours(member) {
            if resolved.members.contains_key(&n) {
                if *member < n {
                    edges.push(edge(graph, member, &n));
                }
                continue;
            }
            let mut link = edge(graph, member, &n);
            let hub = graph.hub(&n);
            if let Some(reason) = hub.clone() {
                hubs.insert(n.clone(), reason);
            }
            if hub.is_some() || graph.hub(member).is_some() {
                link.dropped = Some("hub".into());
            } else {
                link.profile = resolved.others.get(&n).map(|l| key(&l.root));
            }
            links_out.push(link);
        }
        for facts in graph
            .events(member)
            .iter()
            .filter(|f| !f.blocked.is_empty())
        {
            carrying_blocked.insert(facts.seq, facts.clone());
        }
    }
    // each event once, however many of the profile's identifiers it carries
    for facts in carrying_blocked.values() {
        for b in facts.blocked.iter() {
            let entry: &mut (Vec<EventRef>, usize) = blocked.entry(b.clone()).or_default();
            entry.1 += 1;
            if entry.0.len() < MAX_CITED {
                entry.0.push(cite(facts));
            }
        }
    }
    Identity {
        anchored: resolved
            .members
            .get(&resolved.root)
            .is_some_and(|l| l.label.class == 0),
        events,
        identifiers,
        edges,
        links_out,
        hubs: hubs
            .into_iter()
            .map(|(id, reason)| Hub {
                identifier: key(&id),
                reason: hub_reason(&reason, spec),
            })
            .collect(),
        blocklisted: blocked
            .into_iter()
            .map(|(id, (events, events_total))| Blocked {
                identifier: key(&id),
                events,
                events_total,
            })
            .collect(),
    }
}

/// Score contributions (SPEC section 4): each signal occurrence and each earned sequence
/// bonus of the profile's events, weighed at `at`. Returns the score part, the score in
/// thousandths and the ids of the signals and sequences with non-zero weight.
fn score(
    spec: &Spec,
    events: &[&EventFacts],
    at: u64,
    cite: &dyn Fn(&EventFacts) -> EventRef,
) -> (Score, i64, Vec<u16>) {
    let intent = &spec.intent;
    let decay = Decay::of(intent);
    let mut out = Score {
        value: Value::Null,
        contributions: Vec::new(),
        expired: 0,
    };
    let (mut total, mut active) = (0i64, Vec::new());
    let mut occurrence = |out: &mut Score,
                          id: u16,
                          kind: &'static str,
                          name: &str,
                          points_milli: i64,
                          facts: &EventFacts,
                          first: Option<&EventFacts>| {
        let weight = decay.weight(points_milli, facts.timestamp_ms, at);
        if weight == 0 {
            out.expired += 1;
            return;
        }
        total += weight;
        active.push(id);
        let schedule = decay.schedule(points_milli, facts.timestamp_ms, facts.arrival_ms);
        let mut sum = 0;
        let curve: Vec<NextChange> = schedule
            .iter()
            .map(|&(time, delta)| {
                sum += delta;
                NextChange {
                    at: time,
                    weight: points(sum),
                }
            })
            .collect();
        let next_change = curve.iter().find(|c| c.at > at).cloned();
        out.contributions.push(Contribution {
            kind,
            name: name.to_string(),
            event: cite(facts),
            first_event: first.map(cite),
            points: points(points_milli),
            halvings: at.saturating_sub(facts.timestamp_ms) / decay.half_life_ms.max(1),
            weight: points(weight),
            next_change,
            curve,
        });
    };
    let num_signals = intent.signals.len() as u16;
    for facts in events {
        for &s in &facts.signals {
            if let Some(signal) = intent.signals.get(s as usize) {
                let (name, points) = (&signal.name, signal.points_milli);
                occurrence(&mut out, s, "signal", name, points, facts, None);
            }
        }
    }
    for (q, sequence) in intent.sequences.iter().enumerate() {
        let has = |f: &&&EventFacts, role: u8| f.roles.contains(&(q as u16, role));
        let mut firsts: Vec<&EventFacts> = events.iter().filter(|f| has(f, 0)).copied().collect();
        firsts.sort_by_key(|f| (f.timestamp_ms, f.seq));
        let times: Vec<u64> = firsts.iter().map(|f| f.timestamp_ms).collect();
        for then in events.iter().filter(|f| has(f, 1)) {
            if let Some(i) = qualifying_first(&times, then.timestamp_ms, sequence.within_ms) {
                let id = num_signals + q as u16;
                let (name, points) = (&sequence.name, sequence.points_milli);
                occurrence(
                    &mut out,
                    id,
                    "sequence",
                    name,
                    points,
                    then,
                    Some(firsts[i]),
                );
            }
        }
    }
    out.value = points(total);
    active.sort_unstable();
    active.dedup();
    (out, total, active)
}

/// Consent per purpose (SPEC section 5): the record that ranks highest by
/// [`consent::precedence`] among the profile's events, or the default.
fn consent_decisions(
    spec: &Spec,
    events: &[&EventFacts],
    cite: &dyn Fn(&EventFacts) -> EventRef,
) -> Vec<ConsentDecision> {
    let mut out = Vec::new();
    for (p, (purpose, default)) in spec.consent.purposes.iter().enumerate() {
        let records: Vec<(&EventFacts, bool)> = events
            .iter()
            .flat_map(|f| {
                f.consent
                    .iter()
                    .filter(|(q, _)| *q as usize == p)
                    .map(move |(_, granted)| (*f, *granted))
            })
            .collect();
        // the greatest precedence decides; among equals, the earliest event is cited
        let best = records.iter().min_by_key(|(f, g)| {
            (
                std::cmp::Reverse(consent::precedence(f.timestamp_ms, *g)),
                f.seq,
            )
        });
        out.push(match best {
            Some((f, granted)) => ConsentDecision {
                purpose: purpose.clone(),
                granted: *granted,
                decided_by: Some(cite(f)),
                default: false,
                tie: records
                    .iter()
                    .any(|(g, other)| g.timestamp_ms == f.timestamp_ms && other != granted),
                records: records.len(),
            },
            None => ConsentDecision {
                purpose: purpose.clone(),
                granted: *default,
                decided_by: None,
                default: true,
                tie: false,
                records: 0,
            },
        });
    }
    out
}

/// Current traits (SPEC section 5): per key, the greatest [`traits::record`] among the
/// profile's events.
fn trait_values(events: &[&EventFacts], cite: &dyn Fn(&EventFacts) -> EventRef) -> Vec<TraitValue> {
    let mut best: BTreeMap<&str, (traits::TraitValue, &EventFacts)> = BTreeMap::new();
    for facts in events {
        for (key, source, json) in &facts.traits {
            let record = traits::record(facts, *source, json);
            match best.get(key.as_str()) {
                Some((current, _)) if *current >= record => {}
                _ => {
                    best.insert(key, (record, facts));
                }
            }
        }
    }
    best.into_iter()
        .map(|(key, ((_, _, _, source, json), facts))| TraitValue {
            key: key.to_string(),
            value: serde_json::from_str(&json).unwrap_or(Value::Null),
            from: if source == 1 {
                "traits"
            } else {
                "context.traits"
            },
            event: cite(facts),
        })
        .collect()
}

/// Every view's decision: each condition with the profile's value, and the row the views'
/// own rendering gives.
fn view_decisions(
    spec: &Spec,
    resolved: &Resolved,
    score_milli: i64,
    active: &[u16],
    consent: &[ConsentDecision],
    traits: &[TraitValue],
) -> Vec<ViewDecision> {
    let mut facts: Vec<Fact> = resolved.members.keys().cloned().map(Fact::Member).collect();
    facts.push(Fact::Score(score_milli));
    facts.extend(active.iter().map(|s| Fact::Signal(*s)));
    for (p, decision) in consent.iter().enumerate() {
        if !decision.default {
            facts.push(Fact::Consent(p as u8, decision.granted));
        }
    }
    facts.extend(
        traits
            .iter()
            .map(|t| Fact::Trait(t.key.clone(), t.value.to_string())),
    );
    let rows = views::rows_for(spec, &facts);
    let checked = views::conditions_for(spec, &facts);
    let mut root = serde_json::Map::new();
    root.insert(
        "traits".into(),
        Value::Object(
            traits
                .iter()
                .map(|t| (t.key.clone(), t.value.clone()))
                .collect(),
        ),
    );
    spec.views
        .iter()
        .zip(rows)
        .zip(checked)
        .map(|((view, row), checked)| {
            let conditions = checked
                .into_iter()
                .filter_map(|(condition, holds)| {
                    let (condition, value) = match condition {
                        views::Condition::Consent(p) => {
                            let decision = consent.get(p)?;
                            let text = format!("consent for {} is granted", decision.purpose);
                            (text, Value::from(decision.granted))
                        }
                        views::Condition::ScoreAtLeast(min) => {
                            (format!("score >= {}", milli_json(min)), points(score_milli))
                        }
                        views::Condition::HasSignal => {
                            let name = view.has_signal.as_deref().unwrap_or_default();
                            (format!("has_signal {name}"), Value::from(holds))
                        }
                        views::Condition::Predicate(i) => {
                            let p = view.predicates.get(i)?;
                            let value = crate::event::json::lookup(&root, &p.path)
                                .cloned()
                                .unwrap_or(Value::Null);
                            (describe(p), value)
                        }
                    };
                    Some(Condition {
                        condition,
                        value,
                        holds,
                    })
                })
                .collect();
            ViewDecision {
                view: view.name.clone(),
                is_in: row.is_some(),
                conditions,
                row: row.and_then(|r| serde_json::from_str(&r).ok()),
            }
        })
        .collect()
}

/// A predicate as the spec writes it: `traits.plan exists`, `traits.plan = "pro"`, ...
fn describe(p: &Predicate) -> String {
    let path = p.path.join(".");
    match &p.test {
        PredicateTest::Exists(true) => format!("{path} exists"),
        PredicateTest::Exists(false) => format!("{path} does not exist"),
        PredicateTest::Equals(v) => format!("{path} = {v}"),
        PredicateTest::Prefix(s) => format!("{path} starts with {}", Value::from(s.as_str())),
        PredicateTest::OneOf(vs) => format!("{path} is one of {}", Value::from(vs.clone())),
    }
}
