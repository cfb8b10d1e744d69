//! The facts of every live accepted event, kept so that erasure (SPEC section 6) can retract
//! exactly what each event inserted, and so that explanations can cite the events behind a
//! profile. Erased events' facts are dropped from here at once, so
//! no raw value of theirs stays in memory beyond the retraction itself.
//!
//! Each event's facts are held encoded (`bincode`, variable-length integers) in one
//! allocation, about a third of what the decoded [`EventFacts`] with its vectors and
//! strings takes; they are decoded only when read (an erasure, an explanation).

use std::collections::HashSet;

use bincode::Options;

use crate::dataflow::{EventFacts, Seq};
use crate::event::Ident;

/// Live events' facts, in arrival order, indexed by identifier.
#[derive(Default)]
pub struct History {
    /// Encoded events by `seq`, in chunks of [`CHUNK`]: growing never copies the events
    /// held.
    events: Vec<Vec<Option<Box<[u8]>>>>,
    /// Live events carrying each identifier (a map that grows without stalls).
    by_ident: griddle::HashMap<Ident, Vec<Seq>>,
    /// Events pushed.
    pushed: usize,
    live: usize,
}

/// Events per chunk of the history.
const CHUNK: usize = 1 << 14;

impl History {
    /// Records an inserted event (its `seq` must be the next index).
    pub fn push(&mut self, facts: EventFacts) {
        debug_assert_eq!(facts.seq as usize, self.pushed);
        for id in &facts.idents {
            self.by_ident.entry(id.clone()).or_default().push(facts.seq);
        }
        if self.events.last().is_none_or(|chunk| chunk.len() == CHUNK) {
            self.events.push(Vec::with_capacity(CHUNK));
        }
        if let Some(chunk) = self.events.last_mut() {
            chunk.push(Some(encode(&facts)));
        }
        self.pushed += 1;
        self.live += 1;
    }

    /// Removes and returns every live event carrying an identifier in `erased`, in arrival
    /// order, and forgets those identifiers.
    pub fn take_carrying(&mut self, erased: &HashSet<Ident>) -> Result<Vec<EventFacts>, String> {
        let mut seqs: Vec<Seq> = erased
            .iter()
            .filter_map(|id| self.by_ident.remove(id))
            .flatten()
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        let mut taken = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let Some(facts) = self.slot_mut(seq).and_then(Option::take) else {
                continue;
            };
            let facts = decode(&facts)?;
            // unlink the event from its other identifiers' entries
            for id in facts.idents.iter().filter(|id| !erased.contains(*id)) {
                if let Some(list) = self.by_ident.get_mut(id) {
                    list.retain(|s| *s != seq);
                    if list.is_empty() {
                        self.by_ident.remove(id);
                    }
                }
            }
            taken.push(facts);
        }
        self.live -= taken.len();
        Ok(taken)
    }

    /// The live events carrying `ident`, in arrival order.
    pub fn carrying<'a>(&'a self, ident: &Ident) -> impl Iterator<Item = EventFacts> + use<'a> {
        self.by_ident
            .get(ident)
            .into_iter()
            .flatten()
            .filter_map(|seq| decode(self.slot(*seq)?.as_ref()?).ok())
    }

    fn slot(&self, seq: Seq) -> Option<&Option<Box<[u8]>>> {
        let seq = usize::try_from(seq).ok()?;
        self.events.get(seq / CHUNK)?.get(seq % CHUNK)
    }

    fn slot_mut(&mut self, seq: Seq) -> Option<&mut Option<Box<[u8]>>> {
        let seq = usize::try_from(seq).ok()?;
        self.events.get_mut(seq / CHUNK)?.get_mut(seq % CHUNK)
    }

    /// Number of live events.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no event is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
}

/// The encoding the history holds (varint `bincode`, which never fails on these types).
fn encode(facts: &EventFacts) -> Box<[u8]> {
    let bytes = bincode::DefaultOptions::new().serialize(facts);
    bytes.unwrap_or_default().into_boxed_slice()
}

/// Decodes what [`encode`] wrote; an error means a bug, reported with context.
fn decode(bytes: &[u8]) -> Result<EventFacts, String> {
    bincode::DefaultOptions::new()
        .deserialize(bytes)
        .map_err(|e| {
            format!(
                "history: unreadable event facts ({} bytes): {e}",
                bytes.len()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataflow::Origin;

    fn facts(seq: Seq, ids: &[&str]) -> EventFacts {
        EventFacts {
            seq,
            idents: ids.iter().map(|v| Ident::new(0, v)).collect(),
            wide: false,
            timestamp_ms: 1_767_225_600_000 + seq,
            arrival_ms: 1_767_225_600_500 + seq,
            signals: vec![1, 3],
            roles: vec![(0, 1)],
            consent: vec![(2, false)],
            traits: vec![("plan".into(), 1, "\"pro\"".into())],
            message_id: Some(format!("m-{seq}").into()),
            origin: Origin {
                source: 1,
                line: seq + 1,
            },
            blocked: vec![Ident::new(1, "blocked")].into_boxed_slice(),
        }
    }

    /// What goes in encoded comes out equal, by identifier and when erased.
    #[test]
    fn events_come_back_as_they_went_in() {
        let mut history = History::default();
        let events = [facts(0, &["a", "b"]), facts(1, &["b"]), facts(2, &["c"])];
        for event in events.iter().cloned() {
            history.push(event);
        }
        let carrying_b: Vec<EventFacts> = history.carrying(&Ident::new(0, "b")).collect();
        assert_eq!(carrying_b, events[..2].to_vec());
        let erased: HashSet<Ident> = [Ident::new(0, "a")].into_iter().collect();
        assert_eq!(history.take_carrying(&erased), Ok(vec![events[0].clone()]));
        assert_eq!(history.len(), 2);
        let carrying_b: Vec<EventFacts> = history.carrying(&Ident::new(0, "b")).collect();
        assert_eq!(carrying_b, vec![events[1].clone()]);
    }
}
