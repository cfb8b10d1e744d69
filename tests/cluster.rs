//! A timely cluster of two processes on loopback runs the same dataflow as one process:
//! replaying a generated adversarial workload, or any fixture, gives a change stream and a
//! snapshot byte-identical to `run -w 1`; a two-process server gives one process's views,
//! explanations, retained counts and erasures; and when a process dies, the other stops
//! with an error instead of hanging.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::request;

use throughline::replay::FIXTURE_WALL_CLOCK_MS;

const BIN: &str = env!("CARGO_BIN_EXE_throughline");

fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("throughline-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A hostfile of two free loopback ports.
fn hostfile(dir: &Path) -> PathBuf {
    let ports: Vec<u16> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let path = dir.join("hosts");
    std::fs::write(
        &path,
        ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}\n"))
            .collect::<String>(),
    )
    .unwrap();
    path
}

/// An adversarial workload in which every event that would be dated by `receivedAt` carries
/// one: `serve` stamps its receipt time on events without it (SPEC section 1), which `run`
/// cannot know, so the comparison with `run` needs none left to stamp.
fn workload(dir: &Path) -> PathBuf {
    let path = dir.join("events.ndjson");
    let bytes = common::workload(21, 4000, 150, true);
    let mut out = Vec::with_capacity(bytes.len());
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(mut event))
                if !event.contains_key("timestamp") && !event.contains_key("receivedAt") =>
            {
                let received = 1_767_225_600_000u64 + i as u64 * 1000;
                event.insert("receivedAt".into(), received.into());
                out.extend(serde_json::to_vec(&event).unwrap());
            }
            _ => out.extend_from_slice(line),
        }
        out.push(b'\n');
    }
    out.pop();
    std::fs::write(&path, out).unwrap();
    path
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "throughline {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `run` as process 1 of a 2-process cluster, with `extra` arguments.
fn helper_command(hosts: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["run", "--processes", "2", "--process", "1", "--hostfile"])
        .arg(hosts)
        .args(extra);
    command
}

fn helper(hosts: &Path) -> Child {
    helper_command(hosts, &["-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn two_processes_give_the_output_of_one() {
    let dir = temp_dir("replay");
    let input = workload(&dir);
    let wall = format!("{FIXTURE_WALL_CLOCK_MS}");
    let input = input.to_str().unwrap();
    for extra in [&[][..], &["--snapshot"][..]] {
        let mut single = vec![
            "run",
            "-w",
            "1",
            "--input",
            input,
            "--wall-clock-ms",
            &wall,
            "-q",
        ];
        single.extend_from_slice(extra);
        let expected = run(&single).stdout;
        assert!(!expected.is_empty());

        let hosts = hostfile(&dir);
        let hosts_arg = hosts.to_str().unwrap().to_string();
        let helper = helper(&hosts);
        let mut leader = vec![
            "run",
            "--processes",
            "2",
            "--process",
            "0",
            "--hostfile",
            &hosts_arg,
            "--input",
            input,
            "--wall-clock-ms",
            &wall,
            "-q",
        ];
        leader.extend_from_slice(extra);
        let got = run(&leader).stdout;
        let helper = helper.wait_with_output().unwrap();
        assert!(
            helper.status.success(),
            "{}",
            String::from_utf8_lossy(&helper.stderr)
        );
        assert!(
            got == expected,
            "{extra:?}: the cluster's output differs from one process's"
        );
    }
}

#[test]
fn a_dead_process_stops_the_cluster_with_an_error() {
    let dir = temp_dir("failure");
    let hosts = hostfile(&dir);
    let mut helper = helper(&hosts);
    let mut leader = Command::new(BIN)
        .args([
            "run",
            "--processes",
            "2",
            "--process",
            "0",
            "--hostfile",
            hosts.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = leader.stdin.take().unwrap();
    writeln!(stdin, "{{\"userId\":\"u-1\",\"timestamp\":1767225600000}}").unwrap();
    // the cluster runs once the first change comes out
    let mut stdout = std::io::BufReader::new(leader.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(first.contains("user_id:u-1"), "{first}");
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    helper.kill().unwrap();
    helper.wait().unwrap();
    // more input after the helper died: the leader must fail, not hang
    let start = Instant::now();
    loop {
        let _ = writeln!(stdin, "{{\"userId\":\"u-2\",\"timestamp\":1767225601000}}");
        if let Some(status) = leader.try_wait().unwrap() {
            assert!(
                !status.success(),
                "the leader exited 0 after losing a process"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the leader hangs after losing a process"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = leader.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("throughline: error"), "{stderr}");
}

/// A started `serve` process (args as given) and the address it listens on.
fn serve(args: &[&str]) -> common::Serve {
    common::Serve::spawn(args)
}

/// Sums a change stream's diffs per (time, view, key, row): the stream consolidated.
fn consolidated(stream: &str) -> std::collections::BTreeMap<String, i64> {
    let mut sums = std::collections::BTreeMap::new();
    for line in stream.lines().filter(|l| !l.is_empty()) {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let diff = v["diff"].as_i64().unwrap();
        v.as_object_mut().unwrap().remove("diff");
        *sums.entry(v.to_string()).or_insert(0) += diff;
    }
    sums.retain(|_, d| *d != 0);
    sums
}

/// `serve` as a 2-process cluster, events posted to both processes in turn: the views (read
/// from either process) and the consolidated change stream equal `run -w 1` on the same
/// events in the same order.
#[test]
fn a_two_process_server_gives_the_output_of_one() {
    let dir = temp_dir("serve");
    let input = workload(&dir);
    let hosts = hostfile(&dir);
    let hosts_arg = hosts.to_str().unwrap().to_string();
    let data = dir.join("data");
    let sink = dir.join("changes.ndjson");
    let leader = serve(&[
        "--processes",
        "2",
        "--process",
        "0",
        "--hostfile",
        &hosts_arg,
        "--data-dir",
        data.to_str().unwrap(),
        "--sink",
        sink.to_str().unwrap(),
    ]);
    let helper = serve(&[
        "--processes",
        "2",
        "--process",
        "1",
        "--hostfile",
        &hosts_arg,
        "--leader",
        &leader.addr,
    ]);
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let bytes = std::fs::read(&input).unwrap();
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    for (i, chunk) in lines.chunks(50).enumerate() {
        let target = if i % 2 == 0 {
            &leader.addr
        } else {
            &helper.addr
        };
        let (status, body) = request(target, "POST", "/v1/ingest", &[], &chunk.join(&b'\n'));
        assert_eq!(status, 200, "{body}");
    }
    // every line reached the engine
    let start = Instant::now();
    loop {
        let (_, metrics) = request(&helper.addr, "GET", "/metrics", &[], b"");
        let seen = metrics
            .lines()
            .find_map(|l| l.strip_prefix("throughline_lines_total "))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if seen == lines.len() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{seen} of {}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // the retained counts come from the keepers of both processes, and at rest they are
    // one process's
    let stats = run(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--wall-clock-ms",
        &wall,
        "-q",
        "--stats",
    ])
    .stderr;
    let stats = String::from_utf8(stats).unwrap();
    let retained = stats
        .lines()
        .find_map(|l| l.strip_prefix("throughline: stats: retained: "))
        .unwrap();
    let numbers: Vec<u64> = retained
        .split(", ")
        .map(|part| part.split(' ').next().unwrap().parse().unwrap())
        .collect();
    let gauges = [
        "throughline_events_live",
        "throughline_events_retired",
        "throughline_identifier_sets",
        "throughline_records_kept",
        "throughline_sequence_roles",
    ];
    let start = Instant::now();
    loop {
        let (_, metrics) = request(&leader.addr, "GET", "/metrics", &[], b"");
        let got: Vec<u64> = gauges
            .iter()
            .map(|name| {
                metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name} ")))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        if got[..] == numbers[..gauges.len()] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the cluster's retained counts {got:?} are not one process's: {retained}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let snapshot = run(&[
        "run",
        "--input",
        input.to_str().unwrap(),
        "--snapshot",
        "--wall-clock-ms",
        &wall,
        "-q",
    ])
    .stdout;
    let snapshot = String::from_utf8(snapshot).unwrap();
    let spec = throughline::spec::Spec::default_spec();
    let same_views = |snapshot: &str| {
        for view in &spec.views {
            let expected: Vec<&str> = snapshot
                .lines()
                .filter(|l| l.starts_with(&format!("{{\"view\":\"{}\"", view.name)))
                .collect();
            for addr in [&leader.addr, &helper.addr] {
                let (status, body) =
                    request(addr, "GET", &format!("/v1/views/{}", view.name), &[], b"");
                assert_eq!(status, 200);
                let got: Vec<&str> = body.lines().collect();
                assert!(got == expected, "view {} differs from run -w 1", view.name);
            }
        }
    };
    same_views(&snapshot);
    // an explanation from either process is the one `explain` gives on the same input,
    // but for where each cited event was read (the log's records there, the file's lines
    // here, which also count the blank lines the HTTP ingest skipped)
    let key = snapshot
        .lines()
        .find(|l| l.starts_with("{\"view\":\"profiles\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["key"].clone())
        .unwrap();
    let key = key.as_str().unwrap();
    let without_sources = |text: &str| {
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        strip_sources(&mut v);
        v
    };
    let expected = run(&[
        "explain",
        key,
        "-i",
        input.to_str().unwrap(),
        "--wall-clock-ms",
        &wall,
        "-q",
    ])
    .stdout;
    let expected = without_sources(&String::from_utf8(expected).unwrap());
    assert_eq!(expected["status"], "found");
    for addr in [&leader.addr, &helper.addr] {
        let (status, body) = request(
            addr,
            "GET",
            &format!("/v1/profiles/{key}/explain"),
            &[],
            b"",
        );
        assert_eq!(status, 200, "{body}");
        assert!(
            without_sources(&body) == expected,
            "explanation of {key} differs"
        );
    }
    // a forget through the process that does not admit: the keepers of both processes
    // retract what they hold of the profile, as one process does for the same input
    let (kind, value) = key.split_once(':').unwrap();
    let field = match kind {
        "user_id" => "userId",
        "anonymous_id" => "anonymousId",
        _ => kind,
    };
    let forget = serde_json::json!({
        "type": "forget",
        "messageId": "forget-in-the-cluster",
        field: value,
        "receivedAt": 1_767_225_600_000u64 + (lines.len() as u64 + 1) * 1000,
    })
    .to_string();
    let (status, body) = request(&helper.addr, "POST", "/v1/forget", &[], forget.as_bytes());
    assert_eq!(status, 200, "{body}");
    let forgotten = dir.join("forgotten.ndjson");
    let mut with_forget = bytes.clone();
    with_forget.extend_from_slice(format!("\n{forget}\n").as_bytes());
    std::fs::write(&forgotten, with_forget).unwrap();
    let start = Instant::now();
    loop {
        let (_, metrics) = request(&leader.addr, "GET", "/metrics", &[], b"");
        let seen = format!("throughline_lines_total {}", lines.len() + 1);
        if metrics.lines().any(|l| l == seen) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = run(&[
        "run",
        "--input",
        forgotten.to_str().unwrap(),
        "--snapshot",
        "--wall-clock-ms",
        &wall,
        "-q",
    ])
    .stdout;
    let after = String::from_utf8(after).unwrap();
    assert!(after != snapshot, "the forget changed nothing");
    same_views(&after);
    // a view defined while the cluster runs (through the helper, which passes it on): the
    // workers of both processes render it, and a copy of marketing_audience's definition
    // has its rows
    let copy = "purpose = \"marketing\"\nscore_gte = 20\nfields = [\"email\", \"score\"]\n";
    let (status, body) = request(
        &helper.addr,
        "PUT",
        "/v1/views/marketing_copy",
        &[],
        copy.as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let rows_of = |addr: &str, view: &str| -> Vec<String> {
        let (status, body) = request(addr, "GET", &format!("/v1/views/{view}"), &[], b"");
        assert_eq!(status, 200, "{body}");
        body.lines()
            .map(|l| l.replace(&format!("\"view\":\"{view}\""), "\"view\":\"-\""))
            .collect()
    };
    let original = rows_of(&leader.addr, "marketing_audience");
    assert!(!original.is_empty());
    assert_eq!(rows_of(&helper.addr, "marketing_copy"), original);
    drop(helper);
    drop(leader);
    let changes = run(&[
        "run",
        "--input",
        forgotten.to_str().unwrap(),
        "--wall-clock-ms",
        &wall,
        "-q",
    ])
    .stdout;
    let sunk = std::fs::read_to_string(&sink).unwrap();
    let sunk: String = sunk
        .lines()
        .filter(|l| !l.contains("\"view\":\"marketing_copy\""))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        consolidated(&sunk) == consolidated(&String::from_utf8(changes).unwrap()),
        "the consolidated change streams differ"
    );
}

/// Removes where every cited event was read (`source` and `line`).
fn strip_sources(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("source");
            map.remove("line");
            map.values_mut().for_each(strip_sources);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_sources),
        _ => {}
    }
}

/// A process whose peers never start gives up after the connect timeout, with an error.
#[test]
fn a_cluster_that_never_forms_is_an_error() {
    let dir = temp_dir("alone");
    let hosts = hostfile(&dir);
    let out = helper_command(&hosts, &["--connect-timeout-secs", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not form within 1 s"), "{stderr}");
}

/// Every fixture gives its expected change stream and final snapshot on a cluster of two
/// processes (each with the fixture's dataflow spec), as on one process. Process 0 of a
/// cluster polls for the others once a second (timely's `await_connections`), so the
/// clusters run a few at a time.
#[test]
fn every_fixture_gives_its_expected_outputs_on_two_processes() {
    let dir = temp_dir("fixtures");
    let fixtures = common::fixture_dirs();
    let mut runs: Vec<(&PathBuf, Option<&str>, String)> = Vec::new();
    for fixture in &fixtures {
        for (extra, expected) in [
            (None, "expected.changes.ndjson"),
            (Some("--snapshot"), "expected.snapshot.ndjson"),
        ] {
            if let Ok(expected) = std::fs::read_to_string(fixture.join(expected)) {
                runs.push((fixture, extra, expected));
            }
        }
    }
    for batch in runs.chunks(8) {
        let started: Vec<(Child, Child)> = batch
            .iter()
            .enumerate()
            .map(|(i, (fixture, extra, _))| {
                // a hostfile of its own for each cluster of the batch
                let own = dir.join(format!("cluster-{i}"));
                std::fs::create_dir_all(&own).unwrap();
                start_fixture_cluster(&own, fixture, *extra)
            })
            .collect();
        for ((leader, helper), (fixture, extra, expected)) in started.into_iter().zip(batch) {
            let helper = helper.wait_with_output().unwrap();
            let leader = leader.wait_with_output().unwrap();
            for out in [&helper, &leader] {
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let got = String::from_utf8_lossy(&leader.stdout);
            assert!(
                got.lines().eq(expected.lines()),
                "{} {extra:?}: two processes differ from the expected outputs",
                fixture.display()
            );
        }
    }
}

/// Starts a cluster of two processes replaying `fixture` (process 0 first, so that it
/// listens by the time process 1 connects): (process 0, process 1).
fn start_fixture_cluster(dir: &Path, fixture: &Path, extra: Option<&str>) -> (Child, Child) {
    let hosts = hostfile(dir);
    let spec = fixture.join("dataflow.toml");
    let spec_args: Vec<&str> = match spec.exists() {
        true => vec!["--dataflow", spec.to_str().unwrap()],
        false => Vec::new(),
    };
    let wall = format!("{FIXTURE_WALL_CLOCK_MS}");
    let events = fixture.join("events.ndjson");
    let mut leader = vec!["run", "--processes", "2", "--process", "0", "--hostfile"];
    leader.extend([hosts.to_str().unwrap(), "--input", events.to_str().unwrap()]);
    leader.extend(["--wall-clock-ms", &wall, "-q"]);
    leader.extend(spec_args.iter().copied());
    leader.extend(extra);
    let leader = Command::new(BIN)
        .args(&leader)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut helper_args = spec_args;
    helper_args.push("-q");
    let helper = helper_command(&hosts, &helper_args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (leader, helper)
}

/// A process started with another dataflow spec than process 0's says so and exits 1,
/// instead of building a dataflow that cannot match; process 0 stops with an error too.
#[test]
fn a_process_with_another_spec_is_an_error() {
    let dir = temp_dir("spec");
    let hosts = hostfile(&dir);
    let fixtures = common::fixture_dirs();
    let other = fixtures
        .iter()
        .map(|f| f.join("dataflow.toml"))
        .find(|spec| spec.exists())
        .unwrap();
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/alias/events.ndjson");
    let leader = Command::new(BIN)
        .args(["run", "--processes", "2", "--process", "0", "--hostfile"])
        .arg(&hosts)
        .arg("--input")
        .arg(&input)
        .arg("-q")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let helper = helper_command(&hosts, &["-q", "--dataflow", other.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let leader = leader.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&helper.stderr);
    assert_eq!(helper.status.code(), Some(1), "{said}");
    assert!(
        said.contains("dataflow spec differs from process 0's"),
        "{said}"
    );
    assert!(!leader.status.success());
}
