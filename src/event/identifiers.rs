//! Identifiers (SPEC section 2): reading, normalisation, blocklist.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::json;
use crate::spec::IdentitySpec;

/// An identifier: (type rank, normalised value). Ordered by rank, then value in byte order,
/// which is exactly SPEC section 3's priority order. The value is shared, so cloning an
/// identifier through the dataflow copies a pointer, not the string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ident {
    /// Index of the identifier type in the spec (lower is higher priority).
    pub rank: u8,
    /// The normalised value.
    pub value: Arc<str>,
}

impl Ident {
    /// Builds an identifier.
    pub fn new(rank: u8, value: &str) -> Ident {
        Ident {
            rank,
            value: Arc::from(value),
        }
    }

    /// `type:value`, the form used for profile keys and on the command line.
    pub fn key(&self, spec: &IdentitySpec) -> String {
        let name = spec
            .identifiers
            .get(self.rank as usize)
            .map_or("?", |t| t.name.as_str());
        format!("{name}:{}", self.value)
    }
}

impl fmt::Debug for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.rank, self.value)
    }
}

/// Reads every identifier of an event: for each type, each path, a string or integer value,
/// trimmed (and lowercased where the type says so); empty and blocklisted values dropped.
/// The result is sorted by priority and holds each identifier once. Beside it: the
/// blocklisted values dropped (normalised, sorted, each once), which explanations report.
/// Blocklist entries are placeholders such as `null`, never personal data.
pub fn read(event: &Map<String, Value>, spec: &IdentitySpec) -> (Vec<Ident>, Vec<Ident>) {
    let mut out = Vec::new();
    let mut blocked = Vec::new();
    for (rank, kind) in spec.identifiers.iter().enumerate() {
        for path in &kind.paths {
            let raw = match json::lookup(event, path) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => match json::integer_text(v) {
                    Some(text) => text,
                    None => continue,
                },
                None => continue,
            };
            match normalise(&raw, kind.lowercase, spec) {
                Some(value) => out.push(Ident::new(rank as u8, &value)),
                None if is_blocklisted(&raw, kind.lowercase, spec) => {
                    blocked.push(Ident::new(rank as u8, &normalised(&raw, kind.lowercase)));
                }
                None => {}
            }
        }
    }
    out.sort();
    out.dedup();
    blocked.sort();
    blocked.dedup();
    (out, blocked)
}

fn normalised(raw: &str, lowercase: bool) -> String {
    let trimmed = raw.trim();
    if lowercase {
        trimmed.to_lowercase()
    } else {
        trimmed.to_string()
    }
}

fn is_blocklisted(raw: &str, lowercase: bool, spec: &IdentitySpec) -> bool {
    spec.blocklist
        .contains(&normalised(raw, lowercase).to_lowercase())
}

/// Trims (Unicode white space), optionally lowercases, and drops empty or blocklisted values.
pub fn normalise(raw: &str, lowercase: bool, spec: &IdentitySpec) -> Option<String> {
    let value = normalised(raw, lowercase);
    let blocked = spec.blocklist.contains(&value.to_lowercase());
    (!value.is_empty() && !blocked).then_some(value)
}

/// Parses `type:value` (as given on a command line) into a normalised identifier.
pub fn parse_key(key: &str, spec: &IdentitySpec) -> Result<Ident, String> {
    let (name, raw) = key
        .split_once(':')
        .ok_or_else(|| format!("\"{key}\" is not type:value"))?;
    let rank = spec
        .identifiers
        .iter()
        .position(|t| t.name == name)
        .ok_or_else(|| format!("unknown identifier type \"{name}\""))?;
    let value = normalise(raw, spec.identifiers[rank].lowercase, spec)
        .ok_or_else(|| format!("\"{key}\" is empty or blocklisted"))?;
    Ok(Ident::new(rank as u8, &value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;
    use serde_json::json;

    fn read_json(v: Value) -> Vec<String> {
        let spec = Spec::default_spec();
        let obj = v.as_object().cloned().unwrap_or_default();
        read(&obj, &spec.identity)
            .0
            .iter()
            .map(|i| i.key(&spec.identity))
            .collect()
    }

    #[test]
    fn reads_normalises_and_blocks() {
        let got = read_json(json!({
            "userId": "  u1 ",
            "anonymousId": "Anonymous",
            "previousId": 42,
            "traits": {"email": " A@X.com"},
            "context": {"traits": {"email": "a@x.com"}, "device": {"id": "NULL"}},
            "properties": {"email": "TEST@example.com"},
        }));
        assert_eq!(got, vec!["user_id:u1", "email:a@x.com", "anonymous_id:42"]);
    }

    #[test]
    fn reports_the_blocklisted_values_it_dropped() {
        let spec = Spec::default_spec();
        let event = json!({"userId": "u1", "anonymousId": " Anonymous ", "context": {"device": {"id": "NULL"}}});
        let (kept, blocked) = read(event.as_object().unwrap(), &spec.identity);
        let keys =
            |ids: &[Ident]| -> Vec<String> { ids.iter().map(|i| i.key(&spec.identity)).collect() };
        assert_eq!(keys(&kept), vec!["user_id:u1"]);
        assert_eq!(
            keys(&blocked),
            vec!["device_id:NULL", "anonymous_id:Anonymous"]
        );
    }

    #[test]
    fn ignores_other_json_values() {
        let got = read_json(
            json!({"userId": 1.5, "anonymousId": true, "previousId": ["a"],
                                   "traits": {"email": null}, "context": {"device": {"id": 18446744073709551616u128 as f64}}}),
        );
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(read_json(json!({"userId": -7})), vec!["user_id:-7"]);
        assert!(
            read_json(json!({"userId": -1})).is_empty(),
            "-1 is blocklisted"
        );
    }
}
