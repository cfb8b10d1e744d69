//! Node labels of the identity graph (SPEC section 3): the [`Label`] and its step across
//! an edge, the least fixed point they define, and the operator that maintains it.
//!
//! SPEC section 3 defines every node's label as the least of its own initial label and its
//! neighbours' labels stepped across the edge ([`Label::initial`], [`Label::across_edge`]):
//! a least fixed point. A generic `iterate` reaches it by rounds of join and reduce, each
//! round a nested timely scope with its own progress tracking, which made it the costliest
//! stage of a dataflow round (issue 13). [`least_fixed_point`] reaches the same fixed point
//! Dijkstra-style instead: a label never shrinks across an edge, so settling the smallest
//! label first settles every node once. The explanations label the graph they rebuild with
//! the same function.
//!
//! [`Graph`] keeps the graph and its labels and updates them per dataflow time:
//! - when a time only adds nodes and edges, labels can only shrink, so relaxing from the
//!   new nodes and edges' ends reaches the new fixed point;
//! - when it removes any, labels may grow, so the *regions* around the changed nodes are
//!   relabelled from their initial labels. A region is a set of non-anchor nodes connected
//!   through non-anchor nodes, with the anchors next to it: an anchor's own label is the
//!   least it can have, so it forwards only its own label and nothing crosses it, and a
//!   region's labels depend on the region alone (the same observation
//!   [`crate::explain`] walks by).
//!
//! The graph is not partitioned (a region can span any keys), so [`maintained`] routes every
//! change to one worker, and the labels it emits go back to the keyed arrangements.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::hash::Hash;

use differential_dataflow::AsCollection;
use differential_dataflow::consolidation::consolidate;
use serde::{Deserialize, Serialize};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::Operator;

use super::{Coll, Node, Time};
use crate::event::Ident;

/// A node's label (SPEC section 3): `(class, distance, root)` ordered lexicographically,
/// where `root` is the anchor (class 0) or the least identifier (class 1) it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Label {
    /// 0 for an anchor's label, 1 for an anonymous one.
    pub class: u8,
    /// Edges from the anchor (always 0 for class 1).
    pub dist: u32,
    /// The identifier that names the profile.
    pub root: Ident,
}

impl Label {
    /// The initial label of a node: `(0, 0, rank, value)` for an anchor, else `(1, 0, rank, value)`.
    pub fn initial(ident: &Ident, anchor: bool) -> Label {
        Label {
            class: if anchor { 0 } else { 1 },
            dist: 0,
            root: ident.clone(),
        }
    }

    /// The label proposed to a neighbour: anchors' labels grow one step, others pass unchanged.
    pub fn across_edge(&self) -> Label {
        if self.class == 0 {
            Label::anchored(self.root.clone(), self.dist.saturating_add(1))
        } else {
            Label {
                class: 1,
                dist: 0,
                root: self.root.clone(),
            }
        }
    }

    /// The label of anchor `root` after `dist` steps across edges.
    pub fn anchored(root: Ident, dist: u32) -> Label {
        Label {
            class: 0,
            dist,
            root,
        }
    }
}

/// The hub rule (SPEC section 3): an identifier with more than `max_links` distinct
/// neighbours is a hub.
pub fn is_hub(neighbours: usize, max_links: usize) -> bool {
    neighbours > max_links
}

/// An event with more than `max_links + 1` identifiers gives each of them more than
/// `max_links` neighbours: all are hubs by that event alone (SPEC section 3).
pub fn is_wide(identifiers: usize, max_links: usize) -> bool {
    is_hub(identifiers.saturating_sub(1), max_links)
}

/// What decides the graph's labels besides its nodes and links: which identifier types are
/// anchors (`anchor[rank]`) and the hub threshold.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Whether each identifier type (by rank) is an anchor.
    pub anchor: Vec<bool>,
    /// An identifier with more neighbours than this is a hub.
    pub max_links: usize,
}

/// One update of the identity graph: a node, one direction of a link (links arrive in both
/// directions), or the mark of an identifier of a wide event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GraphChange {
    /// A node of the graph (an identifier of a live event).
    Node(Node),
    /// A link from the first node to the second: an edge unless either end is a hub.
    Link(Node, Node),
    /// An identifier of an event with too many identifiers ([`is_wide`]): a hub.
    Wide(Node),
}

/// SPEC section 3: a link is an edge when neither end is a hub.
pub fn is_edge(a_is_hub: bool, b_is_hub: bool) -> bool {
    !a_is_hub && !b_is_hub
}

/// Relaxes labels across edges until no node is offered a smaller one, from `seeds` (nodes
/// whose label may now be offered to a neighbour). `label` reads and `relabel` lowers a
/// node's label; `neighbours` lists the nodes a node has an edge to. Labels must start at
/// or above the fixed point (initial labels, or a fixed point of a graph with fewer edges).
/// `relabel` also gets the neighbour whose offer was taken: the last call for a node names
/// the least neighbour (by `K`'s order) that offers its final label.
pub fn least_fixed_point<K, L, R, N>(
    seeds: impl IntoIterator<Item = K>,
    mut label: L,
    mut relabel: R,
    mut neighbours: N,
) where
    K: Clone + Ord,
    L: FnMut(&K) -> Option<Label>,
    R: FnMut(&K, Label, &K),
    N: FnMut(&K, &mut Vec<K>),
{
    let mut heap: BinaryHeap<Reverse<(Label, K)>> = seeds
        .into_iter()
        .filter_map(|k| label(&k).map(|l| Reverse((l, k))))
        .collect();
    let mut next = Vec::new();
    while let Some(Reverse((settled, node))) = heap.pop() {
        if label(&node).as_ref() != Some(&settled) {
            continue; // lowered since it was queued
        }
        let offer = settled.across_edge();
        next.clear();
        neighbours(&node, &mut next);
        for n in next.drain(..) {
            if label(&n).is_some_and(|current| offer < current) {
                relabel(&n, offer.clone(), &node);
                heap.push(Reverse((offer.clone(), n)));
            }
        }
    }
}

/// A node's state: how many times it is present as a node and marked wide, its links (with
/// counts; their number is its degree) and its current label (`None` when it is no longer
/// in the graph).
#[derive(Default)]
struct Vertex {
    count: isize,
    wide: isize,
    links: Links,
    label: Option<Label>,
}

/// A node's links with their counts. A node with many (a hub: a shared device, a default
/// id from a buggy SDK) also indexes them by neighbour, so updating one link costs the
/// same whatever its degree: a hub of degree N costs O(N) to build, not O(N²).
#[derive(Default)]
struct Links {
    list: Vec<(Node, isize)>,
    /// Position in `list` by neighbour, once `list` is longer than [`INDEX_FROM`].
    index: Option<HashMap<Node, usize>>,
}

/// Links a node has before they are indexed (a scan of a few is cheaper than a map).
#[cfg(not(test))]
const INDEX_FROM: usize = 32;
/// In unit tests, indexed from three links on, so the property tests exercise the index.
#[cfg(test)]
const INDEX_FROM: usize = 2;

impl Links {
    fn len(&self) -> usize {
        self.list.len()
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &(Node, isize)> {
        self.list.iter()
    }

    /// Adds `diff` to the link to `to`, removing it at zero.
    fn update(&mut self, to: Node, diff: isize) {
        let at = match &self.index {
            Some(index) => index.get(&to).copied(),
            None => self.list.iter().position(|(n, _)| *n == to),
        };
        let Some(i) = at else {
            if let Some(index) = &mut self.index {
                index.insert(to.clone(), self.list.len());
            }
            self.list.push((to, diff));
            if self.index.is_none() && self.list.len() > INDEX_FROM {
                let index = self.list.iter().enumerate();
                self.index = Some(index.map(|(i, (n, _))| (n.clone(), i)).collect());
            }
            return;
        };
        let Some(link) = self.list.get_mut(i) else {
            return;
        };
        link.1 += diff;
        if link.1 != 0 {
            return;
        }
        let (gone, _) = self.list.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(&gone);
            if let Some((moved, _)) = self.list.get(i) {
                index.insert(moved.clone(), i);
            }
        }
    }
}

impl Vertex {
    /// In the graph: a node, or the end of a link.
    fn live(&self) -> bool {
        self.count > 0 || !self.links.is_empty()
    }

    /// SPEC section 3's hub rule: marked wide, or more than `max_links` neighbours.
    fn is_hub(&self, max_links: usize) -> bool {
        self.wide > 0 || is_hub(self.links.len(), max_links)
    }
}

/// The identity graph and its labels, updated one dataflow time at a time.
pub struct Graph {
    rules: Rules,
    /// Grows without stalls (see `griddle` in Cargo.toml).
    vertices: griddle::HashMap<Node, Vertex>,
}

impl Graph {
    /// An empty graph under `rules`.
    pub fn new(rules: Rules) -> Graph {
        Graph {
            rules,
            vertices: griddle::HashMap::new(),
        }
    }

    fn is_anchor(&self, node: &Node) -> bool {
        self.rules
            .anchor
            .get(node.0.rank as usize)
            .copied()
            .unwrap_or(false)
    }

    fn initial(&self, node: &Node) -> Label {
        Label::initial(&node.0, self.is_anchor(node))
    }

    /// The nodes `node` has an edge to ([`is_edge`]).
    fn edges(&self, node: &Node, out: &mut Vec<Node>) {
        let Some(v) = self.vertices.get(node) else {
            return;
        };
        let max = self.rules.max_links;
        if v.is_hub(max) {
            return; // a hub has no edges, however many links (its degree is not scanned)
        }
        let hub = |n: &Node| self.vertices.get(n).is_some_and(|v| v.is_hub(max));
        out.extend(
            v.links
                .iter()
                .filter(|(n, _)| is_edge(v.is_hub(max), hub(n)))
                .map(|(n, _)| n.clone()),
        );
    }

    /// Applies one time's changes and returns the changes of `(node, label)` they cause.
    pub fn apply(&mut self, mut changes: Vec<(GraphChange, isize)>) -> Vec<((Node, Label), isize)> {
        consolidate(&mut changes);
        let max = self.rules.max_links;
        let mut dirty = Vec::with_capacity(changes.len());
        let mut shrank = false;
        // whether each vertex changed was a hub before this time
        let mut was_hub: HashMap<Node, bool> = HashMap::new();
        for (change, diff) in changes {
            shrank |= diff < 0;
            let key = match &change {
                GraphChange::Node(n) | GraphChange::Link(n, _) | GraphChange::Wide(n) => n,
            };
            if !was_hub.contains_key(key) {
                let hub = self.vertices.get(key).is_some_and(|v| v.is_hub(max));
                was_hub.insert(key.clone(), hub);
            }
            match change {
                GraphChange::Node(n) => {
                    self.vertices.entry(n.clone()).or_default().count += diff;
                    dirty.push(n);
                }
                GraphChange::Link(a, b) => {
                    let links = &mut self.vertices.entry(a.clone()).or_default().links;
                    links.update(b, diff);
                    dirty.push(a);
                }
                GraphChange::Wide(n) => {
                    self.vertices.entry(n.clone()).or_default().wide += diff;
                    dirty.push(n);
                }
            }
        }
        for (n, was) in was_hub {
            let Some(v) = self.vertices.get(&n) else {
                continue;
            };
            if v.is_hub(max) != was {
                // becoming a hub removes its edges, ceasing to be one adds them: either
                // way the regions around it and its neighbours are relabelled
                shrank = true;
                dirty.extend(v.links.iter().map(|(m, _)| m.clone()));
                dirty.push(n);
            }
        }
        // labels before this time, of every node relabelled
        let mut before: HashMap<Node, Option<Label>> = HashMap::new();
        for n in &dirty {
            let initial = self.initial(n);
            if let Some(v) = self.vertices.get_mut(n) {
                let label = v.live().then_some(initial);
                if label.is_none() || v.label.is_none() {
                    before.entry(n.clone()).or_insert_with(|| v.label.clone());
                    v.label = label;
                }
            }
        }
        let seeds = if shrank {
            self.reset_regions(&dirty, &mut before)
        } else {
            dirty
        };
        self.relax(seeds, &mut before);
        let mut out = Vec::new();
        for (n, old) in before {
            let new = self.vertices.get(&n).and_then(|v| v.label.clone());
            if old != new {
                if let Some(old) = old {
                    out.push(((n.clone(), old), -1));
                }
                if let Some(new) = new {
                    out.push(((n.clone(), new), 1));
                }
            }
            if self
                .vertices
                .get(&n)
                .is_some_and(|v| !v.live() && v.wide == 0)
            {
                self.vertices.remove(&n);
            }
        }
        out
    }

    /// Resets every node of the regions around `dirty` to its initial label and returns the
    /// regions' nodes and the anchors next to them, from which relaxing relabels them.
    fn reset_regions(
        &mut self,
        dirty: &[Node],
        before: &mut HashMap<Node, Option<Label>>,
    ) -> Vec<Node> {
        let mut region: HashSet<Node> = HashSet::new();
        let mut anchors: HashSet<Node> = HashSet::new();
        let mut stack: Vec<Node> = dirty.to_vec();
        while let Some(n) = stack.pop() {
            if self.is_anchor(&n) {
                anchors.insert(n);
                continue;
            }
            let Some(v) = self.vertices.get(&n) else {
                continue;
            };
            if !v.live() || !region.insert(n.clone()) {
                continue;
            }
            self.edges(&n, &mut stack);
        }
        for n in &region {
            let initial = self.initial(n);
            if let Some(v) = self.vertices.get_mut(n) {
                before.entry(n.clone()).or_insert_with(|| v.label.clone());
                v.label = Some(initial);
            }
        }
        region.into_iter().chain(anchors).collect()
    }

    /// Relaxes labels from `seeds` to the least fixed point, noting each relabelled node's
    /// label before this time in `before`.
    fn relax(&mut self, seeds: Vec<Node>, before: &mut HashMap<Node, Option<Label>>) {
        let graph = std::cell::RefCell::new(self);
        least_fixed_point(
            seeds,
            |n| graph.borrow().vertices.get(n).and_then(|v| v.label.clone()),
            |n, label, _from| {
                if let Some(v) = graph.borrow_mut().vertices.get_mut(n) {
                    before.entry(n.clone()).or_insert_with(|| v.label.clone());
                    v.label = Some(label);
                }
            },
            |n, out| graph.borrow().edges(n, out),
        );
    }
}

/// Every node's label (SPEC section 3): the least fixed point of the labelling over the
/// graph of `changes`, as a collection that changes at the times the graph does.
pub fn maintained<'s>(changes: Coll<'s, GraphChange>, rules: Rules) -> Coll<'s, (Node, Label)> {
    let worker = changes.inner.scope().peers().saturating_sub(1) as u64;
    changes
        .inner
        .unary_frontier(
            Exchange::new(move |_: &(GraphChange, Time, isize)| worker),
            "Labels",
            move |_, _| {
                let mut graph = Graph::new(rules);
                let mut pending: BTreeMap<Time, Vec<(GraphChange, isize)>> = BTreeMap::new();
                let mut held: Option<Capability<Time>> = None;
                move |(input, frontier), output| {
                    input.for_each(|cap, data| {
                        if let Some(cap) = cap.retain_least(0)
                            && held.as_ref().is_none_or(|h| cap.time() < h.time())
                        {
                            held = Some(cap);
                        }
                        for (change, time, diff) in data.drain(..) {
                            pending.entry(time).or_default().push((change, diff));
                        }
                    });
                    // one message for every time completed, under the least capability
                    if let Some(cap) = held.as_ref() {
                        let mut session = output.session(cap);
                        while let Some(entry) = pending.first_entry() {
                            let time = *entry.key();
                            if frontier.less_equal(&time) {
                                break;
                            }
                            let out = graph.apply(entry.remove());
                            session.give_iterator(out.into_iter().map(|(d, r)| (d, time, r)));
                        }
                    }
                    match (pending.keys().next(), held.as_mut()) {
                        (Some(next), Some(cap)) => cap.downgrade(next),
                        _ => held = None,
                    }
                }
            },
        )
        .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Labels by the SPEC's definition, iterated naively to the fixed point over the links
    /// with neither end a hub (marked wide, or more than `max_links` neighbours).
    fn from_scratch(model: &Model, rules: &Rules) -> BTreeMap<Node, Label> {
        let Model { nodes, links, wide } = model;
        let degree = |n: &Node| links.iter().filter(|(a, _)| a == n).count();
        let hubs: HashSet<&Node> = nodes
            .iter()
            .filter(|n| wide.contains(*n) || degree(n) > rules.max_links)
            .collect();
        let anchor = &rules.anchor;
        let mut labels: BTreeMap<Node, Label> = nodes
            .iter()
            .map(|n| (n.clone(), Label::initial(&n.0, anchor[n.0.rank as usize])))
            .collect();
        loop {
            let mut changed = false;
            for (a, b) in links {
                if hubs.contains(a) || hubs.contains(b) {
                    continue;
                }
                let offer = labels[a].across_edge();
                if offer < labels[b] {
                    labels.insert(b.clone(), offer);
                    changed = true;
                }
            }
            if !changed {
                return labels;
            }
        }
    }

    fn node(i: u8) -> Node {
        // ranks 0 (anchor) and 1..3; values chosen so rank and value orders disagree
        Node(Ident::new(i % 3, &format!("v{}", 9 - i / 3)))
    }

    /// The model the operator is fed by: sets of nodes, links (both ways) and wide marks.
    #[derive(Default)]
    struct Model {
        nodes: HashSet<Node>,
        links: HashSet<(Node, Node)>,
        wide: HashSet<Node>,
    }

    impl Model {
        /// Applies one random operation; returns the changes to feed.
        fn step(&mut self, op: u8, a: Node, b: Node) -> Vec<(GraphChange, isize)> {
            let mut changes = Vec::new();
            match op % 3 {
                0 => {
                    for n in [&a, &b] {
                        if self.nodes.insert(n.clone()) {
                            changes.push((GraphChange::Node(n.clone()), 1));
                        }
                    }
                    if a != b && self.links.insert((a.clone(), b.clone())) {
                        self.links.insert((b.clone(), a.clone()));
                        changes.push((GraphChange::Link(a.clone(), b.clone()), 1));
                        changes.push((GraphChange::Link(b, a), 1));
                    }
                }
                1 => {
                    // retract `a` with all its links and its hub mark
                    if self.nodes.remove(&a) {
                        changes.push((GraphChange::Node(a.clone()), -1));
                        let gone: Vec<_> = self
                            .links
                            .iter()
                            .filter(|(x, _)| *x == a)
                            .cloned()
                            .collect();
                        for (x, y) in gone {
                            self.links.remove(&(x.clone(), y.clone()));
                            self.links.remove(&(y.clone(), x.clone()));
                            changes.push((GraphChange::Link(x.clone(), y.clone()), -1));
                            changes.push((GraphChange::Link(y, x), -1));
                        }
                        if self.wide.remove(&a) {
                            changes.push((GraphChange::Wide(a), -1));
                        }
                    }
                }
                _ => {
                    // toggle whether a node is marked wide
                    if self.wide.remove(&a) {
                        changes.push((GraphChange::Wide(a), -1));
                    } else if self.nodes.contains(&a) {
                        self.wide.insert(a.clone());
                        changes.push((GraphChange::Wide(a), 1));
                    }
                }
            }
            changes
        }
    }

    proptest! {
        /// Applying random batches of insertions, retractions and wide marks (with hubs by
        /// degree as links come and go) keeps exactly the labels a computation from scratch
        /// gives, and retracting everything leaves no label and no state.
        #[test]
        fn incremental_labels_equal_labels_from_scratch(
            batches in prop::collection::vec(
                prop::collection::vec((0u8..12, 0u8..12, 0u8..6), 1..6), 1..25)
        ) {
            let rules = Rules { anchor: vec![true, false, false], max_links: 3 };
            let mut graph = Graph::new(rules.clone());
            let mut model = Model::default();
            let mut out: BTreeMap<(Node, Label), isize> = BTreeMap::new();
            let step = |graph: &mut Graph, changes: Vec<(GraphChange, isize)>,
                        out: &mut BTreeMap<(Node, Label), isize>| {
                for (d, r) in graph.apply(changes) {
                    *out.entry(d).or_default() += r;
                }
                out.retain(|_, r| *r != 0);
            };
            for batch in batches {
                let mut changes = Vec::new();
                for (a, b, op) in batch {
                    // inserting is likelier than retracting or changing a hub
                    let op = if op < 4 { 0 } else { op - 3 };
                    changes.extend(model.step(op, node(a), node(b)));
                }
                step(&mut graph, changes, &mut out);
                let expected: BTreeMap<(Node, Label), isize> =
                    from_scratch(&model, &rules)
                        .into_iter()
                        .map(|(n, l)| ((n, l), 1))
                        .collect();
                prop_assert_eq!(&out, &expected);
            }
            let mut changes = Vec::new();
            for (a, b) in &model.links {
                changes.push((GraphChange::Link(a.clone(), b.clone()), -1));
            }
            for n in &model.nodes {
                changes.push((GraphChange::Node(n.clone()), -1));
            }
            for n in &model.wide {
                changes.push((GraphChange::Wide(n.clone()), -1));
            }
            step(&mut graph, changes, &mut out);
            prop_assert!(out.is_empty());
            prop_assert!(graph.vertices.is_empty());
        }
    }
}
