//! The seed flow: error handling through plugins (`task_executor_run_task_trigger_error`).
//!
//! Every `#[qtasks::plugin]` in this binary sees every task of this binary, so each handler
//! answers only for the task it is about and each test uses its own task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use qtasks::plugin::BoxError;
use qtasks::triggers::TaskExecutorRunTaskTriggerError;
use qtasks::triggers::{Reply, TriggerEvent};
use qtasks::{Plugin, QueueTasks, TaskContext, TaskResult, TaskStatus, Trigger};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn fails_with_plugin_error(ctx: &TaskContext) -> qtasks::TaskError {
    ctx.plugin_error()
        .with("message", "Non-standard situation")
        .into()
}

// -- a handler returns a value: the task succeeds with it ---------------------------------------

#[qtasks::task(echo = true)]
async fn recovered(ctx: TaskContext) -> TaskResult<i64> {
    Err(fails_with_plugin_error(&ctx))
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn recover_with_123(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Value> {
    (event.task.name() == "recovered").then(|| json!(123))
}

#[tokio::test]
async fn a_handler_value_becomes_the_result_and_the_task_succeeds() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let handle = recovered::add_task(&app).await.unwrap();
    let done = handle.wait(WAIT).await.unwrap();
    assert_eq!(done.status, TaskStatus::Success);
    assert_eq!(done.returning, Some(json!(123)));
    assert_eq!(done.traceback, None);
    assert_eq!(
        handle.result(WAIT).await.unwrap(),
        123,
        "typed, through result()"
    );
    app.stop().await.unwrap();
}

// -- no handler answers: the error stands -------------------------------------------------------

#[qtasks::task(echo = true)]
async fn unhandled(ctx: TaskContext) -> TaskResult<String> {
    Err(fails_with_plugin_error(&ctx))
}

#[tokio::test]
async fn without_a_handler_the_task_ends_error_with_the_message() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let done = unhandled::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Error);
    assert_eq!(done.returning, None);
    assert_eq!(
        done.traceback.as_deref(),
        Some("TaskPluginTriggerError: Non-standard situation")
    );
    app.stop().await.unwrap();
}

// -- a handler runs but returns nothing: the error stands ---------------------------------------

static OBSERVED: AtomicUsize = AtomicUsize::new(0);

#[qtasks::task(echo = true)]
async fn observed_only(ctx: TaskContext) -> TaskResult<String> {
    Err(fails_with_plugin_error(&ctx))
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn observe_without_value(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Value> {
    if event.task.name() == "observed_only" {
        OBSERVED.fetch_add(1, Ordering::SeqCst);
    }
    None
}

#[tokio::test]
async fn a_handler_that_returns_nothing_leaves_the_error() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let done = observed_only::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Error);
    assert_eq!(
        OBSERVED.load(Ordering::SeqCst),
        1,
        "the handler ran exactly once"
    );
    app.stop().await.unwrap();
}

// -- two handlers: the last value wins ----------------------------------------------------------

#[qtasks::task(echo = true)]
async fn two_handlers(ctx: TaskContext) -> TaskResult<String> {
    Err(fails_with_plugin_error(&ctx))
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn first_of_two(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Value> {
    (event.task.name() == "two_handlers").then(|| json!("first"))
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn second_of_two(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Value> {
    (event.task.name() == "two_handlers").then(|| json!("second"))
}

#[tokio::test]
async fn with_two_handlers_the_last_value_wins() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let done = two_handlers::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Success);
    assert_eq!(
        done.returning,
        Some(json!("second")),
        "handlers run in source order; the later one wins"
    );
    app.stop().await.unwrap();
}

// -- an async handler, and the key/value pairs of the error -------------------------------------

#[qtasks::task(echo = true)]
async fn with_details(ctx: TaskContext, order: u64) -> TaskResult<Value> {
    Err(ctx
        .plugin_error()
        .with("message", "card declined")
        .with("order", order)
        .with("retry", true)
        .into())
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
async fn echo_details(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Value> {
    if event.task.name() != "with_details" {
        return None;
    }
    tokio::task::yield_now().await;
    Some(json!({
        "kwargs": event.error.kwargs(),
        "uuid": event.queued.uuid.to_string(),
        "executor_uuid": event.executor.uuid().to_string(),
        "args": event.queued.args,
    }))
}

#[tokio::test]
async fn an_async_handler_sees_the_error_key_values_and_the_queued_task() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let handle = with_details::add_task(&app, 42).await.unwrap();
    let done = handle.wait(WAIT).await.unwrap();
    assert_eq!(done.status, TaskStatus::Success);
    let uuid = handle.uuid().to_string();
    assert_eq!(
        done.returning,
        Some(json!({
            "kwargs": {"message": "card declined", "order": 42, "retry": true},
            "uuid": uuid,
            "executor_uuid": uuid,
            "args": [42],
        }))
    );
    app.stop().await.unwrap();
}

// -- the error returned directly, without the context -------------------------------------------

#[qtasks::task]
async fn direct_error() -> TaskResult<String> {
    Err(qtasks::PluginTriggerError::with_message("Ошибка напрямую").into())
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn recover_direct(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Value> {
    (event.task.name() == "direct_error").then(|| json!(event.error.message()))
}

#[tokio::test]
async fn a_plugin_error_returned_directly_reaches_the_handlers() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let done = direct_error::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Success);
    assert_eq!(done.returning, Some(json!("Ошибка напрямую")));
    app.stop().await.unwrap();
}

// -- a panicking handler is skipped; the others run and the worker goes on ----------------------

#[qtasks::task(echo = true)]
async fn panicky_plugin_task(ctx: TaskContext) -> TaskResult<String> {
    Err(fails_with_plugin_error(&ctx))
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn panicking_handler(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Value> {
    if event.task.name() == "panicky_plugin_task" {
        panic!("this handler is broken");
    }
    None
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn handler_after_the_panicking_one(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Value> {
    (event.task.name() == "panicky_plugin_task").then(|| json!("still handled"))
}

// Current-thread runtime: the worker runs on this thread, under this thread's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn a_panicking_handler_is_logged_with_its_name_and_does_not_stop_the_others() {
    let logs = qtasks_test_support::CapturedLogs::start();

    let app = QueueTasks::new();
    app.start().await.unwrap();
    for _ in 0..3 {
        let done = panicky_plugin_task::add_task(&app)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap();
        assert_eq!(done.status, TaskStatus::Success);
        assert_eq!(done.returning, Some(json!("still handled")));
    }
    app.stop().await.unwrap();

    let logs = logs.text();
    let reports: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("plugin handler failed"))
        .collect();
    assert_eq!(reports.len(), 3, "{logs}");
    for report in reports {
        assert!(report.contains("ERROR"), "{report}");
        assert!(
            report.contains("plugin=\"seed_flow::panicking_handler\""),
            "{report}"
        );
        assert!(
            report.contains("trigger=\"task_executor_run_task_trigger_error\""),
            "{report}"
        );
        assert!(
            report.contains("panicked: this handler is broken"),
            "{report}"
        );
    }
}

// -- a runtime plugin, as in the original ------------------------------------------------------

#[qtasks::task(echo = true)]
async fn runtime_recovered(ctx: TaskContext) -> TaskResult<Value> {
    Err(fails_with_plugin_error(&ctx))
}

#[derive(Default)]
struct TestPlugin {
    started: AtomicUsize,
    stopped: AtomicUsize,
}

impl Plugin for &'static TestPlugin {
    fn name(&self) -> &str {
        "TestPlugin"
    }

    async fn start(&self) -> Result<(), BoxError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn stop(&self) -> Result<(), BoxError> {
        self.stopped.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn trigger(&self, event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
        match event {
            TriggerEvent::TaskExecutorRunTaskTriggerError(e)
                if e.task.name() == "runtime_recovered" =>
            {
                Ok(Some(Reply::value(
                    json!({ "handled_by": "TestPlugin", "message": e.error.message() }),
                )))
            }
            _ => Ok(None),
        }
    }
}

#[tokio::test]
async fn a_runtime_plugin_recovers_and_is_started_and_stopped_once() {
    static PLUGIN: TestPlugin = TestPlugin {
        started: AtomicUsize::new(0),
        stopped: AtomicUsize::new(0),
    };
    let app = QueueTasks::new();
    app.add_plugin(&PLUGIN, &[Trigger::TaskExecutorRunTaskTriggerError])
        .unwrap();
    app.start().await.unwrap();
    assert!(matches!(
        app.add_plugin(&PLUGIN, &[]),
        Err(qtasks::Error::AlreadyRunning)
    ));
    let done = runtime_recovered::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Success);
    assert_eq!(
        done.returning,
        Some(json!({"handled_by": "TestPlugin", "message": "Non-standard situation"}))
    );
    app.stop().await.unwrap();
    app.stop().await.unwrap();
    assert_eq!(PLUGIN.started.load(Ordering::SeqCst), 1);
    assert_eq!(PLUGIN.stopped.load(Ordering::SeqCst), 1);

    // Another app without the plugin does not see it.
    let other = QueueTasks::new();
    other.start().await.unwrap();
    let done = runtime_recovered::add_task(&other)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Error);
    other.stop().await.unwrap();
}

// -- a handler that names its task: typed, and it hears only that task --------------------------

#[qtasks::task(echo = true)]
async fn typed_recovery(ctx: TaskContext) -> TaskResult<String> {
    Err(fails_with_plugin_error(&ctx))
}

/// Tasks other than `typed_recovery` this handler was called for (none, if `task =` filters).
static TYPED_SAW_OTHERS: AtomicUsize = AtomicUsize::new(0);

#[qtasks::plugin(on = "task_executor_run_task_trigger_error", task = typed_recovery)]
fn recover_typed(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<String> {
    if event.task.name() != "typed_recovery" {
        TYPED_SAW_OTHERS.fetch_add(1, Ordering::SeqCst);
    }
    Some(format!(
        "recovered: {}",
        event.error.message().unwrap_or_default()
    ))
}

#[tokio::test]
async fn a_handler_naming_its_task_returns_the_task_result_type() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let handle = typed_recovery::add_task(&app).await.unwrap();
    let result: String = handle.result(WAIT).await.unwrap();
    assert_eq!(result, "recovered: Non-standard situation");
    app.stop().await.unwrap();
}

#[qtasks::task(echo = true)]
async fn not_for_the_typed_handler(ctx: TaskContext) -> TaskResult<String> {
    Err(fails_with_plugin_error(&ctx))
}

#[tokio::test]
async fn a_handler_naming_its_task_does_not_hear_other_tasks() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let done = not_for_the_typed_handler::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Error, "no handler recovers it");
    assert_eq!(TYPED_SAW_OTHERS.load(Ordering::SeqCst), 0);
    app.stop().await.unwrap();
}

#[qtasks::task(echo = true)]
async fn typed_async_recovery(ctx: TaskContext, order: u64) -> TaskResult<u64> {
    Err(ctx.plugin_error().with("order", order).into())
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error", task = typed_async_recovery)]
async fn recover_typed_async(
    event: &TaskExecutorRunTaskTriggerError<'_>,
) -> Result<Option<u64>, String> {
    tokio::task::yield_now().await;
    let order = event.error.get("order").and_then(Value::as_u64);
    order
        .map(|order| Some(order * 10))
        .ok_or_else(|| "no order".to_owned())
}

#[tokio::test]
async fn an_async_handler_naming_its_task_recovers_it() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let handle = typed_async_recovery::add_task(&app, 7).await.unwrap();
    assert_eq!(handle.result(WAIT).await.unwrap(), 70);
    app.stop().await.unwrap();
}

// -- an untyped value that is not the task's result type: reported, not stored ---------------

#[qtasks::task(echo = true)]
async fn mismatched(ctx: TaskContext) -> TaskResult<String> {
    Err(fails_with_plugin_error(&ctx))
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn recover_mismatched_with_a_number(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Value> {
    (event.task.name() == "mismatched").then(|| json!(123))
}

#[tokio::test]
async fn a_value_that_is_not_the_result_type_fails_the_task_naming_plugin_task_and_types() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let handle = mismatched::add_task(&app).await.unwrap();
    let done = handle.wait(WAIT).await.unwrap();
    assert_eq!(done.status, TaskStatus::Error, "{done:?}");
    assert_eq!(done.returning, None);
    assert_eq!(
        done.traceback.as_deref(),
        Some(
            "PluginResultMismatch: plugin `seed_flow::recover_mismatched_with_a_number` \
             returned a number for task `mismatched`, whose result is a `String`: invalid type: \
             integer `123`, expected a string; the task's own error: TaskPluginTriggerError: \
             Non-standard situation"
        )
    );
    assert!(matches!(
        handle.result(WAIT).await,
        Err(qtasks::TaskFailure::Error { .. })
    ));
    app.stop().await.unwrap();
}

#[qtasks::task(echo = true)]
async fn mismatch_then_fit(ctx: TaskContext) -> TaskResult<Vec<u8>> {
    Err(fails_with_plugin_error(&ctx))
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn mismatch_first(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Value> {
    (event.task.name() == "mismatch_then_fit").then(|| json!({"not": "bytes"}))
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn then_fit(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<Value> {
    (event.task.name() == "mismatch_then_fit").then(|| json!([1, 2, 3]))
}

#[tokio::test]
async fn a_fitting_value_recovers_the_task_even_after_one_that_does_not_fit() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let handle = mismatch_then_fit::add_task(&app).await.unwrap();
    assert_eq!(handle.result(WAIT).await.unwrap(), vec![1, 2, 3]);
    app.stop().await.unwrap();
}
