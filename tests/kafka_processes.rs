//! Kafka (with Redis storage) with worker processes of the test worker binary
//! (`tests/bin/redis_worker.rs`): a worker SIGKILLed mid-drain, and a second worker joining the
//! group while the first drains (a rebalance).

#![cfg(unix)]

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use qtasks::TaskStatus;
use qtasks_test_support::redis::raw_connection;
use qtasks_test_support::{WAIT, kafka_url, redis_url, unique_prefix};
use redis::AsyncCommands;
use support::WorkerProcess;

/// The group forgets a worker that went silent after this long (the default is 10 s).
const SESSION_MS: &str = "6000";

/// A worker process on Kafka (the test worker with `QTASKS_TEST_WORKER_KAFKA`).
fn kafka_worker(prefix: &str, kafka: &str, concurrency: usize) -> WorkerProcess {
    WorkerProcess::spawn(
        prefix,
        30_000,
        concurrency,
        &[
            ("QTASKS_TEST_WORKER_KAFKA", kafka),
            ("QTASKS_TEST_KAFKA_SESSION_MS", SESSION_MS),
        ],
    )
}

/// A client app (it adds, and never joins the group) on Kafka with Redis records.
async fn client(kafka: &str, redis: &str, prefix: &str) -> qtasks::QueueTasks {
    let config = qtasks::QueueConfig {
        name: prefix.to_owned(),
        ..qtasks::QueueConfig::default()
    };
    qtasks::kafka::connect_with(
        kafka,
        qtasks::redis::Redis::new(redis),
        config,
        qtasks::kafka::KafkaOptions::default(),
    )
    .await
    .expect("connects to Kafka and Redis")
}

/// One test of this file at a time: each starts worker processes and waits on the group's
/// rebalances, and run together on two cores their workers starved each other past tansu's
/// heartbeats (the joining worker of the rebalance test then got no partition in CI).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn services(test: &str) -> Option<(String, String)> {
    Some((kafka_url(test)?, redis_url(test)?))
}

/// Waits until `at_least` runs have started (`record_run` counts them in Redis).
async fn until_started(con: &mut redis::aio::MultiplexedConnection, prefix: &str, at_least: usize) {
    for _ in 0..6000 {
        let started: usize = con.hlen(format!("{prefix}:test:runs")).await.unwrap();
        if started >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fewer than {at_least} tasks started within a minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and Redis (QTASKS_TEST_KAFKA_URL, QTASKS_TEST_REDIS_URL)"]
async fn the_unfinished_tasks_of_a_killed_worker_run_on_another_and_none_is_lost() {
    let Some((kafka, redis)) = services("the_unfinished_tasks_of_a_killed_worker_run_on_another")
    else {
        return;
    };
    let _alone = ONE_AT_A_TIME.lock().await;
    let prefix = unique_prefix("kafka_sigkill");
    let client = client(&kafka, &redis, &prefix).await;
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
    let mut victim = kafka_worker(&prefix, &kafka, 4);
    let mut con = raw_connection(&redis).await;
    until_started(&mut con, &prefix, 6).await;
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    let in_flight: HashMap<String, u32> = con.hgetall(format!("{prefix}:test:runs")).await.unwrap();
    let _survivor = kafka_worker(&prefix, &kafka, 4);

    for handle in &handles {
        let record = handle.wait(WAIT).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    }
    let runs: HashMap<String, u32> = con.hgetall(format!("{prefix}:test:runs")).await.unwrap();
    assert_eq!(runs.len(), 40, "every task ran");
    let again = runs.values().filter(|n| **n == 2).count();
    eprintln!(
        "kafka sigkill: 40 tasks, 0 lost, {} started before the kill, {again} ran again, in {:.1?}",
        in_flight.len(),
        started.elapsed()
    );
    assert!(
        again >= 1 && runs.values().all(|n| *n <= 2),
        "the killed worker's tasks ran again, nothing more: {runs:?} (started before the kill: {in_flight:?})"
    );
    // Only tasks the victim had started ran twice: a finished task read again is dropped.
    for (label, n) in &runs {
        if *n == 2 {
            assert!(in_flight.contains_key(label), "{label} ran twice");
        }
    }
    client.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and Redis (QTASKS_TEST_KAFKA_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_second_worker_joining_shares_the_partitions_and_no_task_runs_twice() {
    let Some((kafka, redis)) = services("a_second_worker_joining_shares_the_partitions") else {
        return;
    };
    let _alone = ONE_AT_A_TIME.lock().await;
    let prefix = unique_prefix("kafka_rebalance");
    let client = client(&kafka, &redis, &prefix).await;
    let mut handles = Vec::new();
    // Half a second each, two at a time: the first worker alone would take 20 s, which leaves
    // the group time to take the second in (a heartbeat, a rejoin: seconds on a loaded
    // machine; with 200 ms tasks the first worker sometimes finished alone under load).
    for i in 0..80 {
        handles.push(
            client
                .add_task("record_run", (format!("t{i}"), 500), ())
                .await
                .unwrap(),
        );
    }
    let _first = kafka_worker(&prefix, &kafka, 2);
    let mut con = raw_connection(&redis).await;
    until_started(&mut con, &prefix, 6).await;
    // The group hands some of the first worker's partitions to the second: the first lets
    // each go once its running tasks there have ended.
    let _second = kafka_worker(&prefix, &kafka, 2);

    let mut workers = HashSet::new();
    for handle in &handles {
        let record = match handle.wait(WAIT).await {
            Ok(record) => record,
            Err(error) => panic!("{error}; its record: {:?}", client.get(handle.uuid()).await),
        };
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
        workers.extend(record.worker.clone());
    }
    let runs: HashMap<String, u32> = con.hgetall(format!("{prefix}:test:runs")).await.unwrap();
    assert_eq!(runs.len(), 80, "every task ran");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "kafka rebalance: 80 tasks, run by {} workers, {} ran twice",
        workers.len(),
        twice.len()
    );
    assert!(twice.is_empty(), "a rebalance ran tasks again: {twice:?}");
    assert_eq!(workers.len(), 2, "the second worker took no partition");
    client.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and Redis (QTASKS_TEST_KAFKA_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_delayed_task_outlives_the_worker_that_held_it_and_runs_once_when_due() {
    let Some((kafka, redis)) = services("a_delayed_task_outlives_the_worker_that_held_it") else {
        return;
    };
    let _alone = ONE_AT_A_TIME.lock().await;
    let prefix = unique_prefix("kafka_delay");
    let client = client(&kafka, &redis, &prefix).await;
    let added = std::time::Instant::now();
    // Waits in the delay topic's tiers (2 s, then 1 s), not in a worker's memory.
    let delayed = qtasks::AddOptions::default().delay(Duration::from_secs(5));
    let handles = vec![
        client
            .add_task_with("record_run", ("late", 0), (), delayed.clone())
            .await
            .unwrap(),
        client
            .add_task_with("record_run", ("later", 0), (), delayed)
            .await
            .unwrap(),
    ];
    let mut first = kafka_worker(&prefix, &kafka, 2);
    // Killed while the tasks wait (the worker's delay group holds them).
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let _second = kafka_worker(&prefix, &kafka, 2);
    for handle in &handles {
        let record = handle.wait(WAIT).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    }
    assert!(
        added.elapsed() >= Duration::from_secs(5),
        "ran before their delay: {:?}",
        added.elapsed()
    );
    let mut con = raw_connection(&redis).await;
    let runs: HashMap<String, u32> = con.hgetall(format!("{prefix}:test:runs")).await.unwrap();
    assert_eq!(
        runs,
        HashMap::from([("late".to_owned(), 1), ("later".to_owned(), 1)]),
        "each ran once"
    );
    eprintln!(
        "kafka delay: 2 tasks delayed 5 s, their holder killed at 2 s, both ran once after {:.1?}",
        added.elapsed()
    );
    client.flush_all().await.unwrap();
}
