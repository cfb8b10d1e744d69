//! Field predicates (SPEC section 4 and 8): `equals`, `prefix`, `exists`, `one_of` on a
//! dotted path. Used on events (signals) and on profile traits (view conditions).

use serde_json::{Map, Value};

use super::json;
use crate::spec::{Predicate, PredicateTest};

/// Whether `predicate` holds on `root` (an event object, or a profile's traits wrapped as
/// `{"traits": {...}}`).
pub fn holds(predicate: &Predicate, root: &Map<String, Value>) -> bool {
    test(&predicate.test, json::lookup(root, &predicate.path))
}

/// Whether every predicate holds.
pub fn all_hold(predicates: &[Predicate], root: &Map<String, Value>) -> bool {
    predicates.iter().all(|p| holds(p, root))
}

/// Applies a test to the value found at the path (`None` when absent).
pub fn test(test: &PredicateTest, value: Option<&Value>) -> bool {
    match test {
        PredicateTest::Exists(wanted) => *wanted == value.is_some_and(|v| !v.is_null()),
        PredicateTest::Prefix(prefix) => {
            matches!(value, Some(Value::String(s)) if s.starts_with(prefix.as_str()))
        }
        PredicateTest::Equals(expected) => value.is_some_and(|v| json_equal(v, expected)),
        PredicateTest::OneOf(options) => {
            value.is_some_and(|v| options.iter().any(|o| json_equal(v, o)))
        }
    }
}

/// JSON equality: same type and value; numbers compare by numeric value (so `1` equals
/// `1.0`), but a string never equals a number and `true` never equals `1`.
pub fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(i), Some(j), _, _) => i == j,
                (_, _, Some(i), Some(j)) => i == j,
                _ if x.is_f64() || y.is_f64() => x.as_f64() == y.as_f64(),
                _ => false, // one negative i64, one u64 beyond i64
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equality_is_typed_but_numeric() {
        assert!(json_equal(&json!(1), &json!(1.0)));
        assert!(!json_equal(&json!("1"), &json!(1)));
        assert!(!json_equal(&json!(true), &json!(1)));
        assert!(json_equal(
            &json!({"a": [1, "x"]}),
            &json!({"a": [1.0, "x"]})
        ));
        assert!(!json_equal(&json!(null), &json!(false)));
    }

    #[test]
    fn tests_on_present_absent_and_null() {
        assert!(test(&PredicateTest::Exists(true), Some(&json!(0))));
        assert!(!test(&PredicateTest::Exists(true), Some(&Value::Null)));
        assert!(test(&PredicateTest::Exists(false), Some(&Value::Null)));
        assert!(test(&PredicateTest::Exists(false), None));
        assert!(test(
            &PredicateTest::Prefix("/pricing".into()),
            Some(&json!("/pricing/x"))
        ));
        assert!(!test(&PredicateTest::Prefix("1".into()), Some(&json!(12))));
        assert!(test(
            &PredicateTest::OneOf(vec![json!("a"), json!(2)]),
            Some(&json!(2.0))
        ));
        assert!(!test(&PredicateTest::Equals(json!(null)), None));
    }
}
