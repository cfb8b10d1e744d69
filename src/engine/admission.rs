//! Admission of each line of a batch (SPEC sections 1 and 6 through
//! [`crate::event::admit::Admission::classify`]) and the insertion of accepted events.

use super::input::{Batch, LineRef};
use super::output::DeadLetter;
use super::{Driver, EngineError, wall_clock_ms};
use crate::dataflow::{EventFacts, Origin};
use crate::event::admit::Line;
use crate::event::{DeadReason, Kind};

impl Driver<'_> {
    /// Parses (unless it was parsed ahead, [`Batch::parse_ahead`]), admits and inserts every
    /// line of a batch.
    pub(super) fn ingest(&mut self, batch: &mut Batch) -> Result<(), EngineError> {
        let wall = batch
            .wall_ms
            .or(self.options.wall_clock_ms)
            .unwrap_or_else(wall_clock_ms);
        let mut ahead = std::mem::take(&mut batch.ahead).into_iter();
        for line in &batch.lines {
            let parsed = ahead.next().flatten();
            if self.stopped {
                break;
            }
            self.summary.tally.lines += 1;
            self.note_source(line.source)?;
            if let Some(length) = line.too_long {
                self.dead(line, DeadReason::LineTooLong, format!("{length} bytes"))?;
                self.summary.tally.reducible += 1;
                continue;
            }
            // a compacted line is counted as the line it stands for, but is not reducible
            // again: it is compacted already
            let fresh = u64::from(!line.residue);
            let (classified, facts) = match parsed {
                Some(Ok((event, facts))) => (self.gate.classify_parsed(Ok(event), wall), facts),
                Some(Err(rejection)) => (self.gate.classify_parsed(Err(rejection), wall), None),
                None => {
                    let bytes = batch.bytes(line);
                    let classified =
                        self.gate
                            .classify(self.spec, bytes, line.residue, batch.wall_ms, wall);
                    (classified, None)
                }
            };
            match classified {
                Line::Accepted { now, .. } if self.options.until_ms.is_some_and(|u| now > u) => {
                    // `--at T`: this event moves the clock past T; nothing from here on
                    // belongs to the state at T
                    self.stopped = true;
                    break;
                }
                Line::Accepted { event, now } => {
                    self.summary.tally.accepted += 1;
                    self.rounds.advance_clock(now);
                    let forget = event.kind == Kind::Forget;
                    self.publisher.accepted(now, batch.read_at, forget);
                    if event.kind == Kind::Forget {
                        self.forget(&event, now, line.number)?;
                    } else {
                        let facts = facts.unwrap_or_else(|| {
                            EventFacts::of(0, &event, self.spec, now, Origin::default())
                        });
                        self.insert(facts, now, line);
                    }
                }
                Line::Replayed { now, erasure } => {
                    self.summary.tally.accepted += 1;
                    self.summary.tally.forgets += u64::from(erasure.is_some());
                    // an erased event took a sequence number too: the numbers of the
                    // events after it stay what they were (spans keep records by them)
                    self.skip_seqs(u64::from(erasure.is_none()));
                    self.rounds.advance_clock(now);
                }
                Line::Span { now, span } => self.replay_span(line, now, &span)?,
                Line::Duplicate => {
                    self.summary.tally.duplicates += 1;
                    self.summary.tally.reducible += fresh;
                }
                Line::Dead { reason, detail } => {
                    self.dead(line, reason, detail)?;
                    self.summary.tally.reducible += fresh;
                }
                Line::Suppressed => {
                    self.summary.tally.suppressed += 1;
                    self.summary.tally.reducible += fresh;
                }
                Line::Unreadable(e) => {
                    return Err(EngineError::Input(format!(
                        "{} line {}: {e}",
                        self.source_name(line),
                        line.cited().1
                    )));
                }
            }
        }
        Ok(())
    }

    /// Replays a compacted run of retired lines ([`crate::event::residue::Span`]): its
    /// counts, dead letters and sequence numbers, the clock, and what is kept of its
    /// events per identifier set ([`crate::dataflow::Inputs::restore`]).
    fn replay_span(
        &mut self,
        line: &LineRef,
        now: u64,
        span: &crate::event::residue::Span,
    ) -> Result<(), EngineError> {
        let tally = &mut self.summary.tally;
        // the line itself was counted already
        tally.lines += span.lines.saturating_sub(1);
        tally.accepted += span.accepted;
        tally.forgets += span.forgets;
        tally.duplicates += span.duplicates;
        tally.suppressed += span.suppressed;
        self.skip_seqs(span.events);
        for (source, number, reason, detail) in &span.dead {
            self.summary.tally.dead_letters += 1;
            self.dead_letters.push(DeadLetter {
                source: self.source_name_of(*source),
                line: *number,
                reason: *reason,
                detail: detail.clone(),
            })?;
        }
        for bytes in &span.sets {
            let summary = crate::dataflow::retention::Summary::decode(bytes).map_err(|e| {
                EngineError::Input(format!(
                    "{} line {}: {e}",
                    self.source_name(line),
                    line.number
                ))
            })?;
            self.rounds.feed.restore(summary);
        }
        self.rounds.advance_clock(now);
        self.dirty = true;
        Ok(())
    }

    /// Leaves `n` sequence numbers unused (events a compacted log no longer holds took them).
    fn skip_seqs(&mut self, n: u64) {
        self.next_seq += n;
    }

    /// Inserts an accepted event's facts (made by [`EventFacts::of`]) at clock `now`, with
    /// the next sequence number; its keeper keeps them in its history.
    pub(super) fn insert(&mut self, mut facts: EventFacts, now: u64, line: &LineRef) {
        let (source, cited_line) = line.cited();
        facts.seq = self.next_seq;
        facts.arrival_ms = now;
        facts.origin = Origin {
            source,
            line: cited_line,
        };
        self.next_seq += 1;
        self.rounds.feed.insert(facts);
        self.dirty = true;
    }

    pub(super) fn dead(
        &mut self,
        line: &LineRef,
        reason: DeadReason,
        detail: String,
    ) -> Result<(), EngineError> {
        let source = self.source_name(line);
        self.summary.tally.dead_letters += 1;
        self.dead_letters.push(DeadLetter {
            source,
            line: line.cited().1,
            reason,
            detail,
        })?;
        Ok(())
    }

    /// Wall-clock mode: moves the clock to the wall clock and publishes what that completes
    /// (decay steps that fell due).
    pub(super) fn tick(&mut self) -> Result<(), EngineError> {
        let wall = self.options.wall_clock_ms.unwrap_or_else(wall_clock_ms);
        if let Some(now) = self.gate.tick(wall) {
            self.rounds.advance_clock(now);
            self.settle()?;
        }
        Ok(())
    }
}
