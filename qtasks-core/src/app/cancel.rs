//! Cancelling a task: `app.cancel(uuid, reason)`, and the cancellable tasks of this process.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;
use uuid::Uuid;

use crate::sync::MutexExt;
use crate::triggers::RecordUpdate;
use crate::{Error, QueueTasks, Result, TaskStatus};

/// The running tasks of this process that can be cancelled, and cancels that arrived before
/// their task started running.
#[derive(Default)]
pub(crate) struct Cancels {
    running: Mutex<HashMap<Uuid, watch::Sender<Option<String>>>>,
    early: Mutex<HashMap<Uuid, String>>,
}

impl Cancels {
    /// Registers a task about to run; its receiver says when to stop.
    pub(crate) fn register(&self, uuid: Uuid) -> watch::Receiver<Option<String>> {
        let early = self.early.lock_unpoisoned().remove(&uuid);
        let (sender, receiver) = watch::channel(early);
        self.running.lock_unpoisoned().insert(uuid, sender);
        receiver
    }

    pub(crate) fn unregister(&self, uuid: Uuid) {
        self.running.lock_unpoisoned().remove(&uuid);
    }

    /// Cancels a task running in this process; `false` if none is.
    pub(crate) fn cancel_running(&self, uuid: Uuid, reason: &str) -> bool {
        match self.running.lock_unpoisoned().get(&uuid) {
            Some(sender) => sender.send(Some(reason.to_owned())).is_ok(),
            None => false,
        }
    }

    /// Remembers a cancel for a task that has not registered yet.
    pub(crate) fn cancel_early(&self, uuid: Uuid, reason: &str) {
        self.early.lock_unpoisoned().insert(uuid, reason.to_owned());
    }
}

impl QueueTasks {
    /// Cancels a task: one still queued never runs; a running one is stopped (an async task at
    /// its next `.await`; a plain `fn` cannot be stopped mid-call, so it ends `cancel` and its
    /// thread finishes in the background). Either way it ends `cancel` with the reason and is
    /// not retried. Returns `false` when the task had ended already.
    pub async fn cancel(&self, uuid: Uuid, reason: &str) -> Result<bool> {
        if self.inner.cancels.cancel_running(uuid, reason) {
            return Ok(true);
        }
        let Some(record) = self.inner.storage.get(uuid).await? else {
            return Err(Error::TaskNotFound(uuid));
        };
        match record.status {
            TaskStatus::New => {
                let update = RecordUpdate {
                    status: Some(TaskStatus::Cancel),
                    cancel_reason: Some(reason.to_owned()),
                    ..RecordUpdate::default()
                };
                self.inner.storage.update(uuid, update).await?;
                // In case a worker of this process took it meanwhile.
                self.inner.cancels.cancel_early(uuid, reason);
                Ok(true)
            }
            TaskStatus::Process => {
                self.inner.cancels.cancel_early(uuid, reason);
                self.inner.broker.request_cancel(uuid, reason).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
