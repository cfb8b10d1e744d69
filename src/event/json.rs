//! JSON details of SPEC section 1: nesting limit, path lookup, value equality.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Deepest nesting SPEC section 1 accepts (deeper is invalid JSON).
pub const MAX_DEPTH: usize = 128;

/// Parses one line as JSON with the SPEC's rules: a repeated key keeps its last value,
/// unpaired surrogates and out-of-range numbers are errors (serde_json's own behaviour),
/// and nesting deeper than [`MAX_DEPTH`] is an error.
pub fn parse(text: &str) -> Result<Value, String> {
    if let Some(depth) = too_deep(text.as_bytes()) {
        return Err(format!(
            "nesting deeper than {MAX_DEPTH} levels (at least {depth})"
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    // The depth is bounded by the scan above; serde_json's own limit is one level stricter.
    de.disable_recursion_limit();
    let value = Value::deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// Scans brackets outside strings; returns the depth reached if it exceeds the limit.
fn too_deep(bytes: &[u8]) -> Option<usize> {
    // the depth never exceeds the number of opening brackets, and most lines have a few:
    // counting them is a loop the compiler vectorises, the scan below is not
    if bytes.iter().filter(|&&b| b == b'[' || b == b'{').count() <= MAX_DEPTH {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The value at a dotted path (already split), descending through objects only.
pub fn lookup<'a>(object: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut value = object.get(first)?;
    for segment in rest {
        value = value.as_object()?.get(segment)?;
    }
    Some(value)
}

/// An integer within the 64-bit signed or unsigned range, as its decimal text.
pub fn integer_text(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn nesting_limit_is_128_levels() {
        assert!(parse(&nested(128)).is_ok());
        assert!(parse(&nested(129)).is_err());
        // brackets inside strings do not count
        assert!(parse(&format!("{{\"a\":\"{}\"}}", "[".repeat(500))).is_ok());
        // many brackets side by side are shallow (past the count that skips the scan)
        assert!(parse(&format!("[{}]", vec!["[]"; 300].join(","))).is_ok());
        assert!(parse(&format!("[{},{}]", vec!["[]"; 300].join(","), nested(128))).is_err());
    }

    #[test]
    fn spec_json_details() {
        assert_eq!(parse(r#"{"a":1,"a":2}"#).unwrap()["a"], 2);
        assert!(parse(r#"{"a":"\ud800"}"#).is_err());
        assert!(parse(r#"{"a":1e400}"#).is_err());
        assert_eq!(
            integer_text(&parse("18446744073709551615").unwrap()).as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(
            integer_text(&parse("-9223372036854775808").unwrap()).as_deref(),
            Some("-9223372036854775808")
        );
        assert_eq!(integer_text(&parse("18446744073709551616").unwrap()), None);
        assert_eq!(integer_text(&parse("1.0").unwrap()), None);
    }
}
