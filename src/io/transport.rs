//! The server's HTTP transport: hyper 1.x on a small tokio runtime, with the limits a server
//! facing the internet needs. The endpoints themselves are in [`crate::io::http`].
//!
//! - A connection that has not sent a complete request head within [`HEAD_TIMEOUT`], new
//!   or idle between keep-alive requests, is closed; a body must arrive within
//!   [`BODY_TIMEOUT`] (else 408).
//! - A body is read only up to its route's limit ([`http::body_limit`]); a longer one is a
//!   413 without reading the rest. At most [`MAX_HEADERS`] headers (else 431).
//! - At most `max_connections` ([`DEFAULT_MAX_CONNECTIONS`], `serve --max-connections`)
//!   connections are served fully. Up to a quarter more are served in "overloaded" mode: `/healthz` answers as usual
//!   and everything else is a 503 with `Retry-After`, one request per connection; beyond
//!   that a connection is closed at once. Slow or idle clients therefore never starve
//!   `/healthz`, and the runtime's threads never wait on a client: handlers run on
//!   blocking threads ([`tokio::task::spawn_blocking`]).
//! - A handler that panics is answered 500 and the server lives on.
//! - On SIGTERM/SIGINT the listener closes, every connection finishes the request it is
//!   serving (change streams end), and after at most [`SHUTDOWN_GRACE`] the rest are
//!   dropped.
//!
//! The same transport carries the cluster's pass-through ([`proxy`]): a process other
//! than 0 sends every request on to process 0 and streams its response back.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::io::http::{self, Ctx, Req};

/// A response body: a whole one, a change stream, or a response passed on from process 0.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How long a connection may take to send a request head, and stay idle between requests.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's body may take to arrive once its head is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served fully at once, unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// How much of an oversized body is read (and dropped) so its client hears the 413.
pub const DRAIN_BYTES: usize = 4 << 20;
/// Most headers in a request.
pub const MAX_HEADERS: usize = 128;
/// How long shutdown waits for open connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A whole body.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A streamed body fed from the returned sender, one chunk per message; it ends when the
/// sender is dropped. `capacity` chunks may wait unsent.
pub fn channel_body(capacity: usize) -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody(rx).map_err(|never| match never {}).boxed())
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// Serves the endpoints of [`crate::io::http`] on `listen` until `stop` is set.
pub fn listen(
    listen: &str,
    about: &str,
    max_connections: usize,
    ctx: Arc<Ctx>,
    stop: &Arc<AtomicBool>,
) -> Result<(), String> {
    serve(
        listen,
        about,
        max_connections,
        stop,
        move |request, overloaded| {
            let ctx = Arc::clone(&ctx);
            async move { Ok::<_, Infallible>(endpoint(request, ctx, overloaded).await) }
        },
    )
}

/// A cluster's other processes: serves HTTP on `listen` by passing each request on to
/// `leader` (process 0) and streaming its response back, until `stop` is set.
pub fn proxy(listen: &str, leader: &str, stop: &Arc<AtomicBool>) -> Result<(), String> {
    let leader: Arc<str> = Arc::from(leader);
    let about = format!("passing on to {leader}");
    serve(
        listen,
        &about,
        DEFAULT_MAX_CONNECTIONS,
        stop,
        move |request, overloaded| {
            let leader = Arc::clone(&leader);
            async move {
                Ok::<_, Infallible>(if overloaded {
                    http::error(503, "too many connections; retry shortly")
                } else {
                    pass_on(request, &leader).await
                })
            }
        },
    )
}

/// Binds `listen`, says so on stderr (with `about`), and serves each connection with
/// `handle` (told whether the connection is over `max_connections`) until `stop` is set.
fn serve<H, F>(
    listen: &str,
    about: &str,
    max_connections: usize,
    stop: &Arc<AtomicBool>,
    handle: H,
) -> Result<(), String>
where
    H: Fn(Request<Incoming>, bool) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("throughline-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP runtime: {e}"))?;
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default();
    eprintln!("throughline: listening on {addr} ({about})");
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        accept_until_stopped(listener, max_connections, Arc::clone(stop), handle).await;
        Ok(())
    })
}

async fn accept_until_stopped<H, F>(
    listener: TcpListener,
    max_connections: usize,
    stop: Arc<AtomicBool>,
    handle: H,
) where
    H: Fn(Request<Incoming>, bool) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let full = Arc::new(Semaphore::new(max_connections));
    let overflow = Arc::new(Semaphore::new(max_connections.div_ceil(4)));
    let (closing, closed) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while !stop.load(Ordering::SeqCst) {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let permit = match Arc::clone(&full).try_acquire_owned() {
                        Ok(p) => (p, false),
                        Err(_) => match Arc::clone(&overflow).try_acquire_owned() {
                            Ok(p) => (p, true),
                            Err(_) => continue, // dropped: closed at once
                        },
                    };
                    let handle = handle.clone();
                    let closed = closed.clone();
                    connections.spawn(async move {
                        let overloaded = permit.1;
                        let service = service_fn(move |r| handle(r, overloaded));
                        connection(stream, service, overloaded, closed).await;
                        drop(permit);
                    });
                }
                // out of file descriptors, or a connection reset before it was accepted
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = tick.tick() => {}
        }
    }
    drop(listener);
    let _ = closing.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        connections.abort_all();
    }
}

/// Serves one connection until it closes, or finishes its current request once `closed`
/// says the server stops.
async fn connection<S>(
    stream: TcpStream,
    service: S,
    overloaded: bool,
    mut closed: watch::Receiver<bool>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_headers(MAX_HEADERS)
        // a client may shut its side down once it has sent the request, and still hear back
        .half_close(true)
        .keep_alive(!overloaded);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = closed.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// One request to the endpoints: the body is read (within its limit and time), then the
/// handler runs on a blocking thread.
async fn endpoint(request: Request<Incoming>, ctx: Arc<Ctx>, overloaded: bool) -> Response<Body> {
    let (parts, incoming) = request.into_parts();
    let path = parts.uri.path().to_string();
    // answered here, never behind a blocking thread or a body
    if path == "/healthz" && parts.method == hyper::Method::GET {
        return http::healthz(&ctx);
    }
    if overloaded {
        return http::error(503, "too many connections; retry shortly");
    }
    if ctx.stop.load(Ordering::SeqCst) {
        return http::error(503, "the server is shutting down");
    }
    let limit = http::body_limit(parts.method.as_str(), &path);
    let body = match read_body(incoming, limit).await {
        Ok(b) => b,
        Err((status, message)) => return http::error(status, &message),
    };
    let request = Req {
        method: parts.method.as_str().to_string(),
        path,
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    };
    match tokio::task::spawn_blocking(move || http::handle(&request, &ctx)).await {
        Ok(response) => response,
        Err(_) => {
            eprintln!("throughline: error: a request handler panicked (answered 500)");
            http::error(500, "internal error: the request handler failed")
        }
    }
}

/// The body, refused with a 413 once it is known to exceed `limit` (by its
/// `Content-Length` or while reading), a 408 if it is not all in within [`BODY_TIMEOUT`],
/// a 400 if the connection breaks or the chunked framing is bad.
///
/// Past the limit, up to [`DRAIN_BYTES`] more are read and dropped before the 413, so a
/// client that sends a whole (moderately) oversized body still hears why instead of a
/// reset connection; anything larger is answered at once and the connection closed.
async fn read_body(mut incoming: Incoming, limit: usize) -> Result<Bytes, (u16, String)> {
    use hyper::body::Body as _;
    let too_large = || (413, format!("body over {limit} bytes"));
    let announced = incoming.size_hint().lower();
    if announced > (limit + DRAIN_BYTES) as u64 {
        return Err(too_large());
    }
    let read = async {
        let mut out = Vec::new();
        let mut over = announced > limit as u64;
        let mut dropped = 0;
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| (400, format!("cannot read the body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            over |= out.len() + data.len() > limit;
            if over {
                dropped += data.len();
                if dropped > DRAIN_BYTES {
                    break;
                }
            } else {
                out.extend_from_slice(&data);
            }
        }
        if over {
            return Err(too_large());
        }
        Ok(Bytes::from(out))
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| {
            Err((
                408,
                format!("the body did not arrive within {BODY_TIMEOUT:?}"),
            ))
        })
}

/// Sends one request to `leader` and streams its response back (503 when unreachable).
async fn pass_on(request: Request<Incoming>, leader: &str) -> Response<Body> {
    let (parts, incoming) = request.into_parts();
    let limit = http::body_limit(parts.method.as_str(), parts.uri.path());
    let body = match read_body(incoming, limit).await {
        Ok(b) => b,
        Err((status, message)) => return http::error(status, &message),
    };
    let unreachable = |e: &dyn std::fmt::Display| {
        http::error(503, &format!("process 0 ({leader}) is unreachable: {e}"))
    };
    let stream = match TcpStream::connect(leader).await {
        Ok(s) => s,
        Err(e) => return unreachable(&e),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => return unreachable(&e),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut upstream = Request::builder().method(parts.method).uri(target);
    for (name, value) in &parts.headers {
        if !["host", "connection", "content-length", "transfer-encoding"].contains(&name.as_str()) {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = match upstream.header("Host", leader).body(Full::new(body)) {
        Ok(r) => r,
        Err(e) => return http::error(400, &format!("cannot pass the request on: {e}")),
    };
    match sender.send_request(upstream).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(e) => unreachable(&e),
    }
}
