//! Shared test helpers: the oracle and small builders.
#![allow(dead_code)]

pub mod oracle;
pub mod postgres;
pub mod tansu;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proptest::prelude::*;

/// The fixture directories under `fixtures/` (each with an `events.ndjson`), sorted.
pub fn fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("events.ndjson").exists())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 10,
        "fixtures missing under {}",
        root.display()
    );
    dirs
}
use serde_json::json;
use std::net::TcpStream;

use throughline::replay::{self, Outputs};
use throughline::spec::Spec;

/// Runs the engine in memory on `input` at the fixture wall clock.
pub fn engine(spec: &Spec, input: &[u8], workers: usize) -> Outputs {
    replay::run_bytes(spec, input.to_vec(), workers)
        .unwrap_or_else(|e| panic!("engine failed: {e}"))
}

/// (line number, reason code) of each dead-letter record.
pub fn dead_letter_reasons(lines: &[String]) -> Vec<(u64, String)> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["line"].as_u64().unwrap(),
                v["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The default spec with another `max_links`.
pub fn spec_with_max_links(max_links: usize) -> Spec {
    let text = throughline::spec::DEFAULT_SPEC
        .replace("max_links = 50", &format!("max_links = {max_links}"));
    Spec::parse(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// The default spec with a short half-life and max_age, a tight sequence window and an
/// extra negative signal, so generated workloads cross many decay boundaries.
pub fn fast_decay_spec(max_links: usize, half_life: &str, max_age: &str) -> Spec {
    let text = throughline::spec::DEFAULT_SPEC
        .replace("max_links = 50", &format!("max_links = {max_links}"))
        .replace(
            "half_life = \"7d\"",
            &format!("half_life = \"{half_life}\""),
        )
        .replace("max_age = \"28d\"", &format!("max_age = \"{max_age}\""))
        .replace("within = \"30m\"", "within = \"90s\"")
        + "\n[[intent.signal]]\nname = \"video\"\npoints = -1.125\ntype = \"track\"\nevent = \"Video Played\"\n"
        + "\n[[view]]\nname = \"hot\"\npurpose = \"analytics\"\nscore_gte = 12.5\nhas_signal = \"pricing_view\"\nfields = [\"user_id\", \"email\", \"score\", \"signals\"]\n";
    Spec::parse(&text, "fast_decay.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// Consolidates change lines with time <= t into snapshot lines (sorted by view, key).
pub fn consolidate_upto(changes: &[String], t: u64) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut rows: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    for line in changes {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["time"].as_u64().unwrap() > t {
            continue;
        }
        // the row text verbatim (field order matters to the comparison)
        let at = line.rfind("\"row\":").unwrap();
        let key = (
            v["view"].as_str().unwrap().to_string(),
            v["key"].as_str().unwrap().to_string(),
            line[at + 6..line.len() - 1].to_string(),
        );
        *rows.entry(key).or_insert(0) += v["diff"].as_i64().unwrap();
    }
    rows.into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|((view, key, row), n)| {
            assert_eq!(n, 1, "row {view}/{key} has multiplicity {n}");
            format!(
                "{{\"view\":{},\"key\":{},\"row\":{row}}}",
                serde_json::Value::from(view),
                serde_json::Value::from(key)
            )
        })
        .collect()
}

/// `throughline serve` on a data directory: started on a free loopback port, its HTTP
/// address read from stderr; killed when dropped.
pub struct Serve {
    /// The process.
    pub child: Child,
    /// `HOST:PORT`.
    pub addr: String,
}

impl Serve {
    /// `serve --source SOURCE` (a Kafka topic).
    pub fn start(dir: &Path, source: &str) -> Serve {
        Serve::start_with(dir, &["--source", source])
    }

    /// `serve --data-dir DIR` with `args`.
    pub fn start_with(dir: &Path, args: &[&str]) -> Serve {
        let mut all = args.to_vec();
        all.extend(["--data-dir", dir.to_str().unwrap()]);
        Serve::spawn(&all)
    }

    /// `serve` with exactly `args` (and a free loopback port).
    pub fn spawn(args: &[&str]) -> Serve {
        Serve::spawn_env(args, &[])
    }

    /// `serve --data-dir DIR` with `args` and the environment `env` (e.g. `FAILPOINTS`).
    pub fn start_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut all = args.to_vec();
        all.extend(["--data-dir", dir.to_str().unwrap()]);
        Serve::spawn_env(&all, env)
    }

    /// `serve` with exactly `args` and the environment `env`.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_throughline"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("throughline: listening on ") {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("serve did not start");
        wait_recovered(&addr);
        Serve { child, addr }
    }

    /// `GET path`: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        request(&self.addr, "GET", path, &[], b"")
    }

    /// `GET path`: the value of the response's header `name` (any case).
    pub fn get_header(&self, path: &str, name: &str) -> Option<String> {
        let (_, head, _) = exchange(&self.addr, "GET", path, &[], b"")?;
        let name = name.to_ascii_lowercase();
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim().to_ascii_lowercase() == name).then(|| v.trim().to_string())
        })
    }

    /// `POST path` with `body`: (status, body).
    pub fn post(&self, path: &str, body: &[u8]) -> (u16, String) {
        request(&self.addr, "POST", path, &[], body)
    }

    /// Posts `lines` to `/v1/ingest` and waits (up to 60 s) until the server has taken them
    /// all (`total` lines so far, as `/metrics` counts them).
    pub fn post_taken(&self, lines: &str, total: usize) {
        let (status, body) = self.post("/v1/ingest", lines.as_bytes());
        assert_eq!(status, 200, "{body}");
        let started = std::time::Instant::now();
        while !self
            .get("/metrics")
            .1
            .contains(&format!("throughline_lines_total {total}\n"))
        {
            assert!(started.elapsed() < Duration::from_secs(60), "not taken");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Posts a `forget` of the first profile with a user id in the profiles view (its
    /// rows must leave every output): the user id.
    pub fn forget_a_user(&self) -> String {
        let (_, profiles) = self.get("/v1/views/profiles");
        let erased = profiles
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| {
                let key = v["key"].as_str()?;
                key.strip_prefix("user_id:").map(str::to_string)
            })
            .expect("a profile with a user id");
        let forget = format!("{{\"userId\":\"{erased}\",\"timestamp\":1767300000000}}");
        let (status, body) = self.post("/v1/forget", forget.as_bytes());
        assert_eq!(status, 200, "{body}");
        erased
    }

    /// Waits (up to 30 s) until `/healthz` says every one of `words`.
    pub fn wait_health(&self, words: &[&str]) {
        let started = std::time::Instant::now();
        loop {
            let (_, health) = self.get("/healthz");
            if words.iter().all(|w| health.contains(w)) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "/healthz never said {words:?}: {health}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends the process `signal` (`-STOP`, `-CONT`, `-TERM`).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {signal}");
    }
}

/// Waits until the server at `addr` has replayed its log (`/healthz` no longer says
/// `recovering`): it listens and takes ingestion at once, but reads wait for that.
pub fn wait_recovered(addr: &str) {
    let started = std::time::Instant::now();
    loop {
        if let Some((_, body)) = try_request(addr, "GET", "/healthz", &[], b"")
            && !body.starts_with("recovering")
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the server at {addr} never finished recovering"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One HTTP/1.1 request (`Connection: close`): (status, body).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|| panic!("cannot connect to {addr}"))
}

/// [`request`], or `None` when nothing listens at `addr` (a server being restarted).
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    exchange(addr, method, path, headers, body).map(|(status, _, body)| (status, body))
}

/// One HTTP/1.1 request: (status, the response's head, its body).
pub fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    // the server may answer (a 413) and close before the whole body is sent
    let _ = stream.write_all(body);
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, head.to_string(), body))
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// One random event over small identifier pools, so links, ties and hubs are frequent.
pub fn arb_line() -> impl Strategy<Value = String> {
    let id = |prefix: &'static str, n: u8| {
        proptest::option::weighted(0.5, (0..n).prop_map(move |i| format!("{prefix}{i}")))
    };
    (
        id("u", 3),
        id("E", 4),
        id("d", 3),
        id("a", 6),
        id("a", 6),
        0u64..6,
        proptest::option::weighted(0.7, 0u8..12),
        0u8..20,
    )
        .prop_map(|(user, email, device, anon, prev, minute, mid, shape)| {
            if shape == 0 {
                return "{not json".to_string();
            }
            let kind = ["page", "track", "track", "track", "identify"][(shape % 5) as usize];
            let name = ["Support Chat Started", "Video Played", "Signed Up", "x"][(shape % 4) as usize];
            let mut e = json!({"type": kind, "event": name, "properties": {"path": "/pricing"}, "timestamp": 1_767_261_600_000u64 + minute * 20_000});
            if let Some(u) = user {
                e["userId"] = json!(u);
            }
            if let Some(m) = email {
                e["traits"] = json!({"email": format!("{m}@X.org")});
            }
            if let Some(d) = device {
                e["context"] = json!({"device": {"id": d}});
            }
            if let Some(a) = anon {
                e["anonymousId"] = json!(a);
            }
            if let Some(p) = prev {
                e["previousId"] = json!(p);
            }
            if let Some(m) = mid {
                e["messageId"] = json!(format!("m{m}"));
            }
            // consent records, traits and erasure, with many ties on the timestamp
            if shape % 3 == 0 {
                e["context"]["consent"] = json!({"categoryPreferences": {"Marketing": shape % 2 == 0, "personalization": shape > 9}});
            }
            if shape % 4 == 1 {
                e["traits"]["plan"] = [json!("free"), json!("pro"), serde_json::Value::Null][(shape % 3) as usize].clone();
                e["context"]["traits"] = json!({"plan": "ctx", "tier": shape});
            }
            if shape == 19 {
                e["type"] = json!("forget");
            }
            e.to_string()
        })
}

/// A generated workload (`throughline gen`) starting before the fixture wall clock, so only
/// the deliberate far-future lines are dead.
pub fn workload(seed: u64, events: u64, profiles: u64, adversarial: bool) -> Vec<u8> {
    workload_over(seed, events, profiles, adversarial, None)
}

/// [`workload`]'s lines (blank ones left out) in `n` parts of nearly equal size, each a
/// body of NDJSON to post.
pub fn workload_parts(seed: u64, events: u64, profiles: u64, n: usize) -> Vec<String> {
    let text = String::from_utf8(workload(seed, events, profiles, false)).unwrap();
    let all: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    all.chunks(all.len() / n + 1)
        .map(|c| c.join("\n") + "\n")
        .collect()
}

/// [`workload`] spread over `days` of event time (`gen --days`), from 2025-01-01.
pub fn workload_over(
    seed: u64,
    events: u64,
    profiles: u64,
    adversarial: bool,
    days: Option<u64>,
) -> Vec<u8> {
    let mut out = Vec::new();
    let args = throughline::workload::GenArgs {
        events,
        profiles,
        seed,
        adversarial,
        start_ms: if days.is_some() {
            1_735_689_600_000
        } else {
            1_767_225_600_000
        },
        days,
        journeys: false,
    };
    throughline::workload::generate(&args, &mut out).unwrap();
    out
}
