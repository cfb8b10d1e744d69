//! `POST /v1/batch`, `/v1/track`, ...: Segment-compatible ingestion. Events are validated
//! for size, appended to the durable log and fsynced before the request is acknowledged.

use super::*;

/// Logs the request's events durably; returns how many lines were logged. Without
/// `authorized` (no valid Basic credentials), the body's `writeKey` must be the key; it is
/// never logged.
pub(super) fn ingest(
    request: &Req,
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
    // a sink that cannot deliver holds at most its bound: past it, input waits (SDKs retry a
    // 503) while the views go on
    if let Some(full) = ctx.sinks.iter().find(|s| s.full()) {
        return Err((
            503,
            format!(
                "sink {} holds {} undelivered changes (its bound): retry later",
                full.name,
                full.backlog()
            ),
        ));
    }
    let wall_ms = engine::wall_clock_ms();
    let n = lines.len();
    let records = lines
        .into_iter()
        .map(|line| Record::received(wall_ms, line))
        .collect();
    ctx.log.append(records).map_err(|e| {
        // a full disk, or a log that stopped after a failed fsync: nothing was acknowledged,
        // and the same request succeeds later (SDKs retry a 503)
        (503, format!("cannot log the events: {e}"))
    })?;
    Ok(n)
}
