//! Shared test helpers: the oracle and small builders.
#![allow(dead_code)]

pub mod oracle;

use std::io::{Read, Write};
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

/// One HTTP/1.1 request (`Connection: close`): (status, body).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
