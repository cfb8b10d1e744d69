//! A new spec on a running server (`PUT /v1/spec` with a changed signal and a new one): how
//! long the rebuild takes to catch up with the state's log and switch over, and the live
//! events' ingest-to-view latency before it and while it runs (open loop, 1,000 events/s
//! over HTTP, every other one an hour behind the clock as SDK queues deliver them), with
//! every thread's CPU share over the rebuild: `serve` at its default of one worker, then
//! with two.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::sink::{Http, caught_up, latencies, post_state, spawn_serve, subscribe_ready};
use super::{Row, final_clock, generate, generate_journeys, live_event, thread_ticks};

/// The live events' rate.
const RATE: u64 = 1_000;

/// The default spec with a signal's points changed and a signal added: every profile's
/// score is rebuilt.
fn new_spec() -> String {
    throughline::spec::DEFAULT_SPEC
        .replacen(
            "name = \"pricing_view\"\npoints = 10",
            "name = \"pricing_view\"\npoints = 30",
            1,
        )
        .replacen(
            "[[intent.sequence]]",
            "[[intent.signal]]\nname = \"any_page\"\npoints = 1\ntype = \"page\"\n\n[[intent.sequence]]",
            1,
        )
}

/// Posts live events from `first` at [`RATE`], open loop, every other one an hour late,
/// until `done` is set (and one more second), at most `limit`: each event's scheduled time.
fn post_until(
    http: &mut Http,
    first: usize,
    base_ms: u64,
    done: &AtomicBool,
    limit: Duration,
) -> Vec<Instant> {
    let start = Instant::now();
    let mut due = Vec::new();
    let mut ended: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if ended.is_none() && done.load(Ordering::SeqCst) {
            ended = Some(now);
        }
        if ended.is_some_and(|e| now >= e + Duration::from_secs(1)) || now >= start + limit {
            return due;
        }
        let upto = (now.duration_since(start).as_secs_f64() * RATE as f64) as usize;
        if upto > due.len() {
            let mut body = String::new();
            for k in due.len()..upto {
                let on_time = base_ms + k as u64 * 1000 / RATE;
                let at = if k % 2 == 1 {
                    on_time - 3_600_000
                } else {
                    on_time
                };
                body.push_str(&live_event(first + k, at));
                body.push('\n');
                due.push(start + Duration::from_secs_f64(k as f64 / RATE as f64));
            }
            let (status, answer) = http.call("POST", "/v1/ingest", body.as_bytes());
            assert_eq!(status, 200, "{answer}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The section's rows.
pub(super) fn rows(dir: &Path, quick: bool, start_ms: u64) -> Vec<Row> {
    let events: u64 = if quick { 100_000 } else { 1_000_000 };
    let mut out = Vec::new();
    // the server's default (one worker), then two: on a 2-core machine the second worker
    // shares the cores with the HTTP, parsing and log threads and with the rebuild
    for (workers, shape) in [(1, "gen"), (1, "journeys"), (2, "gen"), (2, "journeys")] {
        let file = dir.join(format!("rebuild-{shape}{events}.ndjson"));
        let made = match shape {
            "gen" => generate(&file, events, events / 10, 29, start_ms),
            _ => generate_journeys(&file, events, events / 10, 29, Some(start_ms)),
        };
        let clock = final_clock(&file);
        let state = std::fs::read(&file).expect("state");
        let (mut child, addr) = spawn_serve(&dir.join("rebuild-data"), workers, "", &[]);
        let mut http = Http::connect(&addr);
        post_state(&mut http, &state);
        caught_up(&mut http);
        let command = format!(
            "{made}; throughline serve -w {workers} (fresh), the state over HTTP in 5,000-line posts, then live events at {RATE}/s (every other one an hour late), then PUT /v1/spec (a signal's points changed, a signal added) while they go on"
        );
        // before: the same live load with no rebuild
        let mut views = subscribe_ready(&addr, &mut http, clock);
        let none = AtomicBool::new(false);
        let engine_start = engine_histogram(&mut http);
        eprintln!(
            "[bench, {} ms] {shape}, -w {workers}: state loaded, the baseline begins",
            throughline::engine::wall_clock_ms()
        );
        // long enough to show the serving engine's own rare pauses beside the rebuild's
        let baseline = Duration::from_secs(if quick { 3 } else { 20 });
        let due = post_until(&mut http, 1, clock + 1, &none, baseline);
        let before = latencies(&mut views, 1, &due);
        let engine_before = engine_histogram(&mut http);
        out.push(Row {
            figure: format!(
                "ingest-to-view latency with no rebuild, `serve -w {workers}`, {events} events of state ({shape}), {RATE} events/s, half late (open loop, HTTP)"
            ),
            measured: before.describe(),
            target: "(reported: the baseline for the rows below)",
            command: command.clone(),
        });
        out.push(Row {
            figure: "the engine's read-to-output latency (from `/metrics`), the same events".into(),
            measured: engine_latency(&engine_start, &engine_before),
            target: "p99 <= 2 ms at 1k events/s (issue 13)",
            command: command.clone(),
        });
        // during: the rebuild runs while the live events go on
        let first = due.len() + 1;
        let done = Arc::new(AtomicBool::new(false));
        let switched = {
            let (addr, done, pid) = (addr.clone(), Arc::clone(&done), child.id());
            std::thread::spawn(move || {
                let mut http = Http::connect(&addr);
                let before = thread_ticks(pid);
                let started = Instant::now();
                let (status, answer) = http.call("PUT", "/v1/spec", new_spec().as_bytes());
                assert_eq!(status, 202, "{answer}");
                // sampled all along: the old engine's threads end at the switch-over
                let mut after = before.clone();
                loop {
                    after.extend(thread_ticks(pid));
                    let (_, stats) = http.call("GET", "/v1/stats", b"");
                    let stats: serde_json::Value = serde_json::from_str(&stats).expect("json");
                    if stats["rebuild"]["running"] == false {
                        done.store(true, Ordering::SeqCst);
                        after.extend(thread_ticks(pid));
                        return (started.elapsed(), stats["rebuild"].clone(), before, after);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let base = clock + 1 + due.len() as u64;
        let put_at = Instant::now();
        eprintln!(
            "[bench, {} ms] {shape}, -w {workers}: PUT /v1/spec",
            throughline::engine::wall_clock_ms()
        );
        let due = post_until(&mut http, first, base, &done, Duration::from_secs(600));
        let (took, rebuild, cpu_before, cpu_after) = switched.join().expect("the PUT");
        let during = latencies(&mut views, first, &due);
        let engine_during = engine_latency(&engine_before, &engine_histogram(&mut http));
        // the events due before the switch-over began (catching up), apart
        // (the server's own times: from the request to the switch-over's start)
        let switch_ms = rebuild["switched"]["switch_ms"].as_f64().unwrap_or(0.0);
        let seconds = rebuild["switched"]["seconds"].as_f64().unwrap_or(0.0);
        let switch_began = put_at + Duration::from_secs_f64((seconds - switch_ms / 1e3).max(0.0));
        let catching = due.partition_point(|d| *d + Duration::from_millis(5) < switch_began);
        let catch_up = latencies(&mut views, first, due.get(..catching).unwrap_or_default());
        let switch = &rebuild["switched"];
        out.push(Row {
            figure: format!(
                "PUT /v1/spec (changed signal) to the switch-over, `serve -w {workers}`, {events} events of state ({shape}), live events going on"
            ),
            measured: format!(
                "{:.1} s ({} logged lines replayed; the switch-over took {:.1} ms, appends held {:.1} ms of it, and made {} changes at engine time {}); failed: {}",
                took.as_secs_f64(),
                rebuild["lines"],
                switch["switch_ms"].as_f64().unwrap_or(0.0),
                switch["appends_held_ms"].as_f64().unwrap_or(0.0),
                switch["changes"],
                switch["engine_time"],
                rebuild["failed"]
            ),
            target: "seconds (issue 33)",
            command: command.clone(),
        });
        out.push(Row {
            figure: format!(
                "ingest-to-view latency while the rebuild runs and switches over, the same run ({} events)",
                due.len()
            ),
            measured: during.describe(),
            target: "the views' floors (p99 <= 2 ms at 1k events/s through a pipe; the row above over HTTP)",
            command: command.clone(),
        });
        out.push(Row {
            figure: "the engine's read-to-output latency (from `/metrics`) while the rebuild runs and switches over, the same events".into(),
            measured: engine_during,
            target: "p99 <= 2 ms at 1k events/s (issue 13)",
            command: command.clone(),
        });
        out.push(Row {
            figure: format!(
                "ingest-to-view latency while the rebuild catches up (the {catching} events due before the switch-over began), the same run"
            ),
            measured: catch_up.describe(),
            target: "the views' floors",
            command: command.clone(),
        });
        out.push(Row {
            figure: "CPU by thread over the rebuild (seconds, share of all), the same run".into(),
            measured: shares(&cpu_before, &cpu_after, took),
            target: "(reported)",
            command,
        });
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    out
}

/// The engine's read-to-output histogram in `/metrics` (`throughline_ingest_to_output_seconds`):
/// (upper bound in ms, cumulative count) per bucket.
fn engine_histogram(http: &mut Http) -> Vec<(f64, u64)> {
    let (_, metrics) = http.call("GET", "/metrics", b"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("throughline_ingest_to_output_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, count) = l.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse::<f64>().ok()? * 1e3
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The latency quantiles of the events published between two samples of the engine's
/// histogram, interpolated within a bucket as Prometheus' `histogram_quantile` does, and the
/// share within 2 ms.
fn engine_latency(before: &[(f64, u64)], after: &[(f64, u64)]) -> String {
    let window: Vec<(f64, u64)> = after
        .iter()
        .zip(before)
        .map(|(&(le, a), &(_, b))| (le, a.saturating_sub(b)))
        .collect();
    let total = window.last().map_or(0, |w| w.1);
    if total == 0 {
        return "no events".into();
    }
    let quantile = |q: f64| {
        let rank = q * total as f64;
        let mut lower = (0.0, 0u64);
        for &(le, count) in &window {
            if count as f64 >= rank {
                if le.is_infinite() {
                    return format!("> {:.0} ms", lower.0);
                }
                let share = (rank - lower.1 as f64) / (count - lower.1).max(1) as f64;
                return format!("{:.2} ms", lower.0 + (le - lower.0) * share);
            }
            lower = (le, count);
        }
        "?".into()
    };
    let within = window
        .iter()
        .find(|(le, _)| *le >= 1.999)
        .map_or(0, |w| w.1);
    format!(
        "p50 {}, p99 {}, p99.9 {}; {:.2}% within 2 ms ({total} events)",
        quantile(0.5),
        quantile(0.99),
        quantile(0.999),
        within as f64 * 100.0 / total as f64
    )
}

/// Each thread's CPU seconds between two samples, busiest first, with its share.
fn shares(
    before: &std::collections::BTreeMap<u64, (String, u64)>,
    after: &std::collections::BTreeMap<u64, (String, u64)>,
    wall: Duration,
) -> String {
    let mut spent: Vec<(String, f64)> = after
        .iter()
        .map(|(tid, (name, ticks))| {
            let was = before.get(tid).map_or(0, |(_, t)| *t);
            (format!("{name} ({tid})"), (ticks - was) as f64 / 100.0)
        })
        .filter(|(_, s)| *s > 0.0)
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = spent.iter().map(|(_, s)| s).sum();
    let listed: Vec<String> = spent
        .iter()
        .take(8)
        .map(|(t, s)| format!("{t} {s:.1} s ({:.0}%)", 100.0 * s / total.max(1e-9)))
        .collect();
    format!(
        "{:.1} CPU s in {:.1} s wall: {}",
        total,
        wall.as_secs_f64(),
        listed.join(", ")
    )
}
