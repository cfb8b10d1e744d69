//! `gen --journeys`: traffic shaped like a real site's (issue 31). Each visitor's journey
//! runs over minutes to days, interleaved with thousands of others:
//!
//! 1. they browse anonymously on a first device (an anonymous id kept in a cookie);
//! 2. most identify with an email, as a form sends it: mixed case, stray whitespace;
//! 3. some log in with their user id on a second device (a new anonymous id), and go on
//!    there: products, checkout, orders, consent;
//! 4. some come back days later on either device.
//!
//! About 2% of deliveries are sent twice (same `messageId`), and 5% arrive late: their
//! timestamp is up to an hour behind the clock, as SDK queues deliver them. People are
//! drawn from `--profiles`: once every person has started a journey, people return.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::{GenArgs, PAGES, PLANS, Resends};
use crate::event::timestamp::rfc3339;

/// Journeys under way at once (at most; fewer with fewer people).
const CONCURRENT: u64 = 5_000;

/// Where a journey is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Browsing anonymously on the first device: pages left before the next stage.
    Browse(u8),
    /// Identifying with an email on the first device.
    Identify,
    /// Logged in on the second device: events left.
    LoggedIn(u8),
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Journey {
    who: u64,
    /// Visits so far (a return visit keeps the person's ids).
    visit: u32,
    stage: Stage,
}

/// The journey generator: journeys under way by the time of their next event.
pub struct Journeys {
    rng: ChaCha8Rng,
    args: GenArgs,
    clock: u64,
    started: u64,
    n: u64,
    due: BinaryHeap<Reverse<(u64, Journey)>>,
    recent: Resends,
}

impl Journeys {
    /// Journeys for `args` (`--events`, `--profiles`, `--seed`, `--start-ms`).
    pub fn new(args: &GenArgs) -> Journeys {
        Journeys {
            rng: ChaCha8Rng::seed_from_u64(args.seed),
            args: GenArgs {
                profiles: args.profiles.max(1),
                ..args.clone()
            },
            clock: args.start_ms,
            started: 0,
            n: 0,
            due: BinaryHeap::new(),
            recent: Resends::default(),
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rng.next_u64() % n }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(10_000) < percent * 100
    }

    /// Starts journeys until as many are under way as the population allows.
    fn top_up(&mut self) {
        let target = CONCURRENT.min(self.args.profiles);
        while (self.due.len() as u64) < target {
            let who = self.started % self.args.profiles;
            let visit = (self.started / self.args.profiles) as u32;
            self.started += 1;
            let pages = 2 + self.below(10) as u8;
            // arrivals spread over the next few minutes
            let at = self.clock + self.below(300_000);
            let journey = Journey {
                who,
                visit,
                stage: Stage::Browse(pages),
            };
            self.due.push(Reverse((at, journey)));
        }
    }

    /// The next line of the workload.
    pub fn next_line(&mut self) -> Vec<u8> {
        self.n += 1;
        if let Some(line) = self.recent.again(&mut self.rng) {
            return line; // delivered twice
        }
        self.top_up();
        let Some(Reverse((at, journey))) = self.due.pop() else {
            return Vec::new();
        };
        self.clock = self.clock.max(at);
        let (event, next) = self.step(journey);
        if let Some(next) = next {
            // the next event of this visitor, seconds to minutes later
            let gap = 5_000 + self.below(180_000);
            self.due.push(Reverse((self.clock + gap, next)));
        } else if self.chance(30) {
            // a return visit, hours to days later, on the same ids
            let later = 3_600_000 + self.below(10 * 86_400_000);
            let back = Journey {
                visit: journey.visit + 1,
                stage: Stage::Browse(1 + self.below(5) as u8),
                ..journey
            };
            self.due.push(Reverse((self.clock + later, back)));
        }
        let line = serde_json::to_vec(&event).unwrap_or_default();
        self.recent.keep(&mut self.rng, &line);
        line
    }

    /// The event time: the clock, or for 5% of deliveries up to an hour behind it.
    fn timestamp(&mut self) -> Value {
        let mut t = self.clock;
        if self.chance(5) {
            t = t.saturating_sub(self.below(3_600_000));
        }
        json!(rfc3339(t, 0))
    }

    /// An email as a person types it into one form or another.
    fn email(&mut self, who: u64) -> String {
        match self.below(4) {
            0 => format!("person{who}@example.org"),
            1 => format!("Person{who}@Example.org"),
            2 => format!("  person{who}@example.org "),
            _ => format!("PERSON{who}@EXAMPLE.ORG"),
        }
    }

    /// The event of `journey`'s current stage, and the journey after it (`None`: this
    /// visit ends).
    fn step(&mut self, journey: Journey) -> (Value, Option<Journey>) {
        let who = journey.who;
        let has_account = who % 10 < 6;
        let (first, second) = (format!("anon-{who}-0"), format!("anon-{who}-1"));
        let mut e = json!({"timestamp": self.timestamp()});
        e["messageId"] = json!(format!("j-{}-{}", self.args.seed, self.n));
        let next_stage = match journey.stage {
            Stage::Browse(left) => {
                e["anonymousId"] = json!(first);
                e["context"] = json!({"device": {"id": format!("dev-{who}-0")}});
                let path = PAGES[self.below(PAGES.len() as u64) as usize];
                e["type"] = json!("page");
                e["name"] = json!(path.trim_start_matches('/'));
                e["properties"] = json!({"path": path});
                match left {
                    0 | 1 if journey.visit == 0 && self.chance(70) => Some(Stage::Identify),
                    0 | 1 => None,
                    _ => Some(Stage::Browse(left - 1)),
                }
            }
            Stage::Identify => {
                e["anonymousId"] = json!(first);
                e["context"] = json!({"device": {"id": format!("dev-{who}-0")}});
                e["type"] = json!("identify");
                let mut traits = json!({"email": self.email(who)});
                if self.chance(50) {
                    traits["plan"] = json!(PLANS[self.below(PLANS.len() as u64) as usize]);
                }
                e["traits"] = traits;
                (has_account && self.chance(60)).then(|| Stage::LoggedIn(2 + self.below(8) as u8))
            }
            Stage::LoggedIn(left) => {
                e["anonymousId"] = json!(second);
                e["userId"] = json!(format!("u-{who}"));
                e["context"] = json!({"device": {"id": format!("dev-{who}-1")}});
                self.logged_in(&mut e, who, left);
                (left > 0).then(|| Stage::LoggedIn(left - 1))
            }
        };
        let next = next_stage.map(|stage| Journey { stage, ..journey });
        (e, next)
    }

    /// What a logged-in visitor does: identify on login, then shop, and set consent.
    fn logged_in(&mut self, e: &mut Value, who: u64, left: u8) {
        if left == 0 || self.chance(15) {
            e["type"] = json!("identify");
            e["traits"] = json!({"email": self.email(who)});
            return;
        }
        match self.below(10) {
            0..=3 => {
                e["type"] = json!("page");
                e["name"] = json!("pricing");
                e["properties"] = json!({"path": "/pricing"});
            }
            4..=7 => {
                let event = ["Product Added", "Checkout Started", "Order Completed"]
                    [self.below(3) as usize];
                e["type"] = json!("track");
                e["event"] = json!(event);
                e["properties"] = json!({"price": self.below(20_000) as f64 / 100.0});
            }
            _ => {
                e["type"] = json!("track");
                e["event"] = json!("Consent Updated");
                let prefs =
                    json!({"marketing": self.chance(70), "personalization": self.chance(80)});
                e["context"]["consent"] = json!({"categoryPreferences": prefs});
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(events: u64) -> Vec<Value> {
        let args = GenArgs {
            events,
            profiles: 2_000,
            seed: 3,
            adversarial: false,
            start_ms: 1_788_220_800_000,
            days: None,
            journeys: true,
        };
        let mut out = Vec::new();
        super::super::generate(&args, &mut out).unwrap();
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    /// The shape the module docs promise: duplicates near 2%, late deliveries near 5%,
    /// emails in variants, logins on a second device, people interleaved.
    #[test]
    fn journeys_have_the_promised_shape() {
        let events = lines(20_000);
        assert_eq!(events, lines(20_000), "reproducible");
        let mut seen = std::collections::HashSet::new();
        let (mut duplicates, mut late, mut clock) = (0, 0, 0);
        let (mut emails, mut logins) = (std::collections::HashSet::new(), 0);
        for e in &events {
            if !seen.insert(e["messageId"].as_str().unwrap().to_string()) {
                duplicates += 1;
                continue;
            }
            let t = crate::event::timestamp::parse(&e["timestamp"]).unwrap();
            if t < clock {
                late += 1;
            }
            clock = clock.max(t);
            if let Some(email) = e["traits"]["email"].as_str() {
                emails.insert(email.to_string());
            }
            if e["userId"].is_string() {
                assert!(e["anonymousId"].as_str().unwrap().ends_with("-1"));
                logins += 1;
            }
        }
        let share = |n: usize| n as f64 / events.len() as f64;
        assert!((0.01..0.03).contains(&share(duplicates)), "{duplicates}");
        assert!((0.03..0.07).contains(&share(late)), "{late}");
        assert!(share(logins) > 0.05, "{logins}");
        // one person's email in several spellings
        let variants = (0..2_000)
            .filter(|who| {
                let spelled: Vec<_> = emails
                    .iter()
                    .filter(|e| {
                        e.trim()
                            .eq_ignore_ascii_case(&format!("person{who}@example.org"))
                    })
                    .collect();
                spelled.len() > 1
            })
            .count();
        assert!(variants > 100, "{variants}");
        // thousands of visitors interleaved: the first 1,000 events come from many people
        let people: std::collections::HashSet<_> = events[..1_000]
            .iter()
            .filter_map(|e| e["anonymousId"].as_str())
            .collect();
        assert!(people.len() > 300, "{}", people.len());
    }
}
