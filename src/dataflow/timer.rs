//! Decay steps that are not yet due (SPEC section 4), held outside the dataflow.
//!
//! An occurrence's weight schedule ([`super::intent::Decay::schedule`]) is known when it is
//! inserted, but most of its steps lie in the future. Handing those to differential as
//! updates at future times parks them in the merge batchers, which re-merge every
//! outstanding update at each frontier advance (differential-dataflow issue #460): the cost
//! of every round then grows with the whole pending schedule. Materialize met the same
//! problem with temporal filters and buckets future updates by time. Here the input layer
//! keeps them in a [`DecayTimer`] keyed by due time and inserts each step at its own time
//! when the clock reaches it, so the dataflow sees exactly the updates it saw before, at the
//! same times, and a round costs only what is due.
//!
//! A retraction adds the negated steps, which cancel the pending ones in place, so a
//! retracted event's future steps leave the timer at once.

use std::collections::BTreeMap;

use super::{Node, Seq};

/// Which of an occurrence's two updates a step is: both travel in one input collection
/// (one for signals, one for sequence bonuses, see [`super::Inputs`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Stream {
    /// The weight, carried as multiplicity (scores sum it).
    Weight,
    /// The +1/-1 activity marker (active signals).
    Active,
}

/// One pending update: `(event, scored id)` in `stream`, changed by `delta`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The event.
    pub seq: Seq,
    /// The event's primary identifier (its updates are keyed by it, see
    /// [`super::Inputs`]).
    pub primary: Node,
    /// The signal or sequence id.
    pub id: u16,
    /// Which input it feeds.
    pub stream: Stream,
    /// The change.
    pub delta: i64,
}

/// Pending steps by due clock value (epoch ms). Invariant: no bucket is empty and no step
/// has a zero delta; at most one step per `(seq, id, stream)` in a bucket.
#[derive(Debug, Default)]
pub struct DecayTimer {
    due: BTreeMap<u64, Vec<Step>>,
    len: usize,
}

impl DecayTimer {
    /// Adds `step` at clock `ms`, cancelling against a pending step of the same key there.
    pub fn add(&mut self, ms: u64, step: Step) {
        if step.delta == 0 {
            return;
        }
        let bucket = self.due.entry(ms).or_default();
        let same = |s: &Step| s.seq == step.seq && s.id == step.id && s.stream == step.stream;
        match bucket.iter().position(same) {
            Some(i) => {
                bucket[i].delta += step.delta;
                if bucket[i].delta == 0 {
                    bucket.swap_remove(i);
                    self.len -= 1;
                    if bucket.is_empty() {
                        self.due.remove(&ms);
                    }
                }
            }
            None => {
                bucket.push(step);
                self.len += 1;
            }
        }
    }

    /// Removes and returns every step due at or before `ms`, by due time, ascending.
    pub fn take_due(&mut self, ms: u64) -> BTreeMap<u64, Vec<Step>> {
        let later = match ms.checked_add(1) {
            Some(next) => self.due.split_off(&next),
            None => BTreeMap::new(),
        };
        let due = std::mem::replace(&mut self.due, later);
        self.len -= due.values().map(Vec::len).sum::<usize>();
        due
    }

    /// The earliest due time, if any step is pending.
    pub fn next_due(&self) -> Option<u64> {
        self.due.keys().next().copied()
    }

    /// Number of pending steps.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(seq: Seq, delta: i64) -> Step {
        Step {
            seq,
            primary: Node(crate::event::Ident::new(0, "u")),
            id: 0,
            stream: Stream::Weight,
            delta,
        }
    }

    #[test]
    fn retraction_cancels_in_place() {
        let mut timer = DecayTimer::default();
        timer.add(10, step(1, -500));
        timer.add(20, step(1, -500));
        timer.add(10, step(2, 7));
        timer.add(10, step(1, 500));
        timer.add(20, step(1, 500));
        assert_eq!(timer.len(), 1);
        assert_eq!(timer.next_due(), Some(10));
        let due = timer.take_due(15);
        assert_eq!(
            due.into_iter().collect::<Vec<_>>(),
            vec![(10, vec![step(2, 7)])]
        );
        assert!(timer.is_empty());
        assert_eq!(timer.next_due(), None);
    }

    #[test]
    fn takes_only_what_is_due() {
        let mut timer = DecayTimer::default();
        for ms in [5, 1, 9, 3] {
            timer.add(ms, step(ms, 1));
        }
        let due: Vec<u64> = timer.take_due(4).into_keys().collect();
        assert_eq!(due, vec![1, 3]);
        assert_eq!(timer.len(), 2);
        assert_eq!(timer.take_due(u64::MAX).len(), 2);
        assert!(timer.is_empty());
    }
}
