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

use std::collections::HashSet;

use super::{Driver, EngineError, output};
use crate::dataflow::keeper::{Answer, Ask, Held};
use crate::dataflow::views::Fact;
use crate::event::{Event, Ident};
use crate::explain;

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
        let answers = self.rounds.look_up(&request.idents, now)?;
        let mut erased: HashSet<Ident> = request.idents.iter().cloned().collect();
        erased.extend(answers.into_iter().filter_map(|(_, fact)| match fact {
            Fact::Member(id) => Some(id),
            _ => None,
        }));
        let mut hashes: Vec<u128> = erased.iter().map(|id| self.gate.suppress(id)).collect();
        hashes.sort_unstable();
        if let Some(record) = &mut self.erasures {
            record(line, &hashes)?;
        }
        self.rounds.feed.erase(&erased);
        self.dirty = true;
        Ok(())
    }

    /// `GET /v1/profiles/{type}:{value}`: the profile `ident` belongs to, as JSON, reflecting
    /// every line the engine has processed; `None` when no event carried `ident`.
    pub(super) fn lookup(&mut self, ident: &Ident) -> Result<Option<serde_json::Value>, String> {
        let Some(now) = self.clock() else {
            return Ok(None);
        };
        if !self.rounds.has_step() {
            return Err("too many lookups at one clock value; retry shortly".into());
        }
        let answers = self
            .rounds
            .look_up(std::slice::from_ref(ident), now)
            .map_err(|e| e.to_string())?;
        let Some(profile) = answers.first().map(|(p, _)| p.clone()) else {
            return Ok(None);
        };
        let facts: Vec<Fact> = answers.into_iter().map(|(_, f)| f).collect();
        let spec = self.spec_now.clone();
        let spec = spec.as_deref().unwrap_or(self.spec);
        Ok(Some(output::profile_json(spec, &profile, &facts)))
    }

    /// Asks every keeper `question` and waits for the answers ([`super::rounds::Rounds::ask`]);
    /// none before anything was sent (every keeper holds nothing).
    pub(super) fn ask(&mut self, question: Ask) -> Result<Vec<Answer>, String> {
        if self.clock().is_none() {
            return Ok(Vec::new());
        }
        self.rounds.ask(question)
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
                let sources = self.source_names.clone();
                let now = self.spec_now.clone();
                let spec = now.as_deref().unwrap_or(self.spec);
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
