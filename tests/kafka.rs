//! Kafka in and out of `run` and `serve`, against a real Kafka-protocol broker (tansu,
//! started here on loopback with in-memory storage) and checked with an independent client
//! (kafka-python, `tests/sdk/kafka_client.py`). They need both: `tests/run.sh` installs
//! them and runs every test; a plain `cargo test` lists these as ignored, with the reason.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::Serve;
use throughline::replay::FIXTURE_WALL_CLOCK_MS;

/// Why these tests are ignored by a plain `cargo test`.
const NEEDS_BROKER: &str = "needs tansu and kafka-python: tests/run.sh installs them and runs it";

struct Broker {
    child: Child,
    addr: String,
    tansu: String,
}

impl Broker {
    /// A fresh in-memory broker on a free loopback port. The test fails (it does not pass
    /// quietly) when tansu or kafka-python is not provided.
    fn start() -> Broker {
        let (Ok(tansu), Ok(_)) = (
            std::env::var("THROUGHLINE_TANSU"),
            std::env::var("THROUGHLINE_SDK_PYTHON"),
        ) else {
            panic!("THROUGHLINE_TANSU and THROUGHLINE_SDK_PYTHON must be set: {NEEDS_BROKER}");
        };
        let addr = free_loopback_addr();
        let child = run_tansu(&tansu, &addr);
        Broker { child, addr, tansu }
    }

    /// Stops the broker's process (SIGSTOP): connections stay open, nothing is answered.
    fn freeze(&self) {
        signal(&self.child, "-STOP");
    }

    /// Lets a frozen broker go on (SIGCONT).
    fn thaw(&self) {
        signal(&self.child, "-CONT");
    }

    fn create_topic(&self, name: &str, partitions: u32) {
        create_topic(&self.tansu, &self.addr, name, partitions);
    }

    fn url(&self, topic: &str) -> String {
        format!("kafka://{}/{topic}", self.addr)
    }
}

/// `127.0.0.1:PORT` for a port nothing listens on (yet).
fn free_loopback_addr() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use common::tansu::{create_topic, start as run_tansu};

/// Runs kafka-python (`tests/sdk/kafka_client.py COMMAND BROKER TOPIC`) with `input`, against
/// the broker at `broker` (`HOST:PORT`).
fn client(command: &str, broker: &str, topic: &str, input: &[u8]) -> String {
    let python = std::env::var("THROUGHLINE_SDK_PYTHON").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/kafka_client.py");
    let mut child = Command::new(python)
        .arg(script)
        .args([command, broker, topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kafka_client.py {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn throughline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_throughline"))
        .args(["run", "--wall-clock-ms", &FIXTURE_WALL_CLOCK_MS.to_string()])
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{stderr}");
    (stdout, stderr)
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("throughline-kafka-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A data directory for a server, empty.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = temp(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The rows the upsert topics `{prefix}.{view}` hold, read with kafka-python: the latest
/// value of each key that is not a tombstone, as snapshot lines, sorted.
fn upsert_rows(broker: &str, prefix: &str, views: &[String]) -> Vec<String> {
    let mut rows = Vec::new();
    for view in views {
        let mut latest: BTreeMap<String, Option<String>> = BTreeMap::new();
        for record in client("consume", broker, &format!("{prefix}.{view}"), b"").lines() {
            let r: serde_json::Value = serde_json::from_str(record).unwrap();
            latest.insert(
                r["key"].as_str().unwrap().to_string(),
                r["value"].as_str().map(str::to_string),
            );
        }
        for (key, row) in latest {
            if let Some(row) = row {
                rows.push(format!(
                    "{{\"view\":{},\"key\":{},\"row\":{row}}}",
                    serde_json::Value::from(view.as_str()),
                    serde_json::Value::from(key)
                ));
            }
        }
    }
    rows.sort();
    rows
}

/// Events produced by kafka-python to a 3-partition topic (keyed by person) give, with
/// `--until-end`, exactly the snapshot of `run` over the same records from a file in the
/// documented order (partition by partition, each by offset), and dead letters name the
/// record's partition and offset. A second run of the same group reads nothing new.
#[test]
#[ignore = "needs tansu and kafka-python: tests/run.sh installs them and runs it"]
fn a_topic_replays_like_the_same_lines_from_a_file() {
    let broker = Broker::start();
    broker.create_topic("events", 3);
    let lines = common::workload(11, 3_000, 300, true);
    let placed = client("produce", &broker.addr, "events", &lines);
    // the file: the records partition by partition, each in offset order
    let mut by_place: BTreeMap<(u32, u64), &[u8]> = BTreeMap::new();
    let sent = lines
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>();
    for (line, place) in sent.iter().zip(placed.lines()) {
        let (p, o) = place.split_once(' ').unwrap();
        by_place.insert((p.parse().unwrap(), o.parse().unwrap()), line);
    }
    assert_eq!(by_place.len(), sent.len());
    assert!(
        by_place
            .keys()
            .map(|(p, _)| p)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 3,
        "the records did not spread over the partitions"
    );
    let file = temp("ordered.ndjson");
    let ordered: Vec<u8> = by_place
        .values()
        .flat_map(|l| l.iter().copied().chain([b'\n']))
        .collect();
    std::fs::write(&file, ordered).unwrap();
    let (from_file, _) = ok(throughline(&[
        "--snapshot",
        "-q",
        "-i",
        file.to_str().unwrap(),
    ]));
    let dead = temp("dead.ndjson");
    let url = format!("{}?group=replay", broker.url("events"));
    let (from_topic, stderr) = ok(throughline(&[
        "--snapshot",
        "--until-end",
        "-i",
        &url,
        "--dead-letters",
        dead.to_str().unwrap(),
    ]));
    assert!(!from_file.is_empty());
    assert!(
        from_topic == from_file,
        "the topic's snapshot ({} lines) differs from the file's ({} lines)",
        from_topic.lines().count(),
        from_file.lines().count()
    );
    assert!(stderr.contains("#0 read"), "{stderr}");
    // dead letters: the record's partition and offset
    let dead = std::fs::read_to_string(&dead).unwrap();
    let first: serde_json::Value = serde_json::from_str(dead.lines().next().unwrap()).unwrap();
    let source = first["source"].as_str().unwrap();
    let (topic, partition) = source.rsplit_once('#').unwrap();
    assert_eq!(topic, broker.url("events"));
    let place = (partition.parse().unwrap(), first["line"].as_u64().unwrap());
    assert!(by_place.contains_key(&place), "{first}");
    // the group's offsets were committed: a second run has nothing to read
    let (again, _) = ok(throughline(&["--until-end", "-q", "-i", &url]));
    assert!(again.is_empty(), "the second run read records again");
}

/// The change stream and the upsert topics, read back with kafka-python: the changes
/// consolidated, and the latest value per key of each view's upsert topic, both equal the
/// snapshot of the same run. Every change record is keyed `VIEW/KEY`.
#[test]
#[ignore = "needs tansu and kafka-python: tests/run.sh installs them and runs it"]
fn change_and_upsert_topics_hold_the_views() {
    let broker = Broker::start();
    let lines = common::workload(12, 2_000, 200, true);
    let file = temp("changes-in.ndjson");
    std::fs::write(&file, &lines).unwrap();
    let (snapshot, _) = ok(throughline(&[
        "--snapshot",
        "-q",
        "-i",
        file.to_str().unwrap(),
    ]));
    let views: Vec<String> = throughline::spec::Spec::default_spec()
        .views
        .iter()
        .map(|v| v.name.clone())
        .collect();
    broker.create_topic("changes", 3);
    for view in &views {
        broker.create_topic(&format!("rows.{view}"), 1);
    }
    let (stdout, stderr) = ok(throughline(&[
        "-i",
        file.to_str().unwrap(),
        "-o",
        &broker.url("changes"),
        "--upsert",
        &broker.url("rows"),
    ]));
    assert_eq!(stdout, "", "the change stream went to Kafka, not stdout");
    assert!(stderr.contains("change records"), "{stderr}");
    // the change topic, consolidated
    let records = client("consume", &broker.addr, "changes", b"");
    let mut changes = Vec::new();
    for record in records.lines() {
        let r: serde_json::Value = serde_json::from_str(record).unwrap();
        let change: serde_json::Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        assert_eq!(
            r["key"].as_str().unwrap(),
            format!(
                "{}/{}",
                change["view"].as_str().unwrap(),
                change["key"].as_str().unwrap()
            )
        );
        changes.push(r["value"].as_str().unwrap().to_string());
    }
    assert!(!changes.is_empty());
    // one profile's changes keep their order: within a partition, times never go back
    let expected: Vec<String> = snapshot.lines().map(str::to_string).collect();
    assert_eq!(common::consolidate_upto(&changes, u64::MAX), expected);
    // the upsert topics: latest value per key, tombstones removing
    let rows = upsert_rows(&broker.addr, "rows", &views);
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(rows, sorted);
}

/// Errors a person understands: no broker, no topic, and an upsert topic that does not
/// exist, each a one-line error and exit status 1.
#[test]
#[ignore = "needs tansu and kafka-python: tests/run.sh installs them and runs it"]
fn kafka_errors_are_one_line_and_exit_1() {
    let broker = Broker::start();
    let nowhere = format!("kafka://{}/events", free_loopback_addr());
    let missing = broker.url("missing");
    broker.create_topic("guarded", 1);
    // the broker refuses this login: said as such, not as an unreachable broker
    let refused = format!(
        "{}?security.protocol=SASL_PLAINTEXT&sasl.mechanism=SCRAM-SHA-512&sasl.username=u&sasl.password=p",
        broker.url("guarded")
    );
    let cases = [
        (
            vec!["--until-end", "-i", nowhere.as_str()],
            "is a broker running there?",
        ),
        (vec!["--until-end", "-i", missing.as_str()], "no such topic"),
        (
            vec!["--until-end", "-i", refused.as_str()],
            "check the sasl.*/ssl.* settings",
        ),
    ];
    for (args, says) in cases {
        let out = throughline(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let file = temp("errors-in.ndjson");
    std::fs::write(&file, common::workload(13, 50, 10, false)).unwrap();
    let out = throughline(&[
        "-i",
        file.to_str().unwrap(),
        "-o",
        "/dev/null",
        "--upsert",
        &broker.url("nothere"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("could not be written"), "{stderr}");
    // a change too large for a record: exit 1, naming the record and the setting
    broker.create_topic("small", 1);
    let big = temp("big-in.ndjson");
    let email = format!("{}@example.com", "a".repeat(2000));
    std::fs::write(
        &big,
        format!(
            "{{\"type\":\"identify\",\"userId\":\"big-1\",\"timestamp\":1767261600000,\"traits\":{{\"email\":\"{email}\"}}}}\n"
        ),
    )
    .unwrap();
    let small = format!("{}?message.max.bytes=1000", broker.url("small"));
    let out = throughline(&["-i", big.to_str().unwrap(), "-o", &small]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("key profiles/user_id:big-1") && stderr.contains("message.max.bytes"),
        "{stderr}"
    );
}

/// `serve --source` SIGKILLed again and again while kafka-python writes: afterwards every
/// produced event is applied exactly once. The events carry no `messageId` (so nothing is
/// deduplicated) and each adds 20 points to a new profile: one applied twice would score
/// 40, one lost would be missing. `/metrics` reports what was logged and the lag.
#[test]
#[ignore = "needs tansu and kafka-python: tests/run.sh installs them and runs it"]
fn serve_following_a_topic_applies_each_record_once_across_sigkills() {
    let broker = Broker::start();
    broker.create_topic("live", 3);
    let events: Vec<u8> = (0..3000)
        .flat_map(|i| {
            format!(
                "{{\"type\":\"track\",\"event\":\"Signed Up\",\"userId\":\"k-{i}\",\"timestamp\":1767261600000}}\n"
            )
            .into_bytes()
        })
        .collect();
    let dir = fresh_dir("serve-data");
    let source = format!("{}?group=follow", broker.url("live"));
    let mut serve = Serve::start(&dir, &source);
    let producer = {
        let addr = broker.addr.clone();
        let events = events.clone();
        std::thread::spawn(move || client("produce", &addr, "live", &events))
    };
    for pause in [300, 500, 200, 700, 400, 250, 600, 350] {
        std::thread::sleep(Duration::from_millis(pause));
        serve.kill();
        serve = Serve::start(&dir, &source);
    }
    producer.join().unwrap();
    serve.kill();
    let serve = Serve::start(&dir, &source);
    let started = Instant::now();
    let rows = loop {
        let (status, body) = serve.get("/v1/views/scores");
        assert_eq!(status, 200, "{body}");
        let rows: Vec<String> = body.lines().map(str::to_string).collect();
        if rows.len() >= 3000 {
            break rows;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} of 3000 profiles after the last restart",
            rows.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rows.len(), 3000);
    for row in &rows {
        assert!(row.contains("\"score\":20,"), "applied twice? {row}");
    }
    // the lag is looked at every second
    let lag_seen = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        serve
            .get("/metrics")
            .1
            .contains("throughline_kafka_lag{partition=\"2\"} 0")
    });
    assert!(lag_seen, "{}", serve.get("/metrics").1);
    let (status, health) = serve.get("/healthz");
    assert_eq!((status, health.as_str()), (200, "ok\n"));
    // dead letters and explanations cite a record by its topic, partition and offset
    client("produce", &broker.addr, "live", b"{not json\n");
    let dead_letters = dir.join("dead_letters.ndjson");
    let started = Instant::now();
    let dead = loop {
        let text = std::fs::read_to_string(&dead_letters).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no dead letter"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let topic = broker.url("live");
    let cited = |source: &serde_json::Value| {
        source
            .as_str()
            .and_then(|s| s.strip_prefix(&format!("{topic}#")))
            .is_some_and(|p| ["0", "1", "2"].contains(&p))
    };
    assert!(cited(&dead["source"]) && dead["line"].is_u64(), "{dead}");
    let (status, explained) = serve.get("/v1/profiles/user_id:k-7/explain");
    assert_eq!(status, 200, "{explained}");
    let explained: serde_json::Value = serde_json::from_str(&explained).unwrap();
    let event = &explained["score"]["contributions"][0]["event"];
    assert!(
        cited(&event["source"]) && event["line"].is_u64(),
        "{explained}"
    );
}

/// A broker that is down when `serve --source` starts: the server starts anyway, takes
/// events over HTTP, says `degraded` in `/healthz`, and once a broker is up and the topic
/// exists, follows it.
#[test]
#[ignore = "needs tansu and kafka-python: tests/run.sh installs them and runs it"]
fn serve_waits_for_a_broker_that_is_down_and_says_so() {
    let broker = Broker::start();
    // a broker on a port where nothing listens yet
    let addr = free_loopback_addr();
    let dir = fresh_dir("serve-down");
    let serve = Serve::start(&dir, &format!("kafka://{addr}/late"));
    let event = "{\"type\":\"identify\",\"userId\":\"http-1\",\"timestamp\":1767261600000}";
    let (status, body) =
        common::request(&serve.addr, "POST", "/v1/identify", &[], event.as_bytes());
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    loop {
        let (status, health) = serve.get("/healthz");
        assert_eq!(status, 200, "{health}");
        if health.contains("degraded") && health.contains("broker") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{health}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // now a broker comes up there, with the topic and an event
    let mut late = run_tansu(&broker.tansu, &addr);
    create_topic(&broker.tansu, &addr, "late", 1);
    let event = "{\"type\":\"identify\",\"userId\":\"kafka-1\",\"timestamp\":1767261600000}\n";
    client("produce", &addr, "late", event.as_bytes());
    let started = Instant::now();
    loop {
        let (_, profiles) = serve.get("/v1/views/profiles");
        if profiles.contains("user_id:kafka-1") && profiles.contains("user_id:http-1") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the record never arrived: {profiles}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, health) = serve.get("/healthz");
    assert_eq!(health, "ok\n");
    let _ = late.kill();
    let _ = late.wait();
}

/// `serve --sink kafka://… --upsert kafka://…` across SIGKILL and SIGTERM restarts: the
/// change topic, with records written twice across a crash told apart by their identical
/// (time, view, key, row, diff), consolidates to the views; the upsert topics' latest values
/// equal them; and a clean restart does not send the whole history again.
#[test]
#[ignore = "needs tansu and kafka-python: tests/run.sh installs them and runs it"]
fn serve_writes_changes_and_rows_to_topics_across_restarts() {
    let broker = Broker::start();
    broker.create_topic("schanges", 3);
    let views: Vec<String> = throughline::spec::Spec::default_spec()
        .views
        .iter()
        .map(|v| v.name.clone())
        .collect();
    for view in &views {
        broker.create_topic(&format!("srows.{view}"), 1);
    }
    let dir = fresh_dir("serve-sinks");
    let (sink, upsert) = (broker.url("schanges"), broker.url("srows"));
    let start = || Serve::start_with(&dir, &["--sink", &sink, "--upsert", &upsert]);
    let lines = common::workload(14, 900, 90, false);
    let chunks: Vec<&[u8]> = lines.chunks(lines.len() / 3 + 1).collect();
    let whole: Vec<Vec<u8>> = {
        let mut parts = vec![Vec::new(); chunks.len()];
        let all: Vec<&[u8]> = lines
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        for (i, line) in all.iter().enumerate() {
            let part = &mut parts[i * chunks.len() / all.len()];
            part.extend_from_slice(line);
            part.push(b'\n');
        }
        parts
    };
    // posts the next part (whole lines) and waits until the engine has read every line
    // posted so far
    let mut sent = 0;
    let mut post_next = |serve: &Serve, part: usize| {
        let (status, body) = common::request(&serve.addr, "POST", "/v1/ingest", &[], &whole[part]);
        assert_eq!(status, 200, "{body}");
        sent += whole[part]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        let started = Instant::now();
        loop {
            let (_, metrics) = serve.get("/metrics");
            if metrics.contains(&format!("throughline_lines_total {sent}\n")) {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{metrics}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let stop_cleanly = |serve: &mut Serve| {
        let _ = Command::new("kill")
            .args(["-TERM", &serve.child.id().to_string()])
            .status();
        let _ = serve.child.wait();
    };
    let mut serve = start();
    post_next(&serve, 0);
    serve.kill(); // SIGKILL
    serve = start();
    post_next(&serve, 1);
    std::thread::sleep(Duration::from_millis(1500)); // a checkpoint is saved
    stop_cleanly(&mut serve);
    let before_clean_restart = client("consume", &broker.addr, "schanges", b"")
        .lines()
        .count();
    serve = start();
    post_next(&serve, 2);
    let mut expected = Vec::new();
    for view in &views {
        let (_, rows) = serve.get(&format!("/v1/views/{view}"));
        expected.extend(rows.lines().map(str::to_string));
    }
    let (_, metrics) = serve.get("/metrics");
    assert!(
        metrics.contains("throughline_sink_delivered_total{sink=")
            && metrics.contains("throughline_sink_errors_total{sink=")
            && metrics.contains("throughline_sink_backlog{sink="),
        "{metrics}"
    );
    // a clean stop flushes: the records are all there
    stop_cleanly(&mut serve);
    let records = client("consume", &broker.addr, "schanges", b"");
    let changes = changes_once(&broker.addr, "schanges");
    expected.sort();
    let mut consolidated = common::consolidate_upto(&changes, u64::MAX);
    consolidated.sort();
    assert_eq!(
        consolidated, expected,
        "the change topic, consolidated, differs from the views"
    );
    let after = records.lines().count();
    assert!(
        after - before_clean_restart < changes.len(),
        "the restart sent the whole history again ({before_clean_restart} then {after} records)"
    );
    let rows = upsert_rows(&broker.addr, "srows", &views);
    assert_eq!(rows, expected);
}

/// The broker goes away while `serve` follows a topic: `/healthz` says `degraded`, events
/// posted over HTTP are still acknowledged and applied, SIGTERM still stops the server
/// promptly, and after a restart everything acknowledged is there.
#[test]
#[ignore = "needs tansu and kafka-python: tests/run.sh installs them and runs it"]
fn serve_survives_its_broker_going_away() {
    let mut broker = Broker::start();
    broker.create_topic("gone", 1);
    client(
        "produce",
        &broker.addr,
        "gone",
        b"{\"type\":\"identify\",\"userId\":\"from-kafka\",\"timestamp\":1767261600000}\n",
    );
    let dir = fresh_dir("serve-gone");
    let source = broker.url("gone");
    let mut serve = Serve::start(&dir, &source);
    let has = |serve: &Serve, user: &str| {
        let started = Instant::now();
        loop {
            let (_, rows) = serve.get("/v1/views/profiles");
            if rows.contains(&format!("user_id:{user}")) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{user} missing: {rows}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    has(&serve, "from-kafka");
    let _ = broker.child.kill();
    let _ = broker.child.wait();
    let started = Instant::now();
    loop {
        let (status, health) = serve.get("/healthz");
        assert_eq!(status, 200, "{health}");
        if health.contains("degraded") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{health}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let event = "{\"type\":\"identify\",\"userId\":\"from-http\",\"timestamp\":1767261600000}";
    let (status, body) =
        common::request(&serve.addr, "POST", "/v1/identify", &[], event.as_bytes());
    assert_eq!(status, 200, "{body}");
    has(&serve, "from-http");
    let stopping = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status();
    let _ = serve.child.wait();
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "SIGTERM took {:?} with the broker away",
        stopping.elapsed()
    );
    serve = Serve::start(&dir, &source);
    has(&serve, "from-http");
    has(&serve, "from-kafka");
}

/// Sends a signal to a process (`kill -SIG PID`).
fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig}");
}

/// The records of `topic` (kafka-python), each once: a record sent again after a crash is
/// identical, headers included, so a second (position, index) is dropped. In topic order
/// per partition: (key, value).
fn records_once(broker: &str, topic: &str) -> Vec<(String, Option<String>)> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for record in client("consume", broker, topic, b"").lines() {
        let r: serde_json::Value = serde_json::from_str(record).unwrap();
        let (position, index) = (
            r["headers"]["throughline-position"]
                .as_str()
                .unwrap()
                .to_string(),
            r["headers"]["throughline-index"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        if seen.insert((position, index)) {
            out.push((
                r["key"].as_str().unwrap().to_string(),
                r["value"].as_str().map(str::to_string),
            ));
        }
    }
    out
}

/// The change lines of a change topic, each once.
fn changes_once(broker: &str, topic: &str) -> Vec<String> {
    records_once(broker, topic)
        .into_iter()
        .filter_map(|(_, value)| value)
        .collect()
}

/// Every view's rows on the server, as snapshot lines, sorted.
fn all_rows(serve: &Serve) -> Vec<String> {
    let mut rows = Vec::new();
    for view in throughline::spec::Spec::default_spec().views {
        let (status, body) = serve.get(&format!("/v1/views/{}", view.name));
        assert_eq!(status, 200, "{body}");
        rows.extend(body.lines().map(str::to_string));
    }
    rows.sort();
    rows
}

/// Waits until every sink of `serve` has confirmed at least log line `line`.
fn wait_confirmed(serve: &Serve, line: u64) {
    let started = Instant::now();
    loop {
        let (_, metrics) = serve.get("/metrics");
        let positions: Vec<u64> = metrics
            .lines()
            .filter(|l| l.starts_with("throughline_sink_confirmed_position{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        if !positions.is_empty() && positions.iter().all(|p| *p >= line) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the sinks did not confirm line {line}: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the engine has processed every record of the log; returns their number.
fn wait_caught_up(serve: &Serve) -> u64 {
    let started = Instant::now();
    loop {
        let (_, metrics) = serve.get("/metrics");
        let value = |name: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        let (logged, processed) = (
            value("throughline_log_records"),
            value("throughline_lines_total"),
        );
        if processed == logged {
            return logged;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `check` holds for `serve`'s profiles view.
fn wait_profiles(serve: &Serve, what: &str, check: impl Fn(&str) -> bool) {
    let started = Instant::now();
    loop {
        let (_, rows) = serve.get("/v1/views/profiles");
        if check(&rows) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: {rows}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop_cleanly(mut serve: Serve) {
    signal(&serve.child, "-TERM");
    let _ = serve.child.wait();
}

fn identify(user: &str, ms: u64) -> String {
    format!(
        "{{\"type\":\"identify\",\"userId\":\"{user}\",\"timestamp\":{ms},\"traits\":{{\"email\":\"{user}@example.com\"}},\"context\":{{\"consent\":{{\"categoryPreferences\":{{\"marketing\":true}}}}}}}}"
    )
}

/// Topics for a sink test: `{prefix}changes` (one partition) and `{prefix}rows.VIEW`;
/// returns the `--sink` and `--upsert` arguments.
fn sink_topics(broker: &Broker, prefix: &str) -> (String, String) {
    broker.create_topic(&format!("{prefix}changes"), 1);
    for view in throughline::spec::Spec::default_spec().views {
        broker.create_topic(&format!("{prefix}rows.{}", view.name), 1);
    }
    (
        broker.url(&format!("{prefix}changes")),
        broker.url(&format!("{prefix}rows")),
    )
}

const T0: u64 = 1_767_261_600_000; // 2026-01-01T10:00:00Z

/// The reproduction, at the worst moment: ada and bob are delivered, the broker
/// stops, ada is forgotten (acknowledged, applied to the views, the retraction not
/// delivered), the server is SIGKILLed, the broker comes back and the server restarts
/// (compacting its log). The change topic still gets ada's `-1`s, her upsert rows get
/// tombstones, and once the sinks confirmed, a compaction removes her from the disk.
#[test]
#[ignore = "needs tansu and kafka-python: tests/run.sh installs them and runs it"]
fn an_erasure_reaches_the_topics_when_the_server_dies_before_sending_it() {
    let broker = Broker::start();
    let (sink, upsert) = sink_topics(&broker, "e");
    let dir = fresh_dir("serve-erasure");
    let args = [
        "--sink",
        &sink,
        "--upsert",
        &upsert,
        "--compact-check-secs",
        "0",
    ];
    let serve = Serve::start_with(&dir, &args);
    for body in [identify("ada", T0), identify("bob", T0 + 5000)] {
        assert_eq!(serve.post("/v1/identify", body.as_bytes()).0, 200);
    }
    wait_confirmed(&serve, 2);
    broker.freeze();
    let forget = format!("{{\"userId\":\"ada\",\"timestamp\":{}}}", T0 + 1000);
    assert_eq!(serve.post("/v1/forget", forget.as_bytes()).0, 200);
    wait_profiles(&serve, "ada is still in the view", |rows| {
        !rows.contains("ada") && rows.contains("bob")
    });
    serve.kill(); // SIGKILL, the retractions unsent
    broker.thaw();
    let serve = Serve::start_with(&dir, &args);
    assert_eq!(
        serve
            .post("/v1/identify", identify("carol", T0 + 9000).as_bytes())
            .0,
        200
    );
    wait_confirmed(&serve, 4);
    let (status, body) = serve.post("/v1/compact", b"");
    assert_eq!(status, 200, "{body}");
    let rows = all_rows(&serve);
    stop_cleanly(serve);
    let log = std::fs::read(dir.join("events.log")).unwrap();
    assert!(
        !log.windows(15).any(|w| w == b"ada@example.com"),
        "the log still holds ada's email after the sinks confirmed and a compaction ran"
    );
    let changes = changes_once(&broker.addr, "echanges");
    let retracted = changes
        .iter()
        .filter(|c| c.contains("\"key\":\"user_id:ada\"") && c.contains("\"diff\":-1"))
        .count();
    let inserted = changes
        .iter()
        .filter(|c| c.contains("\"key\":\"user_id:ada\"") && c.contains("\"diff\":1"))
        .count();
    assert!(inserted > 0 && retracted == inserted, "{changes:#?}");
    assert_eq!(
        common::consolidate_upto(&changes, u64::MAX).len(),
        rows.len()
    );
    let mut consolidated = common::consolidate_upto(&changes, u64::MAX);
    consolidated.sort();
    assert_eq!(consolidated, rows);
    // every view that held ada has a tombstone last for her key
    let latest: BTreeMap<String, Option<String>> = records_once(&broker.addr, "erows.profiles")
        .into_iter()
        .collect();
    assert_eq!(latest.get("user_id:ada"), Some(&None), "{latest:?}");
    let views: Vec<String> = throughline::spec::Spec::default_spec()
        .views
        .iter()
        .map(|v| v.name.clone())
        .collect();
    assert_eq!(upsert_rows(&broker.addr, "erows", &views), rows);
}

/// Late events never move the clock: the latest engine time's changes reach the topic
/// without waiting for a later event (here bob, the latest time, and nothing after).
#[test]
#[ignore = "needs tansu and kafka-python: tests/run.sh installs them and runs it"]
fn the_latest_engine_time_reaches_the_topics_without_a_later_event() {
    let broker = Broker::start();
    let (sink, upsert) = sink_topics(&broker, "l");
    let dir = fresh_dir("serve-latest");
    let serve = Serve::start_with(&dir, &["--sink", &sink, "--upsert", &upsert]);
    for body in [identify("ada", T0), identify("bob", T0 + 5000)] {
        assert_eq!(serve.post("/v1/identify", body.as_bytes()).0, 200);
    }
    wait_confirmed(&serve, 2);
    let changes = changes_once(&broker.addr, "lchanges");
    assert!(
        changes
            .iter()
            .any(|c| c.contains("user_id:bob") && c.contains(&format!("\"time\":{}", T0 + 5000))),
        "{changes:#?}"
    );
    let rows: BTreeMap<String, Option<String>> = records_once(&broker.addr, "lrows.profiles")
        .into_iter()
        .collect();
    assert!(
        rows.get("user_id:bob").is_some_and(Option::is_some),
        "{rows:?}"
    );
}

/// A frozen broker freezes neither the views nor the server: while it is stopped, every
/// acknowledged event shows in the views, `/healthz` says the sink is not delivering and
/// `/metrics` counts its backlog; once the backlog reaches `--sink-backlog`, ingestion
/// answers 503 (back-pressure) while reads go on; when the broker comes back the sink
/// catches up, ingestion resumes and the topic consolidates to the views.
#[test]
#[ignore = "needs tansu and kafka-python: tests/run.sh installs them and runs it"]
fn a_frozen_broker_freezes_neither_the_views_nor_the_server() {
    let broker = Broker::start();
    let (sink, _) = sink_topics(&broker, "f");
    let dir = fresh_dir("serve-frozen");
    let serve = Serve::start_with(&dir, &["--sink", &sink, "--sink-backlog", "40"]);
    assert_eq!(
        serve.post("/v1/identify", identify("u-0", T0).as_bytes()).0,
        200
    );
    wait_confirmed(&serve, 1);
    broker.freeze();
    let mut refused = None;
    for i in 1..200 {
        let user = format!("u-{i}");
        let (status, body) = serve.post("/v1/identify", identify(&user, T0 + i).as_bytes());
        if status == 503 {
            assert!(body.contains("undelivered changes"), "{body}");
            refused = Some(i);
            break;
        }
        assert_eq!(status, 200, "{body}");
        wait_profiles(&serve, "an acknowledged event is not in the view", |rows| {
            rows.contains(&format!("\"user_id:{user}\""))
        });
    }
    let refused = refused.expect("ingestion never stopped for the full sink");
    let started = Instant::now();
    loop {
        let (status, health) = serve.get("/healthz");
        assert_eq!(status, 200, "{health}");
        if health.contains("degraded: sink") && health.contains("not delivering since") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{health}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = serve.get("/metrics");
    let backlog: u64 = metrics
        .lines()
        .find(|l| l.starts_with("throughline_sink_backlog{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert!(backlog >= 40, "{metrics}");
    broker.thaw();
    // ingestion resumes once the sink drains
    let started = Instant::now();
    let user = format!("u-{refused}");
    while serve
        .post("/v1/identify", identify(&user, T0 + refused).as_bytes())
        .0
        != 200
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "ingestion never resumed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_confirmed(&serve, refused + 1);
    let started = Instant::now();
    while serve.get("/healthz").1 != "ok\n" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            serve.get("/healthz").1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rows = all_rows(&serve);
    stop_cleanly(serve);
    let mut consolidated =
        common::consolidate_upto(&changes_once(&broker.addr, "fchanges"), u64::MAX);
    consolidated.sort();
    assert_eq!(consolidated, rows);
}

/// An adversarial workload with `forget`s posted while the server is SIGKILLed five times
/// (and compacts in between): the change topic, each record once, consolidates to the
/// views, and the upsert topics' latest values equal them, so no erased profile's row is
/// left in either.
#[test]
#[ignore = "needs tansu and kafka-python: tests/run.sh installs them and runs it"]
fn erasures_reach_the_topics_across_sigkills_under_load() {
    let broker = Broker::start();
    let (sink, upsert) = sink_topics(&broker, "k");
    let dir = fresh_dir("serve-kills");
    let args = [
        "--sink",
        &sink,
        "--upsert",
        &upsert,
        "--compact-check-secs",
        "1",
    ];
    let lines = common::workload(29, 4_000, 200, true);
    assert!(
        lines.windows(8).any(|w| w == b"\"forget\""),
        "the workload has no forget"
    );
    let chunks: Vec<Vec<u8>> = {
        let all: Vec<&[u8]> = lines
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        all.chunks(40)
            .map(|c| {
                c.iter()
                    .flat_map(|l| l.iter().copied().chain([b'\n']))
                    .collect()
            })
            .collect()
    };
    let serve = Serve::start_with(&dir, &args);
    let addr = Arc::new(Mutex::new(serve.addr.clone()));
    let poster = {
        let addr = Arc::clone(&addr);
        std::thread::spawn(move || {
            for chunk in chunks {
                let started = Instant::now();
                loop {
                    let at = addr.lock().unwrap().clone();
                    if let Some((200, _)) =
                        common::try_request(&at, "POST", "/v1/ingest", &[], &chunk)
                    {
                        break;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "posting failed"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    let mut serve = serve;
    for pause in [400, 250, 600, 300, 500] {
        std::thread::sleep(Duration::from_millis(pause));
        serve.kill();
        serve = Serve::start_with(&dir, &args);
        *addr.lock().unwrap() = serve.addr.clone();
    }
    poster.join().unwrap();
    let logged = wait_caught_up(&serve);
    wait_confirmed(&serve, logged);
    let rows = all_rows(&serve);
    stop_cleanly(serve);
    let mut consolidated =
        common::consolidate_upto(&changes_once(&broker.addr, "kchanges"), u64::MAX);
    consolidated.sort();
    assert_same(&consolidated, &rows, "the change topic, consolidated");
    let views: Vec<String> = throughline::spec::Spec::default_spec()
        .views
        .iter()
        .map(|v| v.name.clone())
        .collect();
    assert_same(
        &upsert_rows(&broker.addr, "krows", &views),
        &rows,
        "the upsert topics",
    );
}

/// Asserts that `got` (sorted lines) equals the views' `rows`, showing only the difference.
fn assert_same(got: &[String], rows: &[String], what: &str) {
    let (got_set, rows_set): (std::collections::BTreeSet<_>, std::collections::BTreeSet<_>) =
        (got.iter().collect(), rows.iter().collect());
    let extra: Vec<_> = got_set.difference(&rows_set).take(10).collect();
    let missing: Vec<_> = rows_set.difference(&got_set).take(10).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{what} differs from the views ({} against {} rows)\nnot in the views: {extra:#?}\nmissing: {missing:#?}",
        got.len(),
        rows.len()
    );
}

/// A sink's broker that is down when `serve` starts does not keep it from starting: events
/// are acknowledged and in the views, `/healthz` says the sink is not delivering, and once a
/// broker is up there (with the topic) the sink delivers what waited.
#[test]
#[ignore = "needs tansu and kafka-python: tests/run.sh installs them and runs it"]
fn serve_starts_with_its_sink_broker_down_and_delivers_once_it_is_up() {
    let broker = Broker::start();
    let addr = free_loopback_addr(); // nothing listens here yet
    let dir = fresh_dir("serve-sink-down");
    let serve = Serve::start_with(&dir, &["--sink", &format!("kafka://{addr}/dchanges")]);
    assert_eq!(
        serve.post("/v1/identify", identify("ada", T0).as_bytes()).0,
        200
    );
    wait_profiles(&serve, "ada is not in the view", |rows| {
        rows.contains("user_id:ada")
    });
    let started = Instant::now();
    loop {
        let (status, health) = serve.get("/healthz");
        assert_eq!(status, 200, "{health}");
        if health.contains("degraded: sink") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{health}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut late = run_tansu(&broker.tansu, &addr);
    create_topic(&broker.tansu, &addr, "dchanges", 1);
    wait_confirmed(&serve, 1);
    let changes = changes_once(&addr, "dchanges");
    assert!(
        changes
            .iter()
            .any(|c| c.contains("user_id:ada") && c.contains("\"diff\":1")),
        "{changes:#?}"
    );
    let _ = late.kill();
    let _ = late.wait();
}
