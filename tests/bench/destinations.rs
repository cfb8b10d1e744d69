//! The destinations section of the harness (`--only=destinations`): `serve -w 2` with a
//! webhook sink posting to a receiver of the harness's own (loopback, answering at once),
//! then with a PostgreSQL sink into a cluster the harness makes with `initdb` and `pg_ctl`
//! (needs `THROUGHLINE_PG_BIN`, PostgreSQL's `bin` directory, which `tests/run.sh` sets).
//! Each is loaded with state over HTTP: the changes delivered per second until the sink
//! confirmed everything. Then live events at 1,000 events/s, open loop, in order: the lag
//! from each event's scheduled time to its first change at the destination (the receiver
//! reading it; the row read back by a poller every 2 ms), and beside it the views' own
//! latency in the same run (delivery must not lower it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

use super::sink::{
    Http, Sightings, caught_up, latencies, live_index, metric, post_paced, post_state, spawn_serve,
    subscribe_ready,
};
use super::{Row, final_clock, generate};

#[path = "../common/postgres.rs"]
#[allow(dead_code)] // the tests read the tables back with `query`; the harness polls
mod postgres;
use postgres::Postgres;

const SECRET: &str = "harness-secret";

/// A webhook receiver on loopback that answers 200 at once, reporting each live profile's
/// first change.
fn receiver() -> (String, Sightings) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let tx = tx.clone();
            std::thread::spawn(move || answer(stream, &tx));
        }
    });
    (addr, Sightings::of(rx))
}

/// Answers one keep-alive connection's posts.
fn answer(stream: TcpStream, tx: &Sender<(usize, Instant)>) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(clone);
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(v) = header.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let at = Instant::now();
        let text = String::from_utf8_lossy(&body);
        for part in text.split("\"key\":").skip(1) {
            if let Some(i) = live_index(part.split('"').nth(1).unwrap_or(""))
                && tx.send((i, at)).is_err()
            {
                return;
            }
        }
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

/// Reads the profiles table of `pg` every 2 ms, reporting each live profile's first row.
fn poll_rows(pg: &Postgres) -> Sightings {
    let url = pg.url();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let Ok((client, connection)) =
                tokio_postgres::connect(&url, tokio_postgres::NoTls).await
            else {
                return;
            };
            tokio::spawn(connection);
            let mut seen = std::collections::HashSet::new();
            loop {
                let rows = client
                    .query(
                        "SELECT key FROM \"profiles\" WHERE key LIKE 'user_id:live-%'",
                        &[],
                    )
                    .await;
                let at = Instant::now();
                if let Ok(rows) = rows {
                    for row in rows {
                        let key: String = row.get(0);
                        if let Some(i) = live_index(&key)
                            && seen.insert(i)
                            && tx.send((i, at)).is_err()
                        {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    });
    Sightings::of(rx)
}

/// Loads `state` over HTTP and waits for the sink: (changes delivered, seconds).
fn load(http: &mut Http, state: &[u8]) -> (u64, f64) {
    let started = Instant::now();
    post_state(http, state);
    caught_up(http);
    let seconds = started.elapsed().as_secs_f64();
    let (_, m) = http.call("GET", "/metrics", b"");
    (metric(&m, "throughline_sink_delivered_total{"), seconds)
}

/// The section's rows.
pub(super) fn rows(dir: &Path, quick: bool, start_ms: u64) -> Vec<Row> {
    let (state_events, seconds) = if quick {
        (20_000u64, 3u64)
    } else {
        (100_000, 10)
    };
    let state_file = dir.join(format!("destination-state{state_events}.ndjson"));
    let state_gen = generate(&state_file, state_events, state_events / 10, 11, start_ms);
    let clock = final_clock(&state_file);
    let state = std::fs::read(&state_file).expect("state");
    let rate = 1_000u64;
    let mut out = Vec::new();
    let pg_bin = std::env::var("THROUGHLINE_PG_BIN").ok();
    // first without a destination: the views' latency the destinations must not lower
    for kind in ["no", "webhook", "PostgreSQL"] {
        let (sink, mut at_destination, pg) = match (kind, &pg_bin) {
            ("no", _) => (String::new(), None, None),
            ("webhook", _) => {
                let (addr, sightings) = receiver();
                let sink = format!("webhook+http://{addr}/hook?batch=500&linger_ms=5");
                (sink, Some(sightings), None)
            }
            (_, Some(bin)) => {
                let pg = Postgres::start(Path::new(bin), &dir.join("harness-pg"), false);
                let sink = format!("{}?view=profiles,marketing_audience", pg.url());
                (sink, None, Some(pg))
            }
            (_, None) => {
                out.push(Row {
                    figure: "changes delivered per second, PostgreSQL sink".into(),
                    measured: "not measured: THROUGHLINE_PG_BIN is not set (tests/run.sh sets it)"
                        .into(),
                    target: "(reported)",
                    command: "cargo bench --bench harness -- --only=destinations".into(),
                });
                continue;
            }
        };
        let command = format!(
            "{state_gen}; throughline serve -w 2 --sink '{sink}' (fresh), the state over HTTP in 5,000-line posts, then live events over HTTP (paced by the harness)"
        );
        let env = [("THROUGHLINE_WEBHOOK_SECRET", SECRET)];
        let (mut child, addr) = spawn_serve(&dir.join("destination-data"), 2, &sink, &env);
        let mut http = Http::connect(&addr);
        let (delivered, took) = load(&mut http, &state);
        if kind == "no" {
            let mut views = subscribe_ready(&addr, &mut http, clock);
            let due = post_paced(&mut http, 1, (rate * seconds) as usize, rate, clock + 1);
            out.push(Row {
                figure: format!(
                    "ingest-to-view latency without a destination, {state_events} events of state, then {rate} events/s in order for {seconds} s (open loop, HTTP): the baseline"
                ),
                measured: latencies(&mut views, 1, &due).describe(),
                target: "(reported: the rows below must not be worse)",
                command: command.replace(" --sink ''", ""),
            });
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
            continue;
        }
        out.push(Row {
            figure: format!(
                "changes delivered per second, {kind} sink, loading {state_events} events of state over HTTP"
            ),
            measured: format!(
                "{:.0} changes/s ({delivered} changes confirmed in {took:.2} s, engine included)",
                delivered as f64 / took
            ),
            target: "(reported)",
            command: command.clone(),
        });
        let mut views = subscribe_ready(&addr, &mut http, clock);
        let mut destination = match (at_destination.take(), &pg) {
            (Some(s), _) => s,
            (None, Some(pg)) => poll_rows(pg),
            (None, None) => unreachable!("a destination is set above"),
        };
        let due = post_paced(&mut http, 1, (rate * seconds) as usize, rate, clock + 1);
        let delivered = latencies(&mut destination, 1, &due);
        let in_view = latencies(&mut views, 1, &due);
        out.push(Row {
            figure: format!(
                "ingest-to-delivery lag, {kind} sink, {state_events} events of state, then {rate} events/s in order for {seconds} s (open loop, HTTP)"
            ),
            measured: delivered.describe(),
            target: "(reported)",
            command: command.clone(),
        });
        out.push(Row {
            figure: format!("ingest-to-view latency, the same run ({kind} sink)"),
            measured: in_view.describe(),
            target: "the views' usual latency (p99 <= 2 ms at 1k events/s through a pipe)",
            command,
        });
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        drop(pg);
    }
    out
}
