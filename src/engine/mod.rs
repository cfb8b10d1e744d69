//! The engine: runs the dataflow on timely workers and drives it from the input.
//!
//! Worker 0 owns the input side: it receives line batches from the reader thread, parses
//! and admits each line (SPEC section 1), inserts accepted events at the engine clock, steps
//! the dataflow until the inserted times are complete, and writes the changes of every
//! completed clock value, consolidated and sorted (SPEC section 7). Other workers only run
//! their share of the dataflow; their input sessions are closed at once, so progress is
//! governed by worker 0's.
//!
//! Clock values are closed when an accepted event moves the clock past them, or at the end
//! of input. On live input (a pipe or socket rather than a regular file) the engine also
//! publishes the current clock value as it stands at the end of every round (SPEC
//! section 7 allows several consecutive groups per time on live input): a round takes the
//! input that is waiting, for at most `linger`, so a change is published within one round
//! of its input being read, whether or not the clock moves. An event landing at an
//! already published clock value (a late event, or one with the same timestamp) produces
//! a further group of changes at the same time. See `src/docs/semantics.md`.

pub mod input;
pub mod output;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use timely::worker::Worker;

use crate::dataflow::views::{self, Fact};
use crate::dataflow::{
    self, EventFacts, Inputs, Origin, STEP_BITS, SourceNames, Time, clock_of, time,
};
use crate::event::admit::{Admission, Line};
use crate::event::{DeadReason, Event, Ident, Kind};
use crate::explain;
use crate::history::History;
use crate::spec::Spec;
use input::{Batch, LineRef, Message};
use output::{Change, DeadLetter, DeadLetters, LiveViews, Publish, Snapshot, changes_of};

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Timely workers in this process.
    pub workers: usize,
    /// On live input, the longest a round spends taking waiting input before it publishes
    /// the current clock value.
    pub linger: Duration,
    /// Keep the final snapshot.
    pub snapshot: bool,
    /// Keep every change in memory (replays and tests).
    pub collect_changes: bool,
    /// A fixed wall clock (epoch ms) for the far-future rule, instead of the machine's.
    pub wall_clock_ms: Option<u64>,
    /// Print progress to stderr every few seconds.
    pub progress: bool,
    /// This process's place in a cluster of processes (timely's own networking); `None`
    /// for a single process.
    pub cluster: Option<Cluster>,
    /// Event-time or wall-clock time (SPEC section 4).
    pub clock: Clock,
    /// The key of suppression hashes (a server's data directory keeps one); random when
    /// absent.
    pub salt: Option<u128>,
    /// Stop reading at the first accepted event that would move the clock past this value
    /// (`explain --at`: the state at T is that of every line before it, SPEC section 7).
    pub until_ms: Option<u64>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            workers: 1,
            linger: Duration::from_millis(1),
            snapshot: false,
            collect_changes: false,
            wall_clock_ms: None,
            progress: false,
            salt: None,
            clock: Clock::Event,
            cluster: None,
            until_ms: None,
        }
    }
}

/// A cluster of processes running one dataflow (timely's cluster configuration). Process 0
/// reads the input and writes the outputs; every process runs `workers` workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// This process's index.
    pub process: usize,
    /// Every process's `host:port`, in process order.
    pub addresses: Vec<String>,
    /// How long to wait at start for every process to connect before giving up.
    pub connect_timeout: Duration,
}

impl Cluster {
    /// `--processes N --process I --hostfile FILE` (one `host:port` a line, as timely reads
    /// it; without a file, `localhost:2101` and up, as timely does).
    pub fn from_args(
        processes: usize,
        process: usize,
        hostfile: Option<&std::path::Path>,
    ) -> Result<Option<Cluster>, String> {
        if processes <= 1 {
            return Ok(None);
        }
        if process >= processes {
            return Err(format!(
                "--process {process} is not below --processes {processes}"
            ));
        }
        let addresses: Vec<String> = match hostfile {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read hostfile {}: {e}", path.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .take(processes)
                .map(str::to_string)
                .collect(),
            None => (0..processes)
                .map(|i| format!("localhost:{}", 2101 + i))
                .collect(),
        };
        if addresses.len() < processes {
            return Err(format!(
                "the hostfile lists {} addresses for --processes {processes}",
                addresses.len()
            ));
        }
        Ok(Some(Cluster {
            process,
            addresses,
            connect_timeout: Duration::from_secs(60),
        }))
    }
}

/// What the engine clock follows (SPEC section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Clock {
    /// The largest accepted event timestamp.
    #[default]
    Event,
    /// Also the wall clock: decay advances with real time even when no events arrive.
    Wall,
}

/// At most this many waiting batches are ingested before the dataflow catches up.
const MAX_BATCHES_PER_ROUND: usize = 256;

/// In wall-clock mode, how often an idle engine moves its clock to the wall clock.
const WALL_TICK: Duration = Duration::from_millis(250);

/// Where a run's outputs go.
pub struct Sinks {
    /// The change stream (NDJSON), if written.
    pub changes: Option<Box<dyn Write + Send>>,
    /// Dead letters.
    pub dead_letters: DeadLetters,
    /// A live snapshot kept up to date as times are published (for queries while running).
    pub live: Option<Arc<Mutex<LiveViews>>>,
    /// Counters readable while running.
    pub counters: Option<Arc<Counters>>,
    /// Told, durably, the salted hashes each carried-out `forget` erased, with the
    /// request's line number (the server records them for compaction).
    pub erasures: Option<ErasureSink>,
    /// Further outputs of each published group of changes (Kafka topics).
    pub publishers: Vec<Box<dyn Publish>>,
}

/// Receives `(line number of the forget request, salted hashes of its erasure set)`.
pub type ErasureSink = Box<dyn FnMut(u64, &[u128]) -> io::Result<()> + Send>;

impl Sinks {
    /// Change stream and dead letters only.
    pub fn new(changes: Option<Box<dyn Write + Send>>, dead_letters: DeadLetters) -> Sinks {
        Sinks {
            changes,
            dead_letters,
            live: None,
            counters: None,
            erasures: None,
            publishers: Vec::new(),
        }
    }
}

/// Running totals, readable from other threads (e.g. for `/metrics`).
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
        const BOUNDS: &[u64] = &[
            250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
            1_000_000, 2_500_000, 10_000_000,
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

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Reading the input failed.
    #[error("{0}")]
    Input(String),
    /// Writing an output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
    /// The timely runtime failed.
    #[error("dataflow runtime: {0}")]
    Runtime(String),
    /// An engine invariant broke (a bug).
    #[error("{0}")]
    Internal(String),
}

/// Read-to-publish latency samples, in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latency {
    samples: Vec<u32>,
}

impl Latency {
    /// The q-quantile (0..=1) in microseconds, if any sample was taken.
    pub fn quantile(&self, q: f64) -> Option<u32> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted = self.samples.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        Some(sorted[index])
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no sample was taken.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
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
    /// Changes published meanwhile.
    pub changes: u64,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Non-blank lines read.
    pub lines: u64,
    /// Accepted events (forget requests included).
    pub accepted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Dead letters, by reason.
    pub dead_letters: BTreeMap<DeadReason, u64>,
    /// The first few dead letters, when they were not written to a file.
    pub dead_letter_examples: Vec<DeadLetter>,
    /// Events dropped for carrying an erased identifier.
    pub suppressed: u64,
    /// Forget requests accepted.
    pub forgets: u64,
    /// Profiles at the final clock.
    pub profiles: i64,
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
    /// What each extra output ([`Sinks::publishers`]) wrote, a line each.
    pub outputs: Vec<String>,
}

impl Summary {
    /// Total dead letters.
    pub fn dead_letter_total(&self) -> u64 {
        self.dead_letters.values().sum()
    }

    /// The one-line summary printed on stderr.
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.lines as f64 / secs
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
            self.lines,
            self.accepted,
            self.duplicates,
            self.dead_letter_total(),
            self.suppressed,
            self.profiles,
            self.clock
                .map_or_else(|| "-".to_string(), |c| c.to_string()),
            secs,
            rate,
            latency
        )
    }
}

/// Runs the dataflow of `spec` over the batches arriving on `rx` until [`Message::End`] or
/// until every sender is dropped. `source_names` name the batches' sources in dead letters;
/// `live` enables publishing after a pause (see the module documentation).
pub fn run_channel(
    spec: Arc<Spec>,
    rx: Receiver<Message>,
    source_names: SourceNames,
    live: bool,
    sinks: Sinks,
    options: Options,
) -> Result<Summary, EngineError> {
    let started = Instant::now();
    let workers = options.workers.max(1);
    let handoff = Arc::new(Mutex::new(Some((rx, sinks))));
    let leads = options.cluster.as_ref().is_none_or(|c| c.process == 0);
    let config = match &options.cluster {
        Some(c) => timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: workers,
                process: c.process,
                addresses: c.addresses.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        },
        None if workers == 1 => timely::Config::thread(),
        None => timely::Config::process(workers),
    };

    let connected = Arc::new(AtomicBool::new(false));
    if let Some(c) = &options.cluster {
        watch_connection(c, Arc::clone(&connected));
    }
    let guards = timely::execute(config, move |worker| {
        let (inputs, outputs) = dataflow::build(worker, &spec);
        if worker.index() != 0 {
            // a follower: timely steps it until the dataflow completes, which happens once
            // worker 0 (process 0) closes its inputs, in this process or another
            drop(inputs);
            return None;
        }
        let taken = handoff.lock().ok().and_then(|mut slot| slot.take());
        let (rx, sinks) = match taken {
            Some(parts) => parts,
            None => {
                return Some(Err(EngineError::Internal(
                    "internal error: worker 0 started twice".into(),
                )));
            }
        };
        let mut driver = Driver::new(
            worker,
            &spec,
            inputs,
            outputs,
            sinks,
            options.clone(),
            source_names.clone(),
        );
        Some(
            driver
                .drive(&rx, live)
                .and_then(|()| driver.finish(started)),
        )
    })
    .map_err(EngineError::Runtime)?;
    connected.store(true, Ordering::SeqCst);

    let mut result = None;
    for outcome in guards.join() {
        match outcome {
            Ok(Some(r)) => result = Some(r),
            Ok(None) => {}
            Err(e) => return Err(EngineError::Runtime(e)),
        }
    }
    if !leads {
        // another process of a cluster: its workers computed their share; process 0 has
        // the input and the outputs
        return Ok(Summary {
            elapsed: started.elapsed(),
            ..Summary::default()
        });
    }
    result.unwrap_or_else(|| {
        Err(EngineError::Internal(
            "internal error: worker 0 returned nothing".into(),
        ))
    })
}

/// Timely waits for every process of a cluster to connect, retrying forever; this gives up
/// after the cluster's connect timeout with one error line (exit 1) instead.
fn watch_connection(cluster: &Cluster, connected: Arc<AtomicBool>) {
    let (timeout, addresses) = (cluster.connect_timeout, cluster.addresses.join(", "));
    std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if connected.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "throughline: error: the cluster did not form within {} s: is every process ({addresses}) started, with the same hostfile?",
            timeout.as_secs()
        );
        std::process::exit(1);
    });
}

/// Worker 0's input side and output writer.
struct Driver<'w> {
    worker: &'w mut Worker,
    spec: &'w Spec,
    inputs: Inputs,
    outputs: dataflow::Outputs,
    gate: Admission,
    sinks: Sinks,
    options: Options,
    source_names: SourceNames,
    /// Next event sequence number.
    next_seq: u64,
    /// Last lookup (query) id used.
    next_query: u64,
    /// Changes published so far, and when the current source began (for [`SourceStats`]).
    changes_total: u64,
    source_changes_at: u64,
    source_started: Instant,
    /// Current step within the clock's millisecond.
    step: u32,
    /// Something was inserted at the current time and not yet published.
    dirty: bool,
    /// (clock ms, read instant) of accepted events not yet published.
    pending: VecDeque<(u64, Instant, bool)>,
    summary: Summary,
    snapshot: Option<Snapshot>,
    /// Facts of live events, for erasure and explanations.
    history: History,
    /// Reading stopped at [`Options::until_ms`]: later lines are ignored.
    stopped: bool,
    last_progress: Instant,
}

impl<'w> Driver<'w> {
    fn new(
        worker: &'w mut Worker,
        spec: &'w Spec,
        inputs: Inputs,
        outputs: dataflow::Outputs,
        sinks: Sinks,
        options: Options,
        source_names: SourceNames,
    ) -> Driver<'w> {
        let salt = options.salt.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                ^ u128::from(std::process::id())
        });
        Driver {
            worker,
            spec,
            inputs,
            outputs,
            gate: Admission::new(spec.intent.max_future_ms, salt)
                .with_wall_clock(options.clock == Clock::Wall),
            sinks,
            snapshot: options.snapshot.then(Snapshot::default),
            options,
            source_names,
            next_seq: 0,
            next_query: 0,
            changes_total: 0,
            source_changes_at: 0,
            source_started: Instant::now(),
            step: 0,
            dirty: false,
            pending: VecDeque::new(),
            summary: Summary::default(),
            history: History::default(),
            stopped: false,
            last_progress: Instant::now(),
        }
    }

    /// Consumes the reader's messages until the end of input.
    ///
    /// Open loop: each round takes every batch that is waiting (up to
    /// [`MAX_BATCHES_PER_ROUND`]), inserts it, and steps the dataflow once for all of them;
    /// the reader never waits for the dataflow except through its bounded channel. On live
    /// input a round stops taking waiting input once it has spent `linger` taking it, and
    /// ends by publishing the current clock value as it stands, so late events, which never
    /// move the clock, are published within a round instead of after a silence.
    fn drive(&mut self, rx: &Receiver<Message>, live: bool) -> Result<(), EngineError> {
        let wall = self.options.clock == Clock::Wall;
        let mut next_tick = Instant::now();
        let mut held: Option<Message> = None;
        loop {
            // deadlines rather than timeouts, so a stream of lookups delays neither
            let now = Instant::now();
            if wall && now >= next_tick {
                self.tick()?;
                next_tick = now + WALL_TICK;
            }
            let message = match (held.take(), wall.then_some(next_tick)) {
                (Some(message), _) => message,
                (None, Some(deadline)) => match rx.recv_deadline(deadline) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => Message::End,
                },
                (None, None) => rx.recv().unwrap_or(Message::End),
            };
            match message {
                Message::Batch(batch) => {
                    // Batches already waiting join this round: one dataflow round for many
                    // small batches instead of one each. The bound is the time spent taking
                    // them, not their age: under a backlog every waiting batch is old, and
                    // rounds of one batch each would never catch up.
                    let taking = Instant::now();
                    self.ingest(&batch)?;
                    for _ in 0..MAX_BATCHES_PER_ROUND {
                        if live && taking.elapsed() >= self.options.linger {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(Message::Batch(more)) => self.ingest(&more)?,
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if live && self.dirty {
                        self.publish_current()?;
                    } else {
                        self.settle()?;
                    }
                    self.progress();
                }
                Message::Lookup(ident, reply) => {
                    let _ = reply.send(self.lookup(&ident));
                }
                Message::Explain(ident, at, reply) => {
                    let started = Instant::now();
                    let outcome = self.explain(&ident, at);
                    let _ = reply.send((outcome, started.elapsed()));
                }
                Message::Failed(why) => {
                    self.publish_current()?;
                    return Err(EngineError::Input(why));
                }
                Message::End => {
                    self.publish_current()?;
                    return Ok(());
                }
            }
        }
    }

    /// Per-source statistics: opens the entry of `source` when its first line arrives, once
    /// the dataflow has caught up with every line before it (so each source's time is the
    /// time its own lines took).
    fn note_source(&mut self, source: u16) -> Result<(), EngineError> {
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
            }
            self.close_source();
            self.source_started = Instant::now();
            self.source_changes_at = self.changes_total;
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

    fn close_source(&mut self) {
        if let Some(s) = self.summary.sources.last_mut() {
            s.seconds = self.source_started.elapsed().as_secs_f64();
            s.changes = self.changes_total - self.source_changes_at;
        }
    }

    /// Wall-clock mode: moves the clock to the wall clock and publishes what that completes
    /// (decay steps that fell due).
    fn tick(&mut self) -> Result<(), EngineError> {
        let wall = self.options.wall_clock_ms.unwrap_or_else(wall_clock_ms);
        if let Some(now) = self.gate.tick(wall) {
            self.advance_clock(now);
            self.settle()?;
        }
        Ok(())
    }

    /// Parses, admits and inserts every line of a batch.
    fn ingest(&mut self, batch: &Batch) -> Result<(), EngineError> {
        let wall = batch
            .wall_ms
            .or(self.options.wall_clock_ms)
            .unwrap_or_else(wall_clock_ms);
        let before = (
            self.summary.lines,
            self.summary.accepted,
            self.summary.duplicates,
            self.summary.suppressed,
            self.summary.forgets,
        );
        let dead_before = self.sinks.dead_letters.total();
        let mut reducible = 0;
        for line in &batch.lines {
            if self.stopped {
                break;
            }
            self.summary.lines += 1;
            self.note_source(line.source)?;
            if let Some(length) = line.too_long {
                self.dead(line, DeadReason::LineTooLong, format!("{length} bytes"))?;
                reducible += 1;
                continue;
            }
            // a compacted line is counted as the line it stands for, but is not reducible
            // again: it is compacted already
            let fresh = u64::from(!line.residue);
            let classified = self.gate.classify(
                self.spec,
                batch.bytes(line),
                line.residue,
                batch.wall_ms,
                wall,
            );
            match classified {
                Line::Accepted { now, .. } if self.options.until_ms.is_some_and(|u| now > u) => {
                    // `--at T`: this event moves the clock past T; nothing from here on
                    // belongs to the state at T
                    self.stopped = true;
                    break;
                }
                Line::Accepted { event, now } => {
                    self.summary.accepted += 1;
                    self.advance_clock(now);
                    self.pending
                        .push_back((now, batch.read_at, event.kind == Kind::Forget));
                    if event.kind == Kind::Forget {
                        self.forget(&event, now, line.number)?;
                    } else {
                        self.insert(&event, now, line);
                    }
                }
                Line::Replayed { now, erasure } => {
                    self.summary.accepted += 1;
                    self.summary.forgets += u64::from(erasure.is_some());
                    self.advance_clock(now);
                }
                Line::Duplicate => {
                    self.summary.duplicates += 1;
                    reducible += fresh;
                }
                Line::Dead { reason, detail } => {
                    self.dead(line, reason, detail)?;
                    reducible += fresh;
                }
                Line::Suppressed => {
                    self.summary.suppressed += 1;
                    reducible += fresh;
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
        self.count(|c| &c.lines, self.summary.lines - before.0);
        self.count(|c| &c.accepted, self.summary.accepted - before.1);
        self.count(|c| &c.duplicates, self.summary.duplicates - before.2);
        self.count(|c| &c.suppressed, self.summary.suppressed - before.3);
        self.count(|c| &c.forgets, self.summary.forgets - before.4);
        self.count(|c| &c.reducible, reducible);
        self.count(
            |c| &c.dead_letters,
            self.sinks.dead_letters.total() - dead_before,
        );
        Ok(())
    }

    /// Erasure (SPEC section 6): S is the request's identifiers and every identifier of the
    /// profiles they belong to now (everything processed so far, this clock value included);
    /// every live event carrying one is retracted as if it had never arrived, and S is
    /// suppressed (as salted hashes) so later events carrying one are dropped.
    fn forget(&mut self, request: &Event, now: u64, line: u64) -> Result<(), EngineError> {
        self.summary.forgets += 1;
        self.count(|c| &c.erasures, 1);
        self.next_query += 1;
        let query = self.next_query;
        for id in &request.idents {
            self.inputs.query(id.clone(), query, 1);
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
            self.inputs.query(id.clone(), query, -1);
        }
        let mut hashes: Vec<u128> = erased.iter().map(|id| self.gate.suppress(id)).collect();
        hashes.sort_unstable();
        if let Some(record) = &mut self.sinks.erasures {
            record(line, &hashes)?;
        }
        for facts in self.history.take_carrying(&erased) {
            self.inputs.update(&facts, -1);
        }
        self.dirty = true;
        Ok(())
    }

    /// Inserts an accepted event at clock `now`, and keeps it in the history.
    fn insert(&mut self, event: &Event, now: u64, line: &LineRef) {
        let (source, cited_line) = line.cited();
        let origin = Origin {
            source,
            line: cited_line,
        };
        let mut facts = EventFacts::of(self.next_seq, event, self.spec, now, origin);
        self.inputs.intern(&mut facts.idents);
        self.next_seq += 1;
        self.inputs.update(&facts, 1);
        self.history.push(facts);
        self.dirty = true;
    }

    /// Completes everything inserted so far at clock `now` (a new step within it).
    fn barrier(&mut self, now: u64) -> Result<(), EngineError> {
        if self.step + 1 >= (1 << STEP_BITS) {
            return Err(EngineError::Input(format!(
                "more than {} forget requests or pauses at one clock value ({now})",
                (1u32 << STEP_BITS) - 1
            )));
        }
        self.step += 1;
        self.inputs.advance_to(time(now, self.step));
        self.complete(time(now, self.step));
        Ok(())
    }

    /// The (profile, fact) answers to lookup `query` (they must be complete).
    fn answers(&mut self, query: u64) -> Vec<(Ident, Fact)> {
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
    fn lookup(&mut self, ident: &Ident) -> Result<Option<serde_json::Value>, String> {
        let Some(now) = self.clock() else {
            return Ok(None);
        };
        if self.step + 1 >= (1 << STEP_BITS) {
            return Err("too many lookups at one clock value; retry shortly".into());
        }
        self.next_query += 1;
        let query = self.next_query;
        self.inputs.query(ident.clone(), query, 1);
        self.barrier(now).map_err(|e| e.to_string())?;
        let answers = self.answers(query);
        self.inputs.query(ident.clone(), query, -1);
        let Some(profile) = answers.first().map(|(p, _)| p.clone()) else {
            return Ok(None);
        };
        let facts: Vec<Fact> = answers.into_iter().map(|(_, f)| f).collect();
        Ok(Some(views::profile_json(self.spec, &profile, &facts)))
    }

    /// The explanation of the profile of `ident` at clock `at` (default: now), from the
    /// live events that arrived by then. An erased identifier is only reported suppressed.
    fn explain(&self, ident: &Ident, at: Option<u64>) -> explain::Outcome {
        let identifier = ident.key(&self.spec.identity);
        if self.gate.is_suppressed(ident) {
            return explain::Outcome::Suppressed { identifier };
        }
        match at.or(self.options.until_ms).or(self.clock()) {
            Some(at) => explain::explain(&self.history, self.spec, &self.source_names, ident, at),
            None => explain::Outcome::NotFound { identifier },
        }
    }

    fn dead(
        &mut self,
        line: &LineRef,
        reason: DeadReason,
        detail: String,
    ) -> Result<(), EngineError> {
        let source = self.source_name(line);
        self.sinks.dead_letters.push(DeadLetter {
            source,
            line: line.cited().1,
            reason,
            detail,
        })?;
        Ok(())
    }

    /// The name of the source a line is cited under (see [`LineRef::cited`]).
    fn source_name(&self, line: &LineRef) -> String {
        self.source_name_of(line.cited().0)
    }

    fn source_name_of(&self, source: u16) -> String {
        self.source_names.name(source)
    }

    fn clock(&self) -> Option<u64> {
        self.gate.clock()
    }

    /// Moves the inputs to the (possibly new) clock value `now`.
    fn advance_clock(&mut self, now: u64) {
        if time(now, 0) > self.inputs.time() {
            self.inputs.advance_to(time(now, 0));
            self.step = 0;
        }
    }

    /// Steps the dataflow until every time before `until` is complete.
    fn complete(&mut self, until: Time) {
        self.inputs.flush();
        while self.outputs.probe.less_than(&until) {
            self.worker.step();
        }
    }

    /// After a batch: completes and publishes every clock value before the current one.
    fn settle(&mut self) -> Result<(), EngineError> {
        let Some(clock) = self.clock() else {
            return Ok(());
        };
        self.complete(self.inputs.time());
        if clock > 0 {
            self.emit(clock - 1)?;
        }
        Ok(())
    }

    /// Completes and publishes the current clock value as it stands (end of input, or a
    /// pause on live input).
    fn publish_current(&mut self) -> Result<(), EngineError> {
        let Some(clock) = self.clock() else {
            return Ok(());
        };
        if self.step + 1 >= (1 << STEP_BITS) {
            return Ok(()); // published when the clock moves on
        }
        self.barrier(clock)?;
        self.emit(clock)?;
        self.dirty = false;
        Ok(())
    }

    /// Writes the captured changes at clock values `<= upto_ms`, consolidated per time and
    /// sorted by (time, view, key) (SPEC section 7). Their times must be complete.
    fn emit(&mut self, upto_ms: u64) -> Result<(), EngineError> {
        let mut ready: BTreeMap<(u64, String, String, String), isize> = BTreeMap::new();
        {
            let mut captured = self.outputs.changes.borrow_mut();
            let spec = self.spec;
            captured.retain(|((view, key, row), t, diff)| {
                if clock_of(*t) > upto_ms {
                    return true;
                }
                let name = spec
                    .views
                    .get(*view as usize)
                    .map_or("?", |v| v.name.as_str());
                *ready
                    .entry((
                        clock_of(*t),
                        name.to_string(),
                        key.key(&spec.identity),
                        row.clone(),
                    ))
                    .or_insert(0) += diff;
                false
            });
        }
        let mut changes = changes_of(ready);
        changes.sort();
        for change in &changes {
            if change.diff.abs() != 1 {
                return Err(EngineError::Internal(format!(
                    "internal error: change with diff {} for {} in view {}",
                    change.diff, change.key, change.view
                )));
            }
            if let Some(w) = &mut self.sinks.changes {
                writeln!(w, "{}", change.json())?;
            }
            if let Some(s) = &mut self.snapshot {
                s.apply(change);
            }
        }
        if let Some(w) = &mut self.sinks.changes {
            w.flush()?;
        }
        // Bookkeeping first: whoever sees a change (a subscriber, a snapshot
        // reader) finds it already counted in `/metrics`.
        self.count(|c| &c.changes, changes.len() as u64);
        self.changes_total += changes.len() as u64;
        let now = Instant::now();
        while let Some(&(ms, read_at, forget)) = self.pending.front() {
            if ms > upto_ms {
                break;
            }
            self.pending.pop_front();
            let micros = now
                .duration_since(read_at)
                .as_micros()
                .min(u32::MAX as u128) as u32;
            self.summary.latency.samples.push(micros);
            if forget {
                self.summary.forget_latency.samples.push(micros);
            }
            if let Some(c) = &self.sinks.counters {
                c.latency.observe(u64::from(micros));
            }
        }
        if !changes.is_empty() {
            for publisher in &mut self.sinks.publishers {
                publisher.publish(&changes)?;
            }
        }
        if let Some(live) = &self.sinks.live
            && !changes.is_empty()
            && let Ok(mut views) = live.lock()
        {
            views.apply(&changes);
        }
        if self.options.collect_changes {
            self.summary.changes.extend(changes);
        }
        Ok(())
    }

    fn count(&self, which: impl Fn(&Counters) -> &AtomicU64, n: u64) {
        if let Some(c) = &self.sinks.counters {
            which(c).fetch_add(n, Ordering::Relaxed);
        }
    }

    fn progress(&mut self) {
        if self.options.progress && self.last_progress.elapsed() >= Duration::from_secs(2) {
            self.last_progress = Instant::now();
            eprintln!(
                "throughline: progress: {} lines, {} accepted, {} dead letters",
                self.summary.lines,
                self.summary.accepted,
                self.sinks.dead_letters.total()
            );
        }
    }

    fn finish(&mut self, started: Instant) -> Result<Summary, EngineError> {
        self.close_source();
        let _ = self.sinks.dead_letters.flush();
        for publisher in &mut self.sinks.publishers {
            let wrote = publisher.finish()?;
            self.summary.outputs.push(wrote);
        }
        let mut summary = std::mem::take(&mut self.summary);
        summary.dead_letters = self.sinks.dead_letters.counts().clone();
        summary.dead_letter_examples = self.sinks.dead_letters.examples().to_vec();
        summary.profiles = *self.outputs.profiles.borrow();
        summary.clock = self.clock();
        summary.elapsed = started.elapsed();
        summary.snapshot = self.snapshot.take();
        Ok(summary)
    }
}

/// The machine's wall clock in epoch ms.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This process's peak resident memory (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Whether progress lines make sense (stderr is a terminal).
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}
