//! Retention (SPEC section 9) changes nothing observable: the engine that retires state
//! gives the change stream, the snapshot and the dead letters of the engine that keeps
//! everything (`Retention::KeepAll`), with 1, 2 and 4 workers, and both agree with the oracle
//! (which keeps everything), on spans of months and years, erasures of profiles whose events
//! retired long ago, hubs that form after the links through them retired, late events and
//! duplicates inside and outside the dedup window.

mod common;

use proptest::prelude::*;
use serde_json::json;
use throughline::engine::Retention;
use throughline::replay::{FIXTURE_WALL_CLOCK_MS, run_bytes_with};
use throughline::spec::Spec;

const DAY: u64 = 86_400_000;
/// 2025-01-01T00:00:00Z.
const START: u64 = 1_735_689_600_000;

/// Retiring and keeping everything agree, for 1, 2 and 4 workers, and with the oracle.
fn same(spec: &Spec, input: &[u8]) {
    let run = |workers, retention| {
        run_bytes_with(spec, input.to_vec(), workers, retention)
            .unwrap_or_else(|e| panic!("engine failed: {e}"))
    };
    let kept = run(1, Retention::KeepAll);
    for workers in [1, 2, 4] {
        let retired = run(workers, Retention::Retire);
        assert_eq!(retired.changes, kept.changes, "{workers} workers: changes");
        assert_eq!(
            retired.snapshot, kept.snapshot,
            "{workers} workers: snapshot"
        );
        assert_eq!(retired.dead_letters, kept.dead_letters, "dead letters");
    }
    let oracle = common::oracle::run(spec, input, FIXTURE_WALL_CLOCK_MS);
    assert_eq!(kept.changes, oracle.changes, "the oracle's changes");
    assert_eq!(kept.snapshot, oracle.snapshot, "the oracle's snapshot");
    for (t, snapshot) in &oracle.snapshots {
        assert_eq!(
            &common::consolidate_upto(&kept.changes, *t),
            snapshot,
            "consolidated up to {t}"
        );
    }
}

fn lines(events: &[serde_json::Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.extend(serde_json::to_vec(e).unwrap());
        out.push(b'\n');
    }
    out
}

/// A year and more of generated traffic (with erasures, a hub device, late and very late
/// events, duplicates, bad lines) from a small population, so identifier sets repeat and
/// most events retire.
#[test]
fn years_of_generated_traffic_retire_without_a_trace() {
    let spec = Spec::default_spec();
    for (seed, days, adversarial) in [(41, 400, true), (43, 120, false)] {
        same(
            &spec,
            &common::workload_over(seed, 1500, 40, adversarial, Some(days)),
        );
    }
}

/// Minutes-long decay: events retire within the run many times over.
#[test]
fn fast_decay_retires_without_a_trace() {
    let spec = common::fast_decay_spec(4, "1m", "4m");
    same(&spec, &common::workload(44, 1500, 30, true));
}

/// A `forget` of a profile whose events (links, consent, traits) all retired long ago,
/// by an identifier that appears only in retired events, and of another identifier of it:
/// every view forgets them, and the anchor shared with another set keeps that set's record.
#[test]
fn forgetting_long_retired_events() {
    let spec = Spec::default_spec();
    let at = |day: u64| START + day * DAY;
    let consent = |granted: bool| json!({"categoryPreferences": {"marketing": granted}});
    let mut events = vec![
        json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "m1",
               "traits": {"email": "p@x.org", "plan": "pro"}, "timestamp": at(0),
               "context": {"consent": consent(true)}}),
        json!({"type": "identify", "userId": "u1", "anonymousId": "a2", "messageId": "m2",
               "traits": {"plan": "free"}, "timestamp": at(1),
               "context": {"consent": consent(false), "device": {"id": "d1"}}}),
        json!({"type": "page", "anonymousId": "a1", "messageId": "m3", "timestamp": at(2),
               "properties": {"path": "/pricing"}}),
        json!({"type": "identify", "userId": "u2", "anonymousId": "a9", "messageId": "m4",
               "traits": {"plan": "enterprise"}, "timestamp": at(3),
               "context": {"consent": consent(true)}}),
    ];
    // months of other traffic, so the events above retire
    for day in (10..200).step_by(7) {
        events.push(
            json!({"type": "track", "event": "Signed Up", "userId": "u2",
                           "messageId": format!("x{day}"), "timestamp": at(day)}),
        );
    }
    // the later set (a2, d1) wins for u1; forgetting a2 brings a1's set back
    events.push(json!({"type": "forget", "anonymousId": "a2", "timestamp": at(201)}));
    events.push(
        json!({"type": "track", "event": "Signed Up", "userId": "u2",
                       "messageId": "y1", "timestamp": at(202)}),
    );
    same(&spec, &lines(&events));
    // and forgetting by the email, carried only by a retired event
    let mut by_email = events.clone();
    by_email.insert(
        by_email.len() - 2,
        json!({"type": "forget", "traits": {"email": "p@x.org"}, "timestamp": at(200)}),
    );
    same(&spec, &lines(&by_email));
}

/// A user's later record comes from an event with a shared device that belongs to another
/// user's profile; forgetting that user (long after, or at once) takes the later record and
/// gives back the earlier one of another identifier set, retired or not.
#[test]
fn forgetting_another_profile_gives_back_an_earlier_record() {
    let spec = Spec::default_spec();
    let at = |day: u64| START + day * DAY;
    let consent = |granted: bool| json!({"categoryPreferences": {"personalization": granted, "marketing": granted}});
    let base = vec![
        json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "m1",
               "traits": {"plan": "pro"}, "timestamp": at(0),
               "context": {"consent": consent(true)}}),
        json!({"type": "identify", "userId": "u0", "messageId": "m2", "timestamp": at(1),
               "context": {"device": {"id": "shared"}}}),
        json!({"type": "identify", "userId": "u1", "messageId": "m3", "timestamp": at(2),
               "traits": {"plan": "free"},
               "context": {"device": {"id": "shared"}, "consent": consent(false)}}),
    ];
    for forget_day in [3, 100] {
        let mut events = base.clone();
        for day in (4..forget_day).step_by(20) {
            events.push(json!({"type": "page", "userId": "u9", "timestamp": at(day)}));
        }
        events.push(json!({"type": "forget", "userId": "u0", "timestamp": at(forget_day)}));
        events.push(json!({"type": "page", "userId": "u9", "timestamp": at(forget_day + 1)}));
        same(&spec, &lines(&events));
    }
}

/// Sequence bonuses at the edges of the horizon: a `then` event `within` after its `first`,
/// and the clock stopping just before and at `t + max_age + within` and `t_B + max_age`.
#[test]
fn sequence_bonuses_at_the_horizon() {
    let spec = Spec::default_spec();
    let (max_age, within) = (28 * DAY, 30 * 60_000);
    let t = START;
    for gap in [0, 1, within / 2, within - 1, within] {
        for end in [
            t + max_age + within / 8,
            t + max_age + gap - 1,
            t + max_age + gap,
            t + max_age + within - 1,
            t + max_age + within,
        ] {
            let events = vec![
                json!({"type": "page", "userId": "u1", "properties": {"path": "/pricing"},
                       "timestamp": t}),
                json!({"type": "track", "event": "Support Chat Started", "userId": "u1",
                       "timestamp": t + gap}),
                json!({"type": "page", "userId": "u2", "timestamp": end}),
                json!({"type": "page", "userId": "u2", "timestamp": end + 1}),
                json!({"type": "track", "event": "Support Chat Started", "userId": "u1",
                       "timestamp": t + gap}),
            ];
            same(&spec, &lines(&events));
        }
    }
}

/// A device that links two anonymous ids to a user, long retired, becomes a hub months
/// later: the profile splits exactly as if every event had been kept.
#[test]
fn a_hub_forms_after_the_links_through_it_retired() {
    let spec = common::spec_with_max_links(3);
    let at = |day: u64| START + day * DAY;
    let mut events = vec![
        json!({"type": "identify", "userId": "u1", "context": {"device": {"id": "kiosk"},
               "traits": {"plan": "pro"}}, "timestamp": at(0), "messageId": "m1"}),
        json!({"type": "page", "anonymousId": "a1", "context": {"device": {"id": "kiosk"}},
               "properties": {"path": "/pricing"}, "timestamp": at(1), "messageId": "m2"}),
        json!({"type": "track", "event": "Consent Updated", "anonymousId": "a2",
               "context": {"device": {"id": "kiosk"},
                           "consent": {"categoryPreferences": {"personalization": true}},
                           "traits": {"plan": "free"}},
               "timestamp": at(2), "messageId": "m3"}),
    ];
    for (i, day) in (60..64).enumerate() {
        events.push(json!({"type": "page", "anonymousId": format!("b{i}"),
                           "context": {"device": {"id": "kiosk"}},
                           "timestamp": at(day), "messageId": format!("h{i}")}));
    }
    events.push(json!({"type": "forget", "anonymousId": "b0", "timestamp": at(65)}));
    same(&spec, &lines(&events));
}

/// Duplicates inside and outside the dedup window, and events arriving behind the clock by
/// more than `max_age` (they retire on arrival) or by less.
#[test]
fn late_events_and_duplicates_across_the_window() {
    let spec = Spec::default_spec();
    let at = |day: u64| START + day * DAY;
    let signup = |mid: &str, user: &str, t: u64| {
        json!({"type": "track", "event": "Signed Up", "userId": user, "messageId": mid,
               "context": {"traits": {"plan": mid}}, "timestamp": t})
    };
    let events = vec![
        signup("m1", "u1", at(0)),
        signup("m1", "u1", at(0)),  // a duplicate inside the window
        signup("m2", "u2", at(40)), // moves the clock: m1 retires
        signup("m1", "u1", at(0)),  // outside the window: accepted, retires at once
        signup("m3", "u1", at(39)), // late, within max_age
        signup("m4", "u1", at(1)),  // late, past max_age: never weighs
        signup("m3", "u1", at(39)), // a duplicate of a late one
        signup("m5", "u2", at(80)), // all of u1's retire
        json!({"type": "forget", "userId": "u1", "timestamp": at(81)}),
        signup("m6", "u1", at(82)), // suppressed
    ];
    same(&spec, &lines(&events));
}

/// A small random event over a few identifiers, months apart at most.
fn arb_event() -> impl Strategy<Value = serde_json::Value> {
    let ident = prop_oneof![
        Just(json!({"userId": "u1"})),
        Just(json!({"userId": "u2"})),
        Just(json!({"anonymousId": "a1"})),
        Just(json!({"anonymousId": "a2"})),
        Just(json!({"anonymousId": "a3"})),
        Just(json!({"context": {"device": {"id": "d1"}}})),
        Just(json!({"traits": {"email": "e@x.org"}})),
    ];
    let body = prop_oneof![
        Just(json!({"type": "page", "properties": {"path": "/pricing"}})),
        Just(json!({"type": "track", "event": "Support Chat Started"})),
        Just(json!({"type": "identify", "traits": {"plan": "pro"}})),
        Just(json!({"type": "identify", "traits": {"plan": "free"}})),
        Just(json!({"type": "track", "event": "Consent Updated",
                    "context": {"consent": {"categoryPreferences": {"marketing": true}}}})),
        Just(json!({"type": "track", "event": "Consent Updated",
                    "context": {"consent": {"categoryPreferences": {"marketing": false}}}})),
        Just(json!({"type": "track", "event": "Signed Up"})),
        Just(json!({"type": "forget"})),
    ];
    let idents = prop::collection::vec(ident, 1..4);
    // steps of minutes to months; a negative one is a late event
    let step = prop_oneof![
        0i64..600_000,
        0i64..(40 * DAY as i64),
        -(50 * DAY as i64)..0
    ];
    (idents, body, step, 0u8..4).prop_map(|(idents, mut body, step, mid)| {
        for ident in idents {
            merge(&mut body, ident);
        }
        body["step"] = json!(step);
        if mid > 0 {
            body["messageId"] = json!(format!("m{mid}"));
        }
        body
    })
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    match (into, from) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random event sets over months: retiring changes nothing.
    #[test]
    fn random_months_retire_without_a_trace(events in prop::collection::vec(arb_event(), 1..40)) {
        let mut clock = START as i64;
        let mut timed = Vec::new();
        for mut e in events {
            let step = e["step"].as_i64().unwrap_or(0);
            if step >= 0 {
                clock += step;
            }
            let t = (clock + step.min(0)).max(0);
            if let Some(o) = e.as_object_mut() {
                o.remove("step");
            }
            e["timestamp"] = json!(t);
            timed.push(e);
        }
        same(&Spec::default_spec(), &lines(&timed));
    }
}
