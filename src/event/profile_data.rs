//! What an event says about its profile besides identifiers and signals (SPEC section 5):
//! consent records and traits. Pure functions of the event, evaluated once at the input.

use serde_json::Value;

use super::{Event, Kind};
use crate::spec::ConsentSpec;

/// Consent records of an event: `(purpose index, granted)` for each boolean entry of
/// `context.consent.categoryPreferences` whose name matches a purpose case-insensitively.
/// Unknown purposes and non-boolean values are ignored.
pub fn consent(event: &Event, spec: &ConsentSpec) -> Vec<(u8, bool)> {
    if event.kind == Kind::Forget {
        return Vec::new();
    }
    let prefs = event
        .body
        .get("context")
        .and_then(|c| c.get("consent"))
        .and_then(|c| c.get("categoryPreferences"))
        .and_then(Value::as_object);
    let Some(prefs) = prefs else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, value) in prefs {
        let Some(granted) = value.as_bool() else {
            continue;
        };
        let lower = name.to_lowercase();
        if let Some(index) = spec.purposes.iter().position(|(p, _)| *p == lower) {
            out.push((index as u8, granted));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Trait values of an event: `(key, source, JSON text)` where source 1 is `traits` (identify
/// events only) and 0 is `context.traits` (any event). Within one event `traits` wins, which
/// the source rank encodes.
pub fn traits(event: &Event) -> Vec<(String, u8, String)> {
    if event.kind == Kind::Forget {
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Some(ctx) = event
        .body
        .get("context")
        .and_then(|c| c.get("traits"))
        .and_then(Value::as_object)
    {
        out.extend(ctx.iter().map(|(k, v)| (k.clone(), 0, v.to_string())));
    }
    if event.kind == Kind::Identify
        && let Some(traits) = event.body.get("traits").and_then(Value::as_object)
    {
        out.extend(traits.iter().map(|(k, v)| (k.clone(), 1, v.to_string())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;

    fn event(line: &str) -> Event {
        crate::event::parse(line.as_bytes(), &Spec::default_spec(), None).unwrap()
    }

    #[test]
    fn consent_names_are_case_insensitive_and_values_boolean() {
        let spec = Spec::default_spec();
        let e = event(
            r#"{"userId":"u","timestamp":0,"context":{"consent":{"categoryPreferences":{"Marketing":true,"ANALYTICS":false,"ads":true,"personalization":"yes"}}}}"#,
        );
        // purposes sorted: analytics 0, marketing 1, personalization 2
        assert_eq!(consent(&e, &spec.consent), vec![(0, false), (1, true)]);
    }

    #[test]
    fn traits_from_identify_and_context() {
        let e = event(
            r#"{"type":"identify","userId":"u","timestamp":0,"traits":{"plan":"pro"},"context":{"traits":{"plan":"free","x":null}}}"#,
        );
        let mut t = traits(&e);
        t.sort();
        assert_eq!(
            t,
            vec![
                ("plan".into(), 0, "\"free\"".into()),
                ("plan".into(), 1, "\"pro\"".into()),
                ("x".into(), 0, "null".into())
            ]
        );
        let track = event(r#"{"type":"track","userId":"u","timestamp":0,"traits":{"plan":"pro"}}"#);
        assert!(
            traits(&track).is_empty(),
            "traits count on identify events only"
        );
    }
}
