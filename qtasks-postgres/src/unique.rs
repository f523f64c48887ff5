//! Unique tasks: an add under a key adds nothing while the key's holder still holds it.
//!
//! The statements name the schema (they run on the engine's connections and on a caller's
//! own, whose search path is not the engine's), and run in one transaction (a savepoint
//! inside a caller's transaction) that locks the key's row: concurrent adds of one key wait
//! for each other, and the second sees the first's task.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use uuid::Uuid;

use qtasks_core::unique::{UniqueKey, still_holds};
use qtasks_core::{QueuedTask, TaskStatus};

use crate::broker::insert_task_with;
use crate::record;

/// How long a key is kept at least: the task that waits or runs under it must not lose it.
const KEY_KEPT_AT_LEAST: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many times an add looks again when the key's row went away between its two looks
/// (expired and deleted meanwhile).
const TRIES: usize = 4;

/// The statements of an add, with the schema's name in them.
pub(crate) struct Statements {
    /// The add of [`crate::broker`].
    pub(crate) add: Arc<str>,
    known: Arc<str>,
    claim: Arc<str>,
    holder: Arc<str>,
    record: Arc<str>,
    retake: Arc<str>,
}

impl Statements {
    /// The statements for `schema` (checked: quoting it is enough).
    pub(crate) fn new(schema: &str) -> Self {
        let qualified =
            |sql: &str| -> Arc<str> { sql.replace("{s}", &format!("\"{schema}\".")).into() };
        Statements {
            add: qualified(crate::broker::ADD),
            known: qualified("SELECT EXISTS (SELECT 1 FROM {s}records WHERE app = $1 AND uuid = $2)"),
            claim: qualified(
                "INSERT INTO {s}unique_keys (app, key, holder, added_at, expires_at)
                 VALUES ($1, $2, $3, extract(epoch FROM clock_timestamp()),
                         clock_timestamp() + make_interval(secs => $4))
                 ON CONFLICT (app, key) DO NOTHING
                 RETURNING 1",
            ),
            holder: qualified(
                "SELECT holder, added_at, extract(epoch FROM clock_timestamp())::float8
                 FROM {s}unique_keys WHERE app = $1 AND key = $2 FOR UPDATE",
            ),
            record: qualified(
                "SELECT uuid, task_name, status, doc, updated_at FROM {s}records
                 WHERE app = $1 AND uuid = $2",
            ),
            retake: qualified(
                "UPDATE {s}unique_keys SET holder = $3, added_at = extract(epoch FROM clock_timestamp()),
                     expires_at = clock_timestamp() + make_interval(secs => $4)
                 WHERE app = $1 AND key = $2",
            ),
        }
    }
}

/// Adds `task` under `unique`'s key through `conn`: `Ok(None)` when added (the task took the
/// key), `Ok(Some(holder))` when the key's holder still holds it (nothing added), or the
/// task's own id when it is known already (an add again adds nothing).
pub(crate) async fn add_unique(
    conn: &mut PgConnection,
    sql: &Statements,
    app: &str,
    task: &QueuedTask,
    unique: &UniqueKey,
) -> Result<Option<Uuid>, sqlx::Error> {
    let keep = crate::secs(unique.window.max(KEY_KEPT_AT_LEAST));
    let mut tx = conn.begin().await?;
    let known: bool = sqlx::query_scalar(AssertSqlSafe(Arc::clone(&sql.known)))
        .bind(app)
        .bind(task.uuid)
        .fetch_one(&mut *tx)
        .await?;
    if known {
        tx.commit().await?;
        return Ok(Some(task.uuid));
    }
    for _ in 0..TRIES {
        let claimed = sqlx::query(AssertSqlSafe(Arc::clone(&sql.claim)))
            .bind(app)
            .bind(&unique.key)
            .bind(task.uuid)
            .bind(keep)
            .fetch_optional(&mut *tx)
            .await?;
        if claimed.is_none() {
            let Some(row) = sqlx::query(AssertSqlSafe(Arc::clone(&sql.holder)))
                .bind(app)
                .bind(&unique.key)
                .fetch_optional(&mut *tx)
                .await?
            else {
                continue; // deleted since the claim looked: claim again
            };
            let holder: Uuid = row.try_get(0)?;
            let added_at: f64 = row.try_get(1)?;
            let now: f64 = row.try_get(2)?;
            let status = last_attempt_status(&mut tx, sql, app, holder).await?;
            if still_holds(status, added_at, unique.window, now) {
                tx.commit().await?;
                return Ok(Some(holder));
            }
            sqlx::query(AssertSqlSafe(Arc::clone(&sql.retake)))
                .bind(app)
                .bind(&unique.key)
                .bind(task.uuid)
                .bind(keep)
                .execute(&mut *tx)
                .await?;
        }
        insert_task_with(AssertSqlSafe(Arc::clone(&sql.add)), &mut tx, app, task).await?;
        tx.commit().await?;
        return Ok(None);
    }
    Err(sqlx::Error::Protocol(format!(
        "unique key `{}` kept changing hands; the add was not made",
        unique.key
    )))
}

/// The status of the last attempt of `holder` (its retries followed, at most 32 of them), for
/// [`still_holds`]: `None` when no record is left, or the chain ends at a retry whose next
/// attempt is gone.
async fn last_attempt_status(
    conn: &mut PgConnection,
    sql: &Statements,
    app: &str,
    holder: Uuid,
) -> Result<Option<TaskStatus>, sqlx::Error> {
    let mut current = holder;
    let mut status = None;
    for _ in 0..32 {
        let Some(row) = sqlx::query(AssertSqlSafe(Arc::clone(&sql.record)))
            .bind(app)
            .bind(current)
            .fetch_optional(&mut *conn)
            .await?
        else {
            break;
        };
        let found = record::read(&row);
        status = Some(found.status);
        match (found.status, found.retry_child_uuid) {
            (TaskStatus::Retry, Some(child)) => current = child,
            _ => break,
        }
    }
    Ok(status.filter(|status| *status != TaskStatus::Retry))
}
