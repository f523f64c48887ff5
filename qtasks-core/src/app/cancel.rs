//! Cancelling a task: `app.cancel(uuid, reason)`, and the cancellable tasks of this process.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use uuid::Uuid;

use crate::backend::CancelState;
use crate::records::RecordUpdate;
use crate::{Error, QueueTasks, Result, TaskStatus};

/// How long a cancel for a task that has not started running here is remembered. A taken task
/// registers within moments; a request for a task another process runs is forgotten after this.
const EARLY_CANCEL_TTL: Duration = Duration::from_secs(60);

/// The running tasks of this process that can be cancelled, and cancels that arrived before
/// their task started running (kept for [`EARLY_CANCEL_TTL`], so they do not pile up): a
/// task's cancel by its uuid, and a delivery's stop by its receipt (a delivery the broker lost
/// while it waited to run, e.g. a suspect waiting for every slot while its connection died).
///
/// Runs are keyed by their delivery's receipt under the task's uuid: one process may run two
/// deliveries of one task at once (it stalled past a lease, then took the task back), and the
/// end of the old run must neither unregister nor stop the new one.
///
/// Both live under one lock: a cancel that arrives while its task registers must land either in
/// the running task's channel or in the early cancels the registration takes, never between.
#[derive(Default)]
pub(crate) struct Cancels {
    maps: Mutex<CancelMaps>,
}

#[derive(Default)]
struct CancelMaps {
    running: HashMap<Uuid, Vec<Run>>,
    early: HashMap<Uuid, (String, Instant)>,
    early_deliveries: HashMap<String, (String, Instant)>,
}

/// One registered run: its delivery's receipt and the channel that stops it.
struct Run {
    receipt: String,
    stop: watch::Sender<Option<String>>,
}

impl Cancels {
    /// Registers the run of a delivery about to start; its receiver says when to stop (at
    /// once, if a cancel came early).
    pub(crate) fn register(&self, uuid: Uuid, receipt: &str) -> watch::Receiver<Option<String>> {
        let mut maps = self.maps.lock();
        let now = Instant::now();
        maps.early_deliveries
            .retain(|_, (_, at)| now.duration_since(*at) < EARLY_CANCEL_TTL);
        // A delivery lost before it ran stops at once, and leaves a cancel of the task for the
        // delivery that replaces it.
        let early = match maps.early_deliveries.remove(receipt) {
            Some((reason, _)) => Some(reason),
            None => maps.early.remove(&uuid).map(|(reason, _)| reason),
        };
        let (stop, receiver) = watch::channel(early);
        maps.running.entry(uuid).or_default().push(Run {
            receipt: receipt.to_owned(),
            stop,
        });
        receiver
    }

    /// Why the delivery `receipt` was stopped before it ran (its broker lost it), if it was:
    /// such a delivery must not start.
    pub(crate) fn stopped_before_start(&self, receipt: &str) -> Option<String> {
        self.maps
            .lock()
            .early_deliveries
            .remove(receipt)
            .map(|(reason, _)| reason)
    }

    /// Forgets the run of this delivery (and only it).
    pub(crate) fn unregister(&self, uuid: Uuid, receipt: &str) {
        let mut maps = self.maps.lock();
        if let Some(runs) = maps.running.get_mut(&uuid) {
            runs.retain(|run| run.receipt != receipt);
            if runs.is_empty() {
                maps.running.remove(&uuid);
            }
        }
    }

    /// Cancels every run of a task in this process; `false` if none runs.
    pub(crate) fn cancel_running(&self, uuid: Uuid, reason: &str) -> bool {
        tell_runs(&self.maps.lock(), uuid, reason)
    }

    /// Stops the run of one delivery (its lease was lost); `false` if it does not run here. A
    /// delivery taken but not running yet is remembered, and stops as soon as it registers.
    pub(crate) fn cancel_delivery(&self, uuid: Uuid, receipt: &str, reason: &str) -> bool {
        let mut maps = self.maps.lock();
        if let Some(run) = maps
            .running
            .get(&uuid)
            .and_then(|runs| runs.iter().find(|run| run.receipt == receipt))
        {
            return run.stop.send(Some(reason.to_owned())).is_ok();
        }
        let now = Instant::now();
        maps.early_deliveries
            .retain(|_, (_, at)| now.duration_since(*at) < EARLY_CANCEL_TTL);
        maps.early_deliveries
            .insert(receipt.to_owned(), (reason.to_owned(), now));
        false
    }

    /// Up to `most` of the tasks running in this process, for the worker's description.
    pub(crate) fn running(&self, most: usize) -> Vec<Uuid> {
        let mut running: Vec<Uuid> = self
            .maps
            .lock()
            .running
            .keys()
            .take(most)
            .copied()
            .collect();
        running.sort_unstable();
        running
    }

    /// Interrupts every task running in this process (a stop that cannot wait any longer), but
    /// not one cancelled already: its cancel must stand (an interrupt hands the task back to run
    /// again; a `true` cancel must end it).
    pub(crate) fn cancel_all(&self, reason: &str) -> usize {
        let maps = self.maps.lock();
        let mut count = 0;
        for run in maps.running.values().flatten() {
            run.stop.send_if_modified(|stop| {
                if stop.is_some() {
                    return false;
                }
                *stop = Some(reason.to_owned());
                true
            });
            count += 1;
        }
        count
    }

    /// Cancels a task running in this process, or remembers the cancel for a while in case it
    /// is about to start here (taken, not yet registered).
    pub(crate) fn cancel_here(&self, uuid: Uuid, reason: &str) -> bool {
        // One lock for the look, the send and the early insert: a run that registers in
        // between would otherwise miss the cancel.
        let mut maps = self.maps.lock();
        if maps.running.contains_key(&uuid) {
            return tell_runs(&maps, uuid, reason);
        }
        let now = Instant::now();
        maps.early
            .retain(|_, (_, at)| now.duration_since(*at) < EARLY_CANCEL_TTL);
        maps.early.insert(uuid, (reason.to_owned(), now));
        false
    }

    /// How many early cancels are remembered (for tests of the pruning).
    #[cfg(test)]
    pub(crate) fn early_len(&self) -> usize {
        self.maps.lock().early.len()
    }
}

/// Tells every run of `uuid` to stop (no short cut after the first); `false` if none listened.
fn tell_runs(maps: &CancelMaps, uuid: Uuid, reason: &str) -> bool {
    maps.running.get(&uuid).is_some_and(|runs| {
        runs.iter()
            .filter(|run| run.stop.send(Some(reason.to_owned())).is_ok())
            .count()
            > 0
    })
}

impl QueueTasks {
    /// Cancels a task: one still queued never runs; a running one is stopped (an async task at
    /// its next `.await`; a plain `fn` cannot be stopped mid-call, so it ends `cancel` and its
    /// thread finishes in the background). Either way it ends `cancel` with the reason and is
    /// not retried. Returns `false` when the task had ended already.
    ///
    /// The decision is atomic on backends that support it (in memory and on Redis): a `new`
    /// task becomes `cancel` and never runs; a running one is asked to stop; a finished one
    /// keeps its status (and this returns `false`). No worker can take the task in between.
    pub async fn cancel(&self, uuid: Uuid, reason: &str) -> Result<bool> {
        let cancelled_waiting = self.cancel_quietly(uuid, reason).await?;
        if cancelled_waiting == Some(true) {
            // A workflow's step cancelled while it waited ends here, not in a worker: the
            // workflow hears of it from here.
            self.step_cancelled(uuid, reason).await;
        }
        Ok(cancelled_waiting.is_some())
    }

    /// [`cancel`](Self::cancel) without telling the task's workflow: `Some(true)` cancelled
    /// while it waited, `Some(false)` asked to stop while it runs, `None` ended already.
    pub(crate) async fn cancel_quietly(&self, uuid: Uuid, reason: &str) -> Result<Option<bool>> {
        // The backend decides first, even for a task running here: its record must say the
        // cancel was asked (a run that ends before it hears of it, or is handed back by a
        // stop, must still end `cancel`), and a run of this process may be a stale one.
        let state = match self.components().broker.cancel(uuid, reason).await? {
            Some(state) => state,
            None => {
                if self.cancels().cancel_running(uuid, reason) {
                    return Ok(Some(false));
                }
                self.cancel_by_reading(uuid, reason).await?
            }
        };
        match state {
            CancelState::Cancelled => Ok(Some(true)),
            CancelState::Running => {
                // Taken by this process's worker and about to start: it stops at once.
                self.cancels().cancel_here(uuid, reason);
                Ok(Some(false))
            }
            CancelState::Ended(_) => Ok(None),
            CancelState::NotFound => Err(Error::TaskNotFound(uuid)),
        }
    }

    /// Moves the workflow of a task cancelled while it waited, if it is a workflow's step.
    async fn step_cancelled(&self, uuid: Uuid, reason: &str) {
        let record = match self.get(uuid).await {
            Ok(Some(record)) => record,
            _ => return,
        };
        if let Some(step) = record.workflow {
            let cancelled = crate::task::Outcome::Cancel(reason.to_owned());
            // On its own task: moving a workflow may cancel its other steps, which comes back
            // here.
            let app = self.clone();
            tokio::spawn(async move {
                app.advance_workflow_patiently(step, uuid, record.task_name, cancelled)
                    .await;
            });
        }
    }

    /// Cancels through the storage for a broker that cannot decide atomically: read, then
    /// write (a worker may take the task in between; it then runs).
    async fn cancel_by_reading(&self, uuid: Uuid, reason: &str) -> Result<CancelState> {
        let Some(record) = self.components().storage.get(uuid).await? else {
            return Ok(CancelState::NotFound);
        };
        Ok(match record.status {
            TaskStatus::New => {
                let update = RecordUpdate {
                    status: Some(TaskStatus::Cancel),
                    cancel_reason: Some(reason.to_owned()),
                    ..RecordUpdate::default()
                };
                self.components().storage.update(uuid, update).await?;
                CancelState::Cancelled
            }
            TaskStatus::Process => {
                self.components()
                    .broker
                    .request_cancel(uuid, reason)
                    .await?;
                CancelState::Running
            }
            status => CancelState::Ended(status),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_cancels_are_used_once_and_pruned() {
        let cancels = Cancels::default();
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(!cancels.cancel_here(first, "stop"));
        assert_eq!(
            *cancels.register(first, "r1").borrow(),
            Some("stop".to_owned())
        );
        assert_eq!(cancels.early_len(), 0, "used when the task registers");

        cancels
            .maps
            .lock()
            .early
            .insert(second, ("old".into(), Instant::now() - EARLY_CANCEL_TTL));
        // Registered, its run gone (the receiver was dropped): not remembered as early.
        assert!(!cancels.cancel_here(first, "again"));
        assert!(!cancels.cancel_here(Uuid::new_v4(), "early"));
        assert_eq!(cancels.early_len(), 1, "the expired one was pruned");
    }

    #[test]
    fn a_delivery_lost_before_it_runs_stops_as_soon_as_it_registers() {
        let cancels = Cancels::default();
        let uuid = Uuid::new_v4();
        // Taken, waiting to run, and its broker lost it (its connection died).
        assert!(!cancels.cancel_delivery(uuid, "lost", "DeliveryLost"));
        assert_eq!(
            cancels.stopped_before_start("lost").as_deref(),
            Some("DeliveryLost"),
            "the worker sees it before it starts the run"
        );
        assert!(!cancels.cancel_delivery(uuid, "lost", "DeliveryLost"));
        assert_eq!(
            cancels.register(uuid, "lost").borrow().as_deref(),
            Some("DeliveryLost"),
            "a run that registers anyway stops at once"
        );
        assert_eq!(
            *cancels.register(uuid, "next").borrow(),
            None,
            "the delivery that replaces it runs"
        );
    }

    #[test]
    fn two_runs_of_one_task_are_told_apart_by_their_receipts() {
        let cancels = Cancels::default();
        let uuid = Uuid::new_v4();
        let old = cancels.register(uuid, "old-lease");
        let new = cancels.register(uuid, "new-lease");
        // The old run lost its lease: only it stops.
        assert!(cancels.cancel_delivery(uuid, "old-lease", "LeaseLost"));
        assert_eq!(old.borrow().as_deref(), Some("LeaseLost"));
        assert_eq!(*new.borrow(), None, "the new run goes on");
        // The old run ends: the new one is still registered and cancellable.
        cancels.unregister(uuid, "old-lease");
        assert!(cancels.cancel_running(uuid, "user"));
        assert_eq!(new.borrow().as_deref(), Some("user"));
        cancels.unregister(uuid, "new-lease");
        assert!(
            !cancels.cancel_running(uuid, "again"),
            "nothing runs any more"
        );
    }
}
