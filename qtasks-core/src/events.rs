//! Events: callbacks registered on the app for moments of its life, sync or async.
//!
//! Unlike the original, every event reaches the callbacks registered on the app, including the
//! `task_*` ones (the original fires those on the worker's own events object).

use parking_lot::RwLock;
use std::future::Future;
use std::sync::Arc;

use crate::QueuedTask;
use crate::panic::{catch_panic, panic_message};
use crate::plugin::BoxFuture;
use crate::task::Outcome;

/// Which moment an event marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// The app is starting (before the worker runs).
    Starting,
    /// The app is stopping (after the worker stopped).
    Stopping,
    /// A worker loop started (`worker_number` is set).
    WorkerRunning,
    /// A worker loop stopped (`worker_number` is set).
    WorkerStopping,
    /// A task is about to run (`task` is set).
    TaskRunning,
    /// A task succeeded (`task` and `outcome` are set).
    TaskSuccess,
    /// A task failed, or an attempt failed and will be retried (`task` and `outcome`).
    TaskError,
    /// A task was cancelled (`task` and `outcome`).
    TaskCancel,
    /// A task finished running, whatever the outcome (`task` and `outcome`).
    TaskStopping,
}

/// What an event callback receives.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Event {
    /// Which moment.
    pub kind: EventKind,
    /// The app's name.
    pub app: String,
    /// The task, for `task_*` events.
    pub task: Option<QueuedTask>,
    /// How the task ended, for `task_success`, `task_error`, `task_cancel`, `task_stopping`.
    pub outcome: Option<Outcome>,
    /// The worker loop, for `worker_*` events.
    pub worker_number: Option<usize>,
}

impl Event {
    pub(crate) fn new(kind: EventKind, app: String) -> Self {
        Event {
            kind,
            app,
            task: None,
            outcome: None,
            worker_number: None,
        }
    }
}

type SyncCallback = Arc<dyn Fn(&Event) + Send + Sync>;
type AsyncCallback = Arc<dyn Fn(Event) -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Clone)]
enum Callback {
    Sync(SyncCallback),
    Async(AsyncCallback),
}

/// The callbacks of one app.
#[derive(Default)]
pub(crate) struct Events {
    callbacks: RwLock<Vec<(EventKind, Callback)>>,
}

impl Events {
    pub(crate) fn on(&self, kind: EventKind, callback: impl Fn(&Event) + Send + Sync + 'static) {
        self.push(kind, Callback::Sync(Arc::new(callback)));
    }

    pub(crate) fn on_async<F, Fut>(&self, kind: EventKind, callback: F)
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.push(
            kind,
            Callback::Async(Arc::new(move |event| Box::pin(callback(event)))),
        );
    }

    fn push(&self, kind: EventKind, callback: Callback) {
        self.callbacks.write().push((kind, callback));
    }

    pub(crate) fn count(&self) -> usize {
        self.callbacks.read().len()
    }

    /// Calls the callbacks of `kind` in registration order. The event is built only when a
    /// callback wants it. A callback that panics is logged; the others still run.
    pub(crate) async fn fire(&self, kind: EventKind, build: impl FnOnce() -> Event) {
        let callbacks: Vec<Callback> = {
            let all = self.callbacks.read();
            all.iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, c)| c.clone())
                .collect()
        };
        if callbacks.is_empty() {
            return;
        }
        // Boxed: the event (a whole task) would otherwise sit in the future of every caller,
        // the worker's per-task future among them, whether anyone listens or not.
        Box::pin(Self::call_back(kind, callbacks, build())).await;
    }

    async fn call_back(kind: EventKind, callbacks: Vec<Callback>, event: Event) {
        for callback in callbacks {
            let failed = match callback {
                Callback::Sync(f) => {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&event)))
                        .err()
                        .map(|panic| panic_message(panic.as_ref()))
                }
                Callback::Async(f) => catch_panic(f(event.clone())).await.err(),
            };
            if let Some(message) = failed {
                tracing::error!(event = ?kind, "an event callback panicked: {message}");
            }
        }
    }
}
