//! Profile lookups: every fact of the profile a given identifier belongs to. Erasure (SPEC
//! section 6) asks for the members, to find the set S of identifiers to erase (the retraction
//! itself happens at the input: the engine negates every stored event carrying one of them);
//! `GET /v1/profiles/{type}:{value}` asks for everything.

use super::labels::Label;
use super::views::Fact;
use super::{ByKey, Coll, Node};
use crate::event::Ident;

/// `(query, (profile, fact))` for every fact of the profile of each queried identifier;
/// `queries` holds `(identifier, query id)`. An identifier that is no node answers nothing.
pub fn profile_facts_of<'s>(
    queries: Coll<'s, (Node, u64)>,
    labels: ByKey<'s, Node, Label>,
    facts: ByKey<'s, Node, Fact>,
) -> Coll<'s, (u64, (Ident, Fact))> {
    queries
        .join_core(labels, |_id, query, label| {
            Some((Node(label.root.clone()), *query))
        })
        .join_core(facts, |profile, query, fact| {
            Some((*query, (profile.0.clone(), fact.clone())))
        })
}
