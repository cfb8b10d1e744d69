//! The `throughline` binary as a user runs it: exit codes, error messages, dead letters that
//! need real bytes (invalid UTF-8, over-long lines), output files, and streaming (each line's
//! changes are written while the input is still open).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_throughline"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("throughline-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_default_spec_and_names_file_line_key_on_errors() {
    let root = env!("CARGO_MANIFEST_DIR");
    let ok = bin()
        .args(["check", &format!("{root}/dataflows/default.toml")])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let dir = temp_dir("check");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[identity]\nmax_links = 5\ncolour = 1\n[[identity.identifier]]\nname = \"u\"\npaths = [\"userId\"]\n").unwrap();
    let out = bin()
        .args(["check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:3: key `colour`", bad.display())),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
}

#[test]
fn run_with_a_bad_spec_or_missing_input_fails_before_reading() {
    let out = bin()
        .args(["run", "--input", "/nonexistent/events.ndjson"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot open input /nonexistent/events.ndjson")
    );
    let out = bin()
        .args(["run", "--dataflow", "/nonexistent/spec.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn invalid_utf8_and_over_long_lines_are_dead_letters_and_neighbours_survive() {
    let mut input = Vec::new();
    input.extend_from_slice(
        b"{\"anonymousId\":\"before\",\"timestamp\":\"2026-01-01T10:00:00Z\"}\n",
    );
    input.extend_from_slice(
        b"{\"anonymousId\":\"\xff\xfe\",\"timestamp\":\"2026-01-01T10:00:00Z\"}\n",
    );
    input.extend_from_slice(b"{\"anonymousId\":\"long\",\"pad\":\"");
    input.extend(std::iter::repeat_n(b'x', 1 << 20));
    input.extend_from_slice(b"\",\"timestamp\":\"2026-01-01T10:00:00Z\"}\n");
    input.extend_from_slice(b"{\"anonymousId\":\"after\",\"timestamp\":\"2026-01-01T10:00:01Z\"}");
    let dir = temp_dir("dead");
    let dead = dir.join("dead.ndjson");
    let (code, stdout, stderr) = run_with_stdin(
        &[
            "run",
            "--snapshot",
            "--dead-letters",
            dead.to_str().unwrap(),
        ],
        &input,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("anonymous_id:before") && stdout.contains("anonymous_id:after"),
        "{stdout}"
    );
    let letters = std::fs::read_to_string(&dead).unwrap();
    assert!(
        letters.contains("\"line\":2,\"reason\":\"invalid_utf8\""),
        "{letters}"
    );
    assert!(
        letters.contains("\"line\":3,\"reason\":\"line_too_long\""),
        "{letters}"
    );
    assert!(
        stderr.contains("4 lines, 2 accepted, 0 duplicates, 2 dead letters"),
        "{stderr}"
    );
}

#[test]
fn output_file_and_stderr_summary() {
    let dir = temp_dir("out");
    let out_path = dir.join("changes.ndjson");
    let input = b"{\"userId\":\"u\",\"timestamp\":1767261600000}\nnot json\n";
    let (code, stdout, stderr) =
        run_with_stdin(&["run", "--output", out_path.to_str().unwrap()], input);
    assert_eq!(code, 0);
    assert!(stdout.is_empty());
    let changes = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(
        changes.lines().count(),
        2,
        "a profiles row and a scores row: {changes}"
    );
    assert!(
        stderr.contains("dead letter: -:2: invalid_json"),
        "{stderr}"
    );
    assert!(stderr.contains("1 profiles"), "{stderr}");
}

#[test]
fn replay_reports_a_mismatch_with_a_non_zero_exit() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/alias");
    let ok = bin()
        .args(["replay", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let dir = temp_dir("replay");
    for f in [
        "events.ndjson",
        "expected.snapshot.ndjson",
        "expected.changes.ndjson",
        "expected.dead_letters.ndjson",
    ] {
        std::fs::copy(root.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("expected.snapshot.ndjson"), "{}\n").unwrap();
    let bad = bin()
        .args(["replay", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("FAIL"));
}

/// Streaming: with the input pipe still open, each event's change arrives before the next
/// event is written. (The 60 s bound only guards against a hang; it is not a speed test.)
#[test]
fn changes_stream_while_the_input_is_open() {
    let mut child = bin()
        .args(["run", "--quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    for (i, user) in ["u-1", "u-2", "u-3"].iter().enumerate() {
        let ts = 1_767_261_600_000u64 + i as u64 * 1000;
        writeln!(stdin, "{{\"userId\":\"{user}\",\"timestamp\":{ts}}}").unwrap();
        stdin.flush().unwrap();
        // one row in `profiles` and one in `scores` (views in name order)
        for view in ["profiles", "scores"] {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("no output while the input is open");
            assert!(line.contains(&format!("\"view\":\"{view}\"")), "{line}");
            assert!(
                line.contains(&format!("user_id:{user}"))
                    && line.contains(&format!("\"time\":{ts}")),
                "{line}"
            );
        }
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    assert!(rx.try_recv().is_err(), "nothing more at end of input");
}

#[test]
fn explain_reads_stdin_or_files_stops_at_a_clock_and_reports_unknown_identifiers() {
    let events = br#"{"type":"identify","messageId":"m1","userId":"u-1","anonymousId":"a-1","timestamp":"2026-01-01T10:00:00Z"}
{"type":"page","messageId":"m2","anonymousId":"a-1","properties":{"path":"/pricing"},"timestamp":"2026-01-01T10:01:00Z"}
{"type":"track","messageId":"m3","userId":"u-1","event":"Signed Up","timestamp":"2026-01-01T10:02:00Z"}
"#;
    let (code, out, err) = run_with_stdin(&["explain", "anonymous_id:a-1"], events);
    assert_eq!(code, 0, "{err}");
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["profile"], "user_id:u-1");
    assert_eq!(e["score"]["value"], 30);
    assert!(err.contains("explained anonymous_id:a-1 in"), "{err}");

    // --at stops before the first event past it: the signup is not there yet
    let (code, out, _) = run_with_stdin(
        &[
            "explain",
            "user_id:u-1",
            "--at",
            "2026-01-01T10:01:30Z",
            "-q",
        ],
        events,
    );
    assert_eq!(code, 0);
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(e["score"]["value"], 10, "{e}");
    assert_eq!(e["at"], 1_767_261_690_000u64);

    let dir = temp_dir("explain");
    let file = dir.join("events.ndjson");
    std::fs::write(&file, events).unwrap();
    let out = bin()
        .args(["explain", "user_id:u-1", "--format", "text", "-q", "-i"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains("Score: 30") && text.contains("event m3"),
        "{text}"
    );

    let (code, out, err) = run_with_stdin(&["explain", "user_id:nobody", "-q"], events);
    assert_eq!(code, 1);
    assert!(out.contains("\"not_found\""), "{out}");
    assert!(
        err.contains("error: no live event carries user_id:nobody"),
        "{err}"
    );
    for (args, message) in [
        (vec!["explain", "nobody"], "is not type:value"),
        (vec!["explain", "user_id:u-1", "--at", "soon"], "--at:"),
        (vec!["explain", "colour:blue"], "unknown identifier type"),
    ] {
        let (code, _, err) = run_with_stdin(&args, events);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

/// `--stats` reports the changes a run published; a `--snapshot` run publishes none (its
/// rows are made once, at the end) and says so rather than printing a count.
#[test]
fn stats_count_published_changes_and_say_when_there_are_none() {
    let events = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/consent/events.ndjson"
    ))
    .unwrap();
    let (code, stdout, stderr) = run_with_stdin(&["run", "-q", "--stats"], &events);
    assert_eq!(code, 0, "{stderr}");
    let published = stdout.lines().count();
    assert!(
        stderr.contains(&format!("{published} changes (")),
        "the change stream had {published} lines: {stderr}"
    );
    let (code, _, stderr) = run_with_stdin(&["run", "-q", "--stats", "--snapshot"], &events);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("final rows only (--snapshot: no changes published)"),
        "{stderr}"
    );
    assert!(!stderr.contains(" changes ("), "{stderr}");
}
