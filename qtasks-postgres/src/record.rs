//! A record as a row: the `TaskRecord` as JSON text in `doc`, beside the columns SQL filters
//! by. Nothing read back may panic: a `doc` that does not parse gives a record that says so in
//! its `unreadable` fields.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use qtasks_core::backend::BackendError;
use qtasks_core::{QueuedTask, TaskRecord, TaskStatus};

use crate::{failure, secs};

/// The JSON text of a record.
pub(crate) fn encode(record: &TaskRecord) -> Result<String, BackendError> {
    serde_json::to_string(record).map_err(|e| {
        BackendError::new(
            "postgres",
            format!("encoding the record of task {} failed", record.uuid),
        )
        .with_source(e)
    })
}

/// The record of row `uuid` whose status column says `status` and whose JSON is `doc`.
pub(crate) fn decode(uuid: Uuid, task_name: &str, status: &str, doc: &str) -> TaskRecord {
    match serde_json::from_str::<TaskRecord>(doc) {
        Ok(mut record) => {
            // The column is what the statements fence by; the two never differ unless the
            // row was written by hand.
            if let Ok(status) = status.parse::<TaskStatus>() {
                record.status = status;
            }
            record
        }
        Err(error) => {
            let mut record = TaskRecord::from_task(QueuedTask::new(uuid, task_name));
            record.status = status.parse().unwrap_or(TaskStatus::Error);
            record
                .unreadable
                .insert("doc".to_owned(), format!("{error}: {doc}"));
            record
        }
    }
}

/// Reads a record from a row with `uuid`, `task_name`, `status`, `doc` and `updated_at`.
pub(crate) fn read(row: &PgRow) -> TaskRecord {
    let uuid: Uuid = row.try_get("uuid").unwrap_or_default();
    let task_name: String = row.try_get("task_name").unwrap_or_default();
    let status: String = row.try_get("status").unwrap_or_default();
    let doc: String = row.try_get("doc").unwrap_or_default();
    let mut record = decode(uuid, &task_name, &status, &doc);
    if let Ok(updated_at) = row.try_get::<f64, _>("updated_at") {
        record.updated_at = updated_at;
    }
    record
}

/// When a written record goes.
#[derive(Clone, Copy)]
pub(crate) enum Purge {
    /// As it was set before (an update of a record that was final already).
    Keep,
    /// This long after the write, if the record is final (`None`: kept).
    After(Option<Duration>),
}

/// Writes a whole record back (status, document, time) with its retention. A record that
/// ends its run (final, or waiting again) forgets a cancel asked of that run.
pub(crate) async fn write_record(
    tx: &mut PgConnection,
    app: &str,
    record: &TaskRecord,
    purge: Purge,
) -> Result<(), BackendError> {
    let doc = encode(record)?;
    let (keep, ttl) = match purge {
        Purge::Keep => (true, None),
        Purge::After(ttl) => (false, ttl),
    };
    sqlx::query(
        "UPDATE records SET status = $3, doc = $4, updated_at = $5,
             purge_at = CASE WHEN $6 THEN purge_at
                             WHEN $3 IN ('success', 'error', 'cancel', 'retry') AND $7::float8 IS NOT NULL
                             THEN clock_timestamp() + make_interval(secs => $7) END,
             cancel_requested = CASE WHEN $3 = 'process' THEN cancel_requested END
         WHERE app = $1 AND uuid = $2",
    )
    .bind(app)
    .bind(record.uuid)
    .bind(record.status.as_str())
    .bind(doc)
    .bind(record.updated_at)
    .bind(keep)
    .bind(ttl.map(secs))
    .execute(&mut *tx)
    .await
    .map_err(|e| {
        failure(
            format!("writing the record of task {} failed", record.uuid),
            e,
        )
    })?;
    Ok(())
}

/// Whether the delivery with `token` still holds task `uuid` (its queue row is leased to
/// it), locking the row until the transaction ends: for update (`exclusive`), or shared so
/// that a reclaim waits while a live write of the holder goes on.
pub(crate) async fn holds(
    conn: &mut PgConnection,
    app: &str,
    uuid: Uuid,
    token: Uuid,
    exclusive: bool,
) -> Result<bool, sqlx::Error> {
    let sql = if exclusive {
        "SELECT 1 FROM queue WHERE app = $1 AND uuid = $2 AND token = $3 AND state = 'r' FOR UPDATE"
    } else {
        "SELECT 1 FROM queue WHERE app = $1 AND uuid = $2 AND token = $3 AND state = 'r' FOR SHARE"
    };
    let held: Option<i32> = sqlx::query_scalar(sql)
        .bind(app)
        .bind(uuid)
        .bind(token)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(held.is_some())
}

/// A record read for a change: locked until the transaction ends.
pub(crate) struct Locked {
    pub(crate) record: TaskRecord,
    /// The reason of a cancel asked while the task ran.
    pub(crate) cancel_requested: Option<String>,
}

/// Reads and locks the record of `uuid` (after its queue row, if the caller has one: the
/// lock order).
pub(crate) async fn lock(
    conn: &mut PgConnection,
    app: &str,
    uuid: Uuid,
) -> Result<Option<Locked>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT uuid, task_name, status, doc, updated_at, cancel_requested FROM records
         WHERE app = $1 AND uuid = $2 FOR UPDATE",
    )
    .bind(app)
    .bind(uuid)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|row| Locked {
        record: read(&row),
        cancel_requested: row.try_get("cancel_requested").unwrap_or(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_nul_characters() {
        let mut task = QueuedTask::new(Uuid::new_v4(), "echo");
        task.args = vec![serde_json::json!("a\u{0}b")];
        let record = TaskRecord::from_task(task);
        let doc = encode(&record).expect("encodes");
        let back = decode(record.uuid, "echo", "new", &doc);
        assert_eq!(back, record);
    }

    #[test]
    fn a_bad_doc_gives_a_record_that_says_so() {
        let uuid = Uuid::new_v4();
        let record = decode(uuid, "echo", "process", "{not json");
        assert_eq!(record.uuid, uuid);
        assert_eq!(record.task_name, "echo");
        assert_eq!(record.status, TaskStatus::Process);
        assert!(record.unreadable["doc"].contains("{not json"));
        let record = decode(uuid, "echo", "nonsense", "[]");
        assert_eq!(record.status, TaskStatus::Error);
    }
}
