//! The server's HTTP endpoints: Segment-compatible ingestion in front of the durable log,
//! and reads of the live views, profiles and metrics. (The wiring is in `server`;
//! connections, timeouts and limits in [`crate::io::transport`].)
//!
//! Each handler is a plain function from a [`Req`] (the head and the body, already read
//! within the route's limit) to a response. The transport runs it on a blocking thread,
//! so a handler may wait for the log's fsync or the engine's answer, and a panic in one is
//! a 500 while the server lives on.
//!
//! A request is acknowledged (200) only after its events are appended to the log and the
//! log is fsynced; the log then forwards them to the engine in log order, so a restart that
//! replays the log reaches exactly the state the engine had.

mod ingest;
mod reads;
pub mod views;

use ingest::ingest;
use reads::{explain, metrics, profile, view};

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use crossbeam_channel::RecvTimeoutError;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::engine::input::{EngineLink, Message};
use crate::engine::output::{LiveViews, Subscription};
use crate::engine::{self, Counters};
use crate::event::{identifiers, timestamp};
use crate::explain::Outcome;
use crate::explain::render::{self, Format};
use crate::io::console::{self, StatsHistory};
use crate::io::kafka::FollowStatus;
use crate::io::route::{self, Route};
use crate::io::sink::SinkStatus;
use crate::io::transport::{self, Body};
use crate::spec::Spec;
use crate::store::compactor::Compactor;
use crate::store::log::{Log, Record};

/// Largest accepted single event (decoded body), as Segment's API.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Largest accepted `/v1/batch` body (decoded), as Segment's API.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// Largest accepted `/v1/ingest` body (decoded).
pub const MAX_INGEST_BYTES: usize = 64 << 20;
/// Largest body of any other request (reads and compaction carry none).
pub const MAX_OTHER_BYTES: usize = 64 * 1024;
/// How long a change stream waits for a client that does not read before dropping it.
const STREAM_STALL: Duration = Duration::from_secs(30);

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
    /// The engine's input channel, for profile lookups (a rebuild's switch-over links it
    /// to the new engine).
    pub lookups: EngineLink,
    /// Compaction of the log.
    pub compactor: Compactor,
    /// Set on SIGTERM/SIGINT: change streams end.
    pub stop: Arc<AtomicBool>,
    /// The Kafka topic followed into the log (`serve --source`), if any.
    pub kafka: Option<Arc<FollowStatus>>,
    /// The sinks (`--sink`, `--upsert`): what each delivered and owes.
    pub sinks: Vec<Arc<SinkStatus>>,
    /// The last minutes of the engine's counters, for the console.
    pub stats: StatsHistory,
    /// The replay of the log at start: reads wait for it.
    pub recovery: Recovery,
    /// Views changed while running (`serve`; `None` where views cannot change).
    pub views: Option<Arc<views::Views>>,
    /// Rebuilds for a whole new spec (`PUT /v1/spec`; `None` where there are none).
    pub rebuilds: Option<Arc<dyn views::Rebuilds>>,
}

/// A starting server's replay of its log. The server listens and acknowledges ingestion
/// from the start (appends are logged and fsynced as always, and applied after the
/// replay); reads answer `503` with `Retry-After` until the engine has replayed, and
/// published, every line the log held.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Lines the log held at the start.
    pub lines: u64,
    /// Set once they are all replayed and published.
    pub done: AtomicBool,
    /// Set while the views changed while running are still being changed again (the last
    /// of them may follow the log's last line).
    pub views_pending: AtomicBool,
}

impl Ctx {
    /// The spec running now: views changed while running and rebuilds included.
    pub fn spec_now(&self) -> Arc<Spec> {
        self.views
            .as_ref()
            .and_then(|v| v.spec())
            .unwrap_or_else(|| Arc::clone(&self.spec))
    }

    /// `Some((replayed, of))` while the log's lines are being replayed, else `None`.
    pub fn recovering(&self) -> Option<(u64, u64)> {
        if self.recovery.done.load(Ordering::Acquire) {
            return None;
        }
        let replayed = self.counters.lines.load(Ordering::Acquire);
        if replayed >= self.recovery.lines && !self.recovery.views_pending.load(Ordering::Acquire) {
            self.recovery.done.store(true, Ordering::Release);
            return None;
        }
        Some((replayed, self.recovery.lines))
    }
}

/// A request as the handlers see it: its head, and its body as sent (still gzipped if so
/// encoded), read in full within [`body_limit`] of its route.
pub struct Req {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path, without the query string (still percent-encoded).
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The request's headers.
    pub headers: HeaderMap,
    /// The body as received.
    pub body: Bytes,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The value of query parameter `name`, percent-decoded.
    fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then(|| {
                percent_encoding::percent_decode_str(value)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }
}

/// The most body bytes (as sent, before any gunzip) read for a request to `path` with
/// `method`: the ingestion endpoints' limits, and [`MAX_OTHER_BYTES`] for the rest. A
/// longer body is a 413 before it is read further.
pub fn body_limit(method: &str, path: &str) -> usize {
    match route::route(method, path) {
        Route::Ingest("batch") => MAX_BATCH_BYTES,
        Route::Ingest("ingest") => MAX_INGEST_BYTES,
        Route::Ingest(_) => MAX_EVENT_BYTES,
        _ => MAX_OTHER_BYTES,
    }
}

/// A response with a body of `content_type`.
fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    with_headers(status, &[("Content-Type", content_type)], body.into())
}

/// A JSON error (`{"error": message}`); a 503 asks clients to retry after a second.
pub fn error(status: u16, message: &str) -> Response<Body> {
    let retry: &[(&str, &str)] = if status == 503 {
        &[("Retry-After", "1")]
    } else {
        &[]
    };
    answer(status, message, retry)
}

/// A JSON error (`{"error": message}`) with extra headers.
fn answer(status: u16, message: &str, headers: &[(&str, &str)]) -> Response<Body> {
    let body = json!({"error": message}).to_string();
    let all: Vec<_> = std::iter::once(("Content-Type", "application/json"))
        .chain(headers.iter().copied())
        .collect();
    with_headers(status, &all, body.into())
}

fn with_headers(status: u16, headers: &[(&str, &str)], body: Bytes) -> Response<Body> {
    let mut response = Response::new(transport::full(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    response
}

/// Whether a GET may read: no read key is set, or the request carries it as a Bearer token
/// or as the Basic username (compared in constant time).
fn may_read(request: &Req, ctx: &Ctx) -> bool {
    let Some(key) = ctx.read_key.as_deref() else {
        return true;
    };
    let bearer = request.header("Authorization").and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::trim)
    });
    bearer.is_some_and(|b| key_matches(b, key))
        || basic_user(request).is_some_and(|u| key_matches(&u, key))
}

/// The HTTP Basic username, if any.
fn basic_user(request: &Req) -> Option<String> {
    let value = request.header("Authorization")?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next().unwrap_or("").to_string())
}

/// The body, gunzipped if so encoded, refusing more than `limit` bytes after decompression
/// too, so a gzip bomb costs `limit` bytes and is a 413. Bad gzip is a 400.
fn body(request: &Req, limit: usize) -> Result<Vec<u8>, (u16, String)> {
    let gzip = request
        .header("Content-Encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        if request.body.len() > limit {
            return Err((413, format!("body over {limit} bytes")));
        }
        return Ok(request.body.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&request.body[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| (400, format!("cannot read the body: {e}")))?;
    if out.len() > limit {
        return Err((413, format!("body over {limit} bytes")));
    }
    Ok(out)
}

/// Answers one request.
pub fn handle(request: &Req, ctx: &Ctx) -> Response<Body> {
    // the tests make a handler panic here (`FAILPOINTS=http::handle=1*panic`)
    fail::fail_point!("http::handle");
    let method = request.method.as_str();
    let route = route::route(method, &request.path);
    if method == "GET" && route != Route::Healthz && !may_read(request, ctx) {
        // a browser asks its user for Basic credentials (the key as the username) and then
        // sends them with the console's own requests; API clients use a Bearer token
        let challenge = match route {
            Route::Console(_) => "Basic realm=\"throughline\", charset=\"UTF-8\"",
            _ => "Bearer realm=\"throughline\"",
        };
        return answer(
            401,
            "a read key is required (Authorization: Bearer KEY, or Basic with the key as the username)",
            &[("WWW-Authenticate", challenge)],
        );
    }
    let waits_for_recovery = matches!(
        route,
        Route::View(_)
            | Route::Changes(_)
            | Route::Explain(_)
            | Route::Profile(_)
            | Route::Compact
            | Route::PutView(_)
            | Route::DeleteView(_)
            | Route::PreviewView(_)
            | Route::PutSpec
    );
    if waits_for_recovery && let Some((replayed, of)) = ctx.recovering() {
        return answer(
            503,
            &format!("recovering: {replayed} of {of} logged lines replayed; retry shortly"),
            &[("Retry-After", "1")],
        );
    }
    match route {
        Route::NotFound => error(404, "no such endpoint"),
        Route::MethodNotAllowed(allow) => answer(
            405,
            &format!("{method} is not allowed here (allowed: {allow})"),
            &[("Allow", allow)],
        ),
        Route::Healthz => healthz(ctx),
        Route::Console(path) => match console::asset(path) {
            Some((kind, body)) => with_headers(
                200,
                &[
                    ("Content-Type", kind),
                    ("Cache-Control", "no-cache"),
                    ("X-Content-Type-Options", "nosniff"),
                    ("X-Frame-Options", "DENY"),
                    (
                        "Content-Security-Policy",
                        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                    ),
                ],
                Bytes::from_static(body.as_bytes()),
            ),
            None => error(404, "no such console page"),
        },
        Route::Stats => {
            let mut stats = console::stats(
                &ctx.spec_now(),
                &ctx.live,
                &ctx.counters,
                &ctx.stats,
                console::Storage {
                    log_bytes: std::fs::metadata(ctx.log.path()).map_or(0, |m| m.len()),
                    kinds: ctx.log.kinds(),
                    last_compaction: ctx.compactor.last(),
                    recovering: ctx.recovering(),
                },
                &ctx.sinks,
            );
            if let Some(rebuild) = ctx.rebuilds.as_ref().and_then(|r| r.progress()) {
                stats["rebuild"] = rebuild;
            }
            respond(200, "application/json", stats.to_string())
        }
        Route::Metrics => respond(200, "text/plain; version=0.0.4", metrics(ctx)),
        Route::View(name) => view(request, ctx, name, false),
        Route::Changes(name) => view(request, ctx, name, true),
        Route::Explain(id) => explain(request, ctx, id),
        Route::Profile(id) => profile(ctx, id),
        Route::Spec => match ctx.views.as_ref().and_then(|v| v.text()) {
            Some(text) => respond(200, "application/toml", text),
            None => error(404, "this server does not change its spec"),
        },
        Route::PutSpec => {
            if !has_write_key(request, ctx) {
                return error(401, "invalid write key");
            }
            match body(request, MAX_OTHER_BYTES) {
                Ok(body) => {
                    let inexact = request.query_param("inexact").as_deref() == Some("accept");
                    views::put_spec(ctx, &body, inexact)
                }
                Err((status, message)) => error(status, &message),
            }
        }
        Route::PutView(name) | Route::DeleteView(name) | Route::PreviewView(name) => {
            if !has_write_key(request, ctx) {
                return error(401, "invalid write key");
            }
            let body = match route {
                Route::PutView(_) | Route::PreviewView(_) => match body(request, MAX_OTHER_BYTES) {
                    Ok(body) => Some(body),
                    Err((status, message)) => return error(status, &message),
                },
                _ => None,
            };
            match (route, body) {
                (Route::PreviewView(_), Some(body)) => views::preview(ctx, name, &body),
                (_, body) => views::change(ctx, name, body.as_deref()),
            }
        }
        Route::Compact | Route::Ingest(_) => {
            let basic_ok = has_write_key(request, ctx);
            // Segment's Node SDK sends the key as `writeKey` in the body instead (as
            // Segment's API allows for events): checked once the body is parsed
            let body_may_carry_key = matches!(
                route,
                Route::Ingest(
                    "batch" | "track" | "identify" | "page" | "screen" | "alias" | "group"
                )
            );
            if !basic_ok && !body_may_carry_key {
                return error(401, "invalid write key");
            }
            if let Route::Ingest(endpoint) = route {
                return match ingest(request, ctx, endpoint, basic_ok) {
                    Ok(n) => respond(
                        200,
                        "application/json",
                        json!({"success": true, "accepted": n}).to_string(),
                    ),
                    Err((status, message)) => error(status, &message),
                };
            }
            match ctx.compactor.run(&ctx.log, &ctx.counters) {
                Ok(s) => respond(
                    200,
                    "application/json",
                    json!({"success": true, "records": s.records, "reduced": s.reduced,
                           "bytes_before": s.bytes_before, "bytes_after": s.bytes_after})
                    .to_string(),
                ),
                Err(e) => error(500, &e),
            }
        }
    }
}

/// `GET /healthz`: 200 `ok`, or 503 once the log has stopped after a failed fsync. While the
/// server replays its log at start it is 200 `recovering N/M` (N of the M logged lines
/// replayed): ingestion works, reads answer 503 until it is done. While a
/// followed Kafka topic cannot be read (a broker away), or a sink does not deliver, it stays
/// 200 with a line per problem (`degraded: …`): ingestion and reads still work (ingestion
/// until a sink's backlog is full).
pub fn healthz(ctx: &Ctx) -> Response<Body> {
    if let Some(why) = ctx.log.failed() {
        return respond(503, "text/plain", format!("failed: {why}\n"));
    }
    let mut body = match ctx.recovering() {
        Some((replayed, of)) => format!("recovering {replayed}/{of}\n"),
        None => "ok\n".to_string(),
    };
    if let Some(why) = ctx
        .kafka
        .as_ref()
        .and_then(|k| k.failing.lock().ok().and_then(|f| f.clone()))
    {
        body.push_str(&format!("degraded: {why} (retrying)\n"));
    }
    for problem in ctx.sinks.iter().filter_map(|s| s.problem()) {
        body.push_str(&format!("degraded: {problem}\n"));
    }
    if let Some(line) = ctx.rebuilds.as_ref().and_then(|r| r.line()) {
        body.push_str(&line);
        body.push('\n');
    }
    respond(200, "text/plain", body)
}

/// Whether the request carries the write key as its Basic username (or none is set).
fn has_write_key(request: &Req, ctx: &Ctx) -> bool {
    ctx.write_key
        .as_deref()
        .is_none_or(|key| basic_user(request).is_some_and(|u| key_matches(&u, key)))
}

/// Whether `given` is the write key, compared in constant time.
fn key_matches(given: &str, key: &str) -> bool {
    let (given, key) = (given.as_bytes(), key.as_bytes());
    given.len() == key.len() && given.iter().zip(key).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}
