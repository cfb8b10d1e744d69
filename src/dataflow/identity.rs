//! Identity resolution (SPEC section 3): the identity graph, hubs, labels (the rule and its
//! maintenance live in [`super::labels`]), profiles and the event → profile attribution.
//!
//! Every stage is a pure function of its input collections, so retracting events at the
//! input un-merges exactly what they merged.

use differential_dataflow::operators::{CountTotal, ThresholdTotal};

use super::labels::{GraphChange, Label, maintained};
use super::{ByKey, Coll, Node, Seq};

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

/// Hubs: identifiers with more than `max_links` distinct neighbours, counted before any edge
/// is dropped. `links` holds each unordered pair of distinct identifiers that occur in one
/// live event, in both directions, once (as [`super::Inputs`] feeds it). `wide` holds the identifiers of events with more than `max_links + 1`
/// identifiers, which are hubs by that event alone (so their pairs are never built).
pub fn hubs<'s>(
    links: Coll<'s, (Node, Node)>,
    wide: Coll<'s, Node>,
    max_links: usize,
) -> Coll<'s, Node> {
    let by_degree = links
        .map(|(a, _)| a)
        .count_total()
        .filter(move |(_, degree)| is_hub(*degree as usize, max_links))
        .map(|(a, _)| a);
    by_degree.concat(wide).distinct_total()
}

/// Every node's label: the least of its initial label and its neighbours' propagated labels
/// (SPEC section 3), the least fixed point over the links with neither end a hub,
/// maintained by [`super::labels::maintained`] (which drops a hub's edges itself, so no
/// stage materialises the edges). `anchor[rank]` says which identifier types are anchors.
pub fn labels<'s>(
    nodes: Coll<'s, Node>,
    links: Coll<'s, (Node, Node)>,
    hubs: Coll<'s, Node>,
    anchor: Vec<bool>,
) -> Coll<'s, (Node, Label)> {
    let changes = nodes
        .map(GraphChange::Node)
        .concat(links.map(|(a, b)| GraphChange::Link(a, b)))
        .concat(hubs.map(GraphChange::Hub));
    maintained(changes, anchor)
}

/// Profile membership: `(profile, identifier)` for every node, where the profile is the
/// root of the node's label (the profile key of SPEC section 3).
pub fn members<'s>(labels: Coll<'s, (Node, Label)>) -> Coll<'s, (Node, Node)> {
    labels.map(|(id, label)| (Node(label.root), id))
}

/// Attribution: `(event, profile)` for every live event, the profile of the event's
/// highest-priority identifier (SPEC section 3, last paragraph).
pub fn attribution<'s>(
    primary: Coll<'s, (Node, Seq)>,
    labels: ByKey<'s, Node, Label>,
) -> Coll<'s, (Seq, Node)> {
    primary.join_core(labels, |_id, seq, label| {
        Some((*seq, Node(label.root.clone())))
    })
}
