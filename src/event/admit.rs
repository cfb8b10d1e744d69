//! The stateful part of SPEC section 1: deduplication, the far-future rule, suppression and
//! the event-time clock. Applied, in this order, to lines that parsed.

use std::collections::{HashSet, VecDeque};

use xxhash_rust::xxh3::xxh3_128;

use super::residue::{Residue, message_id_hash};
use super::{DeadReason, Event, Ident, Rejection};
use crate::spec::Spec;

/// What happens to a parsed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: it changes the views at `now`, the engine clock after it was applied.
    Accepted {
        /// The engine clock (epoch ms) once this event has advanced it.
        now: u64,
    },
    /// Its `messageId` was already accepted.
    Duplicate,
    /// A dead letter found after parsing (far-future timestamp).
    Dead(Rejection),
    /// It carries an erased identifier (SPEC section 6).
    Suppressed,
}

/// What admission makes of one line of input or of the event log: the one classification
/// (SPEC sections 1 and 6) that the engine and log compaction both apply, so that a
/// compacted log replays to the state, clock and counters the original reaches.
#[derive(Debug)]
pub enum Line {
    /// An accepted event (a `forget` too); the clock is now `now`.
    Accepted {
        /// The event.
        event: Event,
        /// The engine clock once it was applied.
        now: u64,
    },
    /// A compacted line that stood for an accepted event (`erasure: None`) or a carried-out
    /// erasure (its suppressed hashes), replayed into the gate; the clock is now `now`.
    Replayed {
        /// The engine clock once it was applied.
        now: u64,
        /// The erasure's suppressed hashes, for an erasure.
        erasure: Option<Vec<u128>>,
    },
    /// A duplicate (or a compacted line that stood for one).
    Duplicate,
    /// Suppressed by an erasure (or a compacted line that stood for such an event).
    Suppressed,
    /// A dead letter (or a compacted line that stood for one).
    Dead {
        /// Why.
        reason: DeadReason,
        /// The detail a dead letter reports.
        detail: String,
    },
    /// A compacted run of retired lines, replayed into the gate (its clock and erasures);
    /// the clock is now `now`.
    Span {
        /// The engine clock once it was applied.
        now: u64,
        /// What the run left.
        span: Box<super::residue::Span>,
    },
    /// A compacted line whose residue cannot be read.
    Unreadable(String),
}

/// Deduplication set, suppression list and clock.
#[derive(Debug)]
pub struct Admission {
    max_future_ms: u64,
    /// How long an accepted messageId is remembered (`None`: forever).
    dedup_window_ms: Option<u64>,
    /// xxh3-128 hashes of accepted messageIds (16 bytes each; a collision is ~2^-100 at 1e9
    /// ids), each with the clock `c` just after it was last accepted.
    seen: griddle::HashMap<u128, u64>,
    /// The same (c, hash) pairs in acceptance order, so ids that can no longer be
    /// duplicates (`now - c >= dedup_window`, and the clock never goes back) are forgotten:
    /// the set holds the ids of one window, not of all time. Empty without a window.
    expiry: VecDeque<(u64, u128)>,
    /// Salted hashes of erased identifiers; never raw values.
    suppressed: HashSet<u128>,
    salt: u128,
    clock: Option<u64>,
    /// Wall-clock mode: the clock is also at least the wall clock of every admitted line.
    wall_clock: bool,
}

impl Admission {
    /// A fresh gate for `spec`'s rules: no ids seen, nothing suppressed, no clock yet.
    pub fn new(spec: &Spec, salt: u128) -> Admission {
        Admission::with_rules(spec.intent.max_future_ms, spec.input.dedup_window_ms, salt)
    }

    /// A fresh gate: events more than `max_future_ms` ahead of the wall clock are dead
    /// letters, and ids are remembered for `dedup_window_ms` of engine clock (`None`:
    /// forever).
    pub fn with_rules(max_future_ms: u64, dedup_window_ms: Option<u64>, salt: u128) -> Admission {
        Admission {
            max_future_ms,
            dedup_window_ms,
            seen: griddle::HashMap::new(),
            expiry: VecDeque::new(),
            suppressed: HashSet::new(),
            salt,
            clock: None,
            wall_clock: false,
        }
    }

    /// Runs the clock on wall-clock time (SPEC section 4: "a long-lived server may run on
    /// wall-clock time"): `now` is the largest of the accepted timestamps and the wall clock
    /// of each admitted line, and [`Admission::tick`] moves it with real time.
    pub fn with_wall_clock(mut self, on: bool) -> Admission {
        self.wall_clock = on;
        self
    }

    /// The engine clock: the largest accepted timestamp so far.
    pub fn clock(&self) -> Option<u64> {
        self.clock
    }

    /// Classifies one line: parses and admits it, or, for a compacted line (`residue`),
    /// replays what compaction left of it. `event_wall_ms` is the line's receipt time for
    /// the timestamp rules (`None`: now), `wall_ms` the wall clock for the far-future rule.
    /// Lines too long to read are the caller's: they never reach here.
    pub fn classify(
        &mut self,
        spec: &Spec,
        bytes: &[u8],
        residue: bool,
        event_wall_ms: Option<u64>,
        wall_ms: u64,
    ) -> Line {
        if residue {
            return self.replay(bytes, wall_ms);
        }
        self.classify_parsed(super::parse(bytes, spec, event_wall_ms), wall_ms)
    }

    /// [`Admission::classify`] of a line already parsed by [`super::parse`] (the engine
    /// parses ahead, off the dataflow worker).
    pub fn classify_parsed(&mut self, parsed: Result<Event, Rejection>, wall_ms: u64) -> Line {
        let event = match parsed {
            Ok(event) => event,
            Err(r) => {
                return Line::Dead {
                    reason: r.reason,
                    detail: r.detail,
                };
            }
        };
        match self.admit(&event, wall_ms) {
            Verdict::Accepted { now } => Line::Accepted { event, now },
            Verdict::Duplicate => Line::Duplicate,
            Verdict::Suppressed => Line::Suppressed,
            Verdict::Dead(r) => Line::Dead {
                reason: r.reason,
                detail: r.detail,
            },
        }
    }

    /// Replays a compacted line: the same bookkeeping as the line it stands for.
    fn replay(&mut self, bytes: &[u8], wall_ms: u64) -> Line {
        match Residue::decode(bytes) {
            Ok(Residue::Accepted {
                timestamp_ms,
                message_id,
            }) => Line::Replayed {
                now: self.accept(timestamp_ms, message_id, wall_ms),
                erasure: None,
            },
            Ok(Residue::Erasure {
                timestamp_ms,
                message_id,
                suppressed,
            }) => {
                let now = self.accept(timestamp_ms, message_id, wall_ms);
                for h in &suppressed {
                    self.suppress_hash(*h);
                }
                Line::Replayed {
                    now,
                    erasure: Some(suppressed),
                }
            }
            Ok(Residue::Span(span)) => {
                // the clock the run reached (no wall clock: it is already in it)
                let now = self.accept(span.clock, None, 0);
                for h in &span.erasures {
                    self.suppress_hash(*h);
                }
                Line::Span { now, span }
            }
            Ok(Residue::Duplicate) => Line::Duplicate,
            Ok(Residue::Suppressed) => Line::Suppressed,
            Ok(Residue::Dead { reason, detail }) => Line::Dead { reason, detail },
            Err(e) => Line::Unreadable(e.to_string()),
        }
    }

    /// Applies deduplication, the far-future rule and suppression (in that order), and on
    /// acceptance records the messageId and advances the clock.
    pub fn admit(&mut self, event: &Event, wall_ms: u64) -> Verdict {
        let id_hash = event.message_id.as_deref().map(message_id_hash);
        if id_hash.is_some_and(|h| self.is_duplicate(h)) {
            return Verdict::Duplicate;
        }
        if event.timestamp_ms > wall_ms.saturating_add(self.max_future_ms) {
            return Verdict::Dead(Rejection {
                reason: DeadReason::FutureTimestamp,
                detail: format!(
                    "timestamp {} is more than {} ms ahead of the wall clock {}",
                    event.timestamp_ms, self.max_future_ms, wall_ms
                ),
            });
        }
        if event.idents.iter().any(|i| self.is_suppressed(i)) {
            return Verdict::Suppressed;
        }
        Verdict::Accepted {
            now: self.accept(event.timestamp_ms, id_hash, wall_ms),
        }
    }

    /// SPEC section 1: an id is a duplicate when it was accepted at clock `c` (the clock
    /// just after accepting it) and `now - c < dedup_window`, `now` being the clock before
    /// this event; with an unlimited window, whenever it was accepted before.
    fn is_duplicate(&self, id: u128) -> bool {
        match (self.seen.get(&id), self.clock) {
            (Some(&c), Some(now)) => remembered_at(c, now, self.dedup_window_ms),
            _ => false,
        }
    }

    /// Records an accepted event's messageId hash and advances the clock (read at wall clock
    /// `wall_ms`); returns the clock. Replaying a compacted line (a residue) that was
    /// accepted does only this.
    pub fn accept(&mut self, timestamp_ms: u64, message_id: Option<u128>, wall_ms: u64) -> u64 {
        let at = if self.wall_clock {
            timestamp_ms.max(wall_ms)
        } else {
            timestamp_ms
        };
        let now = self.clock.map_or(at, |c| c.max(at));
        self.clock = Some(now);
        if let Some(h) = message_id {
            self.seen.insert(h, now);
            if self.dedup_window_ms.is_some() {
                self.expiry.push_back((now, h));
            }
        }
        self.forget_expired(now);
        now
    }

    /// Forgets the ids that can no longer be duplicates at clock `now` or later.
    fn forget_expired(&mut self, now: u64) {
        let Some(window) = self.dedup_window_ms else {
            return;
        };
        while let Some(&(c, h)) = self.expiry.front() {
            if remembered_at(c, now, Some(window)) {
                break;
            }
            self.expiry.pop_front();
            // unless it was accepted again since
            if self.seen.get(&h) == Some(&c) {
                self.seen.remove(&h);
            }
        }
    }

    /// How many messageIds the gate remembers now.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }

    /// In wall-clock mode, moves the clock to `wall_ms` if that is later; returns the clock
    /// when it moved.
    pub fn tick(&mut self, wall_ms: u64) -> Option<u64> {
        if !self.wall_clock || self.clock.is_some_and(|c| c >= wall_ms) {
            return None;
        }
        self.clock = Some(wall_ms);
        self.clock
    }

    /// The salted hash under which an identifier is suppressed.
    pub fn salted(&self, ident: &Ident) -> u128 {
        let mut bytes = Vec::with_capacity(ident.value.len() + 17);
        bytes.extend_from_slice(&self.salt.to_le_bytes());
        bytes.push(ident.rank);
        bytes.extend_from_slice(ident.value.as_bytes());
        xxh3_128(&bytes)
    }

    /// Adds an identifier to the suppression list (as a salted hash); returns the hash.
    pub fn suppress(&mut self, ident: &Ident) -> u128 {
        let h = self.salted(ident);
        self.suppressed.insert(h);
        h
    }

    /// Adds a salted hash (from [`Admission::suppress`] under the same salt) to the list.
    pub fn suppress_hash(&mut self, hash: u128) {
        self.suppressed.insert(hash);
    }

    /// Whether an identifier is on the suppression list.
    pub fn is_suppressed(&self, ident: &Ident) -> bool {
        !self.suppressed.is_empty() && self.suppressed.contains(&self.salted(ident))
    }
}

/// SPEC section 1's dedup window: whether an id accepted at clock `c` (the clock just after
/// accepting it) still makes an event a duplicate at clock `now` (the clock before that
/// event): `now - c < window`, always with no window (`"unlimited"`).
pub fn remembered_at(c: u64, now: u64, window: Option<u64>) -> bool {
    window.is_none_or(|window| now.saturating_sub(c) < window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Kind;

    fn event(id: Option<&str>, ts: u64, who: &str) -> Event {
        Event {
            kind: Kind::Track,
            message_id: id.map(str::to_string),
            timestamp_ms: ts,
            idents: vec![Ident::new(0, who)],
            blocked: Vec::new(),
            body: Default::default(),
        }
    }

    #[test]
    fn order_of_checks_and_clock() {
        let mut gate = Admission::with_rules(1000, None, 7);
        assert_eq!(
            gate.admit(&event(Some("a"), 50, "u"), 100),
            Verdict::Accepted { now: 50 }
        );
        assert_eq!(
            gate.admit(&event(Some("a"), 60, "u"), 100),
            Verdict::Duplicate
        );
        // a far-future event is a dead letter, does not record its id nor move the clock
        assert!(matches!(
            gate.admit(&event(Some("b"), 5000, "u"), 100),
            Verdict::Dead(_)
        ));
        assert_eq!(
            gate.admit(&event(Some("b"), 40, "u"), 100),
            Verdict::Accepted { now: 50 }
        );
        gate.suppress(&Ident::new(0, "x"));
        assert_eq!(
            gate.admit(&event(Some("c"), 70, "x"), 100),
            Verdict::Suppressed
        );
        assert_eq!(
            gate.admit(&event(Some("c"), 70, "u"), 100),
            Verdict::Accepted { now: 70 }
        );
        assert_eq!(
            gate.admit(&event(None, 70, "u"), 100),
            Verdict::Accepted { now: 70 }
        );
        assert_eq!(
            gate.admit(&event(None, 70, "u"), 100),
            Verdict::Accepted { now: 70 }
        );
        assert_eq!(gate.clock(), Some(70));
    }

    /// SPEC section 1's window: a duplicate while `now - c < window` (`c` the clock just
    /// after the first acceptance, `now` the clock before the repeat); accepted again, and
    /// remembered anew, once the clock is `window` past `c`; the set forgets what can no
    /// longer repeat. Unlimited: a duplicate forever.
    #[test]
    fn ids_are_remembered_for_the_window() {
        let mut gate = Admission::with_rules(u64::MAX / 2, Some(100), 7);
        let at = |gate: &mut Admission, id: Option<&str>, ts| gate.admit(&event(id, ts, "u"), 0);
        assert_eq!(
            at(&mut gate, Some("a"), 1000),
            Verdict::Accepted { now: 1000 }
        );
        assert_eq!(at(&mut gate, Some("a"), 1050), Verdict::Duplicate);
        assert_eq!(at(&mut gate, None, 1099), Verdict::Accepted { now: 1099 });
        assert_eq!(
            at(&mut gate, Some("a"), 10),
            Verdict::Duplicate,
            "now - c = 99"
        );
        assert_eq!(at(&mut gate, None, 1100), Verdict::Accepted { now: 1100 });
        assert_eq!(gate.remembered(), 0, "a can no longer be a duplicate");
        // now - c = 100: accepted again, and remembered from the clock after it
        assert_eq!(
            at(&mut gate, Some("a"), 10),
            Verdict::Accepted { now: 1100 }
        );
        assert_eq!(at(&mut gate, Some("a"), 1199), Verdict::Duplicate);
        assert_eq!(
            at(&mut gate, Some("b"), 1199),
            Verdict::Accepted { now: 1199 }
        );
        assert_eq!(gate.remembered(), 2);
        let mut forever = Admission::with_rules(u64::MAX / 2, None, 7);
        assert!(matches!(
            at(&mut forever, Some("a"), 1),
            Verdict::Accepted { .. }
        ));
        assert_eq!(at(&mut forever, Some("a"), 1 << 50), Verdict::Duplicate);
    }
}
