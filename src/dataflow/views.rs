//! Views (SPEC sections 5 and 7): one row per profile that meets a view's condition, holding
//! only the view's declared fields (data minimisation: nothing else reaches the output).
//!
//! Everything known about a profile is a set of [`Fact`]s; [`super::profiles`] keeps them
//! per profile and renders every view's row from them here, so a change to any fact (a
//! merge, a decay step, a consent record) updates every affected view in the same time.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::{Ident, predicate};
use crate::spec::{Field, IdentitySpec, Spec, ViewSpec};

/// A view row change's data: (view index in the spec, profile key as the output names it
/// (`type:value`, [`Ident::key`]), row as a JSON object). The key is rendered by the worker
/// that holds the profile, so worker 0 only merges what every worker sends.
pub type ViewRow = (u16, String, String);

/// A change of the views of a running server, from its time on (`PUT` and
/// `DELETE /v1/views/NAME`): view `index` is defined as the view called `name` in the spec
/// text `text` (`Some`: added, or replacing its definition), or is gone (`None`). Indices
/// past the spec's own views name views added while running; an index names one view name
/// for the whole run, so a view's rows are never confused with another's.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ViewCommand {
    /// The view's index (its `u16` in [`ViewRow`]).
    pub index: u16,
    /// Its name.
    pub name: String,
    /// The whole spec text that defines it, or `None` once it is deleted.
    pub text: Option<String>,
}

/// One fact about a profile.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Fact {
    /// An identifier of the profile.
    Member(Ident),
    /// The score in thousandths of a point (absent means 0).
    Score(i64),
    /// A signal or sequence (by id) with non-zero weight now.
    Signal(u16),
    /// The consent for a purpose (by index), when any record exists (else the default).
    Consent(u8, bool),
    /// A trait: key and JSON value text.
    Trait(String, String),
}

/// What a profile is, from its facts (SPEC sections 3 to 5 and 7), for lookups: its
/// identifiers in the SPEC's order, score, active signals and sequences by name (sorted),
/// consent per purpose (defaults filled in), traits, and the views it is in.
#[derive(Debug, Clone)]
pub struct ProfileSummary<'s> {
    /// Its identifiers, in (type, value) order.
    pub identifiers: Vec<Ident>,
    /// The score in thousandths of a point.
    pub score_milli: i64,
    /// Names of the signals and sequences with non-zero weight now, sorted.
    pub signals: Vec<&'s str>,
    /// Consent per purpose, in the spec's order.
    pub consent: Vec<(&'s str, bool)>,
    /// Current traits.
    pub traits: Map<String, Value>,
    /// Names of the views the profile is in, in the spec's order.
    pub views: Vec<&'s str>,
}

/// The summary of a profile with these facts.
pub fn summary<'s>(spec: &'s Spec, facts: &[Fact]) -> ProfileSummary<'s> {
    let render = Renderer::new(spec);
    let state = State::collect(facts.iter());
    let mut identifiers: Vec<Ident> = state.members.iter().map(|m| (*m).clone()).collect();
    identifiers.sort();
    let scored: Vec<&str> = spec.intent.scored().map(|(name, _)| name).collect();
    let mut signals: Vec<&str> = state
        .signals
        .iter()
        .filter_map(|s| scored.get(*s as usize).copied())
        .collect();
    signals.sort_unstable();
    signals.dedup();
    let consent = spec
        .consent
        .purposes
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.as_str(), render.granted(&state, i)))
        .collect();
    let views = (0..render.views.len())
        .filter(|&i| render.row(i, &state).is_some())
        .filter_map(|i| spec.views.get(i).map(|v| v.name.as_str()))
        .collect();
    ProfileSummary {
        identifiers,
        score_milli: state.score_milli,
        signals,
        consent,
        traits: state.trait_map(None),
        views,
    }
}

/// Every view's row for a profile with these facts, in spec order (`None` where the profile
/// is not in the view). The same rendering as [`super::profiles`], for explanations.
pub fn rows_for(spec: &Spec, facts: &[Fact]) -> Vec<Option<String>> {
    let render = Renderer::new(spec);
    let state = State::collect(facts.iter());
    (0..render.views.len())
        .map(|i| render.row(i, &state))
        .collect()
}

/// One condition of a view (SPEC sections 5 and 7); the view's spec holds its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The consent of the view's purpose (by index) is granted.
    Consent(usize),
    /// The score (× 1000) is at least this.
    ScoreAtLeast(i64),
    /// The view's `has_signal` has non-zero weight now.
    HasSignal,
    /// The view's trait predicate of this index holds.
    Predicate(usize),
}

/// Every view's conditions on a profile with these facts, in spec order, each with whether
/// it holds: the evaluation [`super::profiles`] applies, for explanations.
pub fn conditions_for(spec: &Spec, facts: &[Fact]) -> Vec<Vec<(Condition, bool)>> {
    let render = Renderer::new(spec);
    let state = State::collect(facts.iter());
    (0..render.views.len())
        .map(|i| render.conditions(i, &state).collect())
        .collect()
}

/// A view's `score_gte` (SPEC section 7): the profile's score, in thousandths of a point, is
/// at least the threshold, in the same unit.
fn score_at_least(score_milli: i64, min_milli: i64) -> bool {
    score_milli >= min_milli
}

/// A profile's facts, gathered.
pub(super) struct State<'a> {
    /// Its identifiers, in (type, value) order.
    pub(super) members: Vec<&'a Ident>,
    pub(super) score_milli: i64,
    pub(super) signals: Vec<u16>,
    pub(super) consent: Vec<(u8, bool)>,
    /// (key, JSON text) of each trait, ascending by key, parsed only where a view reads it.
    pub(super) traits: Vec<(&'a str, &'a str)>,
}

impl<'a> State<'a> {
    fn collect(facts: impl Iterator<Item = &'a Fact>) -> State<'a> {
        let mut state = State {
            members: Vec::new(),
            score_milli: 0,
            signals: Vec::new(),
            consent: Vec::new(),
            traits: Vec::new(),
        };
        for fact in facts {
            match fact {
                Fact::Member(id) => state.members.push(id),
                Fact::Score(s) => state.score_milli = *s,
                Fact::Signal(s) => state.signals.push(*s),
                Fact::Consent(p, g) => state.consent.push((*p, *g)),
                Fact::Trait(k, v) => state.traits.push((k, v)),
            }
        }
        state
    }

    /// The traits as a JSON object: those named in `keys`, or all of them (`None`).
    fn trait_map(&self, keys: Option<&[String]>) -> Map<String, Value> {
        self.traits
            .iter()
            .filter(|(k, _)| keys.is_none_or(|keys| keys.iter().any(|key| key == k)))
            .map(|(k, v)| {
                let value = serde_json::from_str(v).unwrap_or(Value::Null);
                (k.to_string(), value)
            })
            .collect()
    }
}

/// What rendering needs from the spec, owned by the operator that renders.
pub(super) struct Renderer {
    pub(super) views: Vec<ViewSpec>,
    /// By view: whether it exists now (a deleted view renders no row).
    live: Vec<bool>,
    field_names: Vec<Vec<String>>,
    /// Signal and sequence names by id.
    scored_names: Vec<String>,
    /// Purpose defaults by index.
    defaults: Vec<bool>,
    /// By view: the trait keys its predicates and fields read (`None`: it may read any).
    trait_keys: Vec<Option<Vec<String>>>,
    /// Names the profiles' keys.
    identity: IdentitySpec,
    /// By view: its place among the views ordered by name (the change stream's order).
    by_name: Vec<u16>,
}

impl Renderer {
    pub(super) fn new(spec: &Spec) -> Renderer {
        let scored_names = spec
            .intent
            .scored()
            .map(|(name, _)| name.to_string())
            .collect();
        Renderer {
            views: spec.views.clone(),
            live: vec![true; spec.views.len()],
            field_names: spec
                .views
                .iter()
                .map(|v| v.fields.iter().map(|f| json_string(f.name(spec))).collect())
                .collect(),
            scored_names,
            defaults: spec.consent.purposes.iter().map(|(_, d)| *d).collect(),
            trait_keys: spec.views.iter().map(trait_keys).collect(),
            identity: spec.identity.clone(),
            by_name: spec
                .views
                .iter()
                .map(|v| spec.views.iter().filter(|w| w.name < v.name).count() as u16)
                .collect(),
        }
    }

    /// Applies `command`: view `command.index` is (re)defined from its spec text, or gone.
    /// A text that does not compile (worker 0 checked it, so this is a defect) leaves the
    /// view gone and says so.
    pub(super) fn apply(&mut self, command: &ViewCommand) {
        let index = command.index as usize;
        let defined = command.text.as_deref().and_then(|text| {
            let spec = Spec::parse(text, "view change").map_err(|e| {
                eprintln!("throughline: internal error: view {}: {e}", command.name);
            });
            let spec = spec.ok()?;
            let view = spec.views.iter().find(|v| v.name == command.name)?.clone();
            let names = view
                .fields
                .iter()
                .map(|f| json_string(f.name(&spec)))
                .collect();
            Some((view, names))
        });
        while self.views.len() <= index {
            let name = format!("#{}", self.views.len());
            self.views.push(ViewSpec {
                name,
                purpose: None,
                internal: true,
                score_gte_milli: None,
                has_signal: None,
                has_signal_id: None,
                predicates: Vec::new(),
                fields: Vec::new(),
            });
            self.live.push(false);
            self.field_names.push(Vec::new());
            self.trait_keys.push(Some(Vec::new()));
        }
        match defined {
            Some((view, names)) => {
                self.trait_keys[index] = trait_keys(&view);
                self.field_names[index] = names;
                self.views[index] = view;
                self.live[index] = true;
            }
            None => {
                self.views[index].name = command.name.clone();
                self.live[index] = false;
            }
        }
        self.by_name = self
            .views
            .iter()
            .map(|v| self.views.iter().filter(|w| w.name < v.name).count() as u16)
            .collect();
    }

    /// Sorts row changes in the change stream's order (SPEC section 7: by time, view name,
    /// key), then by row: worker 0 merges every worker's sorted runs
    /// ([`crate::engine::output::consolidated`] sorts by the same order, and a stable sort
    /// merges runs in linear time).
    pub(super) fn sort(&self, rows: &mut [(ViewRow, u64, isize)]) {
        let rank = |v: u16| self.by_name.get(v as usize).copied().unwrap_or(u16::MAX);
        rows.sort_unstable_by(|((v1, k1, r1), t1, _), ((v2, k2, r2), t2, _)| {
            (t1, rank(*v1), k1, r1).cmp(&(t2, rank(*v2), k2, r2))
        });
    }

    /// A profile's key as the output names it (SPEC section 7).
    pub(super) fn key(&self, profile: &Ident) -> String {
        profile.key(&self.identity)
    }

    fn granted(&self, state: &State, purpose: usize) -> bool {
        match state.consent.iter().find(|(p, _)| *p as usize == purpose) {
            Some((_, granted)) => *granted,
            None => self.defaults.get(purpose).copied().unwrap_or(false),
        }
    }

    /// Whether view `index` can have a row for a profile of score `score_milli`: not when
    /// the view is not live or its `score_gte` is above the score. [`Renderer::row`] would
    /// answer `None` then too; this reads nothing else of the profile, so a view defined at
    /// runtime skips gathering the facts of every profile under its threshold.
    pub(super) fn may_hold(&self, index: usize, score_milli: i64) -> bool {
        self.live.get(index).copied().unwrap_or(false)
            && self
                .views
                .get(index)
                .and_then(|view| view.score_gte_milli)
                .is_none_or(|min| score_at_least(score_milli, min))
    }

    /// View `index`'s conditions on a profile, in the spec's order, each with whether it
    /// holds. Evaluated lazily: a renderer that stops at the first failure pays for no more.
    fn conditions<'r>(
        &'r self,
        index: usize,
        state: &'r State,
    ) -> impl Iterator<Item = (Condition, bool)> + 'r {
        let view = &self.views[index];
        let consent = view
            .purpose
            .map(|p| (Condition::Consent(p), self.granted(state, p)));
        let score = view.score_gte_milli.map(|min| {
            (
                Condition::ScoreAtLeast(min),
                score_at_least(state.score_milli, min),
            )
        });
        let signal = view
            .has_signal_id
            .map(|id| (Condition::HasSignal, state.signals.contains(&id)));
        // built at the first predicate, if the evaluation gets that far
        let mut root: Option<Map<String, Value>> = None;
        let predicates = view.predicates.iter().enumerate().map(move |(i, p)| {
            let root = root.get_or_insert_with(|| {
                let mut root = Map::new();
                let traits = state.trait_map(self.trait_keys[index].as_deref());
                root.insert("traits".into(), Value::Object(traits));
                root
            });
            (Condition::Predicate(i), predicate::holds(p, root))
        });
        consent
            .into_iter()
            .chain(score)
            .chain(signal)
            .chain(predicates)
    }

    /// View `index`'s row for a profile, if it is in the view.
    pub(super) fn row(&self, index: usize, state: &State) -> Option<String> {
        if !self.live.get(index).copied().unwrap_or(false) {
            return None;
        }
        let view = &self.views[index];
        if !self.conditions(index, state).all(|(_, holds)| holds) {
            return None;
        }
        let names = &self.field_names[index];
        let mut row = String::from("{");
        for (i, (field, name)) in view.fields.iter().zip(names).enumerate() {
            if i > 0 {
                row.push(',');
            }
            row.push_str(name);
            row.push(':');
            match field {
                Field::Score => row.push_str(&milli_json(state.score_milli)),
                Field::Signals => {
                    let mut names: Vec<&str> = state
                        .signals
                        .iter()
                        .filter_map(|s| self.scored_names.get(*s as usize).map(String::as_str))
                        .collect();
                    names.sort_unstable();
                    names.dedup();
                    push_json_strings(&mut row, names);
                }
                Field::Trait(_, path) => {
                    let traits = state.trait_map(Some(&path[..path.len().min(1)]));
                    let value = crate::event::json::lookup(&traits, path)
                        .cloned()
                        .unwrap_or(Value::Null);
                    row.push_str(&value.to_string());
                }
                Field::Identifier(rank) => {
                    // members are sorted by (rank, value): values of one type in byte order
                    let values: Vec<&str> = state
                        .members
                        .iter()
                        .filter(|id| id.rank as usize == *rank)
                        .map(|id| &*id.value)
                        .collect();
                    push_json_strings(&mut row, values);
                }
            }
        }
        row.push('}');
        Some(row)
    }
}

/// The trait keys a view reads: the first segment of each trait field's path and the second
/// of each predicate's `traits.…` path. `None` where a predicate reads the whole `traits`
/// object (the path `traits` itself).
fn trait_keys(view: &ViewSpec) -> Option<Vec<String>> {
    let mut keys = Vec::new();
    for field in &view.fields {
        if let Field::Trait(_, path) = field {
            keys.extend(path.first().cloned());
        }
    }
    for predicate in &view.predicates {
        match predicate.path.as_slice() {
            [root] if root == "traits" => return None,
            [root, key, ..] if root == "traits" => keys.push(key.clone()),
            _ => {} // outside `traits`: absent from the root
        }
    }
    Some(keys)
}

/// Thousandths as a JSON number with up to 3 decimals: 62500 → `62.5`, -125 → `-0.125`.
pub fn milli_json(milli: i64) -> String {
    let sign = if milli < 0 { "-" } else { "" };
    let abs = milli.unsigned_abs();
    let (int, frac) = (abs / 1000, abs % 1000);
    if frac == 0 {
        format!("{sign}{int}")
    } else {
        let digits = format!("{frac:03}");
        format!("{sign}{int}.{}", digits.trim_end_matches('0'))
    }
}

/// A string as a JSON string literal.
pub fn json_string(s: &str) -> String {
    // serialising a `&str` cannot fail
    serde_json::to_string(s).unwrap_or_default()
}

/// Appends strings as a JSON array (compact, as `serde_json` writes one).
fn push_json_strings(out: &mut String, items: Vec<&str>) {
    out.push('[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_string(item));
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Predicate, PredicateTest};

    /// A view parses the trait keys its fields and predicates name, and all of them for a
    /// predicate on `traits` itself; rendering gives the same row either way.
    #[test]
    fn a_view_reads_only_the_traits_it_names() {
        let spec = Spec::default_spec();
        let Some(index) = spec.views.iter().position(|v| v.name == "personalization") else {
            panic!("the default spec has a personalization view");
        };
        let mut view = spec.views[index].clone();
        assert_eq!(trait_keys(&view), Some(vec!["plan".into(), "plan".into()]));
        let facts = [
            Fact::Member(Ident::new(0, "u1")),
            Fact::Consent(2, true),
            Fact::Trait("name".into(), "\"Ada\"".into()),
            Fact::Trait("plan".into(), "{\"tier\":\"pro\"}".into()),
        ];
        let narrowed = rows_for(&spec, &facts)[index].clone();
        view.predicates.push(Predicate {
            path: vec!["traits".into()],
            test: PredicateTest::Exists(true),
        });
        assert_eq!(trait_keys(&view), None);
        let mut whole = spec.clone();
        whole.views[index] = view;
        assert_eq!(rows_for(&whole, &facts)[index], narrowed);
        assert!(narrowed.is_some_and(|row| row.contains(r#""tier":"pro""#)));
    }

    proptest::proptest! {
        /// Row changes sorted by a worker are in the change stream's order (time, view name,
        /// key, then row; SPEC section 7), whatever the order of the spec's views: worker 0
        /// merges them as runs.
        #[test]
        fn rows_sort_in_the_change_streams_order(
            rows in proptest::collection::vec((0u16..4, 0u8..3, 0u8..3, 0u64..3), 0..40)
        ) {
            let spec = Spec::default_spec();
            let render = Renderer::new(&spec);
            let mut rows: Vec<(ViewRow, u64, isize)> = rows
                .into_iter()
                .map(|(v, k, r, t)| ((v, format!("user_id:{k}"), format!("{{\"r\":{r}}}")), t, 1))
                .collect();
            render.sort(&mut rows);
            let named: Vec<_> = rows
                .iter()
                .map(|((v, k, r), t, _)| (*t, spec.views[*v as usize].name.clone(), k.clone(), r.clone()))
                .collect();
            let mut expected = named.clone();
            expected.sort();
            proptest::prop_assert_eq!(named, expected);
        }
    }

    #[test]
    fn milli_formatting() {
        assert_eq!(milli_json(62_500), "62.5");
        assert_eq!(milli_json(10_000), "10");
        assert_eq!(milli_json(-125), "-0.125");
        assert_eq!(milli_json(0), "0");
        assert_eq!(milli_json(1), "0.001");
        assert_eq!(milli_json(-2_500), "-2.5");
    }
}
