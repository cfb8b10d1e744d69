//! The PostgreSQL destination (`serve --sink postgres://…`, `src/io/sink/postgres.rs`)
//! against a real PostgreSQL server, made for the test with `initdb` and started with
//! `pg_ctl` on a free loopback port. The server is SIGKILLed five times while events are
//! posted, then frozen (SIGSTOP) while the database restarts; at the end every table equals
//! its view row for row. `tests/run.sh` installs PostgreSQL when it is missing; a plain
//! `cargo test` lists this test as ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;
use common::Serve;
use common::postgres::Postgres;

const NEEDS_POSTGRES: &str =
    "needs PostgreSQL's initdb, pg_ctl and psql: tests/run.sh installs them and runs it";

/// Numbers as f64, so that a `double precision` column compares with the row's text.
fn normal(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(items) => Value::Array(items.into_iter().map(normal).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, normal(v))).collect()),
        other => other,
    }
}

/// Posts `part` (NDJSON lines) to `/v1/ingest`: how many lines it had.
fn ingest(serve: &Serve, part: &str) -> usize {
    let (status, body) = serve.post("/v1/ingest", part.as_bytes());
    assert_eq!(status, 200, "{body}");
    part.lines().count()
}

/// A PostgreSQL cluster made afresh under the test's directory `name` (in `cluster`), and
/// that directory.
fn fresh_postgres(name: &str) -> (Postgres, PathBuf) {
    let bin = std::env::var("THROUGHLINE_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| panic!("THROUGHLINE_PG_BIN must be set: {NEEDS_POSTGRES}"));
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&base);
    (Postgres::start(&bin, &base.join("cluster"), true), base)
}

type Rows = BTreeMap<String, serde_json::Value>;

/// View `name`'s rows (`GET /v1/views/NAME`) and its table's, by key, and the table's latest
/// `engine_time`.
fn view_and_table(serve: &Serve, pg: &Postgres, name: &str) -> (Rows, Rows, u64) {
    let (status, rows) = serve.get(&format!("/v1/views/{name}"));
    assert_eq!(status, 200, "{rows}");
    let expected: Rows = rows
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["key"].as_str().unwrap().to_string(),
                normal(v["row"].clone()),
            )
        })
        .collect();
    let mut latest = 0;
    let table: Rows = pg
        .query(&format!("SELECT row_to_json(t) FROM \"{name}\" t"))
        .iter()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let map = v.as_object_mut().unwrap();
            let key = map.remove("key").unwrap().as_str().unwrap().to_string();
            let time = map.remove("engine_time").unwrap().as_u64().unwrap();
            latest = latest.max(time);
            (key, normal(v))
        })
        .collect();
    (expected, table, latest)
}

/// Whether `table` holds exactly the rows `expected` (a column of a field a row lacks is NULL).
fn same_rows(expected: &Rows, table: &Rows) -> Result<(), String> {
    if table.len() != expected.len() {
        return Err(format!(
            "{} rows in the table, {} in the view",
            table.len(),
            expected.len()
        ));
    }
    for (key, row) in expected {
        let have = table.get(key).map(|h| {
            let mut h = h.clone();
            h.as_object_mut()
                .unwrap()
                .retain(|k, v| row.get(k).is_some() || !v.is_null());
            h
        });
        if have.as_ref() != Some(row) {
            return Err(format!("row {key}: the table has {have:?}, the view {row}"));
        }
    }
    Ok(())
}

fn assert_same_rows(view: &str, expected: &Rows, table: &Rows) {
    if let Err(why) = same_rows(expected, table) {
        panic!("view {view}: {why}");
    }
}

/// Waits (up to 30 s) until view `name`'s table holds exactly its rows, and that it has
/// `columns`.
fn wait_table_is_view(serve: &Serve, pg: &Postgres, name: &str, columns: &[&str]) {
    let started = Instant::now();
    loop {
        let exists = !pg
            .query(&format!(
                "SELECT 1 FROM information_schema.tables WHERE table_name = '{name}'"
            ))
            .is_empty();
        if exists {
            let (expected, table, _) = view_and_table(serve, pg, name);
            let have = pg.query(&format!(
                "SELECT column_name FROM information_schema.columns WHERE table_name = '{name}' ORDER BY ordinal_position"
            ));
            match same_rows(&expected, &table) {
                Ok(()) if have == columns => return,
                outcome => assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "table {name}: {outcome:?}, columns {have:?}"
                ),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no table {name}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the server has read `lines` lines and its sink has confirmed them.
fn wait_delivered(serve: &Serve, lines: usize) {
    let started = Instant::now();
    loop {
        let (_, metrics) = serve.get("/metrics");
        let read = metrics.contains(&format!("throughline_lines_total {lines}\n"));
        let confirmed = metrics
            .lines()
            .find(|l| l.starts_with("throughline_sink_confirmed_position{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<usize>().ok());
        if read && confirmed.is_some_and(|c| c >= lines) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not delivered: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs PostgreSQL's initdb, pg_ctl and psql: tests/run.sh installs them and runs it"]
fn postgres_tables_equal_their_views_through_kills_and_a_database_restart() {
    let bin = std::env::var("THROUGHLINE_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| panic!("THROUGHLINE_PG_BIN must be set: {NEEDS_POSTGRES}"));
    let pg = Postgres::start(
        &bin,
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pg-sink"),
        true,
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pg-sink-serve");
    let _ = std::fs::remove_dir_all(&dir);
    let sink = pg.url();
    let start = || Serve::start_with(&dir, &["--sink", &sink]);
    let parts = common::workload_parts(31, 1400, 120, 8);
    assert!(parts.len() >= 8);
    let mut posted = 0;
    // five SIGKILLs, each right after an acknowledged post, while the sink may be writing
    for part in &parts[..5] {
        let serve = start();
        posted += ingest(&serve, part);
        std::thread::sleep(Duration::from_millis(30));
        serve.kill();
    }
    // frozen while the database restarts: the sink finds the connection gone and catches up
    let serve = start();
    posted += ingest(&serve, &parts[5]);
    serve.signal("-STOP");
    pg.ctl("restart", true);
    serve.signal("-CONT");
    // the database down: the server says so, takes events, and catches up once it is back
    pg.ctl("stop", true);
    posted += ingest(&serve, &parts[6]);
    let started = Instant::now();
    while !serve
        .get("/healthz")
        .1
        .contains("degraded: sink postgres://")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            serve.get("/healthz").1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // its lag shows while it waits
    let started = Instant::now();
    loop {
        let (_, metrics) = serve.get("/metrics");
        let lag = metrics
            .lines()
            .find(|l| l.starts_with("throughline_sink_lag_seconds{sink=\"postgres://"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if lag.is_some_and(|s| s > 0.0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.ctl("start", true);
    for part in &parts[7..] {
        posted += ingest(&serve, part);
    }
    // an erasure: its rows leave the table
    let erased = serve.forget_a_user();
    posted += 1;
    wait_delivered(&serve, posted);
    // a last line that changes no view (a dead letter) still moves the position
    posted += ingest(&serve, "{\"type\":\"track\"}\n");
    wait_delivered(&serve, posted);

    let spec = throughline::spec::Spec::default_spec();
    let mut last_time = 0;
    for view in &spec.views {
        let (expected, table, latest) = view_and_table(&serve, &pg, &view.name);
        last_time = last_time.max(latest);
        assert!(!expected.is_empty(), "view {} is empty", view.name);
        assert_same_rows(&view.name, &expected, &table);
        assert!(
            !table.contains_key(&format!("user_id:{erased}")),
            "the erased profile is still in {}",
            view.name
        );
    }
    // the position: the server's last engine time (and log line), no row later than it
    let engine_time: u64 = serve
        .get_header("/v1/views/profiles", "X-Throughline-Engine-Time")
        .expect("the view's engine time")
        .parse()
        .unwrap();
    let (_, metrics) = serve.get("/metrics");
    let lines: usize = metrics
        .lines()
        .find_map(|l| l.strip_prefix("throughline_lines_total "))
        .unwrap()
        .parse()
        .unwrap();
    let position = pg.query("SELECT position, engine_time FROM throughline_sink_positions");
    assert_eq!(position.len(), 1, "{position:?}");
    let (at, time) = position[0].split_once('|').unwrap();
    assert_eq!(
        at.parse::<usize>().unwrap(),
        lines,
        "the position's log line"
    );
    assert_eq!(lines, posted);
    assert_eq!(
        time.parse::<u64>().unwrap(),
        engine_time,
        "the position's engine time"
    );
    assert!(engine_time >= last_time);
}

#[test]
#[ignore = "needs PostgreSQL's initdb, pg_ctl and psql: tests/run.sh installs them and runs it"]
fn postgres_over_tls_verifies_the_servers_certificate() {
    let (pg, base) = fresh_postgres("pg-tls");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    pg.enable_tls(&cert.cert.pem(), &cert.key_pair.serialize_pem());
    let ca = base.join("server.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let text = String::from_utf8(common::workload(7, 200, 30, false)).unwrap();

    // a server certificate nobody vouches for: no connection, and /healthz says why
    let sink = format!("{}?sslmode=require&connect_timeout=2", pg.url());
    let untrusted = Serve::start_with(&base.join("untrusted"), &["--sink", &sink]);
    let posted = ingest(&untrusted, &text);
    untrusted.wait_health(&["degraded", "certificate"]);
    untrusted.kill();

    // trusting it (ca=): the tables fill over TLS
    let sink = format!("{}?sslmode=require&ca={}", pg.url(), ca.display());
    let serve = Serve::start_with(&base.join("trusted"), &["--sink", &sink]);
    assert_eq!(ingest(&serve, &text), posted);
    wait_delivered(&serve, posted);
    let (_, rows) = serve.get("/v1/views/profiles");
    let count = pg.query("SELECT count(*) FROM profiles");
    assert_eq!(count, vec![rows.lines().count().to_string()]);
    let tls = pg.query("SELECT count(*) FROM pg_stat_ssl WHERE ssl");
    assert_ne!(tls, vec!["0".to_string()], "no connection used TLS");
}

/// A view defined, redefined and deleted while the server runs, with a PostgreSQL sink for
/// all views: its table is made when it first publishes and holds its rows, is made again
/// with the new columns when its fields change, survives a restart, and empties when it is
/// deleted.
#[test]
#[ignore = "needs PostgreSQL's initdb, pg_ctl and psql: tests/run.sh installs them and runs it"]
fn postgres_takes_views_defined_while_running() {
    let (pg, base) = fresh_postgres("pg-views");
    let sink = pg.url();
    let dir = base.join("serve");
    let parts = common::workload_parts(43, 1200, 100, 4);
    let put = |serve: &Serve, body: &str| {
        let (status, answer) = common::request(
            &serve.addr,
            "PUT",
            "/v1/views/engaged",
            &[],
            body.as_bytes(),
        );
        assert_eq!(status, 200, "{answer}");
    };
    let serve = Serve::start_with(&dir, &["--sink", &sink]);
    ingest(&serve, &parts[0]);
    put(
        &serve,
        "purpose = \"marketing\"\nscore_gte = 5\nfields = [\"email\", \"score\"]\n",
    );
    wait_table_is_view(
        &serve,
        &pg,
        "engaged",
        &["key", "email", "score", "engine_time"],
    );
    ingest(&serve, &parts[1]);
    wait_table_is_view(
        &serve,
        &pg,
        "engaged",
        &["key", "email", "score", "engine_time"],
    );
    // redefined with other fields: the table is made again with them
    put(
        &serve,
        "purpose = \"marketing\"\nscore_gte = 1\nfields = [\"score\", \"signals\"]\n",
    );
    ingest(&serve, &parts[2]);
    let columns = ["key", "score", "signals", "engine_time"];
    wait_table_is_view(&serve, &pg, "engaged", &columns);
    let (rows, _, _) = view_and_table(&serve, &pg, "engaged");
    assert!(!rows.is_empty(), "the redefined view is empty");
    // a restart: the sink starts with the view as the server last defined it
    serve.kill();
    let serve = Serve::start_with(&dir, &["--sink", &sink]);
    ingest(&serve, &parts[3]);
    wait_table_is_view(&serve, &pg, "engaged", &columns);
    // a rebuild for a new spec (a signal's points changed): the switch-over's -1s and +1s,
    // at the position and engine time of the last input, reach the tables too
    let (before, _, _) = view_and_table(&serve, &pg, "engaged");
    let (_, text) = serve.get("/v1/spec");
    let changed = text.replacen(
        "name = \"pricing_view\"\npoints = 10",
        "name = \"pricing_view\"\npoints = 30",
        1,
    );
    assert_ne!(changed, text);
    let (status, answer) = common::request(&serve.addr, "PUT", "/v1/spec", &[], changed.as_bytes());
    assert_eq!(status, 202, "{answer}");
    let started = Instant::now();
    while serve.get("/healthz").1.contains("rebuilding") || serve.get("/v1/spec").1 != changed {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no switch-over"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_table_is_view(&serve, &pg, "engaged", &columns);
    let (after, _, _) = view_and_table(&serve, &pg, "engaged");
    assert_ne!(after, before, "the switch-over changed no score");
    for view in throughline::spec::Spec::default_spec().views {
        let (expected, table, _) = view_and_table(&serve, &pg, &view.name);
        assert_same_rows(&view.name, &expected, &table);
    }
    // deleted: its -1s empty the table, which stays
    let (status, answer) = common::request(&serve.addr, "DELETE", "/v1/views/engaged", &[], b"");
    assert_eq!(status, 200, "{answer}");
    let started = Instant::now();
    while pg.query("SELECT count(*) FROM engaged") != vec!["0".to_string()] {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the deleted view's rows stay"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
