//! Compaction of a running server's log: when it is due, and the run that waits for the
//! engine to catch up with the log before it rewrites it (see [`super::compact`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::compact;
use super::erasures;
use super::log::{CompactStats, Log};
use crate::engine::{self, Counters};
use crate::spec::Spec;

/// How long a compaction waits for the sinks to confirm everything the engine published
/// before it starts (a sink that does not deliver keeps its erasures for later).
const SINK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The longest a background compaction runs at the least CPU priority
/// ([`Compactor::run_in_background`]).
const LOWERED_AT_MOST: std::time::Duration = std::time::Duration::from_secs(30);

/// The least position every sink has confirmed (`u64::MAX` without sinks): see
/// [`super::compact::rewrite`].
pub type Confirmed = Box<dyn Fn() -> u64 + Send + Sync>;

/// Compaction of the running server's log.
pub struct Compactor {
    /// The spec running now (a rebuild's switch-over replaces it).
    spec: Mutex<Arc<Spec>>,
    /// Set while a rebuild reads the log: compaction waits (the rebuild's engine replays
    /// the log as it was when it started, and folds made with the old spec would be wrong
    /// for the new one).
    paused: std::sync::atomic::AtomicBool,
    salt: u128,
    erasures: PathBuf,
    confirmed: Confirmed,
    /// The line of a carried-out `forget` the last compaction kept because the sinks had
    /// not confirmed it yet: compaction is due again once they have.
    deferred: Mutex<Option<u64>>,
    /// ([`Counters::erasures`], [`Counters::reducible`], retired events) as of the last
    /// compaction.
    marks: Mutex<(u64, u64, u64)>,
    /// Due once the server has recovered (start-up compaction).
    at_start: std::sync::atomic::AtomicBool,
    compactions: AtomicU64,
    /// The last compaction since the start: when (epoch ms) and what it did.
    last: Mutex<Option<(u64, CompactStats)>>,
}

impl Compactor {
    /// Compacts with `spec` and the data directory's `salt`, reading the erasure sets from
    /// the file `erasures`, and reducing the events of an erasure only once `confirmed`
    /// has passed it; due once the server has recovered if `at_start` (the start-up
    /// compaction).
    pub fn new(
        spec: Arc<Spec>,
        salt: u128,
        erasures: PathBuf,
        confirmed: Confirmed,
        at_start: bool,
    ) -> Compactor {
        Compactor {
            spec: Mutex::new(spec),
            paused: std::sync::atomic::AtomicBool::new(false),
            salt,
            erasures,
            confirmed,
            deferred: Mutex::new(None),
            marks: Mutex::new((0, 0, 0)),
            at_start: std::sync::atomic::AtomicBool::new(at_start),
            compactions: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// Compacts with `spec` from now on (a rebuild switched to it).
    pub fn set_spec(&self, spec: Arc<Spec>) {
        if let Ok(mut now) = self.spec.lock() {
            *now = spec;
        }
    }

    /// Holds compaction off (`true`) while a rebuild reads the log, or lets it run again.
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
    }

    /// Compacts the log now (`POST /v1/compact`, or in the background).
    ///
    /// It includes every `forget` acknowledged before it started: it first waits until the
    /// engine has processed every record the log had handed it, so each such erasure has
    /// been carried out and its set recorded, then (up to 10 s) until every sink has
    /// confirmed it.
    pub fn run(&self, log: &Log, counters: &Counters) -> Result<CompactStats, String> {
        if self.paused.load(Ordering::Acquire) {
            return Err(
                "a rebuild is reading the log: compaction waits until it has switched over".into(),
            );
        }
        let spec = self
            .spec
            .lock()
            .map(|s| Arc::clone(&s))
            .map_err(|_| "the compactor's spec is unavailable".to_string())?;
        let target = log.forwarded();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while counters.lines.load(Ordering::Acquire) < target {
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "the engine has not caught up with the log after 60 s ({} of {target} records processed); try again",
                    counters.lines.load(Ordering::Acquire)
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // the sinks get a while to confirm what the engine published: an erasure they have
        // not confirmed is kept for a later compaction (see `compact::rewrite`)
        let deadline = std::time::Instant::now() + SINK_WAIT;
        while (self.confirmed)() < target && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // taken before: whatever the engine counts meanwhile makes the next one due
        let marks = marks_of(counters);
        let sets = erasures::load(&self.erasures)
            .map_err(|e| format!("cannot read {}: {e}", self.erasures.display()))?;
        let confirmed = (self.confirmed)();
        let mut deferred = None;
        let stats = log
            .compact(|records| {
                let kept = compact::rewrite(records, &spec, self.salt, &sets, confirmed);
                deferred = kept.deferred;
                Ok((kept.records, kept.reduced))
            })
            .map_err(|e| format!("cannot compact {}: {e}", log.path().display()))?;
        if let Ok(mut d) = self.deferred.lock() {
            *d = deferred;
        }
        if let Ok(mut m) = self.marks.lock() {
            *m = marks;
        }
        self.at_start.store(false, Ordering::Relaxed);
        self.compactions.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last.lock() {
            *last = Some((engine::wall_clock_ms(), stats.clone()));
        }
        Ok(stats)
    }

    /// [`Compactor::run`] on a thread kept out of the serving engine's way for the run
    /// ([`engine::Background`]: on CPUs apart from the serving threads', at `SCHED_IDLE`,
    /// allocating from the background arena), so that rewriting a large log does not delay
    /// the serving engine's events; the log's writer, at normal priority, still does the
    /// swap. A run still going after
    /// 30 s (`LOWERED_AT_MOST`) gets its normal priority back: on a machine that stays busy, a
    /// `forget`'s erased values must still leave the disk.
    pub fn run_in_background(
        &self,
        log: &Log,
        counters: &Counters,
    ) -> Result<CompactStats, String> {
        if !engine::Background::available() {
            return self.run(log, counters);
        }
        let background = engine::Background::default();
        let (finished, watch) = crossbeam_channel::bounded::<()>(0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                if watch.recv_timeout(LOWERED_AT_MOST)
                    == Err(crossbeam_channel::RecvTimeoutError::Timeout)
                {
                    background.restore();
                }
            });
            background.lower();
            let result = self.run(log, counters);
            drop(finished);
            background.restore();
            result
        })
    }

    /// The last compaction since the start: when (epoch ms) and what it did.
    pub fn last(&self) -> Option<(u64, CompactStats)> {
        self.last.lock().ok().and_then(|l| l.clone())
    }

    /// Whether the log needs compacting: a forget was carried out since the last compaction
    /// (its erased values must leave the disk), or at least 10,000 received lines, and a
    /// quarter of all, have been found reducible (duplicates, dead letters, suppressed)
    /// since. Lines replayed from residues count for neither: they are compacted already.
    /// Also once the sinks have confirmed an erasure an earlier compaction had to keep, at
    /// start, and once at least 10,000 events, and half as many as are live, have retired
    /// since (SPEC section 9: they fold into spans, so the log follows the live state).
    pub fn due(&self, counters: &Counters) -> bool {
        if self.paused.load(Ordering::Acquire) {
            return false;
        }
        let Ok(marks) = self.marks.lock().map(|m| *m) else {
            return false;
        };
        if self.at_start.load(Ordering::Relaxed) {
            return true;
        }
        let live = counters.retained[0].load(Ordering::Relaxed);
        let retired = counters.retained[1].load(Ordering::Relaxed);
        let newly = retired.saturating_sub(marks.2);
        if newly >= 10_000 && newly * 2 >= live {
            return true;
        }
        if self
            .deferred()
            .is_some_and(|line| (self.confirmed)() >= line)
        {
            return true;
        }
        let (erasures, reducible, _) = marks_of(counters);
        let dead = reducible.saturating_sub(marks.1);
        erasures > marks.0 || (dead >= 10_000 && dead * 4 >= counters.lines.load(Ordering::Relaxed))
    }

    /// The line of the erasure the last compaction kept until the sinks confirm it.
    pub fn deferred(&self) -> Option<u64> {
        self.deferred.lock().ok().and_then(|d| *d)
    }

    /// Compactions done since the start.
    pub fn count(&self) -> u64 {
        self.compactions.load(Ordering::Relaxed)
    }
}

fn marks_of(c: &Counters) -> (u64, u64, u64) {
    (
        c.erasures.load(Ordering::Relaxed),
        c.reducible.load(Ordering::Relaxed),
        c.retained[1].load(Ordering::Relaxed),
    )
}
