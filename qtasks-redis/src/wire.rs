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
use qtasks_core::triggers::RecordUpdate;
use qtasks_core::{QueuedTask, TaskRecord, TaskStatus};

/// The fields written when a task is added (the original's `TaskStatusNewSchema`, in its
/// order).
pub(super) fn new_record_fields(task: &QueuedTask) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("task_name", task.task_name.clone()),
        ("priority", task.priority.to_string()),
        ("args", Value::Array(task.args.clone()).to_string()),
        ("kwargs", Value::Object(task.kwargs.clone()).to_string()),
        ("created_at", task.created_at.to_string()),
        ("updated_at", task.created_at.to_string()),
        ("status", TaskStatus::New.as_str().to_owned()),
    ];
    if let Some(retry) = task.retry {
        fields.push(("retry", retry.to_string()));
    }
    if let Some(parent) = task.retry_parent_uuid {
        fields.push(("retry_parent_uuid", parent.to_string()));
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
    fields
}

/// The fields written when a task ends; the others keep what `add` wrote.
pub(super) fn outcome_fields(outcome: &Outcome, now: f64) -> Vec<(&'static str, String)> {
    let mut fields = vec![("updated_at", now.to_string())];
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

/// The status of this wire name.
pub(super) fn status_named(name: &str) -> Option<TaskStatus> {
    Some(match name {
        "new" => TaskStatus::New,
        "process" => TaskStatus::Process,
        "success" => TaskStatus::Success,
        "error" => TaskStatus::Error,
        "cancel" => TaskStatus::Cancel,
        "retry" => TaskStatus::Retry,
        _ => return None,
    })
}

/// Builds a record from a hash; `Err` names the field that does not parse.
pub(super) fn decode_record(
    uuid: Uuid,
    fields: &HashMap<String, String>,
) -> Result<TaskRecord, String> {
    let text = |name: &str| fields.get(name).map(String::as_str);
    let required =
        |name: &str| text(name).ok_or_else(|| format!("task {uuid}: the record has no `{name}`"));
    let number = |name: &str| -> Result<f64, String> {
        required(name)?
            .parse()
            .map_err(|e| format!("task {uuid}: `{name}` is not a number: {e}"))
    };
    let status_name = required("status")?;
    let status = status_named(status_name)
        .ok_or_else(|| format!("task {uuid}: unknown status `{status_name}`"))?;
    let args = match serde_json::from_str(required("args")?) {
        Ok(Value::Array(items)) => items,
        _ => return Err(format!("task {uuid}: `args` is not a JSON list")),
    };
    let kwargs: Map<String, Value> = match serde_json::from_str(required("kwargs")?) {
        Ok(Value::Object(map)) => map,
        _ => return Err(format!("task {uuid}: `kwargs` is not a JSON object")),
    };
    // A `decode` of the original may store text that is not JSON; keep it as a string then.
    let returning = text("returning")
        .map(|raw| serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned())));
    let mut task = QueuedTask::new(uuid, required("task_name")?);
    task.priority = required("priority")?
        .parse()
        .map_err(|e| format!("task {uuid}: `priority` is not an integer: {e}"))?;
    task.args = args;
    task.kwargs = kwargs;
    task.created_at = number("created_at")?;
    task.retry = text("retry").and_then(|n| n.parse().ok());
    task.retry_parent_uuid = text("retry_parent_uuid").and_then(|u| Uuid::parse_str(u).ok());
    let mut record = TaskRecord::from_task(task);
    record.status = status;
    record.updated_at = number("updated_at")?;
    record.returning = returning;
    record.traceback = text("traceback").map(str::to_owned);
    record.cancel_reason = text("cancel_reason").map(str::to_owned);
    record.retry_child_uuid = text("retry_child_uuid").and_then(|u| Uuid::parse_str(u).ok());
    Ok(record)
}

/// The record fields the take script returns, in this order. `status` must come first: the
/// script reads it to skip cancelled tasks.
pub(super) const TAKEN_FIELDS: [&str; 8] = [
    "status",
    "task_name",
    "priority",
    "args",
    "kwargs",
    "created_at",
    "retry",
    "retry_parent_uuid",
];

/// The record fields the take script returned, by name (missing fields left out).
pub(super) fn taken_fields(values: Vec<Option<String>>) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = TAKEN_FIELDS
        .iter()
        .zip(values)
        .filter_map(|(name, value)| Some(((*name).to_owned(), value?)))
        .collect();
    // The take script does not read `updated_at`; a record always has one.
    if let Some(created) = map.get("created_at").cloned() {
        map.entry("updated_at".to_owned()).or_insert(created);
    }
    map
}

/// Pairs a flat `HGETALL` reply.
pub(super) fn pairs(flat: Vec<String>) -> HashMap<String, String> {
    let mut map = HashMap::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        map.insert(key, value);
    }
    map
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

    #[test]
    fn python_records_decode() {
        let fields: HashMap<String, String> = [
            ("task_name", "add"),
            ("priority", "3"),
            ("args", "[2]"),
            ("kwargs", "{\"b\": 5}"),
            ("created_at", "1795847286.895575"),
            ("updated_at", "1795847287.5"),
            ("status", "success"),
            ("returning", "\"привет\""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let record = decode_record(Uuid::nil(), &fields).unwrap();
        assert_eq!(record.status, TaskStatus::Success);
        assert_eq!(record.args, vec![serde_json::json!(2)]);
        assert_eq!(record.kwargs.get("b"), Some(&serde_json::json!(5)));
        assert_eq!(record.returning, Some(serde_json::json!("привет")));
    }
}
