//! The facts of every live accepted event, kept so that erasure (SPEC section 6) can retract
//! exactly what each event inserted, and so that explanations can cite the events behind a
//! profile. Erased events' facts are dropped from here at once, so
//! no raw value of theirs stays in memory beyond the retraction itself.

use std::collections::HashSet;

use crate::dataflow::{EventFacts, Seq};
use crate::event::Ident;

/// Live events' facts, in arrival order, indexed by identifier.
#[derive(Default)]
pub struct History {
    /// Events by `seq`, in chunks of [`CHUNK`]: growing never copies the events held.
    events: Vec<Vec<Option<EventFacts>>>,
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
            chunk.push(Some(facts));
        }
        self.pushed += 1;
        self.live += 1;
    }

    /// Removes and returns every live event carrying an identifier in `erased`, in arrival
    /// order, and forgets those identifiers.
    pub fn take_carrying(&mut self, erased: &HashSet<Ident>) -> Vec<EventFacts> {
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
        taken
    }

    /// The live events carrying `ident`, in arrival order.
    pub fn carrying<'a>(&'a self, ident: &Ident) -> impl Iterator<Item = &'a EventFacts> + use<'a> {
        self.by_ident
            .get(ident)
            .into_iter()
            .flatten()
            .filter_map(|seq| self.slot(*seq)?.as_ref())
    }

    fn slot(&self, seq: Seq) -> Option<&Option<EventFacts>> {
        let seq = usize::try_from(seq).ok()?;
        self.events.get(seq / CHUNK)?.get(seq % CHUNK)
    }

    fn slot_mut(&mut self, seq: Seq) -> Option<&mut Option<EventFacts>> {
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
