//! The worker host (what a [`Worker`] uses to take and run tasks) and the default worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tracing::Instrument;
use uuid::Uuid;

use super::Worker;
use crate::backend::Delivery;
use crate::backend::unix_now;
use crate::components::TaskExecutor;
use crate::dispatch::chain;
use crate::events::{Event, EventKind};
use crate::panic::catch_panic;
use crate::plugin::BoxFuture;
use crate::queues::{DEFAULT_QUEUE, QueuePlan};
use crate::records::RecordUpdate;
use crate::registry::TaskTable;
use crate::task::Outcome;
use crate::triggers::{
    BrokerAddWorker, BrokerListenStart, BrokerRemoveFinishedTask, BrokerRunningOlderTasks,
    BrokerUpdate, StorageAddProcess, StorageRemoveFinishedTask, StorageRunningOlderTasks,
    StorageUpdate, WorkerAdd, WorkerExecuteAfter, WorkerExecuteBefore, WorkerRemoveFinishedTask,
    WorkerRunTaskBefore, WorkerTaskErrorRetry,
};
use crate::{QueueTasks, QueuedTask, TaskDefinition, TaskStatus, Trigger};

/// How long a suspect delivery waits for the worker's other tasks to end before it is handed
/// back (to this worker or another, later).
const SUSPECT_WAIT: Duration = Duration::from_secs(10);

/// How long the worker waits before asking a failing broker again.
const BROKER_RETRY_DELAY: Duration = Duration::from_millis(500);

/// What a [`Worker`] uses to take and run tasks: every trigger and event of a task's life
/// happens in here, so a custom worker only decides when to call it.
#[derive(Clone)]
pub struct WorkerHost {
    inner: Arc<HostInner>,
}

struct HostInner {
    app: QueueTasks,
    tasks: &'static TaskTable,
    stop_requested: watch::Receiver<bool>,
    listening: AtomicBool,
    /// The queues this worker serves: the order of each take, and the caps per queue.
    queues: QueuePlan,
}

impl WorkerHost {
    pub(crate) fn new(
        app: QueueTasks,
        tasks: &'static TaskTable,
        stop_requested: watch::Receiver<bool>,
    ) -> Self {
        let config = app.config();
        let queues = QueuePlan::new(
            &config.queues,
            config.queues_strict,
            &config.queue_concurrency,
        );
        WorkerHost {
            inner: Arc::new(HostInner {
                app,
                tasks,
                stop_requested,
                listening: AtomicBool::new(false),
                queues,
            }),
        }
    }

    /// The app the worker serves.
    pub fn app(&self) -> &QueueTasks {
        &self.inner.app
    }

    /// How many tasks the worker should run at once (`max_tasks_process`, at least 1).
    pub fn concurrency(&self) -> usize {
        self.app().config().max_tasks_process.max(1)
    }

    /// Resolves when the app asks the worker to stop.
    pub async fn stop_requested(&self) {
        let mut stop_requested = self.inner.stop_requested.clone();
        let _ = stop_requested.wait_for(|stop| *stop).await;
    }

    /// Takes the next task, waiting while the queue is empty; `None` once the app is stopping.
    /// Broker failures are logged and retried.
    pub async fn next(&self) -> Option<Delivery> {
        self.next_batch(1).await.into_iter().next()
    }

    /// Takes up to `max` tasks at once (call it with the number of tasks the worker can start
    /// now) from the queues the app serves ([`QueueConfig::queues`](crate::QueueConfig)),
    /// waiting while they are empty; empty once the app is stopping. Each delivery must be
    /// [`execute`](Self::execute)d: a queue's cap counts it until then.
    pub async fn next_batch(&self, max: usize) -> Vec<Delivery> {
        let app = self.app();
        let (broker, worker) = (&*app.components().broker, &*app.components().worker);
        if !self.inner.listening.swap(true, Ordering::AcqRel) {
            app.dispatch()
                .fire(&BrokerListenStart { broker, worker })
                .await;
        }
        loop {
            // A stop that interrupts hands the running tasks back: this worker must not take
            // them (or anything) again meanwhile, or it would wait for them forever.
            if app.run_state().interrupting.load(Ordering::Acquire) {
                return Vec::new();
            }
            let plan = &self.inner.queues;
            // Registered before the take is planned, so a capped task that ends meanwhile
            // is not missed.
            let freed = plan.freed();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let take = plan.next_take(max.max(1));
            let next = if take.queues.is_empty() {
                // Every queue this worker serves is at its cap: wait for room.
                tokio::select! {
                    biased;
                    () = self.stop_requested() => return Vec::new(),
                    () = freed => continue,
                }
            } else {
                tokio::select! {
                    biased;
                    () = self.stop_requested() => return Vec::new(),
                    next = broker.take(&take) => next,
                }
            };
            match next {
                Ok(deliveries) if app.run_state().interrupting.load(Ordering::Acquire) => {
                    // Taken while the stop began (perhaps a task just handed back): give them
                    // back at once.
                    for delivery in &deliveries {
                        if let Err(error) = broker.release(delivery).await {
                            tracing::error!(uuid = %delivery.task.uuid, "handing a task back failed (it is taken again when its lease runs out): {}", crate::backend::ErrorChain(&error));
                        }
                    }
                    return Vec::new();
                }
                // Its patience ran out (a queue left out at its cap may have room now): the
                // take is planned again.
                Ok(deliveries) if deliveries.is_empty() && take.patience.is_some() => continue,
                Ok(mut deliveries) => {
                    for delivery in &mut deliveries {
                        plan.started(delivery.task.queue_name());
                        self.accept(delivery).await;
                    }
                    return deliveries;
                }
                Err(error) => {
                    tracing::error!(app = %app.name(), "the broker failed: {}; asking again in {BROKER_RETRY_DELAY:?}", crate::backend::ErrorChain(&error));
                    tokio::select! {
                        () = self.stop_requested() => return Vec::new(),
                        () = tokio::time::sleep(BROKER_RETRY_DELAY) => {}
                    }
                }
            }
        }
    }

    /// The triggers of a task arriving at the worker; each may change the task.
    async fn accept(&self, delivery: &mut Delivery) {
        let app = self.app();
        let dispatch = app.dispatch();
        let (broker, storage, worker) = (
            &*app.components().broker,
            &*app.components().storage,
            &*app.components().worker,
        );
        let task = &mut delivery.task;
        if delivery.recovered {
            dispatch
                .fire(&BrokerRunningOlderTasks {
                    broker,
                    worker,
                    tasks: std::slice::from_ref(task),
                })
                .await;
            chain!(
                dispatch,
                Trigger::StorageRunningOlderTasks,
                StorageRunningOlderTasks {
                    storage,
                    worker,
                    task
                },
                |update| update.apply_to(task)
            );
        }
        chain!(
            dispatch,
            Trigger::BrokerAddWorker,
            BrokerAddWorker {
                broker,
                worker,
                task
            },
            |update| update.apply_to(task)
        );
        chain!(
            dispatch,
            Trigger::StorageAddProcess,
            StorageAddProcess { storage, task },
            |update| update.apply_to(task)
        );
        chain!(
            dispatch,
            Trigger::WorkerAdd,
            WorkerAdd { worker, task },
            |update| update.apply_to(task)
        );
    }

    /// Runs one delivered task to its end and stores the outcome, with all its triggers and
    /// events. Never panics on the task's or a plugin's account.
    pub async fn execute(&self, delivery: Delivery) {
        /// Counts the run out when it ends, however it ends (a dropped future too).
        struct Counted<'a>(&'a crate::app::Counters);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.running.fetch_sub(1, Ordering::Relaxed);
                self.0.processed.fetch_add(1, Ordering::Relaxed);
            }
        }
        /// Gives the task's room in its queue's cap back, however the run ends.
        struct Capped<'a>(&'a QueuePlan, Option<String>);
        impl Drop for Capped<'_> {
            fn drop(&mut self) {
                self.0.ended(self.1.as_deref().unwrap_or(DEFAULT_QUEUE));
            }
        }
        let counters = &self.app().run_state().counters;
        counters.running.fetch_add(1, Ordering::Relaxed);
        let _counted = Counted(counters);
        let plan = &self.inner.queues;
        let _capped = plan
            .is_capped()
            .then(|| Capped(plan, delivery.task.queue.clone()));
        self.execute_counted(delivery).await;
    }

    async fn execute_counted(&self, mut delivery: Delivery) {
        let app = self.app();
        let dispatch = app.dispatch();
        let (broker, storage, worker) = (
            &*app.components().broker,
            &*app.components().storage,
            &*app.components().worker,
        );
        let uuid = delivery.task.uuid;
        // Lost by its broker while it waited here (a suspect waiting for every slot whose
        // connection died): another worker has it now, so it must not start here as well.
        if let Some(reason) = app.cancels().stopped_before_start(&delivery.receipt) {
            tracing::warn!(uuid = %uuid, "task {uuid} is not run here: {reason}");
            release_unrun(self, std::slice::from_ref(&delivery)).await;
            return;
        }
        let definition = delivery
            .task
            .definition
            .or_else(|| self.inner.tasks.get(&delivery.task.task_name))
            .filter(|definition| app.runs(definition));
        let max_deliveries = app.config().max_deliveries;
        let now = unix_now();
        // The worker that ended the task; `started_at` only once a run starts.
        delivery.run = crate::backend::RunInfo::new(now, app.run_state().worker_id.lock().clone());
        delivery.run.started_at = None;
        delivery.run.result_ttl = definition.and_then(TaskDefinition::result_ttl);
        // A delivery handed out again started before (its worker died, or stalled): its
        // expiry is behind it.
        let started_before = delivery.recovered || delivery.deliveries > 1;
        let expired_ago = delivery
            .task
            .expires_at
            .filter(|expires_at| *expires_at <= now && !started_before)
            .map(|expires_at| now - expires_at);
        let over_deliveries = max_deliveries > 0 && delivery.deliveries > max_deliveries;
        // A limited task that is to run asks the engine first; over a limit it waits in its
        // queue. The slot it may hold is given back however this ends.
        let mut _slot = None;
        let mut unlimitable = None;
        let mut asked = false;
        if let Some(limits) = definition
            .filter(|_| expired_ago.is_none() && !over_deliveries)
            .and_then(|definition| {
                crate::limits::TaskLimits::of(definition, delivery.task.rate_key.as_deref())
            })
        {
            asked = true;
            match Box::pin(self.admit(&delivery, limits)).await {
                Admitted::Run(slot) => _slot = slot,
                Admitted::Waits => return,
                Admitted::Refused(reason) => unlimitable = Some(reason),
            }
        }
        let mut outcome = match definition {
            // The broker cannot keep the task's limits: it must not run past them.
            _ if unlimitable.is_some() => Outcome::Error(unlimitable.take().unwrap_or_default()),
            // Not started in time: it must not run at all.
            _ if expired_ago.is_some() => {
                let reason = format!(
                    "expired: not started before its expiry, {:.1} s before a worker took it",
                    expired_ago.unwrap_or_default()
                );
                tracing::info!(uuid = %uuid, "task {uuid} {reason}");
                Outcome::Cancel(reason)
            }
            // Handed out too often: each earlier delivery ended with its worker (an abort, an
            // OOM kill, a stall past the lease), so this one must not run, or it never ends.
            _ if over_deliveries => {
                let reason = format!(
                    "DeliveryLimit: task {uuid} was handed out {} times (max_deliveries = {max_deliveries}) and its worker died or lost the lease every time before it ended (an abort, an OOM kill, a stack overflow?); it is not run again",
                    delivery.deliveries
                );
                tracing::error!(uuid = %uuid, "{reason}");
                Outcome::Error(reason)
            }
            Some(definition) => {
                // A limited task starts once the engine said so.
                delivery.run.started_at = Some(if asked { unix_now() } else { now });
                self.run(
                    &mut delivery.task,
                    &delivery.receipt,
                    &mut delivery.run,
                    definition,
                )
                .await
            }
            None => {
                // Not a task this worker runs: back to its queue for one that does.
                Box::pin(self.hand_back_unknown(delivery)).await;
                return;
            }
        };
        if matches!(&outcome, Outcome::Cancel(reason) if reason == crate::app::INTERRUPTED) {
            // Interrupted by a stop that could not wait: no outcome; the task waits again.
            app.run_state()
                .counters
                .handed_back
                .fetch_add(1, Ordering::Relaxed);
            if let Err(error) = broker.release(&delivery).await {
                tracing::error!(uuid = %uuid, "handing task {uuid} back failed (it is taken again when its lease runs out): {}", crate::backend::ErrorChain(&error));
            }
            return;
        }
        let task = &delivery.task;
        chain!(
            dispatch,
            Trigger::WorkerRemoveFinishedTask,
            WorkerRemoveFinishedTask {
                worker,
                broker,
                task,
                definition,
                outcome: &outcome
            },
            |replaced| outcome = replaced
        );
        chain!(
            dispatch,
            Trigger::BrokerRemoveFinishedTask,
            BrokerRemoveFinishedTask {
                broker,
                storage,
                task,
                outcome: &outcome
            },
            |replaced| outcome = replaced
        );
        if !matches!(outcome, Outcome::Error(_) | Outcome::Retry { .. }) {
            delivery.run.error_payload = None;
        }
        if let Err(error) = broker.finish(&delivery, outcome.clone()).await {
            if let Some(reason) = error.cancel_reason() {
                // Cancelled while it ran (a stored request this run had not seen yet): the
                // record says `cancel`, and so do the triggers and events that follow.
                tracing::info!(uuid = %uuid, "{error}");
                outcome = Outcome::Cancel(reason.to_owned());
            } else if error.is_refused() {
                app.run_state()
                    .counters
                    .refused_outcomes
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(uuid = %uuid, "{error}");
                return;
            } else {
                tracing::error!(uuid = %uuid, "could not store the result of task {uuid}: {}", crate::backend::ErrorChain(&error));
                return;
            }
        }
        // A member of a chord that succeeded may be the last one: the callback is due then.
        if let (Some(group), TaskStatus::Success) = (task.group_uuid, outcome.status()) {
            let app = app.clone();
            tokio::spawn(async move { app.complete_chord_patiently(group).await });
        }
        // A workflow's step that ended (not for a retry) moves its workflow on.
        if let Some(step) = &task.workflow
            && !matches!(outcome, Outcome::Retry { .. })
        {
            let (app, step, uuid) = (app.clone(), step.clone(), task.uuid);
            let (name, ended) = (task.task_name.clone(), outcome.clone());
            tokio::spawn(async move {
                app.advance_workflow_patiently(step, uuid, name, ended)
                    .await;
            });
        }
        dispatch
            .fire(&StorageRemoveFinishedTask {
                storage,
                task,
                outcome: &outcome,
            })
            .await;
        dispatch
            .fire(&WorkerExecuteAfter {
                task,
                definition,
                outcome: &outcome,
            })
            .await;
        let kind = match outcome.status() {
            TaskStatus::Success => EventKind::TaskSuccess,
            TaskStatus::Cancel => EventKind::TaskCancel,
            _ => EventKind::TaskError,
        };
        self.task_event(kind, task, Some(&outcome)).await;
    }

    /// A task this worker does not run (its name is not registered here, or its router is not
    /// among the app's): handed back to wait in its queue for a worker that does, each time a
    /// little longer, and after [`QueueConfig::unknown_task_hand_backs`] hand-backs set aside in
    /// the dead letters, its record `error` with the reason. Never failed on the spot: in a
    /// rolling deploy another worker knows the task.
    ///
    /// [`QueueConfig::unknown_task_hand_backs`]: crate::QueueConfig::unknown_task_hand_backs
    async fn hand_back_unknown(&self, delivery: Delivery) {
        let app = self.app();
        let broker = &*app.components().broker;
        let uuid = delivery.task.uuid;
        let name = &delivery.task.task_name;
        let limit = app.config().unknown_task_hand_backs;
        let hand_backs = delivery.task.hand_backs;
        let why = match self.inner.tasks.get(name) {
            Some(_) => {
                format!("UnknownTask: task `{name}` belongs to a router this worker does not run")
            }
            None => unknown_task(name, self.inner.tasks),
        };
        if hand_backs >= limit {
            let reason = format!(
                "{why}; handed back {hand_backs} time(s) by workers that do not run it (unknown_task_hand_backs = {limit}), it is set aside in the dead letters"
            );
            tracing::error!(uuid = %uuid, queue = delivery.task.queue_name(), "{reason}");
            match broker.bury(&delivery, &reason).await {
                Ok(()) => {
                    let outcome = Outcome::Error(reason);
                    if let Some(step) = &delivery.task.workflow {
                        let (app, step, uuid) = (app.clone(), step.clone(), uuid);
                        let (name, ended) = (delivery.task.task_name.clone(), outcome.clone());
                        tokio::spawn(async move {
                            app.advance_workflow_patiently(step, uuid, name, ended)
                                .await;
                        });
                    }
                    self.task_event(EventKind::TaskError, &delivery.task, Some(&outcome))
                        .await;
                }
                Err(error) => {
                    tracing::error!(uuid = %uuid, "setting task {uuid} aside failed: {}", crate::backend::ErrorChain(&error));
                }
            }
            return;
        }
        let delay = hand_back_delay(hand_backs);
        tracing::warn!(uuid = %uuid, queue = delivery.task.queue_name(), "{why}; handing it back to its queue for {delay:?} (hand-back {} of {limit})", hand_backs + 1);
        if let Err(error) = broker.defer(&delivery, delay).await {
            tracing::error!(uuid = %uuid, "handing task {uuid} back failed (it is taken again when its lease runs out): {}", crate::backend::ErrorChain(&error));
        }
    }

    /// Asks the engine whether a limited task may start now (see [`crate::limits`]).
    async fn admit(&self, delivery: &Delivery, limits: crate::limits::TaskLimits) -> Admitted {
        use crate::limits::Admission;
        let app = self.app();
        let broker = &app.components().broker;
        let uuid = delivery.task.uuid;
        match broker.admit(delivery, &limits).await {
            // The broker keeps no limits (its `admit` refuses): the task must not run past them.
            Err(error) if !broker.supports_limits() => {
                let reason = format!(
                    "LimitsUnsupported: {}; run it on an engine that keeps limits (memory, Redis), or drop the limit",
                    error.message()
                );
                tracing::error!(uuid = %uuid, "{reason}");
                Admitted::Refused(reason)
            }
            Ok(Admission::Run) => Admitted::Run(limits.max_running.map(|_| LeaveOnDrop {
                app: app.clone(),
                delivery: Some(Box::new(delivery.clone())),
                limits,
            })),
            Ok(Admission::Postponed { wait }) => {
                tracing::debug!(uuid = %uuid, task = %limits.task_name, "task {uuid} is over its rate limit; it starts in {wait:?}");
                Admitted::Waits
            }
            Ok(Admission::Parked) => {
                tracing::debug!(uuid = %uuid, task = %limits.task_name, "task {uuid} waits for one of the {} running slots of its task", limits.max_running.unwrap_or_default());
                Admitted::Waits
            }
            Ok(Admission::Cancelled) => {
                tracing::info!(uuid = %uuid, "task {uuid} was cancelled while it was held; it does not run");
                Admitted::Waits
            }
            Ok(Admission::Lost) => {
                tracing::warn!(uuid = %uuid, "task {uuid} was lost before it could start (its lease ran out); another worker has it");
                Admitted::Waits
            }
            Err(error) => {
                tracing::error!(uuid = %uuid, "could not ask the broker whether task {uuid} may start under its limits: {}; handing it back", crate::backend::ErrorChain(&error));
                tokio::time::sleep(BROKER_RETRY_DELAY).await;
                if let Err(error) = broker.release(delivery).await {
                    tracing::error!(uuid = %uuid, "handing task {uuid} back failed (it is taken again when its lease runs out): {}", crate::backend::ErrorChain(&error));
                }
                Admitted::Waits
            }
        }
    }

    /// The running part: the `process` record, the executor, and retries.
    async fn run(
        &self,
        task: &mut QueuedTask,
        receipt: &str,
        run_info: &mut crate::backend::RunInfo,
        definition: &'static TaskDefinition,
    ) -> Outcome {
        let app = self.app();
        let dispatch = app.dispatch();
        let (broker, storage, worker) = (
            &*app.components().broker,
            &*app.components().storage,
            &*app.components().worker,
        );
        let uuid = task.uuid;

        // The record is `process` already (the broker marked it when it handed the task out);
        // plugins may lay more over it, which is then stored.
        let marked = RecordUpdate {
            status: Some(TaskStatus::Process),
            ..RecordUpdate::default()
        };
        let mut update = marked.clone();
        chain!(
            dispatch,
            Trigger::WorkerExecuteBefore,
            WorkerExecuteBefore {
                worker,
                task,
                definition,
                update: &update
            },
            |more| update.merge(more)
        );
        chain!(
            dispatch,
            Trigger::BrokerUpdate,
            BrokerUpdate {
                broker,
                uuid,
                update: &update
            },
            |more| update.merge(more)
        );
        chain!(
            dispatch,
            Trigger::StorageUpdate,
            StorageUpdate {
                storage,
                uuid,
                update: &update
            },
            |more| update.merge(more)
        );
        if update != marked
            && let Err(error) = storage.update(uuid, update).await
        {
            tracing::error!(uuid = %uuid, "could not store the plugins' update of task {uuid}: {}", crate::backend::ErrorChain(&error));
        }
        self.task_event(EventKind::TaskRunning, task, None).await;
        chain!(
            dispatch,
            Trigger::WorkerRunTaskBefore,
            WorkerRunTaskBefore {
                worker,
                task,
                definition
            },
            |changed| changed.apply_to(task)
        );

        let attempt = attempt_of(task, definition);
        let span = tracing::info_span!("task", task = definition.parts.name, uuid = %uuid, attempt);
        if let (Some(context), Some(traceparent)) =
            (app.trace_context(), task.traceparent.as_deref())
        {
            context.continue_trace(&span, traceparent, task.created_at);
        }
        let executor = definition.parts.runner.unwrap_or(&*app.components().runner);
        let cancel = app.cancels().register(uuid, receipt);
        // The run owns the task while it runs (lent, not cloned) and gives it back below.
        let run = TaskExecutor::new(
            app.clone(),
            definition,
            task.take_for_run(),
            Arc::clone(&dispatch),
            span.clone(),
            cancel,
            Arc::from(receipt),
        );
        let outcome = match catch_panic(executor.execute(&run)).instrument(span).await {
            Ok(outcome) => outcome,
            Err(panic) => Outcome::Error(format!(
                "ExecutorPanic: the executor `{}` panicked: {panic}",
                executor.name()
            )),
        };
        app.cancels().unregister(uuid, receipt);
        let failure = run.take_failure();
        run_info.streamed = run.streamed();
        // The error's data goes with an error (or a retry); a plugin that turns the outcome
        // into another status drops it below.
        run_info.error_payload = failure
            .as_ref()
            .filter(|_| matches!(outcome, Outcome::Error(_)))
            .and_then(|failure| failure.payload().cloned());
        *task = run.into_task();
        self.task_event(EventKind::TaskStopping, task, Some(&outcome))
            .await;
        self.retry_or(task, definition, outcome, failure.as_ref())
            .await
    }

    /// A failed attempt with retries left becomes `retry`, with the next attempt as a child
    /// task (after the backoff, if any), unless the error is not one `retry_on_exc` names or a
    /// `worker_task_error_retry` handler decides otherwise. A cancelled task is never retried.
    async fn retry_or(
        &self,
        task: &QueuedTask,
        definition: &TaskDefinition,
        outcome: Outcome,
        failure: Option<&crate::TaskError>,
    ) -> Outcome {
        let Outcome::Error(traceback) = &outcome else {
            return outcome;
        };
        let asked = failure.and_then(crate::TaskError::retry_delay);
        let retries_left = task.retry.or(definition.parts.retry).unwrap_or(0);
        if retries_left == 0 {
            if let Some(delay) = asked {
                // Say why the retry the task asked for did not happen.
                let spent = if definition.parts.retry.unwrap_or(0) == 0 {
                    "the task has no `retry = N`"
                } else {
                    "its retries are spent"
                };
                return Outcome::Error(format!(
                    "{traceback}\n(a retry after {delay:?} was asked, but {spent})"
                ));
            }
            return outcome;
        }
        if asked.is_some() {
            // An asked retry is one whatever the error's type.
        } else if let Some(retry_on) = definition.parts.retry_on {
            // A custom executor may fail without telling why: then only a plain retry applies.
            if !failure.is_some_and(retry_on) {
                return outcome;
            }
        }
        let app = self.app();
        let mut decided = None;
        chain!(
            app.dispatch(),
            Trigger::WorkerTaskErrorRetry,
            WorkerTaskErrorRetry {
                broker: &*app.components().broker,
                task,
                definition,
                traceback,
                retries_left
            },
            |instead| decided = Some(instead)
        );
        if let Some(instead) = decided {
            return instead;
        }
        let attempt = attempt_of(task, definition);
        let wait = asked.or_else(|| {
            definition
                .retry_backoff()
                .map(|backoff| backoff.delay_for(attempt))
        });
        let run_at = wait.map(|wait| unix_now() + wait.as_secs_f64());
        // A next attempt that could only start after the call's expiry would be cancelled
        // unrun, hiding this error: the task ends `error` now instead.
        if let Some(expires_at) = task.expires_at
            && run_at.unwrap_or_else(unix_now) >= expires_at
        {
            return Outcome::Error(format!(
                "{traceback}\n(not retried: the next attempt could not start before the task's expiry)"
            ));
        }
        tracing::info!(task = definition.parts.name, uuid = %task.uuid, retries_left, "the task failed and will be retried");
        let child = QueuedTask {
            uuid: next_attempt_uuid(task.uuid),
            task_name: task.task_name.clone(),
            priority: task.priority,
            args: task.args.clone(),
            kwargs: task.kwargs.clone(),
            created_at: unix_now(),
            retry: Some(retries_left - 1),
            retry_parent_uuid: Some(task.uuid),
            run_at,
            // The next attempt belongs to the same trace.
            traceparent: task.traceparent.clone(),
            // And to the same group: its success may complete the chord.
            group_uuid: task.group_uuid,
            // A call's expiry and time limit hold for each of its attempts.
            expires_at: task.expires_at,
            max_time: task.max_time,
            // And waits in the same queue.
            queue: task.queue.clone(),
            hand_backs: 0,
            // And counts against the same rate.
            rate_key: task.rate_key.clone(),
            // And is the same workflow step.
            workflow: task.workflow.clone(),
            definition: task.definition,
        };
        Outcome::Retry {
            traceback: traceback.clone(),
            child: Box::new(child),
        }
    }

    async fn task_event(&self, kind: EventKind, task: &QueuedTask, outcome: Option<&Outcome>) {
        let app = self.app();
        app.events()
            .fire(kind, || {
                let mut event = Event::new(kind, app.name());
                event.task = Some(task.clone());
                event.outcome = outcome.cloned();
                event
            })
            .await;
    }

    /// Fires the `worker_running` event for worker loop `number`.
    pub async fn running(&self, number: usize) {
        self.worker_event(EventKind::WorkerRunning, number).await;
    }

    /// Fires the `worker_stopping` event for worker loop `number`.
    pub async fn stopping(&self, number: usize) {
        self.worker_event(EventKind::WorkerStopping, number).await;
    }

    async fn worker_event(&self, kind: EventKind, number: usize) {
        let app = self.app();
        app.events()
            .fire(kind, || {
                let mut event = Event::new(kind, app.name());
                event.worker_number = Some(number);
                event
            })
            .await;
    }
}

/// The default worker: one loop taking a task whenever one of `max_tasks_process` slots is
/// free, each task running in its own tokio task.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConcurrentWorker;

impl Worker for ConcurrentWorker {
    fn name(&self) -> &str {
        "ConcurrentWorker"
    }

    fn run(&self, host: WorkerHost) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let limit = host.concurrency();
            let slots = Arc::new(Semaphore::new(limit));
            tracing::debug!(
                app = host.app().name(),
                concurrency = limit,
                "worker loop started"
            );
            host.running(0).await;
            loop {
                // Slots first, then as many tasks as there are free slots: tasks wait in the
                // broker (where priorities apply), never in the worker.
                let first = tokio::select! {
                    biased;
                    () = host.stop_requested() => break,
                    slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
                };
                let mut free = vec![first];
                while let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
                    free.push(slot);
                }
                let deliveries = host.next_batch(free.len()).await;
                if deliveries.is_empty() {
                    break;
                }
                // A suspect (an earlier delivery ended with its worker) runs alone, after the
                // others: should it kill this process again, it takes no other task with it,
                // so only its own delivery count grows. One suspect at a time: the others are
                // handed back at once (not held while it runs, which would count them too).
                let (mut suspects, deliveries): (Vec<_>, Vec<_>) =
                    deliveries.into_iter().partition(Delivery::is_suspect);
                let later = suspects.split_off(suspects.len().min(1));
                hand_back(&host, &later).await;
                let mut free = free.into_iter();
                for (delivery, slot) in deliveries.into_iter().zip(free.by_ref()) {
                    let host = host.clone();
                    tokio::spawn(async move {
                        host.execute(delivery).await;
                        drop(slot);
                    });
                }
                // Slots left over (fewer tasks than asked for) are given back here.
                drop(free);
                for suspect in suspects {
                    run_alone(&host, &slots, limit, suspect).await;
                }
            }
            tracing::info!(
                app = host.app().name(),
                "worker stopping; waiting for running tasks"
            );
            let all = u32::try_from(limit).unwrap_or(u32::MAX);
            let _all_slots = slots.acquire_many(all).await;
            host.stopping(0).await;
            tracing::debug!(app = host.app().name(), "worker loop stopped");
        })
    }
}

/// Runs a suspect delivery once no other task runs in this worker, holding every slot, so
/// that no other task is taken while it runs. A stop that comes first hands it back, and so
/// does a wait longer than [`SUSPECT_WAIT`] (a running task may wait for one still queued:
/// this worker must go on taking tasks).
async fn run_alone(host: &WorkerHost, slots: &Arc<Semaphore>, limit: usize, delivery: Delivery) {
    let all = u32::try_from(limit).unwrap_or(u32::MAX);
    let every_slot = tokio::select! {
        biased;
        () = host.stop_requested() => None,
        slots = Arc::clone(slots).acquire_many_owned(all) => slots.ok(),
        () = tokio::time::sleep(SUSPECT_WAIT) => None,
    };
    let Some(every_slot) = every_slot else {
        hand_back(host, std::slice::from_ref(&delivery)).await;
        return;
    };
    tracing::warn!(uuid = %delivery.task.uuid, deliveries = delivery.deliveries, "task {} was handed out before and never ended (its worker died or stalled); running it alone", delivery.task.uuid);
    let host = host.clone();
    tokio::spawn(async move {
        host.execute(delivery).await;
        drop(every_slot);
    });
}

/// Hands deliveries the worker took but did not execute back to the broker unrun (their lease,
/// if the broker cannot, runs out), giving their room in their queues' caps back.
async fn hand_back(host: &WorkerHost, deliveries: &[Delivery]) {
    for delivery in deliveries {
        host.inner.queues.ended(delivery.task.queue_name());
    }
    release_unrun(host, deliveries).await;
}

/// Hands deliveries back to the broker unrun (their lease, if the broker cannot, runs out).
async fn release_unrun(host: &WorkerHost, deliveries: &[Delivery]) {
    for delivery in deliveries {
        if let Err(error) = host.app().components().broker.release(delivery).await {
            tracing::error!(uuid = %delivery.task.uuid, "handing a task back failed (it is taken again when its lease runs out): {}", crate::backend::ErrorChain(&error));
        }
    }
}

/// Which attempt of its task `task` is: 1, then one more for each retry used.
fn attempt_of(task: &QueuedTask, definition: &TaskDefinition) -> u32 {
    let retries_left = task.retry.or(definition.parts.retry).unwrap_or(0);
    definition
        .parts
        .retry
        .unwrap_or(retries_left)
        .saturating_sub(retries_left)
        + 1
}

/// The uuid of the next attempt of the task `failed`: new and random in its first 8 bytes, the
/// same as `failed`'s in its last 8. An engine that spreads records over partitions by those
/// bytes (Redis's `partitions`) so keeps every attempt of a task where the first one is, and
/// its finish can write the next attempt's record in the same script.
fn next_attempt_uuid(failed: Uuid) -> Uuid {
    let mut bytes = *Uuid::new_v4().as_bytes();
    bytes[8..].copy_from_slice(&failed.as_bytes()[8..]);
    Uuid::from_bytes(bytes)
}

/// How long an unknown task waits before it is taken again: 1 s after its first hand-back,
/// doubling, at most a minute.
fn hand_back_delay(hand_backs: u32) -> Duration {
    Duration::from_secs(1u64 << hand_backs.min(6)).min(Duration::from_secs(60))
}

fn unknown_task(name: &str, tasks: &TaskTable) -> String {
    const SHOWN: usize = 20;
    let names: Vec<&str> = tasks.names().take(SHOWN).collect();
    let more = tasks.definitions().len().saturating_sub(SHOWN);
    let mut reason = format!("UnknownTask: task `{name}` is not registered in this worker; ");
    if names.is_empty() {
        reason.push_str("no tasks are registered");
    } else {
        reason.push_str(&format!("registered tasks: {}", names.join(", ")));
        if more > 0 {
            reason.push_str(&format!(" and {more} more"));
        }
    }
    // Another worker may run it (a rolling deploy); if none does, this is the likely cause.
    reason.push_str(" (");
    reason.push_str(crate::registry::UNLINKED_TASKS_HINT);
    reason.push(')');
    reason
}

/// What the engine said of a limited task, as the worker acts on it.
enum Admitted {
    /// It runs, holding a running slot when its task has `max_running`.
    Run(Option<LeaveOnDrop>),
    /// It does not run here now: handed back to wait its turn, cancelled, or lost.
    Waits,
    /// The broker keeps no limits: the task ends `error` with this reason.
    Refused(String),
}

/// A running slot of a task with `max_running`: given back when the run ends, however it ends
/// (after its outcome is stored, or it was handed back), so a parked task is woken.
struct LeaveOnDrop {
    app: QueueTasks,
    delivery: Option<Box<Delivery>>,
    limits: crate::limits::TaskLimits,
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        let (Some(delivery), Ok(runtime)) =
            (self.delivery.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let app = self.app.clone();
        let limits = self.limits.clone();
        runtime.spawn(async move {
            if let Err(error) = app.components().broker.leave(&delivery, &limits).await {
                // Its slot goes when its lease does; a parked task looks again in time.
                tracing::warn!(uuid = %delivery.task.uuid, "giving back the running slot of task {} failed: {}", delivery.task.uuid, crate::backend::ErrorChain(&error));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_attempt_keeps_its_first_attempts_last_bytes_and_is_new() {
        let failed = Uuid::new_v4();
        let next = next_attempt_uuid(failed);
        assert_ne!(next, failed);
        assert_eq!(next.as_bytes()[8..], failed.as_bytes()[8..]);
        assert_eq!(next.get_version_num(), 4, "still a random uuid: {next}");
        assert_ne!(next_attempt_uuid(failed), next, "each attempt its own");
    }
}
