//! Intent scores (SPEC section 4): the exact integer decay, its schedule as data, and the
//! stages that turn weighted occurrences into per-profile scores and active signal sets.
//!
//! Decay is maintained as data, the way Materialize implements temporal filters: when an
//! occurrence is inserted, the input layer also inserts its future weight changes at the
//! times they happen (`t + k·half_life`, and the drop to zero at `t + max_age`). The dataflow
//! releases each once the clock passes it, so a score is a plain sum and an occurrence whose
//! weight reached zero leaves the state.

use super::labels::Label;
use super::timer::Stream;
use super::{ByKey, Coll, Node, Seq};

/// Decay parameters (SPEC section 4), in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decay {
    /// Half-life.
    pub half_life_ms: u64,
    /// Age at which a weight is zero.
    pub max_age_ms: u64,
}

impl Decay {
    /// The decay parameters of a spec.
    pub fn of(intent: &crate::spec::IntentSpec) -> Decay {
        Decay {
            half_life_ms: intent.half_life_ms,
            max_age_ms: intent.max_age_ms,
        }
    }

    /// The weight at `now` of an occurrence at `t` worth `points_milli`:
    /// `floor(points_milli / 2^k)` with `k = floor((now - t) / half_life)` while
    /// `0 <= now - t < max_age`, else 0. `floor` is an arithmetic shift.
    pub fn weight(&self, points_milli: i64, t: u64, now: u64) -> i64 {
        if now < t || now - t >= self.max_age_ms {
            return 0;
        }
        let k = (now - t) / self.half_life_ms.max(1);
        if k >= 63 {
            if points_milli < 0 { -1 } else { 0 }
        } else {
            points_milli >> k
        }
    }

    /// The weight changes of an occurrence at `t` inserted when the clock is `arrival`:
    /// `(time, delta)` pairs, ascending, whose prefix sums are the weight at each time from
    /// `arrival` on. The first pair (if any) is at `arrival`; the last brings it to zero.
    pub fn schedule(&self, points_milli: i64, t: u64, arrival: u64) -> Vec<(u64, i64)> {
        let mut out = Vec::new();
        let mut current = self.weight(points_milli, t, arrival);
        if current != 0 {
            out.push((arrival, current));
        }
        let h = self.half_life_ms.max(1);
        let end = t.saturating_add(self.max_age_ms);
        // the first half-life boundary after arrival
        let mut boundary = t + ((arrival.saturating_sub(t)) / h + 1) * h;
        // until the weight reaches 0 (or -1, for negative points) it changes at boundaries
        while current != 0 && current != -1 && boundary < end {
            let next = self.weight(points_milli, t, boundary);
            if next != current {
                out.push((boundary, next - current));
                current = next;
            }
            boundary += h;
        }
        if current != 0 && end > arrival {
            out.push((end, -current));
        }
        out
    }

    /// When an occurrence has non-zero weight: `[from, until)` in clock ms, if ever.
    pub fn active(&self, points_milli: i64, t: u64, arrival: u64) -> Option<(u64, u64)> {
        active_of(&self.schedule(points_milli, t, arrival))
    }

    /// Every update an occurrence makes, ascending by time: its weight changes
    /// ([`Decay::schedule`], as [`Stream::Weight`]) and its activity marker (+1 from the
    /// first, -1 at the time its weight is back at zero, as [`Stream::Active`]).
    pub fn steps(&self, points_milli: i64, t: u64, arrival: u64) -> Vec<(u64, Stream, i64)> {
        let schedule = self.schedule(points_milli, t, arrival);
        let active = active_of(&schedule);
        let mut steps: Vec<(u64, Stream, i64)> = schedule
            .into_iter()
            .map(|(ms, delta)| (ms, Stream::Weight, delta))
            .collect();
        if let Some((from, until)) = active {
            steps.extend([(from, Stream::Active, 1), (until, Stream::Active, -1)]);
            steps.sort_by_key(|(ms, _, _)| *ms);
        }
        steps
    }
}

/// The interval in which a schedule's prefix sum (the weight) is non-zero.
fn active_of(schedule: &[(u64, i64)]) -> Option<(u64, u64)> {
    let (first, _) = *schedule.first()?;
    let mut sum = 0;
    for (time, delta) in schedule {
        sum += delta;
        if sum == 0 {
            return Some((first, *time));
        }
    }
    None // unreachable: a schedule always ends at zero
}

/// The earliest `first` occurrence (by index into `firsts`, ascending times) that earns a
/// `then` occurrence at `t_b` its bonus: `t_b - within <= t_a <= t_b` (SPEC section 4).
pub fn qualifying_first(firsts: &[u64], t_b: u64, within: u64) -> Option<usize> {
    let from = t_b.saturating_sub(within);
    let i = firsts.partition_point(|t_a| *t_a < from);
    firsts.get(i).is_some_and(|t_a| *t_a <= t_b).then_some(i)
}

/// A sequence role of an event, keyed by its primary identifier:
/// `(primary, (sequence, role, t, event))`, role 0 = first, 1 = then.
pub type Role = (Node, (u16, u8, u64, Seq));

/// A sequence bonus's weight or activity step, by event and sequence id:
/// `((event, id), (primary, stream))`.
pub type Bonus = ((Seq, u16), (Node, Stream));

/// Sequence bonuses that hold (SPEC section 4): `(then_event, sequence)` such that the
/// `then` event's profile has a `first` occurrence at `t_A` with `t_B - within <= t_A <= t_B`.
/// `roles` holds `(primary, (sequence, role, t, event))` with role 0 = first, 1 = then,
/// keyed by the event's primary identifier, whose label names the event's profile;
/// `within[q]` is sequence q's window. At most one bonus per then event and sequence.
pub fn qualified_sequences<'s>(
    roles: Coll<'s, Role>,
    labels: ByKey<'s, Node, Label>,
    within: Vec<u64>,
) -> Coll<'s, (Seq, u16)> {
    roles
        .join_core(labels, |_primary, (q, role, t, seq), label| {
            Some(((Node(label.root.clone()), *q), (*role, *t, *seq)))
        })
        .reduce(move |(_, q), occurrences, out| {
            let window = within.get(*q as usize).copied().unwrap_or(0);
            // occurrences are sorted by (role, t, seq): firsts come first, by time
            let firsts: Vec<u64> = occurrences
                .iter()
                .filter(|((r, _, _), _)| *r == 0)
                .map(|((_, t, _), _)| *t)
                .collect();
            for ((role, t_b, seq), _) in occurrences.iter() {
                if *role != 1 {
                    continue;
                }
                if qualifying_first(&firsts, *t_b, window).is_some() {
                    out.push((*seq, 1));
                }
            }
        })
        .map(|((_, q), seq)| (seq, q))
}

/// The occurrences that count (SPEC section 4): every signal occurrence, and a sequence
/// bonus only where it is qualified (sequence ids are `num_signals + q`, as in both
/// inputs). Holds `(primary, (id, stream))`, keyed by the event's primary identifier;
/// multiplicities are carried through unchanged (weights, or +1 activity markers).
pub fn counted<'s>(
    signals: Coll<'s, (Node, (u16, Stream))>,
    bonuses: Coll<'s, Bonus>,
    qualified: Coll<'s, (Seq, u16)>,
    num_signals: u16,
) -> Coll<'s, (Node, (u16, Stream))> {
    let held = bonuses
        .semijoin(qualified.map(move |(seq, q)| (seq, q + num_signals)))
        .map(|((_, id), (primary, stream))| (primary, (id, stream)));
    signals.concat(held)
}

/// Counted occurrences with the profile of their event (the label of its primary
/// identifier): `(profile, (id, stream))`.
pub fn attributed<'s>(
    counted: Coll<'s, (Node, (u16, Stream))>,
    labels: ByKey<'s, Node, Label>,
) -> Coll<'s, (Node, (u16, Stream))> {
    counted.join_core(labels, |_primary, occurrence, label| {
        Some((Node(label.root.clone()), *occurrence))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Decay = Decay {
        half_life_ms: 100,
        max_age_ms: 400,
    };

    fn replay(schedule: &[(u64, i64)], at: u64) -> i64 {
        schedule
            .iter()
            .filter(|(t, _)| *t <= at)
            .map(|(_, d)| d)
            .sum()
    }

    #[test]
    fn weight_boundaries() {
        assert_eq!(D.weight(10_000, 1000, 1000), 10_000);
        assert_eq!(D.weight(10_000, 1000, 1099), 10_000);
        assert_eq!(D.weight(10_000, 1000, 1100), 5_000);
        assert_eq!(D.weight(10_000, 1000, 1399), 1_250);
        assert_eq!(D.weight(10_000, 1000, 1400), 0);
        assert_eq!(D.weight(-2_500, 1000, 1150), -1_250);
        assert_eq!(D.weight(-1, 1000, 1399), -1);
        assert_eq!(D.weight(3, 1000, 1200), 0);
    }

    #[test]
    fn schedules_replay_to_the_weight_at_every_time() {
        for points in [10_000, 2_500, 1, 3, 0, -1, -2_500, -125, 7_777] {
            for t in [1000u64, 1050] {
                for arrival in [
                    t,
                    t + 1,
                    t + 99,
                    t + 100,
                    t + 250,
                    t + 399,
                    t + 400,
                    t + 1000,
                ] {
                    let s = D.schedule(points, t, arrival);
                    assert!(s.len() <= 5, "{s:?}");
                    for now in arrival..arrival + 600 {
                        assert_eq!(
                            replay(&s, now),
                            D.weight(points, t, now),
                            "p {points} t {t} a {arrival} now {now}"
                        );
                    }
                    let active = D.active(points, t, arrival);
                    for now in arrival..arrival + 600 {
                        let on = active.is_some_and(|(a, b)| a <= now && now < b);
                        assert_eq!(on, D.weight(points, t, now) != 0);
                    }
                }
            }
        }
    }

    /// `steps` replays to the weight and the activity at every time, and firing them one due
    /// time at a time through a [`super::super::timer::DecayTimer`] (as the engine does:
    /// send the step due, file the occurrence under its next) sends each step exactly once.
    #[test]
    fn steps_fired_one_due_time_at_a_time_are_the_schedule() {
        use super::super::timer::{DecayTimer, Occurrence};
        for points in [10_000, 2_500, 1, 3, 0, -1, -2_500, 7_777] {
            for arrival in [1000u64, 1001, 1099, 1100, 1250, 1399, 1400] {
                let steps = D.steps(points, 1000, arrival);
                for now in arrival..arrival + 600 {
                    let sum = |stream| -> i64 {
                        let due = steps.iter().filter(|(ms, s, _)| *ms <= now && *s == stream);
                        due.map(|(_, _, d)| d).sum()
                    };
                    assert_eq!(sum(Stream::Weight), D.weight(points, 1000, now));
                    assert_eq!(
                        sum(Stream::Active),
                        i64::from(D.weight(points, 1000, now) != 0)
                    );
                }
                let mut timer = DecayTimer::default();
                let occurrence = Occurrence {
                    primary: Node(crate::event::Ident::new(0, "u")),
                    t: 1000,
                    arrival,
                    mult: 1,
                };
                let mut fired: Vec<(u64, Stream, i64)> = Vec::new();
                fired.extend(steps.iter().filter(|(ms, _, _)| *ms <= arrival));
                if let Some(&(next, _, _)) = steps.iter().find(|(ms, _, _)| *ms > arrival) {
                    timer.add(next, 7, 0, occurrence);
                }
                for clock in arrival + 1..arrival + 600 {
                    while let Some(((ms, seq, id), occurrence)) = timer.pop_due(clock) {
                        let again = D.steps(points, occurrence.t, occurrence.arrival);
                        fired.extend(again.iter().filter(|(at, _, _)| *at == ms));
                        if let Some(&(next, _, _)) = again.iter().find(|(at, _, _)| *at > ms) {
                            timer.add(next, seq, id, occurrence);
                        }
                    }
                }
                assert_eq!(fired, steps, "points {points} arrival {arrival}");
                assert!(timer.is_empty());
            }
        }
    }

    #[test]
    fn tiny_half_life_does_not_loop() {
        let d = Decay {
            half_life_ms: 1,
            max_age_ms: 1 << 40,
        };
        assert!(d.schedule(-5, 0, 0).len() < 70);
        assert!(d.schedule(i64::MAX / 4, 0, 0).len() < 70);
    }
}
