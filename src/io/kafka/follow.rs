//! `serve --source`: a Kafka topic followed into the event log ([`follow`]).

use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::{
    BATCH_RECORDS, KafkaUrl, Reader, Said, Watching, explain, heard, note_lag, start_offsets,
};
use crate::io::source::is_blank;
use crate::store::log::{Log, Origin, Record};

/// What `serve --source` is doing, for `/healthz` and `/metrics`.
#[derive(Debug, Default)]
pub struct FollowStatus {
    /// The topic's address (without settings).
    pub name: String,
    /// Records logged.
    pub logged: AtomicU64,
    /// Errors met (each retried).
    pub errors: AtomicU64,
    /// The error being retried now, if any (cleared once records flow again).
    pub failing: Mutex<Option<String>>,
    /// Consumer lag per partition at the last look.
    pub lag: Mutex<BTreeMap<i32, i64>>,
}

impl FollowStatus {
    /// Records an error; stderr hears of the first of a run of them.
    fn failed(&self, why: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.failing.lock() {
            if f.is_none() {
                eprintln!("throughline: {why} (retrying)");
            }
            *f = Some(why);
        }
    }

    fn recovered(&self) {
        if let Ok(mut f) = self.failing.lock()
            && f.take().is_some()
        {
            eprintln!("throughline: {}: reading again", self.name);
        }
    }
}

/// `serve --source`: follows the topic until `stop`, appending its records to `log` with
/// their partition and offset ([`Origin`]), each batch acknowledged once fsynced. Reading
/// resumes at `resume` (one past the last record of each partition the log holds), else
/// at the group's committed offsets, else at the beginning; the group's offsets are
/// committed after each logged batch (for tools that watch the group: the log, not the
/// group, decides where to resume). A broker that is down, at start or later, is retried
/// with a growing pause (at most 5 s) and reported in `status`; a log that refuses writes
/// (a full disk) is retried with the same records, and one that stopped for good
/// (fail-stop) ends the reading. While `paused()` holds (a sink has all it may buffer),
/// no record is read.
pub fn follow(
    url: &KafkaUrl,
    resume: &BTreeMap<i32, i64>,
    log: &Log,
    status: &FollowStatus,
    stop: &AtomicBool,
    paused: &dyn Fn() -> bool,
) {
    let mut retry = Backoff::new(stop);
    let group = url
        .group
        .clone()
        .unwrap_or_else(|| "throughline".to_string());
    let consumer: Reader = match url
        .config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        .create_with_context(Watching::default())
    {
        Ok(c) => c,
        Err(e) => {
            return status.failed(explain(url, &Said::default(), "configure the consumer", &e));
        }
    };
    // never closed: librdkafka's close waits for a broker that may be gone, and this runs
    // until the server exits
    let consumer = ManuallyDrop::new(consumer);
    // where each partition starts
    let next: BTreeMap<i32, i64> = loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match start_offsets(&consumer, url, resume) {
            Ok(next) => break next,
            Err(why) => retry.wait(status, why),
        }
    };
    let mut assignment = TopicPartitionList::new();
    for (id, offset) in &next {
        if let Err(e) = assignment.add_partition_offset(&url.topic, *id, Offset::Offset(*offset)) {
            return status.failed(explain(url, heard(&consumer), "assign the partitions", &e));
        }
    }
    if let Err(e) = consumer.assign(&assignment) {
        return status.failed(explain(url, heard(&consumer), "assign the partitions", &e));
    }
    status.recovered();
    let mut next = next;
    note_lag(&consumer, url, &next, &status.lag);
    let mut pending: Vec<Record> = Vec::new();
    let mut last_lag = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if pending.is_empty() && paused() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let polled = consumer.poll(Duration::from_millis(if pending.is_empty() {
            100
        } else {
            2
        }));
        let idle = polled.is_none();
        match polled {
            Some(Ok(record)) => {
                status.recovered();
                let origin = Origin {
                    partition: record.partition(),
                    offset: record.offset(),
                };
                let value = record.payload().unwrap_or_default();
                let value = value.strip_suffix(b"\n").unwrap_or(value);
                if !is_blank(value) {
                    let mut logged =
                        Record::received(crate::engine::wall_clock_ms(), value.to_vec());
                    logged.origin = Some(origin);
                    pending.push(logged);
                }
                next.insert(origin.partition, origin.offset + 1);
            }
            // librdkafka reconnects by itself: say so, and keep polling (records may
            // already be waiting behind the error)
            Some(Err(e)) => {
                status.failed(explain(url, heard(&consumer), "read records", &e));
                std::thread::sleep(Duration::from_millis(20));
            }
            None => {}
        }
        if !pending.is_empty() && (idle || pending.len() >= BATCH_RECORDS) {
            loop {
                match log.append(pending.clone()) {
                    Ok(()) => break,
                    Err(_) if log.failed().is_some() => {
                        return status.failed(format!(
                            "{}: the log stopped; no more records are read",
                            url.name()
                        ));
                    }
                    Err(e) => {
                        retry.wait(status, format!("{}: cannot log records: {e}", url.name()));
                    }
                }
                if stop.load(Ordering::SeqCst) {
                    return; // not logged: read again after the restart
                }
            }
            status
                .logged
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            pending.clear();
            status.recovered();
            retry.reset();
            commit_async(&consumer, url, &next);
        }
        if last_lag.elapsed() > Duration::from_secs(1) {
            note_lag(&consumer, url, &next, &status.lag);
            last_lag = Instant::now();
        }
    }
}

fn commit_async(consumer: &Reader, url: &KafkaUrl, next: &BTreeMap<i32, i64>) {
    let mut offsets = TopicPartitionList::new();
    for (id, offset) in next {
        let _ = offsets.add_partition_offset(&url.topic, *id, Offset::Offset(*offset));
    }
    let _ = consumer.commit(&offsets, CommitMode::Async);
}

/// A pause that doubles at each failure in a row (from 250 ms to at most 5 s).
struct Backoff<'a> {
    pause: Duration,
    stop: &'a AtomicBool,
}

impl<'a> Backoff<'a> {
    fn new(stop: &'a AtomicBool) -> Backoff<'a> {
        Backoff {
            pause: Duration::from_millis(250),
            stop,
        }
    }

    /// Reports `why` and sleeps the pause (waking early when stopped).
    fn wait(&mut self, status: &FollowStatus, why: String) {
        status.failed(why);
        let until = Instant::now() + self.pause;
        while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.pause = (self.pause * 2).min(Duration::from_secs(5));
    }

    fn reset(&mut self) {
        self.pause = Duration::from_millis(250);
    }
}
