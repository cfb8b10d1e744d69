//! The compaction law: replaying a compacted log reaches exactly what replaying the original
//! reaches (final views, clock, counters, dead letters), whatever the log holds (generated
//! adversarial workloads: duplicates, dead letters, forgets, suppressed events); compacting
//! twice changes nothing more; and a `forget` not yet carried out is left for later.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use throughline::engine::input::Message;
use throughline::engine::output::DeadLetters;
use throughline::engine::{self, Options, Sinks, Summary};
use throughline::replay::{FIXTURE_WALL_CLOCK_MS, SharedBuffer};
use throughline::spec::Spec;
use throughline::store::compact;
use throughline::store::erasures::ErasureSets;
use throughline::store::log::{self, Record};
use throughline::workload::{self, GenArgs};

const SALT: u128 = 0x5eed;

struct Replayed {
    summary: Summary,
    snapshot: Vec<String>,
    dead_letters: Vec<String>,
    sets: ErasureSets,
}

/// Replays records as the server does.
fn replay(spec: &Spec, records: &[Record]) -> Replayed {
    let (tx, rx) = crossbeam_channel::unbounded();
    for batch in log::batches(records, 1) {
        tx.send(Message::Batch(batch)).unwrap();
    }
    drop(tx);
    let dead = SharedBuffer::default();
    let sets = Arc::new(Mutex::new(ErasureSets::new()));
    let recorded = Arc::clone(&sets);
    let mut sinks = Sinks::new(None, DeadLetters::new(Some(Box::new(dead.clone()))));
    sinks.erasures = Some(Box::new(move |line, hashes| {
        recorded.lock().unwrap().insert(line, hashes.to_vec());
        Ok(())
    }));
    let options = Options {
        snapshot: true,
        salt: Some(SALT),
        ..Options::default()
    };
    let summary = engine::run_channel(
        Arc::new(spec.clone()),
        rx,
        throughline::dataflow::SourceNames::new(vec!["http".into()]),
        false,
        sinks,
        options,
    )
    .unwrap();
    let snapshot = summary.snapshot.as_ref().unwrap().lines().unwrap();
    let sets = sets.lock().unwrap().clone();
    Replayed {
        summary,
        snapshot,
        dead_letters: dead.lines(),
        sets,
    }
}

/// A generated workload as log records, received over a few wall-clock instants.
fn log_of(seed: u64, events: u64) -> Vec<Record> {
    let mut out = Vec::new();
    let args = GenArgs {
        events,
        profiles: 60,
        seed,
        adversarial: true,
        start_ms: 1_767_225_600_000,
        days: None,
    };
    workload::generate(&args, &mut out).unwrap();
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| Record::line(FIXTURE_WALL_CLOCK_MS + (i as u64 / 50), l.to_vec()))
        .collect()
}

fn counts(s: &Summary) -> (u64, u64, u64, u64, u64, BTreeMap<String, u64>, Option<u64>) {
    (
        s.tally.lines,
        s.tally.accepted,
        s.tally.duplicates,
        s.tally.suppressed,
        s.tally.forgets,
        s.dead_letters
            .iter()
            .map(|(r, n)| (r.code().to_string(), *n))
            .collect(),
        s.clock,
    )
}

fn assert_same(a: &Replayed, b: &Replayed, what: &str) {
    assert_eq!(a.snapshot, b.snapshot, "{what}: views differ");
    assert_eq!(
        counts(&a.summary),
        counts(&b.summary),
        "{what}: counters differ"
    );
    assert_eq!(
        a.dead_letters, b.dead_letters,
        "{what}: dead letters differ"
    );
    assert_eq!(
        a.summary.profiles, b.summary.profiles,
        "{what}: profiles differ"
    );
}

#[test]
fn a_compacted_log_replays_to_the_same_state() {
    let spec = Spec::default_spec();
    for seed in [7, 8, 9] {
        let log = log_of(seed, 3000);
        let original = replay(&spec, &log);
        assert!(
            original.summary.tally.forgets > 0,
            "the workload erases something"
        );
        assert!(original.summary.tally.duplicates > 0 && !original.dead_letters.is_empty());

        let rewritten = compact::rewrite(log.clone(), &spec, SALT, &original.sets, u64::MAX);
        let compacted = rewritten.records;
        assert_eq!(compacted.len(), log.len(), "one record per line");
        let reduced = rewritten.reduced;
        assert_eq!(
            reduced,
            compacted.iter().filter(|r| r.residue).count() as u64
        );
        assert!(
            reduced >= original.summary.tally.duplicates + original.summary.tally.forgets,
            "seed {seed}: only {reduced} records reduced"
        );
        let bytes = |rs: &[Record]| rs.iter().map(|r| r.line.len()).sum::<usize>();
        assert!(bytes(&compacted) < bytes(&log));
        let replayed = replay(&spec, &compacted);
        assert_same(&original, &replayed, &format!("seed {seed}"));

        let again = compact::rewrite(compacted.clone(), &spec, SALT, &replayed.sets, u64::MAX);
        assert_eq!(again.reduced, 0, "seed {seed}: nothing more to reduce");
        assert_eq!(
            again.records, compacted,
            "seed {seed}: compaction is idempotent"
        );

        // the last forget not carried out yet: it and everything after stay as they were
        let last = *original.sets.keys().max().unwrap();
        let mut partial_sets = original.sets.clone();
        partial_sets.remove(&last);
        let partial = compact::rewrite(log.clone(), &spec, SALT, &partial_sets, u64::MAX).records;
        assert_eq!(partial[last as usize - 1..], log[last as usize - 1..]);
        assert_same(&original, &replay(&spec, &partial), "partial compaction");
    }
}
