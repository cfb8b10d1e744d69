//! Erasure and profile queries (SPEC section 6). A `forget` request, step by step:
//!
//! 1. `Driver::forget` asks the dataflow for the profile of each identifier of the request
//!    (a lookup query, [`crate::dataflow::lookup::profiles_of`], answered by
//!    [`crate::dataflow::profiles`]), completing the current time so the answer reflects every line processed so far;
//! 2. S is the request's identifiers and every member of those profiles;
//! 3. S is suppressed in the admission gate as salted hashes
//!    ([`crate::event::admit::Admission::suppress`]), so later events carrying one are
//!    dropped, and the hashes are recorded (`Sinks::erasures`: the server's erasures file,
//!    which log compaction, `store::compact`, reads to drop the erased values from disk);
//! 4. every keeper ([`crate::dataflow::keeper`]) takes each live event carrying an
//!    identifier of S out of its history
//!    ([`crate::dataflow::history::History::take_carrying`]) and retracts it, exactly
//!    the negation of its insertion; so is every retired event carrying one
//!    ([`crate::dataflow::Inputs::erase_retired`]: what is left of it, its links and the
//!    records kept for its identifier set).
//!
//! Lookups (`GET /v1/profiles/...`) and explanations use the same queries and history.

use super::publish::PARK;
use super::*;

impl Driver<'_> {
    /// Erasure (SPEC section 6): S is the request's identifiers and every identifier of the
    /// profiles they belong to now (everything processed so far, this clock value included);
    /// every live event carrying one is retracted as if it had never arrived, and S is
    /// suppressed (as salted hashes) so later events carrying one are dropped.
    pub(super) fn forget(
        &mut self,
        request: &Event,
        now: u64,
        line: u64,
    ) -> Result<(), EngineError> {
        self.summary.tally.forgets += 1;
        self.summary.tally.erasures += 1;
        self.next_query += 1;
        let query = self.next_query;
        for id in &request.idents {
            self.feed.query(id.clone(), query, 1);
        }
        self.barrier(now)?;
        let mut erased: HashSet<Ident> = request.idents.iter().cloned().collect();
        erased.extend(
            self.answers(query)
                .into_iter()
                .filter_map(|(_, fact)| match fact {
                    Fact::Member(id) => Some(id),
                    _ => None,
                }),
        );
        for id in &request.idents {
            self.feed.query(id.clone(), query, -1);
        }
        let mut hashes: Vec<u128> = erased.iter().map(|id| self.gate.suppress(id)).collect();
        hashes.sort_unstable();
        if let Some(record) = &mut self.sinks.erasures {
            record(line, &hashes)?;
        }
        self.feed.erase(&erased);
        self.dirty = true;
        Ok(())
    }

    /// The (profile, fact) answers to lookup `query` (they must be complete).
    pub(super) fn answers(&mut self, query: u64) -> Vec<(Ident, Fact)> {
        let mut net: BTreeMap<(Ident, Fact), isize> = BTreeMap::new();
        self.outputs
            .answers
            .borrow_mut()
            .retain(|((q, answer), _, diff)| {
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

    /// `GET /v1/profiles/{type}:{value}`: the profile `ident` belongs to, as JSON, reflecting
    /// every line the engine has processed; `None` when no event carried `ident`.
    pub(super) fn lookup(&mut self, ident: &Ident) -> Result<Option<serde_json::Value>, String> {
        let Some(now) = self.clock() else {
            return Ok(None);
        };
        if self.step + 1 >= (1 << STEP_BITS) {
            return Err("too many lookups at one clock value; retry shortly".into());
        }
        self.next_query += 1;
        let query = self.next_query;
        self.feed.query(ident.clone(), query, 1);
        self.barrier(now).map_err(|e| e.to_string())?;
        let answers = self.answers(query);
        self.feed.query(ident.clone(), query, -1);
        let Some(profile) = answers.first().map(|(p, _)| p.clone()) else {
            return Ok(None);
        };
        let facts: Vec<Fact> = answers.into_iter().map(|(_, f)| f).collect();
        Ok(Some(output::profile_json(self.spec, &profile, &facts)))
    }

    /// Asks every keeper `question` ([`Feed::ask`]), wherever it runs, and steps the
    /// dataflow until each has answered: the answers, or the first keeper's broken
    /// invariant. The question goes out with a new step of the inputs' clock value (an
    /// exchange sends what it holds when an epoch closes), and completing that step brings
    /// every reply in (the replies are probed with the outputs); the inputs' clock, not
    /// the gate's: `explain --at` stops at an event the gate accepted, and nothing may
    /// retire past the inputs' clock.
    pub(super) fn ask(&mut self, question: Ask) -> Result<Vec<Answer>, String> {
        if self.clock().is_none() {
            return Ok(Vec::new()); // nothing was sent: every keeper holds nothing
        }
        let ask = self.feed.ask(question).ok_or_else(|| {
            "internal error: asked the keepers after the inputs closed".to_string()
        })?;
        self.barrier(clock_of(self.feed.time()))
            .map_err(|e| e.to_string())?;
        loop {
            if let Some(replies) = self.feed.replies(ask) {
                if let Some(why) = replies.iter().find_map(|r| r.failed.clone()) {
                    return Err(why);
                }
                return Ok(replies.into_iter().map(|r| r.answer).collect());
            }
            if !self.worker.step_or_park(Some(PARK)) {
                return Err(
                    "internal error: the dataflow ended before the keepers answered".into(),
                );
            }
        }
    }

    /// The explanation of the profile of `ident` at clock `at` (default: now), from the
    /// live events that arrived by then. An erased identifier is only reported suppressed.
    pub(super) fn explain(&mut self, ident: &Ident, at: Option<u64>) -> explain::Outcome {
        let identifier = ident.key(&self.spec.identity);
        if self.gate.is_suppressed(ident) {
            return explain::Outcome::Suppressed { identifier };
        }
        match at.or(self.options.until_ms).or(self.clock()) {
            Some(at) => {
                // each identifier the walk reads is asked of every keeper (see `ask`)
                let (spec, sources) = (self.spec, self.source_names.clone());
                let held = Held::new(|id| {
                    let answers = self.ask(Ask::Carrying(id.clone()))?;
                    let fetched = answers.into_iter().filter_map(|answer| match answer {
                        Answer::Carrying(fetched) => Some(fetched),
                        Answer::Counts(_) => None,
                    });
                    Ok(fetched.collect())
                });
                let outcome = explain::explain(&held, spec, &sources, ident, at);
                let failure = held.failure();
                drop(held);
                match failure {
                    Some(why) => {
                        self.failure.get_or_insert(why);
                        explain::Outcome::NotFound { identifier }
                    }
                    None => outcome,
                }
            }
            None => explain::Outcome::NotFound { identifier },
        }
    }
}
