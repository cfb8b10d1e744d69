//! Changes to a running spec's views (`PUT` and `DELETE /v1/views/NAME`): the new spec's
//! text, compiled and checked exactly as `throughline check` checks a file.
//!
//! A definition is the TOML of one `[[view]]` table (the header may be left out) or the same
//! table as a JSON object. Its `name`, when it has one, must be the name in the path; when
//! it has none, the path's name is given to it. The new view replaces the view of that name
//! or is added after the others; the rest of the spec's text is kept as written (comments
//! too). An error names the definition and its line: `view NAME:3: key `view.where`: …`.

use super::{Spec, SpecError};

/// A spec's text and what it compiles to.
#[derive(Debug, Clone)]
pub struct Edited {
    /// The spec's TOML text.
    pub text: String,
    /// The compiled spec.
    pub spec: Spec,
}

/// Whether `name` may name a view changed over HTTP: 1 to 64 ASCII letters, digits, `_`
/// or `-` (it is a URL path segment, a table name and a topic suffix).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The definition `body` of view `name` as TOML text starting with `[[view]]` and naming
/// `name`, with how many lines were put before the body's own (`None` for JSON, whose lines
/// are not the text's), or why it is not one.
pub fn view_definition(name: &str, body: &str) -> Result<(String, Option<usize>), SpecError> {
    let error = |line: usize, key: &str, message: String| SpecError {
        file: format!("view {name}"),
        line,
        key: key.into(),
        message,
    };
    if !valid_name(name) {
        return Err(error(
            0,
            "view.name",
            "a view's name is 1 to 64 letters, digits, _ or -".into(),
        ));
    }
    let trimmed = body.trim_start();
    let mut added = Some(0);
    let text = if trimmed.starts_with('{') {
        added = None;
        let value: serde_json::Value = serde_json::from_str(body)
            .map_err(|e| error(e.line(), "-", format!("not a JSON object: {e}")))?;
        let serde_json::Value::Object(_) = value else {
            return Err(error(1, "-", "not a JSON object".into()));
        };
        let wrapped = serde_json::json!({ "view": [value] });
        toml::to_string(&wrapped)
            .map_err(|e| error(1, "-", format!("cannot be written as TOML: {e}")))?
    } else {
        let first = body
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'));
        match first {
            Some(l) if l.starts_with("[[view]]") => body.to_string(),
            _ => {
                added = Some(1);
                format!("[[view]]\n{body}")
            }
        }
    };
    // the name: the path's, whether written or not
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(0, |s| {
            text.bytes().take(s.start).filter(|b| *b == b'\n').count() + 1
        });
        error(line, "view", e.message().trim().replace('\n', " "))
    })?;
    let views = table.get("view").and_then(|v| v.as_array());
    if views.map_or(0, Vec::len) != 1 || table.len() != 1 {
        return Err(error(
            1,
            "view",
            "a definition is one [[view]] table and nothing else".into(),
        ));
    }
    let written = views
        .and_then(|v| v.first())
        .and_then(|v| v.get("name"))
        .map(|n| n.as_str().unwrap_or_default().to_string());
    match written {
        Some(n) if n == name => Ok((text, added)),
        Some(n) => Err(error(
            1,
            "view.name",
            format!("the definition names view {n:?}, the path {name:?}"),
        )),
        None => Ok((
            text.replacen("[[view]]", &format!("[[view]]\nname = {name:?}"), 1),
            added.map(|n| n + 1),
        )),
    }
}

/// `text` without the view called `name` (the text itself when it has none), and whether it
/// had one.
fn without_view(text: &str, name: &str) -> Result<(String, bool), String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| format!("the running spec does not parse: {e}"))?;
    let Some(views) = doc.get_mut("view").and_then(|v| v.as_array_of_tables_mut()) else {
        return Ok((text.to_string(), false));
    };
    let before = views.len();
    views.retain(|t| t.get("name").and_then(|n| n.as_str()) != Some(name));
    if views.len() == before {
        return Ok((text.to_string(), false));
    }
    if views.is_empty() {
        doc.remove("view");
    }
    Ok((doc.to_string(), true))
}

/// The spec `text` with view `name` defined by `body` (replacing the view of that name, or
/// added after the others), compiled; `file` names the running spec in errors about it.
pub fn put_view(text: &str, file: &str, name: &str, body: &str) -> Result<Edited, SpecError> {
    let (definition, added) = view_definition(name, body)?;
    let (base, _) = without_view(text, name).map_err(|message| SpecError {
        file: file.into(),
        line: 0,
        key: "-".into(),
        message,
    })?;
    let mut base = base;
    if !base.is_empty() && !base.ends_with('\n') {
        base.push('\n');
    }
    base.push('\n');
    let offset = base.matches('\n').count();
    let combined = format!("{base}{definition}");
    match Spec::parse(&combined, file) {
        Ok(spec) => Ok(Edited {
            text: combined,
            spec,
        }),
        // an error in the definition names its own line
        Err(mut e) if e.line > offset => {
            e.file = format!("view {name}");
            e.line = match added {
                Some(added) => (e.line - offset).saturating_sub(added).max(1),
                None => 0,
            };
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// The spec `text` without view `name`, compiled; an error when it has no such view or the
/// spec would have no view left.
pub fn delete_view(text: &str, file: &str, name: &str) -> Result<Edited, String> {
    let (rest, had) = without_view(text, name)?;
    if !had {
        return Err(format!("no view named {name}"));
    }
    let spec = Spec::parse(&rest, file).map_err(|e| e.to_string())?;
    Ok(Edited { text: rest, spec })
}

/// A whole new spec for a running server (`PUT /v1/spec`), against the one it runs: the view
/// changes that make one into the other (a deletion is `None`), or the sections that differ
/// besides the views (those need a rebuild from the log: a restart with the new spec).
pub fn view_changes(
    now: &Spec,
    new_text: &str,
    new: &Spec,
) -> Result<Vec<(String, Option<String>)>, Vec<&'static str>> {
    let mut differ = Vec::new();
    if now.input != new.input {
        differ.push("[input]");
    }
    fn blocklist(s: &Spec) -> Vec<&String> {
        let mut b: Vec<&String> = s.identity.blocklist.iter().collect();
        b.sort();
        b
    }
    let identity = |s: &Spec| format!("{:?}", (&s.identity.identifiers, s.identity.max_links));
    if identity(now) != identity(new) || blocklist(now) != blocklist(new) {
        differ.push("[identity]");
    }
    if format!("{:?}", now.intent) != format!("{:?}", new.intent) {
        differ.push("[intent]");
    }
    if now.consent.purposes != new.consent.purposes {
        differ.push("[consent]");
    }
    if !differ.is_empty() {
        return Err(differ);
    }
    let mut changes: Vec<(String, Option<String>)> = now
        .views
        .iter()
        .filter(|v| !new.views.iter().any(|w| w.name == v.name))
        .map(|v| (v.name.clone(), None))
        .collect();
    for view in &new.views {
        let same = now
            .views
            .iter()
            .any(|v| v.name == view.name && format!("{v:?}") == format!("{view:?}"));
        if !same {
            changes.push((view.name.clone(), view_table(new_text, &view.name)));
        }
    }
    Ok(changes)
}

/// The rules of `new` that a rebuild from the log cannot apply exactly to *folded* lines
/// (retired events that compaction folded into spans under `now`, keeping only what `now`
/// needs of them: `crate::store::compact`), each as `(rule, why)`; empty when a rebuild is
/// exact whatever the log holds.
///
/// - `[identity]`: a span keeps the identifiers and links `now`'s types read, so other
///   types, paths, `max_links` or blocklist would see other ones;
/// - `[consent]` purposes: a span keeps the consent records of `now`'s purposes only;
/// - `[intent]`: a span keeps no signal or sequence role, which is exact only while `new`'s
///   horizon (`max_age` plus the longest sequence window) is no longer than `now`'s: the
///   folded events then weigh nothing under `new` either.
///
/// Traits, purposes' defaults, signals' points and matchers within the horizon, and views
/// are always exact.
pub fn inexact_rules(now: &Spec, new: &Spec) -> Vec<(String, String)> {
    let mut rules = Vec::new();
    let identity = |s: &Spec| {
        let mut blocklist: Vec<&String> = s.identity.blocklist.iter().collect();
        blocklist.sort();
        format!(
            "{:?}",
            (&s.identity.identifiers, s.identity.max_links, blocklist)
        )
    };
    if identity(now) != identity(new) {
        rules.push((
            "[identity]".to_string(),
            "a folded line keeps only the identifiers and links the running spec's identifier types read".to_string(),
        ));
    }
    let purposes = |s: &Spec| {
        s.consent
            .purposes
            .iter()
            .map(|(p, _)| p.clone())
            .collect::<Vec<_>>()
    };
    if purposes(now) != purposes(new) {
        rules.push((
            "[consent] purposes".to_string(),
            "a folded line keeps only the consent records of the running spec's purposes"
                .to_string(),
        ));
    }
    let horizon = |s: &Spec| {
        let within = s
            .intent
            .sequences
            .iter()
            .map(|q| q.within_ms)
            .max()
            .unwrap_or(0);
        s.intent.max_age_ms.saturating_add(within)
    };
    if horizon(new) > horizon(now) {
        rules.push((
            "[intent] max_age".to_string(),
            format!(
                "max_age plus the longest sequence window grows from {} to {} ms: folded events, whose signals and sequence roles are gone, would still weigh",
                horizon(now),
                horizon(new)
            ),
        ));
    }
    rules
}

/// The `[[view]]` table called `name` in spec `text`, as a definition's TOML.
fn view_table(text: &str, name: &str) -> Option<String> {
    let doc: toml_edit::DocumentMut = text.parse().ok()?;
    let table = doc
        .get("view")?
        .as_array_of_tables()?
        .iter()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))?
        .clone();
    let mut one = toml_edit::ArrayOfTables::new();
    one.push(table);
    let mut out = toml_edit::DocumentMut::new();
    out.insert("view", toml_edit::Item::ArrayOfTables(one));
    Some(out.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DEFAULT_SPEC, DEFAULT_SPEC_NAME};

    #[test]
    fn a_view_is_added_replaced_and_deleted_keeping_the_rest_of_the_text() {
        let added = put_view(
            DEFAULT_SPEC,
            DEFAULT_SPEC_NAME,
            "pricing_40",
            "purpose = \"marketing\"\nscore_gte = 40\nfields = [\"email\", \"score\"]\n",
        )
        .unwrap();
        assert_eq!(added.spec.views.len(), 5);
        assert_eq!(added.spec.views[4].name, "pricing_40");
        assert!(added.text.starts_with(DEFAULT_SPEC.lines().next().unwrap()));
        let json = r#"{"purpose": "marketing", "score_gte": 50, "where": [{"path": "traits.plan", "exists": true}], "fields": ["email"]}"#;
        let replaced = put_view(&added.text, "t", "pricing_40", json).unwrap();
        assert_eq!(replaced.spec.views.len(), 5);
        assert_eq!(replaced.spec.views[4].score_gte_milli, Some(50_000));
        assert_eq!(replaced.spec.views[4].predicates.len(), 1);
        let deleted = delete_view(&replaced.text, "t", "pricing_40").unwrap();
        assert_eq!(deleted.spec.views.len(), 4);
        assert!(delete_view(&deleted.text, "t", "pricing_40").is_err());
        // a view of the file itself may be replaced too, in place of the old one
        let scores = put_view(
            DEFAULT_SPEC,
            "t",
            "scores",
            "internal = true\nfields = [\"score\"]",
        )
        .unwrap();
        assert_eq!(scores.spec.views.len(), 4);
        assert!(
            scores
                .spec
                .views
                .iter()
                .any(|v| v.name == "scores" && v.internal)
        );
    }

    proptest::proptest! {
        /// A definition is input from the network: any bytes get an answer, never a panic.
        #[test]
        fn any_definition_gets_an_answer(body in "(\\PC|\n|\\[|\\]|=|\"|\\{|\\}){0,80}", name in "[a-z_]{1,8}|.{0,4}") {
            let _ = put_view(DEFAULT_SPEC, "t", &name, &body);
            let _ = put_view(DEFAULT_SPEC, "t", &name, &format!("[[view]]\n{body}"));
            let _ = delete_view(DEFAULT_SPEC, "t", &name);
        }
    }

    #[test]
    fn a_new_spec_is_view_changes_or_a_rebuild() {
        let now = Spec::parse(DEFAULT_SPEC, "now").unwrap();
        let text = DEFAULT_SPEC
            .replace("score_gte = 20", "score_gte = 30")
            .replace("name = \"personalization\"", "name = \"personal\"");
        let new = Spec::parse(&text, "new").unwrap();
        let changes = view_changes(&now, &text, &new).unwrap();
        let names: Vec<(&str, bool)> = changes
            .iter()
            .map(|(n, d)| (n.as_str(), d.is_some()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("personalization", false),
                ("marketing_audience", true),
                ("personal", true)
            ]
        );
        let (_, definition) = &changes[1];
        assert!(definition.as_deref().unwrap().contains("score_gte = 30"));
        // a changed signal is a rebuild
        assert!(view_changes(&now, DEFAULT_SPEC, &now).unwrap().is_empty());
        let mut signal = now.clone();
        signal.intent.signals[0].points_milli += 1;
        assert_eq!(
            view_changes(&now, DEFAULT_SPEC, &signal),
            Err(vec!["[intent]"])
        );
    }

    #[test]
    fn a_bad_definition_names_its_own_line_and_key() {
        let e = put_view(
            DEFAULT_SPEC,
            DEFAULT_SPEC_NAME,
            "v",
            "purpose = \"marketing\"\nfields = [\"colour\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.line, e.key.as_str()),
            ("view v", 2, "view.fields"),
            "{e}"
        );
        let e = put_view(
            DEFAULT_SPEC,
            "t",
            "v",
            "name = \"w\"\ninternal = true\nfields = []",
        )
        .unwrap_err();
        assert!(e.message.contains("names view"), "{e}");
        assert!(put_view(DEFAULT_SPEC, "t", "a b", "internal = true\nfields = []").is_err());
        assert!(
            put_view(
                DEFAULT_SPEC,
                "t",
                "v",
                "[[view]]\ninternal = true\n[[view]]\n"
            )
            .is_err()
        );
        assert!(put_view(DEFAULT_SPEC, "t", "v", "{\"internal\": 3").is_err());
    }
}
