//! Task records in Python QTasks' Redis layout (spec section 6), so Rust and Python clients and
//! workers can share a queue.
//!
//! A record is the hash `N:{uuid}` with the fields `task_name`, `priority`, `args`, `kwargs`,
//! `created_at`, `updated_at`, `status`, and by status `returning` (JSON), `traceback` or
//! `cancel_reason`. Numbers are decimal text, times Unix seconds as floats, `args` and `kwargs`
//! JSON.

use std::collections::HashMap;

use serde_json::{Map, Value};
use uuid::Uuid;

use qtasks_core::Outcome;
use qtasks_core::backend::RunInfo;
use qtasks_core::records::RecordUpdate;
use qtasks_core::{QueuedTask, TaskRecord, TaskStatus};

/// The fields written when a task is added (the original's `TaskStatusNewSchema`; `status` and
/// `updated_at` lead, for the reason below).
pub(super) fn new_record_fields(task: &QueuedTask) -> Vec<(&'static str, String)> {
    // Sized for every field at once (an add's hot path: no regrowth), the arguments encoded
    // where they are (as `Value::Array` and `Value::Object` print them, without a copy), and
    // the creation time formatted once for both times.
    let mut fields = Vec::with_capacity(16);
    let created_at = task.created_at.to_string();
    fields.extend([
        // First the fields every take and finish reads or rewrites: Redis keeps a small hash as
        // one list of fields and values, which each of those lookups scans from its start.
        ("status", TaskStatus::New.as_str().to_owned()),
        ("updated_at", created_at.clone()),
        ("task_name", task.task_name.clone()),
        ("priority", task.priority.to_string()),
        // Encoding a list of values, or a map of them by string keys, cannot fail.
        (
            "args",
            serde_json::to_string(&task.args).unwrap_or_default(),
        ),
        (
            "kwargs",
            serde_json::to_string(&task.kwargs).unwrap_or_default(),
        ),
        ("created_at", created_at),
    ]);
    if let Some(retry) = task.retry {
        fields.push(("retry", retry.to_string()));
    }
    if let Some(parent) = task.retry_parent_uuid {
        fields.push(("retry_parent_uuid", parent.to_string()));
    }
    if let Some(traceparent) = &task.traceparent {
        fields.push(("traceparent", traceparent.clone()));
    }
    if let Some(group) = task.group_uuid {
        fields.push(("group_uuid", group.to_string()));
    }
    if let Some(run_at) = task.run_at.filter(|run_at| *run_at > task.created_at) {
        fields.push(("run_at", run_at.to_string()));
    }
    if let Some(expires_at) = task.expires_at {
        fields.push(("expires_at", expires_at.to_string()));
    }
    if let Some(max_time) = task.max_time {
        fields.push(("max_time", max_time.to_string()));
    }
    if let Some(queue) = &task.queue {
        fields.push(("queue", queue.clone()));
    }
    if let Some(key) = &task.rate_key {
        fields.push(("rate_key", key.clone()));
    }
    if let Some(step) = &task.workflow {
        fields.push(("workflow", step.clone()));
    }
    fields
}

/// The fields a [`RecordUpdate`] changes.
pub(super) fn update_fields(update: &RecordUpdate, now: f64) -> Vec<(&'static str, String)> {
    let mut fields = vec![("updated_at", now.to_string())];
    if let Some(status) = update.status {
        fields.push(("status", status.as_str().to_owned()));
    }
    if let Some(priority) = update.priority {
        fields.push(("priority", priority.to_string()));
    }
    if let Some(args) = &update.args {
        fields.push(("args", Value::Array(args.clone()).to_string()));
    }
    if let Some(kwargs) = &update.kwargs {
        fields.push(("kwargs", Value::Object(kwargs.clone()).to_string()));
    }
    if let Some(returning) = &update.returning {
        fields.push(("returning", returning.to_string()));
    }
    if let Some(traceback) = &update.traceback {
        fields.push(("traceback", traceback.clone()));
    }
    if let Some(reason) = &update.cancel_reason {
        fields.push(("cancel_reason", reason.clone()));
    }
    if let Some(child) = update.retry_child_uuid {
        fields.push(("retry_child_uuid", child.to_string()));
    }
    fields
}

/// The fields written when a task ends, by the run `run`; the others keep what `add` wrote.
pub(super) fn outcome_fields(
    outcome: &Outcome,
    run: &RunInfo,
    now: f64,
) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("updated_at", now.to_string()),
        ("finished_at", now.to_string()),
    ];
    if let Some(started_at) = run.started_at {
        fields.push(("started_at", started_at.to_string()));
    }
    if let Some(worker) = &run.worker {
        fields.push(("worker", worker.to_string()));
    }
    if let Some(payload) = &run.error_payload {
        fields.push(("error_payload", payload.to_string()));
    }
    match outcome {
        Outcome::Success(value) => {
            fields.push(("status", TaskStatus::Success.as_str().to_owned()));
            fields.push(("returning", value.to_string()));
        }
        Outcome::Error(traceback) => {
            fields.push(("status", TaskStatus::Error.as_str().to_owned()));
            fields.push(("traceback", traceback.clone()));
        }
        Outcome::Cancel(reason) => {
            fields.push(("status", TaskStatus::Cancel.as_str().to_owned()));
            fields.push(("cancel_reason", reason.clone()));
        }
        Outcome::Retry { traceback, child } => {
            fields.push(("status", TaskStatus::Retry.as_str().to_owned()));
            fields.push(("traceback", traceback.clone()));
            fields.push(("retry_child_uuid", child.uuid.to_string()));
            if let Some(left) = child.retry {
                fields.push(("retry", (left + 1).to_string()));
            }
        }
    }
    fields
}

/// `name:uuid:priority`, the queue entry both implementations push.
pub(super) fn queue_entry(task: &QueuedTask) -> String {
    format!("{}:{}:{}", task.task_name, task.uuid, task.priority)
}

/// Splits a queue entry; `Err` says why it is malformed.
pub(super) fn parse_entry(entry: &str) -> Result<(&str, Uuid, i64), String> {
    let parts: Vec<&str> = entry.split(':').collect();
    let [name, uuid, priority] = parts[..] else {
        return Err(format!("queue entry `{entry}` is not `name:uuid:priority`"));
    };
    let uuid = Uuid::parse_str(uuid)
        .map_err(|e| format!("queue entry `{entry}` has a malformed uuid: {e}"))?;
    let priority = priority
        .parse()
        .map_err(|e| format!("queue entry `{entry}` has a malformed priority: {e}"))?;
    Ok((name, uuid, priority))
}

/// A record's fields as Redis returned them: text where the bytes are UTF-8, and the names of
/// the fields whose bytes were not (their text is then a lossy copy).
#[derive(Debug, Default)]
pub(super) struct Fields {
    text: HashMap<String, String>,
    not_utf8: Vec<String>,
}

impl Fields {
    fn insert(&mut self, name: String, bytes: Vec<u8>) {
        match String::from_utf8(bytes) {
            Ok(text) => {
                self.text.insert(name, text);
            }
            Err(error) => {
                let text = String::from_utf8_lossy(error.as_bytes()).into_owned();
                self.not_utf8.push(name.clone());
                self.text.insert(name, text);
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.text.get(name).map(String::as_str)
    }
}

/// Reads a record from its fields, as far as they can be read: a field that cannot be (bad
/// bytes, text that is not the JSON or number it should be, a missing required one) keeps its
/// default, its stored text goes to `unreadable`, and the second value says what was wrong.
pub(super) fn read_record(uuid: Uuid, fields: &Fields) -> (TaskRecord, Vec<String>) {
    let mut problems = Vec::new();
    let mut unreadable = std::collections::BTreeMap::new();
    for name in &fields.not_utf8 {
        problems.push(format!("task {uuid}: `{name}` is not UTF-8"));
        unreadable.insert(
            name.clone(),
            fields.get(name).unwrap_or_default().to_owned(),
        );
    }
    let mut read = |name: &str, required: bool, parse: &dyn Fn(&str) -> Result<(), String>| {
        if fields.not_utf8.iter().any(|bad| bad == name) {
            return None;
        }
        match fields.get(name) {
            None if required => {
                problems.push(format!("task {uuid}: the record has no `{name}`"));
                None
            }
            None => None,
            Some(text) => match parse(text) {
                Ok(()) => Some(text.to_owned()),
                Err(why) => {
                    problems.push(format!("task {uuid}: `{name}` {why}"));
                    unreadable.insert(name.to_owned(), text.to_owned());
                    None
                }
            },
        }
    };
    // A time that is no finite number (`nan`, `inf`) is as unreadable as text: nothing
    // downstream (durations, scores, the index) can use it.
    let number = |text: &str| match text.parse::<f64>() {
        Ok(number) if number.is_finite() => Ok(()),
        Ok(_) => Err("is not a finite number".to_owned()),
        Err(e) => Err(format!("is not a number: {e}")),
    };
    let status = read("status", true, &|text| {
        text.parse::<TaskStatus>()
            .map(drop)
            .map_err(|_| format!("is an unknown status `{text}`"))
    });
    let task_name = read("task_name", true, &|_| Ok(()));
    let priority = read("priority", true, &|text| {
        text.parse::<i64>()
            .map(drop)
            .map_err(|e| format!("is not an integer: {e}"))
    });
    let args = read("args", true, &|text| match serde_json::from_str(text) {
        Ok(Value::Array(_)) => Ok(()),
        _ => Err("is not a JSON list".to_owned()),
    });
    let kwargs = read("kwargs", true, &|text| match serde_json::from_str(text) {
        Ok(Value::Object(_)) => Ok(()),
        _ => Err("is not a JSON object".to_owned()),
    });
    let created_at = read("created_at", true, &number);
    let updated_at = read("updated_at", true, &number);
    let returning = read("returning", false, &|_| Ok(()));
    let traceback = read("traceback", false, &|_| Ok(()));
    let cancel_reason = read("cancel_reason", false, &|_| Ok(()));
    let retry = read("retry", false, &|_| Ok(()));
    let retry_parent = read("retry_parent_uuid", false, &|_| Ok(()));
    let retry_child = read("retry_child_uuid", false, &|_| Ok(()));
    let traceparent = read("traceparent", false, &|_| Ok(()));
    let group = read("group_uuid", false, &|text| {
        Uuid::parse_str(text)
            .map(drop)
            .map_err(|e| format!("is not a uuid: {e}"))
    });
    let run_at = read("run_at", false, &number);
    let started_at = read("started_at", false, &number);
    let finished_at = read("finished_at", false, &number);
    let worker = read("worker", false, &|_| Ok(()));
    let expires_at = read("expires_at", false, &number);
    let progress = read("progress", false, &|_| Ok(()));
    let error_payload = read("error_payload", false, &|text| {
        serde_json::from_str::<Value>(text)
            .map(drop)
            .map_err(|e| format!("is not JSON: {e}"))
    });
    let progress_at = read("progress_at", false, &number);
    let max_time = read("max_time", false, &number);
    let queue = read("queue", false, &|text| {
        qtasks_core::queues::check_queue_name(text)
    });
    let rate_key = read("rate_key", false, &|text| {
        qtasks_core::limits::check_rate_key(text)
    });
    let workflow = read("workflow", false, &|_| Ok(()));
    let hand_backs = read("hand_backs", false, &|text| {
        text.parse::<u32>()
            .map(drop)
            .map_err(|e| format!("is not a count: {e}"))
    });

    let mut task = QueuedTask::new(uuid, task_name.unwrap_or_default());
    task.priority = priority.and_then(|p| p.parse().ok()).unwrap_or_default();
    task.args = match args.map(|a| serde_json::from_str(&a)) {
        Some(Ok(Value::Array(items))) => items,
        _ => Vec::new(),
    };
    task.kwargs = match kwargs.map(|k| serde_json::from_str(&k)) {
        Some(Ok(Value::Object(map))) => map,
        _ => Map::new(),
    };
    task.created_at = created_at.and_then(|t| t.parse().ok()).unwrap_or_default();
    task.retry = retry.and_then(|n| n.parse().ok());
    task.retry_parent_uuid = retry_parent.and_then(|u| Uuid::parse_str(&u).ok());
    task.traceparent = traceparent;
    task.group_uuid = group.and_then(|u| Uuid::parse_str(&u).ok());
    task.run_at = run_at.and_then(|t| t.parse().ok());
    task.expires_at = expires_at.and_then(|t| t.parse().ok());
    task.max_time = max_time.and_then(|t| t.parse().ok());
    task.queue = queue.filter(|queue| queue != qtasks_core::queues::DEFAULT_QUEUE);
    task.hand_backs = hand_backs.and_then(|n| n.parse().ok()).unwrap_or(0);
    task.rate_key = rate_key;
    task.workflow = workflow;
    let mut record = TaskRecord::from_task(task);
    record.started_at = started_at.and_then(|t| t.parse().ok());
    record.finished_at = finished_at.and_then(|t| t.parse().ok());
    record.worker = worker.map(std::sync::Arc::from);
    record.progress = progress.map(|raw| serde_json::from_str(&raw).unwrap_or(Value::String(raw)));
    record.progress_at = progress_at.and_then(|t| t.parse().ok());
    record.error_payload = error_payload.and_then(|raw| serde_json::from_str(&raw).ok());
    // A record that cannot say what state it is in is reported as failed.
    record.status = status
        .as_deref()
        .and_then(|text| text.parse().ok())
        .unwrap_or(TaskStatus::Error);
    record.updated_at = updated_at
        .and_then(|t| t.parse().ok())
        .unwrap_or(record.created_at);
    // A `decode` of the original may store text that is not JSON; keep it as a string then.
    record.returning =
        returning.map(|raw| serde_json::from_str(&raw).unwrap_or(Value::String(raw)));
    record.traceback = traceback;
    record.cancel_reason = cancel_reason;
    record.retry_child_uuid = retry_child.and_then(|u| Uuid::parse_str(&u).ok());
    record.unreadable = unreadable;
    (record, problems)
}

/// Whether a hash under a record's key is no task record at all (no `status`, no
/// `task_name`): something else that shares the prefix.
pub(super) fn fields_are_foreign(fields: &Fields) -> bool {
    fields.get("status").is_none() && fields.get("task_name").is_none()
}

/// Reads a record that is about to run: every field must be readable; `Err` names the first
/// that is not.
pub(super) fn decode_record(uuid: Uuid, fields: &Fields) -> Result<TaskRecord, String> {
    let (record, problems) = read_record(uuid, fields);
    match problems.into_iter().next() {
        Some(problem) => Err(problem),
        None => Ok(record),
    }
}

/// The record fields a delivery is made from: of the record the take reads whole, the others
/// are left out (a field the run does not use cannot fail it).
pub(super) const TAKEN_FIELDS: [&str; 16] = [
    "status",
    "task_name",
    "priority",
    "args",
    "kwargs",
    "created_at",
    "retry",
    "retry_parent_uuid",
    "traceparent",
    "group_uuid",
    "expires_at",
    "max_time",
    "queue",
    "hand_backs",
    "rate_key",
    "workflow",
];

/// The [`TAKEN_FIELDS`] of a record read whole (a flat `HGETALL` reply: field, value, ...), by
/// the take or, after a big take's mark, by the worker. `updated_at` is the record's
/// `created_at`: the mark has moved it on.
pub(super) fn taken_fields(flat: Vec<Vec<u8>>) -> Fields {
    let mut fields = Fields::default();
    let mut items = flat.into_iter();
    while let (Some(name), Some(value)) = (items.next(), items.next()) {
        if let Some(known) = TAKEN_FIELDS.iter().find(|known| known.as_bytes() == name) {
            fields.insert((*known).to_owned(), value);
        }
    }
    if let Some(created) = fields.get("created_at").map(str::to_owned) {
        fields
            .text
            .entry("updated_at".to_owned())
            .or_insert(created);
    }
    fields
}

/// Pairs a flat `HGETALL` reply.
pub(super) fn pairs(flat: Vec<Vec<u8>>) -> Fields {
    let mut fields = Fields::default();
    let mut items = flat.into_iter();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        fields.insert(String::from_utf8_lossy(&key).into_owned(), value);
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_malformed_ones_say_why() {
        let uuid = Uuid::nil();
        assert_eq!(
            parse_entry(&format!("add:{uuid}:-3")),
            Ok(("add", uuid, -3))
        );
        assert_eq!(
            parse_entry("garbage"),
            Err("queue entry `garbage` is not `name:uuid:priority`".to_owned())
        );
        assert!(
            parse_entry("add:not-a-uuid:1")
                .unwrap_err()
                .contains("malformed uuid")
        );
    }

    fn fields(pairs: &[(&str, &[u8])]) -> Fields {
        let mut fields = Fields::default();
        for (name, value) in pairs {
            fields.insert((*name).to_owned(), value.to_vec());
        }
        fields
    }

    #[test]
    fn python_records_decode() {
        let fields = fields(&[
            ("task_name", b"add"),
            ("priority", b"3"),
            ("args", b"[2]"),
            ("kwargs", b"{\"b\": 5}"),
            ("created_at", b"1795847286.895575"),
            ("updated_at", b"1795847287.5"),
            ("status", b"success"),
            ("returning", "\"привет\"".as_bytes()),
        ]);
        let record = decode_record(Uuid::nil(), &fields).unwrap();
        assert_eq!(record.status, TaskStatus::Success);
        assert_eq!(record.args, vec![serde_json::json!(2)]);
        assert_eq!(record.kwargs.get("b"), Some(&serde_json::json!(5)));
        assert_eq!(record.returning, Some(serde_json::json!("привет")));
    }

    #[test]
    fn unreadable_fields_are_kept_raw_and_named() {
        let fields = fields(&[
            ("task_name", b"add"),
            ("priority", b"high"),
            ("args", b"[1, 2"),
            ("kwargs", b"{}"),
            ("created_at", b"1.5"),
            ("updated_at", b"2.5"),
            ("status", b"error"),
            ("traceback", b"Boom: \xff\xfe"),
        ]);
        let (record, problems) = read_record(Uuid::nil(), &fields);
        assert_eq!(record.status, TaskStatus::Error);
        assert_eq!((record.priority, record.args.len()), (0, 0));
        assert_eq!(
            record.unreadable.get("priority").map(String::as_str),
            Some("high")
        );
        assert_eq!(
            record.unreadable.get("args").map(String::as_str),
            Some("[1, 2")
        );
        assert!(record.unreadable["traceback"].starts_with("Boom: "));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(decode_record(Uuid::nil(), &fields).is_err());
    }
}
