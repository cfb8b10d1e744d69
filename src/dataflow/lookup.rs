//! Profile lookups: the profile a given identifier belongs to, whose facts
//! [`super::profiles`] answers with. Erasure (SPEC section 6) asks for the members, to find
//! the set S of identifiers to erase (the retraction itself happens at the input: the
//! engine negates every stored event carrying one of them); `GET /v1/profiles/{type}:{value}`
//! asks for everything.

use super::labels::Label;
use super::{ByKey, Coll, Node};

/// `(profile, query)` for each queried identifier's profile; `queries` holds
/// `(identifier, query id)`. An identifier that is no node has no profile.
pub fn profiles_of<'s>(
    queries: Coll<'s, (Node, u64)>,
    labels: ByKey<'s, Node, Label>,
) -> Coll<'s, (Node, u64)> {
    queries.join_core(labels, |_id, query, label| {
        Some((Node(label.root.clone()), *query))
    })
}
