//! The app: `QueueTasks`, the object users add tasks to and run workers from.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::backend::{Broker, Storage};
use crate::components::{Executor, GlobalConfig, StartSteps, Starter, StopSteps, Worker};
use crate::deps::Dependencies;
use crate::dispatch::{Dispatch, RuntimePlugin, chain};
use crate::events::{Event, EventKind, Events};
use crate::inspect::{AppStats, Inspection, TaskStats};
use crate::plugin::DynPlugin;
use crate::registry::TaskTable;
use crate::signals::ShutdownSignals;
use crate::task::unix_now;
use crate::triggers::{
    BrokerAddAfter, BrokerAddBefore, BrokerFlushAll, BrokerGet, GlobalConfigGet,
    GlobalConfigGetAll, GlobalConfigGetMatch, GlobalConfigSet, QtasksAddTaskAfterBroker,
    QtasksAddTaskBeforeBroker, QtasksFlushAll, QtasksGet, QtasksPing, QtasksStop, RecordUpdate,
    StatsInspect, StorageAdd, StorageFlushAll, StorageGet, StorageGetAll,
};
use crate::{
    AppBuilder, BoxError, Component, ConfigError, DependencyScope, Error, Middleware, Plugin,
    QueueConfig, QueuedTask, Result, TaskContext, TaskDefinition, TaskHandle, TaskRecord,
    TaskStatus, Trigger,
};

/// The app: adds tasks, reads their results, runs a worker and holds plugins.
///
/// Cheap to clone; clones share everything. [`QueueTasks::new`] uses the in-memory backend,
/// so it needs no server; [`QueueTasks::builder`] replaces any part.
///
/// A process can be a client (only `add_task`/`get`), a worker (`run_forever`), or both (an
/// embedded worker started with `start`, as tests and examples do).
#[derive(Clone)]
pub struct QueueTasks {
    pub(crate) inner: Arc<Inner>,
}

type ConfigSubscriber = Arc<dyn Fn(&QueueConfig, &str, &Value) + Send + Sync>;

pub(crate) struct Inner {
    config: RwLock<Arc<QueueConfig>>,
    config_subscribers: Mutex<Vec<ConfigSubscriber>>,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) global_config: Arc<dyn GlobalConfig>,
    pub(crate) worker: Arc<dyn Worker>,
    pub(crate) starter: Arc<dyn Starter>,
    pub(crate) executor: Arc<dyn Executor>,
    plugins: Mutex<Vec<RuntimePlugin>>,
    dispatch: RwLock<Arc<Dispatch>>,
    pub(crate) events: Events,
    pub(crate) middlewares: Vec<Arc<dyn Middleware>>,
    /// The routers whose tasks this app runs; `None` runs every task.
    pub(crate) routers: Option<Vec<String>>,
    pub(crate) dependencies: Dependencies,
    pub(crate) cancels: Cancels,
    pub(crate) running: AtomicBool,
    pub(crate) lifecycle: tokio::sync::Mutex<Option<Running>>,
}

/// What a started app holds until it stops.
pub(crate) struct Running {
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) worker: JoinHandle<()>,
    pub(crate) heartbeat: JoinHandle<()>,
    pub(crate) plugins: Vec<RuntimePlugin>,
}

/// The parts an app is built from (see [`AppBuilder`]).
pub(crate) struct Parts {
    pub(crate) config: QueueConfig,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) global_config: Arc<dyn GlobalConfig>,
    pub(crate) worker: Arc<dyn Worker>,
    pub(crate) starter: Arc<dyn Starter>,
    pub(crate) executor: Arc<dyn Executor>,
    pub(crate) middlewares: Vec<Arc<dyn Middleware>>,
    pub(crate) routers: Option<Vec<String>>,
}

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
        let early = self
            .early
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&uuid);
        let (sender, receiver) = watch::channel(early);
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uuid, sender);
        receiver
    }

    pub(crate) fn unregister(&self, uuid: Uuid) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&uuid);
    }

    /// Cancels a task running in this process; `false` if none is.
    pub(crate) fn cancel_running(&self, uuid: Uuid, reason: &str) -> bool {
        match self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&uuid)
        {
            Some(sender) => sender.send(Some(reason.to_owned())).is_ok(),
            None => false,
        }
    }

    /// Remembers a cancel for a task that has not registered yet.
    pub(crate) fn cancel_early(&self, uuid: Uuid, reason: &str) {
        self.early
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(uuid, reason.to_owned());
    }
}

impl Default for QueueTasks {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueTasks {
    /// An app with the default config on the in-memory backend.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// An app with this config on the in-memory backend.
    pub fn with_config(config: QueueConfig) -> Self {
        Self::builder().config(config).build()
    }

    /// A builder to replace the app's parts: backend, global config, worker, starter,
    /// executor.
    pub fn builder() -> AppBuilder {
        AppBuilder::default()
    }

    /// An app on Redis, named `QueueTasks` (the key prefix), with default options. The
    /// queue, records and worker heartbeat use Python QTasks' keys, so Rust and Python clients
    /// and workers can share them.
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
        Ok(Self::builder()
            .config(config)
            .redis(url, options)
            .await?
            .build())
    }

    pub(crate) fn from_parts(parts: Parts) -> Self {
        QueueTasks {
            inner: Arc::new(Inner {
                config: RwLock::new(Arc::new(parts.config)),
                config_subscribers: Mutex::default(),
                broker: parts.broker,
                storage: parts.storage,
                global_config: parts.global_config,
                worker: parts.worker,
                starter: parts.starter,
                executor: parts.executor,
                plugins: Mutex::default(),
                dispatch: RwLock::new(Arc::new(Dispatch::build(&[]))),
                events: Events::default(),
                middlewares: parts.middlewares,
                routers: parts.routers,
                dependencies: Dependencies::default(),
                cancels: Cancels::default(),
                running: AtomicBool::new(false),
                lifecycle: tokio::sync::Mutex::new(None),
            }),
        }
    }

    // -- Parts ---------------------------------------------------------------------------------

    /// The app name.
    pub fn name(&self) -> String {
        self.config().name.clone()
    }

    /// The app's config, as it is now.
    pub fn config(&self) -> Arc<QueueConfig> {
        Arc::clone(
            &self
                .inner
                .config
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Changes one config field from its text form (as an environment variable would) and
    /// tells the subscribers. The app name cannot change.
    pub fn set_config(&self, field: &str, value: &str) -> Result<(), ConfigError> {
        self.update_config(|config| config.set_field(field, value))
    }

    /// Changes the config with a closure and tells the subscribers which fields changed.
    ///
    /// Settings read at start (`max_tasks_process`, the heartbeat timings) take effect at the
    /// next start.
    pub fn update_config(
        &self,
        change: impl FnOnce(&mut QueueConfig) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let before = self.config();
        let mut after = (*before).clone();
        change(&mut after)?;
        if after.name != before.name {
            return Err(ConfigError {
                source_name: "name".to_owned(),
                value: after.name,
                expected: "the app's name: it cannot change while the app exists".to_owned(),
            });
        }
        let after = Arc::new(after);
        *self
            .inner
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::clone(&after);
        let (Value::Object(old), Value::Object(new)) = (
            serde_json::to_value(&*before).unwrap_or_default(),
            serde_json::to_value(&*after).unwrap_or_default(),
        ) else {
            return Ok(());
        };
        let subscribers = self
            .inner
            .config_subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (field, value) in &new {
            if old.get(field) != Some(value) {
                for subscriber in &subscribers {
                    subscriber(&after, field, value);
                }
            }
        }
        Ok(())
    }

    /// Calls `callback(config, field, new_value)` for every field a later change sets to a new
    /// value (the original's `config.subscribe`).
    pub fn subscribe_config(
        &self,
        callback: impl Fn(&QueueConfig, &str, &Value) + Send + Sync + 'static,
    ) {
        self.inner
            .config_subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(callback));
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

    pub(crate) fn middlewares(&self) -> &[Arc<dyn Middleware>] {
        &self.inner.middlewares
    }

    /// Whether this app runs `definition` (all tasks, or those of its routers).
    pub(crate) fn runs(&self, definition: &TaskDefinition) -> bool {
        match &self.inner.routers {
            None => true,
            Some(routers) => definition
                .router
                .is_some_and(|router| routers.iter().any(|r| r == router)),
        }
    }

    pub(crate) fn runtime_plugins(&self) -> Vec<RuntimePlugin> {
        self.inner
            .plugins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    // -- Plugins and events --------------------------------------------------------------------

    /// Registers a runtime plugin on the app for these triggers (the original's
    /// `add_plugin`). An app plugin may ask for any trigger; pass [`Trigger::ALL`] for all.
    ///
    /// Its handlers run after the `#[qtasks::plugin]` handlers of the same trigger, in the
    /// order plugins were added. `start` and `stop` run once each when the app starts and
    /// stops. Plugins are added while the app is stopped; adding one to a running app is
    /// [`Error::AlreadyRunning`].
    pub fn add_plugin(&self, plugin: impl Plugin, triggers: &[Trigger]) -> Result<()> {
        self.register_plugin(Arc::new(plugin), triggers.to_vec())
    }

    /// Registers a runtime plugin for one component's triggers, as the original's
    /// `add_plugin(plugin, trigger_names, component=..)` does. `None` means all of them (the
    /// original's `"Globals"`). The worker's triggers include the executor's, as in the
    /// original. A trigger of another component is [`Error::TriggerNotOfComponent`].
    pub fn add_component_plugin(
        &self,
        component: Component,
        plugin: impl Plugin,
        triggers: Option<&[Trigger]>,
    ) -> Result<()> {
        let belongs = |trigger: &Trigger| {
            trigger.component() == component
                || (component == Component::Worker
                    && trigger.component() == Component::TaskExecutor)
        };
        let triggers: Vec<Trigger> = match triggers {
            Some(triggers) => {
                if let Some(foreign) = triggers.iter().find(|t| !belongs(t)) {
                    return Err(Error::TriggerNotOfComponent {
                        trigger: *foreign,
                        component,
                    });
                }
                triggers.to_vec()
            }
            None => Trigger::ALL.iter().copied().filter(belongs).collect(),
        };
        self.register_plugin(Arc::new(plugin), triggers)
    }

    fn register_plugin(&self, plugin: Arc<dyn DynPlugin>, triggers: Vec<Trigger>) -> Result<()> {
        if self.inner.running.load(Ordering::Acquire) {
            return Err(Error::AlreadyRunning);
        }
        let mut plugins = self
            .inner
            .plugins
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        plugins.push(RuntimePlugin { plugin, triggers });
        let dispatch = Arc::new(Dispatch::build(&plugins));
        *self
            .inner
            .dispatch
            .write()
            .unwrap_or_else(PoisonError::into_inner) = dispatch;
        Ok(())
    }

    /// Calls `callback` at every event of this kind (the original's `@app.events.on.<kind>()`).
    ///
    /// ```
    /// use qtasks::{EventKind, QueueTasks};
    ///
    /// let app = QueueTasks::new();
    /// app.on_event(EventKind::TaskError, |event| {
    ///     eprintln!("task {:?} failed: {:?}", event.task.as_ref().map(|t| &t.task_name), event.outcome);
    /// });
    /// ```
    pub fn on_event(&self, kind: EventKind, callback: impl Fn(&Event) + Send + Sync + 'static) {
        self.inner.events.on(kind, callback);
    }

    /// Calls an async `callback` at every event of this kind.
    pub fn on_event_async<F, Fut>(&self, kind: EventKind, callback: F)
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inner.events.on_async(kind, callback);
    }

    // -- Dependencies --------------------------------------------------------------------------

    /// Registers the provider of `Depends<T>` task parameters: `make` builds the value, per
    /// task or once per worker (see [`Depends`](crate::Depends)). A provider that fails fails
    /// the task, naming the type.
    pub fn provide<T, F, Fut>(&self, scope: DependencyScope, make: F)
    where
        T: Send + Sync + 'static,
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, BoxError>> + Send + 'static,
    {
        self.inner.dependencies.provide(scope, make, None);
    }

    /// [`provide`](Self::provide) with a `close` step, run when the value's scope ends: the task
    /// (also when it fails) or the app (at stop).
    pub fn provide_with_close<T, F, Fut, C, CFut>(&self, scope: DependencyScope, make: F, close: C)
    where
        T: Send + Sync + 'static,
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, BoxError>> + Send + 'static,
        C: Fn(Arc<T>) -> CFut + Send + Sync + 'static,
        CFut: Future<Output = ()> + Send + 'static,
    {
        let close = Arc::new(
            move |value: Arc<dyn std::any::Any + Send + Sync>| -> crate::BoxFuture<'static, ()> {
                match value.downcast::<T>() {
                    Ok(value) => Box::pin(close(value)),
                    Err(_) => Box::pin(async {}),
                }
            },
        );
        self.inner.dependencies.provide(scope, make, Some(close));
    }

    /// Sets the value `State<T>` task parameters receive, shared by the app's tasks.
    pub fn set_state<T: Send + Sync + 'static>(&self, value: T) {
        self.inner.dependencies.set_state(value);
    }

    // -- Tasks ---------------------------------------------------------------------------------

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

    /// Adds a task: `qtasks_add_task_before_broker`, `broker_add_before` and `storage_add` may
    /// change it, then the broker stores and queues it.
    async fn enqueue(
        &self,
        task_name: String,
        priority: i64,
        args: Vec<Value>,
        kwargs: Map<String, Value>,
        definition: Option<&'static TaskDefinition>,
    ) -> Result<TaskHandle> {
        let mut task = QueuedTask {
            uuid: Uuid::new_v4(),
            task_name,
            priority,
            args,
            kwargs,
            created_at: unix_now(),
            retry: None,
            retry_parent_uuid: None,
            run_at: None,
            definition,
        };
        let dispatch = self.dispatch();
        let (broker, storage) = (&*self.inner.broker, &*self.inner.storage);
        chain!(
            dispatch,
            Trigger::QtasksAddTaskBeforeBroker,
            QtasksAddTaskBeforeBroker {
                app: self,
                broker,
                task: &task
            },
            |update| update.apply_to(&mut task)
        );
        chain!(
            dispatch,
            Trigger::BrokerAddBefore,
            BrokerAddBefore {
                broker,
                storage,
                task: &task
            },
            |update| update.apply_to(&mut task)
        );
        chain!(
            dispatch,
            Trigger::StorageAdd,
            StorageAdd {
                storage,
                uuid: task.uuid,
                task: &task
            },
            |update| update.apply_to(&mut task)
        );
        if task.task_name.contains(':') {
            return Err(Error::InvalidArguments {
                task: task.task_name,
                reason:
                    "task names cannot contain `:`, which separates the fields of queue entries"
                        .to_owned(),
            });
        }
        broker.add(task.clone()).await?;
        dispatch
            .fire(&BrokerAddAfter {
                broker,
                storage,
                task: &task,
            })
            .await;
        dispatch
            .fire(&QtasksAddTaskAfterBroker {
                app: self,
                broker,
                task: &task,
            })
            .await;
        Ok(TaskHandle::new(task.uuid, self.clone()))
    }

    /// A task's record as it is now; `None` for an unknown id. `storage_get`, `broker_get` and
    /// `qtasks_get` may change what is returned.
    pub async fn get(&self, uuid: Uuid) -> Result<Option<TaskRecord>> {
        let mut record = self.inner.storage.get(uuid).await?;
        self.adjust_read(&mut record).await;
        Ok(record)
    }

    async fn adjust_read(&self, record: &mut Option<TaskRecord>) {
        let dispatch = self.dispatch();
        let (broker, storage) = (&*self.inner.broker, &*self.inner.storage);
        if let Some(found) = record.as_mut() {
            chain!(
                dispatch,
                Trigger::StorageGet,
                StorageGet {
                    storage,
                    record: found
                },
                |update| update.apply_to(found)
            );
        }
        chain!(
            dispatch,
            Trigger::BrokerGet,
            BrokerGet {
                broker,
                task: record.as_ref()
            },
            |update| {
                if let Some(found) = record.as_mut() {
                    update.apply_to(found);
                }
            }
        );
        chain!(
            dispatch,
            Trigger::QtasksGet,
            QtasksGet {
                app: self,
                broker,
                task: record.as_ref()
            },
            |update| {
                if let Some(found) = record.as_mut() {
                    update.apply_to(found);
                }
            }
        );
    }

    /// Every record of this app, oldest first. `storage_get_all` may change the list.
    pub async fn get_all(&self) -> Result<Vec<TaskRecord>> {
        let mut records = self.inner.storage.get_all().await?;
        let storage = &*self.inner.storage;
        chain!(
            self.dispatch(),
            Trigger::StorageGetAll,
            StorageGetAll {
                storage,
                records: &records
            },
            |replaced| { records = replaced }
        );
        Ok(records)
    }

    /// Waits until a task ends and returns its record; see [`TaskHandle::wait`]. A retried
    /// task is followed to its last attempt.
    pub async fn wait(&self, uuid: Uuid, timeout: Duration) -> Result<TaskRecord> {
        let ends = self.config().result_statuses_end.clone();
        let follow = async {
            let mut current = uuid;
            loop {
                let Some(record) = self.inner.storage.wait_finished(current).await? else {
                    return Err(Error::TaskNotFound(current));
                };
                match (record.status, record.retry_child_uuid) {
                    (TaskStatus::Retry, Some(child)) => current = child,
                    (status, _) if ends.contains(&status) || status.is_final() => {
                        let mut record = Some(record);
                        self.adjust_read(&mut record).await;
                        return Ok(record.expect("present"));
                    }
                    _ => unreachable!("wait_finished returns ended records"),
                }
            }
        };
        match tokio::time::timeout(timeout, follow).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Error::WaitTimeout { uuid, timeout }),
        }
    }

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

    /// Deletes this app's queued tasks and records, and nothing of other apps.
    pub async fn flush_all(&self) -> Result<()> {
        let dispatch = self.dispatch();
        let (broker, storage) = (&*self.inner.broker, &*self.inner.storage);
        dispatch.fire(&QtasksFlushAll { app: self, broker }).await;
        dispatch.fire(&BrokerFlushAll { broker }).await;
        broker.flush_all().await?;
        dispatch.fire(&StorageFlushAll { storage }).await;
        storage.flush_all().await?;
        Ok(())
    }

    /// Whether a worker of this app is running anywhere: its heartbeat in the global config
    /// (on Redis, any worker process, as the original's `ping`).
    pub async fn ping(&self) -> Result<bool> {
        let global_config = &*self.inner.global_config;
        self.dispatch()
            .fire(&QtasksPing {
                app: self,
                global_config,
            })
            .await;
        Ok(global_config.status().await?)
    }

    // -- Global config -------------------------------------------------------------------------

    /// Writes a global config entry (`global_config_set` may change it).
    pub async fn config_set(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let global_config = &*self.inner.global_config;
        let (mut name, mut key, mut value) = (name.to_owned(), key.to_owned(), value.to_owned());
        chain!(
            self.dispatch(),
            Trigger::GlobalConfigSet,
            GlobalConfigSet {
                global_config,
                name: &name,
                key: &key,
                value: &value
            },
            |update| {
                if let Some(new) = update.name {
                    name = new;
                }
                if let Some(new) = update.key {
                    key = new;
                }
                if let Some(new) = update.value {
                    value = new;
                }
            }
        );
        Ok(global_config.set(&name, &key, &value).await?)
    }

    /// Reads a global config entry (`global_config_get` may change it).
    pub async fn config_get(&self, name: &str, key: &str) -> Result<Option<String>> {
        let global_config = &*self.inner.global_config;
        let mut value = global_config.get(name, key).await?;
        chain!(
            self.dispatch(),
            Trigger::GlobalConfigGet,
            GlobalConfigGet {
                global_config,
                name,
                key,
                value: value.as_deref()
            },
            |replaced| value = Some(replaced)
        );
        Ok(value)
    }

    /// Reads all global config entries of a name (`global_config_get_all` may change them).
    pub async fn config_get_all(
        &self,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let global_config = &*self.inner.global_config;
        let mut values = global_config.get_all(name).await?;
        chain!(
            self.dispatch(),
            Trigger::GlobalConfigGetAll,
            GlobalConfigGetAll {
                global_config,
                name,
                values: &values
            },
            |replaced| values = replaced
        );
        Ok(values)
    }

    /// Reads the entries of every name matching a glob pattern, keyed `name:key`
    /// (`global_config_get_match` may change them).
    pub async fn config_get_match(
        &self,
        pattern: &str,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        let global_config = &*self.inner.global_config;
        let mut values = global_config.get_match(pattern).await?;
        chain!(
            self.dispatch(),
            Trigger::GlobalConfigGetMatch,
            GlobalConfigGetMatch {
                global_config,
                pattern,
                values: &values
            },
            |replaced| values = replaced
        );
        Ok(values)
    }

    // -- Lifecycle -----------------------------------------------------------------------------

    /// Starts plugins, components and a worker in the background of the current tokio
    /// runtime, and returns (through the app's [`Starter`]). Stop it with
    /// [`stop`](Self::stop). For a worker process, use [`run_forever`](Self::run_forever).
    pub async fn start(&self) -> Result<()> {
        let starter = Arc::clone(&self.inner.starter);
        starter
            .start(StartSteps {
                app: self,
                starter: &*starter,
            })
            .await
    }

    /// Stops gracefully: the worker takes no new task, the running ones finish, the components
    /// stop, then each plugin's `stop` runs once. Tasks still queued stay queued. Stopping a
    /// stopped app does nothing.
    pub async fn stop(&self) -> Result<()> {
        let starter = Arc::clone(&self.inner.starter);
        if self.inner.running.load(Ordering::Acquire) {
            self.dispatch()
                .fire(&QtasksStop {
                    app: self,
                    starter: &*starter,
                })
                .await;
        }
        starter
            .stop(StopSteps {
                app: self,
                starter: &*starter,
            })
            .await
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
        let mut signals = ShutdownSignals::listen();
        self.start().await?;
        let mut stop_requested = match self.inner.lifecycle.lock().await.as_ref() {
            Some(running) => running.shutdown.subscribe(),
            None => return Ok(()), // stopped already
        };
        tokio::select! {
            () = signals.recv() => tracing::info!(app = %self.name(), "shutdown signal received"),
            _ = stop_requested.wait_for(|stop| *stop) => {}
        }
        self.stop().await
    }

    /// What the app is made of and which tasks it knows (`stats_inspect` fires first).
    pub async fn inspect(&self) -> Inspection {
        self.dispatch().fire(&StatsInspect { app: self }).await;
        let tasks: Vec<TaskStats> = TaskTable::global()
            .map(|table| {
                table
                    .definitions()
                    .iter()
                    .map(|d| TaskStats::of(d))
                    .collect()
            })
            .unwrap_or_default();
        let inner = &self.inner;
        Inspection {
            app: AppStats {
                name: self.name(),
                version: env!("CARGO_PKG_VERSION"),
                config: (*self.config()).clone(),
                tasks_count: tasks.len(),
                plugins_count: crate::dispatch::static_registrations().len()
                    + self.runtime_plugins().len(),
                events_count: inner.events.count(),
                broker: inner.broker.name().to_owned(),
                storage: inner.storage.name().to_owned(),
                global_config: inner.global_config.name().to_owned(),
                worker: inner.worker.name().to_owned(),
                starter: inner.starter.name().to_owned(),
                executor: inner.executor.name().to_owned(),
            },
            tasks,
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
