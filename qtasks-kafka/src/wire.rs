//! What travels through Kafka: the topic and group names, the message value (Python QTasks'
//! `name:uuid:priority`) and the headers qtasks adds beside it.

use qtasks_core::QueuedTask;
use uuid::Uuid;

/// The header that carries the whole task as JSON (qtasks' own producers set it), so a take
/// needs no read of the record; a message without it (the original's producer) is completed
/// from the record.
pub(crate) const TASK_HEADER: &str = "qtasks-task";

/// The largest task (as JSON) sent in its [`TASK_HEADER`]; a larger one's message is the
/// original's value alone.
pub(crate) const LARGEST_TASK_HEADER: usize = 64 * 1024;

/// The header that counts the deliveries of the attempt that ended with their worker: a copy
/// of the message carries it, since Kafka never changes a message it has stored.
pub(crate) const DELIVERIES_HEADER: &str = "qtasks-deliveries";

/// The header of a dead letter that says why it could not run.
pub(crate) const REASON_HEADER: &str = "qtasks-reason";

/// The header of a dead letter set aside by the workers (a task none of them knows), whose
/// record ended `error` with it: queued again, the record comes back `new`.
pub(crate) const REVIVE_HEADER: &str = "qtasks-revive";

/// The topic and group names of one app (`N` = the app name).
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// `N_task_queue`, the original's topic.
    pub(crate) topic: String,
    /// `N_group`, the original's consumer group.
    pub(crate) group: String,
    /// `N_qtasks_cancel`: cancel requests for running tasks, read by every process.
    pub(crate) cancel: String,
    /// `N_qtasks_dead`: messages that are not tasks, with the reason in a header.
    pub(crate) dead: String,
    /// `N_qtasks_delay`: delayed tasks, one partition per tier of wait.
    pub(crate) delay: String,
    /// `N_group_delay`: the group that moves delayed tasks on when due.
    pub(crate) delay_group: String,
}

impl Names {
    /// The names of app `app`, or why the app name cannot name a topic.
    pub(crate) fn new(app: &str) -> Result<Self, String> {
        check_app_name(app)?;
        Ok(Names {
            topic: format!("{app}_task_queue"),
            group: format!("{app}_group"),
            cancel: format!("{app}_qtasks_cancel"),
            dead: format!("{app}_qtasks_dead"),
            delay: format!("{app}_qtasks_delay"),
            delay_group: format!("{app}_group_delay"),
        })
    }
}

/// The longest app name: Kafka's limit on a topic name (249) less the longest suffix.
const LONGEST_APP_NAME: usize = 249 - "_qtasks_cancel".len();

/// Kafka names topics with ASCII letters, digits, `.`, `_` and `-` only.
fn check_app_name(app: &str) -> Result<(), String> {
    if app.is_empty() {
        return Err("the app name is the topics' prefix: it must not be empty".to_owned());
    }
    if app.len() > LONGEST_APP_NAME {
        return Err(format!(
            "the app name is the topics' prefix, and Kafka allows {LONGEST_APP_NAME} characters for it; `{app}` has {}",
            app.len()
        ));
    }
    if let Some(bad) = app
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the app name `{app}` is the topics' prefix, and Kafka allows only ASCII letters, digits, `.`, `_` and `-` in a topic name, not {bad:?}"
        ));
    }
    Ok(())
}

/// A message's headers, owned (a header with no value reads as empty).
pub(crate) fn headers_of(message: &impl rdkafka::Message) -> Vec<(String, Vec<u8>)> {
    use rdkafka::message::Headers;
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        header.value.map(<[u8]>::to_vec).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The value of header `name` among `headers`.
pub(crate) fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_slice())
}

/// Owned headers to send again, but those `skip` names.
pub(crate) fn to_send(
    headers: &[(String, Vec<u8>)],
    skip: &[&str],
) -> rdkafka::message::OwnedHeaders {
    let mut sent = rdkafka::message::OwnedHeaders::new();
    for (key, value) in headers
        .iter()
        .filter(|(key, _)| !skip.contains(&key.as_str()))
    {
        sent = sent.insert(rdkafka::message::Header {
            key: key.as_str(),
            value: Some(value.as_slice()),
        });
    }
    sent
}

/// The original's message value: `task_name:uuid:priority`.
pub(crate) fn value_of(task: &QueuedTask) -> String {
    format!("{}:{}:{}", task.task_name, task.uuid, task.priority)
}

/// What a message names: the original's three fields, and the whole task when a qtasks
/// producer sent it.
#[derive(Debug)]
pub(crate) struct Message {
    /// The task's id, from the value.
    pub(crate) uuid: Uuid,
    /// The task's name, from the value.
    pub(crate) task_name: String,
    /// The task from the [`TASK_HEADER`], when there is one.
    pub(crate) task: Option<QueuedTask>,
    /// Deliveries of the attempt that ended with their worker ([`DELIVERIES_HEADER`]).
    pub(crate) ended: u32,
}

/// The latest time a task may name (Unix seconds, the year 5138): past it a time is no time but
/// a bad number, and would overflow a wait.
const LATEST_TIME: f64 = 1e11;

/// Reads a message back, or says why it is not a task. Everything here came from the network:
/// nothing may panic, and a number out of range makes a dead letter, not a bad wait.
pub(crate) fn decode(value: &[u8], headers: &[(String, Vec<u8>)]) -> Result<Message, String> {
    let shown = || -> String { String::from_utf8_lossy(value).chars().take(80).collect() };
    let text = std::str::from_utf8(value)
        .map_err(|_| format!("the message `{}` is not UTF-8", shown()))?;
    // The name may hold `:` itself; the uuid and priority cannot.
    let mut fields = text.rsplitn(3, ':');
    let (Some(priority), Some(uuid), Some(task_name)) =
        (fields.next(), fields.next(), fields.next())
    else {
        return Err(format!(
            "the message `{}` is not `task_name:uuid:priority`",
            shown()
        ));
    };
    let uuid = Uuid::parse_str(uuid)
        .map_err(|e| format!("the message `{}` names no task id ({e})", shown()))?;
    // Checked, not kept: the record (or the task header) has the priority.
    priority
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("the message `{}` has no whole-number priority", shown()))?;
    if task_name.is_empty() {
        return Err(format!("the message `{}` names no task", shown()));
    }
    let header = |name: &str| header(headers, name);
    let task = match header(TASK_HEADER) {
        None => None,
        Some(json) => {
            let task: QueuedTask = serde_json::from_slice(json).map_err(|e| {
                format!("the `{TASK_HEADER}` header of task {uuid} is not a task ({e})")
            })?;
            if task.uuid != uuid {
                return Err(format!(
                    "the `{TASK_HEADER}` header names task {}, the message {uuid}",
                    task.uuid
                ));
            }
            check_times(&task)?;
            Some(task)
        }
    };
    let ended = match header(DELIVERIES_HEADER) {
        None => 0,
        Some(count) => std::str::from_utf8(count)
            .ok()
            .and_then(|count| count.parse().ok())
            .ok_or_else(|| {
                format!("the `{DELIVERIES_HEADER}` header of task {uuid} is not a count")
            })?,
    };
    Ok(Message {
        uuid,
        task_name: task_name.to_owned(),
        task,
        ended,
    })
}

/// Refuses a task whose times are not times (NaN, infinite, past the year 5138).
fn check_times(task: &QueuedTask) -> Result<(), String> {
    for (field, time) in [
        ("created_at", Some(task.created_at)),
        ("run_at", task.run_at),
        ("expires_at", task.expires_at),
    ] {
        if let Some(time) = time
            && !(time.is_finite() && (0.0..LATEST_TIME).contains(&time))
        {
            return Err(format!(
                "task {}'s `{field}` is not a time: {time}",
                task.uuid
            ));
        }
    }
    if let Some(max_time) = task.max_time
        && !(max_time.is_finite() && (0.0..LATEST_TIME).contains(&max_time))
    {
        return Err(format!(
            "task {}'s `max_time` is not a duration: {max_time}",
            task.uuid
        ));
    }
    Ok(())
}

/// The partition of `partitions` a task lives in: its uuid's last eight bytes, so that a
/// retry's next attempt (which keeps them) lands beside its task.
pub(crate) fn partition_of(uuid: Uuid, partitions: usize) -> usize {
    let bytes = uuid.as_bytes();
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&bytes[8..]);
    let partitions = partitions.max(1) as u64;
    (u64::from_be_bytes(tail) % partitions) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_is_the_originals_and_reads_back() {
        let mut task = QueuedTask::new(Uuid::new_v4(), "send:mail");
        task.priority = -3;
        let value = value_of(&task);
        assert_eq!(value, format!("send:mail:{}:-3", task.uuid));
        let message = decode(value.as_bytes(), &[]).unwrap();
        assert_eq!(
            (message.task_name.as_str(), message.uuid),
            ("send:mail", task.uuid)
        );
        assert!(message.task.is_none());
        assert_eq!(message.ended, 0);
    }

    #[test]
    fn the_task_header_and_the_count_read_back() {
        let task = QueuedTask::new(Uuid::new_v4(), "ping");
        let headers = vec![
            (TASK_HEADER.to_owned(), serde_json::to_vec(&task).unwrap()),
            (DELIVERIES_HEADER.to_owned(), b"2".to_vec()),
        ];
        let message = decode(value_of(&task).as_bytes(), &headers).unwrap();
        assert_eq!(message.task.unwrap().uuid, task.uuid);
        assert_eq!(message.ended, 2);
    }

    #[test]
    fn bad_messages_say_what_is_wrong() {
        let uuid = Uuid::new_v4();
        type Headers = Vec<(String, Vec<u8>)>;
        let cases: Vec<(Vec<u8>, Headers, &str)> = vec![
            (vec![0xff, 0xfe], vec![], "not UTF-8"),
            (
                b"just-a-name".to_vec(),
                vec![],
                "not `task_name:uuid:priority`",
            ),
            (b"ping:not-a-uuid:0".to_vec(), vec![], "names no task id"),
            (
                format!("ping:{uuid}:high").into_bytes(),
                vec![],
                "whole-number priority",
            ),
            (format!(":{uuid}:0").into_bytes(), vec![], "names no task"),
            (
                format!("ping:{uuid}:0").into_bytes(),
                vec![(TASK_HEADER.to_owned(), b"{".to_vec())],
                "is not a task",
            ),
            (
                format!("ping:{uuid}:0").into_bytes(),
                vec![(DELIVERIES_HEADER.to_owned(), b"-1".to_vec())],
                "is not a count",
            ),
        ];
        for (value, headers, says) in cases {
            let error = decode(&value, &headers).unwrap_err();
            assert!(error.contains(says), "{error:?} should say {says:?}");
        }
        // (A NaN travels as `null` in JSON, which is no time at all: a time past the year
        // 5138 is the bad number a message can carry.)
        let task = QueuedTask::new(uuid, "ping");
        let mut json = serde_json::to_value(&task).unwrap();
        json["run_at"] = serde_json::json!(1e300);
        let headers = vec![(TASK_HEADER.to_owned(), serde_json::to_vec(&json).unwrap())];
        let error = decode(value_of(&task).as_bytes(), &headers).unwrap_err();
        assert!(error.contains("`run_at` is not a time"), "{error}");
    }

    #[test]
    fn app_names_must_name_topics() {
        assert!(Names::new("billing.v2-eu_1").is_ok());
        for (name, says) in [
            ("", "must not be empty"),
            ("a:b", "not ':'"),
            ("é", "not 'é'"),
        ] {
            let error = Names::new(name).unwrap_err();
            assert!(error.contains(says), "{error:?} should say {says:?}");
        }
        assert!(Names::new(&"a".repeat(300)).unwrap_err().contains("allows"));
    }

    #[test]
    fn a_retry_lands_in_its_tasks_partition() {
        let uuid = Uuid::new_v4();
        let mut bytes = *Uuid::new_v4().as_bytes();
        bytes[8..].copy_from_slice(&uuid.as_bytes()[8..]);
        let next = Uuid::from_bytes(bytes);
        assert_eq!(partition_of(uuid, 7), partition_of(next, 7));
        assert_eq!(partition_of(uuid, 0), 0);
    }
}
