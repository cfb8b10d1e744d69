//! The console (`GET /` on `serve`) in a real browser: headless Chromium driven through the
//! DevTools protocol against the real binary. It needs Chromium: `tests/run.sh` installs
//! Debian's `chromium`, sets `THROUGHLINE_CHROMIUM` and runs it; a plain `cargo test` lists
//! it as ignored, with the reason.
//!
//! It writes screenshots of the three pages to `target/console-screenshots/` (the README
//! shows one of them, copied to `tests/console/`).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

mod common;
use common::Serve;

/// The write key of the server under test (HTTP Basic username).
const WRITE_KEY: &str = "console-test-key";

/// Headless Chromium with one page, driven over the DevTools protocol.
struct Browser {
    child: Child,
    page: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium (`THROUGHLINE_CHROMIUM`; the test fails without it).
    fn start(profile: &Path) -> Browser {
        let Ok(chromium) = std::env::var("THROUGHLINE_CHROMIUM") else {
            panic!("THROUGHLINE_CHROMIUM is not set: tests/run.sh installs Chromium and sets it");
        };
        let _ = std::fs::remove_dir_all(profile);
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start chromium");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let browser_url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium did not start its DevTools endpoint");
        // ws://127.0.0.1:PORT/devtools/browser/ID: the page's own endpoint is listed at /json
        let host = browser_url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let started = Instant::now();
        let page_url = loop {
            let list = devtools_list(&host);
            let pages: Vec<Value> = serde_json::from_str(&list).unwrap_or_default();
            if let Some(url) = pages
                .iter()
                .find(|p| p["type"] == "page")
                .and_then(|p| p["webSocketDebuggerUrl"].as_str())
            {
                break url.to_string();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no page: {list}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let (page, _) = tungstenite::connect(page_url.as_str()).expect("cannot open the page");
        if let MaybeTlsStream::Plain(stream) = page.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
        }
        Browser {
            child,
            page,
            next_id: 0,
        }
    }

    /// Calls a DevTools method and returns its result (events in between are skipped).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.page
            .send(Message::text(request.to_string()))
            .expect("cannot talk to chromium");
        loop {
            let message = self.page.read().expect("chromium went away");
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(text.as_str()).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page and returns its value.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page; returns how long that took.
    fn wait_for(&mut self, what: &str, expression: &str) -> Duration {
        let started = Instant::now();
        loop {
            if self.eval(expression) == json!(true) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "waited 20 s for {what}; the page shows: {}",
                self.eval("document.getElementById('main').innerText")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    /// A PNG of the whole page (not only the window).
    fn screenshot(&mut self, path: &Path) {
        let metrics = self.call("Page.getLayoutMetrics", json!({}));
        let size = &metrics["cssContentSize"];
        let clip = json!({"x": 0, "y": 0, "scale": 1,
                          "width": size["width"].as_f64().unwrap_or(1280.0),
                          "height": size["height"].as_f64().unwrap_or(1000.0)});
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "clip": clip, "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// `GET /json/list` of Chromium's DevTools HTTP endpoint, which keeps the connection open:
/// read by its `Content-Length`.
fn devtools_list(host: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET /json/list HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= length {
                return body.to_string();
            }
        }
    }
    String::from_utf8_lossy(&response).to_string()
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Posts events with the write key.
fn post(serve: &Serve, endpoint: &str, event: Value) {
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"))
    );
    let (status, body) = common::request(
        &serve.addr,
        "POST",
        &format!("/v1/{endpoint}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        event.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
}

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots")
}

/// The three pages against the real server: a new row appears in the live view without a
/// reload, a customer's graph has the expected nodes and bold label paths, a revoked
/// consent takes the row out, and the erasure button erases (with the write key).
#[test]
#[ignore = "needs Chromium: tests/run.sh installs it and runs it"]
fn the_console_shows_views_customers_and_erasure_live() {
    let temp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    let mut browser = Browser::start(&temp.join("chromium"));
    let data = temp.join("data");
    let _ = std::fs::remove_dir_all(&data);
    let serve = Serve::start_with(&data, &["--write-key", WRITE_KEY]);
    let base = format!("http://{}", serve.addr);
    let t = now_ms() - 60_000;
    let consent =
        |marketing: bool| json!({"consent": {"categoryPreferences": {"marketing": marketing}}});
    // Ada: an identify joining her user id, anonymous id and email, a page from her device
    // under the anonymous id, and a sign-up that puts her in the marketing audience
    post(
        &serve,
        "identify",
        json!({"userId": "u-ada", "anonymousId": "a-1", "messageId": "ada-1", "timestamp": t,
               "traits": {"email": "Ada@Example.com", "plan": "pro"}, "context": consent(true)}),
    );
    post(
        &serve,
        "page",
        json!({"anonymousId": "a-1", "messageId": "ada-2", "timestamp": t + 1000,
               "context": {"device": {"id": "d-1"}}}),
    );
    post(
        &serve,
        "track",
        json!({"userId": "u-ada", "event": "Signed Up", "messageId": "ada-3", "timestamp": t + 2000}),
    );

    // a view, live: Bob's sign-up appears without a reload
    browser.open(&format!("{base}/#/view/marketing_audience"));
    browser.wait_for(
        "the live view with Ada",
        "document.getElementById('stream-state')?.textContent === 'live' && \
         !!document.querySelector('tr[data-key=\"user_id:u-ada\"]')",
    );
    post(
        &serve,
        "track",
        json!({"userId": "u-bob", "event": "Signed Up", "messageId": "bob-1", "timestamp": t + 3000,
               "context": consent(true)}),
    );
    let took = browser.wait_for(
        "Bob's row",
        "!!document.querySelector('tr[data-key=\"user_id:u-bob\"]')",
    );
    // a figure, not a threshold (no wall-clock limit in a test): the issue asks for a second
    eprintln!("the new row was on the page {took:?} after its POST was acknowledged");
    browser.screenshot(&screenshots().join("view.png"));
    // the filter box narrows the rows
    browser.eval(
        "const f = document.getElementById('filter'); f.value = 'bob'; \
         f.dispatchEvent(new Event('input')); true",
    );
    browser.wait_for(
        "the filter",
        "document.querySelectorAll('#rows tr[data-key]').length === 1 && \
         !!document.querySelector('tr[data-key=\"user_id:u-bob\"]')",
    );

    // a customer, found by email through the search box
    browser.eval(
        "document.getElementById('search-box').value = 'email:ada@example.com'; \
         document.getElementById('search').requestSubmit(); true",
    );
    browser.wait_for(
        "the identity graph",
        "!!document.querySelector('#identity-graph g.node[data-id=\"user_id:u-ada\"]')",
    );
    let nodes = browser.eval(
        "[...document.querySelectorAll('#identity-graph g.node')].map(n => n.dataset.id).sort()",
    );
    assert_eq!(
        nodes,
        json!([
            "anonymous_id:a-1",
            "device_id:d-1",
            "email:ada@example.com",
            "user_id:u-ada"
        ])
    );
    let bold = browser.eval(
        "[...document.querySelectorAll('#identity-graph path.edge.bold')] \
           .map(e => [e.dataset.from, e.dataset.to].sort().join(' - ')).sort()",
    );
    assert_eq!(
        bold,
        json!([
            "anonymous_id:a-1 - device_id:d-1",
            "anonymous_id:a-1 - user_id:u-ada",
            "email:ada@example.com - user_id:u-ada"
        ])
    );
    let thin = browser.eval(
        "[...document.querySelectorAll('#identity-graph path.edge:not(.bold)')] \
           .map(e => [e.dataset.from, e.dataset.to].sort().join(' - '))",
    );
    assert_eq!(thin, json!(["anonymous_id:a-1 - email:ada@example.com"]));
    assert_eq!(
        browser.eval("!!document.querySelector('#score-chart polyline.total')"),
        json!(true)
    );
    assert_eq!(
        browser.eval(
            "document.querySelector('#consent tr[data-purpose=\"marketing\"] td').textContent"
        ),
        json!("granted")
    );
    browser.screenshot(&screenshots().join("profile.png"));

    // the overview: every view with its row count
    browser.open(&format!("{base}/#/"));
    browser.wait_for(
        "the overview's counts",
        "document.querySelector('#views tr[data-view=\"marketing_audience\"] .rows')?.textContent === '2'",
    );
    browser.wait_for(
        "the overview's charts (two samples, 2 s apart)",
        "document.querySelectorAll('svg.chart polyline').length >= 4",
    );
    browser.wait_for(
        "what the engine holds",
        "document.querySelector('#held .big')?.textContent.endsWith('live events')",
    );
    browser.wait_for(
        "the log's bytes by kind",
        "document.querySelector('#log-kinds')?.textContent.includes('of received lines')",
    );
    browser.screenshot(&screenshots().join("overview.png"));

    // a revoked consent takes Bob's row out of the live view
    browser.open(&format!("{base}/#/view/marketing_audience"));
    browser.wait_for(
        "Bob in the live view",
        "!!document.querySelector('tr[data-key=\"user_id:u-bob\"]')",
    );
    post(
        &serve,
        "track",
        json!({"userId": "u-bob", "event": "Consent Updated", "messageId": "bob-2",
               "timestamp": t + 4000, "context": consent(false)}),
    );
    browser.wait_for(
        "Bob's row to leave",
        "!document.querySelector('tr[data-key=\"user_id:u-bob\"]:not(.removed)')",
    );

    // a profile of many identifiers: a layer past the limit is summarised, not drawn
    let many: Vec<Value> = (0..30)
        .map(|i| {
            json!({"type": "page", "userId": "u-many", "anonymousId": format!("many-{i:02}"),
                   "messageId": format!("many-{i}"), "timestamp": t + 5000 + i})
        })
        .collect();
    post(&serve, "batch", json!({ "batch": many }));
    browser.open(&format!("{base}/#/profile/user_id%3Au-many"));
    browser.wait_for(
        "the large graph",
        "!!document.querySelector('#identity-graph g.summary')",
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#identity-graph g.node').length"),
        json!(13)
    );
    assert_eq!(
        browser.eval("document.querySelector('#identity-graph g.summary text').textContent"),
        json!("+18 more: 18 anonymous_id")
    );

    // a new view, written in the console: a preview over the current state, then saved,
    // then it fills as events arrive
    browser.open(&format!("{base}/#/new-view"));
    browser.wait_for(
        "the view editor",
        "!!document.getElementById('editor-purpose')?.querySelector('option[value=\"marketing\"]')",
    );
    browser.eval(&format!(
        "document.getElementById('editor-name').value = 'pro_users'; \
         document.getElementById('editor-purpose').value = 'marketing'; \
         document.getElementById('editor-where-path').value = 'traits.plan'; \
         document.getElementById('editor-where-test').value = 'equals'; \
         document.getElementById('editor-where-value').value = 'pro'; \
         document.getElementById('editor-field-email').checked = true; \
         document.getElementById('editor-field-score').checked = true; \
         document.getElementById('editor-key').value = '{WRITE_KEY}'; \
         document.getElementById('editor-preview').click(); true"
    ));
    browser.wait_for(
        "the preview: Ada alone",
        "document.getElementById('editor-count')?.textContent === '1 row now' && \
         !!document.querySelector('#editor-rows tr[data-key=\"user_id:u-ada\"]')",
    );
    assert_eq!(
        serve.get("/v1/views/pro_users").0,
        404,
        "a preview defines nothing"
    );
    browser.screenshot(&screenshots().join("new-view.png"));
    browser.eval("document.getElementById('editor-save').click(); true");
    browser.wait_for(
        "the saved view, live, with Ada",
        "location.hash === '#/view/pro_users' && \
         document.getElementById('stream-state')?.textContent === 'live' && \
         !!document.querySelector('tr[data-key=\"user_id:u-ada\"]')",
    );
    post(
        &serve,
        "identify",
        json!({"userId": "u-bob", "messageId": "bob-pro", "timestamp": t + 5000,
               "traits": {"plan": "pro"}, "context": consent(true)}),
    );
    browser.wait_for(
        "Bob's row in the new view",
        "!!document.querySelector('#rows tr[data-key=\"user_id:u-bob\"]')",
    );

    // erasure from the profile page, with the write key
    browser.open(&format!("{base}/#/profile/user_id%3Au-ada"));
    browser.wait_for(
        "Ada's page with its erase button",
        "document.querySelector('h1')?.textContent === 'Customer user_id:u-ada' && \
         !!document.getElementById('erase')",
    );
    browser.eval(&format!(
        "window.confirm = () => true; \
         document.getElementById('write-key').value = '{WRITE_KEY}'; \
         document.getElementById('erase').click(); true"
    ));
    browser.wait_for(
        "the erasure's result",
        "(document.getElementById('erase-result')?.textContent || '').startsWith('Erased')",
    );
    let (status, body) = serve.get("/v1/profiles/email:ada%40example.com/explain");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("suppressed")),
        "{body}"
    );
}
