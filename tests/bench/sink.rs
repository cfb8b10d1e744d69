//! The sink section of the harness (`--only=sink`; needs `THROUGHLINE_TANSU`, which
//! `tests/run.sh` installs): `serve` with a Kafka change sink on tansu (loopback), fed state
//! over HTTP, then live events over HTTP at 1,000 events/s, open loop (the writer posts what
//! is due whatever the outputs do), in order and 60 s late. Measured from each event's
//! scheduled time to the moment its first record is read from the topic by a consumer
//! (ingest-to-record), and to the moment its first change is read from the view's
//! subscription (ingest-to-view). Then the broker is stopped (SIGSTOP) while the same load
//! goes on: the views' latency meanwhile, and how long the sink takes to catch up once the
//! broker is back.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::{Latencies, Row, bin, final_clock, generate, live_event};

#[path = "../common/tansu.rs"]
mod tansu;

/// A keep-alive HTTP/1.1 connection to the server.
pub(super) struct Http {
    stream: BufReader<TcpStream>,
    addr: String,
}

impl Http {
    pub(super) fn connect(addr: &str) -> Http {
        let stream = TcpStream::connect(addr).expect("cannot connect to serve");
        stream.set_nodelay(true).expect("nodelay");
        Http {
            stream: BufReader::new(stream),
            addr: addr.to_string(),
        }
    }

    pub(super) fn call(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).expect("write");
        s.write_all(body).expect("write");
        let mut line = String::new();
        self.stream.read_line(&mut line).expect("read");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.stream.read_line(&mut line).expect("read");
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            chunked |= l == "transfer-encoding: chunked";
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).expect("read");
                let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                self.stream.read_exact(&mut chunk).expect("read");
                if size == 0 {
                    break;
                }
                out.extend_from_slice(&chunk[..size]);
            }
        } else {
            out.resize(length, 0);
            self.stream.read_exact(&mut out).expect("read");
        }
        (status, String::from_utf8_lossy(&out).into_owned())
    }
}

/// A metric's value from `/metrics` text (the first line starting with `name`).
pub(super) fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Waits until the engine has processed the whole log and the sink confirmed it; returns
/// how long that took.
pub(super) fn caught_up(http: &mut Http) -> Duration {
    let started = Instant::now();
    loop {
        let (_, m) = http.call("GET", "/metrics", b"");
        let logged = metric(&m, "throughline_log_records ");
        // a server without a sink has only the engine to wait for
        let has_sink = m.contains("throughline_sink_confirmed_position{");
        if metric(&m, "throughline_lines_total ") == logged
            && (!has_sink || metric(&m, "throughline_sink_confirmed_position{") >= logged)
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "the sink never caught up"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// First sightings of live profile `live-N` in some output, as (N, when).
pub(super) struct Sightings {
    rx: Receiver<(usize, Instant)>,
    seen: HashMap<usize, Instant>,
    /// Stops the reading thread (a consumer's, before its broker is replaced).
    stop: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl Drop for Sightings {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.stop.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }
    }
}

impl Sightings {
    /// First sightings sent on `rx` by a thread of the caller's.
    pub(super) fn of(rx: Receiver<(usize, Instant)>) -> Sightings {
        Sightings {
            rx,
            seen: HashMap::new(),
            stop: None,
        }
    }

    fn wait_for(&mut self, i: usize, timeout: Duration) -> Option<Instant> {
        let until = Instant::now() + timeout;
        while !self.seen.contains_key(&i) {
            let left = until.checked_duration_since(Instant::now())?;
            let (j, at) = self.rx.recv_timeout(left).ok()?;
            self.seen.entry(j).or_insert(at);
        }
        self.seen.get(&i).copied()
    }
}

/// The `live-N` index a line or record names, if any.
pub(super) fn live_index(text: &str) -> Option<usize> {
    let rest = text.split("user_id:live-").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A consumer of `topic` (from its beginning: tansu 0.6 misreports end offsets), reporting
/// each live profile's first record.
fn consume(broker: &str, topic: &str) -> Sightings {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&tpl).expect("assign");
    let (tx, rx) = channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        // never closed: librdkafka's close waits for a broker that may be gone
        let consumer = std::mem::ManuallyDrop::new(consumer);
        while !stopping.load(Ordering::SeqCst) {
            if let Some(Ok(record)) = consumer.poll(Duration::from_millis(20)) {
                let at = Instant::now();
                let key = record
                    .key()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                if let Some(i) = live_index(&key)
                    && tx.send((i, at)).is_err()
                {
                    return;
                }
            }
        }
    });
    Sightings {
        rx,
        seen: HashMap::new(),
        stop: Some((stop, thread)),
    }
}

/// `serve -w WORKERS --sink SINK` on a fresh data directory `data`, with the environment
/// `env`: the process and its HTTP address.
pub(super) fn spawn_serve(
    data: &Path,
    workers: usize,
    sink: &str,
    env: &[(&str, &str)],
) -> (Child, String) {
    let _ = std::fs::remove_dir_all(data);
    // no sink at all when `sink` is empty (a baseline)
    let sink_args: &[&str] = if sink.is_empty() {
        &[]
    } else {
        &["--sink", sink]
    };
    let mut serve = Command::new(bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "-w",
            &workers.to_string(),
        ])
        .args(sink_args)
        .arg("--data-dir")
        .arg(data)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start serve");
    let stderr = BufReader::new(serve.stderr.take().expect("stderr"));
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("throughline: listening on ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            // what the server does in the background shows beside the figures it may move
            if line.contains("compacted") || line.contains("rebuild") {
                eprintln!(
                    "[serve, {} ms] {line}",
                    throughline::engine::wall_clock_ms()
                );
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("serve did not start");
    (serve, addr)
}

/// Posts `state` (NDJSON) in 5,000-line requests.
pub(super) fn post_state(http: &mut Http, state: &[u8]) {
    for chunk in state
        .split(|b| *b == b'\n')
        .collect::<Vec<_>>()
        .chunks(5_000)
    {
        let body: Vec<u8> = chunk
            .iter()
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect();
        let (status, answer) = http.call("POST", "/v1/ingest", &body);
        assert_eq!(status, 200, "{answer}");
    }
}

/// A subscription to the profiles view's changes, reporting each live profile's first.
pub(super) fn subscribe(addr: &str) -> Sightings {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET /v1/views/profiles/changes HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .expect("write");
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            let at = Instant::now();
            if let Some(i) = live_index(&line)
                && tx.send((i, at)).is_err()
            {
                return;
            }
        }
    });
    Sightings {
        rx,
        seen: HashMap::new(),
        stop: None,
    }
}

/// [`subscribe`], once the view's current rows are read: live event 0 (at `clock_ms`) is
/// posted and seen first, so that the paced events' latencies do not include the reading
/// of a large snapshot.
pub(super) fn subscribe_ready(addr: &str, http: &mut Http, clock_ms: u64) -> Sightings {
    let mut sightings = subscribe(addr);
    let (status, answer) = http.call(
        "POST",
        "/v1/ingest",
        super::live_event(0, clock_ms).as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        sightings.wait_for(0, Duration::from_secs(120)).is_some(),
        "the subscription never saw live event 0"
    );
    sightings
}

/// Posts live events `first..first + count` at `rate` per second, open loop: every event
/// due by now goes in one `/v1/ingest` request. Returns each event's scheduled time.
pub(super) fn post_paced(
    http: &mut Http,
    first: usize,
    count: usize,
    rate: u64,
    base_ms: u64,
) -> Vec<Instant> {
    let start = Instant::now();
    let due: Vec<Instant> = (0..count)
        .map(|k| start + Duration::from_secs_f64(k as f64 / rate as f64))
        .collect();
    let mut sent = 0;
    while sent < count {
        let now = Instant::now();
        let upto = due.partition_point(|d| *d <= now);
        if upto > sent {
            let mut body = String::new();
            for k in sent..upto {
                body.push_str(&live_event(first + k, base_ms + k as u64 * 1000 / rate));
                body.push('\n');
            }
            let (status, answer) = http.call("POST", "/v1/ingest", body.as_bytes());
            assert_eq!(status, 200, "{answer}");
            sent = upto;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    due
}

/// Latencies of events `first..` (scheduled at `due`) as `sightings` saw them.
pub(super) fn latencies(sightings: &mut Sightings, first: usize, due: &[Instant]) -> Latencies {
    let mut micros = Vec::with_capacity(due.len());
    let mut lost = 0;
    for (k, scheduled) in due.iter().enumerate() {
        match sightings.wait_for(first + k, Duration::from_secs(120)) {
            Some(at) => micros.push(at.saturating_duration_since(*scheduled).as_micros() as u64),
            None => lost += 1,
        }
    }
    Latencies::of(micros, lost)
}

pub(super) fn free_addr() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    format!("127.0.0.1:{port}")
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

/// One measured session: a fresh broker (tansu 0.6's in-memory storage slows down as
/// batches accumulate: a plain kafka-python producer and consumer at 1,000 records/s see
/// p99 17 ms over the first 5 s, 81 ms after 10 s, 1.7 s after 20 s) and a fresh server
/// with the sink, loaded with `state` over HTTP until the sink confirmed all of it, a
/// subscription to the profiles view and a consumer of the topic that has read a marker.
struct Session {
    tansu: Child,
    serve: Child,
    http: Http,
    records: Sightings,
    views: Sightings,
    /// How long the state took to load and reach the topic.
    loaded: Duration,
}

impl Session {
    fn start(tansu: &str, dir: &Path, state: &[u8], clock: u64) -> Session {
        let broker = free_addr();
        let tansu_child = tansu::start(tansu, &broker);
        tansu::create_topic(tansu, &broker, "changes", 1);
        let sink = format!("kafka://{broker}/changes");
        let (serve, addr) = spawn_serve(&dir.join("sink-data"), 2, &sink, &[]);
        let mut http = Http::connect(&addr);
        let started = Instant::now();
        post_state(&mut http, state);
        caught_up(&mut http);
        let loaded = started.elapsed();
        let mut records = consume(&broker, "changes");
        let views = subscribe(&addr);
        // a marker (live-0): once its record is read, the consumer reads at the topic's end
        http.call("POST", "/v1/ingest", live_event(0, clock).as_bytes());
        records
            .wait_for(0, Duration::from_secs(120))
            .expect("the marker never reached the topic");
        Session {
            tansu: tansu_child,
            serve,
            http,
            records,
            views,
            loaded,
        }
    }

    fn stop(mut self) {
        signal(&self.serve, "-TERM");
        let _ = self.serve.wait();
        drop(self.records);
        let _ = self.tansu.kill();
        let _ = self.tansu.wait();
    }
}

/// The section's rows.
pub(super) fn rows(dir: &Path, quick: bool, start_ms: u64) -> Vec<Row> {
    let Ok(tansu) = std::env::var("THROUGHLINE_TANSU") else {
        return vec![Row {
            figure: "ingest-to-record latency, Kafka sink".into(),
            measured: "not measured: THROUGHLINE_TANSU is not set (tests/run.sh installs tansu)"
                .into(),
            target: "p99 <= 50 ms",
            command: "cargo bench --bench harness -- --only=sink".into(),
        }];
    };
    let (state_events, seconds, frozen_seconds) = if quick {
        (20_000u64, 3u64, 10u64)
    } else {
        (100_000, 10, 70)
    };
    let state_file = dir.join(format!("sink-state{state_events}.ndjson"));
    let state_gen = generate(&state_file, state_events, state_events / 10, 9, start_ms);
    let clock = final_clock(&state_file);
    let state = std::fs::read(&state_file).expect("state");
    let rate = 1_000u64;
    let command = format!(
        "{state_gen}; tansu broker (memory, loopback) and throughline serve -w 2 --sink kafka://…/changes, both fresh for each run; the state over HTTP, then live events over HTTP (paced by the harness)"
    );
    let mut out = Vec::new();
    for late in [false, true] {
        let mut s = Session::start(&tansu, dir, &state, clock);
        let count = (rate * seconds) as usize;
        let base = if late { clock - 60_000 } else { clock + 1 };
        let due = post_paced(&mut s.http, 1, count, rate, base);
        let on_topic = latencies(&mut s.records, 1, &due);
        let in_view = latencies(&mut s.views, 1, &due);
        let how = if late { "60 s late" } else { "in order" };
        out.push(Row {
            figure: format!(
                "ingest-to-record latency, Kafka sink, {state_events} events of state, then {rate} events/s {how} for {seconds} s (open loop, HTTP)"
            ),
            measured: on_topic.describe(),
            target: "p99 <= 50 ms",
            command: command.clone(),
        });
        out.push(Row {
            figure: format!("ingest-to-view latency, the same run ({how})"),
            measured: in_view.describe(),
            target: "(the views' usual latency)",
            command: command.clone(),
        });
        s.stop();
    }
    // the broker stopped while the load goes on
    let mut s = Session::start(&tansu, dir, &state, clock);
    signal(&s.tansu, "-STOP");
    let count = (rate * frozen_seconds) as usize;
    let due = post_paced(&mut s.http, 1, count, rate, clock + 1);
    let in_view = latencies(&mut s.views, 1, &due);
    let (_, m) = s.http.call("GET", "/metrics", b"");
    let backlog = metric(&m, "throughline_sink_backlog{");
    let (_, health) = s.http.call("GET", "/healthz", b"");
    out.push(Row {
        figure: format!(
            "ingest-to-view latency, {rate} events/s in order for {frozen_seconds} s with the broker stopped (SIGSTOP)"
        ),
        measured: format!(
            "{}; sink backlog at the end {backlog} changes; /healthz: {}",
            in_view.describe(),
            health.lines().nth(1).unwrap_or("ok").chars().take(60).collect::<String>()
        ),
        target: "the views' usual latency",
        command: command.clone(),
    });
    signal(&s.tansu, "-CONT");
    let catch_up = caught_up(&mut s.http);
    let on_topic = latencies(&mut s.records, 1, &due);
    out.push(Row {
        figure: "once the broker is back: time until the sink confirmed everything".into(),
        measured: format!(
            "{:.1} s (loading the state took {:.1} s); every record of the stop reached the topic: {}",
            catch_up.as_secs_f64(),
            s.loaded.as_secs_f64(),
            if on_topic.lost == 0 { "yes" } else { "no" }
        ),
        target: "catches up",
        command,
    });
    s.stop();
    out
}
