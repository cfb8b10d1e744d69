//! Kafka in, with librdkafka (the `rdkafka` crate, as Materialize uses it): the address
//! and the client's shared parts here, `run`'s input in [`input`], `serve --source`'s
//! follower in [`mod@follow`]; the change and upsert topics are sinks, in
//! [`crate::io::sink::kafka`].
//!
//! Addresses read like the other inputs and outputs:
//! `kafka://HOST:PORT[,HOST:PORT…]/TOPIC[?group=G&SETTING=VALUE…]`. Every query
//! parameter but `group` is passed to librdkafka as it is, so SASL and TLS are configured
//! the way librdkafka documents them (`security.protocol=SASL_SSL&sasl.mechanism=PLAIN&
//! sasl.username=…`).

pub mod follow;
pub mod input;

pub use follow::{FollowStatus, follow};
pub use input::{InputStats, KafkaInput};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// How long to wait for the broker's answer to a metadata or offsets request.
pub(crate) const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
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
