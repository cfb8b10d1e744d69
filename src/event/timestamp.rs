//! Event timestamps (SPEC section 1): RFC 3339 strings or integer epoch milliseconds, and
//! the one rule that derives an event's time from its fields ([`event_time`]).

use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::{DeadReason, Rejection};

use time::format_description::well_known::Rfc3339;

/// The largest clock value (epoch ms, in the year 2527) the engine represents: the dataflow
/// packs a clock value and a step counter in 64 bits (`dataflow::Time`).
pub const MAX_CLOCK_MS: u64 = (1 << 44) - 1;

/// The event time in epoch ms, or why the value is not a usable timestamp.
///
/// Strings must be RFC 3339 date-times with a `T`/`t` separator and a `Z`/`z` or `±hh:mm`
/// offset; fractions beyond milliseconds are truncated; a leap second (`:60`) is rejected.
/// Integers are epoch ms within the 64-bit range. Anything before 1970 is rejected.
pub fn parse(value: &Value) -> Result<u64, String> {
    let ms = parse_any(value)?;
    if ms > MAX_CLOCK_MS {
        return Err(format!("{ms} ms is beyond the engine's range (year 2527)"));
    }
    Ok(ms)
}

/// An event's time in epoch ms (SPEC section 1), the one rule every path applies (`run`,
/// `serve`, recovery, compaction, explanations):
///
/// - `timestamp` when present (unparseable: `bad_timestamp`);
/// - else `originalTimestamp + (receivedAt − sentAt)`, the device clock corrected by its
///   skew, when `sentAt` and `receivedAt` both parse; else `originalTimestamp`
///   (unparseable: `bad_timestamp`);
/// - else `receivedAt` (unparseable: `bad_timestamp`);
/// - else `missing_timestamp` (also when only `sentAt` is there: nothing dates the event).
///
/// `received_ms` is the receipt time a server stamps on events that lack `receivedAt`
/// (`serve` logs it with each request, so a replay derives the same time); `None` for a
/// pipe or a file. A derived time before 1970 or beyond the engine's range is
/// `bad_timestamp`.
pub fn event_time(body: &Map<String, Value>, received_ms: Option<u64>) -> Result<u64, Rejection> {
    let bad = |field: &str, why: String| Rejection {
        reason: DeadReason::BadTimestamp,
        detail: if field == "timestamp" {
            why
        } else {
            format!("{field}: {why}")
        },
    };
    if let Some(v) = body.get("timestamp") {
        return parse(v).map_err(|e| bad("timestamp", e));
    }
    let received = match body.get("receivedAt") {
        Some(v) => Some(parse(v)),
        None => received_ms.map(Ok),
    };
    if let Some(v) = body.get("originalTimestamp") {
        let original = parse(v).map_err(|e| bad("originalTimestamp", e))?;
        let sent = body.get("sentAt").map(parse);
        return match (sent, received) {
            (Some(Ok(sent)), Some(Ok(received))) => {
                let t = i128::from(original) + i128::from(received) - i128::from(sent);
                u64::try_from(t)
                    .ok()
                    .filter(|t| *t <= MAX_CLOCK_MS)
                    .ok_or_else(|| {
                        bad(
                            "originalTimestamp + (receivedAt - sentAt)",
                            format!("{t} ms is before 1970 or beyond the engine's range"),
                        )
                    })
            }
            _ => Ok(original),
        };
    }
    match received {
        Some(r) => r.map_err(|e| bad("receivedAt", e)),
        None => Err(Rejection {
            reason: DeadReason::MissingTimestamp,
            detail: "no timestamp, originalTimestamp or receivedAt".into(),
        }),
    }
}

/// A clock value as a person writes it (a command-line flag, a query parameter): epoch ms
/// digits or an RFC 3339 date-time.
pub fn parse_text(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(ms) => parse(&Value::from(ms)),
        Err(_) => parse(&Value::from(text)),
    }
}

fn parse_any(value: &Value) -> Result<u64, String> {
    match value {
        Value::String(s) => parse_rfc3339(s),
        Value::Number(n) => {
            if let Some(ms) = n.as_u64() {
                Ok(ms)
            } else if n.is_i64() {
                Err(format!("{n} is before 1970"))
            } else {
                Err(format!("{n} is not an integer number of milliseconds"))
            }
        }
        other => Err(format!(
            "a timestamp must be a string or an integer, not {}",
            kind(other)
        )),
    }
}

fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let shown = || s.chars().take(40).collect::<String>();
    let bytes = s.as_bytes();
    if bytes.len() > 64 || bytes.len() < 20 || !matches!(bytes[10], b'T' | b't') {
        return Err(format!("\"{}\" is not an RFC 3339 date-time", shown()));
    }
    // `time` accepts at most nanosecond precision; digits beyond it cannot matter.
    let mut text = std::borrow::Cow::Borrowed(s);
    if bytes.get(19) == Some(&b'.') {
        let digits = bytes[20..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits > 9 {
            text = format!("{}{}", &s[..29], &s[20 + digits..]).into();
        }
    }
    let parsed = OffsetDateTime::parse(&text, &Rfc3339)
        .map_err(|e| format!("\"{}\" is not an RFC 3339 date-time: {e}", shown()))?;
    let ms = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
    u64::try_from(ms).map_err(|_| format!("\"{}\" is before 1970", shown()))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An RFC 3339 timestamp with milliseconds and the given offset in minutes.
pub fn rfc3339(ms: u64, offset_minutes: i32) -> String {
    let local = ms as i64 + i64::from(offset_minutes) * 60_000;
    let days = local.div_euclid(86_400_000);
    let rem = local.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    let offset = if offset_minutes == 0 {
        "Z".to_string()
    } else {
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let a = offset_minutes.abs();
        format!("{sign}{:02}:{:02}", a / 60, a % 60)
    };
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}{offset}")
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn derived(v: Value, received: Option<u64>) -> Result<u64, DeadReason> {
        event_time(v.as_object().unwrap(), received).map_err(|r| r.reason)
    }

    #[test]
    fn derivation_rule() {
        use DeadReason::*;
        // timestamp wins, even over a full set of SDK fields
        assert_eq!(
            derived(
                json!({"timestamp": 5, "originalTimestamp": 9, "sentAt": 1, "receivedAt": 2}),
                None
            ),
            Ok(5)
        );
        assert_eq!(
            derived(json!({"timestamp": "soon", "originalTimestamp": 9}), None),
            Err(BadTimestamp)
        );
        // skew corrected forwards and backwards
        assert_eq!(
            derived(
                json!({"originalTimestamp": 1000, "sentAt": 1500, "receivedAt": 2500}),
                None
            ),
            Ok(2000)
        );
        assert_eq!(
            derived(
                json!({"originalTimestamp": 5000, "sentAt": 5500, "receivedAt": 2500}),
                None
            ),
            Ok(2000)
        );
        // sentAt without receivedAt, or an unparseable one: the device clock as is
        assert_eq!(
            derived(json!({"originalTimestamp": 1000, "sentAt": 1500}), None),
            Ok(1000)
        );
        assert_eq!(
            derived(
                json!({"originalTimestamp": 1000, "sentAt": "x", "receivedAt": 9}),
                None
            ),
            Ok(1000)
        );
        // a server's receipt time stands in for a missing receivedAt
        assert_eq!(
            derived(
                json!({"originalTimestamp": 1000, "sentAt": 1500}),
                Some(2500)
            ),
            Ok(2000)
        );
        assert_eq!(
            derived(
                json!({"originalTimestamp": 1000, "sentAt": 1500, "receivedAt": 1600}),
                Some(2500)
            ),
            Ok(1100)
        );
        // only receivedAt (or the receipt time)
        assert_eq!(
            derived(json!({"receivedAt": "1970-01-01T00:00:01Z"}), None),
            Ok(1000)
        );
        assert_eq!(derived(json!({"sentAt": 7}), Some(42)), Ok(42));
        // the deciding field unparseable, a result before 1970, nothing at all
        assert_eq!(
            derived(json!({"originalTimestamp": "x", "receivedAt": 9}), None),
            Err(BadTimestamp)
        );
        assert_eq!(
            derived(json!({"originalTimestamp": null}), None),
            Err(BadTimestamp)
        );
        assert_eq!(
            derived(json!({"receivedAt": "x", "sentAt": 1}), None),
            Err(BadTimestamp)
        );
        assert_eq!(
            derived(
                json!({"originalTimestamp": 100, "sentAt": 1000, "receivedAt": 500}),
                None
            ),
            Err(BadTimestamp)
        );
        assert_eq!(derived(json!({"sentAt": 7}), None), Err(MissingTimestamp));
        assert_eq!(derived(json!({}), None), Err(MissingTimestamp));
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(
            parse(&json!("2026-11-22T10:00:00.123Z")),
            Ok(1_795_341_600_123)
        );
        assert_eq!(
            parse(&json!("2026-11-22t10:00:00.123z")),
            Ok(1_795_341_600_123)
        );
        assert_eq!(
            parse(&json!("2026-11-22T11:30:00.1239999999999+01:30")),
            Ok(1_795_341_600_123)
        );
        assert_eq!(parse(&json!("1970-01-01T00:00:00Z")), Ok(0));
        assert_eq!(parse(&json!(1_795_341_600_123u64)), Ok(1_795_341_600_123));
        assert_eq!(parse(&json!(0)), Ok(0));
    }

    #[test]
    fn rejected_forms() {
        for bad in [
            json!("2026-11-22 10:00:00Z"),
            json!("2026-11-22T10:00:00"),
            json!("2026-11-22T10:00Z"),
            json!("2026-02-29T00:00:00Z"),
            json!("1969-12-31T23:59:59.999Z"),
            json!("1970-01-01T00:30:00+01:00"),
            json!("2026-11-22T23:59:60Z"),
            json!("yesterday"),
            json!(-1),
            json!(1.5),
            json!(null),
            json!(u64::MAX),
            json!("9999-12-31T23:59:59Z"),
            json!(true),
        ] {
            assert!(parse(&bad).is_err(), "{bad} should be rejected");
        }
    }
}
