//! The dataflow's rounds as worker 0 drives them: the inputs' clock (a clock value and a
//! step within it), completing times, and the questions the dataflow answers (lookup
//! queries, and asks of the keepers).
//!
//! SPEC section 7 publishes a clock value once every change at it is known: [`Rounds`]
//! says when that is (its times are complete, [`Rounds::complete`]). Each step within a
//! clock value is a time of its own ([`crate::dataflow::time`]): a `forget`, a lookup or an
//! ask completes the current one and opens the next, so its answer reflects everything
//! sent before it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use super::{EngineError, MERGE_LIMIT, MERGING};
use crate::dataflow::keeper::{Answer, Ask};
use crate::dataflow::views::Fact;
use crate::dataflow::{Captured, Feed, STEP_BITS, Time, clock_of, time};
use crate::event::Ident;

/// The longest worker 0 sleeps between steps while a round completes; it wakes sooner
/// when another worker sends it anything (see [`Rounds::complete`]).
pub(super) const PARK: Duration = Duration::from_millis(1);

/// Worker 0's handle on the dataflow: the inputs, their clock and the probe.
pub(super) struct Rounds<'w> {
    worker: &'w mut Worker,
    /// The commands to the keepers (each worker's share of the events) and the queries.
    pub(super) feed: Feed,
    /// Passes a time once every output up to it is captured.
    probe: ProbeHandle<Time>,
    /// Answers to lookup queries: ((query id, (profile, fact)), time, diff).
    answers: Captured<(u64, (Ident, Fact))>,
    /// Current step within the clock's millisecond.
    step: u32,
    /// The time the last round was sent at and not yet waited for ([`Rounds::pipeline`]).
    in_flight: Option<Time>,
    /// Last lookup (query) id used.
    next_query: u64,
    /// Set while arrangements merge what a finished source left pending.
    merging: Arc<AtomicBool>,
}

impl<'w> Rounds<'w> {
    pub(super) fn new(
        worker: &'w mut Worker,
        feed: Feed,
        probe: ProbeHandle<Time>,
        answers: Captured<(u64, (Ident, Fact))>,
    ) -> Rounds<'w> {
        let merging = worker
            .config()
            .get::<Arc<AtomicBool>>(MERGING)
            .cloned()
            .unwrap_or_default();
        Rounds {
            worker,
            feed,
            probe,
            answers,
            step: 0,
            in_flight: None,
            next_query: 0,
            merging,
        }
    }

    /// Whether the current clock value has a step left for one more barrier.
    pub(super) fn has_step(&self) -> bool {
        self.step + 1 < (1 << STEP_BITS)
    }

    /// Moves the inputs to the (possibly new) clock value `now`: the keepers retire the
    /// events whose horizon it reaches (SPEC section 9) and release the decay steps due.
    pub(super) fn advance_clock(&mut self, now: u64) {
        if time(now, 0) > self.feed.time() {
            self.feed.advance_to(time(now, 0));
            self.step = 0;
        }
    }

    /// Opens the next step of clock `now`, sending what is buffered.
    fn next_step(&mut self, now: u64) -> Result<(), EngineError> {
        if !self.has_step() {
            return Err(EngineError::Input(format!(
                "more than {} forget requests or pauses at one clock value ({now})",
                (1u32 << STEP_BITS) - 1
            )));
        }
        self.step += 1;
        self.feed.advance_to(time(now, self.step));
        self.feed.flush();
        Ok(())
    }

    /// Completes everything inserted so far at clock `now` (a new step within it).
    pub(super) fn barrier(&mut self, now: u64) -> Result<(), EngineError> {
        self.next_step(now)?;
        self.complete(time(now, self.step));
        Ok(())
    }

    /// Steps the dataflow until every time before `until` is complete.
    ///
    /// Worker 0 sleeps between steps while the other workers have the round's work, and
    /// wakes when they send it something: a worker 0 polling for it would hold one of the
    /// machine's cores away from the workers (and the writers, and the parsing thread) it
    /// waits for. Every worker keeps a share of the events ([`crate::dataflow::keeper`]),
    /// so a replay's worker 0 waits for theirs as a live round's does.
    pub(super) fn complete(&mut self, until: Time) {
        self.feed.flush();
        while self.probe.less_than(&until) {
            self.worker.step_or_park(Some(PARK));
        }
    }

    /// Sends this round and completes the one before: the time that round was sent at, if
    /// any. Pipelined: this round's events go to the keepers at once, but the round waited
    /// for is the one before, so that worker 0 admits the next round's lines while the
    /// other workers still work on this one (admission is the one sequential stage).
    pub(super) fn pipeline(&mut self) -> Option<Time> {
        self.feed.flush();
        let previous = self.in_flight.replace(self.feed.time())?;
        self.complete(previous);
        Some(previous)
    }

    /// Steps the dataflow once without waiting (an idle engine taking replies in).
    pub(super) fn poll(&mut self) {
        self.worker.step_or_park(Some(Duration::ZERO));
    }

    /// The (profile, fact) answers to a lookup of each of `idents` at clock `now`: the facts
    /// of the profiles they belong to, reflecting everything sent so far (completes a step).
    pub(super) fn look_up(
        &mut self,
        idents: &[Ident],
        now: u64,
    ) -> Result<Vec<(Ident, Fact)>, EngineError> {
        self.next_query += 1;
        let query = self.next_query;
        for id in idents {
            self.feed.query(id.clone(), query, 1);
        }
        self.barrier(now)?;
        let answers = self.answers(query);
        for id in idents {
            self.feed.query(id.clone(), query, -1);
        }
        Ok(answers)
    }

    /// The (profile, fact) answers to lookup `query` (they must be complete).
    fn answers(&mut self, query: u64) -> Vec<(Ident, Fact)> {
        let mut net: BTreeMap<(Ident, Fact), isize> = BTreeMap::new();
        self.answers.borrow_mut().retain(|((q, answer), _, diff)| {
            if *q == query {
                *net.entry(answer.clone()).or_insert(0) += diff;
                false
            } else {
                *q > query // older queries' withdrawals are of no interest
            }
        });
        net.into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(answer, _)| answer)
            .collect()
    }

    /// Asks every keeper `question` ([`Feed::ask`]), wherever it runs, and steps the
    /// dataflow until each has answered: the answers, or the first keeper's broken
    /// invariant. The question goes out with a new step of the inputs' clock value (an
    /// exchange sends what it holds when an epoch closes), and completing that step brings
    /// every reply in (the replies are probed with the outputs); the inputs' clock, not
    /// the gate's: `explain --at` stops at an event the gate accepted, and nothing may
    /// retire past the inputs' clock. Only once something was sent (a clock exists).
    pub(super) fn ask(&mut self, question: Ask) -> Result<Vec<Answer>, String> {
        let ask = self.feed.ask(question).ok_or_else(|| {
            "internal error: asked the keepers after the inputs closed".to_string()
        })?;
        self.barrier(clock_of(self.feed.time()))
            .map_err(|e| e.to_string())?;
        loop {
            if let Some(answers) = self.replies(ask) {
                return answers;
            }
            if !self.worker.step_or_park(Some(PARK)) {
                return Err(
                    "internal error: the dataflow ended before the keepers answered".into(),
                );
            }
        }
    }

    /// Asks every keeper `question` without waiting: the ask's number, for
    /// [`Rounds::replies`]. It goes out at once, with a step of its own; `None` when no
    /// step is left at this clock value or the inputs are closed.
    pub(super) fn ask_soon(&mut self, question: Ask) -> Option<u64> {
        if !self.has_step() {
            return None;
        }
        let ask = self.feed.ask(question)?;
        let clock = clock_of(self.feed.time());
        self.next_step(clock).ok()?;
        Some(ask)
    }

    /// Every keeper's answer to ask `ask`, once each has replied, or the first keeper's
    /// broken invariant.
    pub(super) fn replies(&mut self, ask: u64) -> Option<Result<Vec<Answer>, String>> {
        let replies = self.feed.replies(ask)?;
        Some(match replies.iter().find_map(|r| r.failed.clone()) {
            Some(why) => Err(why),
            None => Ok(replies.into_iter().map(|r| r.answer).collect()),
        })
    }

    /// Merges what the sources read so far left pending in the arrangements, before the next
    /// source starts, at clock `clock`. Differential spreads an arrangement's merges over the
    /// insertions that follow a batch, so without this the first events of a live source
    /// after a large load pay for the load's merges (the update cost with 1M profiles of
    /// state was 4.5x that with 10k). The merges run only here: merging whenever idle keeps
    /// both workers busy under steady input.
    pub(super) fn merge_pending(&mut self, clock: u64) -> Result<(), EngineError> {
        self.merging.store(true, Ordering::Relaxed);
        // a new time schedules every arrangement, which then keeps itself scheduled while
        // it has merging to do
        self.barrier(clock)?;
        let started = Instant::now();
        while self.worker.activations().borrow().empty_for() == Some(Duration::ZERO)
            && started.elapsed() < MERGE_LIMIT
        {
            self.worker.step();
        }
        self.merging.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Closes the inputs: the dataflow completes once every worker has drained them.
    pub(super) fn close(&mut self) {
        self.feed.close();
    }

    /// Steps the dataflow until it completes (every worker drained the closed inputs):
    /// `false` if `limit` passed first.
    pub(super) fn run_out(&mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while self.worker.step_or_park(Some(PARK)) {
            if started.elapsed() > limit {
                return false;
            }
        }
        true
    }

    /// Steps the dataflow until `done` holds, or until `limit` passes (`false`), or until
    /// the dataflow completes (`done` decides).
    pub(super) fn step_until(&mut self, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        let started = Instant::now();
        loop {
            if done() {
                return true;
            }
            if started.elapsed() > limit {
                return false;
            }
            if !self.worker.step_or_park(Some(PARK)) {
                return done();
            }
        }
    }
}
