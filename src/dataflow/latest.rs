//! The record that decides each of a profile's consent purposes and traits (SPEC section
//! 5): both are "the greatest record among the profile's events", so one join with the
//! labels (by the event's primary identifier) and one reduce maintain both. How records
//! rank is each rule's own: [`super::consent::precedence`] and [`super::traits::record`].

use serde::{Deserialize, Serialize};

use super::labels::Label;
use super::traits::TraitValue;
use super::views::Fact;
use super::{ByKey, Coll, Node};

/// What a record decides: a consent purpose (by index) or a trait key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Slot {
    /// The consent of a purpose.
    Consent(u8),
    /// A trait key.
    Trait(String),
}

/// A record and its rank within its slot: the greatest rank decides. Records of one slot
/// are all of one kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rank {
    /// A consent record's [`super::consent::precedence`]: (timestamp, denied).
    Consent((u64, bool)),
    /// A trait record ([`super::traits::record`]); its last field is the JSON value.
    Trait(TraitValue),
}

/// Decided consent and current traits: `(profile, Fact::Consent)` for every purpose with at
/// least one record among the profile's events, and `(profile, Fact::Trait)` for every trait
/// key, each from the greatest record. `records` holds `(primary, (slot, rank))`, keyed by
/// the event's primary identifier, whose label names the event's profile.
pub fn decided<'s>(
    records: Coll<'s, (Node, (Slot, Rank))>,
    labels: ByKey<'s, Node, Label>,
) -> Coll<'s, (Node, Fact)> {
    records
        .join_core(labels, |_primary, (slot, rank), label| {
            Some(((Node(label.root.clone()), slot.clone()), rank.clone()))
        })
        .reduce(|(_, slot), ranks, out| {
            let fact = match (slot, ranks.last()) {
                (Slot::Consent(purpose), Some((Rank::Consent((_, denied)), _))) => {
                    Fact::Consent(*purpose, !*denied)
                }
                (Slot::Trait(key), Some((Rank::Trait((_, _, _, _, json)), _))) => {
                    Fact::Trait(key.clone(), json.clone())
                }
                _ => return,
            };
            out.push((fact, 1));
        })
        .map(|((profile, _), fact)| (profile, fact))
}
