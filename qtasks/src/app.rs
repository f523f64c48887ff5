//! The app: `QueueTasks`, the object users add tasks to and run workers from.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::backend::{Broker, MemoryBroker, MemoryStorage, Storage};
use crate::dispatch::{Dispatch, RuntimePlugin};
use crate::plugin::DynPlugin;
use crate::registry::TaskTable;
use crate::task::unix_now;
use crate::{
    Error, Plugin, QueueConfig, QueuedTask, Result, TaskDefinition, TaskHandle, TaskRecord,
    Trigger, worker,
};

/// The app: adds tasks, reads their results, runs a worker and holds plugins.
///
/// Cheap to clone; clones share everything. [`QueueTasks::new`] uses the in-memory broker and
/// storage, so it needs no server.
///
/// A process can be a client (only `add_task`/`get`), a worker (`run_forever`), or both (an
/// embedded worker started with `start`, as tests and examples do).
#[derive(Clone)]
pub struct QueueTasks {
    inner: Arc<Inner>,
}

struct Inner {
    config: QueueConfig,
    broker: Arc<dyn Broker>,
    storage: Arc<dyn Storage>,
    plugins: Mutex<Vec<RuntimePlugin>>,
    dispatch: RwLock<Arc<Dispatch>>,
    running: AtomicBool,
    lifecycle: tokio::sync::Mutex<Option<Running>>,
}

struct Running {
    shutdown: watch::Sender<bool>,
    worker: JoinHandle<()>,
    plugins: Vec<RuntimePlugin>,
}

impl Default for QueueTasks {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueTasks {
    /// An app with the default config and the in-memory broker and storage.
    pub fn new() -> Self {
        Self::with_config(QueueConfig::default())
    }

    /// An app with this config and the in-memory broker and storage.
    pub fn with_config(config: QueueConfig) -> Self {
        let storage = Arc::new(MemoryStorage::new());
        Self::with_backend(
            config,
            Arc::new(MemoryBroker::new(Arc::clone(&storage))),
            storage,
        )
    }

    /// An app on Redis, named `QueueTasks` (the key prefix), with default options. The
    /// worker heartbeat, queue and records use Python QTasks' keys, so Rust and Python
    /// clients and workers can share the queue.
    ///
    /// Fails at once, saying so, when Redis cannot be reached.
    #[cfg(feature = "redis")]
    pub async fn redis(url: &str) -> Result<Self> {
        Self::redis_with(url, QueueConfig::default(), crate::RedisOptions::default()).await
    }

    /// An app on Redis with this config (its `name` is the key prefix) and these options.
    #[cfg(feature = "redis")]
    pub async fn redis_with(
        url: &str,
        config: QueueConfig,
        options: crate::RedisOptions,
    ) -> Result<Self> {
        if config.name.is_empty() || config.name.contains(':') {
            return Err(Error::InvalidConfig(format!(
                "the app name `{}` is the Redis key prefix: it must be non-empty and contain no `:`",
                config.name
            )));
        }
        let (broker, storage) = crate::backend::redis::connect(url, &config.name, &options).await?;
        Ok(Self::with_backend(config, broker, storage))
    }

    /// An app on the given broker and storage.
    pub fn with_backend(
        config: QueueConfig,
        broker: Arc<dyn Broker>,
        storage: Arc<dyn Storage>,
    ) -> Self {
        QueueTasks {
            inner: Arc::new(Inner {
                config,
                broker,
                storage,
                plugins: Mutex::new(Vec::new()),
                dispatch: RwLock::new(Arc::new(Dispatch::build(&[]))),
                running: AtomicBool::new(false),
                lifecycle: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The app name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The app's config.
    pub fn config(&self) -> &QueueConfig {
        &self.inner.config
    }

    pub(crate) fn broker(&self) -> Arc<dyn Broker> {
        Arc::clone(&self.inner.broker)
    }

    pub(crate) fn dispatch(&self) -> Arc<Dispatch> {
        Arc::clone(
            &self
                .inner
                .dispatch
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Registers a runtime plugin for these triggers (the original's `add_plugin`). Pass
    /// [`Trigger::ALL`] for every trigger.
    ///
    /// Its handlers run after the `#[qtasks::plugin]` handlers of the same trigger, in the
    /// order plugins were added. `start` and `stop` run once each when the app starts and
    /// stops. Plugins are added while the app is stopped; adding one to a running app is
    /// [`Error::AlreadyRunning`].
    pub fn add_plugin(&self, plugin: impl Plugin, triggers: &[Trigger]) -> Result<()> {
        if self.inner.running.load(Ordering::Acquire) {
            return Err(Error::AlreadyRunning);
        }
        let plugin: Arc<dyn DynPlugin> = Arc::new(plugin);
        let mut plugins = self
            .inner
            .plugins
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        plugins.push(RuntimePlugin {
            plugin,
            triggers: triggers.to_vec(),
        });
        let dispatch = Arc::new(Dispatch::build(&plugins));
        *self
            .inner
            .dispatch
            .write()
            .unwrap_or_else(PoisonError::into_inner) = dispatch;
        Ok(())
    }

    /// Adds a task by name with JSON-serializable arguments (the original's `add_task`).
    ///
    /// `args` must serialize to an array (a tuple, a `Vec`, `json!([..])`) or to nothing
    /// (`()`); `kwargs` to an object (a struct, a map, `json!({..})`) or to nothing. The typed
    /// handle the `#[task]` macro generates (`my_task::add_task(&app, ..)`) checks the
    /// argument types at compile time instead.
    ///
    /// A name no worker knows is accepted here (the worker may be another program) and ends
    /// `error` on the worker, naming it.
    ///
    /// ```rust,standalone_crate
    /// #[qtasks::task]
    /// async fn add(a: i64, b: i64) -> i64 {
    ///     a + b
    /// }
    ///
    /// #[tokio::main]
    /// async fn main() -> qtasks::Result<()> {
    ///     let app = qtasks::QueueTasks::new();
    ///     app.start().await?;
    ///     let task = app.add_task("add", (2,), serde_json::json!({ "b": 3 })).await?;
    ///     let done = task.wait(std::time::Duration::from_secs(5)).await?;
    ///     assert_eq!(done.returning, Some(serde_json::json!(5)));
    ///     app.stop().await
    /// }
    /// ```
    pub async fn add_task(
        &self,
        task_name: &str,
        args: impl Serialize,
        kwargs: impl Serialize,
    ) -> Result<TaskHandle> {
        self.add_task_with(task_name, args, kwargs, AddOptions::default())
            .await
    }

    /// [`add_task`](Self::add_task) with options, such as a priority for this call.
    ///
    /// ```
    /// # async fn demo(app: &qtasks::QueueTasks) -> qtasks::Result<()> {
    /// let urgent = qtasks::AddOptions::default().priority(-10);
    /// app.add_task_with("report", (2026,), (), urgent).await?;
    /// # Ok(()) }
    /// ```
    pub async fn add_task_with(
        &self,
        task_name: &str,
        args: impl Serialize,
        kwargs: impl Serialize,
        options: AddOptions,
    ) -> Result<TaskHandle> {
        let invalid = |reason: String| Error::InvalidArguments {
            task: task_name.to_owned(),
            reason,
        };
        if task_name.contains(':') {
            return Err(invalid("task names cannot contain `:`".to_owned()));
        }
        let args = match serde_json::to_value(args)
            .map_err(|e| invalid(format!("args do not encode as JSON: {e}")))?
        {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            other => {
                return Err(invalid(format!(
                    "args must be a list (a tuple or a Vec), not {}",
                    json_kind(&other)
                )));
            }
        };
        let kwargs = match serde_json::to_value(kwargs)
            .map_err(|e| invalid(format!("kwargs do not encode as JSON: {e}")))?
        {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => {
                return Err(invalid(format!(
                    "kwargs must be an object (a struct or a map), not {}",
                    json_kind(&other)
                )));
            }
        };
        let definition = TaskTable::global()
            .ok()
            .and_then(|table| table.get(task_name));
        let priority = options
            .priority
            .or_else(|| definition.and_then(|d| d.priority))
            .unwrap_or(self.config().task_default_priority);
        self.enqueue(task_name.to_owned(), priority, args, kwargs, definition)
            .await
    }

    pub(crate) async fn enqueue_defined(
        &self,
        definition: &'static TaskDefinition,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
    ) -> Result<TaskHandle> {
        let priority = definition
            .priority
            .unwrap_or(self.config().task_default_priority);
        self.enqueue(
            definition.name.to_owned(),
            priority,
            args,
            kwargs,
            Some(definition),
        )
        .await
    }

    async fn enqueue(
        &self,
        task_name: String,
        priority: i64,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        definition: Option<&'static TaskDefinition>,
    ) -> Result<TaskHandle> {
        let queued = QueuedTask {
            uuid: Uuid::new_v4(),
            task_name,
            priority,
            args,
            kwargs,
            created_at: unix_now(),
            definition,
        };
        let uuid = queued.uuid;
        self.inner.broker.add(queued).await?;
        Ok(TaskHandle::new(uuid, self.clone()))
    }

    /// Deletes this app's queued tasks and records (and nothing of other apps).
    pub async fn flush_all(&self) -> Result<()> {
        Ok(self.inner.broker.flush_all().await?)
    }

    /// Whether a worker of this app is running: on Redis, any worker process (its heartbeat,
    /// as the original's `ping`); in memory, this app's own worker.
    pub async fn ping(&self) -> Result<bool> {
        match self.inner.broker.ping().await? {
            Some(alive) => Ok(alive),
            None => Ok(self.inner.running.load(Ordering::Acquire)),
        }
    }

    /// A task's record as it is now; `None` for an unknown id.
    pub async fn get(&self, uuid: Uuid) -> Result<Option<TaskRecord>> {
        Ok(self.inner.storage.get(uuid).await?)
    }

    /// Waits until a task ends and returns its record; see [`TaskHandle::wait`].
    pub async fn wait(&self, uuid: Uuid, timeout: Duration) -> Result<TaskRecord> {
        match tokio::time::timeout(timeout, self.inner.storage.wait_finished(uuid)).await {
            Ok(Ok(Some(record))) => Ok(record),
            Ok(Ok(None)) => Err(Error::TaskNotFound(uuid)),
            Ok(Err(error)) => Err(error.into()),
            Err(_elapsed) => Err(Error::WaitTimeout { uuid, timeout }),
        }
    }

    /// Starts plugins and a worker in the background of the current tokio runtime, and
    /// returns. Stop it with [`stop`](Self::stop). For a worker process, use
    /// [`run_forever`](Self::run_forever).
    pub async fn start(&self) -> Result<()> {
        self.start_worker().await.map(drop)
    }

    async fn start_worker(&self) -> Result<watch::Receiver<bool>> {
        let tasks = TaskTable::global()?;
        let mut lifecycle = self.inner.lifecycle.lock().await;
        if lifecycle.is_some() {
            return Err(Error::AlreadyRunning);
        }
        self.inner.running.store(true, Ordering::Release);
        let plugins = self
            .inner
            .plugins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (started, entry) in plugins.iter().enumerate() {
            if let Err(error) = entry.plugin.start().await {
                stop_plugins(&plugins[..started]).await;
                self.inner.running.store(false, Ordering::Release);
                return Err(Error::PluginLifecycle {
                    plugin: entry.plugin.name().to_owned(),
                    phase: "start",
                    reason: error.to_string(),
                });
            }
        }
        let (shutdown, stop_requested) = watch::channel(false);
        let worker = tokio::spawn(worker::run(self.clone(), tasks, stop_requested.clone()));
        *lifecycle = Some(Running {
            shutdown,
            worker,
            plugins,
        });
        Ok(stop_requested)
    }

    /// Stops gracefully: the worker takes no new task, the running ones finish, then each
    /// plugin's `stop` runs once. Tasks still queued stay queued. Stopping a stopped app does
    /// nothing.
    pub async fn stop(&self) -> Result<()> {
        let mut lifecycle = self.inner.lifecycle.lock().await;
        let Some(running) = lifecycle.take() else {
            return Ok(());
        };
        tracing::info!(app = self.name(), "stopping");
        let _ = running.shutdown.send(true);
        if let Err(error) = running.worker.await {
            tracing::error!(app = self.name(), "the worker ended abnormally: {error}");
        }
        let result = match stop_plugins(&running.plugins).await {
            Some((plugin, reason)) => Err(Error::PluginLifecycle {
                plugin,
                phase: "stop",
                reason,
            }),
            None => Ok(()),
        };
        self.inner.running.store(false, Ordering::Release);
        result
    }

    /// Runs a worker until Ctrl-C (or SIGTERM on Unix) or [`stop`](Self::stop), then stops
    /// gracefully. This is what a worker process's `main` calls.
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() -> qtasks::Result<()> {
    ///     qtasks::QueueTasks::new().run_forever().await
    /// }
    /// ```
    pub async fn run_forever(&self) -> Result<()> {
        // Listen before the worker starts, so a signal that comes early is not lost (it
        // would otherwise kill the process with the default action).
        let mut signals = ShutdownSignals::listen();
        let mut stop_requested = self.start_worker().await?;
        tokio::select! {
            () = signals.recv() => tracing::info!(app = self.name(), "shutdown signal received"),
            _ = stop_requested.wait_for(|stop| *stop) => {}
        }
        self.stop().await
    }
}

/// Ctrl-C, and SIGTERM on Unix. A signal that cannot be listened for is left out.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind| match signal(kind) {
                Ok(listener) => Some(listener),
                Err(error) => {
                    tracing::warn!("cannot listen for {kind:?}: {error}");
                    None
                }
            };
            ShutdownSignals {
                interrupt: listen(SignalKind::interrupt()),
                terminate: listen(SignalKind::terminate()),
            }
        }
        #[cfg(not(unix))]
        ShutdownSignals {}
    }

    /// Resolves on the first signal; never, if none can be listened for.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(listener: &mut Option<tokio::signal::unix::Signal>) {
                match listener {
                    Some(listener) => {
                        listener.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(&mut self.interrupt) => {}
                () = next(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Options of one [`QueueTasks::add_task_with`] call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AddOptions {
    /// The priority of this task (lower runs first); `None` takes the task's, then the app's
    /// default.
    pub priority: Option<i64>,
}

impl AddOptions {
    /// Sets the priority.
    #[must_use]
    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = Some(priority);
        self
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

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl fmt::Debug for QueueTasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueTasks")
            .field("name", &self.name())
            .field("running", &self.inner.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
