//! Kafka in and out of `run`, against a real Kafka-protocol broker (tansu, started here on
//! loopback with in-memory storage) and checked with an independent client (kafka-python,
//! `tests/sdk/kafka_client.py`). `.ci/run` installs both and sets `THROUGHLINE_TANSU` and
//! `THROUGHLINE_SDK_PYTHON`; without them these tests say so and pass.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::Serve;
use throughline::replay::FIXTURE_WALL_CLOCK_MS;

struct Broker {
    child: Child,
    addr: String,
    tansu: String,
}

impl Broker {
    /// A fresh in-memory broker on a free loopback port, or `None` (saying so) when tansu
    /// or kafka-python is not provided.
    fn start() -> Option<Broker> {
        let (Ok(tansu), Ok(_)) = (
            std::env::var("THROUGHLINE_TANSU"),
            std::env::var("THROUGHLINE_SDK_PYTHON"),
        ) else {
            eprintln!(
                "skipped: THROUGHLINE_TANSU or THROUGHLINE_SDK_PYTHON is not set (.ci/run sets them)"
            );
            return None;
        };
        let addr = free_loopback_addr();
        let child = run_tansu(&tansu, &addr);
        Some(Broker { child, addr, tansu })
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

/// Starts tansu with in-memory storage listening on `addr`, and waits until it does.
fn run_tansu(tansu: &str, addr: &str) -> Child {
    let url = format!("tcp://{addr}");
    let child = Command::new(tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {tansu}: {e}"));
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "tansu did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// Creates a topic on the broker at `addr` with tansu's command line.
fn create_topic(tansu: &str, addr: &str, name: &str, partitions: u32) {
    let status = Command::new(tansu)
        .args(["topic", "create", "--broker", &format!("tcp://{addr}")])
        .args(["--partitions", &partitions.to_string(), name])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "cannot create topic {name}");
}

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
fn a_topic_replays_like_the_same_lines_from_a_file() {
    let Some(broker) = Broker::start() else {
        return;
    };
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
fn change_and_upsert_topics_hold_the_views() {
    let Some(broker) = Broker::start() else {
        return;
    };
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
fn kafka_errors_are_one_line_and_exit_1() {
    let Some(broker) = Broker::start() else {
        return;
    };
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
fn serve_following_a_topic_applies_each_record_once_across_sigkills() {
    let Some(broker) = Broker::start() else {
        return;
    };
    broker.create_topic("live", 3);
    let events: Vec<u8> = (0..3000)
        .flat_map(|i| {
            format!(
                "{{\"type\":\"track\",\"event\":\"Signed Up\",\"userId\":\"k-{i}\",\"timestamp\":1767261600000}}\n"
            )
            .into_bytes()
        })
        .collect();
    let dir = temp("serve-data");
    let _ = std::fs::remove_dir_all(&dir);
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
fn serve_waits_for_a_broker_that_is_down_and_says_so() {
    let Some(broker) = Broker::start() else {
        return;
    };
    // a broker on a port where nothing listens yet
    let addr = free_loopback_addr();
    let dir = temp("serve-down");
    let _ = std::fs::remove_dir_all(&dir);
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
fn serve_writes_changes_and_rows_to_topics_across_restarts() {
    let Some(broker) = Broker::start() else {
        return;
    };
    broker.create_topic("schanges", 3);
    let views: Vec<String> = throughline::spec::Spec::default_spec()
        .views
        .iter()
        .map(|v| v.name.clone())
        .collect();
    for view in &views {
        broker.create_topic(&format!("srows.{view}"), 1);
    }
    let dir = temp("serve-sinks");
    let _ = std::fs::remove_dir_all(&dir);
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
    let distinct: std::collections::BTreeSet<String> = records
        .lines()
        .map(|r| {
            let r: serde_json::Value = serde_json::from_str(r).unwrap();
            r["value"].as_str().unwrap().to_string()
        })
        .collect();
    let changes: Vec<String> = distinct.into_iter().collect();
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
fn serve_survives_its_broker_going_away() {
    let Some(mut broker) = Broker::start() else {
        return;
    };
    broker.create_topic("gone", 1);
    client(
        "produce",
        &broker.addr,
        "gone",
        b"{\"type\":\"identify\",\"userId\":\"from-kafka\",\"timestamp\":1767261600000}\n",
    );
    let dir = temp("serve-gone");
    let _ = std::fs::remove_dir_all(&dir);
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
