//! The dead letters: messages set aside in the topic `N_qtasks_dead` (one partition), with
//! the reason in a header. Kafka cannot take one message out of a topic, so a letter that an
//! operator resolves is noted in the global config, and the listing leaves it out.

use std::time::Duration;

use qtasks_core::backend::BackendError;
use qtasks_core::stats::DeadLetter;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::wire;

/// The global config's entry of the resolved letters (their offsets).
pub(crate) const RESOLVED_ENTRY: &str = "qtasks_kafka_resolved";

/// How long a read of the dead-letter topic may take.
const READ_WITHIN: Duration = Duration::from_secs(10);

/// A letter as read back: its offset, value and headers, and when it was set aside.
pub(crate) struct Letter {
    pub(crate) offset: i64,
    pub(crate) value: Vec<u8>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) at: f64,
}

impl Letter {
    /// The letter as the app shows it.
    pub(crate) fn shown(&self) -> DeadLetter {
        let reason = wire::header(&self.headers, wire::REASON_HEADER)
            .map(|reason| String::from_utf8_lossy(reason).into_owned())
            .unwrap_or_default();
        DeadLetter::new(
            self.offset.to_string(),
            String::from_utf8_lossy(&self.value).into_owned(),
            reason,
            self.at,
        )
    }
}

/// Reads the letters of `topic` from offset `from` (its first letter when `None`) up to its
/// end, or up to `limit` of them that `keep` keeps; on a thread of its own (librdkafka's
/// calls block).
pub(crate) async fn read(
    servers: &str,
    topic: &str,
    from: Option<i64>,
    limit: usize,
    keep: impl Fn(i64) -> bool + Send + 'static,
) -> Result<Vec<Letter>, BackendError> {
    let (servers, topic) = (servers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_blocking(&servers, &topic, from, limit, keep))
        .await
        .map_err(|e| BackendError::new("kafka", "reading the dead letters failed").with_source(e))?
}

fn read_blocking(
    servers: &str,
    topic: &str,
    from: Option<i64>,
    limit: usize,
    keep: impl Fn(i64) -> bool,
) -> Result<Vec<Letter>, BackendError> {
    let failed = |e: rdkafka::error::KafkaError| {
        BackendError::new(
            "kafka",
            format!("reading the dead letters in `{topic}` failed"),
        )
        .with_source(e)
    };
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers)
        .set(
            "group.id",
            format!("qtasks-dead-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(failed)?;
    let (low, high) = reader
        .fetch_watermarks(topic, 0, READ_WITHIN)
        .map_err(failed)?;
    let start = from.unwrap_or(low).max(low);
    if start >= high || limit == 0 {
        return Ok(Vec::new());
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Offset(start))
        .map_err(failed)?;
    reader.assign(&list).map_err(failed)?;
    let deadline = std::time::Instant::now() + READ_WITHIN;
    let mut letters = Vec::new();
    while letters.len() < limit && std::time::Instant::now() < deadline {
        let Some(message) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.map_err(failed)?;
        let offset = message.offset();
        if keep(offset) {
            letters.push(Letter {
                offset,
                value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers: wire::headers_of(&message),
                at: message.timestamp().to_millis().unwrap_or(0) as f64 / 1000.0,
            });
        }
        if offset + 1 >= high || from.is_some() {
            break;
        }
    }
    Ok(letters)
}

/// How many letters the topic holds (resolved ones included).
pub(crate) async fn count(servers: &str, topic: &str) -> Result<u64, BackendError> {
    let (servers, topic) = (servers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &servers)
            .create()
            .map_err(|e| BackendError::new("kafka", "creating a client failed").with_source(e))?;
        let (low, high) = reader
            .fetch_watermarks(&topic, 0, READ_WITHIN)
            .map_err(|e| {
                BackendError::new(
                    "kafka",
                    format!("counting the dead letters in `{topic}` failed"),
                )
                .with_source(e)
            })?;
        Ok(u64::try_from(high.saturating_sub(low)).unwrap_or(0))
    })
    .await
    .map_err(|e| BackendError::new("kafka", "counting the dead letters failed").with_source(e))?
}
