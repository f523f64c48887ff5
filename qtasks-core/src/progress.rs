//! A running task's progress (`ctx.set_progress(..)`): the latest value goes to the storage,
//! at most once per [`PROGRESS_INTERVAL`], so a task that reports in a tight loop costs the
//! engine a few writes a second, and the last value reported is never lost to the throttle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::QueueTasks;
use crate::deps::Scope;

/// The shortest time between two progress writes of one run.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// One run's throttle, kept in its scope (no allocation until the task reports).
#[derive(Default)]
pub(crate) struct Throttle {
    /// When the last write went out.
    last_sent: Option<Instant>,
    /// The newest value not written yet.
    pending: Option<Value>,
    /// Whether a write of `pending` is scheduled.
    flush_scheduled: bool,
}

/// Where a run's progress goes.
pub(crate) struct ProgressTarget<'a> {
    pub(crate) app: &'a QueueTasks,
    pub(crate) scope: &'a Scope,
    pub(crate) uuid: Uuid,
    pub(crate) delivery: &'a Arc<str>,
}

/// Reports `value`: written now when the last write is old enough, else kept as the newest and
/// written once the interval has passed (a later report replaces it meanwhile).
pub(crate) fn report(target: &ProgressTarget<'_>, value: Value) {
    let now = Instant::now();
    let mut throttle = target.scope.progress().lock();
    let due = throttle
        .last_sent
        .map_or(now, |last| last + PROGRESS_INTERVAL);
    if due <= now && !throttle.flush_scheduled {
        throttle.last_sent = Some(now);
        drop(throttle);
        let (app, uuid, delivery) = (target.app.clone(), target.uuid, Arc::clone(target.delivery));
        tokio::spawn(async move { write(&app, uuid, &delivery, value).await });
        return;
    }
    throttle.pending = Some(value);
    if throttle.flush_scheduled {
        return;
    }
    throttle.flush_scheduled = true;
    drop(throttle);
    let (app, scope, uuid, delivery) = (
        target.app.clone(),
        target.scope.clone(),
        target.uuid,
        Arc::clone(target.delivery),
    );
    tokio::spawn(async move {
        tokio::time::sleep_until(due.into()).await;
        let value = {
            let mut throttle = scope.progress().lock();
            throttle.flush_scheduled = false;
            throttle.last_sent = Some(Instant::now());
            throttle.pending.take()
        };
        if let Some(value) = value {
            write(&app, uuid, &delivery, value).await;
        }
    });
}

/// One write. Refused (the run lost the task, or it ended) or failed, it is only logged:
/// progress is advice, and the run goes on.
async fn write(app: &QueueTasks, uuid: Uuid, delivery: &str, value: Value) {
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
