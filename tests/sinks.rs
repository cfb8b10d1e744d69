//! Sinks: what a restart sends again, and the file sink across faults.
//!
//! The law behind every sink's restart: a replay of the log that ends published groups at
//! the positions a sink saved (its confirmed position and the groups it sent after it)
//! regenerates those groups exactly, so what the sink sends again is the identical records.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use throughline::dataflow::SourceNames;
use throughline::engine::output::{Change, DeadLetters, Publish};
use throughline::engine::{self, Options, Sinks};
use throughline::replay::FIXTURE_WALL_CLOCK_MS;
use throughline::spec::Spec;
use throughline::store::log::{self, Record};

use common::Serve;

/// A published group: its position and changes.
type Group = (u64, Vec<Change>);

/// A publisher that keeps every group with its position.
#[derive(Clone, Default)]
struct Groups(Arc<Mutex<Vec<Group>>>);

impl Publish for Groups {
    fn publish(&mut self, changes: &[Change], position: u64, _time: u64) -> std::io::Result<()> {
        self.0.lock().unwrap().push((position, changes.to_vec()));
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<String> {
        Ok(String::new())
    }
}

/// Runs the engine as `serve` does (live input) over `records`, ending groups at `cuts`;
/// returns the non-empty groups by position.
fn groups(records: &[Record], cuts: &BTreeSet<u64>) -> Vec<Group> {
    let (tx, rx) = crossbeam_channel::unbounded();
    for batch in log::batches_cut(records, 1, cuts) {
        tx.send(engine::input::Message::Batch(batch)).unwrap();
    }
    drop(tx);
    let published = Groups::default();
    let mut sinks = Sinks::new(None, DeadLetters::new(None));
    sinks.publishers.push(Box::new(published.clone()));
    let options = Options {
        salt: Some(7),
        wall_clock_ms: Some(FIXTURE_WALL_CLOCK_MS),
        ..Options::default()
    };
    let spec = Arc::new(Spec::default_spec());
    engine::run_channel(spec, rx, SourceNames::default(), true, sinks, options).unwrap();
    let all = published.0.lock().unwrap().clone();
    all.into_iter().filter(|(_, g)| !g.is_empty()).collect()
}

fn records(seed: u64, events: u64) -> Vec<Record> {
    common::workload(seed, events, events / 10, true)
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| Record::line(FIXTURE_WALL_CLOCK_MS, l.to_vec()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Live, groups end wherever rounds end (`live`, any positions). A sink confirmed the
    /// group at `live[c]` and sent those up to `live[c + n]`: the replay cut at exactly
    /// those positions publishes the same groups there, change for change.
    #[test]
    fn a_replay_cut_where_a_sink_was_regenerates_its_groups(
        seed in 0u64..1000,
        ends in proptest::collection::btree_set(1u64..600, 5..60),
        c in 0usize..20,
        n in 1usize..20,
    ) {
        let records = records(seed, 600);
        let live: Vec<u64> = ends.into_iter().collect();
        let original = groups(&records, &live.iter().copied().collect());
        let c = c.min(live.len() - 1);
        let sent: BTreeSet<u64> = live[c..(c + n).min(live.len())].iter().copied().collect();
        let replayed = groups(&records, &sent);
        let first = live[c];
        let last = *sent.last().unwrap();
        let within = |g: &&Group| g.0 > first && g.0 <= last;
        let want: Vec<_> = original.iter().filter(within).collect();
        let got: Vec<_> = replayed.iter().filter(within).collect();
        prop_assert_eq!(got, want);
    }
}

/// The file sink of `serve` across the worst moment: ada's row is written and confirmed,
/// then the file cannot be written (a full disk) while bob arrives and ada is forgotten, and
/// the server is SIGKILLed before it could write her retraction. The views move on
/// meanwhile and `/healthz` says the sink is not delivering. After the restart the file
/// holds every change exactly once and consolidates to the views, ada's `+1` followed by
/// her `-1`; a compaction after that removes her from the log. A clean restart appends to
/// the file, never rewrites it.
#[test]
fn an_erasure_reaches_a_file_sink_that_could_not_write_before_a_crash() {
    let dir = std::env::temp_dir().join(format!("throughline-sinks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let file = dir.join("changes.ndjson");
    let args = [
        "--sink",
        file.to_str().unwrap(),
        "--compact-check-secs",
        "0",
    ];
    let t0 = 1_767_261_600_000u64;
    let identify = |user: &str, ms: u64| {
        format!(
            "{{\"type\":\"identify\",\"userId\":\"{user}\",\"timestamp\":{ms},\"traits\":{{\"email\":\"{user}@example.com\"}}}}"
        )
    };
    let waiting = |what: &str, started: Instant| {
        assert!(started.elapsed() < Duration::from_secs(60), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // the first write succeeds, every later one fails
    let faults = [("FAILPOINTS", "sink::file::write=1*off->return")];
    let serve = Serve::start_env(&data, &args, &faults);
    assert_eq!(
        serve.post("/v1/identify", identify("ada", t0).as_bytes()).0,
        200
    );
    let started = Instant::now();
    while !serve.get("/metrics").1.contains(&format!(
        "throughline_sink_confirmed_position{{sink=\"{}\"}} 1\n",
        file.display()
    )) {
        waiting("ada's row is never confirmed", started);
    }
    assert_eq!(
        serve
            .post("/v1/identify", identify("bob", t0 + 5000).as_bytes())
            .0,
        200
    );
    let forget = format!("{{\"userId\":\"ada\",\"timestamp\":{}}}", t0 + 1000);
    assert_eq!(serve.post("/v1/forget", forget.as_bytes()).0, 200);
    let started = Instant::now();
    loop {
        let (_, rows) = serve.get("/v1/views/profiles");
        let (_, health) = serve.get("/healthz");
        if !rows.contains("ada") && rows.contains("bob") && health.contains("degraded: sink") {
            break;
        }
        waiting(&format!("{rows}\n{health}"), started);
    }
    // the console's overview says so too
    let (_, stats) = serve.get("/v1/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let sink = &stats["sinks"][0];
    assert_eq!(sink["name"], file.display().to_string());
    assert!(
        sink["stalled"]["since"].as_u64().is_some() && sink["stalled"]["why"].is_string(),
        "{stats}"
    );
    assert!(sink["backlog"].as_u64().is_some_and(|b| b > 0), "{stats}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.contains("user_id:ada") && !written.contains("\"diff\":-1"),
        "{written}"
    );
    serve.kill();
    let serve = Serve::start_with(&data, &args);
    assert_eq!(
        serve
            .post("/v1/identify", identify("carol", t0 + 9000).as_bytes())
            .0,
        200
    );
    let lines = |file: &std::path::Path| -> Vec<String> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let started = Instant::now();
    while !lines(&file).iter().any(|l| l.contains("carol")) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            lines(&file)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = serve.post("/v1/compact", b"");
    assert_eq!(status, 200, "{body}");
    let mut rows = Vec::new();
    for view in Spec::default_spec().views {
        rows.extend(
            serve
                .get(&format!("/v1/views/{}", view.name))
                .1
                .lines()
                .map(str::to_string),
        );
    }
    rows.sort();
    let before = lines(&file);
    let distinct: BTreeSet<&String> = before.iter().collect();
    assert_eq!(
        distinct.len(),
        before.len(),
        "a change written twice: {before:#?}"
    );
    let mut consolidated = common::consolidate_upto(&before, u64::MAX);
    consolidated.sort();
    assert_eq!(consolidated, rows);
    let ada_in = before
        .iter()
        .filter(|l| l.contains("user_id:ada") && l.contains("\"diff\":1"))
        .count();
    let ada_out = before
        .iter()
        .filter(|l| l.contains("user_id:ada") && l.contains("\"diff\":-1"))
        .count();
    assert_eq!(ada_in, ada_out, "{before:#?}");
    let log = std::fs::read(data.join("events.log")).unwrap();
    assert!(
        !log.windows(15).any(|w| w == b"ada@example.com"),
        "ada is still in the log"
    );
    // a clean restart appends
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status();
    let mut serve = serve;
    let _ = serve.child.wait();
    let serve = Serve::start_with(&data, &args);
    assert_eq!(
        serve
            .post("/v1/identify", identify("dan", t0 + 9500).as_bytes())
            .0,
        200
    );
    let started = Instant::now();
    while !lines(&file).iter().any(|l| l.contains("dan")) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            lines(&file)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = lines(&file);
    assert_eq!(
        after[..before.len()],
        before[..],
        "the restart rewrote the file"
    );
}
