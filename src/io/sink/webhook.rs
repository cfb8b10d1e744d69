//! A webhook destination: `--sink 'webhook+https://HOST[:PORT]/PATH?view=V'` (or
//! `webhook+http://…`) posts the change stream to an HTTP endpoint in signed JSON batches,
//! at least once.
//!
//! `webhook+https://` speaks TLS ([`crate::io::tls`]): the receiver's certificate must be
//! trusted by the system or by `ca=FILE` (PEM), and must name the address's host.
//!
//! # Batches
//!
//! The sink takes the published groups of changes ([`super::Group`]) as they come and posts
//! them once they hold `batch=N` changes (default 500) or the oldest has waited `linger_ms=T`
//! (default 100). What it posts at once, a *span* of whole groups, is cut into batches of one
//! view each, at most N changes, in the change stream's order: a profile's changes in a
//! view arrive in order, in one batch or in consecutive ones. A batch is posted as
//!
//! ```json
//! {"view":"marketing_audience","idempotency_key":"…","position":1200,
//!  "times":[1767225600000,1767225600412],"keys":["email:a@x.io","user_id:u9"],
//!  "changes":[{"time":1767225600000,"view":"marketing_audience","key":"email:a@x.io","diff":1,"row":{…}},…]}
//! ```
//!
//! with the headers `Idempotency-Key` (the same as in the body) and
//! `X-Throughline-Signature: sha256=HEX`, the HMAC-SHA256 of the exact body bytes under the
//! secret in the environment variable `THROUGHLINE_WEBHOOK_SECRET` (or the one named by
//! `secret_env=`). A receiver verifies a batch by computing the same HMAC over the raw body
//! it read and comparing it, in constant time, with the header's hex; then it applies the
//! batch unless it has seen its idempotency key.
//!
//! # At least once, and the same batch every time
//!
//! The idempotency key names a batch by its view, the position its span ends at (the input
//! lines the engine had taken when it published the span's last group), its place among
//! the span's batches of that view, and its range of keys and engine times. Before it posts
//! a span, the sink saves where the span ends (`sink-changes.spans` in `serve`'s data
//! directory), and the sink layer saves every group's position
//! ([`super::Destination::sends_again`]). After a crash the replay ends groups at exactly
//! those positions, and the sink posts the spans it owes again with exactly the same
//! groups, so a batch posted again is the same batch with the same key: a receiver that
//! keeps the keys it applied applies every change once. The position is confirmed (and
//! saved) once every batch of a span is taken.
//!
//! # Failures
//!
//! A `2xx` answer confirms a batch. A `408`, `429` or `5xx`, a timeout (`timeout_ms=`,
//! default 10 s), a refused or broken connection is retried with exponential backoff and
//! full jitter (from 100 ms up to 30 s), or after `Retry-After` seconds when the answer
//! says so; `/healthz` says `degraded` meanwhile, and the rest of the server goes on. Any
//! other answer is permanent: the batch, the status and the start of the response go to the
//! dead-letter file (`dead=PATH`; `serve` keeps it in its data directory), and delivery
//! goes on with the next batch.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use sha2::Sha256;

use super::{Destination, Group, Progress};
use crate::engine::output::Change;

/// The environment variable holding the signing secret, unless `secret_env=` names another.
pub const SECRET_ENV: &str = "THROUGHLINE_WEBHOOK_SECRET";

/// Changes per batch, unless `batch=` says otherwise.
const DEFAULT_BATCH: usize = 500;
/// How long a change waits for more to fill its batch, unless `linger_ms=` says otherwise.
const DEFAULT_LINGER: Duration = Duration::from_millis(100);
/// How long a post may take, unless `timeout_ms=` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first retry's longest wait, and the longest of any.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How much of a refusing answer's body the dead-letter file keeps.
const RESPONSE_KEPT: usize = 4096;

/// A parsed `webhook+http://` or `webhook+https://` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// Whether it is `webhook+https://`.
    pub tls: bool,
    /// `HOST` (a name or an IPv4 address).
    pub host: String,
    /// `PORT` (80 when absent; 443 with https).
    pub port: u16,
    /// The path posted to, with its query (the sink's own settings removed).
    pub path: String,
    /// The views delivered (`view=A,B`); all when empty.
    pub views: Vec<String>,
    /// Most changes per batch (`batch=`).
    pub batch: usize,
    /// Longest a post may take (`timeout_ms=`).
    pub timeout: Duration,
    /// Longest a change waits for more to fill its batch (`linger_ms=`).
    pub linger: Duration,
    /// The environment variable holding the secret (`secret_env=`).
    pub secret_env: String,
    /// The dead-letter file (`dead=`), when set in the address.
    pub dead: Option<PathBuf>,
    /// Certificates trusted besides the system's (`ca=`, a PEM file; https only).
    pub ca: Option<PathBuf>,
}

impl WebhookUrl {
    /// Whether `text` is meant as a webhook address.
    pub fn is_webhook(text: &str) -> bool {
        text.starts_with("webhook+")
    }

    /// An output option (`--sink`) as a webhook address, when it is one.
    pub fn in_path(path: Option<&Path>) -> Option<&str> {
        path.and_then(|p| p.to_str())
            .filter(|p| WebhookUrl::is_webhook(p))
    }

    /// Parses `webhook+http[s]://HOST[:PORT]/PATH[?view=V&batch=N&linger_ms=L&timeout_ms=T&secret_env=E&dead=F&ca=F]`.
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        let bad = |why: &str| {
            format!(
                "{text}: {why} (expected webhook+https://HOST[:PORT]/PATH[?view=V&batch=N] or webhook+http://…)"
            )
        };
        let (tls, rest) = match (
            text.strip_prefix("webhook+https://"),
            text.strip_prefix("webhook+http://"),
        ) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => return Err(bad("not a webhook+http(s):// address")),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => rest.split_at(at),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| bad("a bad port"))?),
            None => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let mut url = WebhookUrl {
            tls,
            host: host.to_string(),
            port,
            path: path.to_string(),
            views: Vec::new(),
            batch: DEFAULT_BATCH,
            timeout: DEFAULT_TIMEOUT,
            linger: DEFAULT_LINGER,
            secret_env: SECRET_ENV.to_string(),
            dead: None,
            ca: None,
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = |what: &str| -> Result<u64, String> {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(&format!("{what} is a positive whole number")))
            };
            match key {
                "view" => url.views.extend(value.split(',').map(str::to_string)),
                "batch" => url.batch = number("batch")? as usize,
                "timeout_ms" => url.timeout = Duration::from_millis(number("timeout_ms")?),
                "linger_ms" => {
                    url.linger = Duration::from_millis(
                        value
                            .parse()
                            .map_err(|_| bad("linger_ms is a whole number"))?,
                    )
                }
                "secret_env" => url.secret_env = value.to_string(),
                "dead" => url.dead = Some(PathBuf::from(value)),
                "ca" if tls => url.ca = Some(PathBuf::from(value)),
                "ca" => return Err(bad("ca= is for webhook+https:// addresses")),
                _ => kept.push(pair),
            }
        }
        if !kept.is_empty() {
            url.path = format!("{}?{}", url.path, kept.join("&"));
        }
        Ok(url)
    }

    /// The destination's name: the address without the sink's settings.
    pub fn name(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!(
            "webhook+{scheme}://{}:{}{}",
            self.host, self.port, self.path
        )
    }
}

/// An HTTP/1.1 client connection over `stream`, its connection task spawned.
async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One batch, ready to post.
struct Prepared {
    key: String,
    /// Shared by every attempt (a retry copies nothing).
    body: Bytes,
    changes: u64,
}

/// A span of groups being posted: its end (the last group's position) and its batches.
struct Sending {
    end: u64,
    batches: Vec<Prepared>,
    /// Batches accepted (or refused for good) so far.
    done: usize,
}

/// How a post ended.
enum Posted {
    /// A `2xx`.
    Accepted,
    /// A permanent refusal: the status and the start of the body.
    Refused(u16, String),
}

/// Where the ends of the spans posted are saved, so that a restart posts the same spans.
struct Spans {
    path: PathBuf,
    file: File,
    entries: usize,
    /// The latest ends recorded.
    recent: VecDeque<u64>,
}

/// Span ends a file may hold before it is rewritten with only the latest
/// [`SPANS_RECENT`].
const SPANS_KEPT: usize = 4096;
/// Span ends a rewrite keeps: those whose confirmation the sink layer may not have saved
/// yet (it saves at most every 100 ms) must be owed again after a crash.
const SPANS_RECENT: usize = 1024;

impl Spans {
    /// Opens the file at `path`: the ends after `confirmed` it holds, in order (the spans
    /// the last run may have posted without seeing them confirmed), rewritten to just those.
    fn open(path: &Path, confirmed: u64) -> Result<(Spans, VecDeque<u64>), String> {
        let owed: VecDeque<u64> = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.trim().parse::<u64>().ok())
                .filter(|end| *end > confirmed)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VecDeque::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let ends: Vec<u64> = owed.iter().copied().collect();
        let spans = Spans::rewrite(path, &ends)?;
        Ok((spans, owed))
    }

    /// Replaces the file at `path` with `ends`, atomically.
    fn rewrite(path: &Path, ends: &[u64]) -> Result<Spans, String> {
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        let fresh = path.with_extension("new");
        let mut file = File::create(&fresh).map_err(fail)?;
        let text: String = ends.iter().map(|e| format!("{e}\n")).collect();
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&fresh, path))
            .map_err(fail)?;
        let file = OpenOptions::new().append(true).open(path).map_err(fail)?;
        Ok(Spans {
            path: path.to_path_buf(),
            file,
            entries: ends.len(),
            recent: ends.iter().copied().collect(),
        })
    }

    /// Saves `end` durably, before its span is posted; a rewrite keeps the latest ends.
    fn record(&mut self, end: u64) -> Result<(), String> {
        if self.entries >= SPANS_KEPT {
            let recent: Vec<u64> = self.recent.iter().copied().collect();
            *self = Spans::rewrite(&self.path, &recent)?;
        }
        if self.recent.len() >= SPANS_RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(end);
        writeln!(self.file, "{end}")
            .and_then(|()| self.file.sync_data())
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        self.entries += 1;
        Ok(())
    }
}

/// The webhook, driven by its sink's thread.
pub struct WebhookDestination {
    url: WebhookUrl,
    secret: Vec<u8>,
    runtime: tokio::runtime::Runtime,
    connection: Option<SendRequest<Full<Bytes>>>,
    /// With https: the TLS client and the name the receiver's certificate must hold.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    dead_path: PathBuf,
    dead: Option<File>,
    /// Groups taken and not yet posted, in order.
    buffer: VecDeque<Group>,
    /// When the oldest change not yet confirmed was taken.
    oldest: Option<Instant>,
    /// The span being posted.
    sending: Option<Sending>,
    /// Where span ends are saved (`serve`); spans the last run may have posted, owed again.
    spans: Option<Spans>,
    owed: VecDeque<u64>,
    /// No post before this instant (a backoff, or `Retry-After`).
    retry_at: Option<Instant>,
    backoff: Duration,
    jitter: u64,
    confirmed: u64,
    delivered: u64,
    refusals: u64,
}

impl WebhookDestination {
    /// The destination of `url`, signing with the secret in its environment variable and
    /// writing refused batches to `dead` unless the address names a file. `spans`: where
    /// the ends of the spans posted are saved, and the position confirmed before (`serve`,
    /// so that a restart posts the same batches again).
    pub fn open(
        url: &WebhookUrl,
        dead: &Path,
        spans: Option<(&Path, u64)>,
    ) -> Result<WebhookDestination, String> {
        let secret = std::env::var(&url.secret_env).map_err(|_| {
            format!(
                "{}: set the signing secret in the environment variable {} (a receiver verifies each batch with it)",
                url.name(),
                url.secret_env
            )
        })?;
        if secret.is_empty() {
            return Err(format!("{}: {} is empty", url.name(), url.secret_env));
        }
        let tls = match url.tls {
            true => {
                let config = crate::io::tls::client_config(url.ca.as_deref())
                    .map_err(|e| format!("{}: {e}", url.name()))?;
                let name = ServerName::try_from(url.host.clone())
                    .map_err(|e| format!("{}: not a TLS server name: {e}", url.name()))?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
            false => None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("{}: cannot start its HTTP client: {e}", url.name()))?;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let (spans, owed, confirmed) = match spans {
            Some((path, confirmed)) => {
                let (spans, owed) = Spans::open(path, confirmed)?;
                (Some(spans), owed, confirmed)
            }
            None => (None, VecDeque::new(), 0),
        };
        Ok(WebhookDestination {
            dead_path: url.dead.clone().unwrap_or_else(|| dead.to_path_buf()),
            url: url.clone(),
            secret: secret.into_bytes(),
            runtime,
            connection: None,
            tls,
            dead: None,
            buffer: VecDeque::new(),
            oldest: None,
            sending: None,
            spans,
            owed,
            retry_at: None,
            backoff: FIRST_BACKOFF,
            jitter: seed,
            confirmed,
            delivered: 0,
            refusals: 0,
        })
    }

    /// Changes taken and not yet posted.
    fn buffered(&self) -> usize {
        self.buffer.iter().map(|g| g.changes.len()).sum()
    }

    /// The end of the next span to post, if one is due: the next span owed from before a
    /// restart once every group of it is here, else every group taken once they hold a
    /// batch's worth or the oldest has waited `linger` (or at once with `all`), saved
    /// before it is posted.
    fn next_span(&mut self, all: bool) -> Result<Option<u64>, String> {
        let Some(last) = self.buffer.back().map(|g| g.position) else {
            return Ok(None);
        };
        if let Some(&end) = self.owed.front() {
            return Ok((last >= end || all).then_some(end.min(last)));
        }
        let lingered = self.oldest.is_some_and(|t| t.elapsed() >= self.url.linger);
        if !(all || lingered || self.buffered() >= self.url.batch) {
            return Ok(None);
        }
        if let Some(spans) = &mut self.spans {
            spans.record(last)?;
        }
        Ok(Some(last))
    }

    /// Posts what is due (everything with `all`): each span's batches in order, one span
    /// at a time. An error is the post that failed; it is retried after a backoff.
    fn flush(&mut self, all: bool) -> Result<(), String> {
        loop {
            if self.sending.is_none() {
                let Some(end) = self.next_span(all)? else {
                    return Ok(());
                };
                let mut groups = Vec::new();
                while let Some(group) = self.buffer.pop_front_if(|g| g.position <= end) {
                    groups.push(group);
                }
                let batches = self.prepare(&groups, end);
                self.sending = Some(Sending {
                    end,
                    batches,
                    done: 0,
                });
            }
            if let Some(at) = self.retry_at {
                if Instant::now() < at && !all {
                    return Ok(());
                }
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                self.retry_at = None;
            }
            self.post_span()?;
        }
    }

    /// Posts the batches of the span being sent; once all are taken, it is confirmed.
    fn post_span(&mut self) -> Result<(), String> {
        let Some(mut sending) = self.sending.take() else {
            return Ok(());
        };
        while let Some(batch) = sending.batches.get(sending.done) {
            match self.post(batch) {
                Ok(Posted::Accepted) => {
                    self.delivered += batch.changes;
                    self.backoff = FIRST_BACKOFF;
                }
                Ok(Posted::Refused(status, response)) => {
                    self.dead_letter(batch, status, &response)?;
                    self.refusals += 1;
                    eprintln!(
                        "throughline: {}: a batch of {} changes was refused ({status}): written to {}",
                        self.url.name(),
                        batch.changes,
                        self.dead_path.display()
                    );
                }
                Err((why, asked)) => {
                    let wait = asked.unwrap_or_else(|| self.next_backoff());
                    self.retry_at = Some(Instant::now() + wait);
                    self.sending = Some(sending);
                    return Err(format!("{}: {why}", self.url.name()));
                }
            }
            sending.done += 1;
        }
        if self.owed.front() == Some(&sending.end) {
            self.owed.pop_front();
        }
        self.confirmed = self.confirmed.max(sending.end);
        self.oldest = (!self.buffer.is_empty()).then(Instant::now);
        Ok(())
    }

    /// The batches of a span of `groups` ending at `end`: per view this webhook takes, its
    /// changes in order, at most `batch` each.
    fn prepare(&self, groups: &[Group], end: u64) -> Vec<Prepared> {
        let changes = || groups.iter().flat_map(|g| &g.changes);
        let mut views: Vec<&str> = changes().map(|c| c.view.as_str()).collect();
        views.sort_unstable();
        views.dedup();
        views.retain(|v| self.url.views.is_empty() || self.url.views.iter().any(|w| w == v));
        let mut batches = Vec::new();
        for view in views {
            let of_view: Vec<&Change> = changes().filter(|c| c.view == view).collect();
            for (index, chunk) in of_view.chunks(self.url.batch).enumerate() {
                let key = idempotency_key(view, end, index, chunk);
                batches.push(Prepared {
                    body: Bytes::from(body_of(view, &key, end, chunk)),
                    key,
                    changes: chunk.len() as u64,
                });
            }
        }
        batches
    }

    /// Posts `batch`: accepted or refused for good, or an error to retry (with the wait the
    /// answer asked for, if any).
    fn post(&mut self, batch: &Prepared) -> Result<Posted, (String, Option<Duration>)> {
        let signature = sign(&self.secret, &batch.body);
        let request = hyper::Request::post(self.url.path.as_str())
            .header(
                hyper::header::HOST,
                format!("{}:{}", self.url.host, self.url.port),
            )
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", batch.key.as_str())
            .header("X-Throughline-Signature", format!("sha256={signature}"))
            .body(Full::new(batch.body.clone()))
            .map_err(|e| (format!("cannot make the request: {e}"), None))?;
        let (host, port, timeout) = (self.url.host.clone(), self.url.port, self.url.timeout);
        let reuse = self.connection.take().filter(|c| !c.is_closed());
        let tls = self.tls.clone();
        let exchange = async move {
            let mut sender = match reuse {
                Some(sender) => sender,
                None => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
                        .await
                        .map_err(|e| format!("cannot connect: {e}"))?;
                    let _ = stream.set_nodelay(true);
                    match tls {
                        Some((connector, name)) => {
                            let stream = connector
                                .connect(name, stream)
                                .await
                                .map_err(|e| format!("TLS handshake failed: {e}"))?;
                            handshake(stream).await?
                        }
                        None => handshake(stream).await?,
                    }
                }
            };
            sender
                .ready()
                .await
                .map_err(|e| format!("the connection broke: {e}"))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("no answer: {e}"))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((sender, status, retry_after, body))
        };
        let outcome = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, exchange).await });
        let (sender, status, retry_after, body) = match outcome {
            Ok(Ok(answer)) => answer,
            Ok(Err(why)) => return Err((why, None)),
            Err(_) => {
                return Err((format!("no answer within {} ms", timeout.as_millis()), None));
            }
        };
        self.connection = Some(sender);
        match status {
            200..=299 => Ok(Posted::Accepted),
            408 | 429 | 500..=599 => Err((format!("answered {status}"), retry_after)),
            _ => {
                let kept = body
                    .get(..body.len().min(RESPONSE_KEPT))
                    .unwrap_or_default();
                Ok(Posted::Refused(
                    status,
                    String::from_utf8_lossy(kept).into_owned(),
                ))
            }
        }
    }

    /// Writes a refused batch to the dead-letter file, durably.
    fn dead_letter(&mut self, batch: &Prepared, status: u16, response: &str) -> Result<(), String> {
        if self.dead.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.dead_path)
                .map_err(|e| format!("cannot open {}: {e}", self.dead_path.display()))?;
            self.dead = Some(file);
        }
        let line = serde_json::json!({
            "destination": self.url.name(),
            "status": status,
            "response": response,
            "idempotency_key": batch.key,
            "batch": serde_json::from_slice::<serde_json::Value>(&batch.body).unwrap_or_default(),
        });
        let path = self.dead_path.display().to_string();
        let file = self
            .dead
            .as_mut()
            .ok_or("internal error: no dead-letter file")?;
        writeln!(file, "{line}")
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("cannot write {path}: {e}"))
    }

    /// The next backoff: full jitter over the current bound, which then doubles.
    fn next_backoff(&mut self) -> Duration {
        // xorshift64: jitter needs no cryptographic quality
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let bound = self.backoff.as_millis().max(1) as u64;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Duration::from_millis(self.jitter % bound + 1)
    }
}

impl Destination for WebhookDestination {
    /// Takes every group offered; [`Destination::poll`], right after, posts what is due.
    fn deliver(&mut self, groups: &[Group]) -> Result<usize, String> {
        if self.buffer.is_empty() && self.sending.is_none() {
            self.oldest = Some(Instant::now());
        }
        self.buffer.extend(groups.iter().cloned());
        Ok(groups.len())
    }

    fn poll(&mut self) -> Result<(), String> {
        self.flush(false)
    }

    fn progress(&mut self) -> Progress {
        let sending = self.sending.as_ref().map_or(0, |s| {
            s.batches
                .iter()
                .skip(s.done)
                .map(|b| b.changes)
                .sum::<u64>()
        });
        Progress {
            confirmed: self.confirmed,
            delivered: self.delivered,
            unconfirmed: self.buffered() as u64 + sending,
            oldest: self.oldest,
            refusals: self.refusals,
            ..Progress::default()
        }
    }

    fn sends_again(&self) -> bool {
        true
    }

    /// Posts everything taken, retrying until `patience` has passed.
    fn finish(&mut self, patience: Duration) -> Result<String, String> {
        let started = Instant::now();
        while let Err(why) = self.flush(true) {
            if started.elapsed() >= patience {
                return Err(format!(
                    "{why}; {} changes not delivered",
                    self.progress().unconfirmed
                ));
            }
        }
        Ok(format!(
            "{}: delivered {} changes, {} batches refused",
            self.url.name(),
            self.delivered,
            self.refusals
        ))
    }
}

/// The idempotency key of the `index`-th batch of `view` in the group at `position`: its
/// view, place and key and time ranges, hashed to 32 hex digits after the position.
fn idempotency_key(view: &str, position: u64, index: usize, changes: &[&Change]) -> String {
    let (first, last) = (changes.first(), changes.last());
    let named = format!(
        "{view}\u{0}{position}\u{0}{index}\u{0}{}\u{0}{}\u{0}{}\u{0}{}\u{0}{}",
        first.map_or("", |c| c.key.as_str()),
        last.map_or("", |c| c.key.as_str()),
        first.map_or(0, |c| c.time),
        last.map_or(0, |c| c.time),
        changes.len()
    );
    format!(
        "{position}-{index}-{:032x}",
        xxhash_rust::xxh3::xxh3_128(named.as_bytes())
    )
}

/// A batch's JSON body: `changes` of `view`, from the span ending at `position`.
fn body_of(view: &str, key: &str, position: u64, changes: &[&Change]) -> String {
    let (first, last) = (changes.first(), changes.last());
    let lines: Vec<String> = changes.iter().map(|c| c.json()).collect();
    format!(
        "{{\"view\":{},\"idempotency_key\":{},\"position\":{position},\"times\":[{},{}],\"keys\":[{},{}],\"changes\":[{}]}}",
        json_string(view),
        json_string(key),
        first.map_or(0, |c| c.time),
        last.map_or(0, |c| c.time),
        json_string(first.map_or("", |c| c.key.as_str())),
        json_string(last.map_or("", |c| c.key.as_str())),
        lines.join(",")
    )
}

fn json_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// The hex HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(), // HMAC takes a key of any length
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_their_settings() {
        let url = WebhookUrl::parse(
            "webhook+http://127.0.0.1:9000/hooks/a?view=marketing_audience,scores&batch=50&timeout_ms=200&token=x",
        )
        .unwrap();
        assert_eq!(url.host, "127.0.0.1");
        assert_eq!(url.port, 9000);
        assert_eq!(url.path, "/hooks/a?token=x");
        assert_eq!(url.views, vec!["marketing_audience", "scores"]);
        assert_eq!(url.batch, 50);
        assert_eq!(url.timeout, Duration::from_millis(200));
        assert_eq!(url.name(), "webhook+http://127.0.0.1:9000/hooks/a?token=x");
        let url = WebhookUrl::parse("webhook+https://hooks.example.com/in?ca=/etc/ca.pem").unwrap();
        assert!(url.tls);
        assert_eq!(url.port, 443);
        assert_eq!(url.ca.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(url.name(), "webhook+https://hooks.example.com:443/in");
        for bad in [
            "webhook+http://:80/x",
            "webhook+http://h:port/x",
            "webhook+http://h/x?batch=0",
            "webhook+http://h/x?ca=c.pem",
            "http://h/x",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad}");
        }
    }

    /// RFC 4231 test case 2.
    #[test]
    fn signatures_are_hmac_sha256() {
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
