//! Fixtures: `fixtures/<name>/` holds `events.ndjson` (and optionally `dataflow.toml`) with
//! the expected `expected.changes.ndjson`, `expected.snapshot.ndjson` and
//! `expected.dead_letters.ndjson`, and optionally expected explanations under `explain/`
//! (see [`ExplainCase`]). `throughline replay` runs one and diffs its outputs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::engine::output::DeadLetters;
use crate::engine::{Options, Retention, Sinks};
use crate::event::identifiers;
use crate::explain::Outcome;
use crate::explain::render::{self, Format};
use crate::io::source::{self, Source};
use crate::spec::Spec;

/// The wall clock fixtures run at (2026-06-01T00:00:00Z), so the far-future rule gives the
/// same answer on any day.
pub const FIXTURE_WALL_CLOCK_MS: u64 = 1_780_272_000_000;

/// A fixture's outputs, one NDJSON line per element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outputs {
    /// The change stream.
    pub changes: Vec<String>,
    /// The final snapshot.
    pub snapshot: Vec<String>,
    /// The dead letters.
    pub dead_letters: Vec<String>,
}

/// The output files of a fixture, with what each holds.
const FILES: [&str; 3] = [
    "expected.changes.ndjson",
    "expected.snapshot.ndjson",
    "expected.dead_letters.ndjson",
];

/// A `Write` into shared memory, so the engine's sink can be read back after the run.
#[derive(Clone, Default)]
pub struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("buffer lock poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `events` (NDJSON bytes) through `spec` in memory, at the fixture wall clock.
pub fn run_bytes(spec: &Spec, events: Vec<u8>, workers: usize) -> Result<Outputs, String> {
    run_bytes_with(spec, events, workers, Retention::Retire)
}

/// [`run_bytes`] with the given retention (tests compare [`Retention::KeepAll`] with it).
pub fn run_bytes_with(
    spec: &Spec,
    events: Vec<u8>,
    workers: usize,
    retention: Retention,
) -> Result<Outputs, String> {
    let changes = SharedBuffer::default();
    let dead = SharedBuffer::default();
    let sinks = Sinks::new(
        Some(Box::new(changes.clone())),
        DeadLetters::new(Some(Box::new(dead.clone()))),
    );
    let snapshot = snapshot_of(spec, events, workers, sinks, retention)?;
    Ok(Outputs {
        changes: changes.lines(),
        snapshot,
        dead_letters: dead.lines(),
    })
}

/// Runs the engine in memory on `events` at the fixture wall clock, keeping only the final
/// snapshot (no change stream: the workers sum their rows themselves, as `run --snapshot`
/// does), and returns its lines.
pub fn snapshot_bytes(spec: &Spec, events: Vec<u8>, workers: usize) -> Result<Vec<String>, String> {
    snapshot_of(
        spec,
        events,
        workers,
        Sinks::new(None, DeadLetters::new(None)),
        Retention::Retire,
    )
}

/// The final snapshot's lines of a run over `events` at the fixture wall clock.
fn snapshot_of(
    spec: &Spec,
    events: Vec<u8>,
    workers: usize,
    sinks: Sinks,
    retention: Retention,
) -> Result<Vec<String>, String> {
    let options = Options {
        workers,
        snapshot: true,
        retention,
        wall_clock_ms: Some(FIXTURE_WALL_CLOCK_MS),
        ..Options::default()
    };
    let summary = source::run(
        Arc::new(spec.clone()),
        vec![Source::bytes("events.ndjson", events)],
        sinks,
        options,
    )
    .map_err(|e| e.to_string())?;
    match &summary.snapshot {
        Some(s) => s.lines(),
        None => Ok(Vec::new()),
    }
}

/// The spec a fixture runs with: its own `dataflow.toml`, or the default.
pub fn fixture_spec(dir: &Path) -> Result<Spec, String> {
    let custom = dir.join("dataflow.toml");
    if custom.exists() {
        Spec::load(&custom).map_err(|e| e.to_string())
    } else {
        Ok(Spec::default_spec())
    }
}

/// Runs a fixture directory.
pub fn run_fixture(dir: &Path, workers: usize) -> Result<Outputs, String> {
    let spec = fixture_spec(dir)?;
    let path = dir.join("events.ndjson");
    let events =
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    run_bytes(&spec, events, workers)
}

/// Reads a fixture's expected outputs (a missing file reads as empty).
pub fn expected(dir: &Path) -> Result<Outputs, String> {
    let read = |name: &str| -> Result<Vec<String>, String> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text.lines().map(str::to_string).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    };
    Ok(Outputs {
        changes: read(FILES[0])?,
        snapshot: read(FILES[1])?,
        dead_letters: read(FILES[2])?,
    })
}

/// One expected explanation of a fixture: `explain/<name>.json` holds the JSON form (which
/// names the identifier and, when found, the clock `at`); `<name>.txt` and `<name>.dot`
/// beside it, when present, hold the text and Graphviz renderings.
#[derive(Debug, Clone)]
pub struct ExplainCase {
    /// The JSON file.
    pub json: PathBuf,
    /// The identifier explained, `type:value`.
    pub identifier: String,
    /// The clock explained at (`explain --at`), when the file gives one.
    pub at: Option<u64>,
}

/// The explanations a fixture checks, sorted by file name.
pub fn explain_cases(dir: &Path) -> Result<Vec<ExplainCase>, String> {
    let folder = dir.join("explain");
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return Ok(Vec::new());
    };
    let mut cases = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", folder.display()))?
            .path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        let identifier = value["identifier"]
            .as_str()
            .ok_or_else(|| format!("{}: no \"identifier\"", path.display()))?
            .to_string();
        cases.push(ExplainCase {
            json: path,
            identifier,
            at: value["at"].as_u64(),
        });
    }
    cases.sort_by(|a, b| a.json.cmp(&b.json));
    Ok(cases)
}

/// Runs `events` through `spec` (at the fixture wall clock, stopping at `at`) and explains
/// `identifier` at `at` (default: the final clock).
pub fn explain_bytes(
    spec: &Spec,
    events: Vec<u8>,
    identifier: &str,
    at: Option<u64>,
    workers: usize,
) -> Result<Outcome, String> {
    let ident = identifiers::parse_key(identifier, &spec.identity)?;
    let options = Options {
        workers,
        wall_clock_ms: Some(FIXTURE_WALL_CLOCK_MS),
        until_ms: at,
        ..Options::default()
    };
    let (_, mut outcomes) = source::run_and_explain(
        Arc::new(spec.clone()),
        vec![Source::bytes("events.ndjson", events)],
        Sinks::new(None, DeadLetters::new(None)),
        options,
        vec![(ident, at)],
    )
    .map_err(|e| e.to_string())?;
    outcomes
        .pop()
        .map(|(outcome, _)| outcome)
        .ok_or_else(|| "internal error: no explanation".to_string())
}

/// Checks (or, with `bless`, rewrites) every expected explanation of a fixture; returns the
/// differences, one line each.
pub fn check_explanations(dir: &Path, workers: usize, bless: bool) -> Result<Vec<String>, String> {
    let spec = fixture_spec(dir)?;
    let path = dir.join("events.ndjson");
    let events =
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut report = Vec::new();
    for case in explain_cases(dir)? {
        let outcome = explain_bytes(&spec, events.clone(), &case.identifier, case.at, workers)?;
        for format in [Format::Json, Format::Text, Format::Dot] {
            let file = case.json.with_extension(match format {
                Format::Json => "json",
                Format::Text => "txt",
                Format::Dot => "dot",
            });
            if format != Format::Json && !file.exists() {
                continue;
            }
            let actual = render::render(&outcome, format);
            if bless {
                std::fs::write(&file, &actual)
                    .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
                continue;
            }
            let expected = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let lines = |t: &str| t.lines().map(str::to_string).collect::<Vec<_>>();
            let d = diff(&lines(&expected), &lines(&actual));
            if !d.is_empty() {
                report.push(format!("  {}:", file.display()));
                report.extend(d.into_iter().take(40).map(|l| format!("    {l}")));
            }
        }
    }
    Ok(report)
}

/// Lines of `expected` missing from `actual` (`-`) and lines of `actual` not expected (`+`),
/// each with its line number; empty when they are equal.
pub fn diff(expected: &[String], actual: &[String]) -> Vec<String> {
    if expected == actual {
        return Vec::new();
    }
    let mut out = Vec::new();
    let in_actual: std::collections::HashSet<&String> = actual.iter().collect();
    let in_expected: std::collections::HashSet<&String> = expected.iter().collect();
    for (i, line) in expected.iter().enumerate() {
        if !in_actual.contains(line) {
            out.push(format!("- {}: {line}", i + 1));
        }
    }
    for (i, line) in actual.iter().enumerate() {
        if !in_expected.contains(line) {
            out.push(format!("+ {}: {line}", i + 1));
        }
    }
    if out.is_empty() {
        out.push("same lines, different order or multiplicity".into());
    }
    out
}

/// `throughline replay`: runs each fixture and reports differences (or rewrites them).
pub fn command(dirs: &[std::path::PathBuf], bless: bool, workers: usize) -> Result<i32, String> {
    let mut failed = 0;
    for dir in dirs {
        let actual = run_fixture(dir, workers)?;
        let name = dir.display();
        let explained = check_explanations(dir, workers, bless)?;
        if bless {
            for (file, lines) in
                FILES
                    .iter()
                    .zip([&actual.changes, &actual.snapshot, &actual.dead_letters])
            {
                let mut text = lines.join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                let path = dir.join(file);
                std::fs::write(&path, text)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            println!("blessed {name}");
            continue;
        }
        let expected = expected(dir)?;
        let mut report = Vec::new();
        for (file, (e, a)) in FILES.iter().zip([
            (&expected.changes, &actual.changes),
            (&expected.snapshot, &actual.snapshot),
            (&expected.dead_letters, &actual.dead_letters),
        ]) {
            let d = diff(e, a);
            if !d.is_empty() {
                report.push(format!("  {file}:"));
                report.extend(d.into_iter().take(40).map(|l| format!("    {l}")));
            }
        }
        report.extend(explained);
        if report.is_empty() {
            println!("ok {name}");
        } else {
            failed += 1;
            println!("FAIL {name}");
            for line in report {
                println!("{line}");
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}
