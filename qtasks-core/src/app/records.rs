//! Operating on stored records from outside a task, through [`QueueTasks::records`]: listing
//! them a page at a time, deleting a finished one, retrying a failed one as a new linked
//! attempt.

use uuid::Uuid;

use super::QueueTasks;
use super::tasks::Placement;
use crate::records::RecordUpdate;
use crate::records::{RecordPage, RecordQuery};
use crate::{Error, Result, TaskHandle, TaskStatus};

/// How long a retry by hand holds its claim on the task it retries (see `Records::retry`).
const RETRY_CLAIM: std::time::Duration = std::time::Duration::from_secs(60);

impl QueueTasks {
    /// The stored task records: list, delete, retry by hand.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::new();
    /// let page = app.records().list(&qtasks::records::RecordQuery::default()).await?;
    /// assert!(page.records.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn records(&self) -> Records<'_> {
        Records { app: self }
    }
}

/// The stored task records of an app, from [`QueueTasks::records`].
#[derive(Debug, Clone, Copy)]
pub struct Records<'a> {
    app: &'a QueueTasks,
}

impl Records<'_> {
    /// One page of task records, newest first, filtered by status, task name and time (see
    /// [`records`](crate::records)). On Redis a page is read from an index by time, so a
    /// store of millions of records lists as fast as an empty one.
    pub async fn list(self, query: &RecordQuery) -> Result<RecordPage> {
        Ok(self.app.components().storage.list(query).await?)
    }

    /// Deletes the record of a finished task; `false` if there was none. A task that still
    /// waits or runs is refused ([`Error::WrongStatus`]): cancel it first.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::new();
    /// assert!(!app.records().delete(qtasks::Uuid::new_v4()).await?);
    /// # Ok(()) }
    /// ```
    pub async fn delete(self, uuid: Uuid) -> Result<bool> {
        let Some(record) = self.app.components().storage.get(uuid).await? else {
            return Ok(false);
        };
        // A final status never changes again, so nothing can start the task in between.
        if !record.status.is_final() {
            return Err(Error::WrongStatus {
                action: "delete",
                uuid,
                status: record.status,
                hint: "cancel it first, then delete it",
            });
        }
        Ok(self.app.components().storage.delete(uuid).await?)
    }

    /// Runs a task that failed (or was cancelled) again, as a new attempt with the same name,
    /// arguments and priority. The new record names the old one as its `retry_parent_uuid`,
    /// and the old one names the new one as its `retry_child_uuid`, so the chain reads both
    /// ways. A task that succeeded, waits or runs is refused ([`Error::WrongStatus`]); a task
    /// retried once already is refused too (retry its latest attempt).
    pub async fn retry(self, uuid: Uuid) -> Result<TaskHandle> {
        let record = self
            .app
            .components()
            .storage
            .get(uuid)
            .await?
            .ok_or(Error::TaskNotFound(uuid))?;
        let refuse = |hint| Error::WrongStatus {
            action: "retry",
            uuid,
            status: record.status,
            hint,
        };
        match record.status {
            TaskStatus::Error | TaskStatus::Cancel => {}
            TaskStatus::Success => return Err(refuse("it succeeded; add it anew instead")),
            TaskStatus::Retry => {
                return Err(refuse("it was retried already; retry its latest attempt"));
            }
            _ => return Err(refuse("it has not ended")),
        }
        if record.retry_child_uuid.is_some() {
            return Err(refuse(
                "it was retried by hand already; retry its latest attempt",
            ));
        }
        // Read, then write: two retries at once (two clicks, two operators) would both pass
        // the checks above. One claim in the backend lets only the first queue an attempt;
        // by the time it expires the record names its child, which refuses later ones.
        if !self
            .app
            .components()
            .global_config
            .claim(&format!("retry:{uuid}"), RETRY_CLAIM)
            .await?
        {
            return Err(refuse(
                "another retry of it is under way; retry its latest attempt",
            ));
        }
        let definition = crate::registry::TaskTable::global()
            .ok()
            .and_then(|table| table.get(&record.task_name));
        let handle = self
            .app
            .enqueue(
                record.task_name,
                record.priority,
                record.args,
                record.kwargs,
                definition,
                Placement {
                    retry_parent: Some(uuid),
                    group: record.group_uuid,
                    max_time: record.max_time,
                    queue: record.queue.clone(),
                    rate_key: record.rate_key.clone(),
                    workflow: record.workflow.clone(),
                    ..Placement::default()
                },
            )
            .await?;
        self.app
            .components()
            .storage
            .update(
                uuid,
                RecordUpdate {
                    retry_child_uuid: Some(handle.uuid()),
                    ..RecordUpdate::default()
                },
            )
            .await?;
        Ok(handle)
    }
}
