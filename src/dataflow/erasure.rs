//! Erasure support (SPEC section 6): the identifiers of the profiles that given identifiers
//! belong to, at the moment of a `forget` request. The retraction itself happens at the input
//! (the engine negates every stored event that carries one of them).

use super::identity::Label;
use super::{ByKey, Coll};
use crate::event::Ident;

/// `(query, member)` for every member of the profile of each queried identifier;
/// `queries` holds `(identifier, query id)`. Identifiers that are no node answer nothing.
pub fn profile_members<'s>(
    queries: Coll<'s, (Ident, u64)>,
    labels: ByKey<'s, Ident, Label>,
    members: ByKey<'s, Ident, Ident>,
) -> Coll<'s, (u64, Ident)> {
    queries
        .join_core(labels, |_id, query, label| {
            Some((label.root.clone(), *query))
        })
        .join_core(members, |_root, query, member| {
            Some((*query, member.clone()))
        })
}
