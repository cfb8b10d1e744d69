//! Every fixture under `fixtures/` replays to exactly its expected outputs, with 1, 2 and 4
//! workers (and on two processes: `tests/cluster.rs`), and agrees with the oracle.

mod common;

use throughline::replay::{self, FIXTURE_WALL_CLOCK_MS};

use common::fixture_dirs;

#[test]
fn every_fixture_replays_exactly() {
    let mut failures = Vec::new();
    for dir in fixture_dirs() {
        let expected = replay::expected(&dir).unwrap();
        for workers in [1, 2, 4] {
            let actual = replay::run_fixture(&dir, workers).unwrap();
            for (what, e, a) in [
                ("changes", &expected.changes, &actual.changes),
                ("snapshot", &expected.snapshot, &actual.snapshot),
                ("dead letters", &expected.dead_letters, &actual.dead_letters),
            ] {
                let d = replay::diff(e, a);
                if !d.is_empty() {
                    failures.push(format!(
                        "{} ({what}, -w {workers}):\n  {}",
                        dir.display(),
                        d.join("\n  ")
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_fixture_agrees_with_the_oracle() {
    for dir in fixture_dirs() {
        let spec = replay::fixture_spec(&dir).unwrap();
        let input = std::fs::read(dir.join("events.ndjson")).unwrap();
        let oracle = common::oracle::run(&spec, &input, FIXTURE_WALL_CLOCK_MS);
        let expected = replay::expected(&dir).unwrap();
        assert_eq!(oracle.changes, expected.changes, "{}", dir.display());
        assert_eq!(oracle.snapshot, expected.snapshot, "{}", dir.display());
        let reasons = common::dead_letter_reasons(&expected.dead_letters);
        assert_eq!(oracle.dead_letters, reasons, "{}", dir.display());
    }
}

#[test]
fn every_fixture_explains_exactly() {
    let mut failures = Vec::new();
    let mut cases = 0;
    for dir in fixture_dirs() {
        cases += replay::explain_cases(&dir).unwrap().len();
        for workers in [1, 2] {
            let report = replay::check_explanations(&dir, workers, false).unwrap();
            if !report.is_empty() {
                failures.push(format!(
                    "{} (-w {workers}):\n{}",
                    dir.display(),
                    report.join("\n")
                ));
            }
        }
    }
    assert!(cases >= 10, "expected explanations missing ({cases})");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
