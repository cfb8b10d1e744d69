//! The engine: runs the dataflow on timely workers and drives it from the input.
//!
//! Worker 0 owns what must be sequential: it receives line batches from the reader thread,
//! already parsed by a thread of their own ([`input::Batch::parse_ahead`]), admits each
//! line (SPEC section 1: the order, the clock, the dedup check, suppression), sends each
//! accepted event at the engine clock to the worker that keeps its identifier set
//! ([`crate::dataflow::keeper`]: every worker keeps a share of the events and does their
//! per-event work), steps the dataflow until the inserted times are complete, and writes
//! the changes of every completed clock value, consolidated and sorted (SPEC section 7):
//! each worker renders and sorts the row changes of the profiles it holds, and worker 0
//! merges them. The loop's stages, each with its own state, are listed on `Driver`.
//! Other workers' input handles are closed at once, so progress is governed by worker 0's.
//! When nothing but the final snapshot is wanted (`run --snapshot`), no change travels to
//! worker 0: every worker hands over the rows its profiles hold at the end
//! ([`crate::dataflow::RowsOnly`]; in a cluster, on the row stream, every process having
//! taken process 0's choice before building the dataflow).
//!
//! Clock values are closed when an accepted event moves the clock past them, or at the end
//! of input. On live input (a pipe or socket rather than a regular file) the engine also
//! publishes the current clock value as it stands at the end of every round (SPEC
//! section 7 allows several consecutive groups per time on live input): a round takes the
//! input that is waiting, for at most `linger`, so a change is published within one round
//! of its input being read, whether or not the clock moves. An event landing at an
//! already published clock value (a late event, or one with the same timestamp) produces
//! a further group of changes at the same time. See `src/docs/semantics.md`.

mod admission;
mod background;
pub mod erasure;
pub mod input;
pub mod output;
mod publish;
mod rounds;
mod stats;
mod switch;
mod views;

use background::Crew;
pub use background::{Background, drop_in_background, own_arena, serving_cpus};
pub use stats::{Counters, Histogram, Latency, Retained, SourceStats, Summary, Tally};
pub use switch::{Handover, Prepared, Preparing, Switched};

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use timely::worker::Worker;

pub use crate::dataflow::retention::Retention;
use crate::dataflow::{self, Feed, Keepers, RowsOnly, SourceNames, clock_of};
use crate::event::admit::Admission;
use crate::spec::Spec;
use input::{Boundary, LineRef, Message};
use output::{DeadLetters, LiveViews, Publish};

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
    /// Retire what can no longer change any output (SPEC section 9), or keep everything
    /// (the reference retention is tested against).
    pub retention: Retention,
    /// Run every thread at the lowest CPU priority until [`Background::restore`]: a
    /// rebuild's engine beside the one serving, which then keeps its latency.
    pub background: Option<Arc<Background>>,
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
            retention: Retention::Retire,
            background: None,
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

/// At most this many batches are ingested before the dataflow catches up. A round holds
/// its updates in the dataflow until it completes, so larger rounds cost less per event
/// (fewer, larger batches to merge) but hold more at once. A replay's rounds are
/// pipelined, two in flight ([`Driver::settle`]), and a replay waits for a full round:
/// 16 batches (about 16k lines) hold what one round of 32 held before, at the same CPU (see
/// `tests/bench/performance.md`, steps 20 and 31).
const MAX_BATCHES_PER_ROUND: usize = 16;
/// In a cluster of processes a round also waits for progress messages over the network, so
/// its rounds are twice as large: 3–6% less time on two processes of one host, for 7% more
/// memory (`tests/bench/performance.md`, issue 31).
const MAX_BATCHES_PER_CLUSTER_ROUND: usize = 2 * MAX_BATCHES_PER_ROUND;

/// Batches parsed ahead of worker 0 and waiting for it, at most (see [`parse_ahead`]): half
/// a round, so that a round's admission seldom waits for the parser.
const PARSED_AHEAD: usize = 8;

/// Updates an arrangement merges per scheduling while it merges what a source left pending.
const MERGE_EFFORT: usize = 100_000;
/// The worker configuration entry holding the flag that lets arrangements merge.
const MERGING: &str = "throughline/merging";
/// The longest the merges between two sources may take: a bound, should some operator
/// keep itself scheduled forever.
const MERGE_LIMIT: Duration = Duration::from_secs(60);

/// The longest the workers may take to hand over their rows once the inputs are closed
/// (see [`RowsOnly`]): a bound, should a worker never see its input end.
const HANDOVER_LIMIT: Duration = Duration::from_secs(60);

/// How often an idle engine steps the dataflow while a cluster's keepers owe their counts.
const COUNT_POLL: Duration = Duration::from_millis(5);

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

/// Parses the batches on `rx` ahead of the dataflow worker
/// ([`input::Batch::parse_ahead`]), on a thread of its own, and passes every message on in
/// order. Parsing is most of admission's
/// cost and needs nothing from the lines before, so worker 0, which alone admits, only
/// applies the stateful rules; the other messages pass through unchanged.
fn parse_ahead(
    rx: Receiver<Message>,
    spec: Arc<Spec>,
    background: Option<Arc<Background>>,
) -> Result<Receiver<Message>, EngineError> {
    let (tx, parsed) = crossbeam_channel::bounded(PARSED_AHEAD);
    std::thread::Builder::new()
        .name("throughline-parse".into())
        .spawn(move || {
            if let Some(background) = background {
                background.lower();
            }
            for mut message in rx {
                if let Message::Batch(batch) = &mut message {
                    // a defect here must stop the run, not end it as if the input had ended
                    let parse = std::panic::AssertUnwindSafe(|| batch.parse_ahead(&spec));
                    if std::panic::catch_unwind(parse).is_err() {
                        let why = "internal error: parsing a batch of lines panicked";
                        let _ = tx.send(Message::Failed(why.into()));
                        break;
                    }
                }
                if tx.send(message).is_err() {
                    break; // the engine stopped
                }
            }
        })
        .map_err(|e| EngineError::Internal(format!("cannot start the parsing thread: {e}")))?;
    Ok(parsed)
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
    let rx = parse_ahead(rx, Arc::clone(&spec), options.background.clone())?;
    // only the final rows are wanted: every worker hands over its own (see `RowsOnly`);
    // in a cluster, process 0 decides for every process (see `agree`)
    let rows_only = options.snapshot
        && !options.collect_changes
        && sinks.changes.is_none()
        && sinks.live.is_none()
        && sinks.publishers.is_empty();
    let handed = RowsOnly {
        streamed: options.cluster.is_some(),
        ..RowsOnly::default()
    };
    let retention = options.retention;
    let handoff = Arc::new(Mutex::new(Some((rx, sinks))));
    let leads = options.cluster.as_ref().is_none_or(|c| c.process == 0);
    let mut config = match &options.cluster {
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
    // arrangements merge their pending batches while `merging` is set (see `merge_pending`)
    let merging = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&merging);
    config.worker.set(MERGING.to_string(), merging);
    config
        .worker
        .set::<differential_dataflow::trace::ExertionLogic>(
            "differential/default_exert_logic".to_string(),
            Arc::new(move |batches: &[(usize, usize, usize)]| {
                let pending = batches.iter().any(|(_, count, _)| *count > 1)
                    || batches.iter().filter(|(_, _, len)| *len > 0).count() > 1;
                (pending && flag.load(Ordering::Relaxed)).then_some(MERGE_EFFORT)
            }),
        );

    let connected = Arc::new(AtomicBool::new(false));
    if let Some(c) = &options.cluster {
        watch_connection(c, Arc::clone(&connected));
    }
    // every worker of every process keeps a share of the events (`dataflow::keeper`)
    let processes = options.cluster.as_ref().map_or(1, |c| c.addresses.len());
    let keepers = Keepers::new(workers * processes, processes == 1);
    let clustered = options.cluster.is_some();
    let background = options.background.clone();
    // lowered together once a switch-over has taken its outputs (`Driver::release`)
    let crew = Arc::new(Crew::default());
    let retiring = Arc::clone(&crew);
    let guards = timely::execute(config, move |worker| {
        if let Some(background) = &background {
            background.lower();
        }
        crew.join();
        let rows_only = match clustered {
            true => match agree(worker, rows_only, spec.fingerprint()) {
                Ok(rows_only) => rows_only,
                // a process that leaves its cluster cannot return: its network threads wait
                // for peers that wait for it, so it fails the way a lost process does (the
                // CLI's panic hook reports `cluster_error` as one line and exits 1)
                Err(why) => panic!("{why}"),
            },
            false => rows_only,
        };
        let rows_only = rows_only.then(|| handed.clone());
        let (feed, outputs) =
            dataflow::build(worker, &spec, rows_only.clone(), retention, &keepers);
        if worker.index() != 0 {
            // a follower: timely steps it until the dataflow completes, which happens once
            // worker 0 (process 0) closes its inputs, in this process or another
            drop(feed);
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
            (feed, outputs),
            sinks,
            options.clone(),
            source_names.clone(),
        );
        driver.rows_only = rows_only.clone();
        driver.crew = Some(Arc::clone(&crew));
        Some(
            driver
                .drive(&rx, live)
                .and_then(|()| driver.finish(started)),
        )
    })
    .map_err(EngineError::Runtime)?;
    connected.store(true, Ordering::SeqCst);

    let mut result = None;
    let outcomes = guards.join();
    // the workers have ended: what a switch-over lowered is given back
    retiring.restore();
    for outcome in outcomes {
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

/// Why this process cannot be part of its cluster, once known: leaving the cluster makes
/// the others' network threads fail, and then this process's, so whoever reports a lost
/// process reports this instead ([`cluster_error`]).
static CLUSTER_ERROR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Why this process cannot be part of its cluster (a spec that differs from process 0's),
/// if it found out.
pub fn cluster_error() -> Option<String> {
    CLUSTER_ERROR.get().cloned()
}

/// What every process of a cluster takes from process 0 before building the dataflow,
/// which must be the same on every worker: whether only the final rows are wanted
/// ([`RowsOnly`]; the other processes read no input and write no output, so only process 0
/// knows). Worker 0 sends its choice, and its spec's [`Spec::fingerprint`], to every worker
/// on a dataflow of its own; a worker whose spec differs builds nothing and fails (its
/// process exits with the error, and the others see the cluster stop).
fn agree(worker: &mut Worker, rows_only: bool, spec: u64) -> Result<bool, String> {
    use std::cell::Cell;
    use std::rc::Rc;
    use timely::dataflow::InputHandleVec;
    use timely::dataflow::operators::{Exchange as _, Input as _, Inspect as _};
    let agreed = Rc::new(Cell::new(None));
    let into = Rc::clone(&agreed);
    let mut input = InputHandleVec::<u32, (u64, bool, u64)>::new();
    worker.dataflow::<u32, _, _>(|scope| {
        scope
            .input_from(&mut input)
            .exchange(|(to, _, _)| *to)
            .inspect(move |(_, choice, spec)| into.set(Some((*choice, *spec))));
    });
    if worker.index() == 0 {
        for to in 0..worker.peers() {
            input.send((to as u64, rows_only, spec));
        }
    }
    drop(input);
    while agreed.get().is_none() && worker.step_or_park(Some(Duration::from_millis(1))) {}
    match agreed.get() {
        Some((rows_only, theirs)) if theirs == spec => Ok(rows_only),
        Some(_) => {
            let why = format!(
                "worker {}'s dataflow spec differs from process 0's: start every process of the cluster with the same --dataflow",
                worker.index()
            );
            let _ = CLUSTER_ERROR.set(why.clone());
            Err(why)
        }
        None => Err("the cluster stopped before its processes agreed".into()),
    }
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

/// Worker 0's loop: the stages it drives and what it counts.
///
/// Each stage has its own state and inputs:
/// - admission ([`Admission`], SPEC section 1): the order, the clock, the dedup check and
///   suppression, with the sequence numbers of accepted events: the one sequential stage
///   ([`Driver::ingest`]);
/// - the rounds ([`rounds::Rounds`]): the inputs' clock, completing times, and questions
///   to the dataflow (lookups, asks of the keepers); every event's own work runs on the
///   worker that keeps it ([`crate::dataflow::keeper`]);
/// - publishing ([`publish::Publisher`], SPEC section 7): the changes of completed clock
///   values to every sink;
/// - the keepers' counts ([`stats::KeeperCounts`]) for `/metrics`;
/// - views changed while running (`views.rs`: [`Driver::change_view`], and a dry run);
/// - a rebuild's switch-over (`switch.rs`: [`Driver::release`] on the engine replaced,
///   [`Driver::adopt`] on the one replacing it).
///
/// The driver itself passes each stage's output to the next and keeps the run's
/// [`Summary`].
struct Driver<'w> {
    spec: &'w Spec,
    rounds: rounds::Rounds<'w>,
    gate: Admission,
    publisher: publish::Publisher<'w>,
    keeper_counts: stats::KeeperCounts,
    dead_letters: DeadLetters,
    /// Told, durably, the salted hashes each carried-out `forget` erased.
    erasures: Option<ErasureSink>,
    /// Counters readable while running.
    counters: Option<Arc<Counters>>,
    options: Options,
    source_names: SourceNames,
    /// Next event sequence number.
    next_seq: u64,
    /// Changes published when the current source began, and the instant it began (for
    /// [`SourceStats`]).
    source_changes_at: u64,
    source_started: Instant,
    /// Something was inserted at the current time and not yet published.
    dirty: bool,
    summary: Summary,
    /// A keeper's invariant broke (a bug): the run fails at the end of the round.
    failure: Option<String>,
    /// Reading stopped at [`Options::until_ms`]: later lines are ignored.
    stopped: bool,
    last_progress: Instant,
    /// Every worker renders and hands over its own final rows (only the final snapshot is
    /// wanted).
    rows_only: Option<RowsOnly>,
    /// This engine's threads, lowered once it has handed its outputs over
    /// ([`Driver::release`]).
    crew: Option<Arc<Crew>>,
    /// The spec as views changed while running left it (`None`: `spec` as it started).
    spec_now: Option<Arc<Spec>>,
}

impl<'w> Driver<'w> {
    fn new(
        worker: &'w mut Worker,
        spec: &'w Spec,
        (feed, outputs): (Feed, dataflow::Outputs),
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
        let outlets = publish::Outlets {
            changes: sinks.changes,
            live: sinks.live,
            counters: sinks.counters.clone(),
            publishers: sinks.publishers,
        };
        let publisher = publish::Publisher::new(
            spec,
            outputs.changes,
            outputs.profiles,
            outlets,
            options.snapshot,
            options.collect_changes,
        );
        Driver {
            spec,
            rounds: rounds::Rounds::new(worker, feed, outputs.probe, outputs.answers),
            gate: Admission::new(spec, salt).with_wall_clock(options.clock == Clock::Wall),
            publisher,
            keeper_counts: stats::KeeperCounts::default(),
            dead_letters: sinks.dead_letters,
            erasures: sinks.erasures,
            counters: sinks.counters,
            options,
            source_names,
            next_seq: 0,
            source_changes_at: 0,
            source_started: Instant::now(),
            dirty: false,
            summary: Summary::default(),
            failure: None,
            stopped: false,
            last_progress: Instant::now(),
            rows_only: None,
            crew: None,
            spec_now: None,
        }
    }

    /// Consumes the reader's messages until the end of input.
    ///
    /// Open loop: each round takes every batch that is waiting (up to
    /// [`MAX_BATCHES_PER_ROUND`], in a cluster [`MAX_BATCHES_PER_CLUSTER_ROUND`]), inserts it, and steps the dataflow once for all of them;
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
            // while a cluster's keepers owe their counts, an idle engine steps the dataflow
            // to take them in (see `Driver::count_keepers`)
            let counting = self.keeper_counts.owed().then(|| now + COUNT_POLL);
            let deadline = match (wall.then_some(next_tick), counting) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let message = match (held.take(), deadline) {
                (Some(message), _) => message,
                (None, Some(deadline)) => match rx.recv_deadline(deadline) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => {
                        if self.keeper_counts.owed() {
                            self.rounds.poll();
                            self.mirror_retained();
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => Message::End,
                },
                (None, None) => rx.recv().unwrap_or(Message::End),
            };
            match message {
                Message::Batch(mut batch) => {
                    // Batches already waiting join this round: one dataflow round for many
                    // small batches instead of one each. The bound is the time spent taking
                    // them, not their age: under a backlog every waiting batch is old, and
                    // rounds of one batch each would never catch up.
                    let taking = Instant::now();
                    let mut boundary = batch.boundary;
                    self.ingest(&mut batch)?;
                    let round = match self.options.cluster {
                        Some(_) => MAX_BATCHES_PER_CLUSTER_ROUND,
                        None => MAX_BATCHES_PER_ROUND,
                    };
                    for _ in 0..round {
                        if boundary == Boundary::Cut
                            || (live && taking.elapsed() >= self.options.linger)
                        {
                            break;
                        }
                        // a replay waits for a full round (its rounds are best large, and
                        // the previous round is still in flight: see `Driver::settle`);
                        // live input takes only what is waiting
                        let next = if live {
                            rx.try_recv().ok()
                        } else {
                            rx.recv().ok()
                        };
                        match next {
                            Some(Message::Batch(mut more)) => {
                                boundary = more.boundary;
                                self.ingest(&mut more)?;
                            }
                            Some(other) => {
                                held = Some(other);
                                break;
                            }
                            None => break,
                        }
                    }
                    match boundary {
                        // a replay reproducing the groups a sink sent: none ends here
                        Boundary::Hold => {}
                        Boundary::Cut => self.publish_current()?,
                        Boundary::Any if live && self.dirty => self.publish_current()?,
                        Boundary::Any if live => {
                            self.settle()?;
                            self.publisher.catch_up(&self.summary.tally)?;
                        }
                        Boundary::Any => self.settle()?,
                    }
                    self.mirror();
                    self.progress();
                }
                Message::Lookup(ident, reply) => {
                    let _ = reply.send(self.lookup(&ident));
                }
                Message::View(change, logger, reply) => {
                    let _ = reply.send(self.change_view(change, logger));
                }
                Message::Preview(change, reply) => {
                    let _ = reply.send(self.preview_view(change));
                }
                Message::Release(reply) => {
                    let handover = self.release()?;
                    let _ = reply.send(Box::new(handover));
                    return Ok(());
                }
                Message::Adopt(handover, prepared, reply) => {
                    let _ = reply.send(self.adopt(*handover, *prepared));
                }
                Message::Explain(ident, at, reply) => {
                    let started = Instant::now();
                    let outcome = self.explain(&ident, at);
                    let _ = reply.send((outcome, started.elapsed()));
                    if let Some(why) = self.failure.take() {
                        return Err(EngineError::Internal(why));
                    }
                }
                Message::Failed(why) => {
                    self.publish_current()?;
                    self.mirror();
                    return Err(EngineError::Input(why));
                }
                Message::End => {
                    self.publish_current()?;
                    self.mirror();
                    return Ok(());
                }
            }
        }
    }

    /// After a batch: completes and publishes every clock value before the current one.
    /// A replay's changes are published a round later ([`rounds::Rounds::pipeline`]); live
    /// input publishes every round ([`Driver::publish_current`]).
    fn settle(&mut self) -> Result<(), EngineError> {
        if self.clock().is_none() {
            return Ok(());
        }
        if let Some(previous) = self.rounds.pipeline()
            && clock_of(previous) > 0
        {
            self.publisher
                .emit(clock_of(previous) - 1, &mut self.summary.tally)?;
        }
        Ok(())
    }

    /// Completes and publishes the current clock value as it stands (end of input, or a
    /// pause on live input).
    fn publish_current(&mut self) -> Result<(), EngineError> {
        let Some(clock) = self.clock() else {
            return Ok(());
        };
        if !self.rounds.has_step() {
            return Ok(()); // published when the clock moves on
        }
        self.rounds.barrier(clock)?;
        self.publisher.emit(clock, &mut self.summary.tally)?;
        self.dirty = false;
        Ok(())
    }

    /// Merges what the sources read so far left pending in the arrangements, before the
    /// next source starts ([`rounds::Rounds::merge_pending`]).
    fn merge_pending(&mut self) -> Result<(), EngineError> {
        match self.clock() {
            Some(clock) => self.rounds.merge_pending(clock),
            None => Ok(()),
        }
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
