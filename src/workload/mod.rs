//! The workload generator behind `throughline gen`: a reproducible synthetic workload for benchmarks, demos and the
//! equivalence tests. The same arguments always produce the same bytes.
//!
//! Profiles browse anonymously, log in (stitching anonymous ids, devices and emails to a
//! user id), share devices, update consent, view pricing, chat with support and add to
//! carts; deliveries arrive out of order and duplicated. With `--adversarial`, every kind
//! of bad line of SPEC section 1 is mixed in, along with blocklisted values, a hub device,
//! edge-case timestamps, JSON corner cases and erasure requests.

use std::io::{self, BufWriter, Write};

use clap::Args;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::event::timestamp::rfc3339;

mod journeys;

/// Arguments of `throughline gen`.
#[derive(Args, Debug, Clone)]
pub struct GenArgs {
    /// Number of event lines to write.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Number of distinct people.
    #[arg(long, default_value_t = 1_000)]
    pub profiles: u64,
    /// PRNG seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Mix in every kind of bad line and edge case.
    #[arg(long)]
    pub adversarial: bool,
    /// First event time, epoch ms (default 2026-09-01T00:00:00Z).
    #[arg(long, default_value_t = 1_788_220_800_000)]
    pub start_ms: u64,
    /// Spread the events evenly over this many days of event time (a long-lived
    /// deployment's traffic: a year is `--days 365`). A person then keeps their anonymous
    /// ids, as analytics.js keeps one per browser in a cookie: each person uses two
    /// browsers (and devices), so the population's identifiers stop growing as its traffic
    /// goes on. Without it, the
    /// events span at most about 60 days and every twentieth event starts a new anonymous id.
    #[arg(long)]
    pub days: Option<u64>,
    /// Journeys shaped like a real site's (see `workload::journeys`): anonymous browsing, an email
    /// typed in variants, a login with the user id on a second device, return visits,
    /// thousands of visitors interleaved, 2% duplicated and 5% late deliveries.
    /// `--adversarial` and `--days` do not apply.
    #[arg(long)]
    pub journeys: bool,
}

/// `throughline gen`: writes the workload to stdout.
pub fn command(args: &GenArgs) -> Result<i32, String> {
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    generate(args, &mut out).map_err(|e| format!("cannot write output: {e}"))?;
    out.flush()
        .map_err(|e| format!("cannot write output: {e}"))?;
    Ok(0)
}

/// Writes the workload to `out`.
pub fn generate(args: &GenArgs, out: &mut dyn Write) -> io::Result<()> {
    if args.journeys {
        let mut g = journeys::Journeys::new(args);
        for _ in 0..args.events {
            out.write_all(&g.next_line())?;
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    let mut g = Generator::new(args);
    for _ in 0..args.events {
        let line = g.next_line();
        out.write_all(&line)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The last 64 deliveries, of which 2% are sent again: a duplicate delivery, with the same
/// `messageId` (SDK retries, at-least-once queues).
#[derive(Default)]
struct Resends(Vec<Vec<u8>>);

impl Resends {
    /// A line delivered again, 2% of the time once there is one to resend.
    fn again(&self, rng: &mut ChaCha8Rng) -> Option<Vec<u8>> {
        if self.0.is_empty() || rng.next_u64() % 10_000 >= 200 {
            return None;
        }
        let i = (rng.next_u64() % self.0.len() as u64) as usize;
        self.0.get(i).cloned()
    }

    /// Keeps `line` among the last deliveries (in the place of a random one once full).
    fn keep(&mut self, rng: &mut ChaCha8Rng, line: &[u8]) {
        if self.0.len() < 64 {
            self.0.push(line.to_vec());
        } else if let Some(slot) = self.0.get_mut((rng.next_u64() % 64) as usize) {
            *slot = line.to_vec();
        }
    }
}

struct Generator {
    rng: ChaCha8Rng,
    args: GenArgs,
    clock: u64,
    gap_ms: u64,
    n: u64,
    recent: Resends,
    /// Per person: session counter (a new anonymous id each session) and login state.
    sessions: Vec<(u32, bool)>,
}

const PAGES: [&str; 7] = [
    "/",
    "/pricing",
    "/pricing/enterprise",
    "/docs",
    "/blog/launch",
    "/features",
    "/pricingx",
];
const TRACKS: [&str; 6] = [
    "Product Added",
    "Support Chat Started",
    "Signed Up",
    "Checkout Started",
    "Video Played",
    "Order Completed",
];
const PLANS: [&str; 3] = ["free", "pro", "enterprise"];

impl Generator {
    fn new(args: &GenArgs) -> Generator {
        let profiles = args.profiles.max(1);
        // spread events over at most ~60 days, about one second apart, or over `days`
        let gap_ms = match args.days {
            Some(days) => (days.saturating_mul(86_400_000) / args.events.max(1)).max(1),
            None => (60 * 86_400_000 / args.events.max(1)).clamp(1, 2000),
        };
        Generator {
            rng: ChaCha8Rng::seed_from_u64(args.seed),
            args: GenArgs {
                profiles,
                ..args.clone()
            },
            clock: args.start_ms,
            gap_ms,
            n: 0,
            recent: Resends::default(),
            sessions: vec![(0, false); profiles.min(10_000_000) as usize],
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rng.next_u64() % n }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(10_000) < percent * 100
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    fn next_line(&mut self) -> Vec<u8> {
        self.n += 1;
        if let Some(line) = self.recent.again(&mut self.rng) {
            return line;
        }
        if self.args.adversarial && self.chance(6) {
            return self.bad_line();
        }
        if self.args.adversarial && self.below(1000) < 3 {
            return self.forget_line();
        }
        let event = self.event();
        let line = serde_json::to_vec(&event).unwrap_or_default();
        self.recent.keep(&mut self.rng, &line);
        line
    }

    fn timestamp(&mut self) -> Value {
        self.clock += self.below(2 * self.gap_ms + 1);
        let mut t = self.clock;
        if self.chance(4) {
            t = t.saturating_sub(self.below(3_600_000)); // late delivery
        } else if self.chance(1) {
            t = t.saturating_sub(self.below(40 * 86_400_000)); // very late: beyond max_age
        }
        match self.below(10) {
            0 => json!(t),
            1 => json!(rfc3339(t, 120)),
            2 => json!(rfc3339(t, -330)),
            _ => json!(rfc3339(t, 0)),
        }
    }

    /// Replaces the event's `timestamp` with the fields client SDKs send (SPEC section 1):
    /// a device clock off by up to an hour, a queueing delay and a network delay, in the
    /// combinations SDKs produce, so that the derived time is the real time plus the network
    /// delay when `sentAt` and `receivedAt` are both there.
    fn sdk_time(&mut self, e: &mut Value) {
        let Some(t) = e
            .get("timestamp")
            .and_then(|v| crate::event::timestamp::parse(v).ok())
        else {
            return;
        };
        if let Some(object) = e.as_object_mut() {
            object.remove("timestamp");
        }
        let skew = self.below(7_200_000) as i64 - 3_600_000;
        let queued = self.below(60_000);
        let network = self.below(2_000);
        let device = |ms: u64| (ms as i64 + skew).max(0) as u64;
        let original = json!(rfc3339(device(t), 0));
        let sent = json!(rfc3339(device(t + queued), 0));
        let received = if self.chance(50) {
            json!(t + queued + network)
        } else {
            json!(rfc3339(t + queued + network, 60))
        };
        match self.below(20) {
            0..=11 => {
                e["originalTimestamp"] = original;
                e["sentAt"] = sent;
                e["receivedAt"] = received;
            }
            12..=14 => {
                e["originalTimestamp"] = original;
                e["sentAt"] = sent;
            }
            15..=16 => e["receivedAt"] = received,
            17..=18 => e["originalTimestamp"] = original,
            _ => {
                e["originalTimestamp"] = original;
                e["sentAt"] = json!("not yet");
                e["receivedAt"] = received;
            }
        }
    }

    /// A person, skewed so a few are much more active than most.
    fn person(&mut self) -> u64 {
        let p = self.args.profiles;
        let u = self.below(1 << 20) as f64 / (1u64 << 20) as f64;
        ((u * u * u) * p as f64) as u64 % p
    }

    fn event(&mut self) -> Value {
        let who = self.person();
        let slot = (who as usize) % self.sessions.len();
        if self.chance(5) {
            self.sessions[slot].0 += 1; // new session, new anonymous id
            self.sessions[slot].1 = false;
        }
        let (mut session, logged_in) = self.sessions[slot];
        if self.args.days.is_some() {
            // a long-lived population: two browsers each, each with its anonymous id kept
            // in a cookie
            session %= 2;
        }
        let has_account = who % 10 < 7;
        let anon = format!("anon-{who}-{session}");
        let shared = who.is_multiple_of(50) && who + 1 < self.args.profiles;
        let device = if shared && self.chance(50) {
            format!("dev-shared-{who}")
        } else if who > 0 && (who - 1).is_multiple_of(50) && self.chance(30) {
            format!("dev-shared-{}", who - 1)
        } else {
            format!("dev-{who}-{}", session % 2)
        };
        let user = format!("u-{who}");
        let email = format!("person{who}@example.org");
        let mut e = json!({
            "anonymousId": anon,
            "timestamp": self.timestamp(),
            "context": {"device": {"id": device}},
        });
        if self.args.adversarial && self.chance(15) {
            self.sdk_time(&mut e);
        }
        if !self.chance(5) {
            e["messageId"] = json!(format!("m-{}-{}", self.args.seed, self.n));
        }
        if logged_in && has_account && self.chance(70) {
            e["userId"] = json!(user);
        }
        let roll = self.below(100);
        match roll {
            0..=44 => {
                let path = self.pick(&PAGES);
                e["type"] = json!("page");
                e["name"] = json!(path.trim_start_matches('/'));
                e["properties"] = json!({"path": path, "title": "Page"});
            }
            45..=49 => {
                e["type"] = json!("screen");
                e["name"] = json!("Home");
            }
            50..=74 => {
                let name = self.pick(&TRACKS);
                e["type"] = json!("track");
                e["event"] = json!(name);
                let mut props = json!({"price": self.below(20_000) as f64 / 100.0});
                if name == "Checkout Started" {
                    match self.below(3) {
                        0 => props["value"] = json!(self.below(500)),
                        1 => props["value"] = Value::Null,
                        _ => {}
                    }
                }
                if self.chance(5) {
                    props["email"] = json!(email.to_uppercase());
                }
                e["properties"] = props;
            }
            75..=86 => {
                e["type"] = json!("identify");
                if has_account {
                    e["userId"] = json!(user);
                    self.sessions[slot].1 = true;
                }
                let mut traits = json!({"email": format!("  {email} ")});
                if self.chance(50) {
                    traits["plan"] = json!(self.pick(&PLANS));
                }
                if self.chance(10) {
                    traits["plan"] = Value::Null;
                }
                e["traits"] = traits;
            }
            87..=89 => {
                e["type"] = json!("alias");
                e["previousId"] = json!(anon);
                if has_account {
                    e["userId"] = json!(user);
                    self.sessions[slot].1 = true;
                }
            }
            90..=91 => {
                e["type"] = json!("group");
                e["groupId"] = json!(format!("g-{}", who % 97));
            }
            _ => {
                e["type"] = json!("track");
                e["event"] = json!("Consent Updated");
                let mut prefs = serde_json::Map::new();
                for purpose in [
                    "marketing",
                    "Personalization",
                    "ANALYTICS",
                    "unknown_purpose",
                ] {
                    if self.chance(60) {
                        prefs.insert(purpose.into(), json!(self.chance(50)));
                    }
                }
                e["context"]["consent"] = json!({"categoryPreferences": prefs});
                e["context"]["traits"] = json!({"email": email});
            }
        }
        e
    }

    /// An erasure request (SPEC section 6): by user id, email or anonymous id, sometimes for
    /// an identifier never seen (pre-emptive suppression).
    fn forget_line(&mut self) -> Vec<u8> {
        let who = self.person();
        let ts = json!(rfc3339(self.clock, 0));
        let mid = format!("f-{}-{}", self.args.seed, self.n);
        let request = match self.below(4) {
            0 => {
                json!({"type": "forget", "messageId": mid, "userId": format!("u-{who}"), "timestamp": ts})
            }
            1 => {
                json!({"type": "forget", "messageId": mid, "traits": {"email": format!("person{who}@example.org")}, "timestamp": ts})
            }
            2 => {
                json!({"type": "forget", "messageId": mid, "anonymousId": format!("anon-{who}-0"), "timestamp": ts})
            }
            _ => {
                json!({"type": "forget", "messageId": mid, "userId": format!("u-never-{}", self.n), "timestamp": ts})
            }
        };
        serde_json::to_vec(&request).unwrap_or_default()
    }

    /// One adversarial line: every dead-letter reason and edge case of SPEC sections 1-3.
    fn bad_line(&mut self) -> Vec<u8> {
        let ts = rfc3339(self.clock, 0);
        let who = self.person();
        let kind = self.below(29);
        let text = match kind {
            0 => format!("{{\"type\":\"track\",\"userId\":\"u-{who}\",\"timestamp\":\"{ts}\""),
            1 => {
                let mut bytes = format!("{{\"type\":\"track\",\"userId\":\"u-{who}\",\"event\":\"")
                    .into_bytes();
                bytes.extend_from_slice(&[0xff, 0xfe]);
                bytes.extend_from_slice(format!("\",\"timestamp\":\"{ts}\"}}").as_bytes());
                return bytes;
            }
            2 => "[1,2,3]".to_string(),
            3 => format!("\"u-{who}\""),
            4 => format!("{{\"type\":\"track\",\"userId\":\"u-{who}\"}}"),
            5 => {
                format!("{{\"type\":\"track\",\"userId\":\"u-{who}\",\"timestamp\":\"yesterday\"}}")
            }
            6 => format!(
                "{{\"type\":\"track\",\"userId\":\"u-{who}\",\"timestamp\":\"2026-09-01 10:00:00Z\"}}"
            ),
            7 => format!(
                "{{\"type\":\"track\",\"userId\":\"u-{who}\",\"timestamp\":\"1969-12-31T23:59:59Z\"}}"
            ),
            8 => format!("{{\"type\":\"track\",\"userId\":\"u-{who}\",\"timestamp\":1.5e12}}"),
            9 => format!("{{\"type\":42,\"userId\":\"u-{who}\",\"timestamp\":\"{ts}\"}}"),
            10 => format!(
                "{{\"type\":\"page\",\"messageId\":7,\"userId\":\"u-{who}\",\"timestamp\":\"{ts}\"}}"
            ),
            11 => format!(
                "{{\"type\":\"track\",\"userId\":\"null\",\"anonymousId\":\"Anonymous\",\"traits\":{{\"email\":\"test@example.com\"}},\"timestamp\":\"{ts}\"}}"
            ),
            12 => format!(
                "{{\"type\":\"page\",\"userId\":\"u-{who}\",\"timestamp\":\"2099-01-01T00:00:00Z\"}}"
            ),
            13 => {
                // the hub: one kiosk device used by very many people
                format!(
                    "{{\"type\":\"page\",\"anonymousId\":\"kiosk-visitor-{}\",\"context\":{{\"device\":{{\"id\":\"kiosk-1\"}}}},\"timestamp\":\"{ts}\"}}",
                    self.below(500)
                )
            }
            14 => format!(
                "{{\"type\":\"identify\",\"userId\":{who},\"traits\":{{\"email\":\"  Person{who}@EXAMPLE.org\"}},\"timestamp\":{}}}",
                self.clock
            ),
            15 => {
                let depth = if self.chance(50) { 128 } else { 129 };
                let nest = format!("{}{}", "[".repeat(depth - 1), "]".repeat(depth - 1));
                format!(
                    "{{\"type\":\"track\",\"userId\":\"u-{who}\",\"properties\":{{\"x\":{nest}}},\"timestamp\":\"{ts}\"}}"
                )
            }
            16 => format!(
                "{{\"type\":\"track\",\"userId\":\"u-{who}\",\"userId\":\"u-{}\",\"timestamp\":\"{ts}\"}}",
                who + 1
            ),
            17 => format!(
                "{{\"type\":\"track\",\"userId\":\"u-{who}\",\"event\":\"\\ud800\",\"timestamp\":\"{ts}\"}}"
            ),
            18 => format!(
                "{{\"type\":\"track\",\"userId\":\"u-{who}\",\"properties\":{{\"v\":1e999}},\"timestamp\":\"{ts}\"}}"
            ),
            19 => format!("{{\"type\":\"track\",\"userId\":\"u-{who}\",\"timestamp\":\"{ts}\"}}\r"),
            20 => "   ".to_string(),
            21 => format!(
                "{{\"type\":\"page\",\"userId\":true,\"anonymousId\":18446744073709551616,\"timestamp\":\"{ts}\"}}"
            ),
            22 => format!(
                "{{\"type\":\"page\",\"userId\":\"u-{who}\",\"timestamp\":\"{}\"}}",
                rfc3339_nanos(self.clock)
            ),
            23 if self.n.is_multiple_of(50_000) || self.n == 100 => {
                format!(
                    "{{\"type\":\"track\",\"userId\":\"u-{who}\",\"x\":\"{}\",\"timestamp\":\"{ts}\"}}",
                    "x".repeat(1 << 20)
                )
            }
            24 => format!("{{\"type\":\"track\",\"userId\":\"u-{who}\",\"timestamp\":null}}"),
            // SDK time fields (SPEC section 1): an unparseable originalTimestamp, a
            // correction that lands before 1970, and only sentAt (nothing dates the event)
            25 => format!(
                "{{\"type\":\"track\",\"userId\":\"u-{who}\",\"originalTimestamp\":\"soon\",\"receivedAt\":\"{ts}\"}}"
            ),
            26 => format!(
                "{{\"type\":\"track\",\"userId\":\"u-{who}\",\"originalTimestamp\":5,\"sentAt\":\"{ts}\",\"receivedAt\":\"1970-01-01T00:00:00Z\"}}"
            ),
            27 => format!("{{\"type\":\"track\",\"userId\":\"u-{who}\",\"sentAt\":\"{ts}\"}}"),
            _ => format!(
                "{{\"type\":\"track\",\"userId\":\"u-{who}\",\"messageId\":null,\"timestamp\":\"{ts}\"}}"
            ),
        };
        text.into_bytes()
    }
}

fn rfc3339_nanos(ms: u64) -> String {
    let base = rfc3339(ms, 0);
    format!("{}987654Z", &base[..base.len() - 1])
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        for (ms, off) in [
            (0u64, 0),
            (1_788_220_800_123, 0),
            (1_788_220_800_123, 120),
            (951_782_400_000, -330),
        ] {
            let text = rfc3339(ms, off);
            assert_eq!(
                crate::event::timestamp::parse(&json!(text)),
                Ok(ms),
                "{text}"
            );
        }
    }

    #[test]
    fn reproducible() {
        let args = GenArgs {
            events: 2000,
            profiles: 50,
            seed: 9,
            adversarial: true,
            start_ms: 1_788_220_800_000,
            days: None,
            journeys: false,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        generate(&args, &mut a).unwrap();
        generate(&args, &mut b).unwrap();
        assert_eq!(a, b);
    }
}
