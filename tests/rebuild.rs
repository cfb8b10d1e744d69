//! Rebuilds for a whole new spec on a running server (`PUT /v1/spec` with changed signals,
//! `src/server/rebuild.rs`): after the switch-over every view has the rows of a server
//! started with the new spec and fed the same events, and keeps them as events follow and
//! after a restart; a subscriber's stream, consolidated, is the view at every moment, the
//! switch-over's changes all at one engine time; a SIGKILL during the rebuild, or right
//! after the new spec is recorded, loses nothing and ends with the new spec; a spec the log
//! cannot backfill exactly is refused, naming the rule and where it holds exactly, unless
//! accepted.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;
use common::{Serve, request};

fn dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The default spec with a signal's points changed and a signal added.
fn new_spec() -> String {
    let spec = throughline::spec::DEFAULT_SPEC.replacen(
        "name = \"pricing_view\"\npoints = 10",
        "name = \"pricing_view\"\npoints = 30",
        1,
    );
    assert_ne!(spec, throughline::spec::DEFAULT_SPEC);
    spec.replacen(
        "[[intent.sequence]]",
        "[[intent.signal]]\nname = \"any_page\"\npoints = 1\ntype = \"page\"\n\n[[intent.sequence]]",
        1,
    )
}

/// A server started with [`new_spec`] on a fresh directory `name`: what a server that
/// switched to it must equal.
fn reference(name: &str) -> Serve {
    let reference_dir = dir(name);
    std::fs::create_dir_all(&reference_dir).unwrap();
    let spec_file = reference_dir.join("new.toml");
    std::fs::write(&spec_file, new_spec()).unwrap();
    Serve::start_with(
        &reference_dir.join("data"),
        &["--dataflow", spec_file.to_str().unwrap()],
    )
}

/// A change file for a `--sink`, in a fresh directory `name`.
fn sink_file(name: &str) -> PathBuf {
    let sink_dir = dir(name);
    std::fs::create_dir_all(&sink_dir).unwrap();
    sink_dir.join("changes.ndjson")
}

fn put_spec(serve: &Serve, query: &str, text: &str) -> (u16, String) {
    request(
        &serve.addr,
        "PUT",
        &format!("/v1/spec{query}"),
        &[],
        text.as_bytes(),
    )
}

/// Waits until no rebuild runs, and says how the last one ended (`/v1/stats`' `rebuild`).
fn wait_switched(serve: &Serve) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let (_, health) = serve.get("/healthz");
        if !health.contains("rebuilding") {
            let (_, stats) = serve.get("/v1/stats");
            let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
            return stats["rebuild"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the rebuild never ended: {health}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the change file `sink`, consolidated, holds every view of `reference`: its
/// lines.
fn wait_sink(sink: &std::path::Path, reference: &Serve) -> Vec<String> {
    let started = Instant::now();
    loop {
        let lines: Vec<String> = std::fs::read_to_string(sink)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        let consolidated = common::consolidate_upto(&lines, u64::MAX);
        let differs = VIEWS.iter().find(|view| {
            let tag = format!("{{\"view\":\"{view}\",");
            let got: Vec<&String> = consolidated
                .iter()
                .filter(|l| l.starts_with(&tag))
                .collect();
            let want = rows(reference, view);
            got.len() != want.lines().count()
                || got.iter().zip(want.lines()).any(|(g, w)| g.as_str() != w)
        });
        let Some(view) = differs else { return lines };
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the sink's changes never consolidated to view {view}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The threads of process `pid` whose scheduling policy is `SCHED_IDLE` (5), by name.
fn idle_threads(pid: u32) -> Vec<String> {
    let mut idle = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let sched = std::fs::read_to_string(task.path().join("sched")).unwrap_or_default();
        let policy = sched
            .lines()
            .find(|l| l.starts_with("policy"))
            .and_then(|l| l.rsplit(':').next())
            .map(str::trim);
        if policy == Some("5") {
            idle.push(std::fs::read_to_string(task.path().join("comm")).unwrap_or_default());
        }
    }
    idle
}

fn rows(serve: &Serve, name: &str) -> String {
    let (status, body) = serve.get(&format!("/v1/views/{name}"));
    assert_eq!(status, 200, "{body}");
    body
}

const VIEWS: [&str; 4] = [
    "profiles",
    "scores",
    "marketing_audience",
    "personalization",
];

fn same_views(live: &Serve, reference: &Serve, when: &str) {
    for view in VIEWS {
        if reference.get(&format!("/v1/views/{view}")).0 == 404 {
            continue;
        }
        assert_eq!(
            rows(live, view),
            rows(reference, view),
            "view {view} {when}"
        );
    }
}

/// A subscriber of view `scores`: its stream's lines until it ends or `stop` is set.
fn subscribe(addr: &str) -> std::thread::JoinHandle<Vec<String>> {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /v1/views/scores/changes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => got.push(line),
                Err(_) => break, // quiet for 3 s: done
            }
        }
        got
    })
}

#[test]
fn a_changed_signal_after_the_switch_over_has_the_rows_of_a_server_started_with_it() {
    let parts = common::workload_parts(43, 2000, 150, 3);
    let reference = reference("rebuild-reference");
    let live_dir = dir("rebuild-live");
    // a sink: the old engine hands it over at the switch-over
    let sink = sink_file("rebuild-live-sink");
    let mut live = Serve::start_with(&live_dir, &["--sink", sink.to_str().unwrap()]);
    let mut total = parts[0].lines().count();
    reference.post_taken(&parts[0], total);
    live.post_taken(&parts[0], total);
    let before = rows(&live, "scores");
    assert_ne!(
        before,
        rows(&reference, "scores"),
        "the specs differ on this data"
    );

    // a subscriber from before the PUT: its stream consolidates to the view throughout
    let subscriber = subscribe(&live.addr);
    std::thread::sleep(Duration::from_millis(200));
    let (status, answer) = put_spec(&live, "", &new_spec());
    assert_eq!(status, 202, "{answer}");
    let ended = wait_switched(&live);
    assert_eq!(ended["running"], false, "{ended}");
    assert!(ended["failed"].is_null(), "{ended}");
    let switched = &ended["switched"];
    assert!(switched["changes"].as_u64().unwrap() > 0, "{ended}");
    assert_eq!(live.get("/v1/spec").1, new_spec());
    same_views(&live, &reference, "right after the switch-over");
    // the rebuild's threads ran at the lowest priority; the serving engine's must not
    let idle = idle_threads(live.child.id());
    assert!(idle.is_empty(), "threads left at SCHED_IDLE: {idle:?}");

    // the subscriber: the old rows, then the switch-over's -1/+1, all at one engine time
    let got = subscriber.join().unwrap();
    let mut consolidated: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut times = std::collections::BTreeSet::new();
    let mut changes = 0;
    for line in got.iter().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let entry = (v["key"].to_string(), v["row"].to_string());
        match v.get("diff").and_then(serde_json::Value::as_i64) {
            Some(diff) => {
                *consolidated.entry(entry).or_default() += diff;
                times.insert(v["time"].as_u64().unwrap());
                changes += 1;
            }
            None => *consolidated.entry(entry).or_default() += 1,
        }
    }
    consolidated.retain(|_, n| *n != 0);
    let mut now: BTreeMap<(String, String), i64> = BTreeMap::new();
    for line in rows(&reference, "scores").lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        now.insert((v["key"].to_string(), v["row"].to_string()), 1);
    }
    assert!(changes > 0, "the subscriber got the switch-over: {got:?}");
    assert_eq!(consolidated, now, "the stream consolidates to the new rows");
    assert_eq!(times.len(), 1, "one engine time: {times:?}");
    assert_eq!(
        times.first().copied(),
        switched["engine_time"].as_u64(),
        "{ended}"
    );

    // events after it: the new spec maintains the views
    total += parts[1].lines().count();
    reference.post_taken(&parts[1], total);
    live.post_taken(&parts[1], total);
    same_views(&live, &reference, "after more events");
    // the sink's change stream, consolidated, is every view (the same as a subscriber's)
    let before = wait_sink(&sink, &reference);
    let at = switched["engine_time"].as_u64().unwrap();

    // a restart replays the log with the old spec up to the switch-over's position and
    // switches again there: the sink's file, written again from the replay, says the same
    live.kill();
    live = Serve::start_with(&live_dir, &["--sink", sink.to_str().unwrap()]);
    same_views(&live, &reference, "after a restart");
    let after = wait_sink(&sink, &reference);
    for t in [at - 1, at, u64::MAX] {
        assert_eq!(
            common::consolidate_upto(&after, t),
            common::consolidate_upto(&before, t),
            "the sink's changes up to {t} after the restart"
        );
    }
    assert_eq!(live.get("/v1/spec").1, new_spec());
    total += parts[2].lines().count();
    reference.post_taken(&parts[2], total);
    live.post_taken(&parts[2], total);
    same_views(&live, &reference, "after the restart and more events");
}

/// A sink that had confirmed nothing when the server was killed after a switch-over: the
/// restart's replay sends it everything again, the old spec's changes up to the switch-over's
/// position, then the same `-1`/`+1` at the same engine time, then the new spec's.
#[test]
fn a_restart_makes_the_switch_over_again_for_a_sink_that_had_not_confirmed_it() {
    let parts = common::workload_parts(46, 1200, 100, 2);
    let reference = reference("rebuild-again-reference");
    let live_dir = dir("rebuild-again");
    let sink = sink_file("rebuild-again-sink");
    let args = ["--sink", sink.to_str().unwrap()];
    // the sink's writes fail: it confirms nothing
    let live = Serve::start_env(
        &live_dir,
        &args,
        &[("FAILPOINTS", "sink::file::write=return")],
    );
    let mut total = 0;
    total += parts[0].lines().count();
    reference.post_taken(&parts[0], total);
    live.post_taken(&parts[0], total);
    let old_scores = rows(&live, "scores");
    let (status, answer) = put_spec(&live, "", &new_spec());
    assert_eq!(status, 202, "{answer}");
    let ended = wait_switched(&live);
    let at = ended["switched"]["engine_time"].as_u64().unwrap();
    total += parts[1].lines().count();
    reference.post_taken(&parts[1], total);
    live.post_taken(&parts[1], total);
    live.kill();
    let live = Serve::start_with(&live_dir, &args);
    same_views(&live, &reference, "after the restart");
    let lines = wait_sink(&sink, &reference);
    let scores = |t: u64| {
        common::consolidate_upto(&lines, t)
            .into_iter()
            .filter(|l| l.starts_with("{\"view\":\"scores\","))
            .map(|l| l + "\n")
            .collect::<String>()
    };
    assert_eq!(
        scores(at - 1),
        old_scores,
        "the old spec's rows up to the switch-over"
    );
    let switch: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&format!("\"time\":{at},")))
        .collect();
    assert!(
        switch.iter().any(|l| l.contains("\"diff\":-1"))
            && switch.iter().any(|l| l.contains("\"diff\":1")),
        "the switch-over's -1s and +1s at engine time {at}"
    );
}

/// SIGKILL at the two worst moments: while the new engine replays the log (the request is
/// recorded, the old spec serves), and right after the new spec is recorded, with the log
/// holding appends and no output switched yet. Either way the restarted server ends with
/// the new spec's rows and every acknowledged event.
#[test]
fn a_kill_during_a_rebuild_then_a_restart_ends_with_the_new_spec() {
    let parts = common::workload_parts(44, 1500, 120, 3);
    let reference = reference("rebuild-kill-reference");
    let mut total = 0;
    for (i, (point, part)) in ["rebuild::catch_up", "rebuild::recorded"]
        .iter()
        .zip(&parts)
        .enumerate()
    {
        let live_dir = dir(&format!("rebuild-kill-{i}"));
        let hold = [("FAILPOINTS", format!("{point}=sleep(60000)"))];
        let hold: Vec<(&str, &str)> = hold.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let live = Serve::start_env(&live_dir, &[], &hold);
        if i == 0 {
            total += part.lines().count();
            reference.post_taken(part, total);
        }
        live.post_taken(&parts[0], parts[0].lines().count());
        let (status, answer) = put_spec(&live, "", &new_spec());
        assert_eq!(status, 202, "{answer}");
        live.wait_health(&["rebuilding"]);
        // held at the fail point; an event posted now is acknowledged at the first moment,
        // and waits (unacknowledged) at the second, where the log holds appends
        let late = &parts[1];
        if i == 0 {
            let (status, body) = live.post("/v1/ingest", late.as_bytes());
            assert_eq!(status, 200, "{body}");
            assert_eq!(live.get("/v1/spec").1, throughline::spec::DEFAULT_SPEC);
            // views and the spec wait for the switch-over
            let view = "purpose = \"marketing\"\nfields = [\"email\"]\n";
            let (status, body) = request(&live.addr, "PUT", "/v1/views/v", &[], view.as_bytes());
            assert_eq!(status, 409, "{body}");
            assert!(body.contains("rebuild"), "{body}");
            let (status, body) = put_spec(&live, "", &new_spec());
            assert_eq!(status, 409, "{body}");
        } else {
            // the switch-over is recorded: the server has not answered anything from it yet
            assert!(live_dir.join("rebuild.json").exists());
        }
        live.kill();
        let live = Serve::start_with(&live_dir, &[]);
        wait_switched(&live);
        assert_eq!(live.get("/v1/spec").1, new_spec(), "at fail point {point}");
        assert!(!live_dir.join("rebuild.json").exists());
        let mut expected = parts[0].lines().count();
        if i == 0 {
            expected += late.lines().count();
        } else {
            live.post_taken(late, expected + late.lines().count());
            expected += late.lines().count();
        }
        if i == 0 {
            total += late.lines().count();
            reference.post_taken(late, total);
        }
        let (_, metrics) = live.get("/metrics");
        assert!(
            metrics.contains(&format!("throughline_lines_total {expected}\n")),
            "every acknowledged line is there after the kill at {point}"
        );
        same_views(&live, &reference, &format!("after a kill at {point}"));
    }
}

/// A spec that needs more of the retired events than compaction kept is refused, naming
/// the rule and the line and engine time it holds exactly from; accepted, it is applied.
#[test]
fn a_spec_the_folded_log_cannot_backfill_is_refused_unless_accepted() {
    let dir = dir("rebuild-inexact");
    let live = Serve::start_with(&dir, &[]);
    let events = common::workload_over(45, 3000, 150, false, Some(150));
    let text = String::from_utf8(events).unwrap();
    live.post_taken(&text, text.lines().filter(|l| !l.is_empty()).count());
    let (status, body) = live.post("/v1/compact", b"");
    assert_eq!(status, 200, "{body}");
    let compacted: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(compacted["reduced"].as_u64().unwrap() > 0, "{body}");
    let longer =
        throughline::spec::DEFAULT_SPEC.replacen("max_age = \"28d\"", "max_age = \"60d\"", 1);
    let (status, body) = put_spec(&live, "", &longer);
    assert_eq!(status, 409, "{body}");
    for said in [
        "[intent] max_age",
        "from log line",
        "engine time",
        "?inexact=accept",
    ] {
        assert!(body.contains(said), "{said}: {body}");
    }
    assert_eq!(live.get("/v1/spec").1, throughline::spec::DEFAULT_SPEC);
    // a shorter horizon is exact whatever was folded
    let (status, body) = put_spec(&live, "?inexact=accept", &longer);
    assert_eq!(status, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(answer["exact_from"]["line"].as_u64().unwrap() > 1, "{body}");
    let ended = wait_switched(&live);
    assert!(ended["failed"].is_null(), "{ended}");
    assert_eq!(live.get("/v1/spec").1, longer);
    let shorter = longer.replacen("max_age = \"60d\"", "max_age = \"14d\"", 1);
    let (status, body) = put_spec(&live, "", &shorter);
    assert_eq!(status, 202, "{body}");
    wait_switched(&live);
    assert_eq!(live.get("/v1/spec").1, shorter);
}
