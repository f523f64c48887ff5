//! Execution semantics: retries, timeouts, cancellation, priorities, stream tasks,
//! middlewares, decode, dependencies and state, the context, calls and chains, routers, and the
//! test harness, including their failure paths.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use qtasks::plugin::{BoxError, BoxFuture};
use qtasks::triggers::{Reply, TriggerEvent};
use qtasks::{
    DependencyScope, Depends, Middleware, Outcome, Plugin, QueueConfig, QueueTasks, State,
    TaskContext, TaskDefinition, TaskError, TaskRecord, TaskResult, TaskStatus, Trigger,
};
use serde_json::{Map, Value, json};

const WAIT: Duration = Duration::from_secs(15);

async fn started(config: QueueConfig) -> QueueTasks {
    let app = QueueTasks::with_config(config);
    app.start().await.unwrap();
    app
}

/// Every attempt of a retried task, first to last.
async fn attempts(app: &QueueTasks, first: qtasks::Uuid) -> Vec<TaskRecord> {
    let mut chain = vec![app.get(first).await.unwrap().unwrap()];
    while let Some(child) = chain.last().unwrap().retry_child_uuid {
        chain.push(app.get(child).await.unwrap().unwrap());
    }
    chain
}

// -- Retries --------------------------------------------------------------------------------------

#[qtasks::task(retry = 2, retry_on_exc = [std::num::ParseIntError])]
async fn parse_or_fail(text: String) -> TaskResult<i64> {
    if text == "io" {
        return Err(std::io::Error::other("disk gone").into());
    }
    Ok(text.parse::<i64>()?)
}

#[tokio::test]
async fn retry_on_exc_retries_only_the_named_error_types() {
    let app = started(QueueConfig::default()).await;
    let parse = parse_or_fail::add_task(&app, "x".into()).await.unwrap();
    let last = parse.wait(WAIT).await.unwrap();
    assert_eq!(last.status, TaskStatus::Error);
    let chain = attempts(&app, parse.uuid()).await;
    assert_eq!(
        chain.iter().map(|r| r.status).collect::<Vec<_>>(),
        [TaskStatus::Retry, TaskStatus::Retry, TaskStatus::Error]
    );
    assert!(chain.iter().all(|r| r.traceback.as_deref() == Some("ParseIntError: invalid digit found in string")));

    let io = parse_or_fail::add_task(&app, "io".into()).await.unwrap();
    let done = io.wait(WAIT).await.unwrap();
    assert_eq!(
        (done.status, done.retry_child_uuid),
        (TaskStatus::Error, None),
        "an io::Error is not retried"
    );
    assert_eq!(done.traceback.as_deref(), Some("Error: disk gone"));
    app.stop().await.unwrap();
}

#[qtasks::task(retry = 1, retry_delay = 0.3)]
async fn fails_with_fixed_backoff() -> TaskResult<()> {
    Err(TaskError::msg("again"))
}

#[qtasks::task(retry = 2, retry_delay = 0.2, retry_backoff = "exponential")]
async fn fails_with_exponential_backoff() -> TaskResult<()> {
    Err(TaskError::msg("again"))
}

#[tokio::test]
async fn a_backoff_delays_the_next_attempt() {
    let app = started(QueueConfig::default()).await;
    let fixed = fails_with_fixed_backoff::add_task(&app).await.unwrap();
    fixed.wait(WAIT).await.unwrap();
    let chain = attempts(&app, fixed.uuid()).await;
    let waited = chain[1].updated_at - chain[0].updated_at;
    assert!(waited >= 0.3, "the retry waited its 0.3 s delay: {waited}");

    let exponential = fails_with_exponential_backoff::add_task(&app)
        .await
        .unwrap();
    exponential.wait(WAIT).await.unwrap();
    let chain = attempts(&app, exponential.uuid()).await;
    assert_eq!(chain.len(), 3);
    // 0.2 s, then 0.4 s; jitter takes off up to half.
    assert!(chain[1].updated_at - chain[0].updated_at >= 0.1);
    assert!(chain[2].updated_at - chain[1].updated_at >= 0.2);
    app.stop().await.unwrap();
}

// -- A retry asked from inside the task ----------------------------------------------------------

static ASKED_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

/// Asks for a retry after 0.3 s on its first attempt, whatever the error's type: its
/// `retry_on_exc` names another type, and the asked retry happens anyway.
#[qtasks::task(echo = true, retry = 2, retry_on_exc = [std::num::ParseIntError])]
async fn asks_for_a_retry(ctx: TaskContext) -> TaskResult<String> {
    if ASKED_ATTEMPTS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(ctx.retry_after(Duration::from_millis(300)));
    }
    Ok("second time lucky".to_owned())
}

#[qtasks::task(retry = 1)]
async fn asks_for_a_retry_in_an_hour() -> TaskResult<()> {
    Err(TaskError::msg("the upstream is busy").with_retry_after(Duration::from_secs(3600)))
}

#[qtasks::task]
async fn asks_without_retries() -> TaskResult<()> {
    Err(TaskError::retry_after(Duration::from_millis(10)))
}

#[tokio::test]
async fn a_task_asks_for_a_retry_after_a_wait_of_its_choosing() {
    let app = started(QueueConfig::default()).await;
    let handle = asks_for_a_retry::add_task(&app).await.unwrap();
    assert_eq!(handle.result(WAIT).await.unwrap(), "second time lucky");
    let chain = attempts(&app, handle.uuid()).await;
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].status, TaskStatus::Retry);
    assert_eq!(
        chain[0].traceback.as_deref(),
        Some("TaskRetry: the task asked to be retried after 300ms")
    );
    let waited = chain[1].updated_at - chain[0].updated_at;
    assert!(waited >= 0.3, "the retry waited the 0.3 s asked: {waited}");

    // The wait asked for is the wait, not the task's backoff: in an hour, the next attempt
    // still waits.
    let later = asks_for_a_retry_in_an_hour::add_task(&app).await.unwrap();
    let mut chain = attempts(&app, later.uuid()).await;
    for _ in 0..200 {
        if chain[0].status == TaskStatus::Retry {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        chain = attempts(&app, later.uuid()).await;
    }
    assert_eq!(chain[0].status, TaskStatus::Retry, "{:?}", chain[0]);
    assert_eq!(
        chain[0].traceback.as_deref(),
        Some("TaskError: the upstream is busy")
    );
    assert_eq!(
        chain[1].status,
        TaskStatus::New,
        "the next attempt waits its hour"
    );
    // The handle of the first attempt cancels the attempt that lives on.
    assert!(later.cancel("test over").await.unwrap());
    let cancelled = app.get(chain[1].uuid).await.unwrap().unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancel);
    assert_eq!(cancelled.cancel_reason.as_deref(), Some("test over"));

    // Without retries the task ends `error`, saying a retry was asked.
    let done = asks_without_retries::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Error);
    assert_eq!(
        done.traceback.as_deref(),
        Some(
            "TaskRetry: the task asked to be retried after 10ms\n\
             (a retry after 10ms was asked, but the task has no `retry = N`)"
        )
    );
    app.stop().await.unwrap();
}

#[qtasks::task(retry = 2, retry_delay = "300ms")]
async fn fails_then_waits() -> TaskResult<()> {
    Err(TaskError::msg("the ledger is closed"))
}

#[tokio::test]
async fn an_expiry_ends_the_retries_with_the_real_error() {
    let app = started(QueueConfig::default()).await;
    let handle = fails_then_waits::call()
        .expires(Duration::from_millis(150))
        .add(&app)
        .await
        .unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Error, "{record:?}");
    assert_eq!(
        record.traceback.as_deref(),
        Some(
            "TaskError: the ledger is closed\n\
             (not retried: the next attempt could not start before the task's expiry)"
        )
    );
    assert_eq!(record.retry_child_uuid, None);
    app.stop().await.unwrap();
}

#[qtasks::task(
    retry = 3,
    retry_delay = "100ms",
    retry_backoff = "exponential",
    retry_backoff_max = "150ms",
    retry_jitter = 0
)]
async fn capped_backoff() -> TaskResult<()> {
    Err(TaskError::msg("again"))
}

#[tokio::test]
async fn a_doubling_backoff_stops_at_its_cap() {
    let definition = capped_backoff::DEFINITION;
    let backoff = definition.retry_backoff().unwrap();
    assert_eq!(backoff.kind, qtasks::Backoff::Exponential);
    assert_eq!(backoff.delay, Duration::from_millis(100));
    assert_eq!(backoff.max, Duration::from_millis(150));
    assert_eq!(backoff.jitter, 0.0);
    assert_eq!(
        (1..=4).map(|n| backoff.delay_for(n)).collect::<Vec<_>>(),
        [100, 150, 150, 150].map(Duration::from_millis)
    );

    let app = started(QueueConfig::default()).await;
    let first = capped_backoff::add_task(&app).await.unwrap();
    first.wait(WAIT).await.unwrap();
    let chain = attempts(&app, first.uuid()).await;
    assert_eq!(chain.len(), 4);
    // 0.1 s, then 0.15 s twice: capped, not 0.2 and 0.4.
    assert!(chain[1].updated_at - chain[0].updated_at >= 0.1);
    assert!(chain[3].updated_at - chain[2].updated_at >= 0.15);
    app.stop().await.unwrap();
}

// -- Timeouts -------------------------------------------------------------------------------------

#[qtasks::task(max_time = 0.2)]
async fn slow_async() -> &'static str {
    tokio::time::sleep(Duration::from_secs(30)).await;
    "never"
}

#[qtasks::task(timeout = 0.2)]
fn slow_blocking() -> &'static str {
    std::thread::sleep(Duration::from_secs(2));
    "too late"
}

#[qtasks::task(retry = 1, max_time = 0.1, retry_on_exc = [qtasks::TimeoutError])]
async fn always_too_slow() -> u8 {
    tokio::time::sleep(Duration::from_secs(30)).await;
    0
}

#[tokio::test]
async fn a_task_over_its_time_limit_ends_error_naming_the_limit() {
    let app = started(QueueConfig::default()).await;
    let done = slow_async::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Error);
    assert_eq!(
        done.traceback.as_deref(),
        Some("TimeoutError: time limit exceeded for task `slow_async`: 0.2 seconds")
    );

    // A plain fn cannot be stopped mid-call: the task ends at the limit, the thread finishes
    // on its own and its result is dropped.
    let started_at = Instant::now();
    let done = slow_blocking::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        done.traceback.as_deref(),
        Some("TimeoutError: time limit exceeded for task `slow_blocking`: 0.2 seconds")
    );
    assert!(
        started_at.elapsed() < Duration::from_secs(2),
        "the task did not wait for the thread"
    );

    // A timeout during a retry: both attempts time out, the last one's error stands.
    let handle = always_too_slow::add_task(&app).await.unwrap();
    let done = handle.wait(WAIT).await.unwrap();
    assert_eq!(done.status, TaskStatus::Error);
    assert_eq!(
        attempts(&app, handle.uuid()).await.len(),
        2,
        "the timeout was retried once"
    );
    app.stop().await.unwrap();
}

// -- Cancellation ---------------------------------------------------------------------------------

static CANCELLED_RUNS: AtomicUsize = AtomicUsize::new(0);

#[qtasks::task(retry = 3)]
async fn long_running(label: String) -> String {
    CANCELLED_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(30)).await;
    label
}

async fn wait_for_status(app: &QueueTasks, uuid: qtasks::Uuid, status: TaskStatus) {
    for _ in 0..3000 {
        if app.get(uuid).await.unwrap().map(|r| r.status) == Some(status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("task {uuid} never reached {status}");
}

#[tokio::test]
async fn cancel_stops_running_tasks_revokes_queued_ones_and_never_retries() {
    let app = QueueTasks::with_config(QueueConfig {
        max_tasks_process: 1,
        ..Default::default()
    });
    // Queued while no worker runs: revoked, never runs.
    let queued = long_running::add_task(&app, "queued".into()).await.unwrap();
    assert!(app.cancel(queued.uuid(), "not needed").await.unwrap());
    app.start().await.unwrap();

    // Running: stopped.
    let running = long_running::add_task(&app, "running".into())
        .await
        .unwrap();
    wait_for_status(&app, running.uuid(), TaskStatus::Process).await;
    // Waiting for the only slot, behind the running one: revoked.
    let waiting = long_running::add_task(&app, "waiting".into())
        .await
        .unwrap();
    assert!(app.cancel(waiting.uuid(), "changed my mind").await.unwrap());
    assert!(app.cancel(running.uuid(), "stop now").await.unwrap());

    for (handle, reason) in [
        (&queued, "not needed"),
        (&running, "stop now"),
        (&waiting, "changed my mind"),
    ] {
        let done = handle.wait(WAIT).await.unwrap();
        assert_eq!(
            (done.status, done.cancel_reason.as_deref()),
            (TaskStatus::Cancel, Some(reason))
        );
        assert_eq!(
            done.retry_child_uuid, None,
            "a cancelled task is never retried"
        );
    }
    assert_eq!(
        CANCELLED_RUNS.load(Ordering::SeqCst),
        1,
        "only the running one ever started"
    );
    assert!(
        !app.cancel(running.uuid(), "again").await.unwrap(),
        "an ended task cannot be cancelled"
    );
    app.stop().await.unwrap();
}

// -- Priorities -----------------------------------------------------------------------------------

static GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();
static PRIORITY_ORDER: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[qtasks::task]
async fn blocker() {
    GATE.notified().await;
}

#[qtasks::task]
async fn ordered(label: String) {
    PRIORITY_ORDER.lock().unwrap().push(label);
}

#[tokio::test]
async fn lower_priority_numbers_run_first_behind_a_busy_worker() {
    let app = started(QueueConfig {
        max_tasks_process: 1,
        ..Default::default()
    })
    .await;
    let busy = blocker::add_task(&app).await.unwrap();
    wait_for_status(&app, busy.uuid(), TaskStatus::Process).await;
    let priorities = [3, 1, 2, 1, 0, 3, 2];
    let mut handles = Vec::new();
    for (i, priority) in priorities.iter().enumerate() {
        let call = ordered::call(format!("p{priority}#{i}")).priority(*priority);
        handles.push(call.add(&app).await.unwrap());
    }
    GATE.notify_one();
    for handle in handles {
        handle.wait(WAIT).await.unwrap();
    }
    assert_eq!(
        *PRIORITY_ORDER.lock().unwrap(),
        ["p0#4", "p1#1", "p1#3", "p2#2", "p2#6", "p3#0", "p3#5"]
    );
    app.stop().await.unwrap();
}

// -- Stream tasks ---------------------------------------------------------------------------------

fn times_ten(item: Value) -> Value {
    json!(item.as_i64().unwrap_or_default() * 10)
}

#[qtasks::task(generate_handler = times_ten)]
async fn counted(n: u32) -> impl futures_util::Stream<Item = u32> {
    futures_util::stream::iter(1..=n).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        i
    })
}

#[qtasks::task]
async fn breaks_half_way() -> impl futures_util::Stream<Item = Result<u32, String>> {
    futures_util::stream::iter(vec![
        Ok(1),
        Ok(2),
        Err("the source went away".to_owned()),
        Ok(3),
    ])
}

#[tokio::test]
async fn stream_items_are_mapped_stored_as_they_come_and_kept_on_failure() {
    let app = started(QueueConfig::default()).await;
    let handle = counted::add_task(&app, 4).await.unwrap();
    let live: Vec<u32> = handle.items().map(|item| item.unwrap()).collect().await;
    assert_eq!(
        live,
        [10, 20, 30, 40],
        "read live and typed, mapped by generate_handler"
    );
    let done = handle.wait(WAIT).await.unwrap();
    assert_eq!(done.returning, Some(json!([10, 20, 30, 40])));

    let broken = breaks_half_way::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(broken.status, TaskStatus::Error);
    assert_eq!(
        broken.traceback.as_deref(),
        Some("String: the source went away")
    );
    assert_eq!(
        broken.returning,
        Some(json!([1, 2])),
        "the items before the failure are kept"
    );
    app.stop().await.unwrap();
}

// -- Middlewares ----------------------------------------------------------------------------------

struct Doubling;

impl Middleware for Doubling {
    fn name(&self) -> &str {
        "Doubling"
    }
    fn before<'a>(
        &'a self,
        _task: &'a TaskDefinition,
        args: &'a mut Vec<Value>,
        _kwargs: &'a mut Map<String, Value>,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        for arg in args.iter_mut() {
            *arg = json!(arg.as_i64().unwrap_or_default() * 2);
        }
        Box::pin(async { Ok(()) })
    }
}

struct Wrapping;

impl Middleware for Wrapping {
    fn after<'a>(
        &'a self,
        task: &'a TaskDefinition,
        result: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        *result = json!({ task.name(): result.take() });
        Box::pin(async { Ok(()) })
    }
}

struct Panicking;

impl Middleware for Panicking {
    fn name(&self) -> &str {
        "Panicking"
    }
    fn before<'a>(
        &'a self,
        _task: &'a TaskDefinition,
        _args: &'a mut Vec<Value>,
        _kwargs: &'a mut Map<String, Value>,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        panic!("middleware bug")
    }
}

/// Counts how often it runs, app-wide.
#[derive(Default)]
struct Counting {
    before: AtomicUsize,
    after: AtomicUsize,
}

impl Middleware for Counting {
    fn before<'a>(
        &'a self,
        _task: &'a TaskDefinition,
        _args: &'a mut Vec<Value>,
        _kwargs: &'a mut Map<String, Value>,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        self.before.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
    fn after<'a>(
        &'a self,
        _task: &'a TaskDefinition,
        _result: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        self.after.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }
}

static DOUBLING: Doubling = Doubling;
static WRAPPING: Wrapping = Wrapping;
static PANICKING: Panicking = Panicking;

#[qtasks::task(middlewares_before = [DOUBLING], middlewares_after = [WRAPPING])]
async fn sum(a: i64, b: i64) -> i64 {
    a + b
}

#[qtasks::task(middlewares_before = [PANICKING])]
async fn guarded() -> u8 {
    1
}

#[tokio::test]
async fn middlewares_change_args_and_results_and_run_once_per_run() {
    let counting = Arc::new(Counting::default());
    let app = QueueTasks::builder().middleware(counting.clone()).build();
    app.start().await.unwrap();
    for _ in 0..3 {
        let done = sum::add_task(&app, 1, 2)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap();
        assert_eq!(
            done.returning,
            Some(json!({"sum": 6})),
            "args doubled before, result wrapped after"
        );
    }
    assert_eq!(
        counting.before.load(Ordering::SeqCst),
        3,
        "the app's middleware ran once per run (the original piles them up)"
    );
    assert_eq!(counting.after.load(Ordering::SeqCst), 3);

    let done = guarded::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(done.status, TaskStatus::Error);
    assert_eq!(
        done.traceback.as_deref(),
        Some("MiddlewarePanic: the middleware `Panicking` panicked: middleware bug")
    );
    app.stop().await.unwrap();
}

// -- Decode ---------------------------------------------------------------------------------------

fn as_text(value: Value) -> Value {
    Value::String(value.to_string())
}

fn refuse_negative(value: Value) -> Result<Value, String> {
    match value.as_i64() {
        Some(n) if n < 0 => Err(format!("{n} is negative")),
        _ => Ok(value),
    }
}

#[qtasks::task(decode = as_text)]
async fn decoded(n: i64) -> i64 {
    n
}

#[qtasks::task(decode = refuse_negative)]
async fn checked(n: i64) -> i64 {
    n
}

#[tokio::test]
async fn decode_turns_the_result_into_the_stored_value_and_a_failing_one_ends_error() {
    let app = started(QueueConfig::default()).await;
    assert_eq!(
        decoded::add_task(&app, 5)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap()
            .returning,
        Some(json!("5"))
    );
    assert_eq!(
        checked::add_task(&app, 5)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap()
            .returning,
        Some(json!(5))
    );
    let failed = checked::add_task(&app, -1)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(failed.status, TaskStatus::Error);
    assert_eq!(
        failed.traceback.as_deref(),
        Some("DecodeError: the task's decode failed: -1 is negative")
    );
    app.stop().await.unwrap();
}

// -- Dependencies and state -----------------------------------------------------------------------

struct Connection {
    id: usize,
}

struct Settings {
    greeting: String,
}

static MADE: AtomicUsize = AtomicUsize::new(0);
static CLOSED: AtomicUsize = AtomicUsize::new(0);

#[qtasks::task]
async fn uses_dependencies(
    settings: State<Settings>,
    connection: Depends<Connection>,
    name: String,
    fail: bool,
) -> TaskResult<String> {
    if fail {
        return Err(TaskError::msg("failed with the connection open"));
    }
    Ok(format!(
        "{} {name} via {}",
        settings.greeting, connection.id
    ))
}

#[tokio::test]
async fn dependencies_are_filled_by_the_executor_and_closed_when_the_task_ends() {
    let app = QueueTasks::new();
    app.set_state(Settings {
        greeting: "hello".into(),
    });
    app.provide_with_close(
        DependencyScope::Task,
        |_ctx| async {
            Ok(Connection {
                id: MADE.fetch_add(1, Ordering::SeqCst),
            })
        },
        |_connection| async {
            CLOSED.fetch_add(1, Ordering::SeqCst);
        },
    );
    app.start().await.unwrap();
    // The typed handle takes only the real arguments.
    let ok = uses_dependencies::add_task(&app, "ada".into(), false)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(ok.returning, Some(json!("hello ada via 0")));
    let failed = uses_dependencies::add_task(&app, "bob".into(), true)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(failed.status, TaskStatus::Error);
    assert_eq!(
        (MADE.load(Ordering::SeqCst), CLOSED.load(Ordering::SeqCst)),
        (2, 2),
        "closed after success and after failure"
    );
    app.stop().await.unwrap();
}

static WORKER_MADE: AtomicUsize = AtomicUsize::new(0);
static WORKER_CLOSED: AtomicUsize = AtomicUsize::new(0);

struct Pool;

#[qtasks::task]
async fn uses_pool(_pool: Depends<Pool>, n: u32) -> u32 {
    n
}

#[qtasks::task]
async fn needs_missing(_missing: Depends<Settings>) -> u32 {
    0
}

#[tokio::test]
async fn a_worker_dependency_is_made_once_and_closed_at_stop() {
    let app = QueueTasks::new();
    app.provide_with_close(
        DependencyScope::Worker,
        |_ctx| async {
            WORKER_MADE.fetch_add(1, Ordering::SeqCst);
            Ok(Pool)
        },
        |_pool| async {
            WORKER_CLOSED.fetch_add(1, Ordering::SeqCst);
        },
    );
    app.start().await.unwrap();
    for n in 0..3 {
        uses_pool::add_task(&app, n)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap();
    }
    assert_eq!(WORKER_MADE.load(Ordering::SeqCst), 1);
    assert_eq!(WORKER_CLOSED.load(Ordering::SeqCst), 0);
    let missing = needs_missing::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert!(
        missing
            .traceback
            .unwrap()
            .starts_with("DependencyError: no provider for `"),
        "names the type"
    );
    app.stop().await.unwrap();
    assert_eq!(
        WORKER_CLOSED.load(Ordering::SeqCst),
        1,
        "closed when the app stops"
    );
}

// -- The context ----------------------------------------------------------------------------------

#[qtasks::task(echo = true)]
async fn self_aware(ctx: TaskContext) -> TaskResult<Value> {
    ctx.sleep(Duration::from_millis(5)).await;
    let me = ctx.metadata().await.map_err(TaskError::msg)?.unwrap();
    let child = ctx
        .add_task("sum", (1, 1), ())
        .await
        .map_err(TaskError::msg)?;
    let child = child.wait(WAIT).await.map_err(TaskError::msg)?;
    tracing::info!(parent: ctx.span(), "logged in the task's span");
    Ok(json!({
        "status": me.status,
        "uuid_matches": me.uuid == ctx.task_uuid(),
        "app": ctx.app().name(),
        "limit": ctx.config().max_tasks_process,
        "child": child.returning,
    }))
}

#[tokio::test]
async fn the_context_is_bound_to_the_running_app() {
    let app = started(QueueConfig {
        name: "ctx".into(),
        max_tasks_process: 2,
        ..Default::default()
    })
    .await;
    let done = self_aware::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        done.returning,
        Some(
            json!({"status": "process", "uuid_matches": true, "app": "ctx", "limit": 2, "child": {"sum": 4}})
        )
    );
    app.stop().await.unwrap();
}

// -- Calls and chains -----------------------------------------------------------------------------

#[qtasks::task]
async fn add(a: i64, b: i64) -> TaskResult<i64> {
    if a + b > 100 {
        return Err(TaskError::msg("too big"));
    }
    Ok(a + b)
}

#[tokio::test]
async fn calls_are_built_without_sending_and_chains_pass_results_on() {
    let app = started(QueueConfig::default()).await;
    let call = add::call(2, 3);
    assert_eq!(
        (call.task_name.as_str(), call.args.clone()),
        ("add", vec![json!(2), json!(3)])
    );
    assert_eq!(
        call.add(&app)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap()
            .returning,
        Some(json!(5))
    );

    let records = qtasks::chain([add::call(2, 2), add::call_with(4), add::call_with(8)])
        .run(&app, WAIT)
        .await
        .unwrap();
    let results: Vec<_> = records
        .iter()
        .map(|r| r.returning.clone().unwrap())
        .collect();
    assert_eq!(results, [json!(4), json!(8), json!(16)]);
    assert_eq!(
        records[2].args,
        [json!(8), json!(8)],
        "the previous result is the last argument"
    );

    let records = qtasks::chain([add::call(60, 50), add::call_with(1)])
        .run(&app, WAIT)
        .await
        .unwrap();
    assert_eq!(records.len(), 1, "the chain stops at the first failure");
    assert_eq!(records[0].status, TaskStatus::Error);
    app.stop().await.unwrap();
}

// -- Routers and separate apps --------------------------------------------------------------------

#[qtasks::task(router = "billing")]
async fn invoice(n: u32) -> u32 {
    n
}

struct Answers(i64);

impl Plugin for Answers {
    async fn trigger(&self, event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
        Ok(matches!(event, TriggerEvent::TaskExecutorRunTask(_)).then(|| Reply::value(self.0)))
    }
}

#[tokio::test]
async fn an_app_runs_its_routers_tasks_and_apps_do_not_share_plugins_or_results() {
    // A task of another router is handed back for a worker that runs it; with no hand-backs
    // allowed, it is set aside at once.
    let billing = QueueTasks::builder()
        .config(QueueConfig {
            unknown_task_hand_backs: 0,
            ..QueueConfig::default()
        })
        .routers(["billing"])
        .build();
    billing.start().await.unwrap();
    assert_eq!(
        invoice::add_task(&billing, 3)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap()
            .returning,
        Some(json!(3))
    );
    let other = add::add_task(&billing, 1, 1)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let reason = other.traceback.unwrap();
    assert!(
        reason.starts_with("UnknownTask: task `add` belongs to a router this worker does not run")
            && reason.contains("dead letters"),
        "not one of the app's routers: {reason}"
    );
    billing.stop().await.unwrap();

    let first = QueueTasks::new();
    let second = QueueTasks::new();
    first
        .add_plugin(Answers(1), &[Trigger::TaskExecutorRunTask])
        .unwrap();
    second
        .add_plugin(Answers(2), &[Trigger::TaskExecutorRunTask])
        .unwrap();
    first.start().await.unwrap();
    second.start().await.unwrap();
    let a = add::add_task(&first, 1, 1)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let b = add::add_task(&second, 1, 1)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        (a.returning, b.returning),
        (Some(json!(1)), Some(json!(2))),
        "each app's own plugin"
    );
    assert_eq!(
        second.get(a.uuid).await.unwrap(),
        None,
        "results are the app's own"
    );
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

// -- The test harness -----------------------------------------------------------------------------

#[qtasks::task(echo = true)]
async fn asks_for_help(ctx: TaskContext, n: i64) -> TaskResult<i64> {
    if n < 0 {
        return Err(ctx.plugin_error().with("message", "negative").into());
    }
    Ok(n)
}

struct Helps;

impl Plugin for Helps {
    async fn trigger(&self, event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
        Ok(
            matches!(event, TriggerEvent::TaskExecutorRunTaskTriggerError(_))
                .then(|| Reply::value(0)),
        )
    }
}

#[tokio::test]
async fn the_test_harness_runs_a_task_through_the_executor_and_plugins_without_a_broker() {
    let app = QueueTasks::new(); // never started: no worker, nothing queued
    assert_eq!(
        qtasks::testing::run(&app, asks_for_help::call(5))
            .await
            .unwrap(),
        Outcome::Success(json!(5))
    );
    let unhandled = qtasks::testing::run(&app, asks_for_help::call(-1))
        .await
        .unwrap();
    assert_eq!(
        unhandled,
        Outcome::Error("TaskPluginTriggerError: negative".into())
    );
    app.add_plugin(Helps, &[Trigger::TaskExecutorRunTaskTriggerError])
        .unwrap();
    assert_eq!(
        qtasks::testing::run(&app, asks_for_help::call(-1))
            .await
            .unwrap(),
        Outcome::Success(json!(0))
    );
    assert_eq!(
        app.get_all().await.unwrap(),
        Vec::new(),
        "nothing was stored"
    );
}

// -- Stopping: the stop timeout and stop_now hand interrupted tasks back --------------------------

static SLOW_THEN_FAST_RUNS: AtomicU32 = AtomicU32::new(0);

/// Slow on its first run, instant after: shows a handed-back task running again.
#[qtasks::task]
async fn slow_then_fast() -> u32 {
    let run = SLOW_THEN_FAST_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    if run == 1 {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    run
}

#[tokio::test]
async fn a_stop_that_cannot_wait_hands_running_tasks_back_to_the_queue() {
    let app = QueueTasks::with_config(QueueConfig {
        name: "stop_timeout".into(),
        stop_timeout: 0.2, // a minute-long task will not finish in time
        ..Default::default()
    });
    app.start().await.unwrap();
    let task = slow_then_fast::add_task(&app).await.unwrap();
    wait_for_status(&app, task.uuid(), TaskStatus::Process).await;
    app.stop().await.unwrap(); // returns after the stop timeout, not after a minute
    let record = task.get().await.unwrap().unwrap();
    assert_eq!(
        record.status,
        TaskStatus::New,
        "handed back, not cancelled or lost"
    );
    app.start().await.unwrap();
    let done = task.wait(WAIT).await.unwrap();
    assert_eq!(done.returning, Some(json!(2)), "it ran again");

    app.stop().await.unwrap();
}

static SLOW_ONCE_RUNS: AtomicU32 = AtomicU32::new(0);

#[qtasks::task]
async fn slow_once() -> u32 {
    let run = SLOW_ONCE_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    if run == 1 {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    run
}

#[tokio::test]
async fn stop_now_hands_running_tasks_back_without_waiting() {
    let app = QueueTasks::with_config(QueueConfig {
        name: "stop_now".into(),
        ..Default::default() // a 30 s stop timeout: `stop_now` does not wait for it
    });
    app.start().await.unwrap();
    let task = slow_once::add_task(&app).await.unwrap();
    wait_for_status(&app, task.uuid(), TaskStatus::Process).await;
    app.stop_now().await.unwrap();
    assert_eq!(task.get().await.unwrap().unwrap().status, TaskStatus::New);
    app.start().await.unwrap();
    assert_eq!(task.wait(WAIT).await.unwrap().returning, Some(json!(2)));
    app.stop().await.unwrap();
}
