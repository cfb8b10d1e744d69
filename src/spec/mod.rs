//! The dataflow spec: the TOML model of SPEC.md section 8 and every check on it.
//!
//! A spec is parsed into raw serde structs (which reject unknown keys), then compiled into
//! [`Spec`], whose names are resolved to indices. Every error names the file, the line and
//! the key, and is reported before any input is read.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

mod compile;
pub mod edit;

use compile::{Ctx, RawSpec};

/// The built-in default spec (`dataflows/default.toml`), used when no `--dataflow` is given.
pub const DEFAULT_SPEC: &str = include_str!("../../dataflows/default.toml");
/// The name the default spec is reported under in messages.
pub const DEFAULT_SPEC_NAME: &str = "dataflows/default.toml (built in)";

/// A spec error: one line, `file:line: key `k`: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: key `{key}`: {message}")]
pub struct SpecError {
    /// The spec file (or the built-in default's name).
    pub file: String,
    /// 1-based line of the offending key (0 when the error has no position).
    pub line: usize,
    /// The dotted key the error is about.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A compiled dataflow spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Where it came from (file path or the default's name).
    pub source: String,
    /// Input settings (SPEC section 1).
    pub input: InputSpec,
    /// Identity resolution settings (SPEC section 2 and 3).
    pub identity: IdentitySpec,
    /// Intent scoring settings (SPEC section 4).
    pub intent: IntentSpec,
    /// Consent purposes (SPEC section 5).
    pub consent: ConsentSpec,
    /// Output views (SPEC section 5), in declaration order.
    pub views: Vec<ViewSpec>,
}

/// SPEC section 1 settings (`[input]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSpec {
    /// How long (engine clock, ms) an accepted `messageId` is remembered: an event with the
    /// same id is a duplicate while `now - c < dedup_window`; `None` is `"unlimited"`.
    pub dedup_window_ms: Option<u64>,
}

/// SPEC section 2 and 3 settings.
#[derive(Debug, Clone)]
pub struct IdentitySpec {
    /// An identifier with more distinct neighbours than this is a hub.
    pub max_links: usize,
    /// Blocklisted values, lowercased (compared case-insensitively after normalisation).
    pub blocklist: HashSet<String>,
    /// Identifier types in priority order: the index is the rank.
    pub identifiers: Vec<IdentifierType>,
}

/// One identifier type.
#[derive(Debug, Clone)]
pub struct IdentifierType {
    /// The type name (`user_id`, `email`, ...).
    pub name: String,
    /// Dotted JSON paths it is read from, split into segments.
    pub paths: Vec<Vec<String>>,
    /// Whether it names a known customer.
    pub anchor: bool,
    /// Whether values are lowercased after trimming.
    pub lowercase: bool,
}

/// SPEC section 4 settings.
#[derive(Debug, Clone)]
pub struct IntentSpec {
    /// Half-life of a signal's weight, in ms.
    pub half_life_ms: u64,
    /// Age at which a weight drops to zero, in ms.
    pub max_age_ms: u64,
    /// How far ahead of the wall clock an event may be, in ms.
    pub max_future_ms: u64,
    /// Signals, in declaration order.
    pub signals: Vec<SignalSpec>,
    /// Sequences, in declaration order.
    pub sequences: Vec<SequenceSpec>,
}

/// A signal: a matcher and points.
#[derive(Debug, Clone)]
pub struct SignalSpec {
    /// Its name.
    pub name: String,
    /// Points × 1000.
    pub points_milli: i64,
    /// Required event `type`.
    pub event_type: Option<String>,
    /// Required event name (`event` of a track).
    pub event: Option<String>,
    /// Field predicates, all of which must hold.
    pub predicates: Vec<Predicate>,
}

/// A sequence: `first` then `then` within a window.
#[derive(Debug, Clone)]
pub struct SequenceSpec {
    /// Its name.
    pub name: String,
    /// Index of the `first` signal.
    pub first: usize,
    /// Index of the `then` signal.
    pub then: usize,
    /// The window, in ms.
    pub within_ms: u64,
    /// Bonus points × 1000.
    pub points_milli: i64,
}

/// A field predicate (SPEC section 8).
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    /// The dotted path, split into segments.
    pub path: Vec<String>,
    /// The test applied to the value at the path.
    pub test: PredicateTest,
}

/// What a predicate tests.
#[derive(Debug, Clone, PartialEq)]
pub enum PredicateTest {
    /// Equal to this JSON value.
    Equals(serde_json::Value),
    /// A string starting with this prefix.
    Prefix(String),
    /// Present and not null (`true`), or absent or null (`false`).
    Exists(bool),
    /// Equal to one of these JSON values.
    OneOf(Vec<serde_json::Value>),
}

/// SPEC section 5 consent purposes.
#[derive(Debug, Clone)]
pub struct ConsentSpec {
    /// Purposes (lowercase name, default granted), sorted by name.
    pub purposes: Vec<(String, bool)>,
}

/// A view.
#[derive(Debug, Clone)]
pub struct ViewSpec {
    /// Its name.
    pub name: String,
    /// Index into `consent.purposes`.
    pub purpose: Option<usize>,
    /// Declared as an operator view.
    pub internal: bool,
    /// Minimum score × 1000.
    pub score_gte_milli: Option<i64>,
    /// Name of a signal or sequence that must currently add weight.
    pub has_signal: Option<String>,
    /// Its scored id ([`IntentSpec::scored_id`]), resolved when the spec is checked.
    pub has_signal_id: Option<u16>,
    /// Trait predicates (paths start with `traits.`).
    pub predicates: Vec<Predicate>,
    /// Output fields, in declaration order.
    pub fields: Vec<Field>,
}

/// A row field of a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The profile's score.
    Score,
    /// Names of the signals and sequences currently adding weight.
    Signals,
    /// A trait: the full field name (`traits.plan`) and the path below `traits`.
    Trait(String, Vec<String>),
    /// All the profile's values of an identifier type (its rank).
    Identifier(usize),
}

impl Field {
    /// The field's name as written in the spec and in rows.
    pub fn name<'a>(&'a self, spec: &'a Spec) -> &'a str {
        match self {
            Field::Score => "score",
            Field::Signals => "signals",
            Field::Trait(name, _) => name,
            Field::Identifier(rank) => &spec.identity.identifiers[*rank].name,
        }
    }
}

impl Spec {
    /// The built-in default spec.
    pub fn default_spec() -> Spec {
        // The default is checked by a unit test; failing here is a build defect, not input.
        match Spec::parse(DEFAULT_SPEC, DEFAULT_SPEC_NAME) {
            Ok(spec) => spec,
            Err(e) => panic!("built-in default spec is invalid: {e}"),
        }
    }

    /// What the spec says, as a number: equal for equal specs wherever they were read from
    /// (the processes of a cluster compare theirs before building their dataflow).
    pub fn fingerprint(&self) -> u64 {
        let mut blocklist: Vec<&String> = self.identity.blocklist.iter().collect();
        blocklist.sort();
        let mut spec = self.clone();
        spec.source.clear();
        spec.identity.blocklist.clear();
        xxhash_rust::xxh3::xxh3_64(format!("{spec:?} {blocklist:?}").as_bytes())
    }

    /// Reads and compiles a spec file.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            file: file.clone(),
            line: 0,
            key: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        Spec::parse(&text, &file)
    }

    /// Parses and compiles spec text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Spec, SpecError> {
        let ctx = Ctx { text, file };
        let raw: RawSpec = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| ctx.line_of(s.start)).unwrap_or(0);
            let message = e.message().trim().replace('\n', " ");
            let key = e
                .span()
                .map(|s| ctx.key_at(s.start))
                .unwrap_or_else(|| "-".into());
            SpecError {
                file: file.into(),
                line,
                key,
                message,
            }
        })?;
        ctx.compile(raw)
    }
}

impl IntentSpec {
    /// The scored ids (SPEC section 4): signals by declaration order, then sequences, as
    /// `(name, points × 1000)`. Id `num_signals + q` is sequence `q`'s bonus. Every table
    /// of scored names or points (the dataflow's weights, view rows, explanations) is this.
    pub fn scored(&self) -> impl Iterator<Item = (&str, i64)> {
        self.signals
            .iter()
            .map(|s| (s.name.as_str(), s.points_milli))
            .chain(
                self.sequences
                    .iter()
                    .map(|q| (q.name.as_str(), q.points_milli)),
            )
    }

    /// The id of a signal or sequence name.
    pub fn scored_id(&self, name: &str) -> Option<u16> {
        self.scored().position(|(n, _)| n == name).map(|i| i as u16)
    }
}

const DAY: u64 = 24 * 60 * 60 * 1000;

/// Parses `500ms`, `30s`, `30m`, `12h`, `7d` into milliseconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => DAY,
        _ => {
            return Err(format!(
                "\"{text}\" is not a duration (an integer and one of ms, s, m, h, d)"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&ms| ms < (1 << 50))
        .ok_or_else(|| {
            format!("\"{text}\" is not a duration (an integer and one of ms, s, m, h, d)")
        })
}

/// Converts points (integer or float with at most 3 decimals) to thousandths.
pub fn points_milli(v: &toml::Value) -> Result<i64, String> {
    const LIMIT: f64 = 1e15;
    match v {
        toml::Value::Integer(i) => i
            .checked_mul(1000)
            .filter(|m| (m.unsigned_abs() as f64) < LIMIT)
            .ok_or_else(|| format!("points {i} out of range")),
        toml::Value::Float(f) => {
            let scaled = f * 1000.0;
            let rounded = scaled.round();
            if !f.is_finite() || rounded.abs() >= LIMIT {
                Err(format!("points {f} out of range"))
            } else if (scaled - rounded).abs() > 1e-6 * rounded.abs().max(1.0) {
                Err(format!("points {f} have more than 3 decimals"))
            } else {
                Ok(rounded as i64)
            }
        }
        other => Err(format!("points must be a number, not {}", other.type_str())),
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} identifier types, {} signals, {} sequences, {} purposes, {} views",
            self.source,
            self.identity.identifiers.len(),
            self.intent.signals.len(),
            self.intent.sequences.len(),
            self.consent.purposes.len(),
            self.views.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprint follows what a spec says, not where it was read from.
    #[test]
    fn fingerprints_differ_only_with_the_spec() {
        let a = Spec::parse(DEFAULT_SPEC, "a.toml").unwrap();
        let b = Spec::parse(DEFAULT_SPEC, "b.toml").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.identity.max_links += 1;
        assert_ne!(a.fingerprint(), c.fingerprint());
        let mut d = a.clone();
        d.identity.blocklist.insert("0000".into());
        assert_ne!(a.fingerprint(), d.fingerprint());
    }

    #[test]
    fn default_spec_compiles() {
        let spec = Spec::default_spec();
        assert_eq!(spec.identity.identifiers.len(), 4);
        assert_eq!(spec.identity.max_links, 50);
        assert_eq!(spec.intent.signals[3].points_milli, 2500);
        assert_eq!(spec.intent.sequences[0].within_ms, 30 * 60 * 1000);
        assert_eq!(spec.views.len(), 4);
    }

    fn error_of(text: &str) -> SpecError {
        match Spec::parse(text, "t.toml") {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    const IDENT: &str =
        "[identity]\n[[identity.identifier]]\nname = \"user_id\"\npaths = [\"userId\"]\n";

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = error_of(&format!("{IDENT}colour = \"red\"\n"));
        assert_eq!((e.file.as_str(), e.line), ("t.toml", 5));
        assert!(e.message.contains("colour"), "{e}");
    }

    #[test]
    fn semantic_errors_have_lines() {
        let e = error_of(&format!(
            "{IDENT}[[identity.identifier]]\nname = \"user_id\"\npaths = [\"x\"]\n"
        ));
        assert_eq!(e.line, 6);
        assert!(e.message.contains("duplicate"));
        let e = error_of(&format!(
            "{IDENT}[intent]\n[[intent.signal]]\nname = \"a\"\npoints = 1\n[[intent.sequence]]\nname = \"s\"\nfirst = \"a\"\nthen = \"zz\"\nwithin = \"1m\"\npoints = 1\n"
        ));
        assert_eq!((e.line, e.key.as_str()), (12, "intent.sequence.then"));
        let e = error_of(&format!(
            "{IDENT}[[view]]\nname = \"v\"\npurpose = \"nope\"\nfields = []\n"
        ));
        assert_eq!((e.line, e.key.as_str()), (7, "view.purpose"));
        let e = error_of(&format!(
            "{IDENT}[[view]]\nname = \"v\"\ninternal = true\nfields = [\"colour\"]\n"
        ));
        assert_eq!((e.line, e.key.as_str()), (8, "view.fields"));
        let e = error_of(&format!("{IDENT}[[view]]\nname = \"v\"\nfields = []\n"));
        assert!(e.message.contains("internal"));
    }

    #[test]
    fn durations_and_points() {
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("7d"), Ok(7 * DAY));
        assert!(parse_duration("7 d").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("1.5h").is_err());
        assert_eq!(points_milli(&toml::Value::Float(2.5)), Ok(2500));
        assert_eq!(points_milli(&toml::Value::Float(-0.125)), Ok(-125));
        assert!(points_milli(&toml::Value::Float(0.0001)).is_err());
    }
}
