//! The dataflow spec: the TOML model of SPEC.md section 8 and every check on it.
//!
//! A spec is parsed into raw serde structs (which reject unknown keys), then compiled into
//! [`Spec`], whose names are resolved to indices. Every error names the file, the line and
//! the key, and is reported before any input is read.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

/// The built-in default spec (`dataflows/default.toml`), used when no `--dataflow` is given.
pub const DEFAULT_SPEC: &str = include_str!("../dataflows/default.toml");
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
    /// Identity resolution settings (SPEC section 2 and 3).
    pub identity: IdentitySpec,
    /// Intent scoring settings (SPEC section 4).
    pub intent: IntentSpec,
    /// Consent purposes (SPEC section 5).
    pub consent: ConsentSpec,
    /// Output views (SPEC section 5), in declaration order.
    pub views: Vec<ViewSpec>,
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

    /// Whether a signal or sequence has this name.
    pub fn scored_name_exists(&self, name: &str) -> bool {
        self.intent.scored_id(name).is_some()
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

// ---------------------------------------------------------------------------------------
// Raw TOML model.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    identity: Spanned<RawIdentity>,
    intent: Option<RawIntent>,
    consent: Option<RawConsent>,
    #[serde(default)]
    view: Vec<RawView>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    max_links: Option<Spanned<i64>>,
    blocklist: Option<Vec<String>>,
    #[serde(default)]
    identifier: Vec<RawIdentifier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentifier {
    name: Spanned<String>,
    paths: Spanned<Vec<String>>,
    #[serde(default)]
    anchor: bool,
    #[serde(default)]
    lowercase: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntent {
    half_life: Option<Spanned<String>>,
    max_age: Option<Spanned<String>>,
    max_future: Option<Spanned<String>>,
    #[serde(default)]
    signal: Vec<RawSignal>,
    #[serde(default)]
    sequence: Vec<RawSequence>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignal {
    name: Spanned<String>,
    points: Spanned<toml::Value>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    event: Option<String>,
    #[serde(rename = "where", default)]
    predicates: Vec<Spanned<RawPredicate>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSequence {
    name: Spanned<String>,
    first: Spanned<String>,
    then: Spanned<String>,
    within: Spanned<String>,
    points: Spanned<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPredicate {
    path: String,
    equals: Option<toml::Value>,
    prefix: Option<String>,
    exists: Option<bool>,
    one_of: Option<Vec<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsent {
    purposes: Option<Spanned<BTreeMap<String, bool>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawView {
    name: Spanned<String>,
    purpose: Option<Spanned<String>>,
    #[serde(default)]
    internal: bool,
    score_gte: Option<Spanned<toml::Value>>,
    has_signal: Option<Spanned<String>>,
    #[serde(rename = "where", default)]
    predicates: Vec<Spanned<RawPredicate>>,
    fields: Spanned<Vec<String>>,
}

// ---------------------------------------------------------------------------------------
// Compilation: resolve names, check every rule of SPEC section 8.

struct Ctx<'a> {
    text: &'a str,
    file: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The bare key written at the start of the line holding `offset`, for toml errors.
    fn key_at(&self, offset: usize) -> String {
        let end = offset.min(self.text.len());
        let start = self.text[..end].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or("");
        let key: String = line
            .trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']'))
            .collect();
        if key.is_empty() { "-".into() } else { key }
    }

    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: String,
    ) -> Result<T, SpecError> {
        Err(SpecError {
            file: self.file.into(),
            line: self.line_of(span.start),
            key: key.into(),
            message,
        })
    }

    fn compile(&self, raw: RawSpec) -> Result<Spec, SpecError> {
        let identity = self.identity(raw.identity)?;
        let intent = self.intent(raw.intent)?;
        let consent = self.consent(raw.consent)?;
        let mut spec = Spec {
            source: self.file.into(),
            identity,
            intent,
            consent,
            views: Vec::new(),
        };
        let mut names = HashSet::new();
        for view in raw.view {
            let compiled = self.view(view, &spec, &mut names)?;
            spec.views.push(compiled);
        }
        Ok(spec)
    }

    fn identity(&self, raw: Spanned<RawIdentity>) -> Result<IdentitySpec, SpecError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let max_links = match raw.max_links {
            None => 50,
            Some(v) if *v.get_ref() >= 0 => *v.get_ref() as usize,
            Some(v) => {
                return self.err(
                    v.span(),
                    "identity.max_links",
                    "must be a non-negative integer".into(),
                );
            }
        };
        let blocklist = raw
            .blocklist
            .unwrap_or_else(|| {
                [
                    "null",
                    "undefined",
                    "none",
                    "nil",
                    "0",
                    "-1",
                    "anonymous",
                    "unknown",
                    "test@test.com",
                    "test@example.com",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            })
            .into_iter()
            .map(|v| v.to_lowercase())
            .collect();
        if raw.identifier.is_empty() {
            return self.err(
                span,
                "identity.identifier",
                "at least one identifier type is required".into(),
            );
        }
        let mut seen = HashSet::new();
        let mut identifiers = Vec::new();
        for id in raw.identifier {
            let name = id.name.get_ref().clone();
            let key = "identity.identifier.name";
            if !seen.insert(name.clone()) {
                return self.err(
                    id.name.span(),
                    key,
                    format!("duplicate identifier type \"{name}\""),
                );
            }
            if name.is_empty()
                || name == "score"
                || name == "signals"
                || name.starts_with("traits.")
                || name.contains(':')
            {
                return self.err(
                    id.name.span(),
                    key,
                    format!("\"{name}\" cannot name an identifier type (empty, reserved, or contains ':')"),
                );
            }
            if id.paths.get_ref().is_empty() {
                return self.err(
                    id.paths.span(),
                    "identity.identifier.paths",
                    "at least one path is required".into(),
                );
            }
            let mut paths = Vec::new();
            for p in id.paths.get_ref() {
                paths.push(self.path(p, id.paths.span(), "identity.identifier.paths")?);
            }
            identifiers.push(IdentifierType {
                name,
                paths,
                anchor: id.anchor,
                lowercase: id.lowercase,
            });
        }
        if identifiers.len() > u8::MAX as usize {
            return self.err(
                span,
                "identity.identifier",
                "at most 255 identifier types".into(),
            );
        }
        Ok(IdentitySpec {
            max_links,
            blocklist,
            identifiers,
        })
    }

    fn path(
        &self,
        p: &str,
        span: std::ops::Range<usize>,
        key: &str,
    ) -> Result<Vec<String>, SpecError> {
        let segments: Vec<String> = p.split('.').map(str::to_string).collect();
        if segments.iter().any(String::is_empty) {
            return self.err(span, key, format!("\"{p}\" is not a dotted path"));
        }
        Ok(segments)
    }

    fn duration(
        &self,
        raw: Option<Spanned<String>>,
        key: &str,
        default_ms: u64,
    ) -> Result<u64, SpecError> {
        match raw {
            None => Ok(default_ms),
            Some(v) => parse_duration(v.get_ref()).map_err(|m| SpecError {
                file: self.file.into(),
                line: self.line_of(v.span().start),
                key: key.into(),
                message: m,
            }),
        }
    }

    fn points(&self, v: &Spanned<toml::Value>, key: &str) -> Result<i64, SpecError> {
        points_milli(v.get_ref()).or_else(|m| self.err(v.span(), key, m))
    }

    fn intent(&self, raw: Option<RawIntent>) -> Result<IntentSpec, SpecError> {
        let raw = raw.unwrap_or(RawIntent {
            half_life: None,
            max_age: None,
            max_future: None,
            signal: Vec::new(),
            sequence: Vec::new(),
        });
        let half_life_span = raw.half_life.as_ref().map(|s| s.span()).unwrap_or(0..0);
        let half_life_ms = self.duration(raw.half_life, "intent.half_life", 7 * DAY)?;
        if half_life_ms == 0 {
            return self.err(
                half_life_span,
                "intent.half_life",
                "must be positive".into(),
            );
        }
        let max_age_ms = self.duration(raw.max_age, "intent.max_age", 28 * DAY)?;
        let max_future_ms = self.duration(raw.max_future, "intent.max_future", DAY)?;
        let mut names = HashSet::new();
        let mut signals = Vec::new();
        for s in raw.signal {
            let name = s.name.get_ref().clone();
            if !names.insert(name.clone()) {
                return self.err(
                    s.name.span(),
                    "intent.signal.name",
                    format!("duplicate signal or sequence name \"{name}\""),
                );
            }
            let mut predicates = Vec::new();
            for p in &s.predicates {
                predicates.push(self.predicate(p, "intent.signal.where")?);
            }
            signals.push(SignalSpec {
                name,
                points_milli: self.points(&s.points, "intent.signal.points")?,
                event_type: s.event_type,
                event: s.event,
                predicates,
            });
        }
        let mut sequences = Vec::new();
        for q in raw.sequence {
            let name = q.name.get_ref().clone();
            if !names.insert(name.clone()) {
                return self.err(
                    q.name.span(),
                    "intent.sequence.name",
                    format!("duplicate signal or sequence name \"{name}\""),
                );
            }
            let find = |n: &Spanned<String>, key: &str| -> Result<usize, SpecError> {
                match signals
                    .iter()
                    .position(|s: &SignalSpec| &s.name == n.get_ref())
                {
                    Some(i) => Ok(i),
                    None => self.err(n.span(), key, format!("unknown signal \"{}\"", n.get_ref())),
                }
            };
            let first = find(&q.first, "intent.sequence.first")?;
            let then = find(&q.then, "intent.sequence.then")?;
            sequences.push(SequenceSpec {
                name,
                first,
                then,
                within_ms: self.duration(Some(q.within), "intent.sequence.within", 0)?,
                points_milli: self.points(&q.points, "intent.sequence.points")?,
            });
        }
        Ok(IntentSpec {
            half_life_ms,
            max_age_ms,
            max_future_ms,
            signals,
            sequences,
        })
    }

    fn predicate(&self, raw: &Spanned<RawPredicate>, key: &str) -> Result<Predicate, SpecError> {
        let span = raw.span();
        let p = raw.get_ref();
        let path = self.path(&p.path, span.clone(), key)?;
        let mut tests = Vec::new();
        if let Some(v) = &p.equals {
            tests.push(PredicateTest::Equals(
                toml_to_json(v).or_else(|m| self.err(span.clone(), key, m))?,
            ));
        }
        if let Some(v) = &p.prefix {
            tests.push(PredicateTest::Prefix(v.clone()));
        }
        if let Some(v) = p.exists {
            tests.push(PredicateTest::Exists(v));
        }
        if let Some(vs) = &p.one_of {
            let mut out = Vec::new();
            for v in vs {
                out.push(toml_to_json(v).or_else(|m| self.err(span.clone(), key, m))?);
            }
            tests.push(PredicateTest::OneOf(out));
        }
        match tests.len() {
            1 => Ok(Predicate {
                path,
                test: tests.remove(0),
            }),
            _ => self.err(
                span,
                key,
                format!(
                    "predicate on \"{}\" needs exactly one of equals, prefix, exists, one_of",
                    p.path
                ),
            ),
        }
    }

    fn consent(&self, raw: Option<RawConsent>) -> Result<ConsentSpec, SpecError> {
        let mut purposes: Vec<(String, bool)> = Vec::new();
        if let Some(raw) = raw.and_then(|r| r.purposes) {
            let span = raw.span();
            for (name, granted) in raw.into_inner() {
                let lower = name.to_lowercase();
                if purposes.iter().any(|(n, _)| *n == lower) {
                    return self.err(
                        span,
                        "consent.purposes",
                        format!("duplicate purpose \"{name}\" (names are case-insensitive)"),
                    );
                }
                purposes.push((lower, granted));
            }
        }
        purposes.sort();
        Ok(ConsentSpec { purposes })
    }

    fn view(
        &self,
        raw: RawView,
        spec: &Spec,
        names: &mut HashSet<String>,
    ) -> Result<ViewSpec, SpecError> {
        let name = raw.name.get_ref().clone();
        if !names.insert(name.clone()) {
            return self.err(
                raw.name.span(),
                "view.name",
                format!("duplicate view name \"{name}\""),
            );
        }
        if name.is_empty() {
            return self.err(raw.name.span(), "view.name", "a view needs a name".into());
        }
        let purpose = match &raw.purpose {
            None => None,
            Some(p) => {
                let lower = p.get_ref().to_lowercase();
                match spec.consent.purposes.iter().position(|(n, _)| *n == lower) {
                    Some(i) => Some(i),
                    None => {
                        return self.err(
                            p.span(),
                            "view.purpose",
                            format!("view \"{name}\": unknown purpose \"{}\"", p.get_ref()),
                        );
                    }
                }
            }
        };
        if purpose.is_none() && !raw.internal {
            return self.err(
                raw.name.span(),
                "view.internal",
                format!("view \"{name}\" has no purpose: declare it `internal = true` (operators only) or give it a purpose"),
            );
        }
        let score_gte_milli = match &raw.score_gte {
            None => None,
            Some(v) => Some(self.points(v, "view.score_gte")?),
        };
        if let Some(s) = &raw.has_signal
            && !spec.scored_name_exists(s.get_ref())
        {
            return self.err(
                s.span(),
                "view.has_signal",
                format!(
                    "view \"{name}\": unknown signal or sequence \"{}\"",
                    s.get_ref()
                ),
            );
        }
        let mut predicates = Vec::new();
        for p in &raw.predicates {
            let pred = self.predicate(p, "view.where")?;
            if pred.path.len() < 2 || pred.path[0] != "traits" {
                return self.err(
                    p.span(),
                    "view.where",
                    format!("view \"{name}\": a view condition's path must be traits.<key>"),
                );
            }
            predicates.push(pred);
        }
        let mut fields = Vec::new();
        for f in raw.fields.get_ref() {
            let field = if f == "score" {
                Field::Score
            } else if f == "signals" {
                Field::Signals
            } else if let Some(rest) = f.strip_prefix("traits.") {
                let path = self.path(rest, raw.fields.span(), "view.fields")?;
                Field::Trait(f.clone(), path)
            } else if let Some(rank) = spec.identity.identifiers.iter().position(|t| t.name == *f) {
                Field::Identifier(rank)
            } else {
                return self.err(
                    raw.fields.span(),
                    "view.fields",
                    format!("view \"{name}\": unknown field \"{f}\" (expected score, signals, traits.<key> or an identifier type)"),
                );
            };
            if fields.contains(&field) {
                return self.err(
                    raw.fields.span(),
                    "view.fields",
                    format!("view \"{name}\": duplicate field \"{f}\""),
                );
            }
            fields.push(field);
        }
        Ok(ViewSpec {
            name,
            purpose,
            internal: raw.internal,
            score_gte_milli,
            has_signal_id: raw
                .has_signal
                .as_ref()
                .and_then(|s| spec.intent.scored_id(s.get_ref())),
            has_signal: raw.has_signal.map(|s| s.into_inner()),
            predicates,
            fields,
        })
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

/// Converts a TOML value to the JSON value a predicate compares with.
fn toml_to_json(v: &toml::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => J::from(
            serde_json::Number::from_f64(*f).ok_or_else(|| format!("{f} is not a JSON number"))?,
        ),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), toml_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        toml::Value::Datetime(d) => {
            return Err(format!("{d}: a TOML date-time is not a JSON value"));
        }
    })
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
