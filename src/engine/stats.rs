//! Statistics: the driver's one [`Tally`], the copy of it other threads read
//! ([`Counters`], for `/metrics` and the console), the latency histogram, and the run's
//! [`Summary`] with its per-source figures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::output::{Change, DeadLetter, Snapshot};
use super::rounds::Rounds;
use super::{Driver, EngineError};
use crate::dataflow::keeper::{Answer, Ask, Counts};
use crate::event::DeadReason;

/// The running totals as other threads read them (e.g. for `/metrics`): the driver's
/// [`Tally`], mirrored at the end of every round and before every publication
/// ([`Counters::mirror`], [`Counters::mirror_counts`]), and the latency histogram. On live
/// input a round ends by publishing its changes, so once `lines` reaches a value, the
/// views hold every change of those lines.
#[derive(Debug, Default)]
pub struct Counters {
    /// Non-blank lines read.
    pub lines: AtomicU64,
    /// Accepted events.
    pub accepted: AtomicU64,
    /// Duplicates dropped.
    pub duplicates: AtomicU64,
    /// Dead letters.
    pub dead_letters: AtomicU64,
    /// Suppressed events.
    pub suppressed: AtomicU64,
    /// Published clock values' changes written.
    pub changes: AtomicU64,
    /// Forget requests carried out.
    pub forgets: AtomicU64,
    /// Forget requests carried out from received lines (not replayed from a compacted
    /// log): each makes the log due for compaction.
    pub erasures: AtomicU64,
    /// Received lines (not compacted ones) that compaction would reduce: duplicates, dead
    /// letters, suppressed events.
    pub reducible: AtomicU64,
    /// Ingest-to-output latency of accepted events.
    pub latency: Histogram,
    /// What the engine holds (SPEC section 9), as of the end of the last round:
    /// [`Retained`]'s fields in order.
    pub retained: [AtomicU64; 6],
}

impl Counters {
    /// Takes the values of `tally`, the driver's one count (the latency histogram is
    /// observed separately), `lines` last.
    pub fn mirror(&self, tally: &Tally) {
        self.mirror_counts(tally);
        // last, with release: whoever sees `lines` reach a value sees the rest as of then
        self.lines.store(tally.lines, Ordering::Release);
    }

    /// Takes the values of `tally` but `lines`: the engine shows its counts before it
    /// publishes the changes they count, and the lines read only once those are published.
    pub fn mirror_counts(&self, tally: &Tally) {
        let set = |c: &AtomicU64, v: u64| c.store(v, Ordering::Relaxed);
        set(&self.accepted, tally.accepted);
        set(&self.duplicates, tally.duplicates);
        set(&self.dead_letters, tally.dead_letters);
        set(&self.suppressed, tally.suppressed);
        set(&self.changes, tally.changes);
        set(&self.forgets, tally.forgets);
        set(&self.erasures, tally.erasures);
        set(&self.reducible, tally.reducible);
    }
}

/// What the engine has counted: the one tally, kept by the driver. A run's [`Summary`]
/// carries it; a server's [`Counters`] mirror it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Non-blank lines read.
    pub lines: u64,
    /// Accepted events (forget requests included).
    pub accepted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Events dropped for carrying an erased identifier.
    pub suppressed: u64,
    /// Forget requests accepted (received or replayed from a compacted log).
    pub forgets: u64,
    /// Forget requests carried out from received lines (not replayed from a compacted
    /// log): each makes the log due for compaction.
    pub erasures: u64,
    /// Received lines (not compacted ones) that compaction would reduce: duplicates, dead
    /// letters, suppressed events.
    pub reducible: u64,
    /// Changes published (none when only the final snapshot is kept,
    /// [`crate::dataflow::RowsOnly`]).
    pub changes: u64,
}

/// What the engine holds (SPEC section 9: it follows the live state), as of the end of the
/// last round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// Events whose facts are held (within their horizon).
    pub live_events: u64,
    /// Retired events, held as counts per identifier set.
    pub retired_events: u64,
    /// Identifier sets kept (with retired events, or records that can still win).
    pub sets: u64,
    /// Consent and trait records in the dataflow (the greatest per slot and identifier set).
    pub records: u64,
    /// Sequence roles in the dataflow, waiting to retire.
    pub roles: u64,
    /// `messageId`s remembered in the dedup window.
    pub message_ids: u64,
}

/// A latency histogram with fixed buckets, updated without locks.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in microseconds.
    pub bounds_us: &'static [u64],
    /// Observations per bucket (not cumulative); the last is beyond every bound.
    pub counts: Vec<AtomicU64>,
    /// Sum of observations, in microseconds.
    pub sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        // fine around the latency floors (1, 2 and 5 ms), so their quantiles can be read
        // from the buckets
        const BOUNDS: &[u64] = &[
            100, 250, 500, 750, 1_000, 1_500, 2_000, 2_500, 3_000, 4_000, 5_000, 7_500, 10_000,
            25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000,
        ];
        Histogram {
            bounds_us: BOUNDS,
            counts: (0..=BOUNDS.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, micros: u64) {
        let bucket = self.bounds_us.partition_point(|&b| b < micros);
        if let Some(c) = self.counts.get(bucket) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }
}

/// Read-to-publish latency samples, in microseconds, in a histogram of fixed size (a run
/// of any length holds the same few kilobytes): exact below 1,024 us, and within 1/64
/// (1.6%) above, in 64 buckets per power of two. The maximum is kept exactly.
#[derive(Debug, Clone)]
pub struct Latency {
    buckets: Vec<u64>,
    count: u64,
    max: u32,
}

impl Default for Latency {
    fn default() -> Latency {
        Latency {
            buckets: vec![0; EXACT as usize + 22 * SUB as usize],
            count: 0,
            max: 0,
        }
    }
}

/// Samples below this are counted exactly.
const EXACT: u32 = 1024;
/// Buckets per power of two above [`EXACT`].
const SUB: u32 = 64;

/// The bucket of a sample.
fn bucket_of(micros: u32) -> usize {
    if micros < EXACT {
        return micros as usize;
    }
    let power = 31 - micros.leading_zeros(); // 10..=31
    let sub = (micros >> (power - 6)) & (SUB - 1);
    (EXACT + (power - 10) * SUB + sub) as usize
}

/// The least sample of a bucket.
fn low_of(bucket: usize) -> u32 {
    let bucket = bucket as u32;
    if bucket < EXACT {
        return bucket;
    }
    let (power, sub) = ((bucket - EXACT) / SUB + 10, (bucket - EXACT) % SUB);
    (SUB + sub) << (power - 6)
}

impl Latency {
    /// Adds one sample.
    pub(super) fn record(&mut self, micros: u32) {
        if let Some(count) = self.buckets.get_mut(bucket_of(micros)) {
            *count += 1;
        }
        self.count += 1;
        self.max = self.max.max(micros);
    }

    /// The q-quantile (0..=1) in microseconds (within 1.6%; the maximum exactly), if any
    /// sample was taken.
    pub fn quantile(&self, q: f64) -> Option<u32> {
        if self.count == 0 {
            return None;
        }
        let index = ((self.count - 1) as f64 * q).round() as u64;
        if index + 1 >= self.count {
            return Some(self.max);
        }
        let mut seen = 0;
        for (bucket, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen > index {
                return Some(low_of(bucket).min(self.max));
            }
        }
        Some(self.max)
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether no sample was taken.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantiles_are_exact_below_a_millisecond_and_close_above() {
        let mut latency = Latency::default();
        assert_eq!(latency.quantile(0.5), None);
        for micros in 0..1000 {
            latency.record(micros);
        }
        assert_eq!(latency.quantile(0.5), Some(500));
        assert_eq!(latency.quantile(1.0), Some(999));
        for micros in [5_000, 123_456, u32::MAX] {
            let bucket = bucket_of(micros);
            assert!(low_of(bucket) <= micros, "{micros}");
            assert!(f64::from(micros - low_of(bucket)) <= f64::from(micros) / 64.0);
        }
        latency.record(u32::MAX);
        assert_eq!(latency.quantile(1.0), Some(u32::MAX));
        assert_eq!(latency.len(), 1001);
    }
}

/// One input source's share of a run.
#[derive(Debug, Default, Clone)]
pub struct SourceStats {
    /// Its name.
    pub name: String,
    /// Non-blank lines read from it.
    pub lines: u64,
    /// Seconds from its first line to the next source's first line (or the end of input).
    pub seconds: f64,
    /// Changes published meanwhile; `None` when the run publishes none (`run --snapshot`
    /// keeps only the final rows, [`crate::dataflow::RowsOnly`]).
    pub changes: Option<u64>,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// What was counted.
    pub tally: Tally,
    /// Dead letters, by reason (they add up to `tally.dead_letters`).
    pub dead_letters: BTreeMap<DeadReason, u64>,
    /// The first few dead letters, when they were not written to a file.
    pub dead_letter_examples: Vec<DeadLetter>,
    /// Profiles at the final clock.
    pub profiles: i64,
    /// What the engine held at the end.
    pub retained: Retained,
    /// The final engine clock (epoch ms).
    pub clock: Option<u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Read-to-publish latency of accepted events.
    pub latency: Latency,
    /// Read-to-publish latency of forget requests (their last retraction is published then).
    pub forget_latency: Latency,
    /// Per input source, in order: (name, lines, seconds from its first line to the next
    /// source's first line or the end, changes published meanwhile).
    pub sources: Vec<SourceStats>,
    /// The final snapshot, when asked for.
    pub snapshot: Option<Snapshot>,
    /// Every change, when asked for.
    pub changes: Vec<Change>,
    /// What each extra output ([`super::Sinks::publishers`]) wrote, a line each.
    pub outputs: Vec<String>,
}

impl Summary {
    /// Total dead letters.
    pub fn dead_letter_total(&self) -> u64 {
        self.tally.dead_letters
    }

    /// The one-line summary printed on stderr.
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.tally.lines as f64 / secs
        } else {
            0.0
        };
        let latency = match (self.latency.quantile(0.5), self.latency.quantile(0.99)) {
            (Some(p50), Some(p99)) => format!(
                ", latency p50 {:.2} ms p99 {:.2} ms",
                p50 as f64 / 1e3,
                p99 as f64 / 1e3
            ),
            _ => String::new(),
        };
        format!(
            "throughline: {} lines, {} accepted, {} duplicates, {} dead letters, {} suppressed, {} profiles, clock {}, {:.3} s, {:.0} events/s{}",
            self.tally.lines,
            self.tally.accepted,
            self.tally.duplicates,
            self.tally.dead_letters,
            self.tally.suppressed,
            self.profiles,
            self.clock
                .map_or_else(|| "-".to_string(), |c| c.to_string()),
            secs,
            rate,
            latency
        )
    }
}

impl Driver<'_> {
    /// Per-source statistics: opens the entry of `source` when its first line arrives, once
    /// the dataflow has caught up with every line before it (so each source's time is the
    /// time its own lines took).
    pub(super) fn note_source(&mut self, source: u16) -> Result<(), EngineError> {
        // a Kafka topic's partitions (`…#P`) interleave: one entry for the topic
        let mut name = self.source_name_of(source);
        if name.starts_with("kafka://")
            && let Some(at) = name.rfind('#')
        {
            name.truncate(at);
        }
        let fresh = self.summary.sources.last().is_none_or(|s| s.name != name);
        if fresh {
            if !self.summary.sources.is_empty() {
                self.settle()?;
                self.merge_pending()?;
            }
            self.close_source();
            self.source_started = Instant::now();
            self.source_changes_at = self.summary.tally.changes;
            self.summary.sources.push(SourceStats {
                name,
                ..SourceStats::default()
            });
        }
        if let Some(s) = self.summary.sources.last_mut() {
            s.lines += 1;
        }
        Ok(())
    }

    pub(super) fn close_source(&mut self) {
        if let Some(s) = self.summary.sources.last_mut() {
            s.seconds = self.source_started.elapsed().as_secs_f64();
            s.changes = self
                .rows_only
                .is_none()
                .then(|| self.summary.tally.changes - self.source_changes_at);
        }
    }

    /// What the engine holds now: the keepers' counts ([`KeeperCounts::current`]) and the
    /// message ids the gate remembers.
    pub(super) fn retained(&self) -> Retained {
        let counts = self.keeper_counts.current(&self.rounds);
        Retained {
            live_events: counts.live_events,
            retired_events: counts.retired_events,
            sets: counts.sets,
            records: counts.records,
            roles: counts.roles,
            message_ids: self.gate.remembered() as u64,
        }
    }

    /// Keeps a cluster's keepers' counts current ([`KeeperCounts::refresh`]); a keeper's
    /// broken invariant fails the run.
    pub(super) fn count_keepers(&mut self, wait: bool) {
        let started = self.clock().is_some();
        if let Err(why) = self.keeper_counts.refresh(&mut self.rounds, started, wait) {
            self.failure.get_or_insert(why);
        }
    }

    /// Shows the keepers' counts as they last answered ([`Driver::count_keepers`]).
    pub(super) fn mirror_retained(&mut self) {
        self.count_keepers(false);
        if let Some(c) = &self.counters {
            let r = self.retained();
            let values = [
                r.live_events,
                r.retired_events,
                r.sets,
                r.records,
                r.roles,
                r.message_ids,
            ];
            for (gauge, value) in c.retained.iter().zip(values) {
                gauge.store(value, Ordering::Relaxed);
            }
        }
    }

    /// Shows the tally to the server's readers ([`Counters`]) at the end of every round,
    /// once its changes are published (on live input; a replay publishes a clock value once
    /// the clock moves past it): whoever sees `lines` reach a value finds every change of
    /// those lines in the views.
    pub(super) fn mirror(&mut self) {
        if self.counters.is_none() {
            return;
        }
        self.keeper_counts.round_ran();
        self.mirror_retained();
        if let Some(c) = &self.counters {
            c.mirror(&self.summary.tally);
        }
    }

    pub(super) fn progress(&mut self) {
        if self.options.progress && self.last_progress.elapsed() >= Duration::from_secs(2) {
            self.last_progress = Instant::now();
            eprintln!(
                "throughline: progress: {} lines, {} accepted, {} dead letters",
                self.summary.tally.lines,
                self.summary.tally.accepted,
                self.summary.tally.dead_letters
            );
        }
    }

    pub(super) fn finish(&mut self, started: Instant) -> Result<Summary, EngineError> {
        self.count_keepers(true);
        if let Some(why) = self.rounds.feed.keepers().failure().or(self.failure.take()) {
            return Err(EngineError::Internal(why));
        }
        self.close_source();
        let _ = self.dead_letters.flush();
        let mut summary = std::mem::take(&mut self.summary);
        summary.dead_letters = self.dead_letters.counts().clone();
        summary.dead_letter_examples = self.dead_letters.examples().to_vec();
        summary.retained = self.retained();
        summary.clock = self.clock();
        summary.elapsed = started.elapsed();
        let workers = self.options.workers.max(1);
        let rows = self.rows_only.as_ref();
        self.publisher
            .finish(&mut self.rounds, rows, workers, &mut summary)?;
        Ok(summary)
    }
}

/// The keepers' counts as worker 0 knows them (for `/metrics` and the summary): one
/// process reads them in memory ([`crate::dataflow::Keepers::counts`]); a cluster asks its
/// keepers, wherever they run ([`KeeperCounts::refresh`]).
#[derive(Debug, Default)]
pub(super) struct KeeperCounts {
    /// In a cluster, the keepers' counts as they last answered.
    counted: Counts,
    /// The count asked for and not yet answered.
    asked: Option<u64>,
    /// A round ran since the keepers were last asked.
    stale: bool,
}

impl KeeperCounts {
    /// The keepers' counts: read now (one process), or as they last answered (a cluster).
    pub(super) fn current(&self, rounds: &Rounds<'_>) -> Counts {
        let keepers = rounds.feed.keepers();
        match keepers.is_local() {
            true => keepers.counts().unwrap_or_default(),
            false => self.counted,
        }
    }

    /// Whether a cluster's keepers owe their counts: an idle engine steps the dataflow to
    /// take them in ([`Driver::drive`]).
    pub(super) fn owed(&self) -> bool {
        self.asked.is_some()
    }

    /// Notes that a round ran: the counts are to be asked for again.
    pub(super) fn round_ran(&mut self) {
        self.stale = true;
    }

    /// In a cluster, keeps the keepers' counts current without waiting for them: takes the
    /// answers to the last [`Ask::Counts`] once every keeper has answered, and asks again
    /// if a round ran since that question. The question goes out at once, with a step of
    /// its own ([`Rounds::ask_soon`]), and an idle engine steps the dataflow until the
    /// answers are in, so `/metrics` is at most a round behind while input flows and exact
    /// at rest. `wait`: asks and waits for the answers (the run's summary). `started`:
    /// something was sent (before that every keeper holds nothing). A keeper's broken
    /// invariant is the error.
    pub(super) fn refresh(
        &mut self,
        rounds: &mut Rounds<'_>,
        started: bool,
        wait: bool,
    ) -> Result<(), String> {
        if rounds.feed.keepers().is_local() {
            return Ok(());
        }
        let answers = match (self.asked, wait) {
            (_, true) if started => Some(rounds.ask(Ask::Counts)),
            (_, true) => Some(Ok(Vec::new())),
            (Some(ask), false) => rounds.replies(ask),
            (None, false) => None,
        };
        if let Some(answers) = answers {
            let answers = answers?;
            self.asked = None;
            self.counted = Counts::default();
            for answer in answers {
                if let Answer::Counts(counts) = answer {
                    self.counted += counts;
                }
            }
        }
        if self.asked.is_none() && self.stale && !wait {
            self.stale = false;
            if started {
                self.asked = rounds.ask_soon(Ask::Counts);
            }
        }
        Ok(())
    }
}
