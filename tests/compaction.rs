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

/// The lines of an adversarial `gen` workload.
fn generated(args: &GenArgs) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    workload::generate(args, &mut out).unwrap();
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// A generated workload as log records, received over a few wall-clock instants.
fn log_of(seed: u64, events: u64) -> Vec<Record> {
    let args = GenArgs {
        events,
        profiles: 60,
        seed,
        adversarial: true,
        start_ms: 1_767_225_600_000,
        days: None,
        journeys: false,
    };
    generated(&args)
        .into_iter()
        .enumerate()
        .map(|(i, l)| Record::line(FIXTURE_WALL_CLOCK_MS + (i as u64 / 50), l))
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

/// The records from the one that starts at line `line` on.
fn from_line(records: &[Record], line: u64) -> &[Record] {
    let mut first = 1;
    for (i, r) in records.iter().enumerate() {
        if first == line {
            return &records[i..];
        }
        first += r.lines;
    }
    &[]
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
        assert_eq!(
            log::lines_of(&compacted),
            log.len() as u64,
            "as many lines as before"
        );
        let reduced = rewritten.reduced;
        assert!(
            reduced
                >= compacted
                    .iter()
                    .filter(|r| r.residue && r.lines == 1)
                    .count() as u64
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
        assert_eq!(*from_line(&partial, last), log[last as usize - 1..]);
        assert_same(&original, &replay(&spec, &partial), "partial compaction");
    }
}

/// A year of adversarial traffic, received as it happens (the wall clock moves with it).
fn year_log(seed: u64, events: u64) -> Vec<Record> {
    let start_ms = 1_735_689_600_000;
    let lines = generated(&GenArgs {
        events,
        profiles: 80,
        seed,
        adversarial: true,
        start_ms,
        days: Some(365),
        journeys: false,
    });
    let step = 365 * 86_400_000 / lines.len() as u64;
    lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| Record::line(start_ms + i as u64 * step, l))
        .collect()
}

/// With `dedup_window = "unlimited"` no accepted event with a `messageId` folds (its id
/// must stay remembered): a copy of the first one, sent again after the compaction, is
/// still a duplicate, exactly as without compaction.
#[test]
fn an_unlimited_dedup_window_keeps_what_it_must_remember() {
    let text = throughline::spec::DEFAULT_SPEC
        .replace("dedup_window = \"7d\"", "dedup_window = \"unlimited\"");
    let spec = Spec::parse(&text, "unlimited").unwrap();
    let log = year_log(21, 3000);
    let sets = replay(&spec, &log).sets;
    let folded = compact::rewrite(log.clone(), &spec, SALT, &sets, u64::MAX).records;
    assert!(
        folded.iter().any(|r| r.lines > 1),
        "duplicates and dead letters fold"
    );
    let first = log
        .iter()
        .find(|r| String::from_utf8_lossy(&r.line).contains("\"messageId\""))
        .unwrap()
        .clone();
    let again = |mut records: Vec<Record>| {
        let mut late = first.clone();
        late.wall_ms = records.last().unwrap().wall_ms;
        records.push(late);
        replay(&spec, &records)
    };
    let (original, replayed) = (again(log), again(folded));
    assert_same(&original, &replayed, "unlimited window");
    assert!(replayed.summary.tally.duplicates > 0);
}

/// A year of traffic, adversarial (late events, duplicates, forgets, dead letters):
/// compaction folds the lines whose events retired into spans (SPEC section 9), so the log
/// shrinks to the live lines plus one summary per identifier set, and a replay of the
/// folded log followed by any later input (more traffic, forgets of long-retired profiles,
/// hubs forming through retired links) reaches exactly what the original log followed by
/// that input reaches: views, profiles, counters, dead letters, the Kafka positions. A
/// second compaction at a later clock folds the earlier spans into the new ones.
#[test]
fn retired_lines_fold_into_spans_and_later_input_cannot_tell() {
    let spec = Spec::default_spec();
    for seed in [11, 12] {
        let mut all = year_log(seed, 6000);
        // a hub forming at the end, through identifiers whose links retired long ago
        for (i, user) in ["u-1", "u-2", "u-3", "u-4", "u-5", "u-6"]
            .iter()
            .enumerate()
        {
            let line = format!(
                r#"{{"type":"identify","userId":"{user}","anonymousId":"kiosk","timestamp":{}}}"#,
                1_767_225_600_000u64 + i as u64
            );
            all.push(Record::line(1_767_225_600_000, line.into_bytes()));
        }
        all[10].origin = Some(log::Origin {
            partition: 3,
            offset: 77,
        });
        let cut = all.len() * 3 / 5;
        let later = cut + (all.len() - cut) / 2;
        let mut folded = all[..cut].to_vec();
        for end in [cut, later] {
            let mut prefix = folded.clone();
            prefix.extend_from_slice(&all[log::lines_of(&folded) as usize..end]);
            let sets = replay(&spec, &prefix).sets;
            let rewritten = compact::rewrite(prefix, &spec, SALT, &sets, u64::MAX);
            folded = rewritten.records;
            assert_eq!(
                log::lines_of(&folded),
                end as u64,
                "seed {seed}: line count"
            );
            let spans = folded.iter().filter(|r| r.lines > 1).count();
            assert!(spans > 0, "seed {seed}: nothing folded");
            assert!(
                folded.len() * 3 < end,
                "seed {seed}: {} records stand for {end} lines",
                folded.len()
            );
            // at the fold point, halfway on and at the end of the later input
            for upto in [end, (end + all.len()) / 2, all.len()] {
                let mut continued = folded.clone();
                continued.extend_from_slice(&all[end..upto]);
                let original = replay(&spec, &all[..upto]);
                let replayed = replay(&spec, &continued);
                let what = format!("seed {seed}, folded at {end}, replayed to {upto}");
                assert_same(&original, &replayed, &what);
            }
            let mut continued = folded.clone();
            continued.extend_from_slice(&all[end..]);
            let original = replay(&spec, &all);
            let replayed = replay(&spec, &continued);
            assert_eq!(
                log::kafka_positions(&continued),
                log::kafka_positions(&all),
                "seed {seed}: Kafka positions"
            );
            // erasures folded into spans are not carried out again: those after are
            let after: ErasureSets = original
                .sets
                .into_iter()
                .filter(|(line, _)| *line > end as u64)
                .collect();
            assert_eq!(after, replayed.sets, "seed {seed}: erasure sets");
        }
    }
}
