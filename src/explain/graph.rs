//! The identity part of an explanation (SPEC section 3), recomputed from the live events
//! around one identifier: which profile it belongs to, every member's label with the path of
//! edges to its anchor (or to the least identifier), the anchors that tied and lost, and the
//! edges that leave the profile or were dropped at hubs.
//!
//! Labels only cross non-anchor nodes (an anchor always keeps its own label), so the labels
//! of a profile's members depend only on its *region*: the non-anchor nodes connected to it
//! through non-anchor nodes, and the anchors next to them. The walk never leaves that region,
//! however large the connected component is, and labels it with the function the dataflow
//! maintains labels with ([`least_fixed_point`]), so the two cannot disagree on a label.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use crate::dataflow::keeper::Held;
use crate::dataflow::labels::{Label, is_hub, is_wide, least_fixed_point};
use crate::dataflow::latest::{Rank, Slot};
use crate::dataflow::retention::{Cite, Kept, Set};
use crate::dataflow::{EventFacts, Seq};
use crate::event::Ident;
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
pub struct Graph<'a, 'h> {
    /// The keepers' live events, and what retention keeps of retired ones (SPEC section 9).
    held: &'a Held<'h>,
    spec: &'a Spec,
    at: u64,
    nodes: HashMap<Ident, Node>,
    /// The live events carrying each identifier read so far, decoded once (the history
    /// holds them encoded).
    events: RefCell<HashMap<Ident, Rc<[EventFacts]>>>,
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

/// Labels being settled, each with the neighbour it was taken from.
type Settled = BTreeMap<Ident, (Label, Option<Ident>)>;

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

impl<'a, 'h> Graph<'a, 'h> {
    /// The graph of the events the keepers hold (`held`) that arrived by clock `at`.
    pub fn new(held: &'a Held<'h>, spec: &'a Spec, at: u64) -> Graph<'a, 'h> {
        Graph {
            held,
            spec,
            at,
            nodes: HashMap::new(),
            events: RefCell::new(HashMap::new()),
        }
    }

    /// The live events (as of `at`) carrying `id`, in arrival order.
    pub fn events(&self, id: &Ident) -> Rc<[EventFacts]> {
        if let Some(events) = self.events.borrow().get(id) {
            return Rc::clone(events);
        }
        let at = self.at;
        let fetched = self.held.fetched(id);
        let mut events: Vec<EventFacts> = fetched.events.clone();
        events.retain(|facts| facts.arrival_ms <= at);
        // retired events (SPEC section 9): one standing for the links of each identifier
        // set, and those whose record is still kept
        let max_links = self.spec.identity.max_links;
        for set in &fetched.sets {
            let wide = is_wide(set.idents.len(), max_links);
            if set.retired > 0 && set.last.arrival_ms <= at {
                events.push(retired_event(set, wide, set.last, &[]));
            }
            let mut by_event: BTreeMap<Seq, Vec<Kept>> = BTreeMap::new();
            for kept in set.records() {
                if !self.held.is_live(kept.cite.seq) && kept.cite.arrival_ms <= at {
                    by_event.entry(kept.cite.seq).or_default().push(kept);
                }
            }
            for records in by_event.values() {
                if let Some(first) = records.first() {
                    events.push(retired_event(set, wide, first.cite, records));
                }
            }
        }
        events.sort_by_key(|facts| facts.seq);
        let events: Rc<[EventFacts]> = events.into();
        self.events
            .borrow_mut()
            .insert(id.clone(), Rc::clone(&events));
        events
    }

    /// How many retired events carried both `a` and `b`.
    pub fn retired_carrying_both(&self, a: &Ident, b: &Ident) -> u64 {
        let fetched = self.held.fetched(a);
        let both = fetched.sets.iter().filter(|set| set.idents.contains(b));
        both.map(|set| u64::from(set.retired)).sum()
    }

    /// The retired events whose primary identifier is `id`, and their signal occurrences.
    pub fn retired_of(&self, id: &Ident) -> (u64, u64) {
        let fetched = self.held.fetched(id);
        let own = fetched
            .sets
            .iter()
            .filter(|set| set.idents.first() == Some(id));
        own.fold((0, 0), |(events, expired), set| {
            let (e, x) = (u64::from(set.retired), u64::from(set.expired));
            (events + e, expired + x)
        })
    }

    /// Whether any live event carries `id` (it is a node).
    pub fn is_node(&self, id: &Ident) -> bool {
        !self.events(id).is_empty()
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
            for facts in self.events(id).iter() {
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

    /// Labels of `members` (a region and the anchors next to it) by the dataflow's own
    /// function, [`least_fixed_point`], with the neighbour each label was taken from, and
    /// the edges among `members`.
    fn settle(&mut self, members: &BTreeSet<Ident>) -> (Settled, HashMap<Ident, Vec<Ident>>) {
        let mut edges: HashMap<Ident, Vec<Ident>> = HashMap::new();
        for m in members {
            let mut out = self.edges(m);
            out.retain(|n| members.contains(n));
            edges.insert(m.clone(), out);
        }
        let settled: RefCell<Settled> = RefCell::new(
            members
                .iter()
                .map(|m| (m.clone(), (Label::initial(m, self.is_anchor(m)), None)))
                .collect(),
        );
        least_fixed_point(
            members.iter().cloned(),
            |n| settled.borrow().get(n).map(|(label, _)| label.clone()),
            |n, label, from| {
                settled
                    .borrow_mut()
                    .insert(n.clone(), (label, Some(from.clone())));
            },
            |n, out| out.extend(edges.get(n).into_iter().flatten().cloned()),
        );
        (settled.into_inner(), edges)
    }

    /// Labels of a region and its anchors, each with the neighbour one step nearer the
    /// anchor it took its label from (the least such neighbour) and the other anchors at the
    /// same distance, which lost on (rank, value).
    fn label_from_anchors(
        &mut self,
        region: &BTreeSet<Ident>,
        anchors: &BTreeSet<Ident>,
    ) -> BTreeMap<Ident, Labelled> {
        let members: BTreeSet<Ident> = region.union(anchors).cloned().collect();
        let (settled, edges) = self.settle(&members);
        // every anchor at the nearest distance, smallest first, nearest nodes first
        let mut by_distance: Vec<(&Ident, &(Label, Option<Ident>))> = settled
            .iter()
            .filter(|(_, (label, _))| label.class == 0)
            .collect();
        by_distance.sort_by_key(|(_, (label, _))| label.dist);
        let mut tied: HashMap<Ident, Vec<Ident>> = HashMap::new();
        for (n, (label, _)) in by_distance {
            let roots: Vec<Ident> = if label.dist == 0 {
                vec![n.clone()]
            } else {
                let nearer = edges.get(n).into_iter().flatten().filter(|u| {
                    settled
                        .get(*u)
                        .is_some_and(|(l, _)| l.class == 0 && l.dist + 1 == label.dist)
                });
                let roots: BTreeSet<&Ident> = nearer
                    .flat_map(|u| tied.get(u).into_iter().flatten())
                    .collect();
                roots
                    .into_iter()
                    .take(MAX_CONTENDERS + 1)
                    .cloned()
                    .collect()
            };
            tied.insert(n.clone(), roots);
        }
        settled
            .into_iter()
            .map(|(n, (label, parent))| {
                let contenders = tied
                    .get(&n)
                    .map(|roots| {
                        roots
                            .iter()
                            .filter(|r| **r != label.root)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                let labelled = Labelled {
                    label,
                    parent,
                    contenders,
                };
                (n, labelled)
            })
            .collect()
    }

    /// The labels of an anchorless region (every node's is `(1, 0, least)`), with parents
    /// along a shortest path to the least identifier.
    fn label_anonymous(&mut self, region: &BTreeSet<Ident>) -> BTreeMap<Ident, Labelled> {
        let (settled, edges) = self.settle(region);
        let mut parents: HashMap<Ident, Ident> = HashMap::new();
        let mut frontier: Vec<Ident> = region.first().cloned().into_iter().collect();
        let mut seen: BTreeSet<Ident> = frontier.iter().cloned().collect();
        while !frontier.is_empty() {
            let mut next: BTreeMap<Ident, Ident> = BTreeMap::new();
            for u in &frontier {
                for n in edges.get(u).into_iter().flatten() {
                    if !seen.contains(n) {
                        next.entry(n.clone()).or_insert_with(|| u.clone());
                    }
                }
            }
            seen.extend(next.keys().cloned());
            frontier = next.keys().cloned().collect();
            parents.extend(next);
        }
        settled
            .into_iter()
            .map(|(n, (label, _))| {
                let labelled = Labelled {
                    label,
                    parent: parents.remove(&n),
                    contenders: Vec::new(),
                };
                (n, labelled)
            })
            .collect()
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

/// A retired event as an explanation sees it: the identifiers of its set, and the records
/// kept from it, cited by `cite` (its source, line and time).
fn retired_event(set: &Set, wide: bool, cite: Cite, records: &[Kept]) -> EventFacts {
    let mut consent = Vec::new();
    let mut traits = Vec::new();
    for kept in records {
        match (&kept.slot, &kept.rank) {
            (Slot::Consent(purpose), Rank::Consent((_, denied))) => {
                consent.push((*purpose, !*denied));
            }
            (Slot::Trait(key), Rank::Trait((_, _, _, source, json))) => {
                traits.push((key.clone(), *source, json.clone()));
            }
            _ => {}
        }
    }
    let message_id = records.iter().find_map(|kept| match &kept.rank {
        Rank::Trait((_, id, _, _, _)) if !id.is_empty() => Some(id.as_str().into()),
        _ => None,
    });
    EventFacts {
        seq: cite.seq,
        idents: set.idents.to_vec(),
        wide,
        timestamp_ms: cite.timestamp_ms,
        arrival_ms: cite.arrival_ms,
        signals: Vec::new(),
        roles: Vec::new(),
        consent,
        traits,
        message_id,
        origin: cite.origin,
        blocked: Box::new([]),
    }
}
