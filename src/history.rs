//! The facts of every live accepted event, kept so that erasure (SPEC section 6) can retract
//! exactly what each event inserted. Erased events' facts are dropped from here at once, so
//! no raw value of theirs stays in memory beyond the retraction itself.

use std::collections::HashSet;

use crate::dataflow::EventFacts;
use crate::event::Ident;

/// Live events' facts, in arrival order.
#[derive(Default)]
pub struct History {
    events: Vec<Option<EventFacts>>,
    live: usize,
}

impl History {
    /// Records an inserted event (its `seq` must be the next index).
    pub fn push(&mut self, facts: EventFacts) {
        debug_assert_eq!(facts.seq as usize, self.events.len());
        self.events.push(Some(facts));
        self.live += 1;
    }

    /// Removes and returns every live event carrying an identifier in `erased`. A linear scan:
    /// erasure is rare, and an index would cost memory on every event.
    pub fn take_carrying(&mut self, erased: &HashSet<Ident>) -> Vec<EventFacts> {
        let mut taken = Vec::new();
        for slot in &mut self.events {
            if slot
                .as_ref()
                .is_some_and(|f| f.idents.iter().any(|i| erased.contains(i)))
            {
                taken.extend(slot.take());
            }
        }
        self.live -= taken.len();
        taken
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
