//! Laws of the dataflow: retracting what was inserted returns to where it was (profiles
//! split back exactly), and the number of workers never changes the output.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use throughline::dataflow::retention::Retention;
use throughline::dataflow::{self, EventFacts, Feed, Keepers, Outputs, ViewRow, time};
use throughline::event;
use throughline::replay::FIXTURE_WALL_CLOCK_MS;
use throughline::spec::Spec;
use throughline::workload::{self, GenArgs};

/// Drives the identity dataflow directly: apply batches of (facts, diff) at successive
/// times and read the `profiles` view's state after each.
fn states_after(
    spec: &Spec,
    batches: &[Vec<(EventFacts, isize)>],
) -> Vec<BTreeMap<String, String>> {
    let spec = spec.clone();
    let batches = batches.to_vec();
    timely::execute_directly(move |worker| {
        let (mut inputs, outputs): (Feed, Outputs) = dataflow::build(
            worker,
            &spec,
            None,
            Retention::KeepAll,
            &Keepers::new(1, true),
        );
        let state: Rc<RefCell<BTreeMap<(String, String), isize>>> = Rc::default();
        let mut states = Vec::new();
        for (i, batch) in batches.iter().enumerate() {
            for (facts, diff) in batch {
                inputs.update(facts, *diff);
            }
            let next = time(1000 + i as u64, 0);
            inputs.advance_to(next);
            inputs.flush();
            while outputs.probe.less_than(&next) {
                worker.step();
            }
            for ((view, key, row), _t, diff) in outputs.changes.borrow_mut().drain(..) {
                let (view, key, row): ViewRow = (view, key, row);
                *state
                    .borrow_mut()
                    .entry((format!("{view}/{}", key), row))
                    .or_insert(0) += diff;
            }
            state.borrow_mut().retain(|_, n| *n != 0);
            states.push(
                state
                    .borrow()
                    .iter()
                    .map(|((k, r), _)| (k.clone(), r.clone()))
                    .collect(),
            );
        }
        states
    })
}

fn facts_of(spec: &Spec, lines: &[&str]) -> Vec<EventFacts> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let e = event::parse(l.as_bytes(), spec, None).unwrap();
            EventFacts::of(i as u64, &e, spec, e.timestamp_ms, Default::default())
        })
        .collect()
}

#[test]
fn retracting_a_merge_splits_profiles_back_exactly() {
    let spec = Spec::default_spec();
    let base = facts_of(
        &spec,
        &[
            r#"{"userId":"u-1","anonymousId":"a-1","timestamp":0}"#,
            r#"{"userId":"u-2","anonymousId":"a-2","context":{"device":{"id":"d"}},"timestamp":0}"#,
            r#"{"type":"track","event":"Signed Up","anonymousId":"a-3","context":{"device":{"id":"d2"}},"timestamp":0}"#,
        ],
    );
    let merges = facts_of(
        &spec,
        &[
            r#"{"type":"page","properties":{"path":"/pricing"},"anonymousId":"a-1","context":{"device":{"id":"d"}},"timestamp":0}"#,
            r#"{"anonymousId":"a-3","context":{"device":{"id":"d"}},"timestamp":0}"#,
        ],
    );
    let mut merge_ids = merges.clone();
    for (i, m) in merge_ids.iter_mut().enumerate() {
        m.seq = 100 + i as u64;
    }
    let insert =
        |fs: &[EventFacts], d: isize| fs.iter().map(|f| (f.clone(), d)).collect::<Vec<_>>();
    let states = states_after(
        &spec,
        &[
            insert(&base, 1),
            insert(&merge_ids, 1),
            insert(&merge_ids, -1),
            insert(&base, -1),
        ],
    );
    assert_eq!(
        states[0].len(),
        6,
        "3 profiles in `profiles` and in `scores`"
    );
    assert_ne!(states[1], states[0], "the merges change profiles");
    assert_eq!(
        states[2], states[0],
        "retracting the merges splits the profiles back exactly"
    );
    assert!(states[3].is_empty(), "retracting everything leaves nothing");
}

#[test]
fn retracting_a_generated_workload_returns_to_empty() {
    let spec = common::spec_with_max_links(6);
    let mut bytes = Vec::new();
    let args = GenArgs {
        events: 1500,
        profiles: 100,
        seed: 5,
        adversarial: true,
        start_ms: 1_767_225_600_000,
        days: None,
        journeys: false,
    };
    workload::generate(&args, &mut bytes).unwrap();
    let facts: Vec<EventFacts> = bytes
        .split(|b| *b == b'\n')
        .filter_map(|l| event::parse(l, &spec, None).ok())
        .enumerate()
        .map(|(i, e)| EventFacts::of(i as u64, &e, &spec, e.timestamp_ms, Default::default()))
        .collect();
    let (first, second) = facts.split_at(facts.len() / 2);
    let batches = vec![
        first.iter().map(|f| (f.clone(), 1)).collect::<Vec<_>>(),
        second.iter().map(|f| (f.clone(), 1)).collect(),
        second.iter().map(|f| (f.clone(), -1)).collect(),
        first.iter().map(|f| (f.clone(), -1)).collect(),
    ];
    let states = states_after(&spec, &batches);
    assert!(!states[0].is_empty());
    assert_eq!(
        states[2], states[0],
        "retracting the second half returns to the first half's state"
    );
    assert!(states[3].is_empty());
}

#[test]
fn one_two_and_four_workers_give_identical_output() {
    let spec = common::spec_with_max_links(8);
    // the adversarial workload, and journeys (issue 31)
    for journeys in [false, true] {
        let mut bytes = Vec::new();
        let args = GenArgs {
            events: 4000,
            profiles: 300,
            seed: 21,
            adversarial: !journeys,
            start_ms: 1_767_225_600_000,
            days: None,
            journeys,
        };
        workload::generate(&args, &mut bytes).unwrap();
        let one = common::engine(&spec, &bytes, 1);
        assert!(!one.changes.is_empty());
        for workers in [2, 4] {
            let many = common::engine(&spec, &bytes, workers);
            assert_eq!(
                one, many,
                "-w {workers} differs from -w 1 (journeys: {journeys})"
            );
        }
    }
    let _ = FIXTURE_WALL_CLOCK_MS;
}
