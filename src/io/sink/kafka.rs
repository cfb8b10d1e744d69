//! Kafka destinations (librdkafka, as Materialize uses it): the change stream to a topic,
//! and each view's rows to upsert topics.
//!
//! - **Changes** ([`Form::Changes`]): one record per change, its value the change line of
//!   SPEC section 7, its key `VIEW/KEY` (view names hold no `/`), so one profile's changes
//!   stay in order in one partition.
//! - **Upsert** ([`Form::Upsert`]): one topic per view, `TOPIC.VIEW`, keyed by the profile
//!   key, whose value is the row, or a tombstone (no value) when the row leaves the view —
//!   create those topics with `cleanup.policy=compact`.
//!
//! Each published group is written as it comes, so a change reaches its topic within
//! milliseconds of the views (on live input the latest engine time may come in several
//! groups, each consolidated, as SPEC section 7 allows; an upsert topic needs nothing more,
//! since a later record for a key replaces the earlier one). One request in flight per
//! connection, `acks=all`: retries cannot reorder a key's records. Records wait in
//! librdkafka's queue, retried, for as long as the broker is away (`message.timeout.ms=0`);
//! a record the broker refuses for good (too large, a missing topic) is counted and named,
//! and is never confirmed.
//!
//! Every record carries two headers, `throughline-position` (its group's position) and
//! `throughline-index` (its place in the group). A record sent again after a crash is
//! identical, headers included; a consumer that must apply each change once drops a
//! second (position, index). (The change itself may repeat legitimately: on live input a
//! row can leave and come back within one engine time, in two groups.)

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use super::{Destination, Group, Progress};
use crate::engine::output::Change;
use crate::io::kafka::{BROKER_TIMEOUT, KafkaUrl, Said, explain};

/// What a Kafka destination writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The change stream to the topic, one record per change keyed `VIEW/KEY`.
    Changes,
    /// Each view's rows to `TOPIC.VIEW`, keyed by profile key; a tombstone when a row
    /// leaves.
    Upsert,
}

/// The header holding a record's group position ([`Group::position`]): with
/// [`INDEX_HEADER`], it names the record exactly, so a consumer that must not apply a
/// record sent again after a crash drops a second (position, index).
pub const POSITION_HEADER: &str = "throughline-position";
/// The header holding a record's place in its group (from 0).
pub const INDEX_HEADER: &str = "throughline-index";

/// The most records waiting in librdkafka's queue; past it, the sink's own queue holds
/// the changes (and counts them in its backlog).
const QUEUED_RECORDS: usize = 500_000;

/// The groups handed to the producer and not yet confirmed, in order.
#[derive(Default)]
struct Tracker {
    groups: VecDeque<Sent>,
    /// Every group up to this position is confirmed.
    confirmed: u64,
    /// Records confirmed.
    written: u64,
    /// Records not confirmed now.
    unconfirmed: u64,
    /// The first record refused, in a line.
    refused: Option<String>,
    /// Records refused.
    refusals: u64,
}

struct Sent {
    seq: u64,
    position: u64,
    remaining: u64,
    at: Instant,
    refused: bool,
}

impl Tracker {
    fn confirm(&mut self, seq: u64, result: Result<(), String>) {
        let Some(front) = self.groups.front().map(|g| g.seq) else {
            return;
        };
        let Some(group) = seq
            .checked_sub(front)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.groups.get_mut(i))
        else {
            return;
        };
        group.remaining = group.remaining.saturating_sub(1);
        self.unconfirmed = self.unconfirmed.saturating_sub(1);
        match result {
            Ok(()) => self.written += 1,
            Err(why) => {
                group.refused = true;
                self.refusals += 1;
                self.refused.get_or_insert(why);
            }
        }
        self.pop_confirmed();
    }

    /// Drops the groups at the front that are wholly confirmed, moving the position.
    fn pop_confirmed(&mut self) {
        while let Some(first) = self.groups.front()
            && first.remaining == 0
            && !first.refused
        {
            self.confirmed = first.position;
            self.groups.pop_front();
        }
    }
}

/// The producer's context: keeps what librdkafka said and confirms each record's group.
#[derive(Clone, Default)]
struct Tracking(Arc<Mutex<Tracker>>, Said);

impl ClientContext for Tracking {
    fn log(&self, level: RDKafkaLogLevel, _facility: &str, message: &str) {
        self.1.log(level, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.1.note(&error, reason);
    }
}

impl ProducerContext for Tracking {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: Box<u64>) {
        let outcome = match result {
            Ok(_) => Ok(()),
            Err((e, record)) => {
                let key = record
                    .key()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                Err(unwritten(record.topic(), &key, e))
            }
        };
        if let Ok(mut tracker) = self.0.lock() {
            tracker.confirm(*seq, outcome);
        }
    }
}

/// Why the record to `topic` keyed `key` was not written, in one line.
fn unwritten(topic: &str, key: &str, e: &KafkaError) -> String {
    let hint = match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => {
            " (raise message.max.bytes in the address, and the topic's max.message.bytes)"
        }
        _ => "",
    };
    format!("topic {topic}, key {key}: {e}{hint}")
}

/// A Kafka topic (or set of upsert topics) as a sink's destination.
pub struct KafkaDestination {
    url: KafkaUrl,
    form: Form,
    producer: ThreadedProducer<Tracking>,
    tracker: Arc<Mutex<Tracker>>,
    next_seq: u64,
    /// What librdkafka said about its connections.
    said: Said,
    /// A server's sink: what is not confirmed at the end is sent again after the restart.
    resumable: bool,
}

impl KafkaDestination {
    /// Connects: an unreachable broker is an error here (`run` fails before reading
    /// anything); see [`KafkaDestination::open_waiting`] for a server.
    pub fn open(url: &KafkaUrl, form: Form) -> Result<KafkaDestination, String> {
        let mut destination = KafkaDestination::configure(url, form)?;
        destination.reachable(BROKER_TIMEOUT)?;
        destination.resumable = false;
        Ok(destination)
    }

    /// For a server's sink: configures the producer without waiting for the broker, which
    /// may be away when the server starts (its records wait, the sink counts them and
    /// `/healthz` says it is not delivering); what is sent again after a restart is not an
    /// error at the end ([`Destination::finish`]). A broker that does not answer within 2 s
    /// is said on stderr; the sink delivers once it does.
    pub fn open_waiting(url: &KafkaUrl, form: Form) -> Result<KafkaDestination, String> {
        let destination = KafkaDestination::configure(url, form)?;
        if let Err(why) = destination.reachable(Duration::from_secs(2)) {
            eprintln!("throughline: {why}; the sink delivers once it answers");
        }
        Ok(destination)
    }

    /// The producer, configured; nothing is sent yet.
    fn configure(url: &KafkaUrl, form: Form) -> Result<KafkaDestination, String> {
        let context = Tracking::default();
        let said = context.1.clone();
        let tracker = Arc::clone(&context.0);
        let producer: ThreadedProducer<Tracking> = url
            .config()
            .set("acks", "all")
            // one request in flight per connection: retries cannot reorder a key's records
            .set("max.in.flight.requests.per.connection", "1")
            .set("linger.ms", "2")
            // records wait for a broker that is away for as long as it takes: the sink
            // counts them in its backlog, and the server stops taking input past its bound
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.messages", QUEUED_RECORDS.to_string())
            .create_with_context(context)
            .map_err(|e| explain(url, &said, "configure the producer", &e))?;
        Ok(KafkaDestination {
            url: url.clone(),
            form,
            producer,
            tracker,
            said,
            next_seq: 0,
            resumable: true,
        })
    }

    /// Whether the broker answers a metadata request within `patience`, or why not.
    pub fn reachable(&self, patience: Duration) -> Result<(), String> {
        self.producer
            .client()
            .fetch_metadata(None, patience)
            .map(|_| ())
            .map_err(|e| explain(&self.url, &self.said, "reach the broker", &e))
    }

    /// The records of one group: (topic, key, value) — one per change, or in the upsert
    /// form one per (time, view, key), its value the insertion's row or a tombstone.
    fn records(&self, changes: &[Change]) -> Vec<(String, String, Option<String>)> {
        if self.form == Form::Changes {
            return changes
                .iter()
                .map(|c| {
                    (
                        self.url.topic.clone(),
                        format!("{}/{}", c.view, c.key),
                        Some(c.json()),
                    )
                })
                .collect();
        }
        let mut latest: BTreeMap<(u64, &str, &str), Option<&str>> = BTreeMap::new();
        for c in changes {
            let slot = latest
                .entry((c.time, c.view.as_str(), c.key.as_str()))
                .or_insert(None);
            if c.diff > 0 {
                *slot = Some(c.row.as_str());
            }
        }
        latest
            .into_iter()
            .map(|((_, view, key), row)| {
                (
                    format!("{}.{view}", self.url.topic),
                    key.to_string(),
                    row.map(str::to_string),
                )
            })
            .collect()
    }

    /// Sends one group's records; false (nothing sent) when librdkafka's queue has no room.
    fn send(&mut self, group: &Group) -> bool {
        let records = self.records(&group.changes);
        let waiting = usize::try_from(self.producer.in_flight_count()).unwrap_or(0);
        if waiting > 0 && waiting + records.len() > QUEUED_RECORDS {
            return false;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Ok(mut tracker) = self.tracker.lock() {
            tracker.unconfirmed += records.len() as u64;
            tracker.groups.push_back(Sent {
                seq,
                position: group.position,
                remaining: records.len() as u64,
                at: Instant::now(),
                refused: false,
            });
            tracker.pop_confirmed(); // an empty group only moves the position
        }
        for (index, (topic, key, value)) in records.iter().enumerate() {
            let (position, index) = (group.position.to_string(), index.to_string());
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: POSITION_HEADER,
                    value: Some(&position),
                })
                .insert(Header {
                    key: INDEX_HEADER,
                    value: Some(&index),
                });
            let mut record = BaseRecord::with_opaque_to(topic, Box::new(seq))
                .key(key.as_str())
                .headers(headers);
            if let Some(v) = value {
                record = record.payload(v.as_str());
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    // a group larger than the room left: wait for room, here on the sink's
                    // own thread
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => {
                        if let Ok(mut tracker) = self.tracker.lock() {
                            tracker.confirm(seq, Err(unwritten(topic, key, &e)));
                        }
                        break;
                    }
                }
            }
        }
        true
    }

    fn what(&self) -> &'static str {
        match self.form {
            Form::Changes => "change",
            Form::Upsert => "upsert",
        }
    }
}

impl Destination for KafkaDestination {
    fn deliver(&mut self, groups: &[Group]) -> Result<usize, String> {
        for (taken, group) in groups.iter().enumerate() {
            if !self.send(group) {
                return Ok(taken);
            }
        }
        Ok(groups.len())
    }

    fn progress(&mut self) -> Progress {
        let Ok(tracker) = self.tracker.lock() else {
            return Progress::default();
        };
        Progress {
            confirmed: tracker.confirmed,
            extra: 0,
            delivered: tracker.written,
            unconfirmed: tracker.unconfirmed,
            oldest: tracker.groups.front().map(|g| g.at),
            refused: tracker.refused.clone(),
            refusals: tracker.refusals,
        }
    }

    fn sends_again(&self) -> bool {
        true
    }

    fn finish(&mut self, patience: Duration) -> Result<String, String> {
        let _ = self.producer.flush(patience);
        let Ok(tracker) = self.tracker.lock() else {
            return Err(format!(
                "{}: the sink's records are unknown",
                self.url.name()
            ));
        };
        let what = self.what();
        if let Some(first) = &tracker.refused {
            return Err(format!(
                "{}: {what} records could not be written (first: {first})",
                self.url.name()
            ));
        }
        if tracker.unconfirmed > 0 && self.resumable {
            return Ok(format!(
                "{}: wrote {} {what} records; {} not confirmed yet are sent again after the restart",
                self.url.name(),
                tracker.written,
                tracker.unconfirmed
            ));
        }
        if tracker.unconfirmed > 0 {
            return Err(format!(
                "{}: {} {what} records not confirmed by the broker within {patience:?}",
                self.url.name(),
                tracker.unconfirmed
            ));
        }
        Ok(format!(
            "{}: wrote {} {what} records",
            self.url.name(),
            tracker.written
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Groups are confirmed in order, each once every record of it (and of every group
    /// before it) is; a refused record stops the confirmed position for good.
    #[test]
    fn groups_confirm_in_order_and_a_refusal_stops_them() {
        let mut t = Tracker::default();
        for (seq, (position, remaining)) in
            [(10, 2), (11, 0), (14, 1), (20, 1)].into_iter().enumerate()
        {
            t.groups.push_back(Sent {
                seq: seq as u64,
                position,
                remaining,
                at: Instant::now(),
                refused: false,
            });
        }
        t.confirm(2, Ok(()));
        assert_eq!(t.confirmed, 0, "group 2 waits for group 0");
        t.confirm(0, Ok(()));
        t.confirm(0, Ok(()));
        assert_eq!(t.confirmed, 14);
        t.confirm(3, Err("too large".into()));
        t.confirm(7, Ok(())); // unknown: ignored
        assert_eq!((t.confirmed, t.refused.as_deref()), (14, Some("too large")));
        assert_eq!(t.written, 3);
    }
}
