//! RabbitMQ (with Redis storage) with worker processes of the test worker binary
//! (`tests/bin/redis_worker.rs`): a worker killed mid-task, a worker whose clock is an hour
//! behind, RabbitMQ itself paused, killed and restarted.

#![cfg(unix)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use qtasks::TaskStatus;
use qtasks_test_support::WAIT;
use qtasks_test_support::amqp::{app, services};
use qtasks_test_support::amqp_url;
use qtasks_test_support::redis::raw_connection;
use qtasks_test_support::unique_prefix;
use redis::AsyncCommands;
use serde_json::json;
use support::WorkerProcess;

/// A worker process on RabbitMQ (the test worker with `QTASKS_TEST_WORKER_AMQP`).
fn amqp_worker(prefix: &str, amqp: &str, concurrency: usize) -> WorkerProcess {
    WorkerProcess::spawn(
        prefix,
        30_000,
        concurrency,
        &[("QTASKS_TEST_WORKER_AMQP", amqp)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn the_unacked_tasks_of_a_killed_worker_run_on_another_and_none_is_lost() {
    let Some((amqp, redis)) = services("the_unacked_tasks_of_a_killed_worker_run_on_another")
    else {
        return;
    };
    let prefix = unique_prefix("amqp_sigkill");
    let client = app(&amqp, &redis, &prefix, 1).await;
    let started = std::time::Instant::now();
    let mut handles = Vec::new();
    for i in 0..40 {
        handles.push(
            client
                .add_task("record_run", (format!("t{i}"), 300), ())
                .await
                .unwrap(),
        );
    }
    let mut victim = amqp_worker(&prefix, &amqp, 4);
    let mut con = raw_connection(&redis).await;
    // Wait until the victim has started some tasks, then kill it mid-task.
    for _ in 0..3000 {
        let started: usize = con.hlen(format!("{prefix}:test:runs")).await.unwrap();
        if started >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    let in_flight: HashMap<String, u32> = con.hgetall(format!("{prefix}:test:runs")).await.unwrap();
    let _survivor = amqp_worker(&prefix, &amqp, 4);

    for handle in &handles {
        let record = handle.wait(WAIT).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    }
    let runs: HashMap<String, u32> = con.hgetall(format!("{prefix}:test:runs")).await.unwrap();
    assert_eq!(runs.len(), 40, "every task ran");
    let again = runs.values().filter(|n| **n == 2).count();
    eprintln!(
        "sigkill: 40 tasks, 0 lost, {} started before the kill, {again} ran again, in {:.1?}",
        in_flight.len(),
        started.elapsed()
    );
    assert!(
        again >= 1 && runs.values().all(|n| *n <= 2),
        "the killed worker's tasks ran again, nothing more: {runs:?} (started before the kill: {in_flight:?})"
    );
    // Only tasks the victim had started ran twice.
    for (label, n) in &runs {
        if *n == 2 {
            assert!(in_flight.contains_key(label), "{label} ran twice");
        }
    }
    client.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_delay_is_timed_by_rabbitmq_not_by_a_worker_clock_an_hour_behind() {
    let Some((amqp, redis)) = services("a_delay_is_timed_by_rabbitmq") else {
        return;
    };
    let Some(faketime) = qtasks_test_support::faketime() else {
        return;
    };
    let prefix = unique_prefix("amqp_clock");
    let client = app(&amqp, &redis, &prefix, 1).await;
    // Its clock an hour behind: timing the delay by the message's `run_at` against it held
    // the task for an hour and two seconds.
    let _behind = WorkerProcess::spawn(
        &prefix,
        30_000,
        1,
        &[
            ("QTASKS_TEST_WORKER_AMQP", &amqp),
            ("LD_PRELOAD", faketime),
            ("FAKETIME", "-1h"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let delayed = qtasks::AddOptions::default().delay(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let task = client
        .add_task_with("record_run", ("late", 0), (), delayed)
        .await
        .unwrap();
    let record = task.wait(WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Success);
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "ran before its delay: {:?}",
        started.elapsed()
    );
    client.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ (QTASKS_TEST_AMQP_URL)"]
async fn rabbitmq_paused_then_killed_and_restarted_loses_nothing() {
    use qtasks_test_support::OwnRabbitMq;
    use qtasks_test_support::{OwnRedis, recorded_outcomes};
    let Some(_) = amqp_url("rabbitmq_paused_then_killed_and_restarted") else {
        return;
    };
    if !OwnRabbitMq::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "a RabbitMQ node of the test's own needs rabbitmq-server and root"
        );
        qtasks_test_support::services::skipped(
            "rabbitmq_paused_then_killed_and_restarted",
            "a RabbitMQ node of the test's own needs rabbitmq-server and root",
        );
        return;
    }
    // Its own node (the shared one is never stopped) and its own Redis for the records,
    // whose append-only file tells how many outcomes each task recorded.
    let rabbit = OwnRabbitMq::start("rabbit_restart");
    let redis = OwnRedis::start("rabbit_restart_records", true);
    let (amqp, url) = (rabbit.url(), redis.url());
    let prefix = unique_prefix("amqp_restart");
    let log = redis.dir.join("executions.log");
    let log_text = log.to_string_lossy().into_owned();
    let client = app(&amqp, &url, &prefix, 1).await;
    let workers: Vec<WorkerProcess> = (0..2)
        .map(|_| {
            WorkerProcess::spawn(
                &prefix,
                30_000,
                4,
                &[
                    ("QTASKS_TEST_WORKER_AMQP", &amqp),
                    ("QTASKS_TEST_REDIS_URL", &url),
                    ("QTASKS_TEST_EXEC_LOG", &log_text),
                ],
            )
        })
        .collect();
    // Adds go on through the faults; one that fails is tried again (its uuid kept, so a
    // retried add whose first reply was lost adds nothing).
    let rabbit = Arc::new(rabbit);
    let mut faults = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..600 {
        let node = Arc::clone(&rabbit);
        match i {
            // Paused for 3 s, then killed and started again from its disk 2 s later (the
            // node takes its time to boot: adds wait meanwhile).
            150 => faults.push(tokio::task::spawn_blocking(move || {
                node.signal("-STOP");
                std::thread::sleep(Duration::from_secs(3));
                node.signal("-CONT");
            })),
            350 => faults.push(tokio::task::spawn_blocking(move || {
                node.kill();
                std::thread::sleep(Duration::from_secs(2));
                node.launch();
            })),
            _ => {}
        }
        let label = format!("t{i}");
        let once = qtasks::AddOptions::default().uuid(qtasks::Uuid::new_v4());
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let handle = loop {
            match client
                .add_task_with("log_run", (&label, 20), (), once.clone())
                .await
            {
                Ok(handle) => break handle,
                Err(error) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "adding {label}: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        tasks.push((handle.uuid(), label));
        if i % 50 == 0 {
            // Time for the workers to drain some while the faults come.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for fault in faults {
        fault.await.unwrap();
    }
    for (uuid, label) in &tasks {
        let record = client
            .wait(*uuid, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{label} ({uuid}) never ended: {e}"));
        assert_eq!(
            (record.status, record.returning),
            (TaskStatus::Success, Some(json!(label))),
            "{label}"
        );
    }
    let outcomes = recorded_outcomes(&redis, &prefix);
    let twice: Vec<_> = outcomes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "outcomes recorded twice: {twice:?}");
    let runs = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "rabbitmq restart: {} tasks, {} runs",
        tasks.len(),
        runs.lines().count()
    );
    drop(workers);
    client.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn on_rabbitmq_each_worker_process_takes_only_the_queues_it_serves() {
    let Some((amqp, redis)) = services("on_rabbitmq_each_worker_process_takes_only_its_queues")
    else {
        return;
    };
    let prefix = unique_prefix("amqp_queues");
    let client = app(&amqp, &redis, &prefix, 1).await;
    let billing = WorkerProcess::spawn(
        &prefix,
        30_000,
        4,
        &[
            ("QTASKS_TEST_WORKER_AMQP", &amqp),
            ("QTASKS_QUEUES", "billing"),
        ],
    );
    let default = WorkerProcess::spawn(
        &prefix,
        30_000,
        4,
        &[
            ("QTASKS_TEST_WORKER_AMQP", &amqp),
            ("QTASKS_QUEUES", "default"),
        ],
    );
    let mut handles = Vec::new();
    for i in 0..30 {
        let label = format!("b{i}");
        let billed = client
            .add_task_with(
                "record_run",
                (&label, 5),
                (),
                qtasks::AddOptions::default().queue("billing"),
            )
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
    let mut con = raw_connection(&redis).await;
    let pids: HashMap<String, u32> = con.hgetall(format!("{prefix}:test:pid")).await.unwrap();
    let runs: HashMap<String, u32> = con.hgetall(format!("{prefix}:test:runs")).await.unwrap();
    for (label, _) in &handles {
        let expected = if label.starts_with('b') {
            billing.0.id()
        } else {
            default.0.id()
        };
        assert_eq!(pids[label], expected, "{label} ran on the wrong worker");
        assert_eq!(runs[label], 1, "{label} ran once");
    }
    // Paused for every process: the billing worker takes none of its tasks until resumed.
    client.queues().pause("billing").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await; // the workers read pauses each second
    let held = client
        .add_task_with(
            "record_run",
            ("held", 0),
            (),
            qtasks::AddOptions::default().queue("billing"),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(held.get().await.unwrap().unwrap().status, TaskStatus::New);
    let queues = client.queues().list().await.unwrap();
    assert!(
        queues["billing"].paused && queues["billing"].waiting == 1,
        "{queues:?}"
    );
    client.queues().resume("billing").await.unwrap();
    assert_eq!(held.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    client.flush_all().await.unwrap();
}
