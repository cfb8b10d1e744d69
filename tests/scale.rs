//! Agreement with the oracle at scale (ignored by default: minutes of work). Run with
//!
//!     THROUGHLINE_SCALE_EVENTS=1000000 THROUGHLINE_SCALE_ADVERSARIAL=0 cargo test --release --test scale -- --ignored --nocapture
//!     THROUGHLINE_SCALE_EVENTS=100000 cargo test --release --test scale -- --ignored --nocapture
//!
//! It generates an adversarial workload, runs the engine with 2 workers, and compares the
//! final snapshot and the change stream consolidated at ~8 sampled times with the oracle.

mod common;

use throughline::replay::FIXTURE_WALL_CLOCK_MS;
use throughline::spec::Spec;
use throughline::workload::{self, GenArgs};

#[test]
#[ignore]
fn large_adversarial_workload_agrees_with_the_oracle() {
    let events: u64 = std::env::var("THROUGHLINE_SCALE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let spec = Spec::default_spec();
    let mut input = Vec::new();
    // the oracle recomputes every profile per forget, so very large adversarial runs (which
    // include forgets) are slow: THROUGHLINE_SCALE_ADVERSARIAL=0 uses the plain generator
    let adversarial = std::env::var("THROUGHLINE_SCALE_ADVERSARIAL").map_or(true, |v| v != "0");
    let args = GenArgs {
        events,
        profiles: events / 20,
        seed: 77,
        adversarial,
        start_ms: 1_767_225_600_000,
        days: None,
        journeys: false,
    };
    workload::generate(&args, &mut input).unwrap();
    let started = std::time::Instant::now();
    let engine = common::engine(&spec, &input, 2);
    println!(
        "engine: {} events in {:?}, {} changes",
        events,
        started.elapsed(),
        engine.changes.len()
    );
    // sample ~8 clock values spread over the run
    let times: Vec<u64> = engine
        .changes
        .iter()
        .step_by((engine.changes.len() / 8).max(1))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["time"].as_u64().unwrap()
        })
        .collect();
    let started = std::time::Instant::now();
    let oracle = common::oracle::run_sampled(&spec, &input, FIXTURE_WALL_CLOCK_MS, &|c| {
        times.contains(&c)
    });
    println!("oracle: {:?}", started.elapsed());
    assert_eq!(engine.snapshot, oracle.snapshot, "final snapshots differ");
    let mut checked = 0;
    for (t, snapshot) in &oracle.snapshots {
        if times.contains(t) {
            assert_eq!(
                &common::consolidate_upto(&engine.changes, *t),
                snapshot,
                "state at {t} differs"
            );
            checked += 1;
        }
    }
    println!(
        "final snapshot ({} rows) and {checked} sampled states agree",
        engine.snapshot.len()
    );
    assert!(checked >= 4);
}
