//! Sinks: the destinations of the change stream besides the views (a Kafka change topic,
//! Kafka upsert topics, a file the server keeps), and the one place that drives them.
//!
//! # Delivery never runs on the publishing path
//!
//! The engine hands every published group of changes ([`Publish::publish`]) to each sink's
//! queue and goes on: it never waits for a destination. Each sink has a thread of its own
//! that takes what is queued, hands it to its [`Destination`], and keeps track of what the
//! destination has confirmed. A destination that is slow or away (a stopped broker, a full
//! disk) lets its queue grow up to a bound ([`SinkStatus::full`]); past it, the server
//! stops taking input (HTTP ingestion answers 503 with `Retry-After`, a followed Kafka topic
//! is not read), while the views, subscriptions and other sinks go on. `/healthz` then says
//! `degraded: sink … not delivering since …`, and `/metrics` counts each sink's backlog and
//! errors.
//!
//! # Positions: what a sink has confirmed, and what a restart sends again
//!
//! Every group carries its *position*: how many input lines the engine had taken when it
//! published the group (in `serve`, the log line number of the last record it reflects).
//! A sink's *confirmed position* C says that every group up to C is durable at the
//! destination; it is saved in the data directory ([`state::SinkState`]) once the
//! destination confirms, and only then shown to the rest of the server.
//!
//! After a crash the server replays its log. Groups up to C are not sent again. The groups
//! a sink sent after C but did not see confirmed are sent again as *identical records*:
//! before it sends a group, a sink that cannot take back what it sent (Kafka) saves the
//! group's position durably, and the replay ends groups at exactly those positions and
//! nowhere between them ([`crate::engine::input::Boundary`]). A group is a pure function of
//! the input lines and of where it and the group before it end, so the replay regenerates
//! the same records. A file sink needs none of this: it cuts the file back to the length it
//! had at C, so it holds every change exactly once.
//!
//! # Erasure reaches every sink
//!
//! A `forget` retracts the profile's rows; the retractions are changes like any other, in
//! the group that ends at or after the request's log line. Log compaction reduces the
//! events a `forget` erased only once every sink's confirmed position has passed the
//! request's line ([`crate::store::compact::rewrite`]): until then the replay after a crash
//! must still be able to regenerate the retractions the sinks owe. So after an acknowledged
//! `forget`, every change topic gets the profile's `-1`s and every upsert topic a tombstone
//! per key, across any crash and any compaction; the erased values leave the log at the
//! first compaction after the sinks confirmed.

pub mod file;
pub mod kafka;
pub mod postgres;
pub mod state;
pub mod webhook;

use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::engine::output::{Change, Publish};
use state::SinkState;

/// Changes a sink may hold undelivered before the server stops taking input (the default of
/// `serve --sink-backlog`).
pub const DEFAULT_BACKLOG: u64 = 1_000_000;

/// How long a change may wait for its destination's confirmation before the sink counts as
/// not delivering (`/healthz`).
pub const STALL_AFTER: Duration = Duration::from_secs(5);

/// How often a sink saves its confirmed position, at most.
const SAVE_EVERY: Duration = Duration::from_millis(100);

/// The running spec now, with the views defined while running (`None` once unavailable).
pub type SpecNow = Arc<dyn Fn() -> Option<Arc<crate::spec::Spec>> + Send + Sync>;

/// One published group of changes (see [`Publish::publish`]).
#[derive(Debug, Clone)]
pub struct Group {
    /// Input lines taken when it was published.
    pub position: u64,
    /// The engine time it completes (the views are at this time once it is applied).
    pub time: u64,
    /// Consolidated changes, sorted by (time, view, key).
    pub changes: Vec<Change>,
}

/// What a destination has confirmed so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every group up to this position is durable at the destination.
    pub confirmed: u64,
    /// Saved with the position ([`SinkState`]): a file sink's length at that position.
    pub extra: u64,
    /// Records confirmed so far.
    pub delivered: u64,
    /// Records handed to the destination and not yet confirmed.
    pub unconfirmed: u64,
    /// When the oldest of them was handed over.
    pub oldest: Option<Instant>,
    /// The first record the destination refused for good (it is never confirmed).
    pub refused: Option<String>,
    /// Records refused.
    pub refusals: u64,
}

/// A destination, driven by its sink's thread.
pub trait Destination: Send {
    /// Hands over as many of `groups` as it can take now, in order (they follow every
    /// group handed over before), and says how many it took; the sink offers the rest
    /// again. An error means none was taken: the sink retries after a pause.
    fn deliver(&mut self, groups: &[Group]) -> Result<usize, String>;
    /// What is confirmed so far.
    fn progress(&mut self) -> Progress;
    /// Called every pass of the sink's loop (at least every 20 ms): a destination that holds
    /// what it took (a webhook lingering to fill a batch) sends what is due. An error is
    /// counted and shown like a failed [`Destination::deliver`].
    fn poll(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Whether a group sent but not confirmed can be taken back (a file cut back to its
    /// confirmed length) or must be sent again identically (a topic): the latter saves each
    /// group's position before sending it.
    fn sends_again(&self) -> bool;
    /// Waits up to `patience` for everything handed over; a line saying what was written,
    /// or why some of it could not be.
    fn finish(&mut self, patience: Duration) -> Result<String, String>;
}

/// What a sink is doing, for `/healthz`, `/metrics` and the console.
#[derive(Debug)]
pub struct SinkStatus {
    /// The destination's name (an address without its settings, or a path).
    pub name: String,
    /// Changes queued and not yet handed to the destination.
    pub queued: AtomicU64,
    /// Records handed to the destination and not yet confirmed.
    pub unconfirmed: AtomicU64,
    /// Records the destination confirmed.
    pub delivered: AtomicU64,
    /// Failed attempts to deliver (each retried).
    pub errors: AtomicU64,
    /// Records the destination refused for good.
    pub refused: AtomicU64,
    /// The confirmed position, as saved in the data directory (0 when none).
    pub confirmed: AtomicU64,
    /// The most changes it may hold undelivered before input stops.
    pub bound: u64,
    /// Since when (epoch ms) it has not delivered, and why, while it does not.
    stalled: Mutex<Option<(u64, String)>>,
    /// How long (ms) the oldest change the destination has not confirmed has waited since it
    /// was published (0 when it holds none).
    pub lag_ms: AtomicU64,
}

impl SinkStatus {
    fn new(name: String, bound: u64, confirmed: u64) -> SinkStatus {
        SinkStatus {
            name,
            queued: AtomicU64::new(0),
            unconfirmed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            confirmed: AtomicU64::new(confirmed),
            bound,
            stalled: Mutex::new(None),
            lag_ms: AtomicU64::new(0),
        }
    }

    /// Changes and records waiting for the destination.
    pub fn backlog(&self) -> u64 {
        self.queued.load(Ordering::Relaxed) + self.unconfirmed.load(Ordering::Relaxed)
    }

    /// Whether the backlog reached the bound: the server stops taking input until it
    /// drains.
    pub fn full(&self) -> bool {
        self.backlog() >= self.bound
    }

    /// Since when (epoch ms) it has not delivered, and why, while it does not.
    pub fn stalled(&self) -> Option<(u64, String)> {
        self.stalled.lock().ok()?.clone()
    }

    /// `sink NAME not delivering since TIME (WHY; N changes waiting)`, while it is not
    /// delivering.
    pub fn problem(&self) -> Option<String> {
        let (since, why) = self.stalled()?;
        Some(format!(
            "sink {} not delivering since {} ({why}; {} changes waiting)",
            self.name,
            crate::event::timestamp::rfc3339(since, 0),
            self.backlog()
        ))
    }

    fn stall(&self, why: String) {
        if let Ok(mut s) = self.stalled.lock() {
            match s.as_mut() {
                Some((_, reason)) => *reason = why,
                None => {
                    eprintln!("throughline: sink {}: {why}", self.name);
                    *s = Some((crate::engine::wall_clock_ms(), why));
                }
            }
        }
    }

    fn flowing(&self) {
        if let Ok(mut s) = self.stalled.lock()
            && s.take().is_some()
        {
            eprintln!("throughline: sink {}: delivering again", self.name);
        }
    }
}

/// A sink's queue: groups published and not yet taken by its thread.
#[derive(Default)]
struct Queue {
    inner: Mutex<(VecDeque<Group>, bool)>,
    ready: Condvar,
}

impl Queue {
    fn push(&self, group: Group) {
        if let Ok(mut inner) = self.inner.lock() {
            let (groups, _) = &mut *inner;
            // an empty publication only moves the position of an empty one before it
            match groups.back_mut() {
                Some(last) if last.changes.is_empty() && group.changes.is_empty() => {
                    last.position = group.position;
                    last.time = group.time;
                }
                _ => groups.push_back(group),
            }
            self.ready.notify_one();
        }
    }

    fn close(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.1 = true;
            self.ready.notify_one();
        }
    }

    /// Every queued group (waiting up to `wait` for one), and whether the queue is closed.
    fn take(&self, wait: Duration) -> (Vec<Group>, bool) {
        let Ok(mut inner) = self.inner.lock() else {
            return (Vec::new(), true);
        };
        if inner.0.is_empty() && !inner.1 && !wait.is_zero() {
            inner = match self.ready.wait_timeout(inner, wait) {
                Ok((inner, _)) => inner,
                Err(_) => return (Vec::new(), true),
            };
        }
        (inner.0.drain(..).collect(), inner.1)
    }
}

/// What the engine's end of a sink does when the sink holds its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Nothing: the server stops taking input instead ([`SinkStatus::full`]), and the views
    /// go on (`serve`).
    Report,
    /// [`Publish::publish`] waits until the sink has room: a replay (`run`) has no views to
    /// keep live, and its memory stays bounded.
    Wait,
}

/// A sink: the engine's end ([`Publish`]) of a destination driven by a thread of its own.
pub struct Sink {
    queue: Arc<Queue>,
    status: Arc<SinkStatus>,
    thread: Option<JoinHandle<Result<String, String>>>,
    /// Groups up to this position were confirmed before a restart: not sent again.
    skip_upto: u64,
    when_full: WhenFull,
}

impl Sink {
    /// Starts the thread that drives `destination`. With `state` (`serve`), groups up to
    /// its confirmed position are skipped and the position is kept up to date; `bound`
    /// is [`SinkStatus::bound`], and `when_full` what publishing does past it; `patience`,
    /// how long the end waits for the destination.
    pub fn start(
        destination: Box<dyn Destination>,
        name: String,
        state: Option<SinkState>,
        (bound, when_full): (u64, WhenFull),
        patience: Duration,
    ) -> Result<Sink, String> {
        let skip_upto = state.as_ref().map_or(0, |s| s.confirmed);
        let status = Arc::new(SinkStatus::new(name, bound.max(1), skip_upto));
        let queue = Arc::new(Queue::default());
        let thread = {
            let (queue, status) = (Arc::clone(&queue), Arc::clone(&status));
            std::thread::Builder::new()
                .name("throughline-sink".into())
                .spawn(move || {
                    Driver {
                        destination,
                        status,
                        state,
                        recorded: skip_upto,
                        saved_at: Instant::now(),
                    }
                    .run(&queue, patience)
                })
                .map_err(|e| format!("cannot start a sink thread: {e}"))?
        };
        Ok(Sink {
            queue,
            status,
            thread: Some(thread),
            skip_upto,
            when_full,
        })
    }

    /// Its status (shared, live).
    pub fn status(&self) -> Arc<SinkStatus> {
        Arc::clone(&self.status)
    }
}

impl Publish for Sink {
    fn publish(&mut self, changes: &[Change], position: u64, time: u64) -> io::Result<()> {
        if position <= self.skip_upto {
            return Ok(()); // confirmed before the restart
        }
        while self.when_full == WhenFull::Wait
            && self.status.full()
            && self.thread.as_ref().is_some_and(|t| !t.is_finished())
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.status
            .queued
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        self.queue.push(Group {
            position,
            time,
            changes: changes.to_vec(),
        });
        Ok(())
    }

    fn finish(&mut self) -> io::Result<String> {
        self.queue.close();
        let Some(thread) = self.thread.take() else {
            return Ok(String::new());
        };
        match thread.join() {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(why)) => Err(io::Error::other(why)),
            Err(_) => Err(io::Error::other(format!(
                "{}: the sink thread panicked",
                self.status.name
            ))),
        }
    }
}

/// The line numbers at which a replay must end groups so that every sink of `states` gets
/// again exactly the groups it may have sent without seeing them confirmed: each confirmed
/// position, and the position of every group sent after it.
pub fn replay_cuts<'a>(states: impl IntoIterator<Item = &'a SinkState>) -> BTreeSet<u64> {
    let mut cuts = BTreeSet::new();
    for state in states {
        if state.confirmed > 0 {
            cuts.insert(state.confirmed);
        }
        cuts.extend(state.sent.iter().copied());
    }
    cuts
}

/// A sink's thread.
struct Driver {
    destination: Box<dyn Destination>,
    status: Arc<SinkStatus>,
    state: Option<SinkState>,
    /// The last position saved as sent (or confirmed).
    recorded: u64,
    saved_at: Instant,
}

impl Driver {
    fn run(mut self, queue: &Queue, patience: Duration) -> Result<String, String> {
        let mut pending: VecDeque<Group> = VecDeque::new();
        // when each pending group was taken from the queue (within 20 ms of its publication)
        let mut taken_at: VecDeque<Instant> = VecDeque::new();
        let mut pause = Duration::from_millis(50);
        // since when the groups waiting could not be handed over, and why
        let mut blocked: Option<(Instant, Option<String>)> = None;
        loop {
            let wait = if pending.is_empty() {
                Duration::from_millis(20)
            } else {
                Duration::ZERO
            };
            let (more, closed) = queue.take(wait);
            taken_at.extend(more.iter().map(|_| Instant::now()));
            pending.extend(more);
            if !pending.is_empty() {
                match self.hand_over(pending.make_contiguous()) {
                    Ok(taken) if taken > 0 => {
                        let n: u64 = pending
                            .drain(..taken.min(pending.len()))
                            .map(|g| g.changes.len() as u64)
                            .sum();
                        taken_at.drain(..taken.min(taken_at.len()));
                        self.status.queued.fetch_sub(n, Ordering::Relaxed);
                        pause = Duration::from_millis(50);
                        blocked = None;
                    }
                    // the destination is full: it drains as it confirms
                    Ok(_) => {
                        blocked.get_or_insert_with(|| (Instant::now(), None));
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(why) => {
                        self.status.errors.fetch_add(1, Ordering::Relaxed);
                        self.status.stall(why.clone());
                        blocked.get_or_insert_with(|| (Instant::now(), None)).1 = Some(why);
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                }
            }
            let polled = self.destination.poll();
            if let Err(why) = &polled {
                self.status.errors.fetch_add(1, Ordering::Relaxed);
                self.status.stall(why.clone());
            }
            let failing = blocked.as_ref().is_some_and(|b| b.1.is_some()) || polled.is_err();
            self.note_progress(false, failing, taken_at.front().copied());
            if closed && pending.is_empty() {
                break;
            }
            if let Some((since, why)) = &blocked
                && closed
                && since.elapsed() >= patience
            {
                return Err(format!(
                    "{}: {} changes could not be written: {}",
                    self.status.name,
                    self.status.backlog(),
                    why.as_deref()
                        .unwrap_or("the destination did not take them")
                ));
            }
        }
        let result = self.destination.finish(patience);
        self.note_progress(true, false, None);
        result
    }

    /// Saves the positions of the groups about to be sent (for a destination that sends
    /// again), then hands them over.
    fn hand_over(&mut self, groups: &[Group]) -> Result<usize, String> {
        if self.destination.sends_again()
            && let Some(state) = &mut self.state
        {
            let sent: Vec<u64> = groups
                .iter()
                .filter(|g| !g.changes.is_empty() && g.position > self.recorded)
                .map(|g| g.position)
                .collect();
            if !sent.is_empty() {
                state
                    .record_sent(&sent)
                    .map_err(|e| format!("cannot save the sink's positions: {e}"))?;
                self.recorded = sent.last().copied().unwrap_or(self.recorded);
            }
        }
        self.destination.deliver(groups)
    }

    /// Reads the destination's progress into the status, with the lag of the oldest group
    /// not yet handed over (`waiting` since), and saves the confirmed position (at most every
    /// [`SAVE_EVERY`], or `now`).
    fn note_progress(&mut self, now: bool, failing: bool, waiting: Option<Instant>) {
        let progress = self.destination.progress();
        let status = &self.status;
        let oldest = match (waiting, progress.oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let lag = oldest.map_or(0, |t| t.elapsed().as_millis() as u64);
        status.lag_ms.store(lag, Ordering::Relaxed);
        status
            .unconfirmed
            .store(progress.unconfirmed, Ordering::Relaxed);
        status
            .delivered
            .store(progress.delivered, Ordering::Relaxed);
        status.refused.store(progress.refusals, Ordering::Relaxed);
        match (&progress.refused, progress.oldest) {
            (Some(why), _) => status.stall(format!("a record was refused: {why}")),
            // the error being retried says more than that nothing is confirmed
            _ if failing => {}
            (None, Some(oldest)) if oldest.elapsed() >= STALL_AFTER => {
                if status.stalled().is_none() {
                    status.stall("the destination has not confirmed what it was sent".into());
                }
            }
            _ => status.flowing(),
        }
        let saved = status.confirmed.load(Ordering::Relaxed);
        if progress.confirmed <= saved || (!now && self.saved_at.elapsed() < SAVE_EVERY) {
            return;
        }
        self.saved_at = Instant::now();
        if let Some(state) = &mut self.state {
            if let Err(e) = state.confirm(progress.confirmed, progress.extra) {
                status.stall(format!("cannot save the sink's position: {e}"));
                return;
            }
            self.recorded = self.recorded.max(progress.confirmed);
        }
        status
            .confirmed
            .store(progress.confirmed, Ordering::Release);
    }
}

/// Where a `--sink` (or `run -o`) sends the change stream: the one place that tells the
/// forms apart and opens their destinations.
#[derive(Debug, Clone)]
pub enum Target {
    /// A file, appended to (`serve` only).
    File(std::path::PathBuf),
    /// A Kafka change topic, `kafka://HOST:PORT/TOPIC`.
    Kafka(crate::io::kafka::KafkaUrl),
    /// A webhook, `webhook+http://HOST:PORT/PATH?…`.
    Webhook(webhook::WebhookUrl),
    /// PostgreSQL tables, `postgres://USER@HOST/DB?…`.
    Postgres(postgres::PostgresUrl),
}

impl Target {
    /// Parses a `--sink` value.
    pub fn parse(text: &str) -> Result<Target, String> {
        use crate::io::kafka::KafkaUrl;
        if KafkaUrl::is_kafka(text) {
            Ok(Target::Kafka(KafkaUrl::parse(text)?))
        } else if webhook::WebhookUrl::is_webhook(text) {
            Ok(Target::Webhook(webhook::WebhookUrl::parse(text)?))
        } else if postgres::PostgresUrl::is_postgres(text) {
            Ok(Target::Postgres(postgres::PostgresUrl::parse(text)?))
        } else if text.contains("://") {
            Err(format!(
                "{text}: not a destination this version knows (kafka://, webhook+http://, postgres:// or a file)"
            ))
        } else {
            Ok(Target::File(std::path::PathBuf::from(text)))
        }
    }

    /// Its name: an address without secrets or settings, or the file's path.
    pub fn name(&self) -> String {
        match self {
            Target::File(path) => path.display().to_string(),
            Target::Kafka(url) => url.name(),
            Target::Webhook(url) => url.name(),
            Target::Postgres(url) => url.name(),
        }
    }

    /// Opens its destination for `spec`'s views. `kept`: in `serve`, the data directory,
    /// the sink's kind (the prefix of the files it keeps there, `sink-KIND.*`) and its
    /// saved state; `run` keeps nothing (a file is not a `run` destination). `spec_now`: in
    /// `serve`, the spec as views defined while running have made it (a destination with a
    /// table per view makes a new view's table from it).
    pub fn open(
        &self,
        spec: &crate::spec::Spec,
        kept: Option<(&std::path::Path, &str, &mut SinkState)>,
        spec_now: Option<SpecNow>,
    ) -> Result<Box<dyn Destination>, String> {
        Ok(match (self, kept) {
            (Target::File(path), Some((_, _, state))) => {
                Box::new(file::FileDestination::open(path, state)?)
            }
            (Target::File(path), None) => {
                return Err(format!(
                    "{}: a file sink needs a data directory",
                    path.display()
                ));
            }
            // a broker that is away keeps `run` from starting, not a server
            (Target::Kafka(url), Some(_)) => Box::new(kafka::KafkaDestination::open_waiting(
                url,
                kafka::Form::Changes,
            )?),
            (Target::Kafka(url), None) => {
                Box::new(kafka::KafkaDestination::open(url, kafka::Form::Changes)?)
            }
            (Target::Webhook(url), Some((dir, kind, state))) => {
                let dead = dir.join(format!("sink-{kind}.dead.ndjson"));
                let spans = dir.join(format!("sink-{kind}.spans"));
                let spans = Some((spans.as_path(), state.confirmed));
                Box::new(webhook::WebhookDestination::open(url, &dead, spans)?)
            }
            (Target::Webhook(url), None) => {
                let dead = std::path::Path::new("webhook.dead.ndjson");
                Box::new(webhook::WebhookDestination::open(url, dead, None)?)
            }
            (Target::Postgres(url), _) => {
                Box::new(postgres::PostgresDestination::open(url, spec, spec_now)?)
            }
        })
    }
}
