//! `run`'s Kafka input ([`KafkaInput`]). Each record's value is one event line (SPEC
//! section 1; a trailing newline is dropped, a record with no value or a blank one is
//! skipped like a blank line). Its origin, in dead letters and explanations, is the source
//! `kafka://HOST/TOPIC#PARTITION` and the record's offset as the line number. Reading
//! starts at the group's committed offsets (the beginning where there are none).
//! - With `--until-end`, the end offsets are read at start and the partitions are read one
//!   after another, in partition order, each up to its end: the same input as the
//!   partitions' records concatenated in that order, so a replay is deterministic.
//! - Otherwise every partition is read as records arrive, until the run is stopped. Order
//!   is kept within a partition; across partitions it is the order records arrive in, as
//!   in every Kafka consumer: put one person's events in one partition (key them by user)
//!   when their order matters.
//!
//! `run` commits the group's offsets when it ends cleanly, after its outputs are written:
//! a run that is killed reads again from the last commit.

use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::{
    BATCH_RECORDS, BROKER_TIMEOUT, KafkaUrl, Reader, Said, Watching, explain, heard, start_offsets,
};
use crate::engine::input::{Batch, LineRef, Message};
use crate::event::MAX_LINE_BYTES;
use crate::io::source::is_blank;

/// How long `run` retries a read error before it gives up.
const READ_RETRY: Duration = Duration::from_secs(30);

/// Counts of what a Kafka input read, for the summary and `/metrics`.
#[derive(Debug, Default)]
pub struct InputStats {
    /// Records read, per partition.
    pub read: Mutex<BTreeMap<i32, u64>>,
    /// Consumer lag per partition at the last look (end offset − next offset).
    pub lag: Mutex<BTreeMap<i32, i64>>,
}

/// An opened Kafka input: the topic's partitions known, the start (and end) offsets read.
pub struct KafkaInput {
    url: KafkaUrl,
    /// Never closed: librdkafka's close waits for a broker that may be gone by then (the
    /// offsets are committed explicitly, and the process ends).
    consumer: ManuallyDrop<Reader>,
    /// (partition, first offset to read, end offset when reading to the end).
    plan: Vec<(i32, i64, Option<i64>)>,
    /// What was read.
    pub stats: Arc<InputStats>,
    /// The next offset of every partition read from, to commit at a clean end.
    next: BTreeMap<i32, i64>,
}

impl KafkaInput {
    /// Connects, finds the partitions and where to start reading each (and, with
    /// `until_end`, where to stop): a broker that cannot be reached, a missing topic or a
    /// refused login is an error here, before anything runs.
    pub fn open(url: &KafkaUrl, until_end: bool) -> Result<KafkaInput, String> {
        let group = url
            .group
            .clone()
            .unwrap_or_else(|| "throughline".to_string());
        let consumer: Reader = url
            .config()
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("allow.auto.create.topics", "false")
            .create_with_context(Watching::default())
            .map_err(|e| explain(url, &Said::default(), "configure the consumer", &e))?;
        let mut plan = Vec::new();
        for (id, start) in start_offsets(&consumer, url, &BTreeMap::new())? {
            let end = if until_end {
                let (_, high) = consumer
                    .fetch_watermarks(&url.topic, id, BROKER_TIMEOUT)
                    .map_err(|e| {
                        explain(
                            url,
                            heard(&consumer),
                            &format!("read partition {id}'s offsets"),
                            &e,
                        )
                    })?;
                Some(high)
            } else {
                None
            };
            plan.push((id, start, end));
        }
        Ok(KafkaInput {
            url: url.clone(),
            consumer: ManuallyDrop::new(consumer),
            plan,
            stats: Arc::new(InputStats::default()),
            next: BTreeMap::new(),
        })
    }

    /// The source names of the partitions, in partition order: `kafka://HOST/TOPIC#P`.
    pub fn names(&self) -> Vec<String> {
        self.plan
            .iter()
            .map(|(id, _, _)| format!("{}#{id}", self.url.name()))
            .collect()
    }

    /// Whether records may keep arriving (not reading to fixed end offsets).
    pub fn live(&self) -> bool {
        self.plan.iter().any(|(_, _, end)| end.is_none())
    }

    /// Reads the records and sends them as batches; partition `i` of the plan is source
    /// `first_source + i`. Returns false when the engine stopped listening.
    pub fn read(&mut self, first_source: u16, tx: &Sender<Message>) -> Result<bool, String> {
        let source_of = |i: usize| first_source.saturating_add(i as u16);
        if self.live() {
            let unassigned = |e: KafkaError| {
                explain(
                    &self.url,
                    heard(&self.consumer),
                    "assign the partitions",
                    &e,
                )
            };
            let mut all = TopicPartitionList::new();
            for (id, start, _) in &self.plan {
                all.add_partition_offset(&self.url.topic, *id, Offset::Offset(*start))
                    .map_err(unassigned)?;
            }
            self.consumer.assign(&all).map_err(unassigned)?;
            let index: BTreeMap<i32, u16> = self
                .plan
                .iter()
                .enumerate()
                .map(|(i, (id, _, _))| (*id, source_of(i)))
                .collect();
            return self.pump(&index, None, tx);
        }
        for i in 0..self.plan.len() {
            let (id, start, end) = self.plan[i];
            let end = end.unwrap_or(i64::MAX);
            if start >= end {
                continue;
            }
            let mut one = TopicPartitionList::new();
            one.add_partition_offset(&self.url.topic, id, Offset::Offset(start))
                .map_err(|e| explain(&self.url, heard(&self.consumer), "assign a partition", &e))?;
            self.consumer
                .assign(&one)
                .map_err(|e| explain(&self.url, heard(&self.consumer), "assign a partition", &e))?;
            let index = BTreeMap::from([(id, source_of(i))]);
            if !self.pump(&index, Some(end), tx)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Polls the assigned partitions, sending a batch whenever [`BATCH_RECORDS`] are
    /// waiting or the broker has nothing more at once; with `end`, stops once the (only)
    /// partition reached it.
    fn pump(
        &mut self,
        index: &BTreeMap<i32, u16>,
        end: Option<i64>,
        tx: &Sender<Message>,
    ) -> Result<bool, String> {
        let mut pending = Pending::default();
        let mut last_lag_check = Instant::now();
        // librdkafka reconnects by itself: an error is fatal only when it lasts
        let mut failing_since: Option<Instant> = None;
        loop {
            let polled = self
                .consumer
                .poll(Duration::from_millis(if pending.is_empty() {
                    100
                } else {
                    1
                }));
            let idle = polled.is_none();
            let mut reached_end = false;
            match polled {
                Some(Ok(record)) => {
                    let (id, offset) = (record.partition(), record.offset());
                    if let Some(source) = index.get(&id) {
                        pending.push(*source, offset, record.payload());
                    }
                    self.next.insert(id, offset + 1);
                    if let Ok(mut read) = self.stats.read.lock() {
                        *read.entry(id).or_insert(0) += 1;
                    }
                    reached_end = end.is_some_and(|e| offset + 1 >= e);
                    failing_since = None;
                }
                Some(Err(e)) => {
                    let why = explain(&self.url, heard(&self.consumer), "read records", &e);
                    match failing_since {
                        None => {
                            eprintln!("throughline: {why} (retrying for up to {READ_RETRY:?})");
                            failing_since = Some(Instant::now());
                        }
                        Some(since) if since.elapsed() > READ_RETRY => return Err(why),
                        Some(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
                // the end may lie past the last record consumers see (a transaction's
                // commit marker): done when the position got there
                None => reached_end = end.is_some_and(|e| self.position_reached(e)),
            }
            // what waits goes to the engine at once when the broker has nothing more
            let flush = reached_end || idle || pending.len() >= BATCH_RECORDS;
            if flush && !pending.is_empty() && tx.send(Message::Batch(pending.take())).is_err() {
                return Ok(false);
            }
            if reached_end {
                return Ok(true);
            }
            if last_lag_check.elapsed() > Duration::from_secs(1) {
                self.note_lag();
                last_lag_check = Instant::now();
            }
        }
    }

    /// Whether the consumer's position in its (one) assigned partition is at `end` or past.
    fn position_reached(&self, end: i64) -> bool {
        self.consumer.position().is_ok_and(|positions| {
            positions
                .elements()
                .iter()
                .any(|p| matches!(p.offset(), Offset::Offset(o) if o >= end))
        })
    }

    /// Records each partition's lag (its end offset − the next offset to read).
    fn note_lag(&self) {
        let Ok(mut lag) = self.stats.lag.lock() else {
            return;
        };
        for (id, start, _) in &self.plan {
            if let Ok((_, high)) =
                self.consumer
                    .fetch_watermarks(&self.url.topic, *id, Duration::from_secs(1))
            {
                let next = self.next.get(id).copied().unwrap_or(*start);
                lag.insert(*id, (high - next).max(0));
            }
        }
    }

    /// Commits the next offset of every partition read (after the run's outputs are
    /// written), so the group's next run starts after what this one read.
    pub fn commit(&self) -> Result<(), String> {
        if self.next.is_empty() {
            return Ok(());
        }
        let mut offsets = TopicPartitionList::new();
        for (id, next) in &self.next {
            offsets
                .add_partition_offset(&self.url.topic, *id, Offset::Offset(*next))
                .map_err(|e| explain(&self.url, heard(&self.consumer), "commit offsets", &e))?;
        }
        self.consumer
            .commit(&offsets, CommitMode::Sync)
            .map_err(|e| explain(&self.url, heard(&self.consumer), "commit offsets", &e))
    }

    /// One line for the run's summary: records read per partition and the lag left.
    pub fn summary(&self) -> String {
        self.note_lag();
        let read = self
            .stats
            .read
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let lag = self.stats.lag.lock().map(|l| l.clone()).unwrap_or_default();
        let per: Vec<String> = self
            .plan
            .iter()
            .map(|(id, _, _)| {
                format!(
                    "#{id} read {} lag {}",
                    read.get(id).copied().unwrap_or(0),
                    lag.get(id).copied().unwrap_or(0)
                )
            })
            .collect();
        format!("{}: {}", self.url.name(), per.join(", "))
    }
}

/// Records waiting to be sent to the engine as one batch.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    lines: Vec<LineRef>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    /// A record's value as a line of `source` numbered by its offset.
    fn push(&mut self, source: u16, offset: i64, value: Option<&[u8]>) {
        let value = value.unwrap_or_default();
        let value = value.strip_suffix(b"\n").unwrap_or(value);
        if is_blank(value) {
            return;
        }
        let number = u64::try_from(offset).unwrap_or(0);
        let start = self.buf.len();
        let too_long = value.len() > MAX_LINE_BYTES + 1;
        if !too_long {
            self.buf.extend_from_slice(value);
        }
        self.lines.push(LineRef {
            source,
            number,
            start,
            end: self.buf.len(),
            too_long: too_long.then_some(value.len() as u64),
            residue: false,
            cited_as: None,
        });
    }

    fn take(&mut self) -> Batch {
        let taken = std::mem::take(self);
        Batch {
            buf: taken.buf,
            lines: taken.lines,
            read_at: Instant::now(),
            wall_ms: None,
            ahead: Vec::new(),
            boundary: crate::engine::input::Boundary::Any,
        }
    }
}
