//! The engine agrees row for row with the oracle (an independent implementation of SPEC
//! sections 1-3 and 7) on generated workloads, adversarial ones included, and on random
//! small event sets with many ties, hubs and duplicates; and consolidating its change stream
//! up to any time T gives the snapshot at T.

mod common;

use proptest::prelude::*;
use throughline::replay::FIXTURE_WALL_CLOCK_MS;
use throughline::spec::Spec;

fn check(spec: &Spec, input: &[u8], workers: usize) {
    let engine = common::engine(spec, input, workers);
    let oracle = common::oracle::run(spec, input, FIXTURE_WALL_CLOCK_MS);
    assert_eq!(engine.changes, oracle.changes, "change streams differ");
    assert_eq!(engine.snapshot, oracle.snapshot, "snapshots differ");
    // the same snapshot when it is all that is kept (the workers sum their rows)
    let alone = throughline::replay::snapshot_bytes(spec, input.to_vec(), workers)
        .unwrap_or_else(|e| panic!("engine failed: {e}"));
    assert_eq!(alone, oracle.snapshot, "snapshots kept alone differ");
    let dead = common::dead_letter_reasons(&engine.dead_letters);
    assert_eq!(dead, oracle.dead_letters, "dead letters differ");
    // the consolidation law, at every time the oracle closed
    for (t, snapshot) in &oracle.snapshots {
        assert_eq!(
            &common::consolidate_upto(&engine.changes, *t),
            snapshot,
            "consolidated changes up to {t} differ from the snapshot"
        );
    }
}

#[test]
fn generated_workloads_agree_with_the_oracle() {
    let spec = Spec::default_spec();
    for seed in 1..=3 {
        check(&spec, &common::workload(seed, 1500, 120, false), 1);
    }
}

#[test]
fn decaying_workloads_agree_with_the_oracle() {
    for (seed, half_life, max_age) in [(31, "1m", "4m"), (32, "45s", "5m"), (33, "2m", "3m")] {
        let spec = common::fast_decay_spec(50, half_life, max_age);
        check(&spec, &common::workload(seed, 700, 40, seed == 33), 1);
    }
}

#[test]
fn adversarial_workloads_agree_with_the_oracle() {
    // max_links = 4 makes hubs common; the default spec keeps the kiosk hub rare
    for (seed, spec) in [
        (11, Spec::default_spec()),
        (12, common::spec_with_max_links(4)),
        (13, Spec::default_spec()),
    ] {
        check(&spec, &common::workload(seed, 1500, 80, true), 2);
    }
}

/// `gen --journeys` (issue 31): emails in variants, logins on a second device, return
/// visits, late and duplicated deliveries.
#[test]
fn journey_workloads_agree_with_the_oracle() {
    for (seed, spec) in [
        (31, Spec::default_spec()),
        (32, common::spec_with_max_links(4)),
    ] {
        let mut input = Vec::new();
        let args = throughline::workload::GenArgs {
            events: 1500,
            profiles: 150,
            seed,
            adversarial: false,
            start_ms: 1_767_225_600_000,
            days: None,
            journeys: true,
        };
        throughline::workload::generate(&args, &mut input).unwrap();
        check(&spec, &input, 2);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_event_sets_agree_with_the_oracle(lines in proptest::collection::vec(common::arb_line(), 1..40), max_links in 1usize..5) {
        let spec = common::fast_decay_spec(max_links, "30s", "80s");
        let input = lines.join("\n").into_bytes();
        check(&spec, &input, 1);
    }
}
