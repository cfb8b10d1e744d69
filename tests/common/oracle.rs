//! An independent, deliberately naive implementation of SPEC.md sections 1-3 and 7 for the
//! identity views. It shares only the per-line parser (`event::parse`, unit-tested on its
//! own) with the engine: admission, the identity graph, labels, time semantics and output
//! are recomputed from scratch here, with different algorithms (union-find components and a
//! layered multi-source BFS instead of label propagation; full recomputation at every clock
//! value instead of incremental updates).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use throughline::event::{self, Ident, Kind, MAX_LINE_BYTES};
use throughline::spec::{Field, Spec};

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

/// Like [`run`], but computes the state only at clock values where `sample` holds (and at
/// the end): `changes` then holds differences between sampled states, and `snapshots` the
/// sampled states. For inputs too large to recompute at every clock value.
pub fn run_sampled(spec: &Spec, input: &[u8], wall_ms: u64, sample: &dyn Fn(u64) -> bool) -> Run {
    let mut seen: HashSet<String> = HashSet::new();
    let mut clock: Option<u64> = None;
    let mut events: Vec<Vec<Ident>> = Vec::new();
    let mut dead = Vec::new();
    let mut state: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut changes = Vec::new();
    let mut snapshots = BTreeMap::new();

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
        let ev = match event::parse(raw, spec) {
            Ok(e) => e,
            Err(r) => {
                dead.push((number, r.reason.code().to_string()));
                continue;
            }
        };
        if ev.message_id.as_ref().is_some_and(|id| seen.contains(id)) {
            continue;
        }
        if ev.timestamp_ms > wall_ms + spec.intent.max_future_ms {
            dead.push((number, "future_timestamp".to_string()));
            continue;
        }
        if let Some(id) = &ev.message_id {
            seen.insert(id.clone());
        }
        let now = clock.map_or(ev.timestamp_ms, |c| c.max(ev.timestamp_ms));
        if let Some(c) = clock
            && now > c
            && sample(c)
        {
            close(spec, c, &events, &mut state, &mut changes, &mut snapshots);
        }
        clock = Some(now);
        if ev.kind != Kind::Forget {
            events.push(ev.idents);
        }
    }
    if let Some(c) = clock {
        close(spec, c, &events, &mut state, &mut changes, &mut snapshots);
    }
    Run {
        changes,
        snapshot: snapshot_lines(&state),
        dead_letters: dead,
        snapshots,
    }
}

/// The state at `t` becomes final: diff it against the previous state.
fn close(
    spec: &Spec,
    t: u64,
    events: &[Vec<Ident>],
    state: &mut BTreeMap<(String, String), String>,
    changes: &mut Vec<String>,
    snapshots: &mut BTreeMap<u64, Vec<String>>,
) {
    let next = views(spec, events);
    let keys: BTreeSet<&(String, String)> = state.keys().chain(next.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let (old, new) = (state.get(k), next.get(k));
        if old == new {
            continue;
        }
        if let Some(row) = old {
            out.push((k.0.clone(), k.1.clone(), -1, row.clone()));
        }
        if let Some(row) = new {
            out.push((k.0.clone(), k.1.clone(), 1, row.clone()));
        }
    }
    out.sort();
    for (view, key, diff, row) in out {
        changes.push(format!(
            "{{\"view\":{},\"time\":{t},\"key\":{},\"diff\":{diff},\"row\":{row}}}",
            serde_json::Value::from(view),
            serde_json::Value::from(key)
        ));
    }
    *state = next;
    snapshots.insert(t, snapshot_lines(state));
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

/// Every identity view's rows for a set of events: (view, key) -> row JSON.
pub fn views(spec: &Spec, events: &[Vec<Ident>]) -> BTreeMap<(String, String), String> {
    let roots = profiles(spec, events);
    let mut members: BTreeMap<Ident, Vec<Ident>> = BTreeMap::new();
    for (id, root) in roots {
        members.entry(root).or_default().push(id);
    }
    let mut out = BTreeMap::new();
    for view in spec.views.iter().filter(|v| v.identity_only()) {
        for (root, ids) in &members {
            let mut row = serde_json::Map::new();
            let mut fields = Vec::new();
            for f in &view.fields {
                if let Field::Identifier(rank) = f {
                    let mut values: Vec<&str> = ids
                        .iter()
                        .filter(|i| i.rank as usize == *rank)
                        .map(|i| &*i.value)
                        .collect();
                    values.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                    fields.push((f.name(spec).to_string(), values));
                }
            }
            // keep declared order: build the JSON text by hand
            let body: Vec<String> = fields
                .iter()
                .map(|(name, values)| {
                    format!(
                        "{}:{}",
                        serde_json::Value::from(name.as_str()),
                        serde_json::to_string(values).unwrap()
                    )
                })
                .collect();
            row.clear();
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
