//! `throughline serve`: Segment-compatible HTTP ingestion in front of the durable log, and
//! read endpoints over the live views.
//!
//! A request is acknowledged (200) only after its events are appended to the log and the
//! log is fsynced; the log then forwards them to the engine in log order, so a restart that
//! replays the log reaches exactly the state the engine had.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::engine::{self, Counters, Options, Sinks};
use crate::io::sink::{DeadLetters, LiveViews};
use crate::io::source::{Batch, Message};
use crate::spec::Spec;
use crate::store::log::{self, Log, Record};

/// Largest accepted single event (decoded body), as Segment's API.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Largest accepted `/v1/batch` body (decoded), as Segment's API.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// Largest accepted `/v1/ingest` body (decoded).
pub const MAX_INGEST_BYTES: usize = 64 << 20;

/// How `serve` runs.
pub struct ServeConfig {
    /// Where the event log and dead letters live.
    pub data_dir: PathBuf,
    /// Address to listen on (`127.0.0.1:8088`; port 0 picks a free one).
    pub listen: String,
    /// Required HTTP Basic username, if set.
    pub write_key: Option<String>,
    /// Timely workers.
    pub workers: usize,
    /// Append the change stream to this file.
    pub sink: Option<PathBuf>,
}

struct Ctx {
    spec: Arc<Spec>,
    log: Log,
    write_key: Option<String>,
    live: Arc<Mutex<LiveViews>>,
    counters: Arc<Counters>,
}

/// Runs the server until SIGTERM or SIGINT: recovers and replays the log, then serves.
pub fn serve(spec: Arc<Spec>, config: ServeConfig) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
    let log_path = config.data_dir.join("events.log");
    let recovery = log::recover(&log_path)
        .map_err(|e| format!("cannot recover {}: {e}", log_path.display()))?;
    if let Some(reason) = &recovery.reason {
        eprintln!(
            "throughline: recovery: cut {} bytes from the log tail ({reason}); {} intact records kept",
            recovery.truncated_bytes,
            recovery.records.len()
        );
    }
    let (tx, rx) = crossbeam_channel::bounded::<Message>(64);
    let live = Arc::new(Mutex::new(LiveViews::default()));
    let counters = Arc::new(Counters::default());
    // replaying the log regenerates every dead letter, so the file is rewritten from scratch
    let dead_path = config.data_dir.join("dead_letters.ndjson");
    let dead = std::fs::File::create(&dead_path)
        .map_err(|e| format!("cannot create {}: {e}", dead_path.display()))?;
    let changes: Option<Box<dyn Write + Send>> = match &config.sink {
        Some(p) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open sink {}: {e}", p.display()))?,
        )),
        None => None,
    };
    let sinks = Sinks {
        changes,
        dead_letters: DeadLetters::new(Some(Box::new(dead))),
        live: Some(Arc::clone(&live)),
        counters: Some(Arc::clone(&counters)),
    };
    let options = Options {
        workers: config.workers,
        ..Options::default()
    };
    let engine_spec = Arc::clone(&spec);
    let engine = std::thread::Builder::new()
        .name("throughline-engine".into())
        .spawn(move || {
            engine::run_channel(engine_spec, rx, vec!["http".into()], true, sinks, options)
        })
        .map_err(|e| format!("cannot start the engine: {e}"))?;

    // replay what the log holds, with each record's receipt wall clock
    let started = std::time::Instant::now();
    let mut number = 1u64;
    for group in recovery.records.chunk_by(|a, b| a.wall_ms == b.wall_ms) {
        for chunk in group.chunks(4096) {
            let lines: Vec<&[u8]> = chunk.iter().map(|r| r.line.as_slice()).collect();
            tx.send(Message::Batch(Batch::of_lines(
                0,
                number,
                &lines,
                Some(chunk[0].wall_ms),
            )))
            .map_err(|_| "the engine stopped during replay".to_string())?;
            number += lines.len() as u64;
        }
    }
    if !recovery.records.is_empty() {
        eprintln!(
            "throughline: replayed {} logged events in {:?}",
            recovery.records.len(),
            started.elapsed()
        );
    }
    let log = Log::open_forwarding(&log_path, Some((tx, number)))
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;

    let server = Server::http(&config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = server
        .server_addr()
        .to_ip()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default();
    eprintln!(
        "throughline: listening on {addr} (data dir {})",
        config.data_dir.display()
    );
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .map_err(|e| format!("cannot handle signals: {e}"))?;
    }
    let ctx = Arc::new(Ctx {
        spec,
        log,
        write_key: config.write_key,
        live,
        counters,
    });
    let server = Arc::new(server);
    let handlers: Vec<_> = (0..4)
        .map(|_| {
            let (server, ctx, stop) = (Arc::clone(&server), Arc::clone(&ctx), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(100)) {
                        handle(request, &ctx);
                    }
                }
            })
        })
        .collect();
    for h in handlers {
        let _ = h.join();
    }
    eprintln!("throughline: shutting down");
    drop(ctx); // closes the log: the engine sees the end of its input
    match engine.join() {
        Ok(Ok(summary)) => {
            eprintln!("{}", summary.line());
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the engine thread panicked".into()),
    }
}

fn respond(request: Request, status: u16, content_type: &str, body: String) {
    let header = Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()).ok();
    let mut response = Response::from_string(body).with_status_code(status);
    if let Some(h) = header {
        response = response.with_header(h);
    }
    let _ = request.respond(response);
}

fn error(request: Request, status: u16, message: &str) {
    respond(
        request,
        status,
        "application/json",
        json!({"error": message}).to_string(),
    );
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The HTTP Basic username, if any.
fn basic_user(request: &Request) -> Option<String> {
    let value = header(request, "Authorization")?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next().unwrap_or("").to_string())
}

/// Reads the body (gunzipped if so encoded), refusing more than `limit` bytes.
fn body(request: &mut Request, limit: usize) -> Result<Vec<u8>, String> {
    let gzip = header(request, "Content-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let mut out = Vec::new();
    let reader = request.as_reader();
    let read = if gzip {
        flate2::read::GzDecoder::new(reader)
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
    } else {
        reader.take(limit as u64 + 1).read_to_end(&mut out)
    };
    read.map_err(|e| format!("cannot read the body: {e}"))?;
    if out.len() > limit {
        return Err(format!("body over {limit} bytes"));
    }
    Ok(out)
}

fn handle(mut request: Request, ctx: &Ctx) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let method = request.method().clone();
    match (&method, path.as_str()) {
        (Method::Get, "/healthz") => respond(request, 200, "text/plain", "ok\n".into()),
        (Method::Get, "/metrics") => {
            respond(request, 200, "text/plain; version=0.0.4", metrics(ctx))
        }
        (Method::Get, p) if p.starts_with("/v1/views/") => {
            view(request, ctx, &p["/v1/views/".len()..])
        }
        (Method::Post, p) if p.starts_with("/v1/") => {
            if let Some(key) = &ctx.write_key
                && basic_user(&request).as_deref() != Some(key.as_str())
            {
                return error(request, 401, "invalid write key");
            }
            match ingest(&mut request, ctx, &p["/v1/".len()..]) {
                Ok(n) => respond(
                    request,
                    200,
                    "application/json",
                    json!({"success": true, "accepted": n}).to_string(),
                ),
                Err((status, message)) => error(request, status, &message),
            }
        }
        _ => error(request, 404, "no such endpoint"),
    }
}

/// Logs the request's events durably; returns how many lines were logged.
fn ingest(request: &mut Request, ctx: &Ctx, endpoint: &str) -> Result<usize, (u16, String)> {
    let bad = |m: String| (400, m);
    let lines: Vec<Vec<u8>> = match endpoint {
        "track" | "identify" | "page" | "screen" | "alias" | "group" | "forget" => {
            let bytes = body(request, MAX_EVENT_BYTES).map_err(bad)?;
            let mut event: Value =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
            let Some(object) = event.as_object_mut() else {
                return Err(bad("the body must be a JSON object".into()));
            };
            if endpoint == "forget" || !object.contains_key("type") {
                object.insert("type".into(), Value::from(endpoint));
            }
            vec![serde_json::to_vec(&event).map_err(|e| bad(e.to_string()))?]
        }
        "batch" => {
            let bytes = body(request, MAX_BATCH_BYTES).map_err(bad)?;
            let body: Value =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
            let Some(events) = body.get("batch").and_then(Value::as_array) else {
                return Err(bad("the body must be {\"batch\": [...]}".into()));
            };
            let mut lines = Vec::with_capacity(events.len());
            for event in events {
                // each event is validated by the engine like any line (SPEC section 1)
                let line = serde_json::to_vec(event).map_err(|e| bad(e.to_string()))?;
                if line.len() > MAX_EVENT_BYTES {
                    return Err(bad(format!("an event over {MAX_EVENT_BYTES} bytes")));
                }
                lines.push(line);
            }
            lines
        }
        "ingest" => {
            let bytes = body(request, MAX_INGEST_BYTES).map_err(bad)?;
            bytes
                .split(|b| *b == b'\n')
                .filter(|l| !crate::io::source::is_blank(l))
                .map(<[u8]>::to_vec)
                .collect()
        }
        _ => return Err((404, format!("no such endpoint /v1/{endpoint}"))),
    };
    let wall_ms = engine::wall_clock_ms();
    let n = lines.len();
    let records = lines
        .into_iter()
        .map(|line| Record { wall_ms, line })
        .collect();
    ctx.log
        .append(records)
        .map_err(|e| (500, format!("cannot log the events: {e}")))?;
    Ok(n)
}

fn view(request: Request, ctx: &Ctx, name: &str) {
    let (name, subscribe) = match name.strip_suffix("/changes") {
        Some(view) => (view, true),
        None => (name, false),
    };
    if !ctx.spec.views.iter().any(|v| v.name == name) {
        return error(request, 404, &format!("no view named {name}"));
    }
    let Ok(mut live) = ctx.live.lock() else {
        return error(request, 500, "views unavailable");
    };
    if subscribe {
        let (snapshot, changes) = live.subscribe(name);
        drop(live);
        // a stream holds its connection for as long as the client stays: its own thread
        std::thread::spawn(move || stream_changes(request, &snapshot, &changes));
        return;
    }
    let lines = live.snapshot.lines_of(name);
    drop(live);
    let mut body = lines.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    respond(request, 200, "application/x-ndjson", body);
}

/// `GET /v1/views/{name}/changes`: the view's rows, then each change as it is published, as
/// chunked NDJSON (one line per chunk, flushed at once), until the client goes away or the
/// server stops.
fn stream_changes(
    request: Request,
    snapshot: &[String],
    changes: &crossbeam_channel::Receiver<String>,
) {
    let mut out = request.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n";
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut send = |line: &str| -> std::io::Result<()> {
        write!(out, "{:x}\r\n{line}\n\r\n", line.len() + 1)?;
        out.flush()
    };
    if snapshot.iter().any(|l| send(l).is_err()) {
        return;
    }
    while let Ok(line) = changes.recv() {
        if send(&line).is_err() {
            return;
        }
    }
    let _ = out.write_all(b"0\r\n\r\n");
}

fn metrics(ctx: &Ctx) -> String {
    let c = &ctx.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    for (name, help, value) in [
        ("throughline_lines_total", "Lines received", get(&c.lines)),
        (
            "throughline_events_accepted_total",
            "Events accepted",
            get(&c.accepted),
        ),
        (
            "throughline_duplicates_total",
            "Duplicates dropped",
            get(&c.duplicates),
        ),
        (
            "throughline_dead_letters_total",
            "Dead letters",
            get(&c.dead_letters),
        ),
        (
            "throughline_suppressed_total",
            "Events dropped for an erased identifier",
            get(&c.suppressed),
        ),
        (
            "throughline_changes_total",
            "View changes published",
            get(&c.changes),
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
    out.push_str(
        "# HELP throughline_view_rows Rows per view\n# TYPE throughline_view_rows gauge\n",
    );
    if let Ok(live) = ctx.live.lock() {
        for view in &ctx.spec.views {
            out.push_str(&format!(
                "throughline_view_rows{{view=\"{}\"}} {}\n",
                view.name,
                live.snapshot.count_of(&view.name)
            ));
        }
    }
    out
}
