//! An independent, deliberately naive implementation of SPEC.md sections 1-3 and 7 for the
//! identity views. It shares only the per-line parser (`event::parse`, unit-tested on its
//! own) with the engine, and re-derives each event's time from its fields itself (SPEC
//! section 1's `originalTimestamp`/`sentAt`/`receivedAt` rule): admission, the identity graph, labels, time semantics and output
//! are recomputed from scratch here, with different algorithms (union-find components and a
//! layered multi-source BFS instead of label propagation; full recomputation at every clock
//! value instead of incremental updates).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::Value;
use throughline::dataflow::MAX_CLOCK_MS;
use throughline::event::{self, Ident, Kind, MAX_LINE_BYTES, timestamp};
use throughline::spec::{Field, Predicate, PredicateTest, Spec};

/// The oracle's outputs.
pub struct Run {
    /// Change lines, as the engine writes them.
    pub changes: Vec<String>,
    /// Final snapshot lines.
    pub snapshot: Vec<String>,
    /// (line number, reason code) of every dead letter.
    pub dead_letters: Vec<(u64, String)>,
    /// Snapshot lines at every clock value that had accepted events.
    pub snapshots: BTreeMap<u64, Vec<String>>,
}

pub fn run(spec: &Spec, input: &[u8], wall_ms: u64) -> Run {
    run_sampled(spec, input, wall_ms, &|_| true)
}

/// SPEC section 1's event time, written out case by case from the SPEC's text (the field
/// syntax is `timestamp::parse`'s): `timestamp`; else `originalTimestamp`, corrected by
/// `receivedAt - sentAt` when both parse; else `receivedAt`; else missing.
fn event_time(raw: &[u8]) -> Result<u64, &'static str> {
    // the line parsed already (at most 128 levels deep): no recursion limit needed here
    let mut de = serde_json::Deserializer::from_slice(raw);
    de.disable_recursion_limit();
    let Ok(Value::Object(body)) = serde::Deserialize::deserialize(&mut de) else {
        return Err("invalid_json");
    };
    let field = |name: &str| body.get(name);
    let parsed = |name: &str| field(name).map(|v| timestamp::parse(v).ok());
    if let Some(t) = parsed("timestamp") {
        return t.ok_or("bad_timestamp");
    }
    match (
        parsed("originalTimestamp"),
        parsed("sentAt"),
        parsed("receivedAt"),
    ) {
        (Some(None), _, _) => Err("bad_timestamp"),
        (Some(Some(original)), Some(Some(sent)), Some(Some(received))) => {
            let t = original as i128 - sent as i128 + received as i128;
            if t < 0 || t > MAX_CLOCK_MS as i128 {
                Err("bad_timestamp")
            } else {
                Ok(t as u64)
            }
        }
        (Some(Some(original)), _, _) => Ok(original),
        (None, _, Some(received)) => received.ok_or("bad_timestamp"),
        (None, _, None) => Err("missing_timestamp"),
    }
}

/// A trait value's order: (timestamp, messageId or "", arrival index, source).
type TraitOrder = (u64, String, usize, u8);

/// An accepted event, as the oracle keeps it.
struct Accepted {
    arrival: u64,
    t: u64,
    idents: Vec<Ident>,
    signals: Vec<usize>,
    /// (purpose index, granted)
    consent: Vec<(usize, bool)>,
    /// (key, (t, messageId or "", arrival index, source), JSON)
    traits: Vec<(String, TraitOrder, Value)>,
    /// The clock of the forget that erased it.
    erased_at: Option<u64>,
}

impl Accepted {
    fn live_at(&self, t: u64) -> bool {
        self.arrival <= t && self.erased_at.is_none_or(|e| e > t)
    }
}

/// Like [`run`], but computes the state only at times where `sample` holds (and at the final
/// clock): `changes` then holds differences between sampled states, and `snapshots` the
/// sampled states. For inputs too large to recompute at every time.
pub fn run_sampled(spec: &Spec, input: &[u8], wall_ms: u64, sample: &dyn Fn(u64) -> bool) -> Run {
    // messageId -> the clock just after it was last accepted
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut clock: Option<u64> = None;
    let mut events: Vec<Accepted> = Vec::new();
    let mut dead = Vec::new();
    let mut suppressed: HashSet<Ident> = HashSet::new();
    let mut forgets: Vec<u64> = Vec::new();

    let mut lines: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    for (i, raw) in lines.iter().enumerate() {
        let number = i as u64 + 1;
        if raw.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            continue;
        }
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.len() > MAX_LINE_BYTES {
            dead.push((number, "line_too_long".to_string()));
            continue;
        }
        let mut ev = match event::parse(raw, spec, None) {
            Ok(e) => e,
            Err(r) => {
                dead.push((number, r.reason.code().to_string()));
                continue;
            }
        };
        // the event time by this file's own reading of the derivation rule
        match event_time(raw) {
            Ok(t) => ev.timestamp_ms = t,
            Err(reason) => {
                dead.push((number, reason.to_string()));
                continue;
            }
        }
        // SPEC section 1: a duplicate while now - c < dedup_window (now: the clock before)
        let repeat = ev.message_id.as_ref().and_then(|id| seen.get(id));
        if let (Some(c), Some(now)) = (repeat, clock)
            && spec.input.dedup_window_ms.is_none_or(|w| now - c < w)
        {
            continue;
        }
        if ev.timestamp_ms > wall_ms + spec.intent.max_future_ms {
            dead.push((number, "future_timestamp".to_string()));
            continue;
        }
        if ev.idents.iter().any(|i| suppressed.contains(i)) {
            continue;
        }
        let now = clock.map_or(ev.timestamp_ms, |c| c.max(ev.timestamp_ms));
        clock = Some(now);
        if let Some(id) = &ev.message_id {
            seen.insert(id.clone(), now);
        }
        if ev.kind == Kind::Forget {
            // S: the request's identifiers and all identifiers of their profiles now
            let live: Vec<Vec<Ident>> = events
                .iter()
                .filter(|e| e.erased_at.is_none())
                .map(|e| e.idents.clone())
                .collect();
            let roots = profiles(spec, &live);
            let mut s: HashSet<Ident> = ev.idents.iter().cloned().collect();
            let wanted: HashSet<&Ident> = ev.idents.iter().filter_map(|i| roots.get(i)).collect();
            s.extend(
                roots
                    .iter()
                    .filter(|(_, r)| wanted.contains(r))
                    .map(|(i, _)| i.clone()),
            );
            for e in events.iter_mut().filter(|e| e.erased_at.is_none()) {
                if e.idents.iter().any(|i| s.contains(i)) {
                    e.erased_at = Some(now);
                }
            }
            suppressed.extend(s);
            forgets.push(now);
            continue;
        }
        let signals = spec
            .intent
            .signals
            .iter()
            .enumerate()
            .filter(|(_, s)| signal_matches(s, &ev.body))
            .map(|(i, _)| i)
            .collect();
        let index = events.len();
        let mut consent = Vec::new();
        if let Some(prefs) = ev
            .body
            .get("context")
            .and_then(|c| c.get("consent"))
            .and_then(|c| c.get("categoryPreferences"))
            .and_then(Value::as_object)
        {
            for (name, v) in prefs {
                if let (Some(b), Some(i)) = (
                    v.as_bool(),
                    spec.consent
                        .purposes
                        .iter()
                        .position(|(p, _)| *p == name.to_lowercase()),
                ) {
                    consent.push((i, b));
                }
            }
        }
        let mid = ev.message_id.clone().unwrap_or_default();
        let mut traits = Vec::new();
        if let Some(ctx) = ev
            .body
            .get("context")
            .and_then(|c| c.get("traits"))
            .and_then(Value::as_object)
        {
            for (k, v) in ctx {
                traits.push((
                    k.clone(),
                    (ev.timestamp_ms, mid.clone(), index, 0),
                    v.clone(),
                ));
            }
        }
        if ev.kind == Kind::Identify
            && let Some(tr) = ev.body.get("traits").and_then(Value::as_object)
        {
            for (k, v) in tr {
                traits.push((
                    k.clone(),
                    (ev.timestamp_ms, mid.clone(), index, 1),
                    v.clone(),
                ));
            }
        }
        events.push(Accepted {
            arrival: now,
            t: ev.timestamp_ms,
            idents: ev.idents,
            signals,
            consent,
            traits,
            erased_at: None,
        });
    }

    // every time at which the state can change: arrivals and decay boundaries
    let mut times: BTreeSet<u64> = events
        .iter()
        .map(|e| e.arrival)
        .chain(forgets.iter().copied())
        .collect();
    let (h, max_age) = (spec.intent.half_life_ms, spec.intent.max_age_ms);
    for e in &events {
        let scored = e.signals.len()
            + spec
                .intent
                .sequences
                .iter()
                .filter(|q| e.signals.contains(&q.then))
                .count();
        if scored == 0 {
            continue;
        }
        let mut k = 1;
        while e.t + k * h < e.t + max_age && k < 70 {
            times.insert(e.t + k * h);
            k += 1;
        }
        times.insert(e.t + max_age);
    }
    let mut state: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut changes = Vec::new();
    let mut snapshots = BTreeMap::new();
    if let Some(last) = clock {
        for t in times.into_iter().filter(|t| *t <= last) {
            if !(sample(t) || t == last) {
                continue;
            }
            let live: Vec<&Accepted> = events.iter().filter(|e| e.live_at(t)).collect();
            let next = views(spec, &live, t);
            diff_into(&state, &next, t, &mut changes);
            state = next;
            snapshots.insert(t, snapshot_lines(&state));
        }
    }
    Run {
        changes,
        snapshot: snapshot_lines(&state),
        dead_letters: dead,
        snapshots,
    }
}

/// The changes from `old` to `new` at time `t`, sorted by view, key, diff.
fn diff_into(
    old: &BTreeMap<(String, String), String>,
    new: &BTreeMap<(String, String), String>,
    t: u64,
    changes: &mut Vec<String>,
) {
    let keys: BTreeSet<&(String, String)> = old.keys().chain(new.keys()).collect();
    for k in keys {
        let (before, after) = (old.get(k), new.get(k));
        if before == after {
            continue;
        }
        for (diff, row) in [(-1, before), (1, after)] {
            if let Some(row) = row {
                changes.push(format!(
                    "{{\"view\":{},\"time\":{t},\"key\":{},\"diff\":{diff},\"row\":{row}}}",
                    serde_json::Value::from(k.0.as_str()),
                    serde_json::Value::from(k.1.as_str())
                ));
            }
        }
    }
}

fn snapshot_lines(state: &BTreeMap<(String, String), String>) -> Vec<String> {
    state
        .iter()
        .map(|((view, key), row)| {
            format!(
                "{{\"view\":{},\"key\":{},\"row\":{row}}}",
                serde_json::Value::from(view.as_str()),
                serde_json::Value::from(key.as_str())
            )
        })
        .collect()
}

/// SPEC section 4 matcher, written again: type, event name, predicates.
fn signal_matches(
    signal: &throughline::spec::SignalSpec,
    body: &serde_json::Map<String, Value>,
) -> bool {
    let text = |k: &str| body.get(k).and_then(Value::as_str);
    if signal
        .event_type
        .as_deref()
        .is_some_and(|t| text("type") != Some(t))
    {
        return false;
    }
    if signal
        .event
        .as_deref()
        .is_some_and(|e| text("event") != Some(e))
    {
        return false;
    }
    signal.predicates.iter().all(|p| predicate_holds(p, body))
}

fn predicate_holds(p: &Predicate, root: &serde_json::Map<String, Value>) -> bool {
    let mut value = root.get(&p.path[0]);
    for seg in &p.path[1..] {
        value = value.and_then(|v| v.as_object()).and_then(|o| o.get(seg));
    }
    let same = |a: &Value, b: &Value| match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64() == y.as_f64()
                && (x.is_f64()
                    || y.is_f64()
                    || x.as_i64() == y.as_i64() && x.as_u64() == y.as_u64())
        }
        _ => a == b,
    };
    match &p.test {
        PredicateTest::Exists(want) => *want == value.is_some_and(|v| !v.is_null()),
        PredicateTest::Prefix(pre) => value
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with(pre.as_str())),
        PredicateTest::Equals(x) => value.is_some_and(|v| same(v, x)),
        PredicateTest::OneOf(xs) => value.is_some_and(|v| xs.iter().any(|x| same(v, x))),
    }
}

/// SPEC section 4 weight, written again with floor division.
fn weight(points_milli: i64, t: u64, now: u64, spec: &Spec) -> i64 {
    if now < t || now - t >= spec.intent.max_age_ms {
        return 0;
    }
    let k = (now - t) / spec.intent.half_life_ms;
    if k >= 100 {
        return if points_milli < 0 { -1 } else { 0 };
    }
    (points_milli as i128).div_euclid(1i128 << k) as i64
}

fn points_text(milli: i64) -> String {
    let whole = format!("{}.{:03}", milli.abs() / 1000, milli.abs() % 1000);
    let trimmed = whole.trim_end_matches('0').trim_end_matches('.');
    if milli < 0 {
        format!("-{trimmed}")
    } else {
        trimmed.to_string()
    }
}

/// Every view's rows for a set of events at `now`: (view, key) -> row JSON.
fn views(spec: &Spec, events: &[&Accepted], now: u64) -> BTreeMap<(String, String), String> {
    let idents: Vec<Vec<Ident>> = events.iter().map(|e| e.idents.clone()).collect();
    let roots = profiles(spec, &idents);
    let mut members: BTreeMap<Ident, Vec<Ident>> = BTreeMap::new();
    for (id, root) in &roots {
        members.entry(root.clone()).or_default().push(id.clone());
    }
    // per profile: score and active names
    let mut score: HashMap<Ident, i64> = HashMap::new();
    let mut active: HashMap<Ident, BTreeSet<String>> = HashMap::new();
    let profile: Vec<&Ident> = events.iter().map(|e| &roots[&e.idents[0]]).collect();
    // per sequence and profile, the times of its `first` occurrences
    let firsts: Vec<HashMap<&Ident, Vec<u64>>> = spec
        .intent
        .sequences
        .iter()
        .map(|q| {
            let mut by_profile: HashMap<&Ident, Vec<u64>> = HashMap::new();
            for (e, p) in events.iter().zip(&profile) {
                if e.signals.contains(&q.first) {
                    by_profile.entry(*p).or_default().push(e.t);
                }
            }
            by_profile
        })
        .collect();
    for (e, p) in events.iter().zip(&profile) {
        let p = (*p).clone();
        for &s in &e.signals {
            let sig = &spec.intent.signals[s];
            let w = weight(sig.points_milli, e.t, now, spec);
            *score.entry(p.clone()).or_default() += w;
            if w != 0 {
                active
                    .entry(p.clone())
                    .or_default()
                    .insert(sig.name.clone());
            }
        }
        for (qi, q) in spec.intent.sequences.iter().enumerate() {
            if !e.signals.contains(&q.then) {
                continue;
            }
            let qualified = firsts[qi]
                .get(&p)
                .is_some_and(|ts| ts.iter().any(|t_a| *t_a <= e.t && t_a + q.within_ms >= e.t));
            if qualified {
                let w = weight(q.points_milli, e.t, now, spec);
                *score.entry(p.clone()).or_default() += w;
                if w != 0 {
                    active.entry(p.clone()).or_default().insert(q.name.clone());
                }
            }
        }
    }
    // consent: latest record per purpose (ties: denied); traits: greatest order per key
    let mut consent: HashMap<(&Ident, usize), (u64, bool)> = HashMap::new();
    let mut traits: HashMap<&Ident, BTreeMap<String, (TraitOrder, Value)>> = HashMap::new();
    for (e, p) in events.iter().zip(&profile) {
        for &(purpose, granted) in &e.consent {
            let slot = consent.entry((*p, purpose)).or_insert((e.t, granted));
            if e.t > slot.0 || (e.t == slot.0 && !granted) {
                *slot = (e.t, granted);
            }
        }
        for (k, order, v) in &e.traits {
            let map = traits.entry(*p).or_default();
            if map.get(k).is_none_or(|(o, _)| order > o) {
                map.insert(k.clone(), (order.clone(), v.clone()));
            }
        }
    }
    let mut out = BTreeMap::new();
    for view in &spec.views {
        for (root, ids) in &members {
            if let Some(purpose) = view.purpose {
                let granted = consent
                    .get(&(root, purpose))
                    .map_or(spec.consent.purposes[purpose].1, |(_, g)| *g);
                if !granted {
                    continue;
                }
            }
            let trait_map: serde_json::Map<String, Value> = traits
                .get(root)
                .map(|m| m.iter().map(|(k, (_, v))| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            let s = score.get(root).copied().unwrap_or(0);
            let names = active.get(root).cloned().unwrap_or_default();
            if view.score_gte_milli.is_some_and(|min| s < min) {
                continue;
            }
            if view.has_signal.as_ref().is_some_and(|n| !names.contains(n)) {
                continue;
            }
            let mut root_obj = serde_json::Map::new();
            root_obj.insert("traits".into(), Value::Object(trait_map.clone()));
            if !view
                .predicates
                .iter()
                .all(|p| predicate_holds(p, &root_obj))
            {
                continue;
            }
            let mut body = Vec::new();
            for f in &view.fields {
                let value = match f {
                    Field::Score => points_text(s),
                    Field::Signals => {
                        serde_json::to_string(&names.iter().collect::<Vec<_>>()).unwrap()
                    }
                    Field::Trait(_, path) => {
                        let mut v = trait_map.get(&path[0]);
                        for seg in &path[1..] {
                            v = v.and_then(|x| x.as_object()).and_then(|o| o.get(seg));
                        }
                        v.cloned().unwrap_or(Value::Null).to_string()
                    }
                    Field::Identifier(rank) => {
                        let mut values: Vec<&str> = ids
                            .iter()
                            .filter(|i| i.rank as usize == *rank)
                            .map(|i| &*i.value)
                            .collect();
                        values.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                        serde_json::to_string(&values).unwrap()
                    }
                };
                body.push(format!("{}:{value}", serde_json::Value::from(f.name(spec))));
            }
            let key = format!(
                "{}:{}",
                spec.identity.identifiers[root.rank as usize].name, root.value
            );
            out.insert((view.name.clone(), key), format!("{{{}}}", body.join(",")));
        }
    }
    out
}

/// Each identifier's profile root (SPEC section 3), by components and layered BFS.
pub fn profiles(spec: &Spec, events: &[Vec<Ident>]) -> BTreeMap<Ident, Ident> {
    let mut neighbours: BTreeMap<Ident, BTreeSet<Ident>> = BTreeMap::new();
    for ids in events {
        for a in ids {
            let entry = neighbours.entry(a.clone()).or_default();
            for b in ids {
                if a != b {
                    entry.insert(b.clone());
                }
            }
        }
    }
    let max = spec.identity.max_links;
    let hub: HashSet<Ident> = neighbours
        .iter()
        .filter(|(_, n)| n.len() > max)
        .map(|(id, _)| id.clone())
        .collect();
    let adjacent = |id: &Ident| -> Vec<Ident> {
        if hub.contains(id) {
            return Vec::new();
        }
        neighbours[id]
            .iter()
            .filter(|n| !hub.contains(*n))
            .cloned()
            .collect()
    };
    let anchor = |id: &Ident| spec.identity.identifiers[id.rank as usize].anchor;
    let mut root: BTreeMap<Ident, Ident> = BTreeMap::new();
    let mut done: HashSet<Ident> = HashSet::new();
    for start in neighbours.keys() {
        if done.contains(start) {
            continue;
        }
        // the component
        let mut component = vec![start.clone()];
        done.insert(start.clone());
        let mut i = 0;
        while i < component.len() {
            for n in adjacent(&component[i]) {
                if done.insert(n.clone()) {
                    component.push(n);
                }
            }
            i += 1;
        }
        let mut anchors: Vec<Ident> = component.iter().filter(|id| anchor(id)).cloned().collect();
        if anchors.is_empty() {
            let least = component.iter().min().cloned().unwrap();
            for id in component {
                root.insert(id, least.clone());
            }
            continue;
        }
        anchors.sort();
        let mut label: HashMap<Ident, Ident> =
            anchors.iter().map(|a| (a.clone(), a.clone())).collect();
        let mut frontier = anchors;
        while !frontier.is_empty() {
            let mut next: BTreeMap<Ident, Ident> = BTreeMap::new();
            for u in &frontier {
                let r = label[u].clone();
                for v in adjacent(u) {
                    if label.contains_key(&v) {
                        continue;
                    }
                    let slot = next.entry(v).or_insert_with(|| r.clone());
                    if r < *slot {
                        *slot = r.clone();
                    }
                }
            }
            frontier = next.keys().cloned().collect();
            label.extend(next);
        }
        root.extend(label);
    }
    root
}
