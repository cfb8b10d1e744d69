//! Rebuilds for a whole new spec on a running server (`PUT /v1/spec` when identifier
//! types, signals, sequences or purposes change): what cannot be made over the running
//! dataflow's state is built again from the log, in the background, and then switched to
//! in one step.
//!
//! 1. **Exactness.** The log holds every line as received except what compaction folded
//!    (retired events, kept only as the running spec needed them). A new spec that would
//!    read more of the folded lines than they keep ([`edit::inexact_rules`]) cannot be
//!    backfilled exactly: the request is refused (`409`, naming the rules and from which log
//!    line and engine time the rebuild holds exactly) unless it says `?inexact=accept`.
//! 2. **Catching up.** A second engine with the new spec replays the log's records as they
//!    are when it starts, while the log also forwards every later append to it
//!    ([`Log::tee`]). Compaction waits meanwhile. The running engine serves everything.
//! 3. **Preparing.** Once the new engine is within [`CAUGHT_UP`] lines of the log, both
//!    engines' rows are compared a shard at a time while both run, and both keep a journal
//!    of the rows they change ([`engine::Preparing`]).
//! 4. **Switch-over.** Once the new engine is within [`HOLD_WITHIN`] lines of the log, the
//!    log holds appends for a moment ([`Log::handover`]), the new spec is recorded with the
//!    log position it starts at (`DIR/views.ndjson`, fsynced before any output shows it),
//!    and the running engine publishes what is pending and hands over its outputs. The
//!    log then forwards to the new engine, which first publishes, at one engine time, the
//!    `-1`/`+1` changes from the old rows to its own (the comparison, with the journaled
//!    rows compared again: [`crate::engine::Prepared`]), then serves everything from the
//!    log position on.
//!
//! A request is recorded in `DIR/rebuild.json` before it starts: a server stopped or killed
//! during a rebuild starts it again once it has recovered, and one killed after the
//! switch-over was recorded replays the log with the new spec.
//!
//! A restart replays the log with the spec it started with and makes every recorded
//! version again at its position ([`Rebuilder::switch_again`]: an engine with the version's
//! spec replays the records before the position and takes over there), so every output is
//! the same as the first time, a sink's replayed changes included.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::EngineThread;
use crate::dataflow::SourceNames;
use crate::engine::input::Message;
use crate::engine::output::{DeadLetters, LiveViews};
use crate::engine::{self, Counters, Options, Sinks, Switched};
use crate::io::http::Ctx;
use crate::io::http::views::Rebuilds;
use crate::spec::{Spec, edit};
use crate::store::log;

/// How close (in log lines) the new engine must be to the log before the switch-over is
/// prepared (both engines' rows compared while both run, [`engine::Preparing`]).
pub const CAUGHT_UP: u64 = 2_000;

/// How close (in log lines) the new engine must be to the log before the switch-over holds
/// appends (what it still has to take while they wait), unless it takes longer than
/// [`CLOSING_LIMIT`] to get there.
pub const HOLD_WITHIN: u64 = 100;

/// How long the new engine may take, at normal priority, to come within [`HOLD_WITHIN`]
/// lines before the switch-over holds appends anyway.
pub const CLOSING_LIMIT: Duration = Duration::from_secs(2);

/// At most how many passes compare again the rows changed while the views were compared
/// ([`engine::Prepared::settle`]): each compares what changed during the one before.
const SETTLE_PASSES: usize = 8;

/// How few changed rows end those passes: about what the switch-over compares again while
/// the views wait.
const SETTLED: usize = 256;

/// The request a rebuild carries out, as `DIR/rebuild.json` keeps it until it has switched
/// over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Pending {
    /// The new spec's text.
    pub text: String,
    /// Whether the user accepted that it applies exactly only from where the folded lines
    /// end.
    pub inexact: bool,
}

/// Where a rebuild is.
#[derive(Default)]
struct Status {
    running: bool,
    /// What it is doing, or how it ended.
    phase: String,
    /// The new engine's counters (its lines taken).
    counters: Option<Arc<Counters>>,
    /// The log's lines when it started.
    of: u64,
    started: Option<Instant>,
    /// Why the last one failed.
    failed: Option<String>,
    /// The last switch-over, its spec version, the rebuild's time, and how long the log
    /// held appends for it and how long it took in all.
    switched: Option<(Switched, u64, Duration, (Duration, Duration))>,
}

/// The server's rebuilds (see the module docs).
pub(super) struct Rebuilder {
    ctx: OnceLock<Weak<Ctx>>,
    options: Options,
    names: SourceNames,
    /// `DIR/rebuild.json`.
    pending: PathBuf,
    /// The engine serving now (a switch-over replaces it).
    engine: Arc<Mutex<Option<EngineThread>>>,
    status: Arc<Mutex<Status>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Rebuilder {
    pub(super) fn new(
        options: Options,
        names: SourceNames,
        pending: PathBuf,
        engine: Arc<Mutex<Option<EngineThread>>>,
    ) -> Rebuilder {
        Rebuilder {
            ctx: OnceLock::new(),
            options,
            names,
            pending,
            engine,
            status: Arc::default(),
            thread: Mutex::new(None),
        }
    }

    /// The server's context, once made.
    pub(super) fn attach(&self, ctx: &Arc<Ctx>) {
        let _ = self.ctx.set(Arc::downgrade(ctx));
    }

    /// The request a stopped server left unfinished, if any.
    pub(super) fn pending(path: &std::path::Path) -> Result<Option<Pending>, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: not a rebuild request: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Waits for the rebuild thread, if one runs (the server is stopping: it gives up).
    pub(super) fn join(&self) {
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

impl Rebuilds for Rebuilder {
    fn start(&self, text: String, spec: Spec, inexact: bool) -> Result<Value, (u16, String)> {
        let ctx = self
            .ctx
            .get()
            .and_then(Weak::upgrade)
            .ok_or((503, "the server is stopping".to_string()))?;
        if self.options.cluster.is_some() {
            return Err((
                422,
                "a cluster does not rebuild while running yet: restart every process with --dataflow set to the new spec".into(),
            ));
        }
        let mut status = self
            .status
            .lock()
            .map_err(|_| (500, "rebuild status unavailable".to_string()))?;
        if status.running {
            return Err((
                409,
                "a rebuild is running already; retry once it has switched over".into(),
            ));
        }
        let rules = edit::inexact_rules(&ctx.spec_now(), &spec);
        let folded = if rules.is_empty() || ctx.log.kinds()[2] == 0 {
            None
        } else {
            log::read_records(ctx.log.path(), ctx.log.durable())
                .map(|records| log::folded_until(&records))
                .map_err(|e| (500, format!("cannot read the log: {e}")))?
        };
        let exact_from =
            folded.map(|(line, clock)| json!({"line": line + 1, "engine_time": clock}));
        if let (Some((line, clock)), false) = (folded, inexact) {
            let named: Vec<String> = rules
                .iter()
                .map(|(rule, why)| format!("{rule} ({why})"))
                .collect();
            return Err((
                409,
                format!(
                    "the log's first {line} lines are folded (retired events compaction kept only as the running spec needs them), so a rebuild cannot apply {} exactly to them: it holds exactly for the events from log line {} on (engine time {clock}). PUT again with ?inexact=accept to apply it anyway, or keep the running spec",
                    named.join("; "),
                    line + 1
                ),
            ));
        }
        let pending = Pending { text, inexact };
        let bytes = serde_json::to_vec(&pending).map_err(|e| (500, e.to_string()))?;
        crate::store::data_dir::write_atomically(&self.pending, &bytes)
            .map_err(|e| (500, format!("cannot write {}: {e}", self.pending.display())))?;
        *status = Status {
            running: true,
            phase: "starting".into(),
            started: Some(Instant::now()),
            ..Status::default()
        };
        drop(status);
        let job = Job {
            ctx: Arc::downgrade(&ctx),
            text: pending.text,
            spec: Arc::new(spec),
            options: self.options.clone(),
            names: self.names.clone(),
            engine: Arc::clone(&self.engine),
            status: Arc::clone(&self.status),
            pending: self.pending.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("throughline-rebuild".into())
            .spawn(move || job.run())
            .map_err(|e| (500, format!("cannot start the rebuild: {e}")))?;
        if let Ok(mut slot) = self.thread.lock()
            && let Some(previous) = slot.replace(handle)
        {
            let _ = previous.join(); // it had finished: `running` was false
        }
        Ok(json!({
            "rebuild": "started",
            "lines": ctx.log.forwarded(),
            "exact_from": exact_from,
            "inexact": rules.iter().map(|(rule, _)| rule).collect::<Vec<_>>(),
            "progress": "GET /healthz",
        }))
    }

    fn running(&self) -> bool {
        self.status.lock().is_ok_and(|s| s.running)
    }

    fn line(&self) -> Option<String> {
        let s = self.status.lock().ok()?;
        if s.running {
            let done = s
                .counters
                .as_ref()
                .map_or(0, |c| c.lines.load(Ordering::Acquire));
            let secs = s.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
            return Some(format!(
                "rebuilding: {} ({done}/{} logged lines, {secs:.1} s)",
                s.phase, s.of
            ));
        }
        s.failed
            .as_ref()
            .map(|why| format!("degraded: the last rebuild failed: {why}"))
    }

    fn progress(&self) -> Option<Value> {
        let s = self.status.lock().ok()?;
        if !s.running && s.failed.is_none() && s.switched.is_none() {
            return None;
        }
        let done = s
            .counters
            .as_ref()
            .map_or(0, |c| c.lines.load(Ordering::Acquire));
        Some(json!({
            "running": s.running,
            "phase": s.phase,
            "lines": done,
            "of": s.of,
            "seconds": s.started.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            "failed": s.failed,
            "switched": s.switched.map(|(sw, version, took, held)| json!({
                "engine_time": sw.time,
                "position": sw.position,
                "changes": sw.changes,
                "version": version,
                "seconds": took.as_secs_f64(),
                "appends_held_ms": held.0.as_secs_f64() * 1e3,
                "switch_ms": held.1.as_secs_f64() * 1e3,
            })),
        }))
    }
}

/// One rebuild, on a thread of its own.
struct Job {
    ctx: Weak<Ctx>,
    text: String,
    spec: Arc<Spec>,
    options: Options,
    names: SourceNames,
    engine: Arc<Mutex<Option<EngineThread>>>,
    status: Arc<Mutex<Status>>,
    pending: PathBuf,
}

impl Job {
    fn run(self) {
        let Some(ctx) = self.ctx.upgrade() else {
            return;
        };
        // no compaction starts from now on, and one still running ends first: its last
        // steps (writing and swapping the log) would share the rebuild's CPUs and start
        ctx.compactor.pause(true);
        drop(ctx.log.compaction_held());
        // the engine serving keeps CPUs of its own (the new engine's threads go with this
        // one, until it takes over: see `engine::Background`)
        let background =
            engine::Background::available().then(|| Arc::new(engine::Background::default()));
        if let Some(background) = &background {
            background.lower();
        } else {
            eprintln!(
                "throughline: rebuild: without CAP_SYS_NICE its threads run at normal priority, beside the serving engine's"
            );
        }
        let outcome = self.build(&ctx, background.clone());
        // a rebuild that failed leaves its threads lowered, and the serving engine's off the
        // background's CPUs, unless restored here (done already at a switch-over)
        if let Some(background) = &background {
            background.restore();
        }
        ctx.compactor.pause(false);
        // from the request to the end of the switch-over (`held.1` after its start)
        let took = self
            .status
            .lock()
            .ok()
            .and_then(|s| s.started)
            .map_or(Duration::ZERO, |t| t.elapsed());
        let took = match &outcome {
            Ok((_, _, _, ended)) => took.saturating_sub(ended.elapsed()),
            Err(_) => took,
        };
        match outcome {
            Ok((switched, version, held, _)) => {
                ctx.compactor.set_spec(Arc::clone(&self.spec));
                let _ = std::fs::remove_file(&self.pending);
                eprintln!(
                    "throughline: rebuild: switched to spec version {version} at log line {} (engine time {}, {} changes) after {:.1} s; the switch-over took {:.1} ms, appends waited {:.1} ms of it",
                    switched.position,
                    switched.time,
                    switched.changes,
                    took.as_secs_f64(),
                    held.1.as_secs_f64() * 1e3,
                    held.0.as_secs_f64() * 1e3
                );
                set(&self.status, |s| {
                    s.running = false;
                    s.phase = "switched".into();
                    s.failed = None;
                    s.switched = Some((switched, version, took, held));
                });
            }
            Err(why) => {
                if !ctx.stop.load(Ordering::SeqCst) {
                    eprintln!("throughline: rebuild failed: {why}");
                    // a request that cannot succeed is not made again at the next start
                    let _ = std::fs::remove_file(&self.pending);
                }
                set(&self.status, |s| {
                    s.running = false;
                    s.phase = "failed".into();
                    s.failed = Some(why);
                });
            }
        }
    }

    /// Builds the new engine, catches it up and switches over: what the switch-over did,
    /// and the spec's version.
    /// (The switch-over's figures, and when it ended.)
    #[allow(clippy::type_complexity)]
    fn build(
        &self,
        ctx: &Arc<Ctx>,
        background: Option<Arc<engine::Background>>,
    ) -> Result<(Switched, u64, (Duration, Duration), Instant), String> {
        let views = ctx
            .views
            .as_ref()
            .ok_or("this server does not change its spec")?;
        let options = Options {
            background: background.clone(),
            ..self.options.clone()
        };
        let NewEngine {
            tx,
            thread: engine,
            counters,
            views: own,
        } = new_engine(&self.spec, self.names.clone(), options)?;
        set(&self.status, |s| s.counters = Some(Arc::clone(&counters)));
        let caught_up = self.catch_up(ctx, &tx, &counters);
        let switched = caught_up.and_then(|tee| {
            // from here this thread compares the views under the serving engine's locks: on
            // the background's CPUs still, but not preempted there by the new engine's threads
            // while it holds them
            if let Some(background) = &background {
                background.lift();
            }
            let mut prepared = self.prepare(ctx, &tx, &tee, own)?;
            // the switch-over holds appends: it runs, and the new engine takes over, at normal
            // priority
            if let Some(background) = &background {
                background.restore();
            }
            let until = Instant::now() + CLOSING_LIMIT;
            self.follow(ctx, &tx, &tee, &counters, HOLD_WITHIN, Some(until))?;
            // what changed while it closed in, compared now rather than while the views wait
            prepared.settle()?;
            self.switch(ctx, views, &tx, &tee, prepared)
        });
        match switched {
            Ok((switched, version, held)) => {
                let ended = Instant::now();
                serving(&self.engine, engine)?;
                Ok((switched, version, held, ended))
            }
            Err(why) => {
                let _ = ctx.log.untee();
                drop(tx); // the new engine sees the end of its input
                let ended = engine.join();
                match ended {
                    Ok(Err(e)) => Err(format!("{why} (the new engine: {e})")),
                    _ => Err(why),
                }
            }
        }
    }

    /// Replays the log into the new engine (`tx`) while the log forwards every later append
    /// to it too, until it is within [`CAUGHT_UP`] lines of the log: the channel the log
    /// forwards on.
    fn catch_up(
        &self,
        ctx: &Ctx,
        tx: &Sender<Message>,
        counters: &Counters,
    ) -> Result<Receiver<Message>, String> {
        let (tee, teed) = crossbeam_channel::unbounded();
        // a compaction that began before the rebuild paused them would swap the file while
        // it is read: wait for it, and hold others off until the records are read
        let held = ctx
            .log
            .compaction_held()
            .map_err(|e| format!("cannot read the log: {e}"))?;
        let (bytes, next) = ctx
            .log
            .tee(tee)
            .map_err(|e| format!("cannot follow the log: {e}"))?;
        set(&self.status, |s| {
            s.of = next.saturating_sub(1);
            s.phase = "replaying the log".into();
        });
        // the tests hold a rebuild here to kill the server during it
        fail::fail_point!("rebuild::catch_up");
        let records = log::read_records(ctx.log.path(), bytes)
            .map_err(|e| format!("cannot read {}: {e}", ctx.log.path().display()))?;
        drop(held);
        let send = |m: Message| tx.send(m).map_err(|_| "the new engine stopped".to_string());
        for batch in log::batches(&records, 1) {
            if ctx.stop.load(Ordering::SeqCst) {
                return Err("the server is stopping".into());
            }
            send(Message::Batch(batch))?;
        }
        drop(records);
        set(&self.status, |s| s.phase = "following live input".into());
        self.follow(ctx, tx, &teed, counters, CAUGHT_UP, None)?;
        Ok(teed)
    }

    /// Forwards what the log forwards (`teed`) to the new engine (`tx`) until the new
    /// engine is within `within` lines of the log, or `until` has passed.
    fn follow(
        &self,
        ctx: &Ctx,
        tx: &Sender<Message>,
        teed: &Receiver<Message>,
        counters: &Counters,
        within: u64,
        until: Option<Instant>,
    ) -> Result<(), String> {
        let send = |m: Message| tx.send(m).map_err(|_| "the new engine stopped".to_string());
        loop {
            if ctx.stop.load(Ordering::SeqCst) {
                return Err("the server is stopping".into());
            }
            for m in teed.try_iter() {
                send(m)?;
            }
            let behind = ctx
                .log
                .forwarded()
                .saturating_sub(counters.lines.load(Ordering::Acquire));
            set(&self.status, |s| s.of = ctx.log.forwarded());
            if behind <= within || until.is_some_and(|t| Instant::now() >= t) {
                return Ok(());
            }
            // polled, not waited on: a receiver waiting on the channel makes the log's writer
            // (serving) take the channel's lock to wake it, which this thread, at the lowest
            // priority, might hold while it waits for a core
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Compares the serving engine's rows with the new engine's (`own`) a shard at a time
    /// while both run, then compares again what changed meanwhile until little does
    /// ([`engine::Prepared::settle`]), forwarding what the log forwards all along.
    fn prepare(
        &self,
        ctx: &Ctx,
        tx: &Sender<Message>,
        teed: &Receiver<Message>,
        own: Arc<Mutex<LiveViews>>,
    ) -> Result<engine::Prepared, String> {
        set(&self.status, |s| s.phase = "comparing the views".into());
        let forward = || -> Result<(), String> {
            if ctx.stop.load(Ordering::SeqCst) {
                return Err("the server is stopping".into());
            }
            for m in teed.try_iter() {
                tx.send(m)
                    .map_err(|_| "the new engine stopped".to_string())?;
            }
            Ok(())
        };
        let mut preparing = engine::Preparing::start(Arc::clone(&ctx.live), own)?;
        while preparing.step()? {
            forward()?;
        }
        let mut prepared = preparing.done()?;
        for _ in 0..SETTLE_PASSES {
            forward()?;
            if prepared.settle()? <= SETTLED {
                break;
            }
        }
        set(&self.status, |s| s.phase = "following live input".into());
        Ok(prepared)
    }

    /// The switch-over (see the module docs): the log holds appends while the old engine
    /// hands its outputs to the new one.
    fn switch(
        &self,
        ctx: &Ctx,
        views: &crate::io::http::views::Views,
        tx: &Sender<Message>,
        teed: &Receiver<Message>,
        prepared: engine::Prepared,
    ) -> Result<(Switched, u64, (Duration, Duration)), String> {
        set(&self.status, |s| s.phase = "switching over".into());
        let (resume, resumed) = crossbeam_channel::bounded(1);
        ctx.log
            .handover(resumed)
            .map_err(|e| format!("cannot hold the log: {e}"))?;
        let held = Instant::now();
        // appends wait from here until `resume` is sent (or dropped, on an error before the
        // old engine let go: it keeps the input)
        for m in teed.try_iter() {
            tx.send(m)
                .map_err(|_| "the new engine stopped".to_string())?;
        }
        let position = ctx.log.forwarded();
        let time = ctx.live.lock().map_or(0, |l| l.time);
        let version = views.switch_to(&self.text, Arc::clone(&self.spec), position, time)?;
        // the tests kill the server here: the new spec recorded, no output has it yet
        fail::fail_point!("rebuild::recorded");
        // the new engine takes over before any later append reaches it: appends go on as
        // soon as it has the outputs, while it publishes the switch-over's changes
        let adopting = hand_over(ctx, tx, prepared);
        let _ = resume.send(Some(tx.clone()));
        let appends = held.elapsed();
        let adopted =
            adopting.and_then(|answer| answer.recv().map_err(|_| "the new engine stopped"));
        let held = (appends, held.elapsed());
        match adopted {
            Ok(Ok(switched)) => Ok((switched, version, held)),
            Ok(Err(e)) => Err(fail_stop(ctx, &e)),
            Err(e) => Err(fail_stop(ctx, e)),
        }
    }
}

/// A rebuild's engine, before it takes over ([`new_engine`]).
struct NewEngine {
    /// Its input.
    tx: Sender<Message>,
    thread: EngineThread,
    /// Its own counters (its lines taken).
    counters: Arc<Counters>,
    /// Its own live views.
    views: Arc<Mutex<LiveViews>>,
}

/// Starts an engine for `spec` that publishes only to views of its own (and counts in
/// counters of its own) until it takes over.
fn new_engine(spec: &Arc<Spec>, names: SourceNames, options: Options) -> Result<NewEngine, String> {
    let counters = Arc::new(Counters::default());
    let mut own = LiveViews::default();
    own.names = spec.views.iter().map(|v| v.name.clone()).collect();
    let views = Arc::new(Mutex::new(own));
    let sinks = Sinks {
        live: Some(Arc::clone(&views)),
        counters: Some(Arc::clone(&counters)),
        ..Sinks::new(None, DeadLetters::new(None))
    };
    let (tx, rx) = crossbeam_channel::bounded::<Message>(64);
    let spec = Arc::clone(spec);
    let thread = std::thread::Builder::new()
        .name("throughline-engine".into())
        .spawn(move || {
            // it inherits its starter's priority: restored with the others
            if let Some(background) = &options.background {
                background.lower();
            }
            engine::run_channel(spec, rx, names, true, sinks, options)
        })
        .map_err(|e| format!("cannot start the new engine: {e}"))?;
    Ok(NewEngine {
        tx,
        thread,
        counters,
        views,
    })
}

/// Puts `engine` in the server's slot for the engine serving (the one `serve` waits for at
/// its end), and waits for the one it replaces, stopped at the switch-over, to wind down.
fn serving(slot: &Mutex<Option<EngineThread>>, engine: EngineThread) -> Result<(), String> {
    let old = slot
        .lock()
        .map_err(|_| "the engine slot is unavailable".to_string())?
        .replace(engine);
    match old.map(std::thread::JoinHandle::join) {
        Some(Ok(Err(e))) => eprintln!("throughline: rebuild: the old engine: {e}"),
        Some(Err(_)) => eprintln!("throughline: rebuild: the old engine panicked"),
        _ => {}
    }
    Ok(())
}

/// Links the server to the engine reading `tx`, has the engine serving now publish what
/// is pending and hand its outputs over, and gives them to the new one (after every line
/// sent to it before) with the switch-over's changes as `prepared`: where its answer will
/// come.
fn hand_over(
    ctx: &Ctx,
    tx: &Sender<Message>,
    prepared: engine::Prepared,
) -> Result<Receiver<Result<Switched, String>>, &'static str> {
    let old = ctx
        .lookups
        .replace(tx.clone())
        .ok_or("the engine link is unavailable")?;
    let (reply, handed) = crossbeam_channel::bounded(1);
    let handover = old
        .send(Message::Release(reply))
        .ok()
        .and_then(|()| handed.recv().ok())
        .ok_or("the running engine stopped")?;
    let (reply, answer) = crossbeam_channel::bounded(1);
    tx.send(Message::Adopt(handover, Box::new(prepared), reply))
        .map_err(|_| "the new engine stopped")?;
    Ok(answer)
}

impl Rebuilder {
    /// A restart's replay reaching the position a rebuild switched over at: an engine for
    /// `spec` replays the records up to it (`prefix`) and takes over from the one that
    /// replayed them with the spec before (the engine serving), publishing the same
    /// `-1`/`+1` changes at the same engine time as the first time. Its channel, on which
    /// the replay goes on.
    pub(super) fn switch_again(
        &self,
        ctx: &Ctx,
        prefix: &[log::Record],
        spec: Arc<Spec>,
    ) -> Result<Sender<Message>, String> {
        let NewEngine {
            tx,
            thread: engine,
            counters,
            views: own,
        } = new_engine(&spec, self.names.clone(), self.options.clone())?;
        for batch in log::batches(prefix, 1) {
            tx.send(Message::Batch(batch))
                .map_err(|_| "the new engine stopped during replay".to_string())?;
        }
        // compared once it has taken the prefix, so its journal holds only what follows (a
        // journal holding more is only slower: waiting ends once it stops moving for 1 s)
        let lines: u64 = prefix.iter().map(|r| r.lines.max(1)).sum();
        let mut moved = (0, Instant::now());
        loop {
            let taken = counters.lines.load(Ordering::Acquire);
            if taken >= lines || moved.1.elapsed() > Duration::from_secs(1) {
                break;
            }
            if engine.is_finished() {
                return Err("the new engine stopped during replay".into());
            }
            if taken != moved.0 {
                moved = (taken, Instant::now());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let prepared = engine::Preparing::start(Arc::clone(&ctx.live), own)?.done()?;
        let switched = hand_over(ctx, &tx, prepared)
            .and_then(|answer| answer.recv().map_err(|_| "the new engine stopped"))
            .map_err(|e| format!("cannot switch to a rebuilt spec again: {e}"))?
            .map_err(|e| format!("cannot switch to a rebuilt spec again: {e}"))?;
        serving(&self.engine, engine)?;
        eprintln!(
            "throughline: replay: switched to a rebuilt spec again at log line {} (engine time {}, {} changes)",
            switched.position, switched.time, switched.changes
        );
        Ok(tx)
    }
}

/// A switch-over that failed after the new spec was recorded: the outputs may be with
/// neither engine, so the server stops; a restart replays the log with the new spec.
fn fail_stop(ctx: &Ctx, why: &str) -> String {
    let why = format!(
        "the switch-over failed after the new spec was recorded ({why}); stopping: a restart replays the log with it"
    );
    eprintln!("throughline: error: {why}");
    ctx.stop.store(true, Ordering::SeqCst);
    why
}

fn set(status: &Mutex<Status>, update: impl FnOnce(&mut Status)) {
    if let Ok(mut s) = status.lock() {
        update(&mut s);
    }
}
