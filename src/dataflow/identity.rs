//! Identity resolution (SPEC section 3): labels (the graph's rules, hubs included, and their
//! maintenance live in [`super::labels`]) and profiles. An event belongs to the profile of
//! its highest-priority identifier: the per-event inputs are keyed by that identifier and
//! joined with the labels ([`super::Inputs`]).
//!
//! Every stage is a pure function of its input collections, so retracting events at the
//! input un-merges exactly what they merged.

use super::labels::{GraphChange, Label, Rules, maintained};
use super::{Coll, Node};

/// Every node's label: the least of its initial label and its neighbours' propagated labels
/// (SPEC section 3), the least fixed point over the links with neither end a hub,
/// maintained by [`super::labels::maintained`], which also applies the hub rule (so no stage
/// materialises degrees, hubs or edges). `links` holds each unordered pair of distinct
/// identifiers that occur in one live event, in both directions, once (as [`super::Inputs`]
/// feeds it); `wide` the identifiers of events with more than `max_links + 1` identifiers,
/// hubs by that event alone (their pairs are never built). `anchor[rank]` says which
/// identifier types are anchors.
pub fn labels<'s>(
    nodes: Coll<'s, Node>,
    links: Coll<'s, (Node, Node)>,
    wide: Coll<'s, Node>,
    rules: Rules,
) -> Coll<'s, (Node, Label)> {
    let changes = nodes
        .map(GraphChange::Node)
        .concat(links.map(|(a, b)| GraphChange::Link(a, b)))
        .concat(wide.map(GraphChange::Wide));
    maintained(changes, rules)
}

/// Profile membership: `(profile, identifier)` for every node, where the profile is the
/// root of the node's label (the profile key of SPEC section 3).
pub fn members<'s>(labels: Coll<'s, (Node, Label)>) -> Coll<'s, (Node, Node)> {
    labels.map(|(id, label)| (Node(label.root), id))
}
