//! Identifiers (SPEC section 2): reading, normalisation, blocklist.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::json;
use crate::spec::IdentitySpec;

/// An identifier: (type rank, normalised value). Ordered by rank, then value in byte order,
/// which is exactly SPEC section 3's priority order. The value is shared, so cloning an
/// identifier through the dataflow copies a pointer, not the string.
///
/// It also carries a 32-bit hash of (rank, value), computed once: hashing an identifier
/// (every `HashMap` keyed by one) reads only that, and [`Ident::hash_cmp`] orders by it
/// first, so keyed data structures that need some order but not the SPEC's (the dataflow's
/// arrangements) rarely compare strings. Comparing two handles to one shared value never
/// reads the string either.
#[derive(Clone, Serialize, Deserialize)]
pub struct Ident {
    /// Index of the identifier type in the spec (lower is higher priority).
    pub rank: u8,
    /// A hash of (rank, value) (see [`Ident::new`]).
    hash: u32,
    /// The normalised value.
    pub value: Arc<str>,
}

impl Ident {
    /// Builds an identifier.
    pub fn new(rank: u8, value: &str) -> Ident {
        let hash = xxh3_64_with_seed(value.as_bytes(), u64::from(rank));
        Ident {
            rank,
            hash: (hash ^ (hash >> 32)) as u32,
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

    /// The 32-bit hash of (rank, value) the identifier carries: equal identifiers have equal
    /// hashes, unequal ones usually not.
    pub fn short_hash(&self) -> u32 {
        self.hash
    }

    /// A total order that is cheap to evaluate: by hash, then by the SPEC order. Not the
    /// SPEC's order; for keys whose order decides nothing.
    pub fn hash_cmp(&self, other: &Ident) -> Ordering {
        self.hash.cmp(&other.hash).then_with(|| self.cmp(other))
    }
}

impl PartialEq for Ident {
    fn eq(&self, other: &Ident) -> bool {
        self.hash == other.hash
            && self.rank == other.rank
            && (Arc::ptr_eq(&self.value, &other.value) || self.value == other.value)
    }
}

impl Eq for Ident {}

impl Hash for Ident {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u32(self.hash);
    }
}

impl Ord for Ident {
    fn cmp(&self, other: &Ident) -> Ordering {
        self.rank.cmp(&other.rank).then_with(|| {
            if Arc::ptr_eq(&self.value, &other.value) {
                Ordering::Equal
            } else {
                self.value.cmp(&other.value)
            }
        })
    }
}

impl PartialOrd for Ident {
    fn partial_cmp(&self, other: &Ident) -> Option<Ordering> {
        Some(self.cmp(other))
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
