//! The command line: `run`, `explain`, `check`, `replay`, `gen`, `serve`, `compact`.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::engine::output::Publish;
use crate::engine::output::{DeadLetters, EXAMPLES};
use crate::engine::{self, Options, Sinks, Summary};
use crate::event::{identifiers, timestamp};
use crate::explain::Outcome;
use crate::explain::render::{self, Format};
use crate::io::kafka::KafkaUrl;
use crate::io::sink::kafka::{Form, KafkaDestination};
use crate::io::sink::{self, Sink, WhenFull};
use crate::io::source;
use crate::spec::Spec;
use crate::{replay, server, workload};

/// Real-time identity resolution, intent scores and consent-filtered views from
/// Segment-spec NDJSON events.
/// `serve --clock`: what the engine clock follows ([`engine::Clock`]).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ClockArg {
    /// The largest accepted event timestamp.
    Event,
    /// Also the wall clock: decay advances with real time even when no events arrive.
    Wall,
}

impl From<ClockArg> for engine::Clock {
    fn from(arg: ClockArg) -> engine::Clock {
        match arg {
            ClockArg::Event => engine::Clock::Event,
            ClockArg::Wall => engine::Clock::Wall,
        }
    }
}

/// `explain --format` ([`Format`]).
#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    /// Stable JSON (documented in `src/docs/explain.md`).
    Json,
    /// A readable report.
    Text,
    /// The identity graph for Graphviz.
    Dot,
}

impl From<FormatArg> for Format {
    fn from(arg: FormatArg) -> Format {
        match arg {
            FormatArg::Json => Format::Json,
            FormatArg::Text => Format::Text,
            FormatArg::Dot => Format::Dot,
        }
    }
}

#[derive(Parser)]
#[command(name = "throughline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read events (stdin or --input files) and write the change stream of every view.
    Run(RunArgs),
    /// Validate a dataflow spec file.
    Check {
        /// The spec file.
        file: PathBuf,
    },
    /// Run a fixture directory and diff its outputs against the expected files.
    Replay {
        /// Fixture directories (each with events.ndjson and expected.*.ndjson).
        #[arg(required = true)]
        fixtures: Vec<PathBuf>,
        /// Rewrite the expected files from this run instead of comparing.
        #[arg(long)]
        bless: bool,
        /// Timely workers.
        #[arg(short = 'w', long, default_value_t = 1)]
        workers: usize,
    },
    /// Write a reproducible synthetic workload (NDJSON) to stdout.
    Gen(workload::GenArgs),
    /// Run as a long-lived server: Segment-compatible HTTP ingestion, durable log, live views.
    Serve(ServeArgs),
    /// Explain why an identifier's profile looks the way it does: identity, score, consent,
    /// traits and views, each with the events behind it.
    Explain(ExplainArgs),
    /// Compact a stopped server's event log (a running one: `POST /v1/compact`).
    Compact {
        /// The server's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Directory of the event log and dead letters (process 0 of a cluster only).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: String,
    /// Dataflow spec (TOML); the built-in default when absent.
    #[arg(long)]
    dataflow: Option<PathBuf>,
    /// Timely workers.
    #[arg(short = 'w', long, default_value_t = 1)]
    workers: usize,
    /// Required write key (HTTP Basic username); also from THROUGHLINE_WRITE_KEY.
    #[arg(long, env = "THROUGHLINE_WRITE_KEY")]
    write_key: Option<String>,
    /// Required by every GET but `/healthz` (a Bearer token or the HTTP Basic username): views,
    /// profiles, explanations and metrics are personal data; also from THROUGHLINE_READ_KEY.
    #[arg(long, env = "THROUGHLINE_READ_KEY")]
    read_key: Option<String>,
    /// Listen on a non-loopback address without a write key and a read key (otherwise
    /// `serve` refuses to start).
    #[arg(long)]
    allow_unauthenticated: bool,
    /// Also write the change stream (repeatable: each is a sink of its own) to this file
    /// (appended; after a crash it holds every change exactly once), to a Kafka topic `kafka://HOST:PORT/TOPIC` (one record per
    /// change keyed `VIEW/KEY`; after a crash, what the topic may lack is sent again as
    /// identical records), to a webhook `webhook+http://HOST:PORT/PATH?view=V` (signed JSON
    /// batches with idempotency keys, at least once), or to PostgreSQL tables
    /// `postgres://USER@HOST/DB?view=V` (exactly once; see the README's Destinations).
    #[arg(long)]
    sink: Vec<String>,
    /// Changes a sink may hold undelivered (its destination slow or away) before the server
    /// stops taking input (HTTP 503 with Retry-After; a followed topic is not read); the
    /// views go on meanwhile.
    #[arg(long, default_value_t = crate::io::sink::DEFAULT_BACKLOG)]
    sink_backlog: u64,
    /// Also keep each view's current rows in Kafka topics `TOPIC.VIEW` (upserts keyed by
    /// profile key, a tombstone when a row leaves): `kafka://HOST:PORT/TOPIC`.
    #[arg(long)]
    upsert: Option<String>,
    /// Follow a Kafka topic into the log (`kafka://HOST:PORT/TOPIC?group=G`): each record is
    /// an event, logged with its partition and offset, so a restart resumes exactly where
    /// the log ends.
    #[arg(long)]
    source: Option<String>,
    /// Connections served at once; up to a quarter more are answered only on `/healthz`
    /// (503 with Retry-After elsewhere), and further ones are closed.
    #[arg(long, default_value_t = crate::io::transport::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// What the engine clock follows: event time, or also the wall clock (decay advances
    /// with real time even when no events arrive).
    #[arg(long, value_enum, default_value = "event")]
    clock: ClockArg,
    /// Seconds between checks whether the log needs a background compaction (0: never).
    #[arg(long, default_value_t = 30)]
    compact_check_secs: u64,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// In a cluster, process 0's HTTP address (its --listen): the other processes pass
    /// every request on to it.
    #[arg(long)]
    leader: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    /// Dataflow spec (TOML); the built-in default when absent.
    #[arg(long)]
    dataflow: Option<PathBuf>,
    /// Inputs, read in order: files (`-` is stdin; stdin when absent), or Kafka topics
    /// `kafka://HOST:PORT/TOPIC[?group=G&SETTING=VALUE…]`.
    #[arg(long = "input", short = 'i')]
    inputs: Vec<PathBuf>,
    /// Stop reading Kafka inputs at the end offsets they had at start, partition by
    /// partition in partition order (a replay); without it they are read until stopped.
    #[arg(long)]
    until_end: bool,
    /// Write the final snapshot instead of the change stream.
    #[arg(long)]
    snapshot: bool,
    /// Write to this file instead of stdout, or the change stream to a Kafka topic
    /// (`kafka://HOST:PORT/TOPIC`, one record per change keyed `VIEW/KEY`) or a webhook
    /// (`webhook+http://HOST:PORT/PATH?view=V`, signed JSON batches).
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Also keep each view's current rows in Kafka topics `TOPIC.VIEW` (upserts keyed by
    /// profile key, a tombstone when a row leaves): `kafka://HOST:PORT/TOPIC`.
    #[arg(long)]
    upsert: Option<String>,
    /// Write dead letters (NDJSON) here; otherwise they are summarised on stderr.
    #[arg(long)]
    dead_letters: Option<PathBuf>,
    /// Timely workers in this process.
    #[arg(short = 'w', long, default_value_t = 1)]
    workers: usize,
    /// On live input, the longest (ms) a round spends taking waiting input before it
    /// publishes the current time's changes (a round with no more input waiting publishes at once).
    #[arg(long, default_value_t = 1)]
    linger_ms: u64,
    /// Use this wall clock (epoch ms) for the far-future rule instead of the machine's.
    #[arg(long, hide = true)]
    wall_clock_ms: Option<u64>,
    /// Do not print the summary line on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Print measurements on stderr at the end: per input source lines/s and cost per
    /// change, read-to-output latency p50/p99/p99.9/max, forget latency, peak memory.
    /// With `--snapshot` no change is published (the rows are made once, at the end), so
    /// none is counted.
    #[arg(long)]
    stats: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

#[derive(Args)]
struct ExplainArgs {
    /// The identifier, as `type:value` (e.g. `user_id:u-1`, `email:ada@example.com`).
    identifier: String,
    /// Input files, read in order (`-` is stdin); stdin when absent.
    #[arg(long = "input", short = 'i')]
    inputs: Vec<PathBuf>,
    /// Dataflow spec (TOML); the built-in default when absent.
    #[arg(long)]
    dataflow: Option<PathBuf>,
    /// Explain the state at this clock value (epoch ms or RFC 3339): the lines before the
    /// first event that moves the clock past it, evaluated then. Default: the final clock.
    #[arg(long)]
    at: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    format: FormatArg,
    /// Timely workers.
    #[arg(short = 'w', long, default_value_t = 1)]
    workers: usize,
    /// Use this wall clock (epoch ms) for the far-future rule instead of the machine's.
    #[arg(long, hide = true)]
    wall_clock_ms: Option<u64>,
    /// Do not print the summary line on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

/// Timely's cluster settings: one dataflow over several processes (see the README).
#[derive(Args)]
struct ClusterArgs {
    /// Number of processes in the cluster (each runs `-w` workers).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// This process's index (0 reads the input and writes the output).
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// File of `host:port` lines, one per process, in process order (default
    /// localhost:2101, localhost:2102, ...).
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Seconds to wait at start for every process to connect.
    #[arg(long, default_value_t = 60)]
    connect_timeout_secs: u64,
}

impl ClusterArgs {
    /// The cluster these settings describe, if more than one process.
    fn cluster(&self) -> Result<Option<engine::Cluster>, String> {
        let cluster =
            engine::Cluster::from_args(self.processes, self.process, self.hostfile.as_deref())?;
        Ok(cluster.map(|c| engine::Cluster {
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            ..c
        }))
    }
}

/// Entry point; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check { file } => check(&file),
        Command::Replay {
            fixtures,
            bless,
            workers,
        } => replay::command(&fixtures, bless, workers),
        Command::Gen(args) => workload::command(&args),
        Command::Serve(args) => serve(args),
        Command::Compact { data_dir } => compact(&data_dir),
        Command::Explain(args) => explain(args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("throughline: error: {message}");
            1
        }
    }
}

/// Loads `--dataflow` or the built-in default.
pub fn load_spec(path: Option<&Path>) -> Result<Spec, String> {
    match path {
        Some(p) => Spec::load(p).map_err(|e| e.to_string()),
        None => Ok(Spec::default_spec()),
    }
}

fn serve(args: ServeArgs) -> Result<i32, String> {
    let spec_text = match &args.dataflow {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?
        }
        None => crate::spec::DEFAULT_SPEC.to_string(),
    };
    let spec = Arc::new(load_spec(args.dataflow.as_deref())?);
    let cluster = args.cluster.cluster()?;
    if cluster.is_some() {
        stop_on_lost_process();
    }
    if let Some(helper) = cluster.as_ref().filter(|c| c.process != 0) {
        let leader = args
            .leader
            .ok_or("--leader HOST:PORT (process 0's HTTP address) is required for --process > 0")?;
        server::serve_helper(spec, helper.clone(), args.workers, &args.listen, &leader)?;
        return Ok(0);
    }
    let data_dir = args.data_dir.ok_or("--data-dir is required")?;
    if !args.allow_unauthenticated
        && !server::is_loopback(&args.listen)
        && (args.write_key.is_none() || args.read_key.is_none())
    {
        return Err(format!(
            "refusing to serve on {} without --write-key and --read-key: anyone who can reach it could write events and read profiles (pass --allow-unauthenticated if that is intended)",
            args.listen
        ));
    }
    let config = server::ServeConfig {
        cluster,
        data_dir,
        listen: args.listen,
        write_key: args.write_key,
        read_key: args.read_key,
        max_connections: args.max_connections.max(1),
        workers: args.workers,
        sinks: args
            .sink
            .iter()
            .map(|s| sink::Target::parse(s))
            .collect::<Result<_, _>>()?,
        sink_backlog: args.sink_backlog.max(1),
        spec_text,
        clock: args.clock.into(),
        compact_check: Duration::from_secs(args.compact_check_secs),
        source: args.source.as_deref().map(KafkaUrl::parse).transpose()?,
        upsert: args.upsert.as_deref().map(KafkaUrl::parse).transpose()?,
    };
    server::serve(spec, config)?;
    Ok(0)
}

/// A sink of `run` (`-o` a destination, `--upsert`): the engine waits while it holds a
/// million undelivered changes, and at the end up to two minutes for the destination to
/// confirm everything; the run fails if some change could not be delivered.
fn run_sink(
    destination: Box<dyn sink::Destination>,
    name: String,
) -> Result<Box<dyn Publish>, String> {
    Ok(Box::new(Sink::start(
        destination,
        name,
        None,
        (sink::DEFAULT_BACKLOG, WhenFull::Wait),
        Duration::from_secs(120),
    )?))
}

fn explain(args: ExplainArgs) -> Result<i32, String> {
    let spec = Arc::new(load_spec(args.dataflow.as_deref())?);
    let ident = identifiers::parse_key(&args.identifier, &spec.identity)?;
    let at = args
        .at
        .as_deref()
        .map(|t| timestamp::parse_text(t).map_err(|e| format!("--at: {e}")))
        .transpose()?;
    let sources = source::open(&args.inputs, true)?;
    let options = Options {
        workers: args.workers,
        wall_clock_ms: args.wall_clock_ms,
        progress: !args.quiet && engine::stderr_is_terminal(),
        until_ms: at,
        ..Options::default()
    };
    let sinks = Sinks::new(None, DeadLetters::new(None));
    let (summary, mut outcomes) =
        source::run_and_explain(spec, sources, sinks, options, vec![(ident, at)])
            .map_err(|e| e.to_string())?;
    let (outcome, took) = outcomes
        .pop()
        .ok_or("internal error: the engine gave no explanation")?;
    print!("{}", render::render(&outcome, args.format.into()));
    io::stdout()
        .flush()
        .map_err(|e| format!("cannot write output: {e}"))?;
    if !args.quiet {
        report(&summary, false);
        eprintln!(
            "throughline: explained {} in {:.3} ms",
            args.identifier,
            took.as_secs_f64() * 1e3
        );
    }
    match outcome {
        Outcome::NotFound { identifier } => {
            eprintln!("throughline: error: no live event carries {identifier}");
            Ok(1)
        }
        _ => Ok(0),
    }
}

fn compact(data_dir: &Path) -> Result<i32, String> {
    let stats = server::compact_stopped(data_dir)?;
    println!(
        "compacted {}: {} records, {} newly reduced, {} -> {} bytes",
        data_dir.display(),
        stats.records,
        stats.reduced,
        stats.bytes_before,
        stats.bytes_after
    );
    Ok(0)
}

fn check(file: &Path) -> Result<i32, String> {
    let spec = Spec::load(file).map_err(|e| e.to_string())?;
    println!("ok: {spec}");
    Ok(0)
}

fn create(path: &Path, what: &str) -> Result<Box<dyn Write + Send>, String> {
    let file =
        File::create(path).map_err(|e| format!("cannot create {what} {}: {e}", path.display()))?;
    Ok(Box::new(BufWriter::new(file)))
}

/// In a cluster, timely's network threads panic when a peer process goes away, and the
/// workers then panic in turn: report that as one error line and exit 1 at once, rather
/// than a cascade of panics (or waiting for threads that will never finish).
fn stop_on_lost_process() {
    std::panic::set_hook(Box::new(|info| {
        if let Some(why) = crate::engine::cluster_error() {
            eprintln!("throughline: error: {why}");
            std::process::exit(1);
        }
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a worker thread failed");
        eprintln!(
            "throughline: error: the cluster stopped: {message} (a process of the cluster is gone? restart every process)"
        );
        std::process::exit(1);
    }));
}

/// Standard output as a handle of its own, with fd 1 itself moved to stderr: timely's
/// cluster setup prints progress ("awaiting connections") to stdout, which must not mix
/// with the change stream.
fn stdout_apart() -> Result<Box<dyn Write + Send>, String> {
    use std::os::fd::AsFd;
    let out = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("cannot duplicate stdout: {e}"))?;
    // SAFETY: dup2 on two open descriptors of this process; fd 1 becomes a copy of fd 2 and
    // every Rust handle to stdout keeps working (it now reaches stderr).
    if unsafe { libc::dup2(2, 1) } < 0 {
        return Err(format!(
            "cannot redirect stdout: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(Box::new(BufWriter::new(File::from(out))))
}

fn run(args: RunArgs) -> Result<i32, String> {
    let spec = Arc::new(load_spec(args.dataflow.as_deref())?);
    let cluster = args.cluster.cluster()?;
    let stdout = match &cluster {
        Some(_) => {
            stop_on_lost_process();
            stdout_apart()?
        }
        // buffered: `Stdout` alone writes each change line with a system call of its own;
        // the engine flushes at the end of every publication
        None => Box::new(BufWriter::with_capacity(1 << 16, io::stdout())),
    };
    if let Some(cluster) = cluster.filter(|c| c.process != 0) {
        // a helper process: it computes its share of the dataflow; process 0 has the input
        // and writes the output
        let options = Options {
            workers: args.workers,
            cluster: Some(cluster.clone()),
            ..Options::default()
        };
        let sinks = Sinks::new(None, DeadLetters::new(None));
        let summary = source::run(spec, Vec::new(), sinks, options).map_err(|e| e.to_string())?;
        if !args.quiet {
            eprintln!(
                "throughline: process {} of {}: done in {:.3} s",
                cluster.process,
                cluster.addresses.len(),
                summary.elapsed.as_secs_f64()
            );
        }
        return Ok(0);
    }
    let sources = source::open(&args.inputs, args.until_end)?;
    let kafka_inputs: Vec<_> = sources.iter().filter_map(|s| s.kafka_input()).collect();
    let mut publishers: Vec<Box<dyn Publish>> = Vec::new();
    // `-o` names a file, or a destination of the sink layer (`io::sink::Target`)
    let destination = args
        .output
        .as_deref()
        .and_then(|p| p.to_str())
        .filter(|p| p.contains("://"))
        .map(sink::Target::parse)
        .transpose()?;
    let output: Option<Box<dyn Write + Send>> = match (&args.output, destination) {
        (_, Some(target)) if args.snapshot => {
            return Err(format!(
                "{}: --snapshot writes a file or stdout; a destination takes the change stream (keep a view's rows in Kafka with --upsert)",
                target.name()
            ));
        }
        (_, Some(target)) => {
            publishers.push(run_sink(target.open(&spec, None, None)?, target.name())?);
            None
        }
        (Some(p), None) => Some(create(p, "output")?),
        (None, None) => Some(stdout),
    };
    if let Some(url) = &args.upsert {
        let url = KafkaUrl::parse(url)?;
        let destination = KafkaDestination::open(&url, Form::Upsert)?;
        publishers.push(run_sink(
            Box::new(destination),
            format!("{}.*", url.name()),
        )?);
    }
    let dead_letters = match &args.dead_letters {
        Some(p) => Some(create(p, "dead-letter file")?),
        None => None,
    };
    let options = Options {
        workers: args.workers,
        linger: Duration::from_millis(args.linger_ms),
        snapshot: args.snapshot,
        collect_changes: false,
        wall_clock_ms: args.wall_clock_ms,
        progress: !args.quiet && engine::stderr_is_terminal(),
        cluster: args.cluster.cluster()?,
        ..Options::default()
    };
    let (changes, mut snapshot_out) = if args.snapshot {
        (None, output)
    } else {
        (output, None)
    };
    let mut sinks = Sinks::new(changes, DeadLetters::new(dead_letters));
    sinks.publishers = publishers;
    let summary = source::run(spec, sources, sinks, options).map_err(|e| e.to_string())?;
    if let (Some(out), Some(snapshot)) = (&mut snapshot_out, &summary.snapshot) {
        for line in snapshot.lines()? {
            writeln!(out, "{line}").map_err(|e| format!("cannot write output: {e}"))?;
        }
        out.flush()
            .map_err(|e| format!("cannot write output: {e}"))?;
    }
    // the outputs are written: the group may move on past what this run read
    for kafka in &kafka_inputs {
        let kafka = kafka
            .lock()
            .map_err(|_| "the Kafka reader failed".to_string())?;
        kafka.commit()?;
        if !args.quiet {
            eprintln!("throughline: {}", kafka.summary());
        }
    }
    if !args.quiet {
        for line in &summary.outputs {
            eprintln!("throughline: {line}");
        }
        report(&summary, args.dead_letters.is_some());
    }
    if args.stats {
        for line in stats_lines(&summary) {
            eprintln!("throughline: stats: {line}");
        }
    }
    Ok(0)
}

/// The `--stats` report, one measurement a line.
fn stats_lines(summary: &Summary) -> Vec<String> {
    let mut out = Vec::new();
    for s in &summary.sources {
        let per = |n: u64| {
            if n == 0 {
                "-".to_string()
            } else {
                format!("{:.2} us", s.seconds * 1e6 / n as f64)
            }
        };
        let changes = match s.changes {
            Some(n) => format!("{n} changes ({} per change)", per(n)),
            None => "final rows only (--snapshot: no changes published)".to_string(),
        };
        out.push(format!(
            "source {}: {} lines in {:.3} s ({:.0} events/s, {} per event), {changes}",
            s.name,
            s.lines,
            s.seconds,
            if s.seconds > 0.0 {
                s.lines as f64 / s.seconds
            } else {
                0.0
            },
            per(s.lines),
        ));
    }
    let ms = |q: Option<u32>| {
        q.map_or_else(|| "-".into(), |us| format!("{:.3} ms", f64::from(us) / 1e3))
    };
    for (what, latency) in [
        ("read-to-output latency", &summary.latency),
        ("forget read-to-last-retraction", &summary.forget_latency),
    ] {
        if !latency.is_empty() {
            out.push(format!(
                "{what}: p50 {}, p99 {}, p99.9 {}, max {} ({} samples)",
                ms(latency.quantile(0.5)),
                ms(latency.quantile(0.99)),
                ms(latency.quantile(0.999)),
                ms(latency.quantile(1.0)),
                latency.len()
            ));
        }
    }
    let r = &summary.retained;
    out.push(format!(
        "retained: {} live events, {} retired, {} identifier sets, {} records, {} sequence roles, {} messageIds",
        r.live_events, r.retired_events, r.sets, r.records, r.roles, r.message_ids
    ));
    if let Some(peak) = engine::peak_rss_bytes() {
        let per = |n: i64| {
            if n > 0 {
                format!("{:.0}", peak as f64 / n as f64)
            } else {
                "-".into()
            }
        };
        out.push(format!(
            "peak RSS {:.1} MB: {} bytes per accepted event ({}), {} bytes per profile ({})",
            peak as f64 / 1e6,
            per(summary.tally.accepted as i64),
            summary.tally.accepted,
            per(summary.profiles),
            summary.profiles
        ));
    }
    out
}

/// Prints the summary line and, when dead letters were not written to a file, their counts
/// and first few examples.
fn report(summary: &Summary, dead_letters_written: bool) {
    eprintln!("{}", summary.line());
    if summary.dead_letter_total() > 0 && !dead_letters_written {
        let counts: Vec<String> = summary
            .dead_letters
            .iter()
            .map(|(reason, n)| format!("{} {n}", reason.code()))
            .collect();
        eprintln!("throughline: dead letters by reason: {}", counts.join(", "));
        for letter in summary.dead_letter_examples.iter().take(EXAMPLES) {
            eprintln!(
                "throughline: dead letter: {}:{}: {}: {}",
                letter.source,
                letter.line,
                letter.reason.code(),
                letter.detail
            );
        }
        eprintln!("throughline: (use --dead-letters FILE to keep them all)");
    }
}
