//! The executor's steps: every `task_executor_*` trigger fires at its place, in the original's
//! order, with its data, and the replacing ones take effect.

use std::sync::Mutex;
use std::time::Duration;

use qtasks::plugin::BoxError;
use qtasks::triggers::{
    ArgsUpdate, MiddlewarePosition, TaskExecutorAfterExecuteResultReplace, TaskExecutorArgsReplace,
    TaskExecutorDecode, TaskExecutorRunTask,
};
use qtasks::triggers::{Reply, TriggerEvent};
use qtasks::{Plugin, QueueTasks, TaskContext, TaskResult, TaskStatus, Trigger};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

/// Records, for the tasks it watches, which executor trigger fired with which data.
struct Recorder {
    task: &'static str,
    seen: Mutex<Vec<String>>,
}

impl Plugin for &'static Recorder {
    async fn trigger(&self, event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
        let line = match event {
            TriggerEvent::TaskExecutorMiddlewaresExecute(e)
                if e.executor.task().name() == self.task =>
            {
                let at = if e.position == MiddlewarePosition::Before {
                    "before"
                } else {
                    "after"
                };
                format!("middlewares_execute {at}")
            }
            TriggerEvent::TaskExecutorArgsReplace(e) if e.executor.task().name() == self.task => {
                format!(
                    "args_replace {:?} {:?}",
                    e.args,
                    e.params.iter().map(|p| p.name).collect::<Vec<_>>()
                )
            }
            TriggerEvent::TaskExecutorBeforeExecute(e) if e.executor.task().name() == self.task => {
                "before_execute".into()
            }
            TriggerEvent::TaskExecutorRunTask(e) if e.executor.task().name() == self.task => {
                format!("run_task {}", e.result)
            }
            TriggerEvent::TaskExecutorRunTaskTriggerError(e) if e.task.name() == self.task => {
                format!("run_task_trigger_error {}", e.error)
            }
            TriggerEvent::TaskExecutorAfterExecute(e) if e.executor.task().name() == self.task => {
                "after_execute".into()
            }
            TriggerEvent::TaskExecutorAfterExecuteResultReplace(e)
                if e.executor.task().name() == self.task =>
            {
                format!("after_execute_result_replace {}", e.result)
            }
            TriggerEvent::TaskExecutorDecode(e) if e.executor.task().name() == self.task => {
                format!("decode {}", e.result)
            }
            TriggerEvent::TaskExecutorTaskClose(e) if e.task.name() == self.task => {
                "task_close".into()
            }
            _ => return Ok(None),
        };
        self.seen.lock().unwrap().push(line);
        Ok(None)
    }
}

fn executor_triggers() -> Vec<Trigger> {
    qtasks::Component::TaskExecutor.triggers().collect()
}

#[qtasks::task]
async fn double(x: i64) -> i64 {
    x * 2
}

#[tokio::test]
async fn a_successful_run_fires_every_step_in_order() {
    static RECORDER: Recorder = Recorder {
        task: "double",
        seen: Mutex::new(Vec::new()),
    };
    let app = QueueTasks::new();
    app.add_plugin(&RECORDER, &executor_triggers()).unwrap();
    app.start().await.unwrap();
    let done = double::add_task(&app, 21)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.returning, Some(json!(42)));
    assert_eq!(
        *RECORDER.seen.lock().unwrap(),
        [
            "middlewares_execute before",
            "args_replace [Number(21)] [\"x\"]",
            "before_execute",
            "run_task 42",
            "after_execute",
            "after_execute_result_replace 42",
            "middlewares_execute after",
            "decode 42",
            "task_close",
        ]
    );
    app.stop().await.unwrap();
}

#[qtasks::task(echo = true)]
async fn fails_then_recovered(ctx: TaskContext) -> TaskResult<i64> {
    Err(ctx.plugin_error().with("message", "oops").into())
}

#[qtasks::task]
async fn fails_plainly() -> TaskResult<i64> {
    Err(qtasks::TaskError::msg("plain failure"))
}

#[tokio::test]
async fn a_recovered_run_continues_after_the_error_trigger_and_a_failed_run_still_closes() {
    static RECOVERED: Recorder = Recorder {
        task: "fails_then_recovered",
        seen: Mutex::new(Vec::new()),
    };
    static FAILED: Recorder = Recorder {
        task: "fails_plainly",
        seen: Mutex::new(Vec::new()),
    };

    struct Recover;
    impl Plugin for Recover {
        async fn trigger(&self, event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
            Ok(
                matches!(event, TriggerEvent::TaskExecutorRunTaskTriggerError(_))
                    .then(|| Reply::value(7)),
            )
        }
    }

    let app = QueueTasks::new();
    app.add_plugin(&RECOVERED, &executor_triggers()).unwrap();
    app.add_plugin(&FAILED, &executor_triggers()).unwrap();
    app.add_plugin(Recover, &[Trigger::TaskExecutorRunTaskTriggerError])
        .unwrap();
    app.start().await.unwrap();
    let done = fails_then_recovered::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        (done.status, done.returning),
        (TaskStatus::Success, Some(json!(7)))
    );
    assert_eq!(
        *RECOVERED.seen.lock().unwrap(),
        [
            "middlewares_execute before",
            "args_replace [] []",
            "before_execute",
            "run_task_trigger_error oops",
            "after_execute",
            "after_execute_result_replace 7",
            "middlewares_execute after",
            "decode 7",
            "task_close",
        ]
    );

    let failed = fails_plainly::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(failed.status, TaskStatus::Error);
    assert_eq!(
        failed.traceback.as_deref(),
        Some("TaskError: plain failure")
    );
    // Not a plugin error: the error trigger does not fire; the close step still does.
    assert_eq!(
        *FAILED.seen.lock().unwrap(),
        [
            "middlewares_execute before",
            "args_replace [] []",
            "before_execute",
            "task_close"
        ]
    );
    app.stop().await.unwrap();
}

// -- replacing triggers, through #[qtasks::plugin] handlers --------------------------------------

#[qtasks::task]
async fn greet(name: String, punctuation: String) -> String {
    format!("hello {name}{punctuation}")
}

#[qtasks::plugin(on = "task_executor_args_replace")]
fn shout_the_name(event: &TaskExecutorArgsReplace<'_>) -> Option<ArgsUpdate> {
    if event.executor.task().name() != "greet" {
        return None;
    }
    let name = event.args.first()?.as_str()?.to_uppercase();
    // Only the positional args change; the keyword arguments stay as they were.
    Some(ArgsUpdate {
        args: Some(vec![json!(name)]),
        kwargs: None,
    })
}

#[qtasks::plugin(on = "task_executor_run_task")]
fn mark_run(event: &TaskExecutorRunTask<'_>) -> Option<Value> {
    if event.executor.task().name() != "greet" {
        return None;
    }
    Some(json!(format!("{} [run]", event.result.as_str()?)))
}

#[qtasks::plugin(on = "task_executor_after_execute_result_replace")]
fn mark_after(event: &TaskExecutorAfterExecuteResultReplace<'_>) -> Option<Value> {
    if event.executor.task().name() != "greet" {
        return None;
    }
    Some(json!(format!("{} [after]", event.result.as_str()?)))
}

#[qtasks::plugin(on = "task_executor_decode")]
async fn wrap_stored(event: &TaskExecutorDecode<'_>) -> Result<Option<Value>, String> {
    if event.executor.task().name() != "greet" {
        return Ok(None);
    }
    Ok(Some(json!({ "stored": event.result })))
}

#[tokio::test]
async fn replacing_triggers_take_effect_end_to_end() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let done = app
        .add_task("greet", ["ada"], json!({"punctuation": "!"}))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Success);
    assert_eq!(
        done.returning,
        Some(json!({"stored": "hello ADA! [run] [after]"}))
    );
    // The stored arguments are the ones the caller gave.
    assert_eq!(done.args, [json!("ada")]);
    app.stop().await.unwrap();
}

// -- a handler that returns the wrong kind of reply is reported and ignored ----------------------

#[qtasks::task]
async fn constant() -> i64 {
    1
}

struct WrongKind;

impl Plugin for WrongKind {
    async fn trigger(&self, _event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
        Ok(Some(Reply::typed(vec![json!(1)])))
    }
}

struct Failing;

impl Plugin for Failing {
    async fn trigger(&self, _event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
        Err("this plugin always fails".into())
    }
}

#[tokio::test]
async fn failing_or_mistyped_plugins_are_skipped_and_the_task_goes_on() {
    let app = QueueTasks::new();
    app.add_plugin(WrongKind, &[Trigger::TaskExecutorRunTask])
        .unwrap();
    app.add_plugin(Failing, Trigger::ALL).unwrap();
    app.start().await.unwrap();
    let done = constant::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        (done.status, done.returning),
        (TaskStatus::Success, Some(json!(1)))
    );
    app.stop().await.unwrap();
}
