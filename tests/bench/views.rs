//! Views defined on a running server (`PUT /v1/views/NAME`): how long from the request to
//! the view's rows being served, over a server holding the state of many events (`serve` at
//! its default of one worker, then with two; the state posted over HTTP first). The answer to a `PUT` comes once the view's rows
//! are published, so its time is the time to the first row served; each answer's rows are
//! then read back with `GET` to check they are there.

use std::path::Path;
use std::time::Instant;

use super::sink::{Http, caught_up, post_state, spawn_serve};
use super::{Row, generate, generate_journeys};

/// The 20 views defined, one after another: different purposes, thresholds, predicates.
fn definition(i: usize) -> String {
    let purpose = ["marketing", "analytics", "personalization"][i % 3];
    let mut text = format!("purpose = \"{purpose}\"\nscore_gte = {}\n", (i % 10) * 3);
    if i % 4 == 1 {
        text.push_str("where = [{ path = \"traits.plan\", exists = true }]\n");
    }
    text.push_str(match i % 2 {
        0 => "fields = [\"email\", \"score\", \"signals\"]\n",
        _ => "fields = [\"user_id\", \"score\"]\n",
    });
    text
}

/// The section's rows.
pub(super) fn rows(dir: &Path, quick: bool, start_ms: u64) -> Vec<Row> {
    let events: u64 = if quick { 100_000 } else { 1_000_000 };
    let mut out = Vec::new();
    for (workers, shape) in [(1, "gen"), (1, "journeys"), (2, "gen"), (2, "journeys")] {
        let file = dir.join(format!("views-{shape}{events}.ndjson"));
        let made = match shape {
            "gen" => generate(&file, events, events / 10, 23, start_ms),
            _ => generate_journeys(&file, events, events / 10, 23, Some(start_ms)),
        };
        let state = std::fs::read(&file).expect("state");
        let (mut child, addr) = spawn_serve(&dir.join("views-data"), workers, "", &[]);
        let mut http = Http::connect(&addr);
        post_state(&mut http, &state);
        caught_up(&mut http);
        let mut took = Vec::new();
        let mut rows = Vec::new();
        for i in 0..20 {
            let path = format!("/v1/views/audience_{i}");
            let started = Instant::now();
            let (status, answer) = http.call("PUT", &path, definition(i).as_bytes());
            took.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(status, 200, "{answer}");
            let answer: serde_json::Value = serde_json::from_str(&answer).expect("json");
            let n = answer["rows"].as_u64().unwrap_or(0);
            let (status, served) = http.call("GET", &path, b"");
            assert_eq!(status, 200);
            assert_eq!(served.lines().count() as u64, n, "served at once");
            rows.push(n);
        }
        let mut sorted = took.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        out.push(Row {
            figure: format!(
                "PUT /v1/views/NAME to its rows served, `serve -w {workers}`, 20 views over {events} events of state ({shape})"
            ),
            measured: format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} to {} rows each)",
                at(0.5),
                at(0.99),
                at(1.0),
                rows.iter().min().unwrap_or(&0),
                rows.iter().max().unwrap_or(&0)
            ),
            target: "milliseconds (issue 33)",
            command: format!(
                "{made}; throughline serve -w {workers} (fresh), the state over HTTP in 5,000-line posts, then 20 PUTs one after another"
            ),
        });
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    out
}
