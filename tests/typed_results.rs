//! Typed results: a handle from `add_task` returns the task's own output type, or a
//! `TaskFailure` that tells error, cancel, timeout, not-found and a decode mismatch apart; on
//! memory and on Redis.

use std::time::Duration;

use futures_util::StreamExt;
use qtasks::redis::RedisOptions;
use qtasks::{
    QueueConfig, QueueTasks, StreamHandle, TaskContext, TaskError, TaskFailure, TaskHandle,
    TaskResult,
};
use qtasks_test_support::redis::redis_app;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Invoice {
    number: u32,
    total_cents: i64,
    lines: Vec<String>,
}

#[qtasks::task]
async fn typed_invoice(number: u32) -> Invoice {
    Invoice {
        number,
        total_cents: 1999,
        lines: vec!["tea".into(), "cake".into()],
    }
}

#[qtasks::task]
async fn typed_fails(why: String) -> TaskResult<u32> {
    Err(TaskError::msg(why))
}

#[qtasks::task(echo = true)]
async fn typed_cancels(ctx: TaskContext) -> TaskResult<u32> {
    Err(ctx.cancel("not today"))
}

#[qtasks::task]
fn typed_blocking(text: String) -> Result<usize, std::num::ParseIntError> {
    Ok(text.parse::<usize>()? * 2)
}

#[qtasks::task(retry = 2)]
async fn typed_flaky(label: String) -> TaskResult<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    if CALLS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(TaskError::msg("first try fails"));
    }
    Ok(format!("{label} on a retry"))
}

#[qtasks::task]
async fn typed_unit() {}

#[qtasks::task]
async fn typed_items(n: u32) -> impl futures_util::Stream<Item = String> {
    futures_util::stream::iter((0..n).map(|i| format!("item {i}")))
}

static ASKED_ON_REDIS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[qtasks::task(echo = true, retry = 1)]
async fn typed_asks_retry(ctx: TaskContext) -> TaskResult<u32> {
    let attempt = ASKED_ON_REDIS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if attempt == 0 {
        return Err(ctx.retry_after(Duration::from_millis(200)));
    }
    Ok(attempt)
}

async fn memory_app() -> QueueTasks {
    let app = QueueTasks::builder().config(QueueConfig::default()).build();
    app.start().await.unwrap();
    app
}

#[tokio::test]
async fn a_typed_handle_returns_the_tasks_own_type() {
    let app = memory_app().await;
    let invoice: Invoice = typed_invoice::add_task(&app, 7)
        .await
        .unwrap()
        .result(WAIT)
        .await
        .unwrap();
    assert_eq!(invoice.number, 7);
    assert_eq!(invoice.lines, ["tea", "cake"]);
    let doubled: usize = typed_blocking::add_task(&app, "21".into())
        .await
        .unwrap()
        .result(WAIT)
        .await
        .unwrap();
    assert_eq!(doubled, 42);
    typed_unit::add_task(&app)
        .await
        .unwrap()
        .result(WAIT)
        .await
        .unwrap();
    let retried = typed_flaky::add_task(&app, "done".into())
        .await
        .unwrap()
        .result(WAIT)
        .await
        .unwrap();
    assert_eq!(retried, "done on a retry", "the last attempt's result");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_failure_says_which_kind_it_is() {
    let app = memory_app().await;
    let failed = typed_fails::add_task(&app, "the ledger is closed".into())
        .await
        .unwrap()
        .result(WAIT)
        .await
        .unwrap_err();
    match &failed {
        TaskFailure::Error {
            error_type,
            message,
            ..
        } => {
            assert_eq!(error_type, "TaskError");
            assert_eq!(message, "the ledger is closed");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    let parse = typed_blocking::add_task(&app, "twelve".into())
        .await
        .unwrap()
        .result(WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(&parse, TaskFailure::Error { message, .. } if message.contains("invalid digit")),
        "{parse:?}"
    );
    let cancelled = typed_cancels::add_task(&app)
        .await
        .unwrap()
        .result(WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(&cancelled, TaskFailure::Cancelled { reason, .. } if reason == "not today"),
        "{cancelled:?}"
    );
    let missing = app
        .handle::<u32>(qtasks::Uuid::new_v4())
        .result(WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, TaskFailure::NotFound { .. }),
        "{missing:?}"
    );
    // `?` turns a failure into `qtasks::Error`, and the message stays.
    let as_error: qtasks::Error = failed.into();
    assert!(as_error.to_string().contains("the ledger is closed"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_result_that_is_not_the_handles_type_is_a_decode_failure() {
    let app = memory_app().await;
    let by_name = app
        .add_task("typed_invoice", (3,), ())
        .await
        .unwrap()
        .typed::<Vec<u8>>();
    let failure = by_name.result(WAIT).await.unwrap_err();
    match &failure {
        TaskFailure::Decode {
            expected, value, ..
        } => {
            assert!(expected.contains("Vec<u8>"), "{expected}");
            assert!(value.contains("total_cents"), "{value}");
        }
        other => panic!("expected a decode failure, got {other:?}"),
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_wait_without_a_worker_times_out_saying_so() {
    let app = QueueTasks::new(); // never started: no worker
    let handle = typed_invoice::add_task(&app, 1).await.unwrap();
    let failure = handle.result(Duration::from_millis(100)).await.unwrap_err();
    assert!(
        matches!(
            failure,
            TaskFailure::Timeout {
                no_worker: true,
                ..
            }
        ),
        "{failure:?}"
    );
    assert!(failure.to_string().contains("no worker"), "{failure}");
}

#[tokio::test]
async fn a_stream_task_gives_its_items_typed() {
    let app = memory_app().await;
    let handle = typed_items::add_task(&app, 3).await.unwrap();
    let items: Vec<String> = handle.items().map(|item| item.unwrap()).collect().await;
    assert_eq!(items, ["item 0", "item 1", "item 2"]);
    let all: Vec<String> = handle.result(WAIT).await.unwrap();
    assert_eq!(all, items);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_call_with_options_keeps_its_type() {
    let app = memory_app().await;
    let handle: TaskHandle<Invoice> = typed_invoice::call(8)
        .priority(-1)
        .delay(Duration::from_millis(20))
        .add(&app)
        .await
        .unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.priority, -1, "the call's priority was used");
    assert_eq!(handle.result(WAIT).await.unwrap().number, 8);

    // A caller-chosen id: the second add names the first task and adds nothing.
    let id = qtasks::Uuid::new_v4();
    let first = typed_invoice::call(9).uuid(id).add(&app).await.unwrap();
    let again = typed_invoice::call(10).uuid(id).add(&app).await.unwrap();
    assert_eq!((first.uuid(), again.uuid()), (id, id));
    assert_eq!(
        again.result(WAIT).await.unwrap().number,
        9,
        "the first add's task"
    );

    // A stream task's call gives its typed stream handle; many calls give typed handles.
    let stream: StreamHandle<String> = typed_items::call(2).add(&app).await.unwrap();
    let items: Vec<String> = stream.items().map(|item| item.unwrap()).collect().await;
    assert_eq!(items, ["item 0", "item 1"]);
    let many: Vec<TaskHandle<Invoice>> = app
        .add_many((1..=3).map(|n| typed_invoice::call(n).priority(2)))
        .await
        .unwrap();
    assert_eq!(many[2].result(WAIT).await.unwrap().number, 3);

    // A call's expiry counts from each add (a schedule adds one call again and again).
    let expiring = typed_invoice::call(5)
        .delay(Duration::from_secs(60))
        .expires(Duration::from_secs(600));
    let first = expiring.add(&app).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = expiring
        .clone()
        .uuid(qtasks::Uuid::new_v4())
        .add(&app)
        .await
        .unwrap();
    let expiry = |record: Option<qtasks::TaskRecord>| record.unwrap().expires_at.unwrap();
    let (a, b) = (
        expiry(first.get().await.unwrap()),
        expiry(second.get().await.unwrap()),
    );
    assert!(b - a >= 0.2, "each add its own expiry: {a} then {b}");
    first.cancel("done").await.unwrap();
    second.cancel("done").await.unwrap();

    // Calls of different tasks share a list once untyped.
    let mixed = [
        typed_invoice::call(1).untyped(),
        typed_unit::call().untyped(),
    ];
    let handles = app.add_many(mixed).await.unwrap();
    assert_eq!(handles.len(), 2);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_handle_cancels_its_task() {
    // Not started: no worker takes the task before the cancel.
    let app = QueueTasks::builder().config(QueueConfig::default()).build();
    let handle = typed_invoice::add_task(&app, 1).await.unwrap();
    assert!(handle.cancel("not needed any more").await.unwrap());
    match handle.result(WAIT).await {
        Err(TaskFailure::Cancelled { reason, .. }) => assert_eq!(reason, "not needed any more"),
        other => panic!("expected a cancel, got {other:?}"),
    }
    assert!(
        !handle.cancel("again").await.unwrap(),
        "an ended task is not cancelled twice"
    );
    let unknown = app.handle::<Invoice>(qtasks::Uuid::new_v4());
    assert!(matches!(
        unknown.cancel("who?").await,
        Err(qtasks::Error::TaskNotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn typed_results_on_redis() {
    let Some(url) = redis_url("typed_results_on_redis") else {
        return;
    };
    let prefix = unique_prefix("typed");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 2).await;
    app.start().await.unwrap();
    let invoice = typed_invoice::add_task(&app, 9)
        .await
        .unwrap()
        .result(WAIT)
        .await
        .unwrap();
    assert_eq!(invoice.total_cents, 1999);
    let failed = typed_fails::add_task(&app, "no".into())
        .await
        .unwrap()
        .result(WAIT)
        .await
        .unwrap_err();
    assert!(matches!(failed, TaskFailure::Error { .. }), "{failed:?}");
    // A typed call with options, cancelled through its handle while it waits for its time.
    let later: TaskHandle<Invoice> = typed_invoice::call(10)
        .priority(3)
        .delay(Duration::from_secs(60))
        .add(&app)
        .await
        .unwrap();
    assert!(later.cancel("changed my mind").await.unwrap());
    // A retry asked from inside the task, through the engine's delayed queue.
    let asked = typed_asks_retry::add_task(&app).await.unwrap();
    assert_eq!(
        asked.result(WAIT).await.unwrap(),
        1,
        "the second attempt's result"
    );
    let first = asked.get().await.unwrap().unwrap();
    assert_eq!(first.status, qtasks::TaskStatus::Retry);
    let second = app
        .get(first.retry_child_uuid.unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        second.updated_at - first.updated_at >= 0.2,
        "it waited the 0.2 s asked"
    );
    let cancelled = later.result(WAIT).await.unwrap_err();
    assert!(
        matches!(&cancelled, TaskFailure::Cancelled { reason, .. } if reason == "changed my mind"),
        "{cancelled:?}"
    );
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}
