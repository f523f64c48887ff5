//! The RabbitMQ broker (with Redis storage) beyond the conformance suite: the original's message
//! format from a foreign producer, poison messages, a connection cut under load, cancels kept
//! with the record. (A worker process killed mid-task is in `tests/rabbitmq_processes.rs`,
//! beside the test worker binary.)

#![cfg(unix)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qtasks::redis::Redis;
use qtasks::{QueueConfig, TaskStatus};
use qtasks_test_support::Proxy;
use qtasks_test_support::WAIT;
use qtasks_test_support::amqp::publish_raw;
use qtasks_test_support::amqp::{app, options, services};
use qtasks_test_support::flow;
use qtasks_test_support::redis::raw_connection;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use redis::AsyncCommands;
use serde_json::json;

#[qtasks::task]
async fn amqp_add(a: i64, b: i64) -> i64 {
    a + b
}

/// Counts its runs per label in this process.
#[qtasks::task]
async fn amqp_count(label: String, ms: u64) -> String {
    *RUNS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(label.clone())
        .or_default() += 1;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    label
}

/// Counts its runs per label, then fails after `ms`: retried once.
#[qtasks::task(retry = 1)]
async fn amqp_fail_slowly(label: String, ms: u64) -> qtasks::TaskResult<()> {
    amqp_count(label, ms).await;
    Err(qtasks::TaskError::msg("fails on purpose"))
}

/// Sleeps `ms`, then counts one completed run per label in this process.
#[qtasks::task]
async fn amqp_complete(label: String, ms: u64) -> String {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    *COMPLETED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(label.clone())
        .or_default() += 1;
    label
}

static RUNS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);
static COMPLETED: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

fn runs_of(label: &str) -> u32 {
    RUNS.lock()
        .unwrap()
        .as_ref()
        .and_then(|runs| runs.get(label).copied())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_message_in_the_originals_format_runs_on_a_rust_worker() {
    let Some((amqp, redis)) = services("a_message_in_the_originals_format_runs_on_a_rust_worker")
    else {
        return;
    };
    let prefix = unique_prefix("amqp_original");
    let app = app(&amqp, &redis, &prefix, 1).await;
    app.start().await.unwrap();
    // The original's body, from a producer that writes no record.
    let uuid = qtasks::Uuid::new_v4();
    let body = json!({
        "uuid": uuid.to_string(),
        "task_name": "amqp_add",
        "priority": 0,
        "args": [2, 3],
        "kwargs": {},
        "created_at": 1_700_000_000.5,
    });
    publish_raw(
        &amqp,
        &format!("{prefix}:task_queue"),
        body.to_string().as_bytes(),
    )
    .await;
    let record = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(record) = app.get(uuid).await.unwrap()
                && record.status.is_final()
            {
                return record;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the task ran");
    assert_eq!(
        (record.status, record.returning),
        (TaskStatus::Success, Some(json!(5)))
    );
    assert_eq!(record.task_name, "amqp_add");
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_poison_message_becomes_a_dead_letter_with_its_reason_and_the_worker_goes_on() {
    let Some((amqp, redis)) = services("a_poison_message_becomes_a_dead_letter") else {
        return;
    };
    let prefix = unique_prefix("amqp_poison");
    let app = app(&amqp, &redis, &prefix, 1).await;
    app.start().await.unwrap();
    publish_raw(&amqp, &format!("{prefix}:task_queue"), b"\xff\xfe not json").await;
    let fine = amqp_add::add_task(&app, 1, 1).await.unwrap();
    let record = fine.wait(WAIT).await.unwrap();
    assert_eq!(record.returning, Some(json!(2)), "the next task ran");

    let letters = app.dead_letters().list(10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].reason.contains("not a qtasks task"),
        "the reason says why: {:?}",
        letters[0].reason
    );
    assert!(letters[0].entry.contains("not json"));
    let stats = app.stats().await.unwrap();
    assert_eq!(stats.queue.map(|q| q.dead_letters), Some(1));
    // Reading did not consume them; dropping one does.
    assert_eq!(app.dead_letters().list(10).await.unwrap().len(), 1);
    assert!(
        app.dead_letters()
            .resolve(&letters[0], false)
            .await
            .unwrap()
    );
    assert!(app.dead_letters().list(10).await.unwrap().is_empty());
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_message_with_a_time_out_of_range_is_a_dead_letter_and_the_fetch_loop_goes_on() {
    let Some((amqp, redis)) = services("a_message_with_a_time_out_of_range") else {
        return;
    };
    let prefix = unique_prefix("amqp_badtime");
    let app = app(&amqp, &redis, &prefix, 1).await;
    app.start().await.unwrap();
    // `run_at` 1e300 once panicked the fetch loop (`Duration::from_secs_f64`): the worker
    // stayed listed but never took another task.
    let queue = format!("{prefix}:task_queue");
    for body in [
        r#"{"uuid":"5a469176-81b0-4c8a-996d-22ea5df7c4cf","task_name":"amqp_add","priority":0,"args":[1,2],"kwargs":{},"created_at":1.0,"run_at":1e300}"#,
        r#"{"uuid":"6a469176-81b0-4c8a-996d-22ea5df7c4cf","task_name":"amqp_add","priority":0,"args":[1,2],"kwargs":{},"created_at":-1e300}"#,
    ] {
        publish_raw(&amqp, &queue, body.as_bytes()).await;
    }
    let fine = amqp_add::add_task(&app, 2, 2).await.unwrap();
    let record = fine.wait(WAIT).await.unwrap();
    assert_eq!(record.returning, Some(json!(4)), "the next task ran");
    let letters = app.dead_letters().list(10).await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters.iter().any(|l| l.reason.contains("`run_at`")),
        "{letters:?}"
    );
    assert!(
        letters.iter().any(|l| l.reason.contains("`created_at`")),
        "{letters:?}"
    );
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_worker_whose_connection_breaks_reconnects_and_every_task_completes() {
    let Some((amqp, redis)) = services("a_worker_whose_connection_breaks_reconnects") else {
        return;
    };
    let prefix = unique_prefix("amqp_cut");
    let (proxy, through_proxy) = Proxy::in_front_of(&amqp).await;

    let client = app(&amqp, &redis, &prefix, 1).await;
    let worker = app(&through_proxy, &redis, &prefix, 4).await;
    worker.start().await.unwrap();
    let mut handles = Vec::new();
    for i in 0..300 {
        let label = format!("{prefix}:{i}");
        handles.push(amqp_count::add_task(&client, label, 20).await.unwrap());
    }
    // Cut the worker's connection three times while it drains.
    let started = std::time::Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            proxy.cut() > 0,
            "the worker was connected through the proxy"
        );
    }
    for handle in &handles {
        flow::ended_as(handle, TaskStatus::Success).await;
    }
    let twice = (0..300)
        .filter(|i| runs_of(&format!("{prefix}:{i}")) > 1)
        .count();
    assert!(
        (0..300).all(|i| runs_of(&format!("{prefix}:{i}")) >= 1),
        "every task ran"
    );
    eprintln!(
        "connection cut 3 times: 300 tasks, 0 lost, {twice} ran twice, in {:.1?}",
        started.elapsed()
    );
    // At most the tasks running at each cut (4 slots) run again.
    assert!(twice <= 12, "{twice} tasks ran twice");
    tokio::time::timeout(WAIT, worker.stop())
        .await
        .expect("the worker stops")
        .unwrap();
    tokio::time::timeout(WAIT, client.flush_all())
        .await
        .expect("the flush ends")
        .unwrap();
}

/// Found by the fault harness (seed 1796555431449): a worker whose connection was cut while it
/// held a task (there, a suspect waiting for every slot) ran it later anyway, while RabbitMQ had
/// queued it again for another worker: two runs of one attempt, with no fault to explain the
/// second. A delivery lost with its connection is void now: its run stops (here, mid-run), it
/// stores nothing, and the task runs to `success` once, on the delivery that replaced it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_run_whose_connection_is_lost_stops_and_the_task_completes_once_elsewhere() {
    let Some((amqp, redis)) = services("a_run_whose_connection_is_lost_stops") else {
        return;
    };
    let prefix = unique_prefix("amqp_lost");
    let (proxy, through_proxy) = Proxy::in_front_of(&amqp).await;
    // The first worker, through the proxy, takes the task; the second waits beside it.
    let first = app(&through_proxy, &redis, &prefix, 1).await;
    first.start().await.unwrap();
    let label = format!("{prefix}:long");
    let handle = amqp_complete::add_task(&first, label.clone(), 8000)
        .await
        .unwrap();
    flow::running(&handle).await;
    let second = app(&amqp, &redis, &prefix, 1).await;
    second.start().await.unwrap();
    // The first worker's connection dies mid-run: RabbitMQ queues the task again.
    assert!(
        proxy.cut() > 0,
        "the first worker was connected through the proxy"
    );

    assert_eq!(flow::succeeded(&handle).await, json!(label));
    // The first run, had it gone on, would have completed before the run that replaced it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let completed = COMPLETED
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|completed| completed.get(&label).copied())
        .unwrap_or(0);
    assert_eq!(
        completed, 1,
        "the run whose delivery was lost went on to the end"
    );
    assert!(
        first.counters().refused_outcomes >= 1,
        "the stopped run's outcome was refused, not stored"
    );
    for app in [&first, &second] {
        tokio::time::timeout(WAIT, app.stop())
            .await
            .expect("the worker stops")
            .unwrap();
    }
    first.flush_all().await.unwrap();
}

/// Found by the fault harness (seed 1797708670912): after a cut, a worker read a message still
/// in its dead consumer's buffer, which RabbitMQ had already handed to another worker; that
/// worker had counted it (its earlier worker had died) and queued a copy. The stale read marked
/// the record `process` and ran the task, its worker died of it, and the copy, finding
/// `process`, was dropped: the task never ended. A message read after its consumer's
/// connection died is now left alone. Here: a worker of one slot holds a long task and has a
/// short one waiting in its buffer when its connection is cut; the short one runs once, on the
/// other worker (twice before: once from the stale buffer, once redelivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_read_from_a_dead_consumers_buffer_is_left_to_its_redelivery() {
    let Some((amqp, redis)) = services("a_message_read_from_a_dead_consumers_buffer") else {
        return;
    };
    let prefix = unique_prefix("amqp_stale");
    let (proxy, through_proxy) = Proxy::in_front_of(&amqp).await;
    let config = QueueConfig {
        name: prefix.clone(),
        max_tasks_process: 1,
        ..QueueConfig::default()
    };
    // One slot, but room for four unacked messages: the second waits in the buffer.
    let first = qtasks::rabbitmq::connect_with(
        &through_proxy,
        Redis::new(&redis),
        config,
        options().prefetch(4),
    )
    .await
    .unwrap();
    first.start().await.unwrap();
    let long = amqp_complete::add_task(&first, format!("{prefix}:long"), 3000)
        .await
        .unwrap();
    flow::running(&long).await;
    let label = format!("{prefix}:short");
    let short = amqp_count::add_task(&first, label.clone(), 0)
        .await
        .unwrap();
    // Delivered into the first worker's buffer, behind the long task.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        proxy.cut() > 0,
        "the first worker was connected through the proxy"
    );
    // The first worker's slot frees (its long run is stopped) while the other is not there yet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = app(&amqp, &redis, &prefix, 2).await;
    second.start().await.unwrap();

    assert_eq!(flow::succeeded(&short).await, json!(label));
    flow::ended_as(&long, TaskStatus::Success).await;
    assert_eq!(runs_of(&label), 1, "the short task ran once");
    for app in [&first, &second] {
        tokio::time::timeout(WAIT, app.stop())
            .await
            .expect("the worker stops")
            .unwrap();
    }
    first.flush_all().await.unwrap();
}

/// An idle worker whose connection goes silent, then is cut, while it waits for a delivery takes
/// the tasks added after (found by the fault harness: a consumer's stream did not always end with its
/// connection, and a worker waited on it for ever, taking nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn an_idle_worker_whose_connection_is_cut_takes_the_tasks_added_after() {
    let Some((amqp, redis)) = services("an_idle_worker_whose_connection_is_cut") else {
        return;
    };
    let prefix = unique_prefix("amqp_idlecut");
    let (proxy, through_proxy) = Proxy::in_front_of(&amqp).await;

    let client = app(&amqp, &redis, &prefix, 1).await;
    let worker = app(&through_proxy, &redis, &prefix, 2).await;
    worker.start().await.unwrap();
    for round in 0..3 {
        // Idle, waiting on its consumer: the network goes silent, then the connection is cut
        // (the harness's "blackhole, then cut").
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.blackhole(true);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            proxy.cut() > 0,
            "the worker was connected through the proxy"
        );
        proxy.blackhole(false);
        let label = format!("{prefix}:{round}");
        let handle = amqp_count::add_task(&client, label, 0).await.unwrap();
        let record = handle.wait(WAIT).await.unwrap();
        assert_eq!(
            record.status,
            TaskStatus::Success,
            "round {round}: {record:?}"
        );
    }
    tokio::time::timeout(WAIT, worker.stop())
        .await
        .expect("the worker stops")
        .unwrap();
    tokio::time::timeout(WAIT, client.flush_all())
        .await
        .expect("the flush ends")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_queue_declared_with_other_arguments_is_refused_with_a_hint() {
    let Some((amqp, redis)) = services("a_queue_declared_with_other_arguments") else {
        return;
    };
    let prefix = unique_prefix("amqp_mismatch");
    let config = QueueConfig {
        name: prefix.clone(),
        ..QueueConfig::default()
    };
    let original = options().as_the_original();
    let _first =
        qtasks::rabbitmq::connect_with(&amqp, Redis::new(&redis), config.clone(), original)
            .await
            .unwrap();
    let error = qtasks::rabbitmq::connect_with(&amqp, Redis::new(&redis), config, options())
        .await
        .unwrap_err();
    let text = format!("{error:#}");
    assert!(
        text.contains("declared with other arguments") && text.contains(&prefix),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn an_unreachable_rabbitmq_is_an_error_naming_it_without_the_password() {
    let Some(redis) = redis_url("an_unreachable_rabbitmq_is_an_error_naming_it") else {
        return;
    };
    let config = QueueConfig {
        name: unique_prefix("amqp_unreachable"),
        ..QueueConfig::default()
    };
    let error = qtasks::rabbitmq::connect_with(
        "amqp://guest:hunter2@127.0.0.1:1/%2f",
        Redis::new(&redis),
        config,
        options(),
    )
    .await
    .unwrap_err();
    let text = format!("{error:#} {error:?}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
}

/// Found by the fault harness: a cancel of a running task was only a message, so a worker that
/// died (or never heard it) ran the task again to `success` after `cancel` said `true`. The
/// request is kept with the record now: the run's finish, or a take after its worker died,
/// ends it `cancel`.
#[tokio::test]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_cancel_of_a_running_task_is_kept_with_its_record_and_wins() {
    use qtasks::backend::{CancelState, Connector, RecordStoreConnector};
    use qtasks::{Outcome, QueuedTask};
    let Some((amqp, redis)) = services("a_cancel_of_a_running_task_is_kept") else {
        return;
    };
    let prefix = unique_prefix("amqp_cancelkept");
    let config = QueueConfig {
        name: prefix.clone(),
        ..QueueConfig::default()
    };
    let (storage, _) = Redis::new(redis.as_str())
        .connect_records(&config)
        .await
        .unwrap();
    let parts = qtasks::rabbitmq::RabbitMq::with_storage(
        amqp.as_str(),
        Arc::clone(&storage),
        Arc::new(qtasks::components::MemoryGlobalConfig::new()),
    )
    .options(options())
    .connect(&config)
    .await
    .unwrap();
    let broker = parts.broker;
    let (finished, retaken) = (qtasks::Uuid::new_v4(), qtasks::Uuid::new_v4());
    for uuid in [finished, retaken] {
        broker.add(QueuedTask::new(uuid, "amqp_add")).await.unwrap();
    }
    let mut taken = Vec::new();
    while taken.len() < 2 {
        taken.extend(broker.next_batch(2).await.unwrap());
    }
    for delivery in &taken {
        let state = broker.cancel(delivery.task.uuid, "asked").await.unwrap();
        assert_eq!(state, Some(CancelState::Running));
    }
    for delivery in taken {
        if delivery.task.uuid == finished {
            // The run never heard of it and succeeded: the cancel still wins.
            let error = broker
                .finish(&delivery, Outcome::Success(json!(1)))
                .await
                .expect_err("the cancel wins");
            assert_eq!(error.cancel_reason(), Some("asked"));
        } else {
            // Its worker "dies": handed back, the next take ends it instead of running it.
            broker.release(&delivery).await.unwrap();
        }
    }
    let deadline = std::time::Instant::now() + WAIT;
    for uuid in [finished, retaken] {
        loop {
            // A take drops the handed-back one (its record says `cancel` now).
            let _ = tokio::time::timeout(Duration::from_millis(200), broker.next_batch(1)).await;
            let record = storage.get(uuid).await.unwrap().unwrap();
            if record.status == TaskStatus::Cancel {
                assert_eq!(record.cancel_reason.as_deref(), Some("asked"));
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{uuid} is {}",
                record.status
            );
        }
    }
    broker.flush_all().await.unwrap();
    storage.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_retry_whose_worker_died_before_queueing_the_next_attempt_is_mended() {
    let Some((amqp, redis)) = services("a_retry_whose_worker_died_before_queueing") else {
        return;
    };
    let prefix = unique_prefix("amqp_mend");
    let app = app(&amqp, &redis, &prefix, 1).await;
    // What a worker leaves when it dies between marking an attempt `retry` and publishing
    // the next one: the next attempt's record waits with no message, and the failed
    // attempt's message (unacked) comes back.
    let parent = app.add_task("amqp_add", (1, 1), ()).await.unwrap();
    let child = qtasks::Uuid::new_v4();
    let mut con = raw_connection(&redis).await;
    let _: () = con
        .hset_multiple(
            format!("{prefix}:{child}"),
            &[
                ("task_name", "amqp_add"),
                ("priority", "0"),
                ("args", "[4, 5]"),
                ("kwargs", "{}"),
                ("created_at", "1700000000.5"),
                ("updated_at", "1700000000.5"),
                ("status", "new"),
                ("retry_parent_uuid", &parent.uuid().to_string()),
            ],
        )
        .await
        .unwrap();
    let _: () = con
        .hset_multiple(
            format!("{prefix}:{}", parent.uuid()),
            &[
                ("status", "retry"),
                ("retry_child_uuid", &child.to_string()),
            ],
        )
        .await
        .unwrap();
    app.start().await.unwrap();
    let record = app.wait(child, WAIT).await.unwrap();
    assert_eq!(
        (record.status, record.returning),
        (TaskStatus::Success, Some(json!(9)))
    );
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_retry_refused_by_a_stored_cancel_never_runs_its_next_attempt() {
    let Some((amqp, redis)) = services("a_retry_refused_by_a_stored_cancel") else {
        return;
    };
    let prefix = unique_prefix("amqp_fork");
    // Two slots: a free one takes any next attempt the moment its message is out.
    let app = app(&amqp, &redis, &prefix, 2).await;
    app.start().await.unwrap();
    let mut con = raw_connection(&redis).await;
    for round in 0..8 {
        let label = format!("{prefix}-fork{round}");
        let task = amqp_fail_slowly::add_task(&app, label.clone(), 200)
            .await
            .unwrap();
        for _ in 0..500 {
            if runs_of(&label) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A cancel whose message was lost: only the stored request, which the finish meets.
        let _: () = con
            .hset(
                format!("{prefix}:{}", task.uuid()),
                "cancel_requested",
                "stop",
            )
            .await
            .unwrap();
        flow::ended_as(&task, TaskStatus::Cancel).await;
        // Its next attempt, if one was queued, must never run.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(runs_of(&label), 1, "round {round}: the next attempt ran");
    }
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}
