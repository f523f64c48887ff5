//! Every trigger of the catalogue fires where the original fires it, once per firing point,
//! with its data; and every replacing trigger's answer takes effect end to end.
//!
//! Each test builds its own app with a recording runtime plugin (runtime plugins belong to one
//! app, so tests do not see each other) and runs a scenario that reaches the trigger.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use qtasks::plugin::BoxError;
use qtasks::triggers::{Reply, TriggerEvent};
use qtasks::{
    Component, Plugin, QueueConfig, QueueTasks, TaskContext, TaskResult, TaskStatus, Trigger,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

// -- Tasks ----------------------------------------------------------------------------------------

#[qtasks::task]
async fn pair(a: Value, b: Value) -> Value {
    json!([a, b])
}

#[qtasks::task(retry = 1)]
async fn always_fails() -> TaskResult<()> {
    Err(qtasks::TaskError::msg("broken"))
}

#[qtasks::task]
async fn numbers(n: u32) -> futures_util::stream::Iter<std::ops::Range<u32>> {
    futures_util::stream::iter(0..n)
}

#[qtasks::task(echo = true)]
async fn asks_plugins(ctx: TaskContext) -> TaskResult<Value> {
    Err(ctx.plugin_error().with("message", "boom").into())
}

// -- Recording ------------------------------------------------------------------------------------

/// What every trigger handed its handlers, in order.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(Trigger, String)>>,
}

impl Recorder {
    fn of(&self, trigger: Trigger) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == trigger)
            .map(|(_, d)| d.clone())
            .collect()
    }
}

struct Recording(Arc<Recorder>);

impl Plugin for Recording {
    async fn trigger(&self, event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
        self.0
            .seen
            .lock()
            .unwrap()
            .push((event.trigger(), describe(event)));
        Ok(None)
    }
}

fn task(t: &qtasks::QueuedTask) -> String {
    format!(
        "{} {} {} p{}",
        t.task_name,
        Value::Array(t.args.clone()),
        Value::Object(t.kwargs.clone()),
        t.priority
    )
}

fn record(r: Option<&qtasks::TaskRecord>) -> String {
    match r {
        Some(r) => format!(
            "{} {} {}",
            r.task_name,
            r.status,
            r.returning.clone().unwrap_or(Value::Null)
        ),
        None => "none".to_owned(),
    }
}

fn outcome(o: &qtasks::Outcome) -> String {
    match o {
        qtasks::Outcome::Retry { traceback, child } => {
            format!("retry {traceback} child-retries={:?}", child.retry)
        }
        other => serde_json::to_string(other).unwrap(),
    }
}

/// The data of each trigger as one line; component names show which component was passed.
fn describe(event: TriggerEvent<'_>) -> String {
    use TriggerEvent as E;
    match event {
        E::QtasksAddTaskBeforeBroker(e) => {
            format!("{} {} {}", e.app.name(), e.broker.name(), task(e.task))
        }
        E::QtasksAddTaskAfterBroker(e) => {
            format!("{} {} {}", e.app.name(), e.broker.name(), task(e.task))
        }
        E::QtasksGet(e) => format!("{} {} {}", e.app.name(), e.broker.name(), record(e.task)),
        E::QtasksStop(e) => format!("{} {}", e.app.name(), e.starter.name()),
        E::QtasksPing(e) => format!("{} {}", e.app.name(), e.global_config.name()),
        E::QtasksFlushAll(e) => format!("{} {}", e.app.name(), e.broker.name()),
        E::BrokerListenStart(e) => format!("{} {}", e.broker.name(), e.worker.name()),
        E::BrokerAddWorker(e) => {
            format!("{} {} {}", e.broker.name(), e.worker.name(), task(e.task))
        }
        E::BrokerAddBefore(e) => {
            format!("{} {} {}", e.broker.name(), e.storage.name(), task(e.task))
        }
        E::BrokerAddAfter(e) => {
            format!("{} {} {}", e.broker.name(), e.storage.name(), task(e.task))
        }
        E::BrokerGet(e) => format!("{} {}", e.broker.name(), record(e.task)),
        E::BrokerUpdate(e) => format!("{} {:?}", e.broker.name(), e.update),
        E::BrokerStart(e) => format!("{} {}", e.broker.name(), e.worker.name()),
        E::BrokerStop(e) => e.broker.name().to_owned(),
        E::BrokerRemoveFinishedTask(e) => format!(
            "{} {} {} {}",
            e.broker.name(),
            e.storage.name(),
            task(e.task),
            outcome(e.outcome)
        ),
        E::BrokerRunningOlderTasks(e) => {
            format!(
                "{} {} {:?}",
                e.broker.name(),
                e.worker.name(),
                e.tasks.iter().map(task).collect::<Vec<_>>()
            )
        }
        E::BrokerFlushAll(e) => e.broker.name().to_owned(),
        E::StorageAdd(e) => format!(
            "{} {} {}",
            e.storage.name(),
            e.uuid == e.task.uuid,
            task(e.task)
        ),
        E::StorageGet(e) => format!("{} {}", e.storage.name(), record(Some(e.record))),
        E::StorageGetAll(e) => format!(
            "{} {:?}",
            e.storage.name(),
            e.records
                .iter()
                .map(|r| record(Some(r)))
                .collect::<Vec<_>>()
        ),
        E::StorageUpdate(e) => format!("{} {:?}", e.storage.name(), e.update),
        E::StorageRemoveFinishedTask(e) => format!(
            "{} {} {}",
            e.storage.name(),
            task(e.task),
            outcome(e.outcome)
        ),
        E::StorageStart(e) => e.storage.name().to_owned(),
        E::StorageStop(e) => e.storage.name().to_owned(),
        E::StorageAddProcess(e) => format!("{} {}", e.storage.name(), task(e.task)),
        E::StorageRunningOlderTasks(e) => {
            format!("{} {} {}", e.storage.name(), e.worker.name(), task(e.task))
        }
        E::StorageDeleteFinishedTasks(e) => e.storage.name().to_owned(),
        E::StorageFlushAll(e) => e.storage.name().to_owned(),
        E::GlobalConfigSet(e) => format!(
            "{} {}.{}={}",
            e.global_config.name(),
            e.name,
            e.key,
            e.value
        ),
        E::GlobalConfigGet(e) => format!(
            "{} {}.{}={:?}",
            e.global_config.name(),
            e.name,
            e.key,
            e.value
        ),
        E::GlobalConfigGetAll(e) => format!("{} {} {:?}", e.global_config.name(), e.name, e.values),
        E::GlobalConfigGetMatch(e) => {
            format!("{} {} {:?}", e.global_config.name(), e.pattern, e.values)
        }
        E::GlobalConfigStart(e) => e.global_config.name().to_owned(),
        E::GlobalConfigStop(e) => e.global_config.name().to_owned(),
        E::GlobalConfigSetStatus(e) => e.global_config.name().to_owned(),
        E::WorkerStart(e) => e.worker.name().to_owned(),
        E::WorkerStop(e) => e.worker.name().to_owned(),
        E::WorkerAdd(e) => format!("{} {}", e.worker.name(), task(e.task)),
        E::WorkerExecuteBefore(e) => format!(
            "{} {} {} {:?}",
            e.worker.name(),
            task(e.task),
            e.definition.name(),
            e.update
        ),
        E::WorkerRunTaskBefore(e) => {
            format!(
                "{} {} {}",
                e.worker.name(),
                task(e.task),
                e.definition.name()
            )
        }
        E::WorkerTaskErrorRetry(e) => {
            format!(
                "{} {} {} {} left={}",
                e.broker.name(),
                task(e.task),
                e.definition.name(),
                e.traceback,
                e.retries_left
            )
        }
        E::WorkerRemoveFinishedTask(e) => format!(
            "{} {} {} {:?} {}",
            e.worker.name(),
            e.broker.name(),
            task(e.task),
            e.definition.map(|d| d.name()),
            outcome(e.outcome)
        ),
        E::WorkerExecuteAfter(e) => format!(
            "{} {:?} {}",
            task(e.task),
            e.definition.map(|d| d.name()),
            outcome(e.outcome)
        ),
        E::TaskExecutorMiddlewaresExecute(e) => format!(
            "{} {:?} {:?}",
            e.executor.task().name(),
            e.position,
            e.middlewares
        ),
        E::TaskExecutorArgsReplace(e) => format!(
            "{} {} {} {:?}",
            e.executor.task().name(),
            Value::Array(e.args.to_vec()),
            Value::Object(e.kwargs.clone()),
            e.params.iter().map(|p| p.name).collect::<Vec<_>>()
        ),
        E::TaskExecutorBeforeExecute(e) => e.executor.task().name().to_owned(),
        E::TaskExecutorRunTask(e) => format!("{} {}", e.executor.task().name(), e.result),
        E::TaskExecutorRunTaskGen(e) => format!(
            "{} {}",
            e.executor.task().name(),
            Value::Array(e.results.to_vec())
        ),
        E::TaskExecutorRunTaskTriggerError(e) => format!(
            "{} {} {} {}",
            e.executor.task().name(),
            e.task.name(),
            task(e.queued),
            e.error
        ),
        E::TaskExecutorAfterExecute(e) => e.executor.task().name().to_owned(),
        E::TaskExecutorAfterExecuteResultReplace(e) => {
            format!("{} {}", e.executor.task().name(), e.result)
        }
        E::TaskExecutorDecode(e) => format!("{} {}", e.executor.task().name(), e.result),
        E::TaskExecutorTaskClose(e) => format!(
            "{} {} {}",
            e.executor.task().name(),
            e.task.name(),
            task(e.queued)
        ),
        E::StarterStart(e) => e.starter.name().to_owned(),
        E::StarterStop(e) => e.starter.name().to_owned(),
        E::StatsInspect(e) => e.app.name(),
        other => format!("{other:?}"),
    }
}

// -- Scenarios ------------------------------------------------------------------------------------

fn recorded_app(config: QueueConfig) -> (QueueTasks, Arc<Recorder>) {
    let app = QueueTasks::with_config(config);
    let recorder = Arc::new(Recorder::default());
    app.add_plugin(Recording(Arc::clone(&recorder)), Trigger::ALL)
        .unwrap();
    (app, recorder)
}

fn named(name: &str) -> QueueConfig {
    QueueConfig {
        name: name.to_owned(),
        delete_finished_tasks: true,
        ..Default::default()
    }
}

/// The life of one app: start (with the clean-up of finished tasks), one task added and
/// waited for, the global config written and read, ping, inspect, the records listed,
/// flushed, stopped.
async fn full_life() -> Arc<Recorder> {
    let (app, recorder) = recorded_app(named("life"));
    app.start().await.unwrap();
    let done = pair::add_task(&app, json!(1), json!(2))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.returning, Some(json!([1, 2])));
    app.global_config()
        .set("limits", "rate", "10")
        .await
        .unwrap();
    app.global_config().get("limits", "rate").await.unwrap();
    app.global_config().get_all("limits").await.unwrap();
    app.global_config().get_match("lim*").await.unwrap();
    app.ping().await.unwrap();
    app.inspect().await;
    app.get_all().await.unwrap();
    app.flush_all().await.unwrap();
    app.stop().await.unwrap();
    recorder
}

async fn run_task(app: &QueueTasks, name: &str, args: Value) -> qtasks::TaskRecord {
    app.start().await.unwrap();
    let done = app
        .add_task(name, args, ())
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    app.stop().await.unwrap();
    done
}

/// A task with one retry that always fails: the retry trigger fires for the first attempt.
async fn retried() -> Arc<Recorder> {
    let (app, recorder) = recorded_app(named("retried"));
    let done = run_task(&app, "always_fails", json!([])).await;
    assert_eq!(
        done.status,
        TaskStatus::Error,
        "the last attempt failed too"
    );
    assert_eq!(done.retry, Some(0));
    recorder
}

async fn streamed() -> Arc<Recorder> {
    let (app, recorder) = recorded_app(named("streamed"));
    let done = run_task(&app, "numbers", json!([3])).await;
    assert_eq!(done.returning, Some(json!([0, 1, 2])));
    recorder
}

async fn plugin_error() -> Arc<Recorder> {
    let (app, recorder) = recorded_app(named("plugin_error"));
    let done = run_task(&app, "asks_plugins", json!([])).await;
    assert_eq!(done.status, TaskStatus::Error);
    recorder
}

/// A task whose worker died: its lease ran out, and a live worker takes it back (Redis).
async fn recovered(
    url: &str,
    reply: Option<(Trigger, Value)>,
) -> (Arc<Recorder>, qtasks::TaskRecord) {
    let prefix = qtasks_test_support::unique_prefix("recovered");
    let config = QueueConfig {
        name: prefix.clone(),
        ..Default::default()
    };
    let app = qtasks::redis::connect_with(url, config, qtasks::redis::RedisOptions::default())
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    app.add_plugin(Recording(Arc::clone(&recorder)), Trigger::ALL)
        .unwrap();
    if let Some((trigger, value)) = reply {
        app.add_plugin(Replacer(trigger, value), &[trigger])
            .unwrap();
    }
    // What a worker that died mid-task leaves: a `process` record and an expired lease.
    let uuid =
        qtasks_test_support::redis::plant_taken_task(url, &prefix, "pair", "[5, 6]", 0).await;
    app.start().await.unwrap();
    let done = app.wait(uuid, WAIT).await.unwrap();
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
    (recorder, done)
}

// -- One test per trigger -------------------------------------------------------------------------

/// `trigger!(test_name, Trigger, scenario, [expected lines])`: the trigger fired exactly at
/// these points, with this data.
macro_rules! trigger {
    ($name:ident, $trigger:ident, $scenario:expr, [$($expected:expr),* $(,)?]) => {
        #[tokio::test]
        async fn $name() {
            let recorder = $scenario.await;
            let expected: Vec<String> = vec![$($expected.to_string()),*];
            assert_eq!(recorder.of(Trigger::$trigger), expected, "{}", Trigger::$trigger);
        }
    };
}

const PAIR: &str = "pair [1,2] {} p0";

trigger!(
    qtasks_add_task_before_broker,
    QtasksAddTaskBeforeBroker,
    full_life(),
    [format!("life MemoryBroker {PAIR}")]
);
trigger!(
    qtasks_add_task_after_broker,
    QtasksAddTaskAfterBroker,
    full_life(),
    [format!("life MemoryBroker {PAIR}")]
);
trigger!(
    qtasks_get,
    QtasksGet,
    full_life(),
    ["life MemoryBroker pair success [1,2]"]
);
trigger!(
    qtasks_stop,
    QtasksStop,
    full_life(),
    ["life DefaultStarter"]
);
trigger!(
    qtasks_ping,
    QtasksPing,
    full_life(),
    ["life MemoryGlobalConfig"]
);
trigger!(
    qtasks_flush_all,
    QtasksFlushAll,
    full_life(),
    ["life MemoryBroker"]
);
trigger!(
    broker_listen_start,
    BrokerListenStart,
    full_life(),
    ["MemoryBroker ConcurrentWorker"]
);
trigger!(
    broker_add_worker,
    BrokerAddWorker,
    full_life(),
    [format!("MemoryBroker ConcurrentWorker {PAIR}")]
);
trigger!(
    broker_add_before,
    BrokerAddBefore,
    full_life(),
    [format!("MemoryBroker MemoryStorage {PAIR}")]
);
trigger!(
    broker_add_after,
    BrokerAddAfter,
    full_life(),
    [format!("MemoryBroker MemoryStorage {PAIR}")]
);
trigger!(
    broker_get,
    BrokerGet,
    full_life(),
    ["MemoryBroker pair success [1,2]"]
);
trigger!(
    broker_update,
    BrokerUpdate,
    full_life(),
    [format!("MemoryBroker {:?}", process_update())]
);
trigger!(
    broker_start,
    BrokerStart,
    full_life(),
    ["MemoryBroker ConcurrentWorker"]
);
trigger!(broker_stop, BrokerStop, full_life(), ["MemoryBroker"]);
trigger!(
    broker_remove_finished_task,
    BrokerRemoveFinishedTask,
    full_life(),
    [format!(
        "MemoryBroker MemoryStorage {PAIR} {{\"success\":[1,2]}}"
    )]
);
trigger!(
    broker_flush_all,
    BrokerFlushAll,
    full_life(),
    ["MemoryBroker"]
);
trigger!(
    storage_add,
    StorageAdd,
    full_life(),
    [format!("MemoryStorage true {PAIR}")]
);
trigger!(
    storage_get,
    StorageGet,
    full_life(),
    ["MemoryStorage pair success [1,2]"]
);
trigger!(
    storage_get_all,
    StorageGetAll,
    full_life(),
    ["MemoryStorage [\"pair success [1,2]\"]"]
);
trigger!(
    storage_update,
    StorageUpdate,
    full_life(),
    [format!("MemoryStorage {:?}", process_update())]
);
trigger!(
    storage_remove_finished_task,
    StorageRemoveFinishedTask,
    full_life(),
    [format!("MemoryStorage {PAIR} {{\"success\":[1,2]}}")]
);
trigger!(storage_start, StorageStart, full_life(), ["MemoryStorage"]);
trigger!(storage_stop, StorageStop, full_life(), ["MemoryStorage"]);
trigger!(
    storage_add_process,
    StorageAddProcess,
    full_life(),
    [format!("MemoryStorage {PAIR}")]
);
trigger!(
    storage_delete_finished_tasks,
    StorageDeleteFinishedTasks,
    full_life(),
    ["MemoryStorage"]
);
trigger!(
    storage_flush_all,
    StorageFlushAll,
    full_life(),
    ["MemoryStorage"]
);
trigger!(
    global_config_set,
    GlobalConfigSet,
    full_life(),
    ["MemoryGlobalConfig limits.rate=10"]
);
trigger!(
    global_config_get,
    GlobalConfigGet,
    full_life(),
    ["MemoryGlobalConfig limits.rate=Some(\"10\")"]
);
trigger!(
    global_config_get_all,
    GlobalConfigGetAll,
    full_life(),
    ["MemoryGlobalConfig limits {\"rate\": \"10\"}"]
);
trigger!(
    global_config_get_match,
    GlobalConfigGetMatch,
    full_life(),
    ["MemoryGlobalConfig lim* {\"limits:rate\": \"10\"}"]
);
trigger!(
    global_config_start,
    GlobalConfigStart,
    full_life(),
    ["MemoryGlobalConfig"]
);
trigger!(
    global_config_stop,
    GlobalConfigStop,
    full_life(),
    ["MemoryGlobalConfig"]
);
trigger!(
    global_config_set_status,
    GlobalConfigSetStatus,
    full_life(),
    ["MemoryGlobalConfig"]
);
trigger!(worker_start, WorkerStart, full_life(), ["ConcurrentWorker"]);
trigger!(worker_stop, WorkerStop, full_life(), ["ConcurrentWorker"]);
trigger!(
    worker_add,
    WorkerAdd,
    full_life(),
    [format!("ConcurrentWorker {PAIR}")]
);
trigger!(
    worker_execute_before,
    WorkerExecuteBefore,
    full_life(),
    [format!(
        "ConcurrentWorker {PAIR} pair {:?}",
        process_update()
    )]
);
trigger!(
    worker_run_task_before,
    WorkerRunTaskBefore,
    full_life(),
    [format!("ConcurrentWorker {PAIR} pair")]
);
trigger!(
    worker_task_error_retry,
    WorkerTaskErrorRetry,
    retried(),
    ["MemoryBroker always_fails [] {} p0 always_fails TaskError: broken left=1"]
);
trigger!(
    worker_remove_finished_task,
    WorkerRemoveFinishedTask,
    full_life(),
    [format!(
        "ConcurrentWorker MemoryBroker {PAIR} Some(\"pair\") {{\"success\":[1,2]}}"
    )]
);
trigger!(
    worker_execute_after,
    WorkerExecuteAfter,
    full_life(),
    [format!("{PAIR} Some(\"pair\") {{\"success\":[1,2]}}")]
);
trigger!(
    task_executor_middlewares_execute,
    TaskExecutorMiddlewaresExecute,
    full_life(),
    ["pair Before []", "pair After []"]
);
trigger!(
    task_executor_args_replace,
    TaskExecutorArgsReplace,
    full_life(),
    ["pair [1,2] {} [\"a\", \"b\"]"]
);
trigger!(
    task_executor_before_execute,
    TaskExecutorBeforeExecute,
    full_life(),
    ["pair"]
);
trigger!(
    task_executor_run_task,
    TaskExecutorRunTask,
    full_life(),
    ["pair [1,2]"]
);
trigger!(
    task_executor_run_task_gen,
    TaskExecutorRunTaskGen,
    streamed(),
    ["numbers [0,1,2]"]
);
trigger!(
    task_executor_run_task_trigger_error,
    TaskExecutorRunTaskTriggerError,
    plugin_error(),
    ["asks_plugins asks_plugins asks_plugins [] {} p0 boom"]
);
trigger!(
    task_executor_after_execute,
    TaskExecutorAfterExecute,
    full_life(),
    ["pair"]
);
trigger!(
    task_executor_after_execute_result_replace,
    TaskExecutorAfterExecuteResultReplace,
    full_life(),
    ["pair [1,2]"]
);
trigger!(
    task_executor_decode,
    TaskExecutorDecode,
    full_life(),
    ["pair [1,2]"]
);
trigger!(
    task_executor_task_close,
    TaskExecutorTaskClose,
    full_life(),
    [format!("pair pair {PAIR}")]
);
trigger!(starter_start, StarterStart, full_life(), ["DefaultStarter"]);
trigger!(starter_stop, StarterStop, full_life(), ["DefaultStarter"]);
trigger!(stats_inspect, StatsInspect, full_life(), ["life"]);

fn process_update() -> qtasks::records::RecordUpdate {
    qtasks::records::RecordUpdate {
        status: Some(TaskStatus::Process),
        ..Default::default()
    }
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn broker_and_storage_running_older_tasks_fire_for_a_recovered_task() {
    let Some(url) = qtasks_test_support::redis_url(
        "broker_and_storage_running_older_tasks_fire_for_a_recovered_task",
    ) else {
        return;
    };
    let (recorder, done) = recovered(&url, None).await;
    assert_eq!(
        (done.status, done.returning),
        (TaskStatus::Success, Some(json!([5, 6])))
    );
    assert_eq!(
        recorder.of(Trigger::BrokerRunningOlderTasks),
        ["RedisBroker ConcurrentWorker [\"pair [5,6] {} p0\"]"]
    );
    assert_eq!(
        recorder.of(Trigger::StorageRunningOlderTasks),
        ["RedisStorage ConcurrentWorker pair [5,6] {} p0"]
    );
    // A task that was not recovered does not fire them.
    assert_eq!(
        full_life().await.of(Trigger::BrokerRunningOlderTasks),
        Vec::<String>::new()
    );
}

#[test]
fn every_trigger_has_a_test_here() {
    // Compared without whitespace, so formatting does not matter.
    let source: String = include_str!("triggers.rs").split_whitespace().collect();
    for trigger in Trigger::ALL {
        let by_macro = format!("trigger!({},", trigger.name());
        let by_name = format!("Trigger::{}", trigger.variant_str());
        assert!(
            source.contains(&by_macro) || source.matches(&by_name).count() > 1,
            "{} has no test in tests/triggers.rs",
            trigger.name()
        );
    }
    assert_eq!(Component::ALL.len(), 8);
}

// -- Replacing triggers take effect ---------------------------------------------------------------

/// Answers one trigger with a JSON reply, as a Python plugin's dictionary would.
struct Replacer(Trigger, Value);

impl Plugin for Replacer {
    async fn trigger(&self, event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
        Ok((event.trigger() == self.0).then(|| Reply::value(self.1.clone())))
    }
}

fn replaced_app(name: &str, trigger: Trigger, reply: Value) -> QueueTasks {
    let app = QueueTasks::with_config(QueueConfig {
        name: name.to_owned(),
        ..Default::default()
    });
    app.add_plugin(Replacer(trigger, reply), &[trigger])
        .unwrap();
    app
}

/// Runs `pair(1, 2)` (kwargs as given) with one replacer; returns the final record.
async fn pair_with(trigger: Trigger, reply: Value) -> qtasks::TaskRecord {
    let app = replaced_app("replaced", trigger, reply);
    run_task(&app, "pair", json!([1, 2])).await
}

#[tokio::test]
async fn qtasks_add_task_before_broker_changes_only_what_it_returns() {
    let done = pair_with(Trigger::QtasksAddTaskBeforeBroker, json!({"priority": 7})).await;
    assert_eq!(done.priority, 7);
    assert_eq!(
        done.returning,
        Some(json!([1, 2])),
        "the arguments are not wiped (the original's bug)"
    );
}

#[tokio::test]
async fn broker_add_before_replaces_the_arguments() {
    assert_eq!(
        pair_with(Trigger::BrokerAddBefore, json!({"args": [10, 20]}))
            .await
            .returning,
        Some(json!([10, 20]))
    );
}

#[tokio::test]
async fn storage_add_replaces_the_keyword_arguments() {
    let app = replaced_app(
        "storage_add",
        Trigger::StorageAdd,
        json!({"kwargs": {"b": 5}}),
    );
    app.start().await.unwrap();
    let done = app
        .add_task("pair", [1], json!({"b": 2}))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    app.stop().await.unwrap();
    assert_eq!(done.returning, Some(json!([1, 5])));
    assert_eq!(
        done.kwargs,
        json!({"b": 5}).as_object().unwrap().clone(),
        "stored as replaced"
    );
}

#[tokio::test]
async fn broker_add_worker_replaces_the_arguments() {
    assert_eq!(
        pair_with(Trigger::BrokerAddWorker, json!({"args": [7, 8]}))
            .await
            .returning,
        Some(json!([7, 8]))
    );
}

#[tokio::test]
async fn storage_add_process_replaces_the_arguments() {
    assert_eq!(
        pair_with(Trigger::StorageAddProcess, json!({"args": [3, 4]}))
            .await
            .returning,
        Some(json!([3, 4]))
    );
}

#[tokio::test]
async fn worker_add_replaces_the_arguments() {
    assert_eq!(
        pair_with(Trigger::WorkerAdd, json!({"args": [5, 6]}))
            .await
            .returning,
        Some(json!([5, 6]))
    );
}

#[tokio::test]
async fn worker_run_task_before_replaces_the_arguments() {
    assert_eq!(
        pair_with(Trigger::WorkerRunTaskBefore, json!({"args": [9, 9]}))
            .await
            .returning,
        Some(json!([9, 9]))
    );
}

#[tokio::test]
async fn worker_execute_before_updates_the_stored_record() {
    assert_eq!(
        pair_with(Trigger::WorkerExecuteBefore, json!({"priority": 44}))
            .await
            .priority,
        44
    );
}

#[tokio::test]
async fn broker_update_updates_the_stored_record() {
    assert_eq!(
        pair_with(Trigger::BrokerUpdate, json!({"priority": 45}))
            .await
            .priority,
        45
    );
}

#[tokio::test]
async fn storage_update_updates_the_stored_record() {
    assert_eq!(
        pair_with(Trigger::StorageUpdate, json!({"priority": 46}))
            .await
            .priority,
        46
    );
}

#[tokio::test]
async fn worker_remove_finished_task_replaces_the_outcome() {
    let done = pair_with(
        Trigger::WorkerRemoveFinishedTask,
        json!({"success": "replaced by worker"}),
    )
    .await;
    assert_eq!(
        (done.status, done.returning),
        (TaskStatus::Success, Some(json!("replaced by worker")))
    );
}

#[tokio::test]
async fn broker_remove_finished_task_replaces_the_outcome() {
    let done = pair_with(
        Trigger::BrokerRemoveFinishedTask,
        json!({"cancel": "replaced by broker"}),
    )
    .await;
    assert_eq!(
        (done.status, done.cancel_reason.as_deref()),
        (TaskStatus::Cancel, Some("replaced by broker"))
    );
}

#[tokio::test]
async fn worker_task_error_retry_can_end_the_task_instead_of_retrying() {
    let app = replaced_app(
        "no_retry",
        Trigger::WorkerTaskErrorRetry,
        json!({"error": "no more retries"}),
    );
    let done = run_task(&app, "always_fails", json!([])).await;
    assert_eq!(
        (done.status, done.traceback.as_deref()),
        (TaskStatus::Error, Some("no more retries"))
    );
    assert_eq!(done.retry_child_uuid, None, "no child task was made");
}

#[tokio::test]
async fn the_read_triggers_change_what_get_returns() {
    for (trigger, reply, check) in [
        (Trigger::StorageGet, json!({"priority": 99}), "priority"),
        (
            Trigger::BrokerGet,
            json!({"traceback": "from broker_get"}),
            "traceback",
        ),
        (
            Trigger::QtasksGet,
            json!({"returning": "from qtasks_get"}),
            "returning",
        ),
    ] {
        let app = replaced_app("read", trigger, reply);
        let handle = pair::add_task(&app, json!(1), json!(2)).await.unwrap();
        let got = app.get(handle.uuid()).await.unwrap().unwrap();
        match check {
            "priority" => assert_eq!(got.priority, 99),
            "traceback" => assert_eq!(got.traceback.as_deref(), Some("from broker_get")),
            _ => assert_eq!(got.returning, Some(json!("from qtasks_get"))),
        }
    }
}

#[tokio::test]
async fn storage_get_all_replaces_the_list() {
    let app = replaced_app("get_all", Trigger::StorageGetAll, json!([]));
    pair::add_task(&app, json!(1), json!(2)).await.unwrap();
    assert_eq!(app.get_all().await.unwrap(), Vec::new());
}

#[tokio::test]
async fn the_global_config_triggers_change_what_is_written_and_read() {
    let app = replaced_app(
        "gc_set",
        Trigger::GlobalConfigSet,
        json!({"value": "changed"}),
    );
    app.global_config()
        .set("limits", "rate", "10")
        .await
        .unwrap();
    assert_eq!(
        app.global_config()
            .get("limits", "rate")
            .await
            .unwrap()
            .as_deref(),
        Some("changed"),
        "stored as replaced"
    );

    let app = replaced_app("gc_get", Trigger::GlobalConfigGet, json!("replaced"));
    assert_eq!(
        app.global_config()
            .get("limits", "rate")
            .await
            .unwrap()
            .as_deref(),
        Some("replaced")
    );

    let app = replaced_app("gc_get_all", Trigger::GlobalConfigGetAll, json!({"k": "v"}));
    assert_eq!(
        app.global_config().get_all("limits").await.unwrap(),
        [("k".to_owned(), "v".to_owned())].into()
    );

    let app = replaced_app(
        "gc_get_match",
        Trigger::GlobalConfigGetMatch,
        json!({"x:y": "z"}),
    );
    assert_eq!(
        app.global_config().get_match("*").await.unwrap(),
        [("x:y".to_owned(), "z".to_owned())].into()
    );
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn storage_running_older_tasks_replaces_the_recovered_task() {
    let Some(url) =
        qtasks_test_support::redis_url("storage_running_older_tasks_replaces_the_recovered_task")
    else {
        return;
    };
    let (_, done) = recovered(
        &url,
        Some((Trigger::StorageRunningOlderTasks, json!({"args": [7, 7]}))),
    )
    .await;
    assert_eq!(done.returning, Some(json!([7, 7])));
}

#[tokio::test]
async fn the_executor_triggers_replace_args_and_results() {
    assert_eq!(
        pair_with(Trigger::TaskExecutorArgsReplace, json!({"args": [0, 0]}))
            .await
            .returning,
        Some(json!([0, 0]))
    );
    assert_eq!(
        pair_with(Trigger::TaskExecutorRunTask, json!(42))
            .await
            .returning,
        Some(json!(42))
    );
    assert_eq!(
        pair_with(
            Trigger::TaskExecutorAfterExecuteResultReplace,
            json!("after")
        )
        .await
        .returning,
        Some(json!("after"))
    );
    assert_eq!(
        pair_with(Trigger::TaskExecutorDecode, json!("decoded"))
            .await
            .returning,
        Some(json!("decoded"))
    );

    let app = replaced_app("gen", Trigger::TaskExecutorRunTaskGen, json!([9]));
    assert_eq!(
        run_task(&app, "numbers", json!([3])).await.returning,
        Some(json!([9]))
    );

    let app = replaced_app(
        "recover",
        Trigger::TaskExecutorRunTaskTriggerError,
        json!("recovered"),
    );
    let done = run_task(&app, "asks_plugins", json!([])).await;
    assert_eq!(
        (done.status, done.returning),
        (TaskStatus::Success, Some(json!("recovered")))
    );
}

/// Sees the priority the handler before it set, then sets the arguments.
struct SecondInChain(Arc<Mutex<Option<i64>>>);

impl Plugin for SecondInChain {
    async fn trigger(&self, event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
        if let TriggerEvent::QtasksAddTaskBeforeBroker(e) = event {
            *self.0.lock().unwrap() = Some(e.task.priority);
        }
        Ok(Some(Reply::typed(qtasks::triggers::TaskUpdate {
            args: Some(vec![json!(3), json!(4)]),
            ..Default::default()
        })))
    }
}

#[tokio::test]
async fn updates_chain_from_one_handler_to_the_next() {
    let app = replaced_app(
        "chain",
        Trigger::QtasksAddTaskBeforeBroker,
        json!({"priority": 5}),
    );
    let seen = Arc::new(Mutex::new(None));
    app.add_plugin(
        SecondInChain(Arc::clone(&seen)),
        &[Trigger::QtasksAddTaskBeforeBroker],
    )
    .unwrap();
    let done = run_task(&app, "pair", json!([1, 2])).await;
    assert_eq!(
        *seen.lock().unwrap(),
        Some(5),
        "the second handler saw the first one's update"
    );
    assert_eq!(
        (done.priority, done.returning),
        (5, Some(json!([3, 4]))),
        "both updates took effect"
    );
}
