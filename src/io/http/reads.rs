//! Reads: the live views (`GET /v1/views/{name}`, and `/changes` as server-sent events),
//! profiles and their explanations, and `/metrics`.

use super::*;

/// `GET /v1/views/{name}`: the view's rows, with the engine time they are at in
/// `X-Throughline-Engine-Time` (what a destination's position says once it has caught up).
pub(super) fn view(request: &Req, ctx: &Ctx, name: &str, subscribe: bool) -> Response<Body> {
    let sse = request.query_param("format").as_deref() == Some("sse")
        || request
            .header("Accept")
            .is_some_and(|a| a.contains("text/event-stream"));
    let Ok(mut live) = ctx.live.lock() else {
        return error(500, "views unavailable");
    };
    if !live.names.contains(name) {
        return error(404, &format!("no view named {name}"));
    }
    if subscribe {
        let (snapshot, subscription) = live.subscribe(name);
        drop(live);
        return stream_changes(snapshot, subscription, sse, Arc::clone(&ctx.stop));
    }
    let lines = live.snapshot.lines_of(name);
    let time = live.time.to_string();
    drop(live);
    let mut body = lines.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    with_headers(
        200,
        &[
            ("Content-Type", "application/x-ndjson"),
            ("X-Throughline-Engine-Time", &time),
        ],
        body.into(),
    )
}

/// `GET /v1/views/{name}/changes`: the view's rows, then each change as it is published,
/// until the client goes away or the server stops. Chunked NDJSON (one line per chunk),
/// or Server-Sent Events (`Accept: text/event-stream` or `?format=sse`: one `data:` event
/// per line). A subscriber that holds more than [`crate::engine::output::SUBSCRIBER_QUEUE`]
/// published changes unread, or does not read for [`STREAM_STALL`], is sent an error line
/// (when it can take one) and dropped.
pub(super) fn stream_changes(
    snapshot: Vec<String>,
    subscription: Subscription,
    sse: bool,
    stop: Arc<AtomicBool>,
) -> Response<Body> {
    let kind = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let (tx, body) = transport::channel_body(256);
    // a stream lives as long as its client: a thread of its own, not one of the pool's
    std::thread::spawn(move || {
        let frame = |line: &str| {
            Bytes::from(if sse {
                format!("data: {line}\n\n")
            } else {
                format!("{line}\n")
            })
        };
        // false once the client is gone, stuck, or the server stops
        let send = |mut chunk: Bytes| {
            let deadline = Instant::now() + STREAM_STALL;
            loop {
                match tx.try_send(chunk) {
                    Ok(()) => return true,
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
                    Err(tokio::sync::mpsc::error::TrySendError::Full(back)) => {
                        if Instant::now() > deadline || stop.load(Ordering::SeqCst) {
                            return false;
                        }
                        chunk = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        };
        if !snapshot.iter().all(|l| send(frame(l))) {
            return;
        }
        while !stop.load(Ordering::SeqCst) && !tx.is_closed() {
            match subscription.next(Duration::from_millis(200)) {
                Ok(lines) => {
                    if !lines.iter().all(|line| send(frame(line))) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if subscription.lagged() {
            let _ = send(frame(
                &json!({"error": "this subscriber fell behind and was dropped; subscribe again"})
                    .to_string(),
            ));
        }
    });
    let mut response = Response::new(body);
    for (name, value) in [("Content-Type", kind), ("Cache-Control", "no-cache")] {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    response
}

/// The identifier of a profile path (`{type}:{value}`, percent-encoded): a `%` not
/// followed by two hex digits, bytes that are not UTF-8 once decoded, or an identifier the
/// spec does not know are errors (400), never a lossy guess.
pub(super) fn profile_key(
    encoded: &str,
    ctx: &Ctx,
) -> Result<(String, crate::event::Ident), String> {
    let bytes = encoded.as_bytes();
    let well_formed = bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return Err(format!("bad percent-encoding in {encoded:?}"));
    }
    let key = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| format!("{encoded:?} is not UTF-8 once decoded"))?
        .into_owned();
    let ident = identifiers::parse_key(&key, &ctx.spec_now().identity)?;
    Ok((key, ident))
}

/// `GET /v1/profiles/{type}:{value}`: the profile the identifier belongs to, as the engine
/// has it after every line it has processed (404 when no event carried the identifier).
pub(super) fn profile(ctx: &Ctx, key: &str) -> Response<Body> {
    let (key, ident) = match profile_key(key, ctx) {
        Ok(pair) => pair,
        Err(e) => return error(400, &e),
    };
    let (reply, answer) = crossbeam_channel::bounded(1);
    if ctx.lookups.send(Message::Lookup(ident, reply)).is_err() {
        return error(503, "the engine is not running");
    }
    match answer.recv() {
        Ok(Ok(Some(profile))) => respond(200, "application/json", profile.to_string()),
        Ok(Ok(None)) => error(404, &format!("no profile has {key}")),
        Ok(Err(e)) => error(503, &e),
        Err(_) => error(503, "the engine is not running"),
    }
}

/// `GET /v1/profiles/{type}:{value}/explain[?at=T][&format=json|text|dot]`: why the profile
/// of the identifier looks the way it does, at the current clock or at `at` (epoch ms or
/// RFC 3339; see [`crate::docs::explain`]). 404 when no live event carries the identifier.
pub(super) fn explain(request: &Req, ctx: &Ctx, key: &str) -> Response<Body> {
    let (_, ident) = match profile_key(key, ctx) {
        Ok(pair) => pair,
        Err(e) => return error(400, &e),
    };
    let format = match request.query_param("format") {
        None => Format::Json,
        Some(name) => match Format::parse(&name) {
            Some(f) => f,
            None => return error(400, "format must be json, text or dot"),
        },
    };
    let at = match request.query_param("at").map(|t| timestamp::parse_text(&t)) {
        None => None,
        Some(Ok(at)) => Some(at),
        Some(Err(e)) => return error(400, &format!("at: {e}")),
    };
    let (reply, answer) = crossbeam_channel::bounded(1);
    if ctx
        .lookups
        .send(Message::Explain(ident, at, reply))
        .is_err()
    {
        return error(503, "the engine is not running");
    }
    match answer.recv() {
        Ok((outcome, _)) => {
            let status = match outcome {
                Outcome::NotFound { .. } => 404,
                _ => 200,
            };
            respond(
                status,
                format.content_type(),
                render::render(&outcome, format),
            )
        }
        Err(_) => error(503, "the engine is not running"),
    }
}

pub(super) fn metrics(ctx: &Ctx) -> String {
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
    // what the engine holds (SPEC section 9: it follows the live state)
    for ((name, help), gauge) in [
        ("throughline_events_live", "Events whose facts are held (within max_age plus the longest sequence window)"),
        ("throughline_events_retired", "Retired events, kept as a count per identifier set"),
        ("throughline_identifier_sets", "Identifier sets with retired events or records that can still win"),
        ("throughline_records_kept", "Consent and trait records that can still win (the greatest per slot and identifier set)"),
        ("throughline_sequence_roles", "Sequence roles waiting to retire"),
        ("throughline_dedup_window_ids", "messageIds remembered in the dedup window"),
    ]
    .iter()
    .zip(&c.retained)
    {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}\n",
            get(gauge)
        ));
    }
    out.push_str(&format!(
        "# HELP throughline_log_bytes Event log size\n# TYPE throughline_log_bytes gauge\nthroughline_log_bytes {}\n",
        std::fs::metadata(ctx.log.path()).map_or(0, |m| m.len())
    ));
    out.push_str(
        "# HELP throughline_log_kind_bytes Event log bytes by kind: received lines, spans standing for retired lines, other residues\n# TYPE throughline_log_kind_bytes gauge\n",
    );
    for (name, bytes) in crate::store::log::KIND_NAMES.iter().zip(ctx.log.kinds()) {
        out.push_str(&format!(
            "throughline_log_kind_bytes{{kind=\"{name}\"}} {bytes}\n"
        ));
    }
    out.push_str(&format!(
        "# HELP throughline_log_records Lines in the event log (the engine has caught up when throughline_lines_total equals it)\n# TYPE throughline_log_records gauge\nthroughline_log_records {}\n",
        ctx.log.forwarded()
    ));
    if let Some(k) = &ctx.kafka {
        for (name, help, value) in [
            (
                "throughline_kafka_records_logged_total",
                "Records of the followed topic logged",
                k.logged.load(Ordering::Relaxed),
            ),
            (
                "throughline_kafka_errors_total",
                "Errors reading the followed topic (each retried)",
                k.errors.load(Ordering::Relaxed),
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            ));
        }
        out.push_str("# HELP throughline_kafka_lag Records of the followed topic not yet read, per partition\n# TYPE throughline_kafka_lag gauge\n");
        if let Ok(lag) = k.lag.lock() {
            for (partition, n) in lag.iter() {
                out.push_str(&format!(
                    "throughline_kafka_lag{{partition=\"{partition}\"}} {n}\n"
                ));
            }
        }
    }
    if !ctx.sinks.is_empty() {
        for (name, kind, help, pick) in [
            (
                "throughline_sink_delivered_total",
                "counter",
                "Records (or lines) a sink's destination confirmed",
                0,
            ),
            (
                "throughline_sink_errors_total",
                "counter",
                "Failed attempts to deliver (each retried) and records refused",
                1,
            ),
            (
                "throughline_sink_backlog",
                "gauge",
                "Changes a sink has not yet seen confirmed",
                2,
            ),
            (
                "throughline_sink_confirmed_position",
                "gauge",
                "Log line up to which a sink's destination confirmed everything",
                3,
            ),
            (
                "throughline_sink_lag_seconds",
                "gauge",
                "How long the oldest change a sink's destination has not confirmed has waited",
                4,
            ),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for sink in &ctx.sinks {
                let value = match pick {
                    0 => sink.delivered.load(Ordering::Relaxed),
                    1 => sink.errors.load(Ordering::Relaxed) + sink.refused.load(Ordering::Relaxed),
                    2 => sink.backlog(),
                    3 => sink.confirmed.load(Ordering::Relaxed),
                    _ => {
                        let ms = sink.lag_ms.load(Ordering::Relaxed);
                        out.push_str(&format!(
                            "{name}{{sink=\"{}\"}} {}.{:03}\n",
                            sink.name,
                            ms / 1000,
                            ms % 1000
                        ));
                        continue;
                    }
                };
                out.push_str(&format!("{name}{{sink=\"{}\"}} {value}\n", sink.name));
            }
        }
    }
    if let Ok(live) = ctx.live.lock() {
        for view in &live.names {
            out.push_str(&format!(
                "throughline_view_rows{{view=\"{view}\"}} {}\n",
                live.snapshot.count_of(view)
            ));
        }
    }
    out
}
