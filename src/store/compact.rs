//! Log compaction: rewrites the event log so that it keeps only what the spec still needs
//! and nothing of erased events (SPEC section 6), while a replay of the result reaches
//! exactly the state, clock, deduplication set, counters and dead letters that a replay of
//! the original reaches.
//!
//! Admission (SPEC section 1) is re-run over the log with the dataflow spec and the data
//! directory's salt; each `forget` request's erasure set S comes from the erasures file the
//! engine wrote when it carried the request out. Each line is then kept, or replaced one for
//! one (so line numbers stay valid) by its [`Residue`]:
//!
//! | line                                              | becomes                          |
//! |---------------------------------------------------|----------------------------------|
//! | a dead letter                                     | `Dead` (reason and detail)       |
//! | a duplicate                                       | `Duplicate`                      |
//! | an event suppressed by an earlier erasure         | `Suppressed`                     |
//! | an accepted event carrying an identifier of any S | `Accepted` (timestamp, id hash)  |
//! | a carried-out `forget`                            | `Erasure` (the salted hashes)    |
//! | any other accepted event                          | kept as received                 |
//!
//! # Retired lines fold into spans (SPEC section 9)
//!
//! Up to the *fold point* (the last line every sink has confirmed, and before any `forget`
//! kept as it is), with `C` the clock a replay reaches there, a line *folds* when it can no
//! longer change anything but what retention keeps:
//!
//! - an accepted event that has retired at `C` ([`Horizon::event_retires`]) and whose
//!   `messageId`, if any, the dedup window has let go at `C`;
//! - an erased event or a carried-out `forget` whose `messageId` is let go likewise;
//! - a duplicate, a suppressed event, a dead letter, or an earlier span.
//!
//! Each run of consecutive folding lines becomes one [`Span`] (or a few, each under
//! 256 KiB) that counts as the run's lines, so line numbers stay valid. It keeps what a
//! replay needs to reach exactly the state the run's lines reach at `C`: the clock, the
//! counts, the erasures' suppressed hashes, the dead letters (by line), the Kafka offsets,
//! the sequence numbers taken, and per identifier set what the engine keeps of retired
//! events ([`Summary`]: identifiers and links counted once per event, the records that can
//! still win, the citation of the last). A replay restores that
//! ([`crate::dataflow::Inputs::restore`]) where it would have inserted and later retired
//! each event. Nothing after the fold point can tell the difference: the events' weights
//! and roles are spent ([`crate::dataflow::retention`]), and the sinks have confirmed every
//! change up to it. Sets with an identifier of a carried-out erasure leave the span at the
//! compaction that reduces the erasure, so no raw value of theirs stays either.
//!
//! The log then holds the live lines plus about one summary per identifier set, however
//! long the server has run: it is bounded by what retention keeps, as memory is.
//!
//! A span holds what the engine kept under the spec it was folded with. A server started
//! with another spec replays spans as they are: a change to identifier types, consent
//! purposes or traits applies exactly only to the lines still kept as received (the
//! retired events are gone, as they are from memory). A rebuild for a new spec on a running
//! server checks this first (`crate::spec::edit::inexact_rules`, [`super::log::folded_until`]):
//! see `crate::server`'s rebuilds.
//!
//! A `forget` the engine has not carried out yet (no erasure set recorded) ends the rewrite:
//! it and every line after it are kept as they are, for a later compaction. So does a
//! `forget` the sinks have not all confirmed yet (its line is past `confirmed`, the least
//! position every sink has confirmed: see [`crate::io::sink`]): a crash may still make the
//! replay regenerate the retractions those sinks owe, which needs the erased events. Its
//! values leave the disk at the first compaction after the sinks confirm
//! ([`Rewritten::deferred`] says which line waits).

use std::collections::{BTreeMap, HashSet};

use crate::dataflow::retention::{Cite, Horizon, Kept, Sets, Summary};
use crate::dataflow::{EventFacts, Origin, latest};
use crate::event::Kind;
use crate::event::admit::{Admission, Line, remembered_at};
use crate::event::residue::{Residue, Span, message_id_hash};
use crate::spec::Spec;

use super::erasures::ErasureSets;
use super::log::Record;

/// What pass one decided for a record.
enum Fate {
    /// Kept as it is, never folded (an unreadable residue, or a line after the rewrite
    /// stopped).
    Keep,
    /// Reduced to a residue (or one already: `fresh` is false); folds always.
    Reduce(Residue, bool),
    /// A carried-out `forget`, reduced to its erasure; folds once its `messageId` (accepted
    /// at clock `c`) is let go.
    Erasure(Residue, u64, bool),
    /// Accepted, at clock `c`: reduced if it carries an identifier (by salted hash) of any
    /// erasure set; folds once retired.
    Accepted {
        timestamp_ms: u64,
        c: u64,
        message_id: Option<u128>,
        idents: Vec<u128>,
    },
    /// An earlier residue of an accepted event or erasure, accepted at `c`.
    Replayed { c: u64, has_id: bool, erasure: bool },
    /// An earlier span.
    Span(Box<Span>),
}

/// A rewritten log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The records: one for each of the original's, but where lines folded into spans.
    pub records: Vec<Record>,
    /// How many lines this rewrite reduced or folded (earlier residues not counted).
    pub reduced: u64,
    /// The line of the first carried-out `forget` kept as it is because some sink has not
    /// confirmed its retractions yet, if any.
    pub deferred: Option<u64>,
}

/// Rewrites the log's records (line numbers from 1) as described in the module docs;
/// `confirmed` is the least position every sink has confirmed (`u64::MAX` without sinks).
pub fn rewrite(
    records: Vec<Record>,
    spec: &Spec,
    salt: u128,
    sets: &ErasureSets,
    confirmed: u64,
) -> Rewritten {
    let mut gate = Admission::new(spec, salt);
    let mut erased: HashSet<u128> = HashSet::new();
    let mut fates = Vec::with_capacity(records.len());
    // the clock a replay reaches after each record
    let mut clocks = Vec::with_capacity(records.len());
    let mut deferred = None;
    // (records that may fold, the clock a replay reaches after them)
    let mut fold = (0, 0);
    let mut number = 0;
    for (index, record) in records.iter().enumerate() {
        number += record.lines.max(1);
        let line = gate.classify(
            spec,
            &record.line,
            record.residue,
            Some(record.wall_ms),
            record.wall_ms,
        );
        let fresh = !record.residue;
        let fate = match line {
            Line::Replayed { now, erasure } => {
                let has_id = match Residue::decode(&record.line) {
                    Ok(
                        Residue::Accepted { message_id, .. } | Residue::Erasure { message_id, .. },
                    ) => message_id.is_some(),
                    _ => true,
                };
                let is_erasure = erasure.is_some();
                erased.extend(erasure.unwrap_or_default());
                Fate::Replayed {
                    c: now,
                    has_id,
                    erasure: is_erasure,
                }
            }
            Line::Span { span, .. } => {
                erased.extend(span.erasures.iter().copied());
                Fate::Span(span)
            }
            Line::Accepted { event, now } if event.kind == Kind::Forget => {
                let Some(set) = sets.get(&number) else {
                    break; // a forget not carried out yet
                };
                if number > confirmed {
                    deferred = Some(number); // the sinks still owe its retractions
                    break;
                }
                for h in set {
                    gate.suppress_hash(*h);
                    erased.insert(*h);
                }
                let message_id = event.message_id.as_deref().map(message_id_hash);
                let residue = Residue::Erasure {
                    timestamp_ms: event.timestamp_ms,
                    message_id,
                    suppressed: set.clone(),
                };
                Fate::Erasure(residue, now, message_id.is_some())
            }
            Line::Accepted { event, now } => Fate::Accepted {
                timestamp_ms: event.timestamp_ms,
                c: now,
                message_id: event.message_id.as_deref().map(message_id_hash),
                idents: event.idents.iter().map(|i| gate.salted(i)).collect(),
            },
            Line::Duplicate => Fate::Reduce(Residue::Duplicate, fresh),
            Line::Suppressed => Fate::Reduce(Residue::Suppressed, fresh),
            Line::Dead { reason, detail } => Fate::Reduce(Residue::Dead { reason, detail }, fresh),
            Line::Unreadable(_) => Fate::Keep,
        };
        fates.push(fate);
        clocks.push(gate.clock().unwrap_or(0));
        if number <= confirmed {
            fold = (index + 1, gate.clock().unwrap_or(0));
        }
    }
    // lines from a forget not carried out yet onwards are kept as they are
    fates.resize_with(records.len(), || Fate::Keep);
    let mut folder = Folder {
        spec,
        salt,
        horizon: Horizon::of(spec),
        clock: fold.1,
        erased: &erased,
        out: Vec::with_capacity(records.len()),
        run: Run::default(),
        reduced: 0,
        seq: 0,
        number: 0,
    };
    for (index, (record, fate)) in records.into_iter().zip(fates).enumerate() {
        let folding = folder.run.originals.len();
        let after = clocks.get(index).copied().unwrap_or(0);
        folder.next(record, fate, index < fold.0);
        if folder.run.originals.len() > folding {
            folder.run.clock = after;
        }
    }
    folder.flush();
    Rewritten {
        records: folder.out,
        reduced: folder.reduced,
        deferred,
    }
}

/// Pass two: each record kept, reduced or folded, in order.
struct Folder<'a> {
    spec: &'a Spec,
    salt: u128,
    horizon: Horizon,
    /// The clock a replay reaches at the fold point.
    clock: u64,
    erased: &'a HashSet<u128>,
    out: Vec<Record>,
    run: Run,
    reduced: u64,
    /// The sequence number the next accepted event takes in a replay.
    seq: u64,
    /// The last line number so far.
    number: u64,
}

/// A run of consecutive folding records.
#[derive(Default)]
struct Run {
    span: Span,
    kafka: BTreeMap<i32, i64>,
    sets: Sets,
    /// The records as they are without folding (with whether each is a fresh reduction),
    /// kept in case the run cannot fold.
    originals: Vec<(Record, bool)>,
    /// Lines that were not in a span before, or spans that lost a set to an erasure.
    fresh: u64,
    wall_ms: u64,
    /// The clock a replay reaches after its last record.
    clock: u64,
}

/// Spans are cut into records of about this many bytes (a record holds at most 1 MiB).
const SPAN_BYTES: usize = 256 << 10;

impl Folder<'_> {
    /// Whether a `messageId` accepted at clock `c` is let go at the fold point.
    fn let_go(&self, c: u64, has_id: bool) -> bool {
        !has_id || !remembered_at(c, self.clock, self.spec.input.dedup_window_ms)
    }

    fn next(&mut self, record: Record, fate: Fate, may_fold: bool) {
        let first = self.number + 1;
        self.number += record.lines.max(1);
        let reduce = |record: &Record, residue: &Residue| Record {
            wall_ms: record.wall_ms,
            line: residue.encode(),
            residue: true,
            origin: record.origin,
            lines: 1,
        };
        match fate {
            Fate::Keep => self.keep(record, false),
            Fate::Reduce(residue, fresh) => {
                let folded = if may_fold {
                    let span = &mut self.run.span;
                    match &residue {
                        Residue::Duplicate => span.duplicates += 1,
                        Residue::Suppressed => span.suppressed += 1,
                        Residue::Dead { reason, detail } => {
                            let (source, line) = cited(&record, first);
                            span.dead.push((source, line, *reason, detail.clone()));
                        }
                        _ => {}
                    }
                    true
                } else {
                    false
                };
                let reduced = if fresh {
                    reduce(&record, &residue)
                } else {
                    record
                };
                self.put(reduced, fresh, folded);
            }
            Fate::Erasure(residue, c, has_id) => {
                let folded = may_fold && self.let_go(c, has_id);
                if folded && let Residue::Erasure { suppressed, .. } = &residue {
                    let span = &mut self.run.span;
                    span.accepted += 1;
                    span.forgets += 1;
                    span.erasures.extend(suppressed.iter().copied());
                }
                let reduced = reduce(&record, &residue);
                self.put(reduced, true, folded);
            }
            Fate::Replayed { c, has_id, erasure } => {
                let folded = may_fold && self.let_go(c, has_id);
                if !erasure {
                    self.seq += 1;
                }
                if folded {
                    let span = &mut self.run.span;
                    span.accepted += 1;
                    span.forgets += u64::from(erasure);
                    span.events += u64::from(!erasure);
                    if erasure
                        && let Ok(Residue::Erasure { suppressed, .. }) =
                            Residue::decode(&record.line)
                    {
                        span.erasures.extend(suppressed);
                    }
                }
                self.put(record, false, folded);
            }
            Fate::Accepted {
                timestamp_ms,
                c,
                message_id,
                idents,
            } => {
                let seq = self.seq;
                self.seq += 1;
                let let_go = may_fold && self.let_go(c, message_id.is_some());
                if idents.iter().any(|h| self.erased.contains(h)) {
                    if let_go {
                        self.run.span.accepted += 1;
                        self.run.span.events += 1;
                    }
                    let residue = Residue::Accepted {
                        timestamp_ms,
                        message_id,
                    };
                    let reduced = reduce(&record, &residue);
                    self.put(reduced, true, let_go);
                    return;
                }
                let retired = self.horizon.event_retires(timestamp_ms) <= self.clock;
                let folded = let_go && retired && self.fold_event(&record, first, seq, c);
                self.put(record, false, folded);
            }
            Fate::Span(span) => {
                self.seq += span.events;
                if may_fold {
                    self.absorb(*span);
                    self.run.originals.push((record, false));
                    self.run.wall_ms = self.run.originals.last().map_or(0, |(r, _)| r.wall_ms);
                } else {
                    self.keep(record, false);
                }
            }
        }
    }

    /// Adds a retired event to the run: what the engine keeps of it in its identifier set.
    /// False when its line cannot be read again (it is then kept).
    fn fold_event(&mut self, record: &Record, first: u64, seq: u64, c: u64) -> bool {
        let Ok(event) = crate::event::parse(&record.line, self.spec, Some(record.wall_ms)) else {
            return false;
        };
        let (source, line) = cited(record, first);
        let origin = Origin { source, line };
        let facts = EventFacts::of(seq, &event, self.spec, c, origin);
        let cite = Cite::of(&facts);
        for (slot, rank) in latest::records_of(&facts) {
            let _ = self
                .run
                .sets
                .offer(&facts.idents, Kept { slot, rank, cite });
        }
        self.run.sets.retire(&facts);
        self.run.span.accepted += 1;
        self.run.span.events += 1;
        true
    }

    /// Adds an earlier span to the run, less the sets an erasure has taken since.
    fn absorb(&mut self, span: Span) {
        let gate = Admission::with_rules(0, None, self.salt);
        for bytes in &span.sets {
            let Ok(summary) = Summary::decode(bytes) else {
                continue;
            };
            if summary
                .idents
                .iter()
                .any(|i| self.erased.contains(&gate.salted(i)))
            {
                self.run.fresh += 1; // its values leave the log
                continue;
            }
            let _ = self.run.sets.absorb(&summary);
        }
        let run = &mut self.run.span;
        run.accepted += span.accepted;
        run.events += span.events;
        run.forgets += span.forgets;
        run.duplicates += span.duplicates;
        run.suppressed += span.suppressed;
        run.erasures.extend(span.erasures);
        run.dead.extend(span.dead);
        for (partition, next) in span.kafka {
            let slot = self.run.kafka.entry(partition).or_insert(next);
            *slot = (*slot).max(next);
        }
        self.run.span.lines += span.lines;
    }

    /// Puts a record that folded into the run (`folded`: its counts are in the run's span
    /// already), else ends the run and keeps it; `fresh` says it is a new reduction.
    fn put(&mut self, record: Record, fresh: bool, folded: bool) {
        if !folded {
            self.keep(record, fresh);
            return;
        }
        if let Some(o) = record.origin {
            let slot = self.run.kafka.entry(o.partition).or_insert(o.offset + 1);
            *slot = (*slot).max(o.offset + 1);
        }
        self.run.span.lines += record.lines.max(1);
        self.run.fresh += 1;
        self.run.wall_ms = record.wall_ms;
        self.run.originals.push((record, fresh));
    }

    /// Ends the run and appends `record` as it is.
    fn keep(&mut self, record: Record, fresh: bool) {
        self.flush();
        self.reduced += u64::from(fresh);
        self.out.push(record);
    }

    /// Ends the run: its spans, or its records as they were when it cannot fold (an
    /// erasure too large for its lines) or would fold to itself (one unchanged span).
    fn flush(&mut self) {
        let mut run = std::mem::take(&mut self.run);
        if run.originals.is_empty() {
            return;
        }
        let unchanged = run.fresh == 0;
        let chunks = (!unchanged).then(|| chunks(&mut run)).flatten();
        match chunks {
            Some(chunks) => {
                self.reduced += run.fresh;
                for span in chunks {
                    let lines = span.lines;
                    let residue = Residue::Span(Box::new(span));
                    self.out.push(Record::residue(run.wall_ms, &residue, lines));
                }
            }
            None => {
                for (record, fresh) in run.originals {
                    self.reduced += u64::from(fresh && !unchanged);
                    self.out.push(record);
                }
            }
        }
    }
}

/// The (source, line) a record at line `number` is cited as (as the replay cites it:
/// [`crate::store::log::batches`]).
fn cited(record: &Record, number: u64) -> (u16, u64) {
    record
        .origin
        .and_then(super::log::Origin::cited)
        .unwrap_or((0, number))
}

/// A run's spans, each under [`SPAN_BYTES`] of sets, dead letters and erasures and each
/// standing for at least one line; `None` when that takes more records than the run has
/// lines.
fn chunks(run: &mut Run) -> Option<Vec<Span>> {
    let mut whole = std::mem::take(&mut run.span);
    whole.kafka = std::mem::take(&mut run.kafka).into_iter().collect();
    whole.clock = run.clock;
    let blank = Span {
        lines: 1,
        clock: run.clock,
        ..Span::default()
    };
    let mut pack = Packer {
        done: Vec::new(),
        current: blank.clone(),
        size: 0,
        blank,
    };
    for set in run.sets.summaries().iter().map(Summary::encode) {
        pack.room(set.len()).sets.push(set);
    }
    for dead in std::mem::take(&mut whole.dead) {
        pack.room(dead.3.len() + 24).dead.push(dead);
    }
    for hash in std::mem::take(&mut whole.erasures) {
        pack.room(16).erasures.push(hash);
    }
    let (mut out, last) = (pack.done, pack.current);
    // the last record stands for the run's other lines and carries its counts
    let lines = whole
        .lines
        .checked_sub(out.len() as u64)
        .filter(|&l| l > 0)?;
    out.push(Span {
        lines,
        sets: last.sets,
        dead: last.dead,
        erasures: last.erasures,
        ..whole
    });
    Some(out)
}

/// Fills spans up to [`SPAN_BYTES`] each.
struct Packer {
    done: Vec<Span>,
    current: Span,
    size: usize,
    blank: Span,
}

impl Packer {
    /// The span with room for `bytes` more (a new one when the current one is full).
    fn room(&mut self, bytes: usize) -> &mut Span {
        if self.size + bytes > SPAN_BYTES && self.size > 0 {
            let full = std::mem::replace(&mut self.current, self.blank.clone());
            self.done.push(full);
            self.size = 0;
        }
        self.size += bytes;
        &mut self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DeadReason;

    fn run_of(lines: u64, dead: usize) -> Run {
        let mut run = Run {
            clock: 77,
            ..Run::default()
        };
        run.span.lines = lines;
        run.span.accepted = 5;
        run.span.dead = (0..dead)
            .map(|i| (0, i as u64, DeadReason::BadTimestamp, "x".repeat(20_000)))
            .collect();
        run
    }

    /// A run too large for one record is cut into spans under the size bound, each standing
    /// for at least one line, the last for the rest and carrying the counts; a run with
    /// fewer lines than that takes is not folded.
    #[test]
    fn large_runs_are_cut_into_spans_that_count_their_lines() {
        let spans = chunks(&mut run_of(100, 60)).unwrap();
        assert!(spans.len() > 3, "{}", spans.len());
        assert_eq!(spans.iter().map(|s| s.lines).sum::<u64>(), 100);
        assert!(spans.iter().all(|s| s.clock == 77 && s.lines >= 1));
        assert!(
            spans
                .iter()
                .all(|s| s.dead.len() * 20_000 <= SPAN_BYTES + 20_024)
        );
        let lines: Vec<u64> = spans
            .iter()
            .flat_map(|s| s.dead.iter().map(|d| d.1))
            .collect();
        assert_eq!(
            lines,
            (0..60).collect::<Vec<_>>(),
            "dead letters stay in order"
        );
        let counted: Vec<u64> = spans.iter().map(|s| s.accepted).collect();
        assert_eq!(counted.last(), Some(&5));
        assert_eq!(counted.iter().sum::<u64>(), 5);
        assert!(chunks(&mut run_of(2, 60)).is_none());
    }
}
