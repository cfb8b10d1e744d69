//! Compilation of a spec: the raw TOML model (serde structs that reject unknown keys) and
//! the checks of SPEC section 8 that turn it into a [`Spec`], one module per section of the
//! spec: [`input`](self::input), [`identity`](self::identity), [`intent`](self::intent),
//! [`consent`](self::consent) and [`views`](self::views). Every error names the file, the line and the key.

mod consent;
mod identity;
mod input;
mod intent;
mod views;

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use toml::Spanned;

use super::*;

// ---------------------------------------------------------------------------------------
// Raw TOML model.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpec {
    input: Option<RawInput>,
    identity: Spanned<RawIdentity>,
    intent: Option<RawIntent>,
    consent: Option<RawConsent>,
    #[serde(default)]
    view: Vec<RawView>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    dedup_window: Option<Spanned<String>>,
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

pub(super) struct Ctx<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a str,
}

impl Ctx<'_> {
    pub(super) fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The bare key written at the start of the line holding `offset`, for toml errors.
    pub(super) fn key_at(&self, offset: usize) -> String {
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

    pub(super) fn compile(&self, raw: RawSpec) -> Result<Spec, SpecError> {
        let input = self.input(raw.input)?;
        let identity = self.identity(raw.identity)?;
        let intent = self.intent(raw.intent)?;
        let consent = self.consent(raw.consent)?;
        let mut spec = Spec {
            source: self.file.into(),
            input,
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
