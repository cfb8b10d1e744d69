//! Consent (SPEC section 5): per profile and purpose, the record with the latest timestamp
//! among all the profile's events; on a tie, denied wins. Purposes with no record take the
//! spec's default (applied when rows are rendered, in `views`).

use super::{ByKey, Coll, Node, Seq};

/// How consent records rank (SPEC section 5): the greatest decides, so the latest timestamp
/// wins and, at one timestamp, a denial beats a grant.
pub fn precedence(timestamp: u64, granted: bool) -> (u64, bool) {
    (timestamp, !granted)
}

/// Decided consent: `(profile, (purpose, granted))` for every profile and purpose with at
/// least one record. `records` holds `(event, (purpose, timestamp, granted))`.
pub fn decided<'s>(
    records: Coll<'s, (Seq, (u8, u64, bool))>,
    attribution: ByKey<'s, Seq, Node>,
) -> Coll<'s, (Node, (u8, bool))> {
    records
        .join_core(
            attribution,
            |_seq, (purpose, t, granted), profile: &Node| {
                Some(((profile.clone(), *purpose), precedence(*t, *granted)))
            },
        )
        .reduce(|_key, records, out| {
            if let Some(((_, denied), _)) = records.last() {
                out.push((!*denied, 1));
            }
        })
        .map(|((profile, purpose), granted)| (profile, (purpose, granted)))
}
