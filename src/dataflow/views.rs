//! Views (SPEC section 5 and 7): one row per qualifying profile, holding only the view's
//! declared fields.

use super::Coll;
use crate::event::Ident;
use crate::spec::{Field, Spec, ViewSpec};

/// A view row change's data: (view index in the spec, profile key, row as a JSON object).
pub type ViewRow = (u16, Ident, String);

/// Each profile's identifiers, sorted by priority (type rank, then byte order of the value).
/// Invariant: `(p, ids)` is present iff `p` is a profile and `ids` are exactly its members.
pub fn profile_identifiers<'s>(members: Coll<'s, (Ident, Ident)>) -> Coll<'s, (Ident, Vec<Ident>)> {
    members.reduce(|_profile, ids, out| {
        out.push((ids.iter().map(|(id, _)| (*id).clone()).collect(), 1));
    })
}

/// Rows of a view whose fields are all identifier types and which has no condition: one row
/// per profile, each field the profile's values of that type in byte order (`[]` if none).
pub fn identity_rows<'s>(
    identifiers: Coll<'s, (Ident, Vec<Ident>)>,
    view_index: u16,
    view: &ViewSpec,
    spec: &Spec,
) -> Coll<'s, ViewRow> {
    let fields: Vec<(String, u8)> = view
        .fields
        .iter()
        .filter_map(|f| match f {
            Field::Identifier(rank) => Some((json_string(f.name(spec)), *rank as u8)),
            _ => None,
        })
        .collect();
    identifiers.map(move |(profile, ids)| {
        let mut row = String::from("{");
        for (i, (name, rank)) in fields.iter().enumerate() {
            if i > 0 {
                row.push(',');
            }
            row.push_str(name);
            row.push_str(":[");
            let values = ids.iter().filter(|id| id.rank == *rank);
            for (j, id) in values.enumerate() {
                if j > 0 {
                    row.push(',');
                }
                row.push_str(&json_string(&id.value));
            }
            row.push(']');
        }
        row.push('}');
        (view_index, profile, row)
    })
}

/// A string as a JSON string literal.
pub fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}
