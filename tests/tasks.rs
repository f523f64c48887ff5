//! Tasks on the in-memory app: the echo context, statuses, arguments, bad input, plain fns,
//! concurrency and the app's lifecycle.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qtasks::{Error, QueueConfig, QueueTasks, TaskContext, TaskResult, TaskStatus};
use qtasks_test_support::counting::CountFirings;
use serde::{Deserialize, Serialize};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

async fn started_app() -> QueueTasks {
    let app = QueueTasks::new();
    app.start().await.expect("the app starts");
    app
}

#[qtasks::task]
async fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[tokio::test]
async fn a_task_fn_stays_callable_directly() {
    assert_eq!(add(2, 3).await, 5);
}

#[tokio::test]
async fn the_typed_handle_runs_the_task_and_stores_the_result() {
    let app = started_app().await;
    let handle = add::add_task(&app, 2, 3).await.unwrap();
    let done = handle.wait(WAIT).await.unwrap();
    assert_eq!(done.status, TaskStatus::Success);
    assert_eq!(done.returning, Some(json!(5)));
    assert_eq!(done.task_name, "add");
    assert_eq!(done.args, vec![json!(2), json!(3)]);
    assert!(done.updated_at >= done.created_at);
    assert_eq!(app.get(handle.uuid()).await.unwrap(), Some(done));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn untyped_add_task_fills_parameters_from_args_and_kwargs() {
    let app = started_app().await;
    let positional = app.add_task("add", (1, 2), ()).await.unwrap();
    let by_name = app
        .add_task("add", (), json!({"b": 20, "a": 10}))
        .await
        .unwrap();
    let mixed = app.add_task("add", [100], json!({"b": 200})).await.unwrap();
    assert_eq!(
        positional.wait(WAIT).await.unwrap().returning,
        Some(json!(3))
    );
    assert_eq!(by_name.wait(WAIT).await.unwrap().returning, Some(json!(30)));
    assert_eq!(mixed.wait(WAIT).await.unwrap().returning, Some(json!(300)));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn add_task_refuses_arguments_that_are_not_a_list_or_an_object() {
    let app = QueueTasks::new();
    let err = app.add_task("add", "1, 2", ()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot add task `add`: args must be a list (a tuple or a Vec), not a string"
    );
    let err = app.add_task("add", (), [1]).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot add task `add`: kwargs must be an object (a struct or a map), not a list"
    );
    let err = app.add_task("a:b", (), ()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot add task `a:b`: task names cannot contain `:`, which separates the fields of queue entries"
    );
}

#[tokio::test]
async fn arguments_that_do_not_decode_fail_the_task_naming_the_parameter() {
    let app = started_app().await;
    let wrong_type = app
        .add_task("add", (1, "two"), ())
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(wrong_type.status, TaskStatus::Error);
    assert_eq!(
        wrong_type.traceback.as_deref(),
        Some(
            "ArgumentError: task `add`: argument for parameter `b` does not decode: invalid type: string \"two\", expected i64"
        )
    );
    let missing = app
        .add_task("add", (1,), ())
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        missing.traceback.as_deref(),
        Some("ArgumentError: task `add`: missing argument for parameter `b`")
    );
    let extra = app
        .add_task("add", (1, 2, 3), ())
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        extra.traceback.as_deref(),
        Some("ArgumentError: task `add`: takes 2 positional argument(s) but 3 were given")
    );
    let unknown_kwarg = app
        .add_task("add", (1, 2), json!({"c": 3}))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        unknown_kwarg.traceback.as_deref(),
        Some("ArgumentError: task `add`: got an unexpected keyword argument `c`")
    );
    let twice = app
        .add_task("add", (1, 2), json!({"a": 3}))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        twice.traceback.as_deref(),
        Some(
            "ArgumentError: task `add`: got two values for parameter `a`, one positional and one by keyword"
        )
    );
    // The worker went on.
    let fine = add::add_task(&app, 1, 1)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(fine.status, TaskStatus::Success);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_in_memory_app_refuses_an_unknown_task_name_at_add() {
    let app = started_app().await;
    // Every worker of an in-memory queue is in this process: nobody could run it.
    let near = app.add_task("ad", (1, 2), ()).await.unwrap_err();
    assert!(matches!(near, Error::UnknownTask { .. }), "{near:?}");
    assert_eq!(
        near.to_string(),
        "no task named `ad` is registered in this process, and the app's queue is in memory, so no worker could run it; did you mean `add`?"
    );
    let far = app
        .add_task("no_such_task_at_all", (), ())
        .await
        .unwrap_err();
    assert!(far.to_string().contains("registered: "), "{far}");
    // (On a server backend the name is taken, and the worker fails that task alone, naming
    // it: qtasks-redis/tests/redis.rs and the conformance suite.)
    let fine = add::add_task(&app, 2, 2)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(fine.returning, Some(json!(4)));
    app.stop().await.unwrap();
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Invoice {
    id: u32,
    lines: Vec<String>,
}

#[qtasks::task(name = "invoice.summary", priority = 3, tags = ["billing"], description = "Summarises an invoice")]
async fn summary(invoice: Invoice, note: Option<String>) -> String {
    format!(
        "{}: {} lines{}",
        invoice.id,
        invoice.lines.len(),
        note.map(|n| format!(" ({n})")).unwrap_or_default()
    )
}

#[tokio::test]
async fn serde_types_options_and_optional_parameters() {
    assert_eq!(summary::NAME, "invoice.summary");
    assert_eq!(summary::DEFINITION.priority(), Some(3));
    assert_eq!(summary::DEFINITION.tags(), ["billing"]);
    assert_eq!(
        summary::DEFINITION.description(),
        Some("Summarises an invoice")
    );
    let params: Vec<(&str, &str)> = summary::DEFINITION
        .params()
        .iter()
        .map(|p| (p.name, p.type_name))
        .collect();
    assert_eq!(params, [("invoice", "Invoice"), ("note", "Option<String>")]);

    let app = started_app().await;
    let invoice = Invoice {
        id: 7,
        lines: vec!["a".into(), "b".into()],
    };
    let with_note = summary::add_task(&app, invoice.clone(), Some("paid".into()))
        .await
        .unwrap();
    let done = with_note.wait(WAIT).await.unwrap();
    assert_eq!(done.returning, Some(json!("7: 2 lines (paid)")));
    assert_eq!(done.priority, 3);
    // Leaving out an `Option` parameter is allowed when adding by name.
    let without = app
        .add_task("invoice.summary", (invoice,), ())
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(without.returning, Some(json!("7: 2 lines")));
    app.stop().await.unwrap();
}

#[qtasks::task(echo = true)]
async fn introspect(ctx: TaskContext, label: String) -> serde_json::Value {
    let me = ctx.get_task(ctx.task_uuid()).await.unwrap().unwrap();
    json!({
        "label": label,
        "name": ctx.task_name(),
        "uuid": ctx.task_uuid().to_string(),
        "status_while_running": me.status,
        "app": ctx.app().name(),
        "max_tasks_process": ctx.config().max_tasks_process,
    })
}

#[tokio::test]
async fn the_echo_context_is_bound_to_the_running_app() {
    let app = QueueTasks::with_config(QueueConfig {
        name: "ctx-app".into(),
        max_tasks_process: 3,
        ..Default::default()
    });
    app.start().await.unwrap();
    let handle = introspect::add_task(&app, "x".into()).await.unwrap();
    let done = handle.wait(WAIT).await.unwrap();
    assert_eq!(
        done.returning,
        Some(json!({
            "label": "x",
            "name": "introspect",
            "uuid": handle.uuid().to_string(),
            "status_while_running": "process",
            "app": "ctx-app",
            "max_tasks_process": 3,
        }))
    );
    app.stop().await.unwrap();
}

#[qtasks::task(echo = true)]
async fn parent(ctx: TaskContext, n: i64) -> TaskResult<i64> {
    let child = ctx
        .add_task("add", (n, n), ())
        .await
        .map_err(qtasks::TaskError::msg)?;
    let done = child.wait(WAIT).await.map_err(qtasks::TaskError::msg)?;
    Ok(done.returning.and_then(|v| v.as_i64()).unwrap_or_default() + 1)
}

#[tokio::test]
async fn a_task_adds_and_waits_for_a_nested_task() {
    let app = started_app().await;
    let done = parent::add_task(&app, 5)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.returning, Some(json!(11)));
    app.stop().await.unwrap();
}

#[qtasks::task(echo = true)]
async fn cancels_itself(ctx: TaskContext, reason: String) -> TaskResult<()> {
    Err(ctx.cancel(reason))
}

#[tokio::test]
async fn ctx_cancel_ends_the_task_with_status_cancel_and_the_reason() {
    let app = started_app().await;
    let done = cancels_itself::add_task(&app, "not needed".into())
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Cancel);
    assert_eq!(done.cancel_reason.as_deref(), Some("not needed"));
    let default_reason = cancels_itself::add_task(&app, String::new())
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        default_reason.cancel_reason.as_deref(),
        Some("cancels_itself.cancel")
    );
    app.stop().await.unwrap();
}

#[qtasks::task]
async fn parses(text: String) -> Result<i32, std::num::ParseIntError> {
    text.parse()
}

#[qtasks::task]
async fn panics(message: String) -> i32 {
    panic!("{message}");
}

#[tokio::test]
async fn errors_and_panics_fail_only_their_task_with_a_readable_reason() {
    let app = started_app().await;
    let ok = parses::add_task(&app, "42".into()).await.unwrap();
    let bad = parses::add_task(&app, "forty-two".into()).await.unwrap();
    let panicked = panics::add_task(&app, "boom".into()).await.unwrap();
    assert_eq!(ok.wait(WAIT).await.unwrap().returning, Some(json!(42)));
    let bad = bad.wait(WAIT).await.unwrap();
    assert_eq!(bad.status, TaskStatus::Error);
    assert_eq!(
        bad.traceback.as_deref(),
        Some("ParseIntError: invalid digit found in string")
    );
    let panicked = panicked.wait(WAIT).await.unwrap();
    assert_eq!(panicked.status, TaskStatus::Error);
    assert_eq!(
        panicked.traceback.as_deref(),
        Some("TaskPanic: task panicked: boom")
    );
    assert_eq!(
        add::add_task(&app, 1, 2)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap()
            .returning,
        Some(json!(3))
    );
    app.stop().await.unwrap();
}

static SIGNAL: AtomicBool = AtomicBool::new(false);

/// Blocks its thread until the test sets `SIGNAL`, for at most 5 s.
#[qtasks::task]
fn blocks_until_signalled() -> &'static str {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if SIGNAL.load(Ordering::SeqCst) {
            return "signalled";
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    "timed out: the fn blocked the only async thread"
}

#[qtasks::task]
fn blocking_panics() -> i32 {
    panic!("blocking boom")
}

// A current-thread runtime: if the plain fn ran on the async thread, the test could not set
// the signal until the fn gave up.
#[tokio::test(flavor = "current_thread")]
async fn a_plain_fn_runs_on_the_blocking_pool_not_on_the_async_thread() {
    let app = started_app().await;
    let handle = blocks_until_signalled::add_task(&app).await.unwrap();
    while handle.get().await.unwrap().unwrap().status != TaskStatus::Process {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    SIGNAL.store(true, Ordering::SeqCst);
    let done = handle.wait(WAIT).await.unwrap();
    assert_eq!(done.returning, Some(json!("signalled")));
    let panicked = blocking_panics::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        panicked.traceback.as_deref(),
        Some("TaskPanic: task panicked: blocking boom")
    );
    app.stop().await.unwrap();
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST_AT_ONCE: AtomicUsize = AtomicUsize::new(0);

#[qtasks::task]
async fn counted_sleep(ms: u64) {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MOST_AT_ONCE.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
}

#[tokio::test]
async fn the_worker_runs_at_most_max_tasks_process_at_once() {
    let app = QueueTasks::with_config(QueueConfig {
        max_tasks_process: 3,
        ..Default::default()
    });
    app.start().await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..12 {
        handles.push(counted_sleep::add_task(&app, 20).await.unwrap());
    }
    for handle in handles {
        assert_eq!(handle.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    }
    assert_eq!(MOST_AT_ONCE.load(Ordering::SeqCst), 3);
    app.stop().await.unwrap();
}

#[qtasks::task]
async fn slow(ms: u64) -> &'static str {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    "done"
}

#[tokio::test]
async fn statuses_go_new_process_success() {
    let app = QueueTasks::new();
    let handle = slow::add_task(&app, 300).await.unwrap();
    assert_eq!(
        handle.get().await.unwrap().unwrap().status,
        TaskStatus::New,
        "no worker yet"
    );
    app.start().await.unwrap();
    let mut saw_process = false;
    for _ in 0..200 {
        match handle.get().await.unwrap().unwrap().status {
            TaskStatus::Process => {
                saw_process = true;
                break;
            }
            TaskStatus::New => tokio::time::sleep(Duration::from_millis(5)).await,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(saw_process, "the task was seen running");
    assert_eq!(handle.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn wait_times_out_and_unknown_ids_are_reported() {
    let app = QueueTasks::new(); // no worker: the task stays new
    let handle = add::add_task(&app, 1, 1).await.unwrap();
    let err = handle.wait(Duration::from_millis(50)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::WaitTimeout {
                no_worker: true,
                ..
            }
        ),
        "{err}"
    );
    // The message says why: no worker runs this app.
    assert!(
        err.to_string().contains("no worker of this app is running"),
        "{err}"
    );
    // With a worker alive (the task is only not due yet), a timeout says only that.
    let live = QueueTasks::new();
    live.start().await.unwrap();
    let later = qtasks::AddOptions::default().delay(Duration::from_secs(60));
    let delayed = live.add_task_with("add", (1, 2), (), later).await.unwrap();
    let err = delayed.wait(Duration::from_millis(50)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::WaitTimeout {
                no_worker: false,
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.to_string().contains("no worker"), "{err}");
    live.stop().await.unwrap();
    let unknown = uuid_of_nothing();
    assert!(matches!(app.wait(unknown, WAIT).await, Err(Error::TaskNotFound(id)) if id == unknown));
    assert_eq!(app.get(unknown).await.unwrap(), None);
}

fn uuid_of_nothing() -> qtasks::Uuid {
    qtasks::Uuid::nil()
}

#[tokio::test]
async fn stop_lets_running_tasks_finish_and_run_forever_returns() {
    let app = QueueTasks::new();
    let runner = tokio::spawn({
        let app = app.clone();
        async move { app.run_forever().await }
    });
    let handle = slow::add_task(&app, 200).await.unwrap();
    while handle.get().await.unwrap().unwrap().status != TaskStatus::Process {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(matches!(app.start().await, Err(Error::AlreadyRunning)));
    app.stop().await.unwrap();
    // Graceful: the running task finished before `stop` returned.
    assert_eq!(
        handle.get().await.unwrap().unwrap().status,
        TaskStatus::Success
    );
    runner.await.unwrap().unwrap();
    // A stopped app takes no new task, and can be started again.
    let queued = add::add_task(&app, 1, 2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(queued.get().await.unwrap().unwrap().status, TaskStatus::New);
    app.start().await.unwrap();
    assert_eq!(queued.wait(WAIT).await.unwrap().returning, Some(json!(3)));
    app.stop().await.unwrap();
}

/// The order the `in_order` tasks ran in.
static RAN_IN_ORDER: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

#[qtasks::task]
async fn in_order(i: u64) -> u64 {
    RAN_IN_ORDER.lock().unwrap().push(i);
    i
}

/// `add_many` over several chunks (it prepares and stores 512 calls at a time), with unique
/// calls among the plain ones, some keys met twice in one chunk and one across two chunks:
/// each task is added once and in order, a repeated key answers its first task, and each
/// added task fires its after-add trigger once.
#[tokio::test]
async fn add_many_across_chunks_with_unique_calls_adds_each_once_in_order() {
    let app = QueueTasks::with_config(QueueConfig {
        max_tasks_process: 1,
        ..Default::default()
    });
    let added = CountFirings::default();
    app.add_plugin(added.clone(), &[qtasks::Trigger::QtasksAddTaskAfterBroker])
        .unwrap();
    let n = 1200u64;
    // Unique calls at 7, 107, 207, ...: keys k0, k0, k1, k1, ... (1007 and 1107 share k5 and
    // fall in two chunks).
    let unique = |i: u64| i % 100 == 7;
    let calls = (0..n).map(|i| {
        let call = in_order::call(i);
        if unique(i) {
            call.unique(format!("k{}", i / 200), Duration::from_secs(600))
        } else {
            call
        }
    });
    let handles = app.add_many(calls).await.unwrap();
    assert_eq!(handles.len(), n as usize);
    let repeats: Vec<u64> = (0..n)
        .filter(|&i| unique(i) && (i / 100) % 2 == 1)
        .collect();
    assert_eq!(repeats.len(), 6);
    for &i in &repeats {
        assert_eq!(
            handles[i as usize].uuid(),
            handles[i as usize - 100].uuid(),
            "call {i} answers the task its key's first call added"
        );
    }
    assert_eq!(added.count(), (n as usize) - repeats.len());

    app.start().await.unwrap();
    for handle in &handles {
        handle.result(WAIT).await.unwrap();
    }
    app.stop().await.unwrap();
    let ran = RAN_IN_ORDER.lock().unwrap().clone();
    let expected: Vec<u64> = (0..n).filter(|i| !repeats.contains(i)).collect();
    assert_eq!(ran, expected, "each once, in the order of the calls");
}
