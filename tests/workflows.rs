//! Durable workflows (`qtasks::workflow`): chains, groups and chords run by the workers, nested,
//! typed, cancelled as a whole, resumed from their id; on Redis with the caller gone and a
//! worker killed half-way.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use qtasks::workflow::{StepFailure, flow, parallel};
use qtasks::{QueueTasks, TaskError, TaskFailure, TaskResult, TaskStatus};
use qtasks_test_support::redis::redis_app;
use qtasks_test_support::{WAIT, redis_url, unique_prefix};

/// Appends `label` to the trail it is given.
#[qtasks::task]
async fn step(label: String, trail: Vec<String>) -> Vec<String> {
    let mut trail = trail;
    trail.push(label);
    trail
}

#[qtasks::task]
async fn begin(label: String) -> Vec<String> {
    vec![label]
}

#[qtasks::task]
async fn merge(trails: Vec<Vec<String>>) -> Vec<String> {
    trails.concat()
}

#[qtasks::task]
async fn length(trail: Vec<String>) -> usize {
    trail.len()
}

#[qtasks::task]
async fn explode(trail: Vec<String>) -> TaskResult<Vec<String>> {
    Err(TaskError::msg(format!("no further than {trail:?}")))
}

static FAILURES_SEEN: AtomicU64 = AtomicU64::new(0);

#[qtasks::task]
async fn report(note: String, failure: StepFailure) -> String {
    FAILURES_SEEN.fetch_add(1, Ordering::SeqCst);
    format!("{note}: {} failed at {}", failure.task_name, failure.step)
}

static FLAKY_RUNS: AtomicU64 = AtomicU64::new(0);

#[qtasks::task(retry = 2)]
async fn flaky_step(trail: Vec<String>) -> TaskResult<Vec<String>> {
    if FLAKY_RUNS.fetch_add(1, Ordering::SeqCst) == 0 {
        return Err(TaskError::msg("the first attempt fails"));
    }
    let mut trail = trail;
    trail.push("flaky".to_owned());
    Ok(trail)
}

#[qtasks::task]
async fn linger(ms: u64, trail: Vec<String>) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    trail
}

fn trail(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|label| (*label).to_owned()).collect()
}

#[tokio::test]
async fn groups_and_chains_nest_and_results_are_typed_end_to_end() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    // a, then side by side: (b1 then c1) and b2 and (a chord: d1, d2 then merge), then merge.
    let chord = parallel([step::call_with("d1".into()), step::call_with("d2".into())])
        .then(merge::call_with());
    let fan_out = parallel([
        flow(step::call_with("b1".into())).then(step::call_with("c1".into())),
        flow(step::call_with("b2".into())),
        chord,
    ]);
    let handle = flow(begin::call("a".into()))
        .then(fan_out)
        .then(merge::call_with())
        .add(&app)
        .await
        .unwrap();
    let merged: Vec<String> = handle.result(WAIT).await.unwrap();
    assert_eq!(
        merged,
        trail(&["a", "b1", "c1", "a", "b2", "a", "d1", "a", "d2"])
    );
    assert_eq!(handle.status().await.unwrap(), Some(TaskStatus::Success));
    // The result type follows the flow: a chain ending in `length` is a `usize`.
    let counted = flow(begin::call("x".into()))
        .then(step::call_with("y".into()))
        .then(length::call_with())
        .add(&app)
        .await
        .unwrap();
    let n: usize = counted.result(WAIT).await.unwrap();
    assert_eq!(n, 2);
    // Any handle on the id reads the same; an unknown id is not found.
    let again = app.workflow::<Vec<String>>(handle.id());
    assert_eq!(again.result(WAIT).await.unwrap(), merged);
    let unknown = app.workflow::<usize>(qtasks::Uuid::new_v4());
    assert!(matches!(
        unknown.result(WAIT).await,
        Err(TaskFailure::NotFound { .. })
    ));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_step_ends_the_workflow_and_its_error_callback_runs_once() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let handle = flow(begin::call("a".into()))
        .then(parallel([
            flow(explode::call_with()),
            flow(step::call_with("fine".into())),
        ]))
        .then(merge::call_with())
        .on_error(report::call_with("nightly".into()))
        .add(&app)
        .await
        .unwrap();
    let failure = handle.result(WAIT).await.unwrap_err();
    match &failure {
        TaskFailure::Error { message, .. } => {
            assert!(message.contains("no further than"), "{failure}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(handle.status().await.unwrap(), Some(TaskStatus::Error));
    let failed = handle.failed_step().await.unwrap().unwrap();
    assert_eq!(
        (failed.task_name.as_str(), failed.step.as_str()),
        ("explode", "1.0")
    );
    // The error callback ran, once, with the failure.
    let deadline = std::time::Instant::now() + WAIT;
    while FAILURES_SEEN.load(Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the error callback never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(FAILURES_SEEN.load(Ordering::SeqCst), 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_retried_step_moves_the_workflow_on_from_its_last_attempt() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let handle = flow(begin::call("a".into()))
        .then(flaky_step::call_with())
        .then(step::call_with("after".into()))
        .add(&app)
        .await
        .unwrap();
    let done: Vec<String> = handle.result(WAIT).await.unwrap();
    assert_eq!(done, trail(&["a", "flaky", "after"]));
    assert_eq!(FLAKY_RUNS.load(Ordering::SeqCst), 2);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_workflow_cancelled_as_a_whole_stops_its_running_step_and_adds_no_more() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let handle = flow(begin::call("a".into()))
        .then(linger::call_with(30_000))
        .then(step::call_with("never".into()))
        .add(&app)
        .await
        .unwrap();
    // Wait for the long step to run.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let running = app.stats().await.unwrap().queue.unwrap().running;
        if running == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the step never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(handle.cancel("not needed").await.unwrap());
    assert!(!handle.cancel("again").await.unwrap(), "it ended already");
    match handle.result(WAIT).await {
        Err(TaskFailure::Cancelled { reason, .. }) => assert_eq!(reason, "not needed"),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = app.stats().await.unwrap().queue.unwrap();
    assert_eq!(stats.running, 0, "the running step was cancelled");
    assert_eq!(
        stats.finished.success, 1,
        "only `begin` succeeded: {stats:?}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_flow_with_a_bad_call_or_an_empty_group_is_refused() {
    let app = QueueTasks::new();
    let empty: Vec<qtasks::TaskCall<qtasks::TaskHandle<Vec<String>>>> = Vec::new();
    let error = flow(begin::call("a".into()))
        .then(parallel(empty))
        .add(&app)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("at least one member"), "{error}");
}

/// The Redis worker binary as a caller: adds the test flow, prints its id, and aborts.
fn add_flow_and_die(prefix: &str) -> qtasks::Uuid {
    let output = Command::new(env!("CARGO_BIN_EXE_qtasks-test-redis-worker"))
        .args([prefix, "1500", "1"])
        .env("QTASKS_TEST_ADD_FLOW", "1")
        .stdout(Stdio::piped())
        .output()
        .expect("the caller runs");
    assert!(!output.status.success(), "the caller aborts after the add");
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no workflow id in {text:?}"))
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_workflow_outlives_its_caller_and_a_killed_worker() {
    let Some(url) = redis_url("a_workflow_outlives_its_caller_and_a_killed_worker") else {
        return;
    };
    let prefix = unique_prefix("flow");
    let log = std::env::temp_dir().join(format!("{prefix}.log"));
    let id = add_flow_and_die(&prefix);
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_qtasks-test-redis-worker"))
            .args([prefix.as_str(), "1500", "4"])
            .env("QTASKS_TEST_EXEC_LOG", &log)
            .spawn()
            .unwrap()
    };
    let mut first = spawn();
    // Kill the worker while the slow fan-out steps run.
    let deadline = std::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(" slow1 ")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow step never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let mut heir = spawn();
    let client = redis_app(&url, &prefix, qtasks::redis::RedisOptions::default(), 1).await;
    let result: Vec<String> = client
        .workflow::<Vec<String>>(id)
        .result(Duration::from_secs(60))
        .await
        .unwrap();
    heir.kill().unwrap();
    heir.wait().unwrap();
    assert_eq!(
        result,
        trail(&["start", "slow1", "after1", "start", "slow2"])
    );
    // Steps that ended before the kill ran once; the merge, after it, once.
    let ran = std::fs::read_to_string(&log).unwrap();
    let count = |label: &str| {
        ran.lines()
            .filter(|l| l.split(' ').nth(1) == Some(label))
            .count()
    };
    assert_eq!(count("start"), 1, "{ran}");
    assert_eq!(count("merge"), 1, "{ran}");
    assert!(count("slow1") >= 2, "the killed step ran again: {ran}");
    let _ = std::fs::remove_file(&log);
}
