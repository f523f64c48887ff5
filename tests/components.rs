//! Replaceable components, component-scoped plugins, events, config, ping, inspect and
//! retries: the app's architecture as users plug into it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qtasks::backend::{
    BackendError, BackendParts, Broker, Connector, Delivery, ErrorChain, Storage,
};
use qtasks::components::{
    GlobalConfig, StartSteps, Starter, StopSteps, TaskExecutor, TaskRunner, Worker, WorkerHost,
};
use qtasks::plugin::{BoxError, BoxFuture};
use qtasks::records::RecordUpdate;
use qtasks::triggers::{Reply, TriggerEvent};
use qtasks::{
    Component, EventKind, Outcome, Plugin, QueueConfig, QueueTasks, QueuedTask, TaskContext,
    TaskRecord, TaskResult, TaskStatus, Trigger,
};
use serde_json::{Value, json};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(10);

#[qtasks::task]
async fn double(x: i64) -> i64 {
    x * 2
}

// -- A user's own component of each kind ----------------------------------------------------------

/// A plain FIFO queue (no priorities) writing to [`MapStorage`].
struct FifoBroker {
    storage: Arc<MapStorage>,
    queue: Mutex<VecDeque<QueuedTask>>,
    arrived: Notify,
    added: AtomicUsize,
}

#[qtasks::async_trait]
impl qtasks::backend::Lifecycle for FifoBroker {
    fn name(&self) -> &str {
        "FifoBroker"
    }
}

#[qtasks::async_trait]
impl Broker for FifoBroker {
    async fn add(&self, task: QueuedTask) -> Result<(), BackendError> {
        self.added.fetch_add(1, Ordering::SeqCst);
        self.storage
            .records
            .lock()
            .unwrap()
            .insert(task.uuid, new_record(&task));
        self.queue.lock().unwrap().push_back(task);
        self.arrived.notify_one();
        Ok(())
    }

    /// One task at a time, whatever `max` (a simple broker's choice).
    async fn next_batch(&self, _max: usize) -> Result<Vec<Delivery>, BackendError> {
        loop {
            let notified = self.arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(task) = self.queue.lock().unwrap().pop_front() {
                self.storage
                    .change(task.uuid, |r| r.status = TaskStatus::Process);
                return Ok(vec![Delivery::new(task, String::new())]);
            }
            notified.await;
        }
    }

    async fn finish(&self, delivery: &Delivery, outcome: Outcome) -> Result<(), BackendError> {
        self.storage.change(delivery.task.uuid, |r| {
            r.status = outcome.status();
            if let Outcome::Success(value) = outcome {
                r.returning = Some(value);
            }
        });
        Ok(())
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        self.queue.lock().unwrap().clear();
        Ok(())
    }
}

fn new_record(task: &QueuedTask) -> TaskRecord {
    TaskRecord::new(task)
}

/// Records in a map; waiters poll every millisecond (a user's simple choice).
#[derive(Default)]
struct MapStorage {
    records: Mutex<HashMap<qtasks::Uuid, TaskRecord>>,
}

impl MapStorage {
    fn change(&self, uuid: qtasks::Uuid, change: impl FnOnce(&mut TaskRecord)) {
        if let Some(record) = self.records.lock().unwrap().get_mut(&uuid) {
            change(record);
        }
    }
}

#[qtasks::async_trait]
impl qtasks::backend::Lifecycle for MapStorage {
    fn name(&self) -> &str {
        "MapStorage"
    }
}

#[qtasks::async_trait]
impl Storage for MapStorage {
    async fn get(&self, uuid: qtasks::Uuid) -> Result<Option<TaskRecord>, BackendError> {
        let record = self.records.lock().unwrap().get(&uuid).cloned();
        Ok(record)
    }
    async fn get_all(&self) -> Result<Vec<TaskRecord>, BackendError> {
        let records = self.records.lock().unwrap().values().cloned().collect();
        Ok(records)
    }
    async fn update(&self, _uuid: qtasks::Uuid, _update: RecordUpdate) -> Result<(), BackendError> {
        Ok(())
    }
    async fn wait_finished(&self, uuid: qtasks::Uuid) -> Result<Option<TaskRecord>, BackendError> {
        loop {
            match self.records.lock().unwrap().get(&uuid) {
                None => return Ok(None),
                Some(record) if record.status.is_final() => return Ok(Some(record.clone())),
                Some(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    async fn delete_finished(&self) -> Result<usize, BackendError> {
        Ok(0)
    }
    async fn flush_all(&self) -> Result<(), BackendError> {
        self.records.lock().unwrap().clear();
        Ok(())
    }
}

/// Entries in a map, heartbeat as a flag; counts heartbeats.
#[derive(Default)]
struct FlagGlobalConfig {
    entries: Mutex<BTreeMap<String, String>>,
    alive: Mutex<bool>,
    beats: AtomicUsize,
}

#[qtasks::async_trait]
impl qtasks::backend::Lifecycle for FlagGlobalConfig {
    fn name(&self) -> &str {
        "FlagGlobalConfig"
    }
}

#[qtasks::async_trait]
impl GlobalConfig for FlagGlobalConfig {
    async fn set(&self, name: &str, key: &str, value: &str) -> Result<(), BackendError> {
        self.entries
            .lock()
            .unwrap()
            .insert(format!("{name}:{key}"), value.to_owned());
        Ok(())
    }
    async fn get(&self, name: &str, key: &str) -> Result<Option<String>, BackendError> {
        let value = self
            .entries
            .lock()
            .unwrap()
            .get(&format!("{name}:{key}"))
            .cloned();
        Ok(value)
    }
    async fn get_all(&self, _name: &str) -> Result<BTreeMap<String, String>, BackendError> {
        let all = self.entries.lock().unwrap().clone();
        Ok(all)
    }
    async fn get_match(&self, _pattern: &str) -> Result<BTreeMap<String, String>, BackendError> {
        Ok(BTreeMap::new())
    }
    /// The first claim of a key wins for good (one process, a short test: no expiry).
    async fn claim(&self, key: &str, _ttl: Duration) -> Result<bool, BackendError> {
        let mut entries = self.entries.lock().unwrap();
        Ok(entries
            .insert(format!("claim:{key}"), String::new())
            .is_none())
    }
    async fn set_status(&self, _ttl: Duration) -> Result<(), BackendError> {
        self.beats.fetch_add(1, Ordering::SeqCst);
        *self.alive.lock().unwrap() = true;
        Ok(())
    }
    async fn clear_status(&self) -> Result<(), BackendError> {
        *self.alive.lock().unwrap() = false;
        Ok(())
    }
    async fn status(&self) -> Result<bool, BackendError> {
        let alive = *self.alive.lock().unwrap();
        Ok(alive)
    }
}

/// One task at a time, in order.
#[derive(Default)]
struct SequentialWorker {
    ran: AtomicUsize,
}

impl Worker for SequentialWorker {
    fn name(&self) -> &str {
        "SequentialWorker"
    }
    fn run(&self, host: WorkerHost) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            host.running(0).await;
            while let Some(delivery) = host.next().await {
                host.execute(delivery).await;
                self.ran.fetch_add(1, Ordering::SeqCst);
            }
            host.stopping(0).await;
        })
    }
}

/// Records what it did around the standard steps.
#[derive(Default)]
struct NotingStarter {
    notes: Mutex<Vec<&'static str>>,
}

impl Starter for NotingStarter {
    fn name(&self) -> &str {
        "NotingStarter"
    }
    fn start<'a>(&'a self, steps: StartSteps<'a>) -> BoxFuture<'a, qtasks::Result<()>> {
        Box::pin(async move {
            self.notes.lock().unwrap().push("before start");
            steps.run().await?;
            self.notes.lock().unwrap().push("started");
            Ok(())
        })
    }
    fn stop<'a>(&'a self, steps: StopSteps<'a>) -> BoxFuture<'a, qtasks::Result<()>> {
        Box::pin(async move {
            steps.run().await?;
            self.notes.lock().unwrap().push("stopped");
            Ok(())
        })
    }
}

/// Wraps every successful result.
struct WrappingExecutor(&'static str);

impl TaskRunner for WrappingExecutor {
    fn name(&self) -> &str {
        self.0
    }
    fn execute<'a>(&'a self, run: &'a TaskExecutor) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match run.run_default().await {
                Outcome::Success(value) => Outcome::Success(json!({ self.0: value })),
                other => other,
            }
        })
    }
}

static OWN_EXECUTOR: WrappingExecutor = WrappingExecutor("own");

#[qtasks::task(executor = OWN_EXECUTOR)]
async fn with_own_executor(x: i64) -> i64 {
    x + 1
}

/// A user's engine: hands out [`FifoBroker`], [`MapStorage`] and [`FlagGlobalConfig`] through
/// the same seam the Redis crate uses, or refuses an app name it cannot serve.
struct FifoEngine;

#[qtasks::async_trait]
impl Connector for FifoEngine {
    async fn connect(&self, config: &QueueConfig) -> Result<BackendParts, BackendError> {
        if config.name == "forbidden" {
            return Err(
                BackendError::new("fifo", "this engine serves no app named `forbidden`")
                    .with_source(std::io::Error::other("refused by policy")),
            );
        }
        let storage = Arc::new(MapStorage::default());
        let broker = Arc::new(FifoBroker {
            storage: Arc::clone(&storage),
            queue: Mutex::default(),
            arrived: Notify::new(),
            added: AtomicUsize::new(0),
        });
        Ok(BackendParts::new(
            broker,
            storage,
            Arc::new(FlagGlobalConfig::default()),
        ))
    }
}

#[tokio::test]
async fn an_engine_written_outside_qtasks_plugs_in_through_a_connector() {
    let app = QueueTasks::builder()
        .config(QueueConfig {
            name: "engine".into(),
            ..Default::default()
        })
        .connect(FifoEngine)
        .await
        .unwrap()
        .build();
    let inspection = app.inspect().await;
    assert!(
        inspection.app.broker.ends_with("FifoBroker"),
        "{}",
        inspection.app.broker
    );
    assert!(
        inspection.app.storage.ends_with("MapStorage"),
        "{}",
        inspection.app.storage
    );
    app.start().await.unwrap();
    let done = double::add_task(&app, 21)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.returning, Some(json!(42)));
    app.stop().await.unwrap();

    // A connector that refuses says why, with its cause as the error's source.
    let refused = QueueTasks::builder()
        .config(QueueConfig {
            name: "forbidden".into(),
            ..Default::default()
        })
        .connect(FifoEngine)
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "fifo backend: this engine serves no app named `forbidden`"
    );
    assert_eq!(
        ErrorChain(&refused).to_string(),
        "fifo backend: this engine serves no app named `forbidden`: refused by policy"
    );
}

#[tokio::test]
async fn user_written_components_of_every_kind_run_tasks() {
    let storage = Arc::new(MapStorage::default());
    let broker = Arc::new(FifoBroker {
        storage: Arc::clone(&storage),
        queue: Mutex::default(),
        arrived: Notify::new(),
        added: AtomicUsize::new(0),
    });
    let global_config = Arc::new(FlagGlobalConfig::default());
    let worker = Arc::new(SequentialWorker::default());
    let starter = Arc::new(NotingStarter::default());
    let app = QueueTasks::builder()
        .config(QueueConfig {
            name: "custom".into(),
            ..Default::default()
        })
        .backend(broker.clone(), storage.clone())
        .global_config(global_config.clone())
        .worker(worker.clone())
        .starter(starter.clone())
        .runner(Arc::new(WrappingExecutor("app")))
        .build();

    assert!(!app.ping().await.unwrap());
    app.start().await.unwrap();
    assert!(
        app.ping().await.unwrap(),
        "the heartbeat went to the user's global config"
    );
    let a = double::add_task(&app, 21).await.unwrap();
    let b = with_own_executor::add_task(&app, 1).await.unwrap();
    assert_eq!(
        a.wait(WAIT).await.unwrap().returning,
        Some(json!({"app": 42})),
        "the app's executor ran it"
    );
    assert_eq!(
        b.wait(WAIT).await.unwrap().returning,
        Some(json!({"own": 2})),
        "the task's own executor ran it"
    );
    app.global_config()
        .set("limits", "rate", "5")
        .await
        .unwrap();
    assert_eq!(
        app.global_config()
            .get("limits", "rate")
            .await
            .unwrap()
            .as_deref(),
        Some("5")
    );
    app.stop().await.unwrap();

    assert_eq!(broker.added.load(Ordering::SeqCst), 2);
    assert_eq!(worker.ran.load(Ordering::SeqCst), 2);
    assert!(global_config.beats.load(Ordering::SeqCst) >= 1);
    assert!(
        !app.ping().await.unwrap(),
        "the heartbeat is cleared at stop"
    );
    assert_eq!(
        *starter.notes.lock().unwrap(),
        ["before start", "started", "stopped"]
    );
    let inspection = app.inspect().await;
    let parts = [
        &inspection.app.broker,
        &inspection.app.storage,
        &inspection.app.global_config,
        &inspection.app.worker,
        &inspection.app.starter,
        &inspection.app.executor,
    ];
    assert_eq!(
        parts,
        [
            "FifoBroker",
            "MapStorage",
            "FlagGlobalConfig",
            "SequentialWorker",
            "NotingStarter",
            "app"
        ]
    );
}

// -- Plugins per component ------------------------------------------------------------------------

#[derive(Default)]
struct Lifecycle {
    started: AtomicUsize,
    stopped: AtomicUsize,
    seen: Mutex<Vec<Trigger>>,
}

struct Watching(Arc<Lifecycle>);

impl Plugin for Watching {
    async fn start(&self) -> Result<(), BoxError> {
        self.0.started.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn stop(&self) -> Result<(), BoxError> {
        self.0.stopped.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn trigger(&self, event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
        self.0.seen.lock().unwrap().push(event.trigger());
        Ok(None)
    }
}

#[tokio::test]
async fn a_component_plugin_sees_that_components_triggers_and_is_started_and_stopped_once() {
    let app = QueueTasks::new();
    let worker_plugin = Arc::new(Lifecycle::default());
    let broker_plugin = Arc::new(Lifecycle::default());
    let everything = Arc::new(Lifecycle::default());
    app.add_component_plugin(
        Component::Worker,
        Watching(Arc::clone(&worker_plugin)),
        None,
    )
    .unwrap();
    app.add_component_plugin(
        Component::Broker,
        Watching(Arc::clone(&broker_plugin)),
        Some(&[Trigger::BrokerAddBefore]),
    )
    .unwrap();
    app.add_plugin(Watching(Arc::clone(&everything)), Trigger::ALL)
        .unwrap();

    let error = app
        .add_component_plugin(
            Component::Broker,
            Watching(Arc::default()),
            Some(&[Trigger::WorkerAdd]),
        )
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "trigger `worker_add` is fired by the Worker, not the Broker; register the plugin for that component, or on the app"
    );

    app.start().await.unwrap();
    double::add_task(&app, 1)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    app.stop().await.unwrap();

    let components = |lifecycle: &Lifecycle| {
        let mut seen: Vec<Component> = lifecycle
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.component())
            .collect();
        seen.sort();
        seen.dedup();
        seen
    };
    assert_eq!(
        components(&worker_plugin),
        [Component::Worker, Component::TaskExecutor],
        "worker and executor triggers"
    );
    assert_eq!(
        *broker_plugin.seen.lock().unwrap(),
        [Trigger::BrokerAddBefore]
    );
    assert_eq!(
        components(&everything).len(),
        7,
        "an app plugin can see all components' triggers: {:?}",
        components(&everything)
    );
    for lifecycle in [&worker_plugin, &broker_plugin, &everything] {
        assert_eq!(lifecycle.started.load(Ordering::SeqCst), 1);
        assert_eq!(
            lifecycle.stopped.load(Ordering::SeqCst),
            1,
            "stopped once (the original stops plugins twice)"
        );
    }
}

// -- Events ---------------------------------------------------------------------------------------

#[qtasks::task(echo = true)]
async fn event_task(ctx: TaskContext, how: String) -> TaskResult<String> {
    match how.as_str() {
        "fail" => Err(qtasks::TaskError::msg("failed on purpose")),
        "cancel" => Err(ctx.cancel("cancelled on purpose")),
        _ => Ok(how),
    }
}

#[tokio::test]
async fn every_event_reaches_the_app_sync_and_async() {
    let app = QueueTasks::new();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let kinds = [
        EventKind::Starting,
        EventKind::Stopping,
        EventKind::WorkerRunning,
        EventKind::WorkerStopping,
        EventKind::TaskRunning,
        EventKind::TaskSuccess,
        EventKind::TaskError,
        EventKind::TaskCancel,
        EventKind::TaskStopping,
    ];
    for kind in kinds {
        let sync_seen = Arc::clone(&seen);
        app.on_event(kind, move |event| {
            let task = event
                .task
                .as_ref()
                .map(|t| t.args[0].to_string())
                .unwrap_or_default();
            sync_seen
                .lock()
                .unwrap()
                .push(format!("sync {:?} {task}", event.kind));
        });
        let async_seen = Arc::clone(&seen);
        app.on_event_async(kind, move |event| {
            let async_seen = Arc::clone(&async_seen);
            async move {
                tokio::task::yield_now().await;
                async_seen
                    .lock()
                    .unwrap()
                    .push(format!("async {:?}", event.kind));
            }
        });
    }
    app.start().await.unwrap();
    for how in ["ok", "fail", "cancel"] {
        event_task::add_task(&app, how.into())
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap();
    }
    app.stop().await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let count = |line: &str| seen.iter().filter(|l| *l == line).count();
    for kind in ["Starting", "Stopping", "WorkerRunning", "WorkerStopping"] {
        assert_eq!(count(&format!("sync {kind} ")), 1, "{kind}: {seen:?}");
        assert_eq!(count(&format!("async {kind}")), 1, "{kind}: {seen:?}");
    }
    assert_eq!(count("sync TaskSuccess \"ok\""), 1);
    assert_eq!(count("sync TaskError \"fail\""), 1);
    assert_eq!(count("sync TaskCancel \"cancel\""), 1);
    assert_eq!(count("async TaskRunning"), 3);
    assert_eq!(count("async TaskStopping"), 3);
}

// -- Config, ping, flush, inspect -----------------------------------------------------------------

#[tokio::test]
async fn config_changes_reach_subscribers_and_bad_values_name_the_field() {
    let app = QueueTasks::new();
    let changes: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let sink = Arc::clone(&changes);
    app.subscribe_config(move |config, field, value| {
        assert_eq!(
            config.max_tasks_process, 3,
            "subscribers see the new config"
        );
        sink.lock().unwrap().push((field.to_owned(), value.clone()));
    });
    app.set_config("max_tasks_process", "3").unwrap();
    assert_eq!(app.config().max_tasks_process, 3);
    assert_eq!(
        *changes.lock().unwrap(),
        [("max_tasks_process".to_owned(), json!(3))]
    );

    let error = app.set_config("max_tasks_process", "lots").unwrap_err();
    assert_eq!(
        error.to_string(),
        "max_tasks_process: `lots` is not a whole number"
    );
    let error = app.set_config("name", "renamed").unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("name: `renamed` is not the app's name"),
        "{error}"
    );
    assert_eq!(
        changes.lock().unwrap().len(),
        1,
        "failed changes tell nobody"
    );
}

#[tokio::test]
async fn ping_follows_the_worker_and_flush_all_empties_the_app() {
    let app = QueueTasks::with_config(QueueConfig {
        global_config_status_ttl: 60,
        ..Default::default()
    });
    assert!(!app.ping().await.unwrap());
    app.start().await.unwrap();
    assert!(app.ping().await.unwrap());
    double::add_task(&app, 2)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    app.stop().await.unwrap();
    assert!(!app.ping().await.unwrap());

    let queued = double::add_task(&app, 3).await.unwrap();
    assert_eq!(app.get_all().await.unwrap().len(), 2);
    app.flush_all().await.unwrap();
    assert_eq!(app.get_all().await.unwrap().len(), 0);
    app.start().await.unwrap();
    assert!(
        matches!(
            queued.wait(Duration::from_millis(100)).await,
            Err(qtasks::Error::TaskNotFound(_))
        ),
        "the queue was emptied too"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn delete_finished_tasks_cleans_up_at_start() {
    let app = QueueTasks::with_config(QueueConfig {
        delete_finished_tasks: true,
        ..Default::default()
    });
    app.start().await.unwrap();
    let finished = double::add_task(&app, 2).await.unwrap();
    finished.wait(WAIT).await.unwrap();
    app.stop().await.unwrap();
    let waiting = double::add_task(&app, 5).await.unwrap();
    app.start().await.unwrap();
    assert_eq!(
        app.get(finished.uuid()).await.unwrap(),
        None,
        "deleted at the second start"
    );
    assert_eq!(
        waiting.wait(WAIT).await.unwrap().returning,
        Some(json!(10)),
        "queued tasks are kept"
    );
    app.stop().await.unwrap();
}

#[qtasks::task(name = "inspected", priority = 2, tags = ["a", "b"], description = "Shown by inspect", retry = 3)]
async fn inspected(count: u32, label: Option<String>) -> String {
    format!("{count}{label:?}")
}

#[tokio::test]
async fn inspect_reports_the_app_and_each_task_as_text_and_json() {
    let app = QueueTasks::with_config(QueueConfig {
        name: "inspector".into(),
        ..Default::default()
    });
    app.on_event(EventKind::Starting, |_| {});
    let inspection = app.inspect().await;
    let json = inspection.to_json();
    assert_eq!(json["app"]["name"], "inspector");
    assert_eq!(json["app"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["app"]["events_count"], 1);
    assert_eq!(json["app"]["config"]["max_tasks_process"], 10);
    assert_eq!(json["app"]["broker"], "MemoryBroker");
    let task = json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "inspected")
        .unwrap();
    assert_eq!(task["priority"], 2);
    assert_eq!(task["tags"], json!(["a", "b"]));
    assert_eq!(task["description"], "Shown by inspect");
    assert_eq!(
        task["params"],
        json!(["count: u32", "label: Option<String>"])
    );
    assert_eq!(task["retry"], 3);
    assert_eq!(
        json["app"]["tasks_count"],
        json["tasks"].as_array().unwrap().len()
    );

    let text = inspection.to_string();
    assert!(
        text.starts_with("Name                      : inspector\n"),
        "{text}"
    );
    assert!(
        text.contains("Task name                 : inspected\n"),
        "{text}"
    );
    assert!(
        text.contains("Args                      : count: u32, label: Option<String>\n"),
        "{text}"
    );
    assert!(text.contains("Retry Count               : 3\n"), "{text}");
}

// -- Retries --------------------------------------------------------------------------------------

static ATTEMPTS: AtomicUsize = AtomicUsize::new(0);

#[qtasks::task(retry = 2)]
async fn succeeds_on_the_third_attempt(tag: String) -> TaskResult<String> {
    if ATTEMPTS.fetch_add(1, Ordering::SeqCst) < 2 {
        return Err(qtasks::TaskError::msg("not yet"));
    }
    Ok(tag)
}

#[tokio::test]
async fn a_retried_task_is_a_chain_of_linked_attempts_and_wait_follows_it() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let handle = succeeds_on_the_third_attempt::add_task(&app, "done".into())
        .await
        .unwrap();
    let last = handle.wait(WAIT).await.unwrap();
    assert_eq!(
        (last.status, last.returning.clone()),
        (TaskStatus::Success, Some(json!("done")))
    );
    assert_eq!(last.retry, Some(0));

    let first = app.get(handle.uuid()).await.unwrap().unwrap();
    assert_eq!((first.status, first.retry), (TaskStatus::Retry, Some(2)));
    assert_eq!(first.traceback.as_deref(), Some("TaskError: not yet"));
    assert_eq!(
        first.args,
        [json!("done")],
        "the parent keeps its arguments"
    );
    let second = app
        .get(first.retry_child_uuid.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (second.status, second.retry, second.retry_parent_uuid),
        (TaskStatus::Retry, Some(1), Some(first.uuid))
    );
    assert_eq!(second.retry_child_uuid, Some(last.uuid));
    assert_eq!(last.retry_parent_uuid, Some(second.uuid));
    app.stop().await.unwrap();
}

// -- Redis: running_older_tasks and the heartbeat's time to live ----------------------------------

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn running_older_tasks_puts_dead_workers_tasks_back_at_start_on_redis() {
    use redis::AsyncCommands;
    let Some(url) = qtasks_test_support::redis_url(
        "running_older_tasks_puts_taken_tasks_back_at_start_on_redis",
    ) else {
        return;
    };
    let prefix = qtasks_test_support::unique_prefix("older");
    let config = QueueConfig {
        name: prefix.clone(),
        running_older_tasks: true,
        ..Default::default()
    };
    let app = qtasks::redis::connect_with(&url, config, qtasks::redis::RedisOptions::default())
        .await
        .unwrap();
    // A task taken by a worker that is gone (its lease ran out), and one a live worker holds
    // (its lease lasts until 2100): only the first is put back.
    let uuid =
        qtasks_test_support::redis::plant_taken_task(&url, &prefix, "double", "[4]", 1).await;
    let live = qtasks_test_support::redis::plant_taken_task(
        &url,
        &prefix,
        "double",
        "[5]",
        4_102_444_800_000,
    )
    .await;
    let mut con = qtasks_test_support::redis::raw_connection(&url).await;
    app.start().await.unwrap();
    assert_eq!(
        app.wait(uuid, WAIT).await.unwrap().returning,
        Some(json!(8))
    );
    let leased: Vec<String> = con
        .zrange(format!("{prefix}:qtasks:leases"), 0, -1)
        .await
        .unwrap();
    assert!(
        leased
            .iter()
            .any(|member| member.contains(&live.to_string())),
        "a live worker's task stays with it: {leased:?}"
    );
    assert_eq!(
        app.get(live).await.unwrap().unwrap().status,
        TaskStatus::Process
    );
    let ttl: i64 = con
        .ttl(format!("{prefix}:GlobalConfig:main"))
        .await
        .unwrap();
    assert!(
        (1..=20).contains(&ttl),
        "the heartbeat lives 20 s without a refresh: {ttl}"
    );
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[tokio::test]
async fn finished_records_in_memory_are_kept_for_their_retention_only() {
    use qtasks::backend::{MemoryBroker, MemoryStorage};
    let storage = Arc::new(MemoryStorage::with_result_ttl(Some(Duration::from_millis(
        50,
    ))));
    let broker = Arc::new(MemoryBroker::new(Arc::clone(&storage)));
    let app = QueueTasks::builder().backend(broker, storage).build();
    app.start().await.unwrap();
    let first = double::add_task(&app, 1).await.unwrap();
    assert_eq!(first.wait(WAIT).await.unwrap().returning, Some(json!(2)));
    assert!(
        first.get().await.unwrap().is_some(),
        "kept while its retention lasts"
    );
    tokio::time::sleep(Duration::from_millis(60)).await; // the retention (50 ms) passes
    // Expired records are dropped as later ones change: no timer, no scan.
    let second = double::add_task(&app, 2).await.unwrap();
    assert_eq!(second.wait(WAIT).await.unwrap().returning, Some(json!(4)));
    assert!(
        first.get().await.unwrap().is_none(),
        "dropped after its retention"
    );
    assert!(second.get().await.unwrap().is_some());
    app.stop().await.unwrap();

    // The default keeps them an hour; `None` for the life of the process.
    assert_eq!(MemoryStorage::DEFAULT_RESULT_TTL, Duration::from_secs(3600));
}
