//! The Redis backend with real worker processes: no task lost when a worker is killed, none
//! run twice while its worker lives, exactly once across several workers, and priorities across
//! the whole queue.

#![cfg(unix)]

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::{AddOptions, QueueTasks, TaskStatus};
use qtasks_test_support::WAIT;
use qtasks_test_support::redis::raw_connection;
use qtasks_test_support::redis::redis_app;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use redis::AsyncCommands;
use serde_json::json;

/// A worker process, killed (SIGKILL) when dropped unless stopped first.
struct Worker(Child);

impl Worker {
    fn spawn(prefix: &str, lease_ms: u64, concurrency: usize) -> Self {
        Self::spawn_with(prefix, lease_ms, concurrency, &[])
    }

    fn spawn_with(prefix: &str, lease_ms: u64, concurrency: usize, env: &[(&str, &str)]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_qtasks-test-redis-worker"))
            .args([prefix, &lease_ms.to_string(), &concurrency.to_string()])
            .envs(env.iter().copied())
            .spawn()
            .expect("the worker binary starts");
        Worker(child)
    }

    fn kill(mut self) {
        self.0.kill().expect("SIGKILL is delivered");
        self.0.wait().expect("the killed worker is reaped");
    }

    fn stop(mut self) {
        let pid = self.0.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        let status = self.0.wait().expect("the worker exits");
        assert!(
            status.success(),
            "the worker stopped gracefully: {status:?}"
        );
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn runs(url: &str, prefix: &str) -> HashMap<String, i64> {
    raw_connection(url)
        .await
        .hgetall(format!("{prefix}:test:runs"))
        .await
        .unwrap()
}

async fn wait_until_started(url: &str, prefix: &str, label: &str) {
    for _ in 0..3000 {
        if runs(url, prefix).await.contains_key(label) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("task {label} never started");
}

async fn client(url: &str, prefix: &str) -> QueueTasks {
    redis_app(url, prefix, RedisOptions::default(), 1).await
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_task_of_a_killed_worker_runs_again_on_a_live_worker() {
    let Some(url) = redis_url("a_task_of_a_killed_worker_runs_again_on_a_live_worker") else {
        return;
    };
    let prefix = unique_prefix("sigkill");
    let app = client(&url, &prefix).await;
    // Two workers run from the start; nothing is started or restarted after the kill.
    let mut workers = vec![
        Worker::spawn(&prefix, 1500, 1),
        Worker::spawn(&prefix, 1500, 1),
    ];
    let task = app
        .add_task("record_run", ("victim", 3000), ())
        .await
        .unwrap();
    wait_until_started(&url, &prefix, "victim").await;

    let pid = |label: &'static str| {
        let url = url.clone();
        let prefix = prefix.clone();
        async move {
            let pids: HashMap<String, u32> = raw_connection(&url)
                .await
                .hgetall(format!("{prefix}:test:pid"))
                .await
                .unwrap();
            pids[label]
        }
    };
    let first = pid("victim").await;
    let holder = workers
        .iter()
        .position(|w| w.0.id() == first)
        .expect("one of ours runs it");
    workers.remove(holder).kill(); // mid-task: the task is leased to a dead worker

    let done = task.wait(WAIT).await.unwrap();
    assert_eq!(
        (done.status, done.returning),
        (TaskStatus::Success, Some(json!("victim")))
    );
    assert_eq!(
        runs(&url, &prefix).await["victim"],
        2,
        "started once on each worker"
    );
    assert_eq!(
        pid("victim").await,
        workers[0].0.id(),
        "the live worker ran it again"
    );
    workers.remove(0).stop();
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_task_held_by_a_live_worker_is_never_taken_twice() {
    let Some(url) = redis_url("a_task_held_by_a_live_worker_is_never_taken_twice") else {
        return;
    };
    let prefix = unique_prefix("longtask");
    let app = client(&url, &prefix).await;
    // The task runs for four lease times while another worker keeps looking for expired leases.
    let workers = [
        Worker::spawn(&prefix, 1000, 2),
        Worker::spawn(&prefix, 1000, 2),
    ];
    let long = app
        .add_task("record_run", ("long", 4000), ())
        .await
        .unwrap();
    let mut short = Vec::new();
    for i in 0..20 {
        short.push(
            app.add_task("record_run", (format!("short{i}"), 100), ())
                .await
                .unwrap(),
        );
    }
    assert_eq!(long.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    for handle in short {
        assert_eq!(handle.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    }
    let runs = runs(&url, &prefix).await;
    assert_eq!(runs.len(), 21);
    assert!(
        runs.values().all(|n| *n == 1),
        "every task ran once: {runs:?}"
    );
    for worker in workers {
        worker.stop();
    }
    app.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn ten_thousand_tasks_across_three_workers_run_exactly_once() {
    let Some(url) = redis_url("ten_thousand_tasks_across_three_workers_run_exactly_once") else {
        return;
    };
    let prefix = unique_prefix("tenk");
    let app = client(&url, &prefix).await;
    let workers = [
        Worker::spawn(&prefix, 30_000, 10),
        Worker::spawn(&prefix, 30_000, 10),
        Worker::spawn(&prefix, 30_000, 10),
    ];
    let mut handles = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        handles.push(
            app.add_task("record_run", (format!("t{i}"), 0), ())
                .await
                .unwrap(),
        );
    }
    for handle in handles {
        assert_eq!(handle.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    }
    let runs = runs(&url, &prefix).await;
    assert_eq!(runs.len(), 10_000);
    let repeated: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        repeated.is_empty(),
        "tasks run more than once: {repeated:?}"
    );
    for worker in workers {
        worker.stop();
    }
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn priorities_hold_across_worker_processes() {
    let Some(url) = redis_url("priorities_hold_across_worker_processes") else {
        return;
    };
    let prefix = unique_prefix("prioprocs");
    let app = client(&url, &prefix).await;
    let mut expected = Vec::new();
    let mut handles = Vec::new();
    for i in 0..40_i64 {
        let priority = (i * 7) % 5; // mixed, with repeats
        let label = format!("p{priority}-{i:02}");
        expected.push((priority, i, label.clone()));
        let options = AddOptions::default().priority(priority);
        handles.push(
            app.add_task_with("record_run", (label, 50), (), options)
                .await
                .unwrap(),
        );
    }
    let workers = [
        Worker::spawn(&prefix, 30_000, 1),
        Worker::spawn(&prefix, 30_000, 1),
    ];
    for handle in handles {
        assert_eq!(handle.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    }
    expected.sort();
    let rank: HashMap<String, usize> = expected
        .into_iter()
        .enumerate()
        .map(|(rank, (_, _, label))| (label, rank))
        .collect();
    let order: Vec<String> = raw_connection(&url)
        .await
        .lrange(format!("{prefix}:test:order"), 0, -1)
        .await
        .unwrap();
    assert_eq!(order.len(), 40);
    // Two workers take tasks in exact (priority, arrival) order; the order in which they
    // *record* their start may swap neighbours.
    for (position, label) in order.iter().enumerate() {
        let displacement = rank[label].abs_diff(position);
        assert!(
            displacement <= 2,
            "{label} ran at {position}, expected near {}: {order:?}",
            rank[label]
        );
    }
    for worker in workers {
        worker.stop();
    }
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn cancel_reaches_a_task_running_in_another_process() {
    let Some(url) = redis_url("cancel_reaches_a_task_running_in_another_process") else {
        return;
    };
    let prefix = unique_prefix("xcancel");
    let app = client(&url, &prefix).await;
    let worker = Worker::spawn(&prefix, 30_000, 1);
    let task = app
        .add_task("record_run", ("slow", 30_000), ())
        .await
        .unwrap();
    wait_until_started(&url, &prefix, "slow").await;
    assert!(
        app.cancel(task.uuid(), "stopped from another process")
            .await
            .unwrap()
    );
    let done = task.wait(WAIT).await.unwrap();
    assert_eq!(
        (done.status, done.cancel_reason.as_deref()),
        (TaskStatus::Cancel, Some("stopped from another process"))
    );
    worker.stop();
    app.flush_all().await.unwrap();
}

/// Counts the uuids in the "done" messages per task on the app's channel: one per recorded
/// outcome.
async fn count_outcomes(
    url: &str,
    prefix: &str,
) -> std::sync::Arc<std::sync::Mutex<HashMap<String, u32>>> {
    use futures_util::StreamExt;
    let counts = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let mut pubsub = redis::Client::open(url)
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pubsub
        .subscribe(format!("{prefix}:qtasks:done"))
        .await
        .unwrap();
    let sink = std::sync::Arc::clone(&counts);
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            // One uuid, or a finish batch's uuids separated by spaces.
            let uuids: String = message.get_payload().unwrap();
            for uuid in uuids.split(' ') {
                *sink.lock().unwrap().entry(uuid.to_owned()).or_insert(0) += 1;
            }
        }
    });
    counts
}

fn signal(worker: &Worker, name: &str) {
    let status = Command::new("kill")
        .args([name, &worker.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {name} was delivered");
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_worker_stalled_past_its_lease_records_nothing_and_the_new_holder_records_once() {
    let Some(url) = redis_url("a_worker_stalled_past_its_lease_records_nothing") else {
        return;
    };
    let prefix = unique_prefix("stall");
    let app = client(&url, &prefix).await;
    let outcomes = count_outcomes(&url, &prefix).await;
    let stalled = Worker::spawn(&prefix, 1000, 4);
    let labels: Vec<String> = (0..4).map(|i| format!("stall{i}")).collect();
    let mut handles = Vec::new();
    for label in &labels {
        handles.push(app.add_task("record_run", (label, 3000), ()).await.unwrap());
    }
    for label in &labels {
        wait_until_started(&url, &prefix, label).await;
    }
    // The first worker freezes (as a paused process or a starved runtime would) past its
    // 1 s lease; a second one takes its tasks over. Barrier: all four started again there.
    signal(&stalled, "-STOP");
    let takeover = Worker::spawn(&prefix, 1000, 4);
    for _ in 0..3000 {
        let runs = runs(&url, &prefix).await;
        if labels.iter().all(|label| runs.get(label) == Some(&2)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&stalled, "-CONT");
    for handle in handles {
        let done = handle.wait(WAIT).await.unwrap();
        assert_eq!(done.status, TaskStatus::Success);
    }
    // Barrier: a gracefully stopped worker has finished (and tried to record) every run.
    stalled.stop();
    takeover.stop();
    let runs = runs(&url, &prefix).await;
    for label in &labels {
        assert_eq!(
            runs[label], 2,
            "{label} started on both workers (the stall forced it)"
        );
    }
    // Every task has exactly one recorded outcome: the stalled worker's late ones were refused.
    // (Its subscription may lag a moment behind the last write.)
    for _ in 0..100 {
        if outcomes.lock().unwrap().len() == labels.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcomes = outcomes.lock().unwrap().clone();
    assert_eq!(outcomes.len(), labels.len(), "{outcomes:?}");
    assert!(
        outcomes.values().all(|n| *n == 1),
        "one outcome per task: {outcomes:?}"
    );
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_cancel_racing_a_take_always_wins_and_nothing_overwrites_it() {
    let Some(url) = redis_url("a_cancel_racing_a_take_always_wins") else {
        return;
    };
    let prefix = unique_prefix("cancelrace");
    let app = client(&url, &prefix).await;
    // Two worker processes take as fast as they can while each task is cancelled right after it
    // is added: some are cancelled while they wait, some just after a worker took them.
    let workers = [
        Worker::spawn(&prefix, 30_000, 8),
        Worker::spawn(&prefix, 30_000, 8),
    ];
    let mut handles = Vec::new();
    for i in 0..60 {
        let handle = app
            .add_task("record_run", (format!("race{i}"), 20_000), ())
            .await
            .unwrap();
        assert!(
            app.cancel(handle.uuid(), "raced").await.unwrap(),
            "told it was cancelled"
        );
        handles.push(handle);
    }
    for handle in handles {
        let done = handle.wait(WAIT).await.unwrap();
        assert_eq!(
            (done.status, done.cancel_reason.as_deref()),
            (TaskStatus::Cancel, Some("raced")),
            "a cancelled task ends cancelled, whoever took it"
        );
    }
    // A finished task keeps its status.
    let finished = app.add_task("record_run", ("done", 0), ()).await.unwrap();
    assert_eq!(
        finished.wait(WAIT).await.unwrap().status,
        TaskStatus::Success
    );
    assert!(!app.cancel(finished.uuid(), "too late").await.unwrap());
    assert_eq!(
        finished.get().await.unwrap().unwrap().status,
        TaskStatus::Success
    );
    for worker in workers {
        worker.stop();
    }
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_worker_past_its_stop_timeout_hands_its_tasks_to_another_at_once() {
    let Some(url) = redis_url("a_worker_past_its_stop_timeout_hands_its_tasks_back") else {
        return;
    };
    let prefix = unique_prefix("handback");
    let app = client(&url, &prefix).await;
    // A minute-long lease: waiting for it to run out would outlast this test's waits.
    let stopping = Worker::spawn_with(&prefix, 60_000, 1, &[("QTASKS_STOP_TIMEOUT", "0.3")]);
    let task = app
        .add_task("record_run", ("handed", 20_000), ())
        .await
        .unwrap();
    wait_until_started(&url, &prefix, "handed").await;
    let other = Worker::spawn(&prefix, 60_000, 1);
    stopping.stop(); // SIGTERM; the task cannot finish within 0.3 s
    // The other worker starts it again at once (not a minute later); barrier: its second start.
    for _ in 0..3000 {
        if runs(&url, &prefix).await.get("handed") == Some(&2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(runs(&url, &prefix).await["handed"], 2);
    assert_eq!(
        task.get().await.unwrap().unwrap().status,
        TaskStatus::Process
    );
    app.cancel(task.uuid(), "done testing").await.unwrap();
    assert_eq!(task.wait(WAIT).await.unwrap().status, TaskStatus::Cancel);
    other.stop();
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn three_workers_fire_each_of_20_slots_once_even_when_one_is_killed() {
    let Some(url) = redis_url("three_workers_fire_each_of_20_slots_once_even_when_one_is_killed")
    else {
        return;
    };
    let prefix = unique_prefix("sched3");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let from = now.as_secs() + 3;
    let from_text = from.to_string();
    let env = [
        ("QTASKS_TEST_SCHEDULE_FROM", from_text.as_str()),
        ("QTASKS_TEST_SCHEDULE_SLOTS", "20"),
    ];
    let mut workers: Vec<Worker> = (0..3)
        .map(|_| Worker::spawn_with(&prefix, 2000, 2, &env))
        .collect();
    // Half way, between two slots, one worker dies without a word.
    let until = |secs_after_from: f64| {
        let target = std::time::UNIX_EPOCH + Duration::from_secs_f64(from as f64 + secs_after_from);
        target
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
    };
    tokio::time::sleep(until(10.5)).await;
    workers.remove(0).kill();
    tokio::time::sleep(until(22.0)).await;
    let ticks = runs(&url, &prefix).await.get("tick").copied().unwrap_or(0);
    assert_eq!(ticks, 20, "each of the 20 slots fired once");
    for worker in workers {
        worker.stop();
    }
    client(&url, &prefix).await.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_worker_whose_clock_is_an_hour_behind_is_listed_while_it_lives() {
    let Some(url) = redis_url("a_worker_whose_clock_is_an_hour_behind") else {
        return;
    };
    let Some(faketime) = qtasks_test_support::faketime() else {
        return;
    };
    let prefix = unique_prefix("clock");
    let app = client(&url, &prefix).await;
    // Its own clock says an hour ago: listing by the workers' clocks dropped it at once.
    let behind = Worker::spawn_with(
        &prefix,
        2000,
        1,
        &[
            ("LD_PRELOAD", faketime),
            ("FAKETIME", "-1h"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let pid = behind.0.id();
    let mut listed = false;
    for _ in 0..500 {
        let workers = app.stats().await.unwrap().workers;
        if workers.iter().any(|worker| worker.pid == pid) {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(listed, "the worker an hour behind is listed while it runs");
    // And it takes tasks like any other.
    let task = app.add_task("record_run", ("behind", 0), ()).await.unwrap();
    assert_eq!(task.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    behind.stop();
    app.flush_all().await.unwrap();
}
