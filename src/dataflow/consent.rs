//! Consent (SPEC section 5): per profile and purpose, the record with the latest timestamp
//! among all the profile's events; on a tie, denied wins ([`precedence`]; the greatest
//! record decides, [`super::latest::decide`]). Purposes with no record take the spec's default
//! (applied when rows are rendered, in `views`).

/// How consent records rank (SPEC section 5): the greatest decides, so the latest timestamp
/// wins and, at one timestamp, a denial beats a grant.
pub fn precedence(timestamp: u64, granted: bool) -> (u64, bool) {
    (timestamp, !granted)
}
