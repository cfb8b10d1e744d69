//! The console: `GET /` on `serve` opens a few pages that show what the engine knows, for
//! people who would rather look than read JSON (issue 17).
//!
//! - **Overview** (`#/`): every view with its live row count; ingestion rate, dead letters,
//!   suppressed events and ingest-to-output latency over the last ten minutes as small
//!   charts; the log's size and the last compaction; what the engine holds (live and
//!   retired events, identifier sets, records, the dedup window's ids: SPEC section 9); each
//!   sink, delivering or not (since
//!   when, and why), with its backlog and confirmed log line. From [`stats`] (`GET /v1/stats`),
//!   sampled from the engine's own counters every [`SAMPLE_EVERY`] by [`StatsHistory`].
//! - **A view, live** (`#/view/NAME`): its rows, kept current from the change subscription
//!   (`GET /v1/views/NAME/changes` as Server-Sent Events); a row that arrives or leaves is
//!   marked for a moment; a filter box.
//! - **A customer** (`#/profile/TYPE:VALUE`): the explanation (`GET /v1/profiles/…/explain`)
//!   drawn: identifiers by type, traits, consent per purpose with the record that decided
//!   it, the views the profile is in and the condition that keeps it out of the others, the
//!   score over time (each contribution's `curve`, computed by the engine's one decay
//!   function) and the identity graph as SVG (a layered layout by label distance, in the
//!   page; the label paths in bold, links to other profiles grey; a layer of more than
//!   [`MAX_DRAWN`] identifiers is summarised by type). Erasure (`POST /v1/forget`) is a
//!   button that asks for the write key.
//! - **A new view** (`#/new-view`): a form for a view's purpose, conditions and fields (the
//!   purposes, signals and identifier types come from [`stats`]), sent as JSON: **Preview**
//!   is a dry run over the current state (`POST /v1/views/NAME/preview`: the row count and
//!   the first rows), **Save** defines it (`PUT /v1/views/NAME`, with the write key) and
//!   opens its live page, where it fills.
//!
//! The assets are compiled into the binary (no CDN, no build step, works offline): one
//! HTML page, one hand-written script and one style sheet. Access is that of every other
//! `GET`; with a read key set, the page asks the browser for HTTP Basic credentials (the
//! key as the username), which the browser then sends with the page's own requests.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::engine::output::LiveViews;
use crate::engine::{Counters, wall_clock_ms};
use crate::io::sink::SinkStatus;
use crate::spec::Spec;
use crate::store::log::CompactStats;

/// How often the counters are sampled for the overview's charts.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How many samples are kept: ten minutes.
const SAMPLES_KEPT: usize = 300;
/// Identifiers drawn per layer of the identity graph before the rest are summarised (sent
/// to the page as `max_drawn` in [`stats`]).
pub const MAX_DRAWN: usize = 12;

/// An asset of the console: its content type and bytes, by request path.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/console" | "/console/" => {
            Some(("text/html; charset=utf-8", include_str!("index.html")))
        }
        "/console/app.js" => Some(("text/javascript; charset=utf-8", include_str!("app.js"))),
        "/console/app.css" => Some(("text/css; charset=utf-8", include_str!("app.css"))),
        _ => None,
    }
}

/// The engine's counters at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    lines: u64,
    accepted: u64,
    dead_letters: u64,
    suppressed: u64,
    changes: u64,
    latency: Vec<u64>,
}

impl Sample {
    fn of(counters: &Counters, at_ms: u64) -> Sample {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Sample {
            at_ms,
            lines: get(&counters.lines),
            accepted: get(&counters.accepted),
            dead_letters: get(&counters.dead_letters),
            suppressed: get(&counters.suppressed),
            changes: get(&counters.changes),
            latency: counters.latency.counts.iter().map(get).collect(),
        }
    }
}

/// The last ten minutes of the engine's counters, one sample every [`SAMPLE_EVERY`].
#[derive(Debug, Default)]
pub struct StatsHistory {
    samples: Mutex<VecDeque<Sample>>,
}

impl StatsHistory {
    /// Takes a sample of `counters` now.
    pub fn sample(&self, counters: &Counters) {
        let sample = Sample::of(counters, wall_clock_ms());
        if let Ok(mut samples) = self.samples.lock() {
            if samples.len() == SAMPLES_KEPT {
                samples.pop_front();
            }
            samples.push_back(sample);
        }
    }

    /// One point per interval between consecutive samples: `at` (epoch ms, the interval's
    /// end), `events_per_s` (lines read), `accepted_per_s`, `changes_per_s`,
    /// `dead_letters` and `suppressed` (counts in the interval), and the ingest-to-output
    /// latency's `p50_ms` and `p99_ms` over the events published in it (the upper bound of
    /// the histogram bucket holding the quantile; `null` when none were).
    fn series(&self, bounds_us: &[u64]) -> Vec<Value> {
        let Ok(samples) = self.samples.lock() else {
            return Vec::new();
        };
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .map(|(a, b)| {
                let seconds = (b.at_ms.saturating_sub(a.at_ms) as f64 / 1000.0).max(0.001);
                let rate = |x: u64, y: u64| (y.saturating_sub(x) as f64 / seconds).round();
                let latency: Vec<u64> = a
                    .latency
                    .iter()
                    .zip(&b.latency)
                    .map(|(x, y)| y.saturating_sub(*x))
                    .collect();
                json!({
                    "at": b.at_ms,
                    "events_per_s": rate(a.lines, b.lines),
                    "accepted_per_s": rate(a.accepted, b.accepted),
                    "changes_per_s": rate(a.changes, b.changes),
                    "dead_letters": b.dead_letters.saturating_sub(a.dead_letters),
                    "suppressed": b.suppressed.saturating_sub(a.suppressed),
                    "p50_ms": quantile_ms(&latency, bounds_us, 0.5),
                    "p99_ms": quantile_ms(&latency, bounds_us, 0.99),
                })
            })
            .collect()
    }
}

/// The `q` quantile of a histogram's bucket counts, as the upper bound (in ms) of the
/// bucket holding it; the bucket beyond the last bound reports the last bound. `None` when
/// the histogram is empty.
pub fn quantile_ms(counts: &[u64], bounds_us: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            let bound = bounds_us.get(i).or(bounds_us.last()).copied().unwrap_or(0);
            return Some(bound as f64 / 1000.0);
        }
    }
    None
}

/// The event log as the overview shows it.
pub struct Storage {
    /// The log's size.
    pub log_bytes: u64,
    /// Its bytes by kind ([`crate::store::log::Kinds`]).
    pub kinds: crate::store::log::Kinds,
    /// The last compaction since the start: when (epoch ms) and what it did.
    pub last_compaction: Option<(u64, CompactStats)>,
    /// `(replayed, of)` lines while the server replays its log at start.
    pub recovering: Option<(u64, u64)>,
}

/// What the console's overview shows (`GET /v1/stats`): the views with their row counts,
/// the totals, the log's size and bytes by kind, whether it is recovering, the last compaction, each sink (its backlog, confirmed log
/// line and, while it does not deliver, why) and the last ten minutes' series.
pub fn stats(
    spec: &Spec,
    live: &Mutex<LiveViews>,
    counters: &Counters,
    history: &StatsHistory,
    storage: Storage,
    sinks: &[Arc<SinkStatus>],
) -> Value {
    let views: Vec<Value> = match live.lock() {
        Ok(live) => spec
            .views
            .iter()
            .map(|v| {
                json!({
                    "name": v.name,
                    "rows": live.snapshot.count_of(&v.name),
                    "internal": v.internal,
                    "purpose": v.purpose
                        .and_then(|p| spec.consent.purposes.get(p))
                        .map(|(name, _)| name),
                })
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    // identifier types in rank order with the first path each is read from (the console's
    // erasure button names the identifier there)
    let identifiers: Vec<Value> = spec
        .identity
        .identifiers
        .iter()
        .map(|t| json!({"name": t.name, "anchor": t.anchor, "path": t.paths.first()}))
        .collect();
    let now = Sample::of(counters, wall_clock_ms());
    // what a view may be made of, for the view editor
    let purposes: Vec<&str> = spec
        .consent
        .purposes
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    let signals: Vec<&str> = spec.intent.scored().map(|(n, _)| n).collect();
    json!({
        "at": now.at_ms,
        "views": views,
        "identifiers": identifiers,
        "purposes": purposes,
        "signals": signals,
        "totals": {
            "lines": now.lines,
            "accepted": now.accepted,
            "dead_letters": now.dead_letters,
            "suppressed": now.suppressed,
            "changes": now.changes,
        },
        "log_bytes": storage.log_bytes,
        "log_kinds": crate::store::log::KIND_NAMES
            .iter()
            .zip(storage.kinds)
            .map(|(name, bytes)| (name.to_string(), json!(bytes)))
            .collect::<serde_json::Map<_, _>>(),
        "recovering": storage.recovering.map(|(replayed, of)| json!({"replayed": replayed, "of": of})),
        "retained": retained(counters),
        "last_compaction": storage.last_compaction.map(|(at, s)| json!({
            "at": at,
            "records": s.records,
            "reduced": s.reduced,
            "bytes_before": s.bytes_before,
            "bytes_after": s.bytes_after,
        })),
        "sinks": sinks.iter().map(|s| json!({
            "name": s.name,
            "backlog": s.backlog(),
            "delivered": s.delivered.load(Ordering::Relaxed),
            "confirmed": s.confirmed.load(Ordering::Relaxed),
            "lag_ms": s.lag_ms.load(Ordering::Relaxed),
            "stalled": s.stalled().map(|(since, why)| json!({"since": since, "why": why})),
        })).collect::<Vec<_>>(),
        "sample_every_ms": SAMPLE_EVERY.as_millis() as u64,
        "max_drawn": MAX_DRAWN,
        "series": history.series(counters.latency.bounds_us),
    })
}

/// What the engine holds (SPEC section 9), as `/metrics` has it.
fn retained(counters: &Counters) -> Value {
    let [live, retired, sets, records, roles, ids] = counters
        .retained
        .each_ref()
        .map(|g| g.load(Ordering::Relaxed));
    json!({
        "live_events": live,
        "retired_events": retired,
        "identifier_sets": sets,
        "records": records,
        "sequence_roles": roles,
        "dedup_window_ids": ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_bounds() {
        let bounds = [1_000, 5_000, 10_000];
        assert_eq!(quantile_ms(&[0, 0, 0, 0], &bounds, 0.5), None);
        assert_eq!(quantile_ms(&[9, 1, 0, 0], &bounds, 0.5), Some(1.0));
        assert_eq!(quantile_ms(&[9, 1, 0, 0], &bounds, 0.99), Some(5.0));
        // beyond the last bound: the last bound
        assert_eq!(quantile_ms(&[0, 0, 0, 3], &bounds, 0.5), Some(10.0));
    }

    #[test]
    fn every_asset_is_there() {
        for path in ["/", "/console/app.js", "/console/app.css"] {
            assert!(
                asset(path).is_some_and(|(_, body)| !body.is_empty()),
                "{path}"
            );
        }
        assert!(asset("/console/../Cargo.toml").is_none());
    }

    #[test]
    fn the_series_has_one_point_per_interval() {
        let counters = Counters::default();
        let history = StatsHistory::default();
        history.sample(&counters);
        counters.lines.fetch_add(10, Ordering::Relaxed);
        counters.latency.observe(700);
        history.sample(&counters);
        let series = history.series(counters.latency.bounds_us);
        assert_eq!(series.len(), 1);
        // the upper bound of the bucket 700 us falls in
        assert_eq!(series[0]["p50_ms"], json!(0.75));
    }
}
