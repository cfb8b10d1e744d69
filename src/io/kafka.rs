//! Kafka in, with librdkafka (the `rdkafka` crate, as Materialize uses it).
//!
//! Addresses read like the other inputs and outputs:
//! `kafka://HOST:PORT[,HOST:PORT…]/TOPIC[?group=G&SETTING=VALUE…]`. Every query
//! parameter but `group` is passed to librdkafka as it is, so SASL and TLS are configured
//! the way librdkafka documents them (`security.protocol=SASL_SSL&sasl.mechanism=PLAIN&
//! sasl.username=…`).
//!
//! **Input** ([`KafkaInput`]). Each record's value is one event line (SPEC section 1; a
//! trailing newline is dropped, a record with no value or a blank one is skipped like a
//! blank line). Its origin, in dead letters and explanations, is the source
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
//!
//! **Output**: the change topic and the upsert topics are sinks, in
//! [`crate::io::sink::kafka`].

use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::engine::input::{Batch, LineRef, Message};
use crate::event::MAX_LINE_BYTES;
use crate::io::source::is_blank;
use crate::store::log::{Log, Origin, Record};

/// How long to wait for the broker's answer to a metadata or offsets request.
pub(crate) const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `run` retries a read error before it gives up.
const READ_RETRY: Duration = Duration::from_secs(30);
/// Most records in one batch handed to the engine.
const BATCH_RECORDS: usize = 4096;

/// A parsed `kafka://` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaUrl {
    /// `HOST:PORT[,HOST:PORT…]`.
    pub brokers: String,
    /// The topic (or, for the upsert form, the prefix of the per-view topics).
    pub topic: String,
    /// The consumer group (`group=`).
    pub group: Option<String>,
    /// Every other query parameter, for librdkafka.
    pub settings: Vec<(String, String)>,
}

impl KafkaUrl {
    /// Whether `text` is meant as a Kafka address.
    pub fn is_kafka(text: &str) -> bool {
        text.starts_with("kafka://")
    }

    /// An output option (`-o`, `--sink`) as a Kafka address, when it is one.
    pub fn in_path(path: Option<&Path>) -> Option<&str> {
        path.and_then(|p| p.to_str())
            .filter(|p| KafkaUrl::is_kafka(p))
    }

    /// Parses `kafka://HOST:PORT/TOPIC[?k=v&…]`.
    pub fn parse(text: &str) -> Result<KafkaUrl, String> {
        let bad = |why: &str| format!("{text}: {why} (expected kafka://HOST:PORT/TOPIC[?group=G])");
        let rest = text
            .strip_prefix("kafka://")
            .ok_or_else(|| bad("not a kafka:// address"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (brokers, topic) = path.split_once('/').ok_or_else(|| bad("no topic"))?;
        if brokers.is_empty() {
            return Err(bad("no broker"));
        }
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) {
            return Err(bad("a topic name is 1 to 249 of [a-zA-Z0-9._-]"));
        }
        let mut url = KafkaUrl {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            group: None,
            settings: Vec::new(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad("a setting without `=`"))?;
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| bad("a setting that is not UTF-8"))?
                .into_owned();
            if key == "group" {
                url.group = Some(value);
            } else {
                url.settings.push((key.to_string(), value));
            }
        }
        Ok(url)
    }

    /// The address without its settings (they may hold secrets): for names and messages.
    pub fn name(&self) -> String {
        format!("kafka://{}/{}", self.brokers, self.topic)
    }

    pub(crate) fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        // librdkafka's warnings reach [`Said`] (the default follows the `log` crate, unused
        // here, and would silence them)
        config.set_log_level(RDKafkaLogLevel::Warning);
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        config
    }
}

/// What librdkafka last reported about its connections through its error callback (a
/// refused login, a failed TLS handshake, a refused connection), kept so that a failure
/// message can say why and not only that a request timed out.
#[derive(Clone, Debug, Default)]
pub struct Said(Arc<Mutex<Option<String>>>);

impl Said {
    pub(crate) fn note(&self, error: &KafkaError, reason: &str) {
        if let Ok(mut last) = self.0.lock() {
            *last = Some(if reason.is_empty() {
                error.to_string()
            } else {
                reason.to_string()
            });
        }
    }

    /// A log line from librdkafka's own threads (served without polling, unlike errors):
    /// warnings and worse are kept.
    pub(crate) fn log(&self, level: RDKafkaLogLevel, message: &str) {
        if (level as i32) <= (RDKafkaLogLevel::Warning as i32)
            && let Ok(mut last) = self.0.lock()
        {
            *last = Some(message.to_string());
        }
    }

    fn last(&self) -> Option<String> {
        self.0.lock().ok().and_then(|last| last.clone())
    }
}

/// A consumer's context: keeps what librdkafka [`Said`].
#[derive(Clone, Default)]
pub struct Watching(Said);

impl ClientContext for Watching {
    fn log(&self, level: RDKafkaLogLevel, _facility: &str, message: &str) {
        self.0.log(level, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.note(&error, reason);
    }
}

impl ConsumerContext for Watching {}

/// A consumer that keeps what librdkafka said.
type Reader = BaseConsumer<Watching>;

/// What librdkafka said to `consumer` so far. Its log lines wait in the consumer's queue
/// until a poll serves them: one is served here when no partition is assigned (so no
/// record can be taken and lost by it).
fn heard(consumer: &Reader) -> &Said {
    if consumer.assignment().is_ok_and(|a| a.count() == 0) {
        let _ = consumer.poll(Duration::ZERO);
    }
    &consumer.context().0
}

/// A one-line message for a Kafka error, with what was being done and where, and what
/// librdkafka last said about the connection when that tells more than the error.
pub(crate) fn explain(url: &KafkaUrl, said: &Said, doing: &str, e: &KafkaError) -> String {
    let told = said
        .last()
        .filter(|why| !e.to_string().contains(why.as_str()));
    let told = told.map_or_else(String::new, |why| format!("; librdkafka said: {why}"));
    let hint = match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::RequestTimedOut,
        ) => " (is a broker running there?)",
        Some(
            RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed,
        ) => " (check the sasl.*/ssl.* settings)",
        _ => "",
    };
    // a transport failure that is really a refused login or handshake: say that instead
    let hint = match said.last() {
        Some(why) if is_auth_failure(&why) => " (check the sasl.*/ssl.* settings)",
        _ => hint,
    };
    format!("{}: cannot {doing}: {e}{told}{hint}", url.name())
}

/// Whether what librdkafka said is a failed login or TLS handshake.
fn is_auth_failure(said: &str) -> bool {
    let said = said.to_ascii_lowercase();
    ["sasl", "ssl", "authentic", "handshake", "certificate"]
        .iter()
        .any(|w| said.contains(w))
}

/// A topic's partitions as the broker sees them, or why it cannot say.
fn partitions(consumer: &Reader, url: &KafkaUrl) -> Result<Vec<i32>, String> {
    let metadata = consumer
        .fetch_metadata(Some(&url.topic), BROKER_TIMEOUT)
        .map_err(|e| explain(url, heard(consumer), "read the topic's metadata", &e))?;
    let topic = metadata
        .topics()
        .iter()
        .find(|t| t.name() == url.topic)
        .ok_or_else(|| format!("{}: the broker did not describe the topic", url.name()))?;
    if let Some(e) = topic.error() {
        let code = RDKafkaErrorCode::from(e);
        return Err(match code {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                format!("{}: no such topic", url.name())
            }
            _ => format!("{}: {code}", url.name()),
        });
    }
    let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(format!("{}: the topic has no partitions", url.name()));
    }
    Ok(ids)
}

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

/// Each partition's first offset: `resume`, else the group's committed offset, else the
/// earliest one kept.
fn start_offsets(
    consumer: &Reader,
    url: &KafkaUrl,
    resume: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, i64>, String> {
    let ids = partitions(consumer, url)?;
    let mut wanted = TopicPartitionList::new();
    for id in &ids {
        wanted.add_partition(&url.topic, *id);
    }
    let committed = consumer
        .committed_offsets(wanted, BROKER_TIMEOUT)
        .map_err(|e| {
            explain(
                url,
                heard(consumer),
                "read the group's committed offsets",
                &e,
            )
        })?;
    let mut next = BTreeMap::new();
    for id in ids {
        let (low, _) = consumer
            .fetch_watermarks(&url.topic, id, BROKER_TIMEOUT)
            .map_err(|e| {
                explain(
                    url,
                    heard(consumer),
                    &format!("read partition {id}'s offsets"),
                    &e,
                )
            })?;
        let start = match (
            resume.get(&id),
            committed.find_partition(&url.topic, id).map(|p| p.offset()),
        ) {
            (Some(logged), _) => *logged,
            (None, Some(Offset::Offset(o))) => o,
            _ => low,
        };
        next.insert(id, start.max(low));
    }
    Ok(next)
}

fn commit_async(consumer: &Reader, url: &KafkaUrl, next: &BTreeMap<i32, i64>) {
    let mut offsets = TopicPartitionList::new();
    for (id, offset) in next {
        let _ = offsets.add_partition_offset(&url.topic, *id, Offset::Offset(*offset));
    }
    let _ = consumer.commit(&offsets, CommitMode::Async);
}

fn note_lag(
    consumer: &Reader,
    url: &KafkaUrl,
    next: &BTreeMap<i32, i64>,
    lag: &Mutex<BTreeMap<i32, i64>>,
) {
    let Ok(mut lag) = lag.lock() else {
        return;
    };
    for (id, offset) in next {
        if let Ok((_, high)) = consumer.fetch_watermarks(&url.topic, *id, Duration::from_secs(1)) {
            lag.insert(*id, (high - offset).max(0));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_group_and_settings() {
        let url = KafkaUrl::parse(
            "kafka://a:9092,b:9092/events?group=g1&security.protocol=SASL_SSL&sasl.password=p%26w",
        )
        .unwrap();
        assert_eq!(url.brokers, "a:9092,b:9092");
        assert_eq!(url.topic, "events");
        assert_eq!(url.group.as_deref(), Some("g1"));
        assert_eq!(
            url.settings,
            vec![
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
                ("sasl.password".to_string(), "p&w".to_string())
            ]
        );
        assert_eq!(url.name(), "kafka://a:9092,b:9092/events");
        for bad in [
            "kafka://",
            "kafka://host:1",
            "kafka://host:1/",
            "kafka:///t",
            "kafka://h/t?x",
            "kafka://h/bad topic",
            "file:///x",
        ] {
            assert!(KafkaUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
