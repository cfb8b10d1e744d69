//! The identity part of an explanation (SPEC section 3), recomputed from the live events
//! around one identifier: which profile it belongs to, every member's label with the path of
//! edges to its anchor (or to the least identifier), the anchors that tied and lost, and the
//! edges that leave the profile or were dropped at hubs.
//!
//! Labels only cross non-anchor nodes (an anchor always keeps its own label), so the labels
//! of a profile's members depend only on its *region*: the non-anchor nodes connected to it
//! through non-anchor nodes, and the anchors next to them. The walk never leaves that region,
//! however large the connected component is.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::dataflow::EventFacts;
use crate::dataflow::identity::{Label, is_hub};
use crate::event::Ident;
use crate::history::History;
use crate::spec::Spec;

/// At most this many anchors that tied and lost are reported per identifier.
pub const MAX_CONTENDERS: usize = 8;

/// Why an identifier is a hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubReason {
    /// More than `max_links` distinct neighbours (the walk stops counting there).
    Neighbours(usize),
    /// It occurs in an event with more than `max_links + 1` identifiers.
    WideEvent,
}

/// What the live events say about one node.
struct Node {
    /// Distinct neighbours (from events with at most `max_links + 1` identifiers).
    neighbours: BTreeSet<Ident>,
    hub: Option<HubReason>,
}

/// The identity graph as of clock `at`, read from the live events on demand.
pub struct Graph<'a> {
    history: &'a History,
    spec: &'a Spec,
    at: u64,
    nodes: HashMap<Ident, Node>,
}

/// A labelled node of the region walked.
#[derive(Clone, Debug)]
pub struct Labelled {
    /// Its label (SPEC section 3).
    pub label: Label,
    /// The neighbour its label came from, one step nearer the anchor (or the least
    /// identifier); `None` for the root itself.
    pub parent: Option<Ident>,
    /// Other anchors at the same distance, which lost on (rank, value); at most
    /// [`MAX_CONTENDERS`].
    pub contenders: Vec<Ident>,
}

/// The profile an identifier belongs to, with the labels of its members and of their
/// neighbours outside it.
pub struct Resolved {
    /// The profile key's identifier (the label's root).
    pub root: Ident,
    /// Members, sorted, with their labels.
    pub members: BTreeMap<Ident, Labelled>,
    /// Labels of other nodes met next to the members (other profiles' identifiers).
    pub others: HashMap<Ident, Label>,
}

impl<'a> Graph<'a> {
    /// The graph of the events `history` holds that arrived by clock `at`.
    pub fn new(history: &'a History, spec: &'a Spec, at: u64) -> Graph<'a> {
        Graph {
            history,
            spec,
            at,
            nodes: HashMap::new(),
        }
    }

    /// The live events (as of `at`) carrying `id`, in arrival order.
    pub fn events(&self, id: &Ident) -> impl Iterator<Item = &'a EventFacts> + use<'a> {
        let at = self.at;
        self.history
            .carrying(id)
            .filter(move |facts| facts.arrival_ms <= at)
    }

    /// Whether any live event carries `id` (it is a node).
    pub fn is_node(&self, id: &Ident) -> bool {
        self.events(id).next().is_some()
    }

    fn is_anchor(&self, id: &Ident) -> bool {
        self.spec
            .identity
            .identifiers
            .get(id.rank as usize)
            .is_some_and(|t| t.anchor)
    }

    fn node(&mut self, id: &Ident) -> &Node {
        if !self.nodes.contains_key(id) {
            let max_links = self.spec.identity.max_links;
            let mut node = Node {
                neighbours: BTreeSet::new(),
                hub: None,
            };
            for facts in self.events(id) {
                if facts.wide {
                    node.hub = Some(HubReason::WideEvent);
                    break;
                }
                node.neighbours
                    .extend(facts.idents.iter().filter(|n| *n != id).cloned());
                if is_hub(node.neighbours.len(), max_links) {
                    node.hub = Some(HubReason::Neighbours(node.neighbours.len()));
                    break;
                }
            }
            self.nodes.insert(id.clone(), node);
        }
        &self.nodes[id]
    }

    /// Why `id` is a hub, if it is one.
    pub fn hub(&mut self, id: &Ident) -> Option<HubReason> {
        self.node(id).hub.clone()
    }

    /// Every identifier that occurs in an event with `id` (for a hub: those found before
    /// the walk stopped counting).
    pub fn neighbours(&mut self, id: &Ident) -> Vec<Ident> {
        self.node(id).neighbours.iter().cloned().collect()
    }

    /// The neighbours `id` has an edge to: none for a hub, and none that are hubs.
    fn edges(&mut self, id: &Ident) -> Vec<Ident> {
        if self.hub(id).is_some() {
            return Vec::new();
        }
        let mut out = self.neighbours(id);
        out.retain(|n| self.hub(n).is_none());
        out
    }

    /// The non-anchor nodes reachable from `starts` along edges through non-anchor nodes,
    /// and the anchors next to them.
    fn region(&mut self, starts: &[Ident]) -> (BTreeSet<Ident>, BTreeSet<Ident>) {
        let (mut region, mut anchors) = (BTreeSet::new(), BTreeSet::new());
        let mut stack: Vec<Ident> = starts.to_vec();
        while let Some(id) = stack.pop() {
            if self.is_anchor(&id) {
                anchors.insert(id);
                continue;
            }
            if !region.insert(id.clone()) {
                continue;
            }
            stack.extend(self.edges(&id).into_iter().filter(|n| !region.contains(n)));
        }
        (region, anchors)
    }

    /// Labels of a region and its anchors: a breadth-first search from every anchor at
    /// once, one distance at a time, where each node takes the least root among its
    /// neighbours one step nearer (SPEC section 3's least label).
    fn label_from_anchors(
        &mut self,
        region: &BTreeSet<Ident>,
        anchors: &BTreeSet<Ident>,
    ) -> BTreeMap<Ident, Labelled> {
        let mut labelled: BTreeMap<Ident, Labelled> = BTreeMap::new();
        // every anchor at the nearest distance, smallest first (the first is the root)
        let mut tied: HashMap<Ident, Vec<Ident>> = HashMap::new();
        for a in anchors {
            labelled.insert(
                a.clone(),
                Labelled {
                    label: Label::initial(a, true),
                    parent: None,
                    contenders: Vec::new(),
                },
            );
            tied.insert(a.clone(), vec![a.clone()]);
        }
        let mut frontier: Vec<Ident> = anchors.iter().cloned().collect();
        let mut dist = 0u32;
        while !frontier.is_empty() {
            dist += 1;
            // each node one step further: the roots of its neighbours in the frontier
            let mut reached: BTreeMap<Ident, BTreeSet<Ident>> = BTreeMap::new();
            for u in &frontier {
                let roots = tied.get(u).cloned().unwrap_or_default();
                for n in self.edges(u) {
                    if region.contains(&n) && !labelled.contains_key(&n) {
                        reached.entry(n).or_default().extend(roots.iter().cloned());
                    }
                }
            }
            for (n, roots) in &reached {
                let roots: Vec<Ident> = roots.iter().take(MAX_CONTENDERS + 1).cloned().collect();
                tied.insert(n.clone(), roots);
            }
            for n in reached.keys() {
                let Some((root, others)) = tied.get(n).and_then(|r| r.split_first()) else {
                    continue;
                };
                let root = root.clone();
                // the least neighbour one step nearer whose own root is the same (neighbours
                // are sorted, so the first found); read from n's side, so the cost is n's
                // degree, not the size of the frontier
                let parent = self.nodes.get(n).and_then(|node| {
                    node.neighbours
                        .iter()
                        .find(|u| {
                            labelled
                                .get(*u)
                                .is_some_and(|l| l.label.dist + 1 == dist && l.label.root == root)
                        })
                        .cloned()
                });
                labelled.insert(
                    n.clone(),
                    Labelled {
                        label: Label::anchored(root, dist),
                        parent,
                        contenders: others.to_vec(),
                    },
                );
            }
            frontier = reached.into_keys().collect();
        }
        labelled
    }

    /// The labels of an anchorless region: every node is `(1, 0, least)`; parents lead
    /// along a shortest path to the least identifier.
    fn label_anonymous(&mut self, region: &BTreeSet<Ident>) -> BTreeMap<Ident, Labelled> {
        let mut labelled = BTreeMap::new();
        let Some(least) = region.first().cloned() else {
            return labelled;
        };
        let label = Label::initial(&least, false);
        labelled.insert(
            least.clone(),
            Labelled {
                label: label.clone(),
                parent: None,
                contenders: Vec::new(),
            },
        );
        let mut frontier = vec![least];
        while !frontier.is_empty() {
            let mut next: BTreeMap<Ident, Ident> = BTreeMap::new();
            for u in &frontier {
                for n in self.edges(u) {
                    if region.contains(&n) && !labelled.contains_key(&n) {
                        next.entry(n).or_insert_with(|| u.clone());
                    }
                }
            }
            for (n, parent) in &next {
                labelled.insert(
                    n.clone(),
                    Labelled {
                        label: label.clone(),
                        parent: Some(parent.clone()),
                        contenders: Vec::new(),
                    },
                );
            }
            frontier = next.into_keys().collect();
        }
        labelled
    }

    /// The profile `id` belongs to (it must be a node).
    pub fn resolve(&mut self, id: &Ident) -> Resolved {
        if self.hub(id).is_some() {
            // a hub keeps its node and loses every edge: a profile of its own
            let mut members = BTreeMap::new();
            let label = Label::initial(id, self.is_anchor(id));
            members.insert(
                id.clone(),
                Labelled {
                    label,
                    parent: None,
                    contenders: Vec::new(),
                },
            );
            return Resolved {
                root: id.clone(),
                members,
                others: HashMap::new(),
            };
        }
        let root = if self.is_anchor(id) {
            id.clone()
        } else {
            let (region, anchors) = self.region(std::slice::from_ref(id));
            if anchors.is_empty() {
                let members = self.label_anonymous(&region);
                let root = region.first().cloned().unwrap_or_else(|| id.clone());
                return Resolved {
                    root,
                    members,
                    others: HashMap::new(),
                };
            }
            let labels = self.label_from_anchors(&region, &anchors);
            labels
                .get(id)
                .map_or_else(|| id.clone(), |l| l.label.root.clone())
        };
        // the anchor's region: its non-anchor neighbours and everything behind them
        let starts = self.edges(&root);
        let (region, mut anchors) = self.region(&starts);
        anchors.insert(root.clone());
        let labels = self.label_from_anchors(&region, &anchors);
        let (members, others): (BTreeMap<_, _>, BTreeMap<_, _>) =
            labels.into_iter().partition(|(_, l)| l.label.root == root);
        Resolved {
            root,
            members,
            others: others.into_iter().map(|(k, l)| (k, l.label)).collect(),
        }
    }
}
