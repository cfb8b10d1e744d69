//! Views changed on a running server (`PUT` and `DELETE /v1/views/NAME`,
//! `src/io/http/views.rs`, `src/engine/views.rs`): a view added while running has, at every
//! later point, the rows of a server started with it in its spec and fed the same events,
//! and so after a SIGKILL and restart; a deleted view ends its subscriptions; a bad
//! definition answers 400 with its line and key; concurrent changes of one view are told
//! which one won.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

mod common;
use common::{Serve, request};

/// The view added while running.
const ENGAGED: &str =
    "purpose = \"marketing\"\nscore_gte = 5\nfields = [\"email\", \"score\", \"signals\"]\n";

fn dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A directory `name` holding a spec file: the default spec with `engaged` from the start.
fn with_engaged(name: &str) -> (PathBuf, PathBuf) {
    let reference_dir = dir(name);
    std::fs::create_dir_all(&reference_dir).unwrap();
    let spec = reference_dir.join("with-engaged.toml");
    let with = format!(
        "{}\n[[view]]\nname = \"engaged\"\n{ENGAGED}",
        throughline::spec::DEFAULT_SPEC
    );
    std::fs::write(&spec, with).unwrap();
    (reference_dir, spec)
}

fn put(serve: &Serve, name: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, text) = request(
        &serve.addr,
        "PUT",
        &format!("/v1/views/{name}"),
        &[],
        body.as_bytes(),
    );
    (status, serde_json::from_str(&text).unwrap_or_default())
}

fn rows(serve: &Serve, name: &str) -> String {
    let (status, body) = serve.get(&format!("/v1/views/{name}"));
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn a_view_added_while_running_has_the_rows_of_a_server_started_with_it() {
    let parts = common::workload_parts(41, 1500, 120, 3);
    // the reference: the view in its spec from the start
    let (reference_dir, spec) = with_engaged("views-reference");
    let reference = Serve::start_with(
        &reference_dir.join("data"),
        &["--dataflow", spec.to_str().unwrap()],
    );
    let live_dir = dir("views-live");
    let mut live = Serve::start_with(&live_dir, &[]);

    let mut total = 0;
    total += parts[0].lines().count();
    reference.post_taken(&parts[0], total);
    live.post_taken(&parts[0], total);
    assert_eq!(live.get("/v1/views/engaged").0, 404);
    // a dry run: the rows it would have, and nothing published
    let changes_before = live.get("/metrics").1;
    let (status, text) = request(
        &live.addr,
        "POST",
        "/v1/views/engaged/preview",
        &[],
        ENGAGED.as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    let preview: serde_json::Value = serde_json::from_str(&text).unwrap();
    let reference_rows = rows(&reference, "engaged");
    assert_eq!(preview["rows"], reference_rows.lines().count());
    let first: Vec<serde_json::Value> = reference_rows
        .lines()
        .take(20)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            serde_json::json!({"key": v["key"], "row": v["row"]})
        })
        .collect();
    assert_eq!(preview["first"], serde_json::Value::Array(first));
    let changes = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("throughline_changes_total "))
            .map(str::to_string)
    };
    assert_eq!(changes(&live.get("/metrics").1), changes(&changes_before));
    assert_eq!(live.get("/v1/views/engaged").0, 404);
    let (status, answer) = put(&live, "engaged", ENGAGED);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["action"], "created");
    let first = rows(&live, "engaged");
    assert!(!first.is_empty(), "the view has rows at once");
    assert_eq!(answer["rows"], first.lines().count());
    assert_eq!(first, rows(&reference, "engaged"), "right after the PUT");
    // a profile in it says so
    let member: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    let key = member["key"]
        .as_str()
        .unwrap()
        .replace('@', "%40")
        .replace('+', "%2B");
    let (status, profile) = live.get(&format!("/v1/profiles/{key}"));
    assert_eq!(status, 200, "{profile}");
    let profile: serde_json::Value = serde_json::from_str(&profile).unwrap();
    assert!(
        profile["views"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("engaged")),
        "{profile}"
    );

    // a subscriber from now on sees the same changes as the reference's
    for part in &parts[1..] {
        total += part.lines().count();
        reference.post_taken(part, total);
        live.post_taken(part, total);
        assert_eq!(rows(&live, "engaged"), rows(&reference, "engaged"));
        for view in ["profiles", "scores", "marketing_audience"] {
            assert_eq!(rows(&live, view), rows(&reference, view), "view {view}");
        }
    }
    // the data directory keeps the change: a restart replays it at its place
    let toml = std::fs::read_to_string(live_dir.join("dataflow.toml")).unwrap();
    assert!(toml.contains("name = \"engaged\""), "{toml}");
    live.kill();
    live = Serve::start_with(&live_dir, &[]);
    assert_eq!(
        rows(&live, "engaged"),
        rows(&reference, "engaged"),
        "after a restart"
    );

    // replaced: the rows of the new definition
    let (status, answer) = put(
        &live,
        "engaged",
        "{\"purpose\": \"marketing\", \"score_gte\": 8, \"fields\": [\"email\", \"score\"]}",
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["action"], "replaced");
    let replaced = rows(&live, "engaged");
    assert!(!replaced.is_empty());
    for line in replaced.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(row["row"]["score"].as_f64().unwrap() >= 8.0, "{line}");
        assert!(row["row"].get("signals").is_none(), "{line}");
    }

    // deleted while a subscriber reads its changes: the -1s come, then the stream ends
    let mut stream = TcpStream::connect(&live.addr).unwrap();
    write!(
        stream,
        "GET /v1/views/engaged/changes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => got.push(line),
                Err(_) => break,
            }
        }
        got
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, text) = request(&live.addr, "DELETE", "/v1/views/engaged", &[], b"");
    assert_eq!(status, 200, "{text}");
    let got = reader.join().unwrap().join("\n");
    let retracted = got.matches("\"diff\":-1").count();
    assert_eq!(retracted, replaced.lines().count(), "{got}");
    assert_eq!(live.get("/v1/views/engaged").0, 404);
    // and after a restart it is still gone
    live.kill();
    let live = Serve::start_with(&live_dir, &[]);
    assert_eq!(live.get("/v1/views/engaged").0, 404);
    assert_eq!(rows(&live, "scores"), rows(&reference, "scores"));
}

#[test]
fn bad_definitions_and_concurrent_changes_are_answered_clearly() {
    let serve = Serve::start_with(&dir("views-bad"), &["--write-key", "wk"]);
    let auth = [("Authorization", "Basic d2s6")]; // "wk:"
    let (status, _) = request(
        &serve.addr,
        "PUT",
        "/v1/views/v",
        &[],
        b"internal = true\nfields = []",
    );
    assert_eq!(status, 401, "the write key is needed");
    let (status, text) = request(
        &serve.addr,
        "PUT",
        "/v1/views/v",
        &auth,
        b"purpose = \"marketing\"\nfields = [\"colour\"]\n",
    );
    assert_eq!(status, 400);
    assert!(text.contains("view v:2: key `view.fields`"), "{text}");
    let (status, text) = request(&serve.addr, "DELETE", "/v1/views/nope", &auth, b"");
    assert_eq!(status, 404, "{text}");

    // eight changes of one view at once: each answer is a success or names the winner
    let addr = serve.addr.clone();
    let answers: Vec<(u16, String)> = (0..8)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let body =
                    format!("purpose = \"marketing\"\nscore_gte = {i}\nfields = [\"score\"]\n");
                request(
                    &addr,
                    "PUT",
                    "/v1/views/race",
                    &[("Authorization", "Basic d2s6")],
                    body.as_bytes(),
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let won: Vec<u64> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, t)| {
            serde_json::from_str::<serde_json::Value>(t).unwrap()["version"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(!won.is_empty(), "{answers:?}");
    for (status, text) in &answers {
        assert!(*status == 200 || *status == 409, "{status} {text}");
        if *status == 409 {
            assert!(text.contains("which wins"), "{text}");
        }
    }
    assert_eq!(serve.get("/v1/views/race").0, 200);

    // a whole spec: its views' differences are made as view changes
    let (status, text) = serve.get("/v1/spec");
    assert_eq!(status, 200);
    assert!(text.contains("name = \"race\""), "{text}");
    let edited = throughline::spec::DEFAULT_SPEC
        .replace("score_gte = 20", "score_gte = 30")
        .replace("name = \"personalization\"", "name = \"personal\"");
    let (status, text) = request(&serve.addr, "PUT", "/v1/spec", &[], edited.as_bytes());
    assert_eq!(status, 401, "{text}");
    let (status, text) = request(&serve.addr, "PUT", "/v1/spec", &auth, edited.as_bytes());
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let actions: Vec<(String, String)> = answer["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["view"].as_str().unwrap().into(),
                c["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expect = |v: &str, a: &str| (v.to_string(), a.to_string());
    assert_eq!(
        actions,
        vec![
            expect("personalization", "deleted"),
            expect("race", "deleted"),
            expect("marketing_audience", "replaced"),
            expect("personal", "created"),
        ]
    );
    assert_eq!(serve.get("/v1/views/personalization").0, 404);
    assert_eq!(serve.get("/v1/views/personal").0, 200);
    // the same spec again changes nothing; a changed signal is a rebuild
    // (`tests/rebuild.rs`); changed input settings are refused
    let (status, text) = request(&serve.addr, "PUT", "/v1/spec", &auth, edited.as_bytes());
    assert_eq!((status, text.as_str()), (200, "{\"changes\":[]}"));
    let input = edited.replacen("dedup_window = \"7d\"", "dedup_window = \"1d\"", 1);
    assert_ne!(input, edited, "the spec has a dedup window of 7 days");
    let (status, text) = request(&serve.addr, "PUT", "/v1/spec", &auth, input.as_bytes());
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("[input]"), "{text}");
    let signal = edited.replacen("points = 10\n", "points = 11\n", 1);
    assert_ne!(signal, edited, "the spec has a signal of 10 points");
    let (status, text) = request(&serve.addr, "PUT", "/v1/spec", &auth, signal.as_bytes());
    assert_eq!(status, 202, "{text}");
}

/// SIGKILL while a `PUT` is in flight, at a few moments around it, with events streaming in:
/// after the restart an acknowledged view is there, with the rows of a server that had it
/// from the start; one not acknowledged is either there, whole, or absent.
#[test]
fn a_kill_during_a_put_loses_no_acknowledged_view() {
    let text = String::from_utf8(common::workload(43, 1200, 100, false)).unwrap();
    let all: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let (reference_dir, spec) = with_engaged("views-kill-reference");
    let live_dir = dir("views-kill");
    let mut total = 0;
    for (round, delay_ms) in [0u64, 2, 8].into_iter().enumerate() {
        let live = Serve::start_with(&live_dir, &[]);
        // this round's events, and the PUT in flight while the server is killed
        let part = all[round * 400..(round + 1) * 400].join("\n") + "\n";
        total += 400;
        live.post_taken(&part, total);
        let addr = live.addr.clone();
        let body = if round == 1 { "" } else { ENGAGED };
        let put = std::thread::spawn(move || {
            let method = if body.is_empty() { "DELETE" } else { "PUT" };
            common::try_request(&addr, method, "/v1/views/engaged", &[], body.as_bytes())
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        live.kill();
        let answered = put.join().unwrap().map(|(status, _)| status);
        let live = Serve::start_with(&live_dir, &[]);
        let (status, rows_now) = live.get("/v1/views/engaged");
        match (body.is_empty(), answered) {
            (false, Some(200)) => assert_eq!(status, 200, "an acknowledged view is lost"),
            (true, Some(200)) => assert_eq!(status, 404, "an acknowledged deletion is lost"),
            _ => {}
        }
        // whatever happened, the view is whole: the rows of a server that had it from the
        // start and took the same lines
        if status == 200 {
            let reference = Serve::start_with(
                &reference_dir.join(format!("data-{round}")),
                &["--dataflow", spec.to_str().unwrap()],
            );
            reference.post_taken(&(all[..total].join("\n") + "\n"), total);
            assert_eq!(rows_now, rows(&reference, "engaged"), "round {round}");
        }
        live.kill();
    }
}
