//! The start and stop sequences of an app, run by its [`Starter`].

use std::time::Duration;

use tokio::sync::watch;

use super::{Starter, WorkerHost};
use crate::app::Running;
use crate::backend::BackendError;
use crate::dispatch::RuntimePlugin;
use crate::events::{Event, EventKind};
use crate::queues::DEFAULT_QUEUE;
use crate::registry::TaskTable;
use crate::stats::WorkerInfo;
use crate::triggers::{
    BrokerStart, BrokerStop, GlobalConfigSetStatus, GlobalConfigStart, GlobalConfigStop,
    StarterStart, StarterStop, StorageDeleteFinishedTasks, StorageStart, StorageStop, WorkerStart,
    WorkerStop,
};
use crate::{Error, QueueTasks, Result};

/// The default starter: runs the standard sequences and nothing else.
#[derive(Debug, Default, Clone, Copy)]
pub struct DefaultStarter;

impl Starter for DefaultStarter {
    fn name(&self) -> &str {
        "DefaultStarter"
    }
}

/// The standard start sequence, handed to [`Starter::start`].
///
/// In order: `starter_start`; each runtime plugin's `start` (once); the `starting` event; the
/// storage (`storage_start`), the global config (`global_config_start`), with
/// `delete_finished_tasks` the clean-up (`storage_delete_finished_tasks`), with
/// `running_older_tasks` the recovery of taken tasks, the broker (`broker_start`); the worker
/// heartbeat (`global_config_set_status` at every refresh); a warning when the binary
/// registers no task, or none of the newest waiting tasks (an out-of-process queue whose
/// storage lists cheaply, at most 2 s); the worker (`worker_start`), which then runs in the
/// background.
pub struct StartSteps<'a> {
    pub(crate) app: &'a QueueTasks,
    pub(crate) starter: &'a dyn Starter,
}

impl StartSteps<'_> {
    /// The app being started.
    pub fn app(&self) -> &QueueTasks {
        self.app
    }

    /// Runs the sequence. Fails with [`Error::AlreadyRunning`] if the app runs.
    pub async fn run(self) -> Result<()> {
        let app = self.app;
        let tasks = TaskTable::global()?;
        let mut lifecycle = app.run_state().lifecycle.lock().await;
        if lifecycle.is_some() {
            return Err(Error::AlreadyRunning);
        }
        app.run_state()
            .running
            .store(true, std::sync::atomic::Ordering::Release);
        let result = self.start_parts(tasks).await;
        match result {
            Ok(running) => {
                *lifecycle = Some(running);
                Ok(())
            }
            Err(error) => {
                app.run_state()
                    .running
                    .store(false, std::sync::atomic::Ordering::Release);
                Err(error)
            }
        }
    }

    async fn start_parts(&self, tasks: &'static TaskTable) -> Result<Running> {
        let app = self.app;
        let components = app.components();
        let dispatch = app.dispatch();
        let config = app.config();
        if !config.queues.is_default_only() && !components.broker.supports_queues() {
            return Err(Error::InvalidConfig(format!(
                "this worker serves the queues {}, but the {} keeps no named queues: serve `default` alone, or use an engine that has them (memory, Redis)",
                config.queues,
                components.broker.name()
            )));
        }
        dispatch
            .fire(&StarterStart {
                starter: self.starter,
            })
            .await;

        let plugins = app.runtime_plugins();
        for (started, entry) in plugins.iter().enumerate() {
            if let Err(error) = entry.plugin.start().await {
                stop_plugins(&plugins[..started]).await;
                return Err(Error::PluginLifecycle {
                    plugin: entry.plugin.name().to_owned(),
                    phase: "start",
                    reason: error.to_string(),
                });
            }
        }
        app.events()
            .fire(EventKind::Starting, || {
                Event::new(EventKind::Starting, app.name())
            })
            .await;

        let (broker, storage, global_config, worker) = (
            &*components.broker,
            &*components.storage,
            &*components.global_config,
            &*components.worker,
        );
        dispatch.fire(&StorageStart { storage }).await;
        storage.start().await?;
        dispatch.fire(&GlobalConfigStart { global_config }).await;
        global_config.start().await?;
        if config.delete_finished_tasks {
            dispatch.fire(&StorageDeleteFinishedTasks { storage }).await;
            let deleted = storage.delete_finished().await?;
            tracing::info!(
                app = app.name(),
                deleted,
                "deleted the records of finished tasks"
            );
        }
        if config.running_older_tasks {
            let requeued = broker.requeue_taken().await?;
            tracing::info!(
                app = app.name(),
                requeued,
                "put taken, unfinished tasks back in the queue"
            );
        }
        dispatch.fire(&BrokerStart { broker, worker }).await;
        broker.start().await?;

        let (shutdown, stop_requested) = watch::channel(false);
        let identity = WorkerIdentity::new();
        let worker_id = identity.id.clone();
        *app.run_state().worker_id.lock() = Some(worker_id.as_str().into());
        beat(app, &identity).await;
        tracing::info!(
            app = app.name(),
            worker = %worker_id,
            tasks = tasks.definitions().len(),
            concurrency = app.config().max_tasks_process.max(1),
            backend = %components.broker.location().unwrap_or_else(|| components.broker.name().to_owned()),
            "worker starting"
        );
        if tasks.definitions().is_empty() {
            tracing::warn!(
                app = app.name(),
                "no task is registered in this binary, so every task it takes is handed back as unknown; {}",
                crate::registry::UNLINKED_TASKS_HINT
            );
        } else {
            // Before the worker takes anything, while the waiting tasks are still `new`.
            warn_if_no_waiting_task_runs_here(app, tasks).await;
        }
        let heartbeat = tokio::spawn(heartbeat(app.clone(), identity, stop_requested.clone()));
        dispatch.fire(&WorkerStart { worker }).await;
        if let Some(mut requests) = broker.cancel_requests() {
            let app = app.clone();
            let mut stop = stop_requested.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|stop| *stop) => return,
                        request = requests.recv() => match request {
                            Ok(request) => match &request.delivery {
                                // A lost lease: that run alone stops, not a newer one.
                                Some(receipt) => {
                                    app.cancels().cancel_delivery(request.uuid, receipt, &request.reason);
                                }
                                None => {
                                    app.cancels().cancel_here(request.uuid, &request.reason);
                                }
                            },
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                                tracing::warn!(app = %app.name(), missed, "cancel requests came faster than they were handled; {missed} were missed");
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                    }
                }
            });
        }
        // Chords whose last member's worker died before adding the callback.
        {
            let app = app.clone();
            tokio::spawn(async move {
                app.complete_pending_chords().await;
                app.resume_workflows().await;
            });
        }
        let scheduler = tokio::spawn(crate::schedule::runner::run(
            app.clone(),
            app.schedule_entries(),
            stop_requested.clone(),
        ));
        let host = WorkerHost::new(app.clone(), tasks, stop_requested);
        let worker_task = {
            let worker = std::sync::Arc::clone(&components.worker);
            tokio::spawn(async move { worker.run(host).await })
        };
        Ok(Running {
            shutdown,
            worker: worker_task,
            heartbeat,
            plugins,
            worker_id,
            scheduler,
        })
    }
}

/// Who this worker is, for the description it writes with each heartbeat.
struct WorkerIdentity {
    id: String,
    host: String,
    started_at: f64,
    /// The registered tasks' names, sorted: the same for the worker's whole life.
    tasks: Vec<String>,
}

impl WorkerIdentity {
    fn new() -> Self {
        let host = host_name();
        let pid = std::process::id();
        let nonce = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let mut tasks: Vec<String> = TaskTable::global()
            .map(|table| table.names().map(str::to_owned).collect())
            .unwrap_or_default();
        tasks.sort_unstable();
        WorkerIdentity {
            id: format!("{host}:{pid}:{nonce}"),
            host,
            started_at: crate::backend::unix_now(),
            tasks,
        }
    }

    fn describe(&self, app: &QueueTasks) -> WorkerInfo {
        let counters = app.counters();
        WorkerInfo {
            id: self.id.clone(),
            host: self.host.clone(),
            pid: std::process::id(),
            started_at: self.started_at,
            concurrency: app.config().max_tasks_process.max(1),
            running: counters.running,
            processed: counters.processed,
            heartbeat_at: crate::backend::unix_now(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            tasks: self.tasks.clone(),
            running_tasks: app.cancels().running(WorkerInfo::RUNNING_SHOWN),
        }
    }
}

/// The machine's name, for the workers list (no dependency: the kernel's or the shell's).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Writes the worker heartbeat and this worker's description once.
async fn beat(app: &QueueTasks, identity: &WorkerIdentity) {
    let global_config = &*app.components().global_config;
    app.dispatch()
        .fire(&GlobalConfigSetStatus { global_config })
        .await;
    let ttl = Duration::from_secs(app.config().global_config_status_ttl);
    if let Err(error) = global_config.set_status(ttl).await {
        tracing::warn!(app = %app.name(), "the worker heartbeat failed: {}", crate::backend::ErrorChain(&error));
    }
    describe(app, identity).await;
}

/// How often a worker refreshes its description (running and processed counts) for `stats`,
/// between heartbeats.
const DESCRIBE_EVERY: Duration = Duration::from_secs(2);

/// Writes this worker's description, alive for the heartbeat's time to live.
async fn describe(app: &QueueTasks, identity: &WorkerIdentity) {
    let ttl = Duration::from_secs(app.config().global_config_status_ttl).max(DESCRIBE_EVERY * 3);
    if let Err(error) = app
        .components()
        .global_config
        .set_worker(&identity.describe(app), ttl)
        .await
    {
        tracing::warn!(app = %app.name(), "writing the worker's description failed: {}", crate::backend::ErrorChain(&error));
    }
}

/// Refreshes the worker heartbeat (every `global_config_status_set_periodic`) and the worker's
/// description (every [`DESCRIBE_EVERY`]) until the app stops (the first beat is written at
/// start).
async fn heartbeat(
    app: QueueTasks,
    identity: WorkerIdentity,
    mut stop_requested: watch::Receiver<bool>,
) {
    let mut last_beat = tokio::time::Instant::now();
    loop {
        let every = Duration::from_secs(app.config().global_config_status_set_periodic.max(1));
        let next_beat = last_beat + every;
        let wake = next_beat.min(tokio::time::Instant::now() + DESCRIBE_EVERY);
        let stopped = tokio::time::timeout_at(wake, stop_requested.wait_for(|stop| *stop))
            .await
            .is_ok();
        if stopped {
            return;
        }
        if tokio::time::Instant::now() >= next_beat {
            last_beat = tokio::time::Instant::now();
            beat(&app, &identity).await;
        } else {
            describe(&app, &identity).await;
        }
    }
}

/// The standard stop sequence, handed to [`Starter::stop`].
///
/// In order: `starter_stop`; the worker is told to stop (`worker_stop`) and its running tasks
/// finish; the broker (`broker_stop`); the heartbeat is cleared and the global config stops
/// (`global_config_stop`); the storage (`storage_stop`); the `stopping` event; each runtime
/// plugin's `stop` (once). Tasks still queued stay queued.
pub struct StopSteps<'a> {
    pub(crate) app: &'a QueueTasks,
    pub(crate) starter: &'a dyn Starter,
}

impl StopSteps<'_> {
    /// The app being stopped.
    pub fn app(&self) -> &QueueTasks {
        self.app
    }

    /// Runs the sequence. Stopping a stopped app does nothing.
    pub async fn run(self) -> Result<()> {
        let app = self.app;
        let components = app.components();
        let mut lifecycle = app.run_state().lifecycle.lock().await;
        let Some(running) = lifecycle.take() else {
            return Ok(());
        };
        tracing::info!(app = app.name(), "stopping");
        let dispatch = app.dispatch();
        let (broker, storage, global_config, worker) = (
            &*components.broker,
            &*components.storage,
            &*components.global_config,
            &*components.worker,
        );
        dispatch
            .fire(&StarterStop {
                starter: self.starter,
            })
            .await;

        let _ = running.shutdown.send(true);
        dispatch.fire(&WorkerStop { worker }).await;
        // Running tasks get `stop_timeout` to finish; past it (or on a second signal, or
        // `stop_now`) they are interrupted and handed back to the queue.
        let mut worker_task = running.worker;
        let limit = app.config().stop_limit();
        let joined = if app
            .run_state()
            .interrupting
            .load(std::sync::atomic::Ordering::Acquire)
        {
            None
        } else {
            tokio::select! {
                joined = &mut worker_task => Some(joined),
                () = tokio::time::sleep(limit) => {
                    tracing::warn!(app = app.name(), "the running tasks did not finish within the stop timeout ({limit:?})");
                    app.interrupt_running();
                    None
                }
                () = app.run_state().interrupt.notified() => None,
            }
        };
        let joined = match joined {
            Some(joined) => joined,
            None => worker_task.await,
        };
        app.run_state()
            .interrupting
            .store(false, std::sync::atomic::Ordering::Release);
        if let Err(error) = joined {
            tracing::error!(
                app = app.name(),
                "the worker ended abnormally: {}",
                crate::backend::ErrorChain(&error)
            );
        }
        let mut first_failure: Option<Error> = None;
        let mut note = |result: std::result::Result<(), BackendError>| {
            if let Err(error) = result {
                tracing::error!(
                    app = app.name(),
                    "stopping: {}",
                    crate::backend::ErrorChain(&error)
                );
                first_failure.get_or_insert(Error::Backend(error));
            }
        };
        dispatch.fire(&BrokerStop { broker }).await;
        note(broker.stop().await);
        running.heartbeat.abort();
        running.scheduler.abort();
        note(global_config.clear_status().await);
        note(global_config.remove_worker(&running.worker_id).await);
        let counters = app.counters();
        tracing::info!(
            app = app.name(),
            worker = %running.worker_id,
            finished = counters.processed - counters.handed_back,
            handed_back = counters.handed_back,
            refused = counters.refused_outcomes,
            "worker stopped"
        );
        dispatch.fire(&GlobalConfigStop { global_config }).await;
        note(global_config.stop().await);
        dispatch.fire(&StorageStop { storage }).await;
        note(storage.stop().await);
        app.dependencies().close_worker_values().await;
        app.events()
            .fire(EventKind::Stopping, || {
                Event::new(EventKind::Stopping, app.name())
            })
            .await;
        if let Some((plugin, reason)) = stop_plugins(&running.plugins).await {
            first_failure.get_or_insert(Error::PluginLifecycle {
                plugin,
                phase: "stop",
                reason,
            });
        }
        app.run_state()
            .running
            .store(false, std::sync::atomic::Ordering::Release);
        first_failure.map_or(Ok(()), Err)
    }
}

/// Stops plugins once each; returns the first failure, after logging every one.
async fn stop_plugins(plugins: &[RuntimePlugin]) -> Option<(String, String)> {
    let mut first_failure = None;
    for entry in plugins {
        if let Err(error) = entry.plugin.stop().await {
            let name = entry.plugin.name().to_owned();
            tracing::error!(plugin = %name, "plugin failed to stop: {error}");
            first_failure.get_or_insert((name, error.to_string()));
        }
    }
    first_failure
}

/// How many of the newest waiting tasks the start-up look reads.
const WAITING_SAMPLE: usize = 50;

/// At start-up, a look at the newest tasks waiting in the queues this worker serves: when
/// there are some and this binary registers none of their names, every one of them would be
/// handed back as unknown, so the worker says so at once, with the likely cause (a tasks crate
/// the binary never names), rather than only at each hand-back. Some of them unknown is not
/// reported here: another worker may run those (a rolling deploy, workers per task set).
/// It never fails the start, nor holds it up for long: a storage that cannot list (or takes
/// more than 2 s to) says nothing.
async fn warn_if_no_waiting_task_runs_here(app: &QueueTasks, tasks: &TaskTable) {
    // An in-process queue only ever holds tasks this binary knows (an unknown name is refused
    // when it is added), so there is nothing to look for; and a storage that would scan a large
    // store to answer is not asked.
    let components = app.components();
    if components.broker.location().is_none() || !components.storage.lists_cheaply() {
        return;
    }
    let query = crate::records::RecordQuery {
        status: Some(crate::TaskStatus::New),
        limit: WAITING_SAMPLE,
        ..Default::default()
    };
    let listing = components.storage.list(&query);
    let Ok(Ok(page)) = tokio::time::timeout(Duration::from_secs(2), listing).await else {
        return;
    };
    let served = &app.config().queues;
    let waiting: std::collections::BTreeSet<&str> = page
        .records
        .iter()
        .filter(|record| served.serves(record.queue.as_deref().unwrap_or(DEFAULT_QUEUE)))
        .map(|record| record.task_name.as_str())
        .collect();
    if let Some(message) = none_of_the_waiting_tasks_runs_here(&waiting, served, tasks) {
        tracing::warn!(app = app.name(), "{message}");
    }
}

/// The warning for waiting tasks of which this binary registers none; `None` when there are no
/// such tasks or one of them is registered.
fn none_of_the_waiting_tasks_runs_here(
    waiting: &std::collections::BTreeSet<&str>,
    served: &crate::queues::QueueSelection,
    tasks: &TaskTable,
) -> Option<String> {
    if waiting.is_empty() || waiting.iter().any(|name| tasks.get(name).is_some()) {
        return None;
    }
    const SHOWN: usize = 10;
    let mut names: Vec<String> = waiting
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{n}`"))
        .collect();
    if waiting.len() > SHOWN {
        names.push(format!("and {} more", waiting.len() - SHOWN));
    }
    let queues: Vec<&str> = served.names().collect();
    Some(format!(
        "none of the tasks waiting in the queue ({}; queues served: {}) is registered in this binary, so this worker hands every one of them back as unknown (another worker may run them); if this binary should: {}",
        names.join(", "),
        queues.join(", "),
        crate::registry::UNLINKED_TASKS_HINT
    ))
}
