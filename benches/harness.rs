//! The benchmark harness: `cargo bench --bench harness` (add `-- --quick` for a smaller,
//! faster pass). Generates the workloads, runs the release binary with `run --stats` (the
//! engine measures itself) and prints one table: each figure, its target, and the command
//! that produced it. See `docs/performance.md` for the figures and what bounds them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_throughline");

struct Row {
    figure: String,
    measured: String,
    target: &'static str,
    command: String,
}

/// What `run --stats` reported.
#[derive(Default, Debug)]
struct Stats {
    /// Per source: (lines, seconds, us per event, changes, us per change).
    sources: Vec<(u64, f64, f64, u64, f64)>,
    latency: Option<String>,
    forget: Option<String>,
    memory: Option<String>,
}

fn number_before(text: &str, suffix: &str) -> Option<f64> {
    let end = text.find(suffix)?;
    text[..end]
        .split_whitespace()
        .last()?
        .trim_start_matches('(')
        .parse()
        .ok()
}

/// When a `gen` workload of `events` events starting at `start_ms` ends, plus an hour: `gen`
/// advances its clock by 2 s per event on average (for fewer than 2.6M events).
fn after(start_ms: u64, events: u64) -> u64 {
    start_ms + events * 2_000 + 3_600_000
}

fn parse_stats(stderr: &str) -> Stats {
    let mut stats = Stats::default();
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix("throughline: stats: ") else {
            continue;
        };
        if rest.starts_with("source ") {
            let (_, after) = rest.split_once(": ").unwrap_or(("", rest));
            let lines = number_before(after, " lines").unwrap_or(0.0) as u64;
            let seconds = number_before(after, " s (").unwrap_or(0.0);
            let per_event = number_before(after, " us per event").unwrap_or(f64::NAN);
            let changes = number_before(after, " changes").unwrap_or(0.0) as u64;
            let per_change = number_before(after, " us per change").unwrap_or(f64::NAN);
            stats
                .sources
                .push((lines, seconds, per_event, changes, per_change));
        } else if let Some(l) = rest.strip_prefix("read-to-output latency: ") {
            stats.latency = Some(l.to_string());
        } else if let Some(l) = rest.strip_prefix("forget read-to-last-retraction: ") {
            stats.forget = Some(l.to_string());
        } else if rest.starts_with("peak RSS") {
            stats.memory = Some(rest.to_string());
        }
    }
    stats
}

/// Runs the release binary (stdout discarded); returns its stderr.
fn stderr_of(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .expect("cannot start throughline");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "throughline {args:?} failed: {stderr}"
    );
    stderr
}

fn run(args: &[&str]) -> Stats {
    parse_stats(&stderr_of(args))
}

fn generate(path: &Path, events: u64, profiles: u64, seed: u64, start_ms: u64) -> String {
    let command = format!(
        "throughline gen --events {events} --profiles {profiles} --seed {seed} --start-ms {start_ms} > {}",
        path.display()
    );
    {
        let out = Command::new(BIN)
            .args([
                "gen",
                "--events",
                &events.to_string(),
                "--profiles",
                &profiles.to_string(),
                "--seed",
                &seed.to_string(),
                "--start-ms",
                &start_ms.to_string(),
            ])
            .output()
            .expect("cannot run gen");
        assert!(out.status.success());
        std::fs::write(path, out.stdout).expect("cannot write the workload");
    }
    command
}

/// Feeds `lines` to `run --stats` through a pipe at `rate` lines/s (in 1 ms ticks).
fn paced(lines: &[&[u8]], rate: u64) -> Stats {
    let mut child = Command::new(BIN)
        .args(["run", "-q", "--stats"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start throughline");
    let mut stdin = child.stdin.take().expect("stdin");
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < lines.len() {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize).min(lines.len());
        if due > sent {
            let mut chunk = Vec::new();
            for l in &lines[sent..due] {
                chunk.extend_from_slice(l);
                chunk.push(b'\n');
            }
            stdin.write_all(&chunk).expect("write");
            stdin.flush().expect("flush");
            sent = due;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    parse_stats(&String::from_utf8_lossy(&out.stderr))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench");
    std::fs::create_dir_all(&dir).expect("cannot create the bench directory");
    let (events, profiles) = if quick {
        (100_000u64, 5_000u64)
    } else {
        (1_000_000, 50_000)
    };
    let start_ms = 1_788_220_800_000u64; // 2026-09-01
    let mut rows = Vec::new();
    let main_file = dir.join(format!("gen{events}.ndjson"));
    let gen_cmd = generate(&main_file, events, profiles, 1, start_ms);
    let main_path = main_file.to_string_lossy().to_string();

    // 1 and 4: replay throughput and memory
    for workers in [1, 2] {
        let w = workers.to_string();
        let args = [
            "run",
            "-w",
            &w,
            "--input",
            &main_path,
            "--snapshot",
            "-o",
            "/dev/null",
            "-q",
            "--stats",
        ];
        let stats = run(&args);
        let (lines, seconds, ..) = stats.sources.first().copied().unwrap_or_default();
        rows.push(Row {
            figure: format!("replay, {events} events, {workers} worker(s)"),
            measured: format!("{:.0} events/s", lines as f64 / seconds),
            target: "500,000 events/s with 2 workers",
            command: format!("{gen_cmd}; throughline {}", args.join(" ")),
        });
        if let Some(memory) = stats.memory {
            rows.push(Row {
                figure: format!("memory, {events} events, {workers} worker(s)"),
                measured: memory,
                target: "under 1 KiB per event of history",
                command: format!("throughline {}", args.join(" ")),
            });
        }
    }

    // 2: latency at steady rates, measured inside the engine
    let latency_file = dir.join("latency.ndjson");
    let latency_events = if quick { 50_000 } else { 250_000 };
    let latency_gen = generate(&latency_file, latency_events, 20_000, 5, start_ms);
    let bytes = std::fs::read(&latency_file).expect("read");
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    for rate in [1_000u64, 10_000, 50_000] {
        let n = (rate as usize * if quick { 2 } else { 5 }).min(lines.len());
        let stats = paced(&lines[..n], rate);
        rows.push(Row {
            figure: format!("read-to-output latency at {rate} events/s ({n} events, pipe)"),
            measured: stats.latency.unwrap_or_else(|| "-".into()),
            target: "p99 under 5 ms at 10,000 events/s",
            command: format!("{latency_gen}; paced into throughline run -q --stats"),
        });
    }

    // 3: update cost with 10k, 100k and 1M profiles in state
    let sizes: &[u64] = if quick {
        &[10_000, 100_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    };
    let mut costs = Vec::new();
    for &p in sizes {
        let state = dir.join(format!("state{p}.ndjson"));
        let tail = dir.join(format!("tail{p}.ndjson"));
        let state_cmd = generate(&state, 2 * p, p, 11, start_ms);
        // 20k more events on the same people, after the state in time
        let tail_cmd = generate(&tail, 20_000, p, 12, after(start_ms, 2 * p));
        let (s, t) = (
            state.to_string_lossy().to_string(),
            tail.to_string_lossy().to_string(),
        );
        let args = [
            "run",
            "--input",
            &s,
            "--input",
            &t,
            "-o",
            "/dev/null",
            "-q",
            "--stats",
        ];
        let stats = run(&args);
        if let Some(&(lines, _, per_event, changes, per_change)) = stats.sources.get(1) {
            costs.push(per_event);
            rows.push(Row {
                figure: format!(
                    "update cost with {p} profiles in state ({lines} events after {} )",
                    2 * p
                ),
                measured: format!(
                    "{per_event:.1} us per event, {per_change:.1} us per change ({changes} changes)"
                ),
                target: "at 1M profiles within 2x of 10k",
                command: format!("{state_cmd}; {tail_cmd}; throughline {}", args.join(" ")),
            });
        }
    }
    if let (Some(first), Some(last)) = (costs.first(), costs.last()) {
        rows.push(Row {
            figure: "update cost, largest state / 10k profiles".into(),
            measured: format!("{:.2}x", last / first),
            target: "at most 2x",
            command: "the rows above".into(),
        });
    }

    // 5: erasure with the main workload as state
    // each forget in a file of its own, so each is timed on its own (the engine catches up
    // at every change of input source)
    let later = after(start_ms, events);
    let forget_a = dir.join("forget_a.ndjson");
    let forget_b = dir.join("forget_b.ndjson");
    std::fs::write(
        &forget_a,
        format!("{{\"type\":\"forget\",\"userId\":\"u-0\",\"timestamp\":{later}}}\n"),
    )
    .expect("write");
    std::fs::write(
        &forget_b,
        format!(
            "{{\"type\":\"forget\",\"userId\":\"u-{}\",\"timestamp\":{}}}\n",
            profiles / 2,
            later + 1
        ),
    )
    .expect("write");
    let (fa, fb) = (
        forget_a.to_string_lossy().to_string(),
        forget_b.to_string_lossy().to_string(),
    );
    let args = [
        "run",
        "--input",
        &main_path,
        "--input",
        &fa,
        "--input",
        &fb,
        "-o",
        "/dev/null",
        "-q",
        "--stats",
    ];
    let stats = run(&args);
    rows.push(Row {
        figure: format!(
            "forget to last retraction, {events} events of state (u-0, u-{})",
            profiles / 2
        ),
        measured: stats.forget.unwrap_or_else(|| "-".into()),
        target: "(reported)",
        command: format!("throughline {}", args.join(" ")),
    });

    // 6: explaining one profile with the main workload as state (the heaviest, u-0, and a
    // typical one); the engine times the explanation itself
    for who in [0, profiles / 2] {
        let id = format!("user_id:u-{who}");
        let args = ["explain", &id, "--input", &main_path];
        let took = stderr_of(&args)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("throughline: explained {id} in ")))
            .unwrap_or("-")
            .to_string();
        rows.push(Row {
            figure: format!("explain {id}, {events} events of state"),
            measured: took,
            target: "(reported)",
            command: format!("throughline {} > /dev/null", args.join(" ")),
        });
    }

    println!("| figure | measured | target | command |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | `{}` |",
            r.figure, r.measured, r.target, r.command
        );
    }
}
