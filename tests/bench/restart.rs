//! Issue 30's restart row: a server that has taken a year of steady traffic restarts, on
//! the log as it was received and on the log compaction folded (SPEC section 9). Measured:
//! how soon it listens (and acknowledges ingestion), and how soon it is ready for reads.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Row, bin};

/// One request (`Connection: close`): (status, body), or `None` when nothing listens.
fn call(addr: &str, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// `serve` on `data` at a fixed loopback port, with `args`.
fn serve(data: &Path, port: u16, args: &[&str]) -> Child {
    Command::new(bin())
        .args(["serve", "--data-dir", data.to_str().unwrap_or_default()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start serve")
}

fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Starts `serve` on `data` and returns (seconds until it listens, seconds until its
/// `/healthz` says it has replayed the log), then kills it.
fn restart(data: &Path, port: u16) -> (f64, f64) {
    let started = Instant::now();
    let mut child = serve(data, port, &["--compact-check-secs", "0"]);
    let addr = format!("127.0.0.1:{port}");
    let mut listening = None;
    let ready = loop {
        if let Some((_, health)) = call(&addr, "GET", "/healthz", b"") {
            listening.get_or_insert(started.elapsed().as_secs_f64());
            if health.starts_with("ok") {
                break started.elapsed().as_secs_f64();
            }
        }
        assert!(started.elapsed() < Duration::from_secs(1800), "no restart");
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = child.kill();
    let _ = child.wait();
    (listening.unwrap_or(f64::NAN), ready)
}

pub fn rows(dir: &Path, year: &Path, gen_cmd: &str, events: u64) -> Vec<Row> {
    let received = dir.join("restart-received");
    let folded = dir.join("restart-folded");
    for d in [&received, &folded] {
        let _ = std::fs::remove_dir_all(d);
    }
    // a year of traffic into a server that never compacts: the log as received
    let port = 18_300 + (std::process::id() % 500) as u16;
    let addr = format!("127.0.0.1:{port}");
    let mut child = serve(&received, port, &["--compact-check-secs", "0"]);
    let text = std::fs::read(year).expect("read the workload");
    let started = Instant::now();
    while call(&addr, "GET", "/healthz", b"").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut chunk = Vec::new();
    for line in text.split_inclusive(|b| *b == b'\n') {
        chunk.extend_from_slice(line);
        if chunk.len() >= 16 << 20 {
            let (status, body) = call(&addr, "POST", "/v1/ingest", &chunk).expect("ingest");
            assert_eq!(status, 200, "{body}");
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        let (status, body) = call(&addr, "POST", "/v1/ingest", &chunk).expect("ingest");
        assert_eq!(status, 200, "{body}");
    }
    loop {
        let (_, metrics) = call(&addr, "GET", "/metrics", b"").unwrap_or_default();
        if metric(&metrics, "throughline_lines_total") >= events {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let copied = Command::new("cp")
        .args(["-r", received.to_str().unwrap_or_default()])
        .arg(&folded)
        .status()
        .expect("cp");
    assert!(copied.success());
    let compacting = Instant::now();
    let out = Command::new(bin())
        .args(["compact", "--data-dir", folded.to_str().unwrap_or_default()])
        .output()
        .expect("compact");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compacted = compacting.elapsed().as_secs_f64();
    let size = |d: &Path| std::fs::metadata(d.join("events.log")).map_or(0, |m| m.len());
    let (received_bytes, folded_bytes) = (size(&received), size(&folded));
    let (listen_full, ready_full) = restart(&received, port);
    let (listen_folded, ready_folded) = restart(&folded, port);
    let mb = |b: u64| b as f64 / 1e6;
    vec![Row {
        figure: format!(
            "restart after a year of steady traffic ({}k events): listening, ready for reads",
            events / 1000
        ),
        measured: format!(
            "log as received ({:.0} MB): listening {listen_full:.2} s, ready {ready_full:.1} s; folded ({:.1} MB, compacted in {compacted:.1} s): listening {listen_folded:.2} s, ready {ready_folded:.2} s = {:.1}% of the full replay",
            mb(received_bytes),
            mb(folded_bytes),
            100.0 * ready_folded / ready_full
        ),
        target: "listening within 1 s; ready in at most 20% of the full replay",
        command: format!(
            "{gen_cmd}; throughline serve --data-dir A --compact-check-secs 0 (POST /v1/ingest year.ndjson, SIGTERM); cp -r A B; throughline compact --data-dir B; time serve on A, then on B, until /healthz says ok"
        ),
    }]
}
