//! Named queues on Redis, across worker processes: each process takes only the queues it
//! serves, a lease that runs out goes back to its own queue (not to whichever queue the next
//! taker serves), and a rolling deploy loses nothing: a worker that does not know a task hands
//! it back until one that does runs it.
#![cfg(unix)]

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::{AddOptions, QueueConfig, TaskStatus};
use qtasks_test_support::WAIT;
use qtasks_test_support::redis::{raw_connection, redis_app};
use qtasks_test_support::{redis_url, unique_prefix};
use redis::AsyncCommands;
use serde_json::json;

/// A worker process (`qtasks-test-redis-worker`) serving `queues`.
struct Worker(Child);

impl Worker {
    fn spawn(prefix: &str, lease_ms: u64, queues: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_qtasks-test-redis-worker"))
            .args([prefix, &lease_ms.to_string(), "4"])
            .env("QTASKS_QUEUES", queues)
            .spawn()
            .expect("the worker binary starts");
        Worker(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(mut self) {
        self.0.kill().expect("SIGKILL is delivered");
        self.0.wait().expect("the killed worker is reaped");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Which process ran each label last, and how many times each label ran.
async fn ran(url: &str, prefix: &str) -> (HashMap<String, u32>, HashMap<String, i64>) {
    let mut con = raw_connection(url).await;
    let pids: HashMap<String, u32> = con.hgetall(format!("{prefix}:test:pid")).await.unwrap();
    let runs: HashMap<String, i64> = con.hgetall(format!("{prefix}:test:runs")).await.unwrap();
    (pids, runs)
}

fn in_queue(queue: &str) -> AddOptions {
    AddOptions::default().queue(queue)
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn each_worker_process_takes_only_the_queues_it_serves() {
    let Some(url) = redis_url("each_worker_process_takes_only_the_queues_it_serves") else {
        return;
    };
    let prefix = unique_prefix("queues");
    let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let billing = Worker::spawn(&prefix, 5000, "billing");
    let default = Worker::spawn(&prefix, 5000, "default");
    let mut handles = Vec::new();
    for i in 0..40 {
        let label = format!("b{i}");
        let billed = client
            .add_task_with("record_run", (&label, 5), (), in_queue("billing"))
            .await
            .unwrap();
        handles.push((label, billed));
        let label = format!("d{i}");
        let plain = client
            .add_task("record_run", (&label, 5), ())
            .await
            .unwrap();
        handles.push((label, plain));
    }
    for (label, handle) in &handles {
        let record = handle.wait(WAIT).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{label}: {record:?}");
    }
    let (pids, runs) = ran(&url, &prefix).await;
    for (label, _) in &handles {
        let expected = if label.starts_with('b') {
            billing.pid()
        } else {
            default.pid()
        };
        assert_eq!(pids[label], expected, "{label} ran on the wrong worker");
        assert_eq!(runs[label], 1, "{label} ran once");
    }
    let stats = client.stats().await.unwrap().queue.unwrap();
    assert_eq!(stats.queues["billing"].waiting, 0, "{stats:?}");
    client.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_lease_that_runs_out_goes_back_to_its_own_queue() {
    let Some(url) = redis_url("a_lease_that_runs_out_goes_back_to_its_own_queue") else {
        return;
    };
    let prefix = unique_prefix("queue-lease");
    let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let first = Worker::spawn(&prefix, 1500, "billing");
    // Serves the default queue only, and takes (looking at expired leases) all along.
    let bystander = Worker::spawn(&prefix, 1500, "default");
    let victim = client
        .add_task_with("record_run", ("victim", 2500), (), in_queue("billing"))
        .await
        .unwrap();
    for _ in 0..3000 {
        if ran(&url, &prefix).await.1.contains_key("victim") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill(); // mid-task: its lease runs out in the bystander's takes
    // Keep the bystander busy taking default tasks past the lease.
    for i in 0..20 {
        client
            .add_task("record_run", (format!("d{i}"), 100), ())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let record = victim.get().await.unwrap().unwrap();
    assert_ne!(
        record.status,
        TaskStatus::Success,
        "nobody serving billing runs it yet"
    );
    let second = Worker::spawn(&prefix, 1500, "billing");
    let done = victim.wait(WAIT).await.unwrap();
    assert_eq!(done.status, TaskStatus::Success, "{done:?}");
    let (pids, runs) = ran(&url, &prefix).await;
    assert_eq!(
        pids["victim"],
        second.pid(),
        "the billing worker ran it again"
    );
    assert_eq!(runs["victim"], 2, "once on each billing worker");
    assert_ne!(pids["victim"], bystander.pid());
    client.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_rolling_deploy_hands_unknown_tasks_back_until_a_worker_knows_them() {
    let Some(url) =
        redis_url("a_rolling_deploy_hands_unknown_tasks_back_until_a_worker_knows_them")
    else {
        return;
    };
    let prefix = unique_prefix("deploy");
    // The old worker: this test process registers no `record_run`.
    let old = qtasks::redis::connect_with(
        &url,
        QueueConfig {
            name: prefix.clone(),
            max_tasks_process: 4,
            ..QueueConfig::default()
        },
        RedisOptions::default(),
    )
    .await
    .unwrap();
    old.start().await.unwrap();
    let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let mut handles = Vec::new();
    for i in 0..20 {
        handles.push(
            client
                .add_task("record_run", (format!("new{i}"), 0), ())
                .await
                .unwrap(),
        );
    }
    // The old worker takes them and hands them back: none ends.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut handed_back = 0;
    for handle in &handles {
        let record = handle.get().await.unwrap().unwrap();
        assert!(!record.status.is_final(), "{record:?}");
        handed_back += u32::from(record.hand_backs > 0);
    }
    assert!(handed_back > 0, "the old worker handed them back");
    // The new worker joins while the old one still runs: every task runs once, none fails.
    let new = Worker::spawn(&prefix, 5000, "default");
    // A task the old worker keeps winning waits 1 s, 2 s, 4 s ... (up to a minute) between
    // its hand-backs: a few unlucky ones outlast the usual wait.
    for handle in &handles {
        let record = handle.wait(Duration::from_secs(150)).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    }
    let (pids, runs) = ran(&url, &prefix).await;
    for i in 0..20 {
        let label = format!("new{i}");
        assert_eq!(runs[&label], 1, "{label}");
        assert_eq!(pids[&label], new.pid());
    }
    old.stop().await.unwrap();
    client.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn an_unknown_task_is_set_aside_and_a_requeue_runs_it() {
    let Some(url) = redis_url("an_unknown_task_is_set_aside_and_a_requeue_runs_it") else {
        return;
    };
    let prefix = unique_prefix("bury");
    let old = qtasks::redis::connect_with(
        &url,
        QueueConfig {
            name: prefix.clone(),
            unknown_task_hand_backs: 1,
            ..QueueConfig::default()
        },
        RedisOptions::default(),
    )
    .await
    .unwrap();
    old.start().await.unwrap();
    let handle = old
        .add_task_with("record_run", ("late", 0), (), in_queue("reports"))
        .await
        .unwrap();
    // Served by nobody yet: it waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handle.get().await.unwrap().unwrap().status, TaskStatus::New);
    old.stop().await.unwrap();
    let old = qtasks::redis::connect_with(
        &url,
        QueueConfig {
            name: prefix.clone(),
            unknown_task_hand_backs: 1,
            queues: "reports".parse().unwrap(),
            ..QueueConfig::default()
        },
        RedisOptions::default(),
    )
    .await
    .unwrap();
    old.start().await.unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Error);
    let reason = record.traceback.unwrap();
    assert!(
        reason.contains("dead letters") && reason.contains("record_run"),
        "{reason}"
    );
    assert_eq!(record.hand_backs, 1);
    let letters = old.dead_letters().list(10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    old.stop().await.unwrap();

    let new = Worker::spawn(&prefix, 5000, "reports");
    assert!(old.dead_letters().resolve(&letters[0], true).await.unwrap());
    let deadline = tokio::time::Instant::now() + WAIT;
    let record = loop {
        let record = handle.get().await.unwrap().unwrap();
        if record.status == TaskStatus::Success || tokio::time::Instant::now() > deadline {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(record.returning, Some(json!("late")), "{record:?}");
    assert_eq!(record.traceback, None, "the old error is cleared");
    assert_eq!(ran(&url, &prefix).await.0["late"], new.pid());
    old.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_cancel_takes_a_named_queues_delayed_task_out_at_once() {
    let Some(url) = redis_url("a_cancel_takes_a_named_queues_delayed_task_out_at_once") else {
        return;
    };
    let prefix = unique_prefix("queue-cancel");
    let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let later = client
        .add_task_with(
            "record_run",
            ("later", 0),
            (),
            in_queue("reports").delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    let mut con = raw_connection(&url).await;
    let delayed = format!("{prefix}:qtasks:q:reports:delayed");
    let waiting: i64 = con.zcard(&delayed).await.unwrap();
    assert_eq!(waiting, 1);
    assert!(later.cancel("not needed").await.unwrap());
    let left: i64 = con.zcard(&delayed).await.unwrap();
    assert_eq!(left, 0, "the delayed entry went with the cancel");
    let stats = client.stats().await.unwrap().queue.unwrap();
    assert_eq!(stats.queues["reports"].delayed, 0, "{stats:?}");
    client.flush_all().await.unwrap();
}
