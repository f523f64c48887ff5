//! A running task's progress (`ctx.set_progress(..)`): the latest value goes to the storage,
//! at most once per [`PROGRESS_INTERVAL`], so a task that reports in a tight loop costs the
//! engine a few writes a second, and the last value reported is never lost to the throttle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::QueueTasks;
use crate::deps::Scope;

/// The shortest time between two progress writes of one run.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// The longest the end of a run waits for its last progress write.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// One run's throttle, kept in its scope (no allocation until the task reports).
#[derive(Default)]
pub(crate) struct Throttle {
    /// When the last write went out.
    last_sent: Option<Instant>,
    /// The newest value not written yet.
    pending: Option<Value>,
    /// The scheduled write of `pending`, if any.
    flush: Option<JoinHandle<()>>,
    /// The last write sent, awaited before the run's outcome is stored.
    in_flight: Option<JoinHandle<()>>,
}

/// Where a run's progress goes.
pub(crate) struct ProgressTarget<'a> {
    pub(crate) app: &'a QueueTasks,
    pub(crate) scope: &'a Scope,
    pub(crate) uuid: Uuid,
    pub(crate) delivery: &'a Arc<str>,
    /// The runtime the run belongs to: a report may come from a thread of the task's own
    /// (a plain `fn` task's rayon pool) that has none.
    pub(crate) runtime: &'a tokio::runtime::Handle,
}

/// Reports `value`: written now when the last write is old enough, else kept as the newest and
/// written once the interval has passed (a later report replaces it meanwhile).
pub(crate) fn report(target: &ProgressTarget<'_>, value: Value) {
    let now = Instant::now();
    let mut throttle = target.scope.progress().lock();
    let due = throttle
        .last_sent
        .map_or(now, |last| last + PROGRESS_INTERVAL);
    // A write still under way (a slow storage) holds the next value back too: writes never
    // pile up behind one another.
    let writing = throttle
        .in_flight
        .as_ref()
        .is_some_and(|write| !write.is_finished());
    let due = if writing {
        due.max(now + PROGRESS_INTERVAL)
    } else {
        due
    };
    if due <= now && throttle.flush.is_none() {
        throttle.last_sent = Some(now);
        let (app, scope, uuid, delivery) = (
            target.app.clone(),
            target.scope.clone(),
            target.uuid,
            Arc::clone(target.delivery),
        );
        throttle.in_flight = Some(target.runtime.spawn(async move {
            write(&app, &scope, uuid, &delivery, value).await;
        }));
        return;
    }
    throttle.pending = Some(value);
    if throttle.flush.is_some() {
        return;
    }
    let (app, scope, uuid, delivery) = (
        target.app.clone(),
        target.scope.clone(),
        target.uuid,
        Arc::clone(target.delivery),
    );
    throttle.flush = Some(target.runtime.spawn(async move {
        tokio::time::sleep_until(due.into()).await;
        // The write lock first: the end of the run, waiting for it, then finds the value
        // either written or still pending, never half-way.
        let _writing = scope.progress_writes().lock().await;
        let value = {
            let mut throttle = scope.progress().lock();
            throttle.flush = None;
            throttle.last_sent = Some(Instant::now());
            throttle.pending.take()
        };
        if let Some(value) = value {
            store(&app, uuid, &delivery, value).await;
        }
    }));
}

/// Called when the run's task returned, before its outcome is stored: the last write sent is
/// waited for, and a value still held back by the throttle is written now, so the record keeps
/// the last progress reported (a write after the outcome would be refused). Nothing to do for
/// a task that never reported.
pub(crate) async fn settle(target: &ProgressTarget<'_>) {
    let (in_flight, pending) = {
        let mut throttle = target.scope.progress().lock();
        if throttle.last_sent.is_none() && throttle.pending.is_none() {
            return;
        }
        // A scheduled write that has not taken the pending value yet finds none and writes
        // nothing; one that has holds the write lock until its write is done (it is never
        // aborted: a write dropped half-way would lose the value).
        (throttle.in_flight.take(), throttle.pending.take())
    };
    // Bounded: a storage that hangs must not hold the run's outcome back.
    let finishing = async {
        if let Some(in_flight) = in_flight {
            let _ = in_flight.await;
        }
        let _writing = target.scope.progress_writes().lock().await;
        if let Some(value) = pending {
            store(target.app, target.uuid, target.delivery, value).await;
        }
    };
    if tokio::time::timeout(SETTLE_TIMEOUT, finishing)
        .await
        .is_err()
    {
        tracing::warn!(uuid = %target.uuid, "the last progress of task {} was not stored within {SETTLE_TIMEOUT:?}", target.uuid);
    }
}

/// One write, under the run's write lock.
async fn write(app: &QueueTasks, scope: &Scope, uuid: Uuid, delivery: &str, value: Value) {
    let _writing = scope.progress_writes().lock().await;
    store(app, uuid, delivery, value).await;
}

/// Stores a value. Refused (the run lost the task, or it ended) or failed, it is only logged:
/// progress is advice, and the run goes on.
async fn store(app: &QueueTasks, uuid: Uuid, delivery: &str, value: Value) {
    match app
        .components()
        .storage
        .set_progress(uuid, delivery, value)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(uuid = %uuid, "the progress of task {uuid} was not stored: its run no longer holds it, or the storage keeps no progress");
        }
        Err(error) => {
            tracing::warn!(uuid = %uuid, "storing the progress of task {uuid} failed: {}", crate::backend::ErrorChain(&error));
        }
    }
}
