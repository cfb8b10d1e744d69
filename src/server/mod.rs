//! `throughline serve`: the long-lived server, wired together. On start it locks the data
//! directory, checks the event log (cutting a torn tail), and serves HTTP
//! ([`crate::io::http`]) at once, appending to the log, while a recovery thread replays the
//! log into a fresh engine (reads wait for it; what is appended meanwhile follows it). A
//! background thread compacts the log at start, when a `forget` was carried out, when
//! enough of it is dead, or when enough events retired (see [`crate::store::compact`]);
//! `POST /v1/compact` and `throughline compact` do so on demand.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod rebuild;

use crate::dataflow::SourceNames;
use crate::engine::input::{EngineLink, Message, ViewChange};
use crate::engine::output::{DeadLetters, LiveViews, Publish};
use crate::engine::{self, Clock, Cluster, Counters, Options, Sinks};
use crate::io::console::{self, StatsHistory};
use crate::io::http::Ctx;
use crate::io::http::views::{Catalog, Views};
use crate::io::kafka::{self, FollowStatus, KafkaUrl};
use crate::io::sink::kafka::{Form, KafkaDestination};
use crate::io::sink::state::{self, SinkState};
use crate::io::sink::{self, Destination, Sink, SinkStatus, SpecNow, WhenFull};
use crate::io::transport;
use crate::spec::{DEFAULT_SPEC, Spec};
use crate::store::compact;
use crate::store::compactor::Compactor;
use crate::store::data_dir::DataDir;
use crate::store::erasures::{self, ErasureLog};
use crate::store::log::{self, CompactStats, Log, Record};
use crate::store::views::ViewLog;

/// How `serve` runs.
pub struct ServeConfig {
    /// Where the event log and dead letters live.
    pub data_dir: PathBuf,
    /// Address to listen on (`127.0.0.1:8088`; port 0 picks a free one).
    pub listen: String,
    /// Required HTTP Basic username, if set.
    pub write_key: Option<String>,
    /// Required by every GET but `/healthz` (Bearer token or Basic username), if set.
    pub read_key: Option<String>,
    /// Connections served at once (see [`transport`]).
    pub max_connections: usize,
    /// Timely workers.
    pub workers: usize,
    /// Where the change stream goes besides the views (`--sink`, any number; see
    /// [`crate::io::sink`]).
    pub sinks: Vec<sink::Target>,
    /// Changes a sink may hold undelivered before the server stops taking input.
    pub sink_backlog: u64,
    /// The dataflow spec's text (kept in the data directory for compaction).
    pub spec_text: String,
    /// What the engine clock follows.
    pub clock: Clock,
    /// How often to check whether the log needs compacting (zero: never in the background).
    pub compact_check: Duration,
    /// This process's place in a cluster (it is process 0), if any.
    pub cluster: Option<Cluster>,
    /// A Kafka topic to follow into the log (see [`crate::io::kafka::follow()`]).
    pub source: Option<KafkaUrl>,
    /// Keep each view's rows in Kafka topics `TOPIC.VIEW` (see [`crate::io::kafka`]).
    pub upsert: Option<KafkaUrl>,
}

/// Whether `listen` (`host:port`) names a loopback address: `localhost`, `127.0.0.0/8` or
/// `::1`.
pub fn is_loopback(listen: &str) -> bool {
    let host = match listen.rsplit_once(':') {
        Some((host, _)) => host,
        None => listen,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Runs the server until SIGTERM or SIGINT.
///
/// It listens, and acknowledges ingestion, as soon as the log's records are checked
/// ([`log::verify`]: one sequential read); the replay runs meanwhile (`recover`), and what
/// arrives during it is applied after it. Reads wait for the replay (see
/// [`crate::io::http::Recovery`]).
pub fn serve(spec: Arc<Spec>, config: ServeConfig) -> Result<(), String> {
    if let Some(cpus) = crate::engine::serving_cpus().filter(|c| config.workers > *c) {
        eprintln!(
            "throughline: note: {} workers, and {cpus} CPU(s) left to them while a rebuild or a compaction runs in the background: more workers than CPUs raise the views' latency (README, Server)",
            config.workers
        );
    }
    let dir = DataDir::open(&config.data_dir)?;
    let salt = dir.salt()?;
    let log_path = dir.log();
    let verified = log::verify(&log_path)
        .map_err(|e| format!("cannot recover {}: {e}", log_path.display()))?;
    if let Some(reason) = &verified.reason {
        eprintln!(
            "throughline: recovery: cut {} bytes from the log tail ({reason}); {} intact records kept",
            verified.truncated_bytes, verified.records
        );
    }
    let (erasure_log, _) = ErasureLog::open(&dir.erasures())
        .map_err(|e| format!("cannot open {}: {e}", dir.erasures().display()))?;
    let mut states = sink_states(&dir, &config)?;
    for configured in &mut states {
        configured.state.within(verified.lines)?;
    }
    // where the replay must end groups so that the sinks get again exactly what they may
    // lack
    let mut cuts = sink::replay_cuts(states.iter().map(|c| &c.state));
    // the views changed while running, replayed at their positions
    let (view_log, changed) = ViewLog::open(&dir.views())?;
    let mut text = config.spec_text.clone();
    let mut replayed_views = Vec::new();
    for record in &changed {
        if record.spec.is_some() {
            // a spec a rebuild switched to: made again at its position (see `rebuild`)
            text = record.apply(&text, &spec.source)?.text;
            let switched = Spec::parse(&text, &spec.source).map_err(|e| e.to_string())?;
            cuts.insert(record.position);
            replayed_views.push((record.position, Step::Spec(Arc::new(switched))));
            continue;
        }
        text = record
            .apply(&text, &spec.source)
            .map_err(|e| {
                format!(
                    "{}: the change of view {} (version {}) no longer fits the spec: {e} (start with the spec it was made over, or remove the file's lines from this one on)",
                    dir.views().display(),
                    record.name,
                    record.version
                )
            })?
            .text;
        cuts.insert(record.position);
        replayed_views.push((
            record.position,
            Step::View(ViewChange {
                name: record.name.clone(),
                text: record.definition.as_ref().map(|_| text.clone()),
                spec: text.clone(),
            }),
        ));
    }
    if changed.iter().any(|r| r.spec.is_some()) {
        eprintln!(
            "throughline: the log is replayed with --dataflow's spec, then each spec a rebuild switched to from its position on; {} holds the last",
            dir.dataflow().display()
        );
    }
    let same_spec = dir.stored_spec()?.is_none_or(|s| s == text);
    if !same_spec {
        eprintln!(
            "throughline: the dataflow spec differs from the last run's: start-up compaction skipped"
        );
    }
    dir.store_spec(&text)?;
    let current = Arc::new(Spec::parse(&text, &spec.source).map_err(|e| e.to_string())?);
    let views = Arc::new(Views::new(Catalog {
        spec: Arc::clone(&current),
        text,
        file: spec.source.clone(),
        version: changed.last().map_or(0, |r| r.version),
        log: Arc::new(Mutex::new(view_log)),
        dataflow: dir.dataflow(),
    }));

    let pending = dir.root().join("rebuild.json");
    let mut pending_rebuild = rebuild::Rebuilder::pending(&pending)?;
    if pending_rebuild
        .as_ref()
        .is_some_and(|p| Some(&p.text) == views.text().as_ref())
    {
        // it had switched over when the server stopped: the request is done
        pending_rebuild = None;
        let _ = std::fs::remove_file(&pending);
    }
    let (tx, rx) = crossbeam_channel::bounded::<Message>(64);
    let mut views_now = LiveViews::default();
    views_now.names = spec.views.iter().map(|v| v.name.clone()).collect();
    let live = Arc::new(Mutex::new(views_now));
    let counters = Arc::new(Counters::default());
    // a sink that keeps tables makes a view's when it first publishes (views defined while
    // running included), as the catalog then defines it
    let spec_now: SpecNow = {
        let views = Arc::clone(&views);
        Arc::new(move || views.spec())
    };
    let (engine, sinks) = start_engine(
        &dir,
        &config,
        &spec,
        &spec_now,
        salt,
        erasure_log,
        rx,
        &live,
        &counters,
        &mut states,
    )?;
    let engine = Arc::new(Mutex::new(Some(engine)));
    let rebuilder = Arc::new(rebuild::Rebuilder::new(
        engine_options(&config, salt),
        source_names(&config),
        pending,
        Arc::clone(&engine),
    ));
    // appends acknowledged during the replay stay on disk until it is done
    let log = Log::open_paused(&log_path, verified.lines + 1)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    log.count_kinds(verified.kinds);

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    let ctx = Arc::new(Ctx {
        spec: Arc::clone(&spec),
        log,
        write_key: config.write_key,
        read_key: config.read_key,
        live,
        counters,
        lookups: EngineLink::new(tx.clone()),
        // the spec running once the replay is done (the last a rebuild switched to)
        compactor: Compactor::new(
            current,
            salt,
            dir.erasures(),
            Box::new(confirmed_by(sinks.clone())),
            same_spec,
        ),
        stop: Arc::clone(&stop),
        sinks,
        kafka: config.source.as_ref().map(|url| {
            Arc::new(FollowStatus {
                name: url.name(),
                ..FollowStatus::default()
            })
        }),
        stats: StatsHistory::default(),
        recovery: crate::io::http::Recovery {
            lines: verified.lines,
            views_pending: AtomicBool::new(!replayed_views.is_empty() || pending_rebuild.is_some()),
            ..Default::default()
        },
        views: Some(views),
        rebuilds: Some(Arc::clone(&rebuilder) as Arc<dyn crate::io::http::views::Rebuilds>),
    });
    rebuilder.attach(&ctx);
    let follower = Arc::new(Mutex::new(None));
    let recovery = {
        let replay = Replay {
            ctx: Arc::clone(&ctx),
            bytes: verified.bytes,
            cuts,
            changed: replayed_views,
            rebuilder: Arc::clone(&rebuilder),
            source: config.source.clone(),
            follower: Arc::clone(&follower),
            pending: pending_rebuild,
        };
        std::thread::Builder::new()
            .name("throughline-recovery".into())
            .spawn(move || recover(replay, tx))
            .map_err(|e| format!("cannot start the recovery: {e}"))?
    };
    let background = (!config.compact_check.is_zero()).then(|| {
        let (ctx, stop) = (Arc::clone(&ctx), Arc::clone(&stop));
        std::thread::spawn(move || compact_in_background(&ctx, &stop, config.compact_check))
    });
    let sampler = {
        let (ctx, stop) = (Arc::clone(&ctx), Arc::clone(&stop));
        std::thread::spawn(move || sample_stats(&ctx, &stop))
    };
    let about = format!("data dir {}", dir.root().display());
    let listened = transport::listen(
        &config.listen,
        &about,
        config.max_connections,
        Arc::clone(&ctx),
        &stop,
    );
    stop.store(true, Ordering::SeqCst);
    eprintln!("throughline: shutting down");
    if let Some(b) = background {
        let _ = b.join();
    }
    if let Some(f) = follower.lock().ok().and_then(|mut f| f.take()) {
        let _ = f.join();
    }
    let _ = sampler.join();
    let recovered = recovery
        .join()
        .unwrap_or_else(|_| Err("the recovery thread panicked".into()));
    rebuilder.join();
    drop(ctx); // closes the log and the lookup channel: the engine sees the end of its input
    let engine = engine.lock().ok().and_then(|mut e| e.take());
    let ended = match engine.map(std::thread::JoinHandle::join) {
        None => Err("the engine was lost in a switch-over".into()),
        Some(joined) => match joined {
            Ok(Ok(summary)) => {
                eprintln!("{}", summary.line());
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the engine thread panicked".into()),
        },
    };
    listened.and(recovered).and(ended)
}

/// What the recovery thread needs.
struct Replay {
    ctx: Arc<Ctx>,
    /// The log's checked length at the start.
    bytes: u64,
    /// Where the replay must end published groups ([`sink::replay_cuts`]).
    cuts: BTreeSet<u64>,
    /// The views changed while running, and the specs rebuilds switched to, made again at
    /// their positions.
    changed: Vec<(u64, Step)>,
    /// Makes the switch-overs again.
    rebuilder: Arc<rebuild::Rebuilder>,
    /// A Kafka topic to follow once the log says where to resume.
    source: Option<KafkaUrl>,
    follower: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// A rebuild the last run did not finish, started again once recovered.
    pending: Option<rebuild::Pending>,
}

/// The recovery thread: reads the log's records as checked at the start, replays them into
/// the engine (`tx`), has the log forward what was appended meanwhile and everything
/// appended after ([`Log::start_forwarding`]), and starts following the Kafka source from
/// where the log ends. A failure stops the server.
fn recover(replay: Replay, tx: crossbeam_channel::Sender<Message>) -> Result<(), String> {
    let Replay {
        ctx,
        bytes,
        cuts,
        changed,
        rebuilder,
        source,
        follower,
        pending,
    } = replay;
    // the tests hold the replay here to look at a recovering server
    fail::fail_point!("serve::replay");
    let started = Instant::now();
    let replayed = log::read_records(ctx.log.path(), bytes)
        .map_err(|e| format!("cannot read {}: {e}", ctx.log.path().display()))
        .and_then(|records| {
            let tx = replay_records(&records, tx, &cuts, &changed, (&ctx, &rebuilder))?;
            Ok((records, tx))
        });
    let forwarding = replayed.and_then(|(records, tx)| {
        ctx.log
            .start_forwarding(tx)
            .map_err(|e| format!("cannot replay {}: {e}", ctx.log.path().display()))?;
        Ok(records)
    });
    let records = match forwarding {
        Ok(records) => records,
        Err(e) => {
            eprintln!("throughline: error: {e}");
            ctx.stop.store(true, Ordering::SeqCst);
            return Err(e);
        }
    };
    if !records.is_empty() {
        eprintln!(
            "throughline: replayed {} logged lines ({} records) in {:?}",
            log::lines_of(&records),
            records.len(),
            started.elapsed()
        );
    }
    if let Some(pending) = pending {
        resume_rebuild(&ctx, pending);
    }
    // reads wait until the views changed while running are made again, and a rebuild left
    // unfinished runs again
    ctx.recovery.views_pending.store(false, Ordering::Release);
    if let (Some(url), Some(status)) = (source, ctx.kafka.clone()) {
        let resume = log::kafka_positions(&records);
        let ctx = Arc::clone(&ctx);
        eprintln!("throughline: following {}", url.name());
        let handle = std::thread::spawn(move || {
            let paused = || ctx.sinks.iter().any(|s| s.full());
            kafka::follow(&url, &resume, &ctx.log, &status, &ctx.stop, &paused);
        });
        if let Ok(mut slot) = follower.lock() {
            *slot = Some(handle);
        }
    }
    Ok(())
}

/// Starts again the rebuild a stopped server left unfinished (`DIR/rebuild.json`).
fn resume_rebuild(ctx: &Ctx, pending: rebuild::Pending) {
    let Some(rebuilds) = &ctx.rebuilds else {
        return;
    };
    let spec = match Spec::parse(&pending.text, "rebuild.json") {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!(
                "throughline: the unfinished rebuild's spec does not parse ({e}); not started"
            );
            return;
        }
    };
    eprintln!("throughline: starting again the rebuild the last run did not finish");
    if let Err((_, why)) = rebuilds.start(pending.text, spec, pending.inexact) {
        eprintln!("throughline: the unfinished rebuild cannot start again: {why}");
    }
}

/// `serve` on a process other than 0 of a cluster: its workers compute their share of the
/// dataflow, and its HTTP endpoints pass every request on to process 0 (`leader`), which
/// sequences, logs and acknowledges all input, so the cluster behaves exactly like one
/// process. Stops when process 0 stops (the dataflow completes) or on SIGTERM/SIGINT.
pub fn serve_helper(
    spec: Arc<Spec>,
    cluster: Cluster,
    workers: usize,
    listen: &str,
    leader: &str,
) -> Result<(), String> {
    let (_tx, rx) = crossbeam_channel::bounded::<Message>(1);
    let options = Options {
        workers,
        cluster: Some(cluster.clone()),
        ..Options::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let engine = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("throughline-engine".into())
            .spawn(move || {
                let sinks = Sinks::new(None, DeadLetters::new(None));
                let result =
                    engine::run_channel(spec, rx, SourceNames::default(), true, sinks, options);
                stop.store(true, Ordering::SeqCst); // process 0 finished: so does this one
                result
            })
            .map_err(|e| format!("cannot start the engine: {e}"))?
    };
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    eprintln!(
        "throughline: process {} of {}: passing HTTP requests on to {leader}",
        cluster.process,
        cluster.addresses.len()
    );
    transport::proxy(listen, leader, &stop)?;
    if engine.is_finished() {
        eprintln!("throughline: process 0 stopped; stopping");
        let _ = engine.join();
    } else {
        // this process's workers stay until process 0 stops the dataflow; leave at once
        eprintln!("throughline: shutting down (the cluster stops with it)");
    }
    Ok(())
}

/// A sink of `serve`: where it sends (`None`: the upsert topics of `--upsert`), the kind
/// its files in the data directory are named by (`sink-KIND.*`), and its saved state.
struct Configured {
    target: Option<sink::Target>,
    kind: String,
    name: String,
    state: SinkState,
}

/// The saved state of each sink `serve` is configured with: each `--sink` (the first of kind
/// `changes`, the next `changes-2`, …), and `--upsert` as `upsert`.
fn sink_states(dir: &DataDir, config: &ServeConfig) -> Result<Vec<Configured>, String> {
    let mut states = Vec::new();
    for (i, target) in config.sinks.iter().enumerate() {
        let kind = match i {
            0 => "changes".to_string(),
            i => format!("changes-{}", i + 1),
        };
        let name = target.name();
        let state = SinkState::load(dir.root(), &kind, &name)?;
        states.push(Configured {
            target: Some(target.clone()),
            kind,
            name,
            state,
        });
    }
    if let Some(url) = &config.upsert {
        let name = format!("{}.*", url.name());
        let state = SinkState::load(dir.root(), "upsert", &name)?;
        states.push(Configured {
            target: None,
            kind: "upsert".into(),
            name,
            state,
        });
    }
    Ok(states)
}

/// The least position every sink has confirmed (`u64::MAX` without sinks).
fn confirmed_by(sinks: Vec<Arc<SinkStatus>>) -> impl Fn() -> u64 + Send + Sync {
    move || {
        sinks
            .iter()
            .map(|s| s.confirmed.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// How long a stopping server waits for its sinks' destinations (what they have not
/// confirmed by then is sent again after the restart).
const SINK_PATIENCE: Duration = Duration::from_secs(10);

/// Starts the engine thread, with its sinks (their `states`, taken) and dead letters in the
/// data directory.
#[allow(clippy::too_many_arguments)]
fn start_engine(
    dir: &DataDir,
    config: &ServeConfig,
    spec: &Arc<Spec>,
    spec_now: &SpecNow,
    salt: u128,
    mut erasure_log: ErasureLog,
    rx: crossbeam_channel::Receiver<Message>,
    live: &Arc<Mutex<LiveViews>>,
    counters: &Arc<Counters>,
    states: &mut Vec<Configured>,
) -> Result<(EngineThread, Vec<Arc<SinkStatus>>), String> {
    // replaying the log regenerates every dead letter, so the file is rewritten from
    // scratch
    let dead_path = dir.dead_letters();
    let dead = std::fs::File::create(&dead_path)
        .map_err(|e| format!("cannot create {}: {e}", dead_path.display()))?;
    let mut publishers: Vec<Box<dyn Publish>> = Vec::new();
    let mut statuses = Vec::new();
    for Configured {
        target,
        kind,
        name,
        mut state,
    } in states.drain(..)
    {
        let destination: Box<dyn Destination> = match &target {
            Some(target) => target.open(
                spec,
                Some((dir.root(), &kind, &mut state)),
                Some(Arc::clone(spec_now)),
            )?,
            None => {
                let url = config
                    .upsert
                    .as_ref()
                    .ok_or("internal error: no --upsert")?;
                Box::new(KafkaDestination::open_waiting(url, Form::Upsert)?)
            }
        };
        let sink = Sink::start(
            destination,
            name,
            Some(state),
            (config.sink_backlog, WhenFull::Report),
            SINK_PATIENCE,
        )?;
        statuses.push(sink.status());
        publishers.push(Box::new(sink));
    }
    let sinks = Sinks {
        changes: None,
        dead_letters: DeadLetters::new(Some(Box::new(dead))),
        live: Some(Arc::clone(live)),
        counters: Some(Arc::clone(counters)),
        erasures: Some(Box::new(move |line, hashes| {
            erasure_log.record(line, hashes)
        })),
        publishers,
    };
    let options = engine_options(config, salt);
    let spec = Arc::clone(spec);
    let names = source_names(config);
    let engine = std::thread::Builder::new()
        .name("throughline-engine".into())
        .spawn(move || engine::run_channel(spec, rx, names, true, sinks, options))
        .map_err(|e| format!("cannot start the engine: {e}"))?;
    Ok((engine, statuses))
}

/// How `serve`'s engine runs (a rebuild's engine runs alike).
fn engine_options(config: &ServeConfig, salt: u128) -> Options {
    Options {
        workers: config.workers,
        salt: Some(salt),
        clock: config.clock,
        cluster: config.cluster.clone(),
        ..Options::default()
    }
}

/// The names of the log's sources: source 0 is HTTP, and a record read from Kafka is cited
/// by its partition and offset (named after the topic followed now, or `kafka` when none
/// is).
fn source_names(config: &ServeConfig) -> SourceNames {
    SourceNames::new(vec!["http".into()]).with_partitions(
        config
            .source
            .as_ref()
            .map_or("kafka".into(), KafkaUrl::name),
    )
}

/// The engine thread of `serve`.
type EngineThread = std::thread::JoinHandle<Result<engine::Summary, engine::EngineError>>;

/// What the replay makes again at a log position.
enum Step {
    /// A view changed while running.
    View(ViewChange),
    /// A spec a rebuild switched to.
    Spec(Arc<Spec>),
}

/// Sends the log's records to the engine (`tx`), ending published groups at `cuts` (see
/// [`sink::replay_cuts`]), until the server stops: the channel of the engine running at the
/// end.
///
/// The views `changed` while running (each after the log position it followed) are changed
/// again after exactly the same lines, and each spec a rebuild switched to is switched to
/// again there ([`rebuild::Rebuilder::switch_again`]), so every output is the same as the
/// first time.
fn replay_records(
    records: &[Record],
    mut tx: crossbeam_channel::Sender<Message>,
    cuts: &BTreeSet<u64>,
    changed: &[(u64, Step)],
    (ctx, rebuilder): (&Ctx, &rebuild::Rebuilder),
) -> Result<crossbeam_channel::Sender<Message>, String> {
    let stopped = "the engine stopped during replay";
    let send = |tx: &crossbeam_channel::Sender<Message>, records: &[Record], first: u64| {
        for batch in log::batches_cut(records, first, cuts) {
            if ctx.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            tx.send(Message::Batch(batch))
                .map_err(|_| stopped.to_string())?;
        }
        Ok::<(), String>(())
    };
    let (mut start, mut line) = (0, 1u64);
    for (position, step) in changed {
        let mut end = start;
        let mut next = line;
        while let Some(r) = records.get(end)
            && next + r.lines.max(1) - 1 <= *position
        {
            next += r.lines.max(1);
            end += 1;
        }
        send(&tx, records.get(start..end).unwrap_or_default(), line)?;
        (start, line) = (end, next);
        match step {
            Step::View(change) => {
                let (reply, answer) = crossbeam_channel::bounded(1);
                tx.send(Message::View(
                    change.clone(),
                    crate::engine::input::ViewLogger(None),
                    reply,
                ))
                .map_err(|_| stopped.to_string())?;
                answer
                    .recv()
                    .map_err(|_| stopped.to_string())?
                    .map_err(|e| format!("cannot change view {} again: {e}", change.name))?;
            }
            Step::Spec(spec) => {
                let prefix = records.get(..end).unwrap_or_default();
                tx = rebuilder.switch_again(ctx, prefix, Arc::clone(spec))?;
            }
        }
    }
    send(&tx, records.get(start..).unwrap_or_default(), line)?;
    Ok(tx)
}

/// `throughline compact`: compacts a stopped server's log with the spec it last ran with.
pub fn compact_stopped(data_dir: &Path) -> Result<CompactStats, String> {
    if !data_dir.join("events.log").exists() {
        return Err(format!("{} holds no event log", data_dir.display()));
    }
    let dir = DataDir::open(data_dir)?;
    let spec = match dir.stored_spec()? {
        Some(text) => {
            Spec::parse(&text, "dataflow.toml (data directory)").map_err(|e| e.to_string())?
        }
        None => Spec::parse(DEFAULT_SPEC, "default").map_err(|e| e.to_string())?,
    };
    let salt = dir.salt()?;
    let sets = erasures::load(&dir.erasures())
        .map_err(|e| format!("cannot read {}: {e}", dir.erasures().display()))?;
    let path = dir.log();
    let bytes_before = std::fs::metadata(&path).map_or(0, |m| m.len());
    let recovery =
        log::recover(&path).map_err(|e| format!("cannot recover {}: {e}", path.display()))?;
    let records = log::lines_of(&recovery.records);
    // the sinks saved in the directory may still owe an erasure's retractions
    let confirmed = state::saved_confirmed(dir.root())?;
    let kept = compact::rewrite(recovery.records, &spec, salt, &sets, confirmed);
    if let Some(line) = kept.deferred {
        eprintln!(
            "throughline: the erasure at log line {line} is kept until every sink of the data directory has confirmed its retractions (start the server with its sinks, or remove the sink-*.position files of sinks that are gone)"
        );
    }
    let bytes_after = if kept.reduced == 0 {
        bytes_before // nothing to reduce: the log stays as it is
    } else {
        log::replace(&path, &kept.records)
            .map_err(|e| format!("cannot compact {}: {e}", path.display()))?
    };
    Ok(CompactStats {
        records,
        reduced: kept.reduced,
        bytes_before,
        bytes_after,
    })
}

/// Samples the engine's counters for the console until the server stops.
fn sample_stats(ctx: &Ctx, stop: &AtomicBool) {
    let mut last: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        if last.is_none_or(|l| l.elapsed() >= console::SAMPLE_EVERY) {
            last = Some(Instant::now());
            ctx.stats.sample(&ctx.counters);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn compact_in_background(ctx: &Ctx, stop: &AtomicBool, every: Duration) {
    let mut last = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        if ctx.recovering().is_none() && ctx.compactor.due(&ctx.counters) {
            match ctx.compactor.run_in_background(&ctx.log, &ctx.counters) {
                Ok(s) if s.reduced == 0 => {}
                Ok(s) => eprintln!(
                    "throughline: compacted the log in the background: {} records reduced, {} -> {} bytes",
                    s.reduced, s.bytes_before, s.bytes_after
                ),
                Err(e) => eprintln!("throughline: background compaction failed: {e}"),
            }
        }
    }
}
