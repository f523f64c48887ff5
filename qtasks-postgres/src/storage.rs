//! Task records: reads, waits woken by notifications, progress and stream items fenced by the
//! delivery's token, listing by keyset pages, retention.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use qtasks_core::backend::{
    BackendError, ErrorChain, ItemsRead, Storage, has_progress_news, unix_now,
};
use qtasks_core::records::{RecordCursor, RecordPage, RecordQuery, RecordUpdate};
use qtasks_core::{TaskRecord, TaskStatus};

use crate::record::{self, Locked, Purge, write_record};
use crate::{App, failure};

/// How long a waiter sleeps when nothing wakes it: the safety net under the notifications.
const SAFETY_LOOK: Duration = Duration::from_secs(30);

pub(crate) struct PgStorage {
    app: Arc<App>,
    /// How often a waiter looks at a record on its own, at most every [`SAFETY_LOOK`].
    look_every: Duration,
}

impl PgStorage {
    pub(crate) fn new(app: Arc<App>, result_interval: Duration) -> Self {
        PgStorage {
            app,
            look_every: SAFETY_LOOK.max(result_interval),
        }
    }

    /// Reads the record and hands it to `done` until `done` says the wait is over; woken by
    /// the task's notifications, and looking on its own now and then.
    async fn wait_for<T, F>(&self, uuid: Uuid, mut done: F) -> Result<T, BackendError>
    where
        F: FnMut(Option<TaskRecord>) -> Option<T>,
    {
        let notify = self.app.hub.waiters.register(uuid);
        // A wait outlives an outage of the server (a restart, a cut connection): a read that
        // failed on a broken connection is tried again after a pause that grows to 2 s, until
        // the caller's own timeout ends the wait.
        let mut pauses = crate::reconnect_pauses();
        loop {
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let record = match self.read(uuid).await {
                Ok(record) => record,
                Err(error) if crate::is_transient(&error) => {
                    tracing::debug!(%uuid, "reading a waited record failed; trying again: {}", ErrorChain(&error));
                    tokio::time::sleep(pauses.next().unwrap_or(Duration::from_secs(2))).await;
                    continue;
                }
                Err(error) => {
                    return Err(failure(
                        format!("reading the record of task {uuid} failed"),
                        error,
                    ));
                }
            };
            pauses = crate::reconnect_pauses();
            if let Some(answer) = done(record) {
                return Ok(answer);
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(self.look_every) => {}
            }
        }
    }

    /// The live items of a running stream task after the first `seen`.
    async fn live_items(
        &self,
        uuid: Uuid,
        seen: usize,
    ) -> Result<Vec<serde_json::Value>, BackendError> {
        let items: Vec<String> = sqlx::query_scalar(
            "SELECT item FROM items WHERE app = $1 AND uuid = $2 ORDER BY n OFFSET $3",
        )
        .bind(&self.app.name)
        .bind(uuid)
        .bind(i64::try_from(seen).unwrap_or(i64::MAX))
        .fetch_all(self.app.pool())
        .await
        .map_err(|e| failure(format!("reading the items of task {uuid} failed"), e))?;
        // An item that does not parse is handed on as its text: nothing read may panic, and
        // the count of items stays right.
        Ok(items
            .into_iter()
            .map(|item| serde_json::from_str(&item).unwrap_or(serde_json::Value::String(item)))
            .collect())
    }

    /// Writes into a running task's record, fenced by its delivery's token: `Ok(false)` when
    /// the delivery no longer holds the task or the task does not run.
    async fn write_live(
        &self,
        uuid: Uuid,
        delivery: &str,
        write: LiveWrite,
    ) -> Result<bool, BackendError> {
        let Ok(token) = Uuid::parse_str(delivery) else {
            return Ok(false);
        };
        let app = &self.app.name;
        let what = || format!("writing to the record of task {uuid} failed");
        let mut tx = self
            .app
            .pool()
            .begin()
            .await
            .map_err(|e| failure(what(), e))?;
        let held = record::holds(&mut tx, app, uuid, token, false)
            .await
            .map_err(|e| failure(what(), e))?;
        if !held {
            return Ok(false);
        }
        match write {
            LiveWrite::Progress(progress) => {
                let locked = record::lock(&mut tx, app, uuid)
                    .await
                    .map_err(|e| failure(what(), e))?;
                let Some(Locked { mut record, .. }) = locked else {
                    return Ok(false);
                };
                if record.status != TaskStatus::Process {
                    return Ok(false);
                }
                record.progress = Some(progress);
                record.progress_at = Some(unix_now());
                write_record(&mut tx, app, &record, Purge::Keep).await?;
            }
            LiveWrite::Item(item) => {
                // A newer delivery's items replace an older one's.
                sqlx::query(
                    "WITH old AS (DELETE FROM items WHERE app = $1 AND uuid = $2 AND token <> $3)
                     INSERT INTO items (app, uuid, token, item) VALUES ($1, $2, $3, $4)",
                )
                .bind(app)
                .bind(uuid)
                .bind(token)
                .bind(item.to_string())
                .execute(&mut *tx)
                .await
                .map_err(|e| failure(what(), e))?;
            }
        }
        sqlx::query(
            "SELECT pg_notify('qtasks_' || current_schema(), 'p ' || left(md5($1), 16) || ' ' || $2::text)",
        )
        .bind(app)
        .bind(uuid)
        .execute(&mut *tx)
        .await
        .map_err(|e| failure(what(), e))?;
        tx.commit().await.map_err(|e| failure(what(), e))?;
        Ok(true)
    }
}

impl PgStorage {
    /// The record of task `uuid`, unless it is missing or past its retention.
    async fn read(&self, uuid: Uuid) -> Result<Option<TaskRecord>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT uuid, task_name, status, doc, updated_at FROM records
             WHERE app = $1 AND uuid = $2 AND (purge_at IS NULL OR purge_at > clock_timestamp())",
        )
        .bind(&self.app.name)
        .bind(uuid)
        .fetch_optional(self.app.pool())
        .await?;
        Ok(row.as_ref().map(record::read))
    }
}

enum LiveWrite {
    Progress(serde_json::Value),
    Item(serde_json::Value),
}

#[qtasks_core::async_trait]
impl qtasks_core::backend::Lifecycle for PgStorage {
    fn name(&self) -> &str {
        "PostgresStorage"
    }
}

#[qtasks_core::async_trait]
impl Storage for PgStorage {
    async fn get(&self, uuid: Uuid) -> Result<Option<TaskRecord>, BackendError> {
        self.read(uuid)
            .await
            .map_err(|e| failure(format!("reading the record of task {uuid} failed"), e))
    }

    async fn get_all(&self) -> Result<Vec<TaskRecord>, BackendError> {
        let rows = sqlx::query(
            "SELECT uuid, task_name, status, doc, updated_at FROM records
             WHERE app = $1 AND (purge_at IS NULL OR purge_at > clock_timestamp())
             ORDER BY created_ms, uuid",
        )
        .bind(&self.app.name)
        .fetch_all(self.app.pool())
        .await
        .map_err(|e| failure("reading the records failed", e))?;
        Ok(rows.iter().map(record::read).collect())
    }

    async fn update(&self, uuid: Uuid, update: RecordUpdate) -> Result<(), BackendError> {
        let app = &self.app.name;
        let what = || format!("updating the record of task {uuid} failed");
        let mut tx = self
            .app
            .pool()
            .begin()
            .await
            .map_err(|e| failure(what(), e))?;
        // The queue row first: the lock order of every write (a take locks it, then the
        // record).
        sqlx::query("SELECT 1 FROM queue WHERE app = $1 AND uuid = $2 FOR UPDATE")
            .bind(app)
            .bind(uuid)
            .execute(&mut *tx)
            .await
            .map_err(|e| failure(what(), e))?;
        let locked = record::lock(&mut tx, app, uuid)
            .await
            .map_err(|e| failure(what(), e))?;
        let Some(Locked { mut record, .. }) = locked else {
            return Err(BackendError::new(
                "postgres",
                format!("task {uuid} is not stored"),
            ));
        };
        let was_final = record.status.is_final();
        update.apply_to(&mut record);
        record.updated_at = unix_now();
        // A record final before and after keeps its retention (a task's own `result_ttl`).
        let purge = if was_final && record.status.is_final() {
            Purge::Keep
        } else {
            Purge::After(self.app.options.result_ttl)
        };
        write_record(&mut tx, app, &record, purge).await?;
        if let Some(priority) = update.priority {
            sqlx::query(
                "UPDATE queue SET priority = $3 WHERE app = $1 AND uuid = $2 AND state <> 'r'",
            )
            .bind(app)
            .bind(uuid)
            .bind(priority)
            .execute(&mut *tx)
            .await
            .map_err(|e| failure(what(), e))?;
        }
        tx.commit().await.map_err(|e| failure(what(), e))
    }

    async fn wait_finished(&self, uuid: Uuid) -> Result<Option<TaskRecord>, BackendError> {
        self.wait_for(uuid, |record| match record {
            None => Some(None),
            Some(record) if record.status.is_final() => Some(Some(record)),
            Some(_) => None,
        })
        .await
    }

    async fn set_progress(
        &self,
        uuid: Uuid,
        delivery: &str,
        progress: serde_json::Value,
    ) -> Result<bool, BackendError> {
        self.write_live(uuid, delivery, LiveWrite::Progress(progress))
            .await
    }

    async fn wait_progress(
        &self,
        uuid: Uuid,
        after: Option<f64>,
    ) -> Result<Option<TaskRecord>, BackendError> {
        self.wait_for(uuid, |record| match record {
            None => Some(None),
            Some(record) if has_progress_news(&record, after) => Some(Some(record)),
            Some(_) => None,
        })
        .await
    }

    async fn append_item(
        &self,
        uuid: Uuid,
        delivery: &str,
        item: serde_json::Value,
    ) -> Result<bool, BackendError> {
        self.write_live(uuid, delivery, LiveWrite::Item(item)).await
    }

    async fn wait_items(&self, uuid: Uuid, seen: usize) -> Result<ItemsRead, BackendError> {
        let notify = self.app.hub.waiters.register(uuid);
        loop {
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            match self.get(uuid).await? {
                None => return Ok(ItemsRead::new(Vec::new(), true)),
                // Ended: the record holds every item.
                Some(record) if record.status.is_final() => {
                    let items = match record.returning {
                        Some(serde_json::Value::Array(items)) => {
                            items.into_iter().skip(seen).collect()
                        }
                        _ => Vec::new(),
                    };
                    return Ok(ItemsRead::new(items, true));
                }
                Some(_) => {
                    let items = self.live_items(uuid, seen).await?;
                    if !items.is_empty() {
                        return Ok(ItemsRead::new(items, false));
                    }
                }
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(self.look_every) => {}
            }
        }
    }

    async fn delete_finished(&self) -> Result<usize, BackendError> {
        let deleted: i64 = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM records WHERE app = $1
                   AND status IN ('success', 'error', 'cancel', 'retry')
                 RETURNING uuid),
             items AS (DELETE FROM items WHERE app = $1 AND uuid IN (SELECT uuid FROM gone))
             SELECT count(*) FROM gone",
        )
        .bind(&self.app.name)
        .fetch_one(self.app.pool())
        .await
        .map_err(|e| failure("deleting the finished records failed", e))?;
        Ok(usize::try_from(deleted).unwrap_or(0))
    }

    async fn list(&self, query: &RecordQuery) -> Result<RecordPage, BackendError> {
        let size = query.page_size();
        let ms =
            |secs: f64| i64::try_from(qtasks_core::records::secs_to_ms(secs)).unwrap_or(i64::MAX);
        let (after_ms, after_uuid) = match query.after {
            Some(cursor) => (
                i64::try_from(cursor.created_ms).unwrap_or(i64::MAX),
                cursor.uuid,
            ),
            None => (i64::MAX, Uuid::max()),
        };
        let rows = sqlx::query(
            "SELECT uuid, task_name, status, doc, updated_at FROM records
             WHERE app = $1
               AND ($2::text IS NULL OR status = $2)
               AND ($3::text IS NULL OR task_name = $3)
               AND created_ms >= $4 AND created_ms <= $5
               AND (created_ms, uuid) < ($6, $7)
               AND (purge_at IS NULL OR purge_at > clock_timestamp())
             ORDER BY created_ms DESC, uuid DESC
             LIMIT $8",
        )
        .bind(&self.app.name)
        .bind(query.status.map(TaskStatus::as_str))
        .bind(query.task_name.as_deref())
        .bind(query.since.map_or(0, ms))
        .bind(query.until.map_or(i64::MAX, ms))
        .bind(after_ms)
        .bind(after_uuid)
        .bind(i64::try_from(size + 1).unwrap_or(i64::MAX))
        .fetch_all(self.app.pool())
        .await
        .map_err(|e| failure("listing the records failed", e))?;
        let mut records: Vec<TaskRecord> = rows.iter().map(record::read).collect();
        let scanned = records.len() as u64;
        let next = (records.len() > size).then(|| RecordCursor::of(&records[size - 1]));
        records.truncate(size);
        let mut page = RecordPage::new(records);
        page.next = next;
        page.scanned = scanned;
        Ok(page)
    }

    async fn delete(&self, uuid: Uuid) -> Result<bool, BackendError> {
        let deleted: i64 = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM records WHERE app = $1 AND uuid = $2
                   AND status IN ('success', 'error', 'cancel', 'retry')
                 RETURNING uuid),
             items AS (DELETE FROM items WHERE app = $1 AND uuid IN (SELECT uuid FROM gone))
             SELECT count(*) FROM gone",
        )
        .bind(&self.app.name)
        .bind(uuid)
        .fetch_one(self.app.pool())
        .await
        .map_err(|e| failure(format!("deleting the record of task {uuid} failed"), e))?;
        Ok(deleted > 0)
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        for statement in [
            "DELETE FROM items WHERE app = $1",
            "DELETE FROM records WHERE app = $1",
            "DELETE FROM unique_keys WHERE app = $1",
        ] {
            sqlx::query(statement)
                .bind(&self.app.name)
                .execute(self.app.pool())
                .await
                .map_err(|e| failure("flushing the records failed", e))?;
        }
        Ok(())
    }
}
