//! The server's HTTP endpoints: Segment-compatible ingestion in front of the durable log,
//! and reads of the live views, profiles and metrics. (The wiring is in [`crate::server`].)
//!
//! A request is acknowledged (200) only after its events are appended to the log and the
//! log is fsynced; the log then forwards them to the engine in log order, so a restart that
//! replays the log reaches exactly the state the engine had.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use crossbeam_channel::Sender;
use serde_json::{Value, json};
use tiny_http::{Header, Request, Response, Server};

use crate::engine::{self, Counters};
use crate::event::residue::Residue;
use crate::event::{DeadReason, MAX_LINE_BYTES, identifiers, timestamp};
use crate::explain::Outcome;
use crate::explain::render::{self, Format};
use crate::io::route::{self, Route};
use crate::io::sink::{LiveViews, Subscription};
use crate::io::source::Message;
use crate::server::Compactor;
use crate::spec::Spec;
use crate::store::log::{Log, Record};

/// Largest accepted single event (decoded body), as Segment's API.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Largest accepted `/v1/batch` body (decoded), as Segment's API.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// Largest accepted `/v1/ingest` body (decoded).
pub const MAX_INGEST_BYTES: usize = 64 << 20;

/// What the endpoints share.
pub struct Ctx {
    /// The running dataflow spec.
    pub spec: Arc<Spec>,
    /// The event log (appends are acknowledged once fsynced).
    pub log: Log,
    /// Required HTTP Basic username, if set.
    pub write_key: Option<String>,
    /// Required by every GET but `/healthz` (Bearer token or Basic username), if set.
    pub read_key: Option<String>,
    /// The current views and their subscribers.
    pub live: Arc<Mutex<LiveViews>>,
    /// The engine's running totals.
    pub counters: Arc<Counters>,
    /// The engine's input channel, for profile lookups.
    pub lookups: Sender<Message>,
    /// Compaction of the log.
    pub compactor: Compactor,
}

/// Serves HTTP on `listen` with four handler threads until `stop` is set (SIGTERM/SIGINT).
pub fn listen(
    listen: &str,
    data_dir: &Path,
    ctx: Arc<Ctx>,
    stop: &Arc<AtomicBool>,
) -> Result<(), String> {
    let about = format!("data dir {}", data_dir.display());
    serve_with(listen, &about, stop, move |request| handle(request, &ctx))
}

/// A cluster's other processes: serves HTTP on `listen` by passing each request on to
/// `leader` (process 0) and copying its response back as it comes (streams included), until
/// `stop` is set.
pub fn proxy(listen: &str, leader: &str, stop: &Arc<AtomicBool>) -> Result<(), String> {
    let leader = leader.to_string();
    let about = format!("passing on to {leader}");
    serve_with(listen, &about, stop, move |request| {
        // a stream holds its connection as long as the client stays: a thread of its own
        let leader = leader.clone();
        std::thread::spawn(move || pass_on(request, &leader));
    })
}

/// Listens on `listen`, says so on stderr (with `about`), and hands each request to
/// `handle` on four threads until `stop` is set.
fn serve_with(
    listen: &str,
    about: &str,
    stop: &Arc<AtomicBool>,
    handle: impl Fn(Request) + Send + Sync + 'static,
) -> Result<(), String> {
    let server = Server::http(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = server
        .server_addr()
        .to_ip()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default();
    eprintln!("throughline: listening on {addr} ({about})");
    let (server, handle) = (Arc::new(server), Arc::new(handle));
    let handlers: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop, handle) =
                (Arc::clone(&server), Arc::clone(stop), Arc::clone(&handle));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(100)) {
                        // a panicking handler drops its request, which tiny_http answers
                        // with a 500; the thread lives on to serve the next one
                        let handled =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                handle(request);
                            }));
                        if handled.is_err() {
                            eprintln!(
                                "throughline: error: a request handler panicked (answered 500)"
                            );
                        }
                    }
                }
            })
        })
        .collect();
    for h in handlers {
        let _ = h.join();
    }
    Ok(())
}

/// Sends one request to `leader` and copies its raw response back to the client.
fn pass_on(mut request: Request, leader: &str) {
    let mut body = Vec::new();
    if request
        .as_reader()
        .take(MAX_INGEST_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .is_err()
    {
        return error(request, 400, "cannot read the body");
    }
    let mut upstream = match std::net::TcpStream::connect(leader) {
        Ok(s) => s,
        Err(e) => {
            return error(
                request,
                503,
                &format!("process 0 ({leader}) is unreachable: {e}"),
            );
        }
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {leader}\r\nConnection: close\r\nContent-Length: {}\r\n",
        request.method(),
        request.url(),
        body.len()
    );
    for h in request.headers() {
        let name = h.field.as_str().as_str();
        if !["host", "connection", "content-length", "transfer-encoding"]
            .iter()
            .any(|skip| name.eq_ignore_ascii_case(skip))
        {
            head.push_str(&format!("{name}: {}\r\n", h.value.as_str()));
        }
    }
    head.push_str("\r\n");
    if upstream
        .write_all(head.as_bytes())
        .and_then(|()| upstream.write_all(&body))
        .is_err()
    {
        return error(
            request,
            503,
            &format!("process 0 ({leader}) is unreachable"),
        );
    }
    // byte for byte and flushed as it comes, so a change subscription streams through
    let mut out = request.into_writer();
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = upstream.read(&mut buf) {
        if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
            break;
        }
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
    // a 503 is retryable: ask clients to come back shortly
    let retry: &[(&str, &str)] = if status == 503 {
        &[("Retry-After", "1")]
    } else {
        &[]
    };
    answer(request, status, message, retry);
}

/// A JSON error (`{"error": message}`) with extra headers.
fn answer(request: Request, status: u16, message: &str, headers: &[(&str, &str)]) {
    let body = json!({"error": message}).to_string();
    let mut response = Response::from_string(body).with_status_code(status);
    let all = std::iter::once(&("Content-Type", "application/json")).chain(headers);
    for (name, value) in all {
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response = response.with_header(h);
        }
    }
    let _ = request.respond(response);
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The HTTP Basic username, if any.
/// Whether a GET may read: no read key is set, or the request carries it as a Bearer token
/// or as the Basic username (compared in constant time).
fn may_read(request: &Request, ctx: &Ctx) -> bool {
    let Some(key) = ctx.read_key.as_deref() else {
        return true;
    };
    let bearer = header(request, "Authorization").and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::trim)
    });
    bearer.is_some_and(|b| key_matches(b, key))
        || basic_user(request).is_some_and(|u| key_matches(&u, key))
}

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

/// Reads the body (gunzipped if so encoded), refusing more than `limit` bytes: the limit
/// holds while reading, and after decompression, so a gzip bomb costs `limit` bytes and is a
/// 413. A body that cannot be read (bad gzip, a broken connection) is a 400.
fn body(request: &mut Request, limit: usize) -> Result<Vec<u8>, (u16, String)> {
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
    read.map_err(|e| (400, format!("cannot read the body: {e}")))?;
    if out.len() > limit {
        return Err((413, format!("body over {limit} bytes")));
    }
    Ok(out)
}

fn handle(mut request: Request, ctx: &Ctx) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let method = request.method().as_str().to_string();
    let route = route::route(&method, &path);
    if method == "GET" && route != Route::Healthz && !may_read(&request, ctx) {
        return answer(
            request,
            401,
            "a read key is required (Authorization: Bearer KEY)",
            &[("WWW-Authenticate", "Bearer realm=\"throughline\"")],
        );
    }
    match route {
        Route::NotFound => error(request, 404, "no such endpoint"),
        Route::MethodNotAllowed(allow) => answer(
            request,
            405,
            &format!("{method} is not allowed here (allowed: {allow})"),
            &[("Allow", allow)],
        ),
        Route::Healthz => match ctx.log.failed() {
            None => respond(request, 200, "text/plain", "ok\n".into()),
            Some(why) => respond(request, 503, "text/plain", format!("failed: {why}\n")),
        },
        Route::Metrics => respond(request, 200, "text/plain; version=0.0.4", metrics(ctx)),
        Route::View(name) => view(request, ctx, name, false),
        Route::Changes(name) => view(request, ctx, name, true),
        Route::Explain(id) => explain(request, ctx, id),
        Route::Profile(id) => profile(request, ctx, id),
        Route::Compact | Route::Ingest(_) => {
            let basic_ok = ctx
                .write_key
                .as_deref()
                .is_none_or(|key| basic_user(&request).is_some_and(|u| key_matches(&u, key)));
            // Segment's Node SDK sends the key as `writeKey` in the body instead (as
            // Segment's API allows for events): checked once the body is read
            let body_may_carry_key = matches!(
                route,
                Route::Ingest(
                    "batch" | "track" | "identify" | "page" | "screen" | "alias" | "group"
                )
            );
            if !basic_ok && !body_may_carry_key {
                return error(request, 401, "invalid write key");
            }
            if let Route::Ingest(endpoint) = route {
                return match ingest(&mut request, ctx, endpoint, basic_ok) {
                    Ok(n) => respond(
                        request,
                        200,
                        "application/json",
                        json!({"success": true, "accepted": n}).to_string(),
                    ),
                    Err((status, message)) => error(request, status, &message),
                };
            }
            match ctx.compactor.run(&ctx.log, &ctx.counters) {
                Ok(s) => respond(
                    request,
                    200,
                    "application/json",
                    json!({"success": true, "records": s.records, "reduced": s.reduced,
                           "bytes_before": s.bytes_before, "bytes_after": s.bytes_after})
                    .to_string(),
                ),
                Err(e) => error(request, 500, &e),
            }
        }
    }
}

/// Whether `given` is the write key, compared in constant time.
fn key_matches(given: &str, key: &str) -> bool {
    let (given, key) = (given.as_bytes(), key.as_bytes());
    given.len() == key.len() && given.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Logs the request's events durably; returns how many lines were logged. Without
/// `authorized` (no valid Basic credentials), the body's `writeKey` must be the key; it is
/// never logged.
fn ingest(
    request: &mut Request,
    ctx: &Ctx,
    endpoint: &str,
    authorized: bool,
) -> Result<usize, (u16, String)> {
    let bad = |m: String| (400, m);
    let check_key = |body: &mut serde_json::Map<String, Value>| {
        let given = body.remove("writeKey");
        if authorized {
            return Ok(());
        }
        match (
            given.as_ref().and_then(Value::as_str),
            ctx.write_key.as_deref(),
        ) {
            (Some(given), Some(key)) if key_matches(given, key) => Ok(()),
            _ => Err((401, "invalid write key".to_string())),
        }
    };
    let lines: Vec<Vec<u8>> = match endpoint {
        "track" | "identify" | "page" | "screen" | "alias" | "group" | "forget" => {
            let bytes = body(request, MAX_EVENT_BYTES)?;
            let mut event: Value =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
            let Some(object) = event.as_object_mut() else {
                return Err(bad("the body must be a JSON object".into()));
            };
            check_key(object)?;
            if endpoint == "forget" || !object.contains_key("type") {
                object.insert("type".into(), Value::from(endpoint));
            }
            vec![serde_json::to_vec(&event).map_err(|e| bad(e.to_string()))?]
        }
        "batch" => {
            let bytes = body(request, MAX_BATCH_BYTES)?;
            let mut body: Value =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON: {e}")))?;
            if let Some(object) = body.as_object_mut() {
                check_key(object)?;
            } else if !authorized {
                return Err((401, "invalid write key".into()));
            }
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
            let bytes = body(request, MAX_INGEST_BYTES)?;
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
        .map(|line| {
            let length = line.strip_suffix(b"\r").unwrap_or(&line).len();
            if length <= MAX_LINE_BYTES {
                return Record::line(wall_ms, line);
            }
            // logged as its dead letter: a record holds at most one line of the limit
            let dead = Residue::Dead {
                reason: DeadReason::LineTooLong,
                detail: format!("{} bytes", line.len()),
            };
            Record {
                wall_ms,
                line: dead.encode(),
                residue: true,
            }
        })
        .collect();
    ctx.log.append(records).map_err(|e| {
        // a full disk, or a log that stopped after a failed fsync: nothing was acknowledged,
        // and the same request succeeds later (SDKs retry a 503)
        (503, format!("cannot log the events: {e}"))
    })?;
    Ok(n)
}

fn view(request: Request, ctx: &Ctx, name: &str, subscribe: bool) {
    let sse = request.url().contains("format=sse")
        || header(&request, "Accept").is_some_and(|a| a.contains("text/event-stream"));
    if !ctx.spec.views.iter().any(|v| v.name == name) {
        return error(request, 404, &format!("no view named {name}"));
    }
    let Ok(mut live) = ctx.live.lock() else {
        return error(request, 500, "views unavailable");
    };
    if subscribe {
        let (snapshot, subscription) = live.subscribe(name);
        drop(live);
        // a stream holds its connection for as long as the client stays: its own thread
        std::thread::spawn(move || stream_changes(request, &snapshot, &subscription, sse));
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

/// `GET /v1/views/{name}/changes`: the view's rows, then each change as it is published,
/// until the client goes away or the server stops. Chunked NDJSON (one line per chunk,
/// flushed at once), or Server-Sent Events (`Accept: text/event-stream` or `?format=sse`:
/// one `data:` event per line). A subscriber that falls more than
/// [`crate::io::sink::SUBSCRIBER_QUEUE`] changes behind is sent an error line and dropped.
fn stream_changes(request: Request, snapshot: &[String], subscription: &Subscription, sse: bool) {
    let mut out = request.into_writer();
    let kind = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\r\n"
    );
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    let mut send = |line: &str| -> std::io::Result<()> {
        let chunk = if sse {
            format!("data: {line}\n\n")
        } else {
            format!("{line}\n")
        };
        write!(out, "{:x}\r\n{chunk}\r\n", chunk.len())?;
        out.flush()
    };
    if snapshot.iter().any(|l| send(l).is_err()) {
        return;
    }
    while let Ok(line) = subscription.changes.recv() {
        if send(&line).is_err() {
            return;
        }
    }
    if subscription.lagged() {
        let _ = send(
            &json!({"error": "this subscriber fell behind and was dropped; subscribe again"})
                .to_string(),
        );
    }
    let _ = out.write_all(b"0\r\n\r\n");
}

/// `GET /v1/profiles/{type}:{value}`: the profile the identifier belongs to, as the engine
/// has it after every line it has processed (404 when no event carried the identifier).
fn profile(request: Request, ctx: &Ctx, key: &str) {
    let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
    let ident = match identifiers::parse_key(&key, &ctx.spec.identity) {
        Ok(i) => i,
        Err(e) => return error(request, 400, &e),
    };
    let (reply, answer) = crossbeam_channel::bounded(1);
    if ctx.lookups.send(Message::Lookup(ident, reply)).is_err() {
        return error(request, 503, "the engine is not running");
    }
    match answer.recv() {
        Ok(Ok(Some(profile))) => respond(request, 200, "application/json", profile.to_string()),
        Ok(Ok(None)) => error(request, 404, &format!("no profile has {key}")),
        Ok(Err(e)) => error(request, 503, &e),
        Err(_) => error(request, 503, "the engine is not running"),
    }
}

/// The value of query parameter `name`, percent-decoded.
fn query_param(request: &Request, name: &str) -> Option<String> {
    let query = request.url().split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// `GET /v1/profiles/{type}:{value}/explain[?at=T][&format=json|text|dot]`: why the profile
/// of the identifier looks the way it does, at the current clock or at `at` (epoch ms or
/// RFC 3339; see `src/docs/explain.md`). 404 when no live event carries the identifier.
fn explain(request: Request, ctx: &Ctx, key: &str) {
    let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
    let ident = match identifiers::parse_key(&key, &ctx.spec.identity) {
        Ok(i) => i,
        Err(e) => return error(request, 400, &e),
    };
    let format = match query_param(&request, "format") {
        None => Format::Json,
        Some(name) => match Format::parse(&name) {
            Some(f) => f,
            None => return error(request, 400, "format must be json, text or dot"),
        },
    };
    let at = match query_param(&request, "at").map(|t| timestamp::parse_text(&t)) {
        None => None,
        Some(Ok(at)) => Some(at),
        Some(Err(e)) => return error(request, 400, &format!("at: {e}")),
    };
    let (reply, answer) = crossbeam_channel::bounded(1);
    if ctx
        .lookups
        .send(Message::Explain(ident, at, reply))
        .is_err()
    {
        return error(request, 503, "the engine is not running");
    }
    match answer.recv() {
        Ok((outcome, _)) => {
            let status = match outcome {
                Outcome::NotFound { .. } => 404,
                _ => 200,
            };
            respond(
                request,
                status,
                format.content_type(),
                render::render(&outcome, format),
            );
        }
        Err(_) => error(request, 503, "the engine is not running"),
    }
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
        (
            "throughline_forgets_total",
            "Forget requests carried out",
            get(&c.forgets),
        ),
        (
            "throughline_compactions_total",
            "Log compactions since start",
            ctx.compactor.count(),
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
    out.push_str(
        "# HELP throughline_view_rows Rows per view\n# TYPE throughline_view_rows gauge\n",
    );
    let name = "throughline_ingest_to_output_seconds";
    out.push_str(&format!(
        "# HELP {name} From an event's request to the publication of its changes\n# TYPE {name} histogram\n"
    ));
    let mut cumulative = 0;
    for (i, count) in c.latency.counts.iter().enumerate() {
        cumulative += get(count);
        let le = c
            .latency
            .bounds_us
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |b| (*b as f64 / 1e6).to_string());
        out.push_str(&format!("{name}_bucket{{le=\"{le}\"}} {cumulative}\n"));
    }
    out.push_str(&format!(
        "{name}_sum {}\n{name}_count {cumulative}\n",
        get(&c.latency.sum_us) as f64 / 1e6
    ));
    out.push_str(&format!(
        "# HELP throughline_log_bytes Event log size\n# TYPE throughline_log_bytes gauge\nthroughline_log_bytes {}\n",
        std::fs::metadata(ctx.log.path()).map_or(0, |m| m.len())
    ));
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
