//! The webhook destination (`serve --sink webhook+http://…`, `src/io/sink/webhook.rs`)
//! against a receiver that misbehaves: it answers `500` for a while, then `429` with
//! `Retry-After`, lets a request time out, and refuses one batch with `400`; the server is
//! SIGKILLed while it retries. The receiver verifies every signature with its own HMAC and
//! applies each idempotency key once; what it applied must be exactly the views.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

mod common;
use common::Serve;

const SECRET: &str = "a-test-secret";

/// One request the receiver took: its idempotency key, whether its signature verified, its
/// body and the status it was answered.
#[derive(Debug, Clone)]
struct Received {
    key: String,
    signed: bool,
    body: String,
    status: u16,
}

/// How the misbehaving receiver answers its `n`-th request (from 1): five failures of three
/// kinds in a row, then one refusal, then all is well.
fn misbehaving(n: usize) -> (u16, Option<Duration>) {
    match n {
        1..=3 => (500, None),
        4 => (429, None),
        5 => (200, Some(Duration::from_millis(900))), // past the client's timeout
        9 => (400, None),
        _ => (200, None),
    }
}

/// How a receiver answers its `n`-th request.
type Answer = fn(usize) -> (u16, Option<Duration>);

/// A receiver on loopback, keeping every request it takes, answering as `answer` says; over
/// TLS with `tls`.
fn receiver(
    answer: Answer,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let got = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(Mutex::new(0usize));
    let keep = Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let (got, count, tls) = (Arc::clone(&keep), Arc::clone(&count), tls.clone());
            std::thread::spawn(move || match tls {
                Some(config) => {
                    let tls = rustls::ServerConnection::new(config).unwrap();
                    let stream = rustls::StreamOwned::new(tls, stream);
                    serve_connection(stream, &got, &count, answer);
                }
                None => serve_connection(stream, &got, &count, answer),
            });
        }
    });
    (addr, got)
}

/// Answers the requests of one keep-alive connection.
fn serve_connection<S: Read + Write>(
    stream: S,
    got: &Mutex<Vec<Received>>,
    count: &Mutex<usize>,
    answer: Answer,
) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut headers = BTreeMap::new();
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let signed = headers
            .get("x-throughline-signature")
            .and_then(|v| v.strip_prefix("sha256="))
            .is_some_and(|hex| verify(&body, hex));
        let n = {
            let mut count = count.lock().unwrap();
            *count += 1;
            *count
        };
        let (status, delay) = answer(n);
        got.lock().unwrap().push(Received {
            key: headers.get("idempotency-key").cloned().unwrap_or_default(),
            signed,
            body: String::from_utf8_lossy(&body).into_owned(),
            status,
        });
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        let extra = if status == 429 {
            "Retry-After: 1\r\n"
        } else {
            ""
        };
        let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n{extra}\r\nno");
        let stream = reader.get_mut();
        if stream.write_all(reply.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
    }
}

/// The receiver's own check: HMAC-SHA256 of the raw body under the secret, compared in
/// constant time.
fn verify(body: &[u8], hex: &str) -> bool {
    let Ok(bytes) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

/// `(view, key, row)` with the row's JSON in a canonical form, from a change or a view line.
fn row_of(value: &serde_json::Value) -> (String, String, String) {
    (
        value["view"].as_str().unwrap().to_string(),
        value["key"].as_str().unwrap().to_string(),
        value["row"].to_string(),
    )
}

#[test]
fn a_webhook_gets_every_change_once_per_key_through_failures_and_a_kill() {
    let (addr, got) = receiver(misbehaving, None);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("webhook-sink");
    let _ = std::fs::remove_dir_all(&dir);
    let sink = format!("webhook+http://{addr}/hook?batch=500&linger_ms=150&timeout_ms=400");
    let env = [("THROUGHLINE_WEBHOOK_SECRET", SECRET)];
    let start = || Serve::start_env(&dir, &["--sink", &sink], &env);
    let parts = common::workload_parts(21, 900, 90, 3);
    let lines: usize = parts.iter().map(|p| p.lines().count()).sum();
    let mut sent = 0;
    let mut post = |serve: &Serve, part: &str| {
        let (status, body) = serve.post("/v1/ingest", part.as_bytes());
        assert_eq!(status, 200, "{body}");
        sent += part.lines().count();
        let started = Instant::now();
        while !serve
            .get("/metrics")
            .1
            .contains(&format!("throughline_lines_total {sent}\n"))
        {
            assert!(started.elapsed() < Duration::from_secs(60));
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let serve = start();
    // the first part in small posts: the sink's spans gather several groups each, and the
    // restart must post the same spans again
    let first: Vec<&str> = parts[0].lines().collect();
    for chunk in first.chunks(25) {
        post(&serve, &(chunk.join("\n") + "\n"));
        std::thread::sleep(Duration::from_millis(40));
    }
    // killed while the receiver still fails: what was not confirmed is sent again
    std::thread::sleep(Duration::from_millis(300));
    serve.kill();
    let mut serve = start();
    for part in &parts[1..] {
        post(&serve, part);
    }
    // an erasure: the profile's rows leave the views, and the webhook gets their -1s
    let erased = serve.forget_a_user();
    let started = Instant::now();
    let taken = format!("throughline_lines_total {}\n", lines + 1);
    while !serve.get("/metrics").1.contains(&taken) {
        assert!(started.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    let names: Vec<String> = throughline::spec::Spec::default_spec()
        .views
        .iter()
        .map(|v| v.name.clone())
        .collect();
    let mut expected = BTreeSet::new();
    for name in &names {
        let (status, rows) = serve.get(&format!("/v1/views/{name}"));
        assert_eq!(status, 200, "{rows}");
        for line in rows.lines() {
            expected.insert(row_of(&serde_json::from_str(line).unwrap()));
        }
    }
    assert!(!expected.is_empty());
    let erased_key = format!("user_id:{erased}");
    assert!(expected.iter().all(|(_, key, _)| *key != erased_key));
    // a clean stop waits for the destination
    serve.signal("-TERM");
    let _ = serve.child.wait();

    let got = got.lock().unwrap().clone();

    assert!(got.iter().all(|r| r.signed), "a batch arrived unsigned");
    let statuses: BTreeSet<u16> = got.iter().map(|r| r.status).collect();
    assert!(statuses.is_superset(&BTreeSet::from([200, 400, 429, 500])));
    // each idempotency key applied once
    let mut applied: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for r in &got {
        if !seen.insert(r.key.clone()) {
            continue;
        }
        let batch: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(batch["idempotency_key"].as_str(), Some(r.key.as_str()));
        for change in batch["changes"].as_array().unwrap() {
            assert_eq!(change["view"], batch["view"], "one view per batch");
            *applied.entry(row_of(change)).or_default() += change["diff"].as_i64().unwrap();
        }
    }
    assert!(
        applied
            .iter()
            .any(|((_, key, _), n)| *key == erased_key && *n == 0),
        "the erased profile's rows came and went"
    );
    applied.retain(|_, n| *n != 0);
    assert!(applied.values().all(|n| *n == 1), "a row applied twice");
    let applied: BTreeSet<_> = applied.into_keys().collect();
    assert_eq!(
        applied, expected,
        "what the receiver applied differs from the views"
    );
    assert!(
        got.len() > seen.len(),
        "the failures made the server send some batches again"
    );
    // the refused batch is in the dead-letter file, with the answer
    let refused = got.iter().find(|r| r.status == 400).unwrap();
    let dead = std::fs::read_to_string(dir.join("sink-changes.dead.ndjson")).unwrap();
    assert!(
        dead.lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["status"] == 400 && v["idempotency_key"] == refused.key.as_str()
        }),
        "{dead}"
    );
}

/// Every row of every view of the default spec, as `serve` answers them.
fn views_of(serve: &Serve) -> BTreeSet<(String, String, String)> {
    let mut rows = BTreeSet::new();
    for view in throughline::spec::Spec::default_spec().views {
        let (status, body) = serve.get(&format!("/v1/views/{}", view.name));
        assert_eq!(status, 200, "{body}");
        for line in body.lines() {
            rows.insert(row_of(&serde_json::from_str(line).unwrap()));
        }
    }
    rows
}

/// The rows `got` leaves applied, each idempotency key once, and whether a row was applied
/// twice.
fn applied(got: &[Received]) -> (BTreeSet<(String, String, String)>, bool) {
    let mut applied: BTreeMap<(String, String, String), i64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for r in got.iter().filter(|r| r.status == 200) {
        if !seen.insert(r.key.clone()) {
            continue;
        }
        let batch: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        for change in batch["changes"].as_array().unwrap() {
            *applied.entry(row_of(change)).or_default() += change["diff"].as_i64().unwrap();
        }
    }
    applied.retain(|_, n| *n != 0);
    let twice = applied.values().any(|n| *n != 1);
    (applied.into_keys().collect(), twice)
}

#[test]
fn an_https_webhook_is_posted_to_over_tls_trusting_only_its_ca() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("webhook-https");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let ca = base.join("receiver.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let (addr, got) = receiver(|_| (200, None), Some(Arc::new(config)));
    let env = [("THROUGHLINE_WEBHOOK_SECRET", SECRET)];
    let text = String::from_utf8(common::workload(5, 300, 40, false)).unwrap();

    // a receiver whose certificate nobody vouches for gets nothing: the sink says why
    let untrusted = Serve::start_env(
        &base.join("untrusted"),
        &[
            "--sink",
            &format!("webhook+https://{addr}/hook?linger_ms=10"),
        ],
        &env,
    );
    let (status, body) = untrusted.post("/v1/ingest", text.as_bytes());
    assert_eq!(status, 200, "{body}");
    untrusted.wait_health(&["degraded", "certificate"]);
    untrusted.kill();
    assert!(got.lock().unwrap().is_empty(), "a request got through");

    // trusting the receiver's certificate (ca=): every change arrives, signed
    let sink = format!(
        "webhook+https://{addr}/hook?linger_ms=10&ca={}",
        ca.display()
    );
    let serve = Serve::start_env(&base.join("trusted"), &["--sink", &sink], &env);
    let (status, body) = serve.post("/v1/ingest", text.as_bytes());
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    let expected = loop {
        let expected = views_of(&serve);
        let got = got.lock().unwrap().clone();
        if !expected.is_empty() && applied(&got).0 == expected {
            break expected;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not delivered: {} requests, /healthz: {}",
            got.len(),
            serve.get("/healthz").1
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let got = got.lock().unwrap().clone();
    assert!(got.iter().all(|r| r.signed), "a batch arrived unsigned");
    assert!(!applied(&got).1, "a row applied twice");
    assert!(!expected.is_empty());
}
