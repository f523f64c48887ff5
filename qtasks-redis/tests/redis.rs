//! The Redis backend with an embedded worker, against the machine's Redis
//! (`QTASKS_TEST_REDIS_URL`). Every test uses its own key prefix.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::{TaskContext, TaskResult, TaskStatus};
use qtasks_test_support::WAIT;
use qtasks_test_support::counting::CountFirings;
use qtasks_test_support::flow;
use qtasks_test_support::redis::raw_connection;
use qtasks_test_support::redis::redis_app;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use redis::AsyncCommands;
use serde_json::json;

#[qtasks::task]
async fn concat(a: String, b: String) -> String {
    format!("{a}{b}")
}

#[qtasks::task(echo = true)]
async fn redis_cancels(ctx: TaskContext) -> TaskResult<()> {
    Err(ctx.cancel("no longer needed"))
}

#[qtasks::task]
async fn redis_fails() -> TaskResult<()> {
    Err(qtasks::TaskError::msg("it went wrong"))
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn tasks_run_and_records_use_the_python_layout() {
    let Some(url) = redis_url("tasks_run_and_records_use_the_python_layout") else {
        return;
    };
    let prefix = unique_prefix("roundtrip");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 4).await;
    app.start().await.unwrap();

    let ok = concat::add_task(&app, "при".into(), "вет".into())
        .await
        .unwrap();
    let by_name = app
        .add_task("concat", ("a",), json!({"b": "b"}))
        .await
        .unwrap();
    let cancelled = redis_cancels::add_task(&app).await.unwrap();
    let failed = redis_fails::add_task(&app).await.unwrap();
    let unknown = app.add_task("no_such_task", (), ()).await.unwrap();

    let ok = ok.wait(WAIT).await.unwrap();
    assert_eq!(
        (ok.status, ok.returning),
        (TaskStatus::Success, Some(json!("привет")))
    );
    assert_eq!(
        by_name.wait(WAIT).await.unwrap().returning,
        Some(json!("ab"))
    );
    let cancelled = cancelled.wait(WAIT).await.unwrap();
    assert_eq!(
        (cancelled.status, cancelled.cancel_reason.as_deref()),
        (TaskStatus::Cancel, Some("no longer needed"))
    );
    let failed = failed.wait(WAIT).await.unwrap();
    assert_eq!(
        (failed.status, failed.traceback.as_deref()),
        (TaskStatus::Error, Some("TaskError: it went wrong"))
    );
    // A task no worker here knows is handed back to its queue (a rolling deploy), not failed.
    let deadline = tokio::time::Instant::now() + WAIT;
    let unknown = loop {
        let record = unknown.get().await.unwrap().unwrap();
        if record.hand_backs >= 1 || tokio::time::Instant::now() > deadline {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(unknown.hand_backs, 1, "{unknown:?}");
    assert!(!unknown.status.is_final(), "{unknown:?}");
    assert_eq!(unknown.traceback, None);

    // The hash is what Python QTasks writes and reads.
    let mut con = raw_connection(&url).await;
    let fields: HashMap<String, String> =
        con.hgetall(format!("{prefix}:{}", ok.uuid)).await.unwrap();
    assert_eq!(fields["task_name"], "concat");
    assert_eq!(fields["priority"], "0");
    assert_eq!(fields["args"], "[\"при\",\"вет\"]");
    assert_eq!(fields["kwargs"], "{}");
    assert_eq!(fields["status"], "success");
    assert_eq!(fields["returning"], "\"привет\"");
    assert!(fields["created_at"].parse::<f64>().unwrap() > 1.0e9);
    assert_eq!(
        app.get(ok.uuid).await.unwrap().unwrap().status,
        TaskStatus::Success
    );

    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

static ORDER: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[qtasks::task]
async fn record_order(label: String) {
    ORDER.lock().unwrap().push(label);
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn lower_priority_numbers_run_first_and_equal_ones_in_order() {
    let Some(url) = redis_url("lower_priority_numbers_run_first_and_equal_ones_in_order") else {
        return;
    };
    let prefix = unique_prefix("priority");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    // Enqueued while no worker runs, with priorities mixed.
    let priorities = [5, 1, 3, 1, 0, 5, 3, 0, 2, 1];
    let mut handles = Vec::new();
    for (i, priority) in priorities.iter().enumerate() {
        let options = qtasks::AddOptions::default().priority(*priority);
        handles.push(
            app.add_task_with("record_order", (format!("{priority}.{i}"),), (), options)
                .await
                .unwrap(),
        );
    }
    app.start().await.unwrap();
    for handle in handles {
        assert_eq!(handle.wait(WAIT).await.unwrap().status, TaskStatus::Success);
    }
    let mut expected: Vec<(i64, usize)> = priorities
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, i))
        .collect();
    expected.sort_unstable();
    let expected: Vec<String> = expected.iter().map(|(p, i)| format!("{p}.{i}")).collect();
    assert_eq!(*ORDER.lock().unwrap(), expected);
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn poison_entries_fail_alone_and_the_worker_goes_on() {
    let Some(url) = redis_url("poison_entries_fail_alone_and_the_worker_goes_on") else {
        return;
    };
    let prefix = unique_prefix("poison");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 2).await;
    let mut con = raw_connection(&url).await;
    let orphan = qtasks::Uuid::new_v4();
    let queue = format!("{prefix}:task_queue");
    let _: () = con.rpush(&queue, "garbage").await.unwrap();
    let _: () = con.rpush(&queue, "concat:not-a-uuid:1").await.unwrap();
    let _: () = con
        .rpush(&queue, format!("concat:{orphan}:0"))
        .await
        .unwrap();
    let _: () = con
        .hset_multiple(
            format!("{prefix}:{}", qtasks::Uuid::nil()),
            &[("status", "new")],
        )
        .await
        .unwrap();
    let _: () = con
        .rpush(&queue, format!("concat:{}:0", qtasks::Uuid::nil()))
        .await
        .unwrap();
    app.start().await.unwrap();

    let fine = concat::add_task(&app, "still ".into(), "working".into())
        .await
        .unwrap();
    assert_eq!(
        fine.wait(WAIT).await.unwrap().returning,
        Some(json!("still working"))
    );

    let broken = app.wait(qtasks::Uuid::nil(), WAIT).await.unwrap();
    assert_eq!(broken.status, TaskStatus::Error);
    assert!(
        broken.traceback.unwrap().starts_with(
            "RecordError: task 00000000-0000-0000-0000-000000000000: the record has no"
        )
    );

    let dead: Vec<String> = con
        .lrange(format!("{prefix}:qtasks:dead"), 0, -1)
        .await
        .unwrap();
    // The entry without a record is a dead letter, and no record is made up for it (one
    // deleted by hand stays deleted).
    assert_eq!(dead.len(), 3, "{dead:?}");
    let orphan_letter = format!("`concat:{orphan}:0` has no task record");
    assert!(
        dead.iter().any(|letter| letter.contains(&orphan_letter)),
        "{dead:?}"
    );
    assert!(app.get(orphan).await.unwrap().is_none());
    assert!(
        dead[0].contains("`garbage` is not `name:uuid:priority`"),
        "{dead:?}"
    );
    assert!(
        dead.iter().any(|letter| letter.contains("malformed uuid")),
        "{dead:?}"
    );
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn finished_records_expire_when_a_retention_is_set() {
    let Some(url) = redis_url("finished_records_expire_when_a_retention_is_set") else {
        return;
    };
    let kept = unique_prefix("kept");
    let expiring = unique_prefix("expiring");
    let options = RedisOptions {
        result_ttl: Some(Duration::from_secs(3600)),
        ..Default::default()
    };
    let keep_forever = RedisOptions {
        result_ttl: None,
        ..Default::default()
    };
    let keep_app = redis_app(&url, &kept, keep_forever, 1).await;
    let expire_app = redis_app(&url, &expiring, options, 1).await;
    keep_app.start().await.unwrap();
    expire_app.start().await.unwrap();
    let a = concat::add_task(&keep_app, "a".into(), "b".into())
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let b = concat::add_task(&expire_app, "a".into(), "b".into())
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let mut con = raw_connection(&url).await;
    let kept_ttl: i64 = con.pttl(format!("{kept}:{}", a.uuid)).await.unwrap();
    let expiring_ttl: i64 = con.pttl(format!("{expiring}:{}", b.uuid)).await.unwrap();
    assert_eq!(
        kept_ttl, -1,
        "`result_ttl: None`: kept forever, as in the original"
    );
    assert!(
        expiring_ttl > 0 && expiring_ttl <= 3_600_000,
        "{expiring_ttl}"
    );
    for app in [keep_app, expire_app] {
        app.stop().await.unwrap();
        app.flush_all().await.unwrap();
    }
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn flush_all_clears_only_this_apps_keys() {
    let Some(url) = redis_url("flush_all_clears_only_this_apps_keys") else {
        return;
    };
    let prefix = unique_prefix("flush");
    let neighbour = format!("{prefix}x"); // shares the prefix text, not the app
    let app = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let other = redis_app(&url, &neighbour, RedisOptions::default(), 1).await;
    app.add_task("concat", ("a", "b"), ()).await.unwrap();
    other.add_task("concat", ("a", "b"), ()).await.unwrap();
    let mut con = raw_connection(&url).await;
    let count = |pattern: String| {
        let mut con = con.clone();
        async move { con.keys::<_, Vec<String>>(pattern).await.unwrap().len() }
    };
    // The record, the queue, the stats counters and the records' index.
    assert_eq!(count(format!("{prefix}:*")).await, 4);
    app.flush_all().await.unwrap();
    assert_eq!(count(format!("{prefix}:*")).await, 0);
    assert_eq!(count(format!("{neighbour}:*")).await, 4);
    other.flush_all().await.unwrap();
    let _: () = con.del("unused").await.unwrap();
}

#[tokio::test]
async fn an_unreachable_redis_is_reported_at_start() {
    let error = qtasks::redis::connect("redis://127.0.0.1:1/")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("redis backend: cannot connect to Redis at redis://127.0.0.1:1/"),
        "{error}"
    );
    // Whatever form the URL takes, the password shows nowhere in the error or its causes.
    for url in [
        "redis://user:secret@127.0.0.1:1/",
        "redis://secret@127.0.0.1:1/",
        "rediss://user:secret@127.0.0.1:1/0",
        "unix:///nonexistent/redis.sock?db=0&pass=secret",
        "redis+unix:///nonexistent/redis.sock?password=secret",
    ] {
        let error = qtasks::redis::connect(url).await.unwrap_err();
        let shown = format!("{} / {:?}", qtasks::backend::ErrorChain(&error), error);
        assert!(
            !shown.contains("secret"),
            "the password is not shown: {shown}"
        );
    }
    // A lease under a second is refused before anything connects.
    let options = RedisOptions {
        lease: Duration::from_millis(500),
        ..Default::default()
    };
    let error = qtasks::redis::connect_with("redis://127.0.0.1:1/", Default::default(), options)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("a lease of 500ms is too short"), "{error}");
    let error = qtasks::redis::connect("not a url")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("redis backend: invalid Redis URL `not a url`"),
        "{error}"
    );
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn ping_sees_the_worker_heartbeat() {
    let Some(url) = redis_url("ping_sees_the_worker_heartbeat") else {
        return;
    };
    let prefix = unique_prefix("ping");
    let worker = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    assert!(!client.ping().await.unwrap());
    worker.start().await.unwrap();
    // The heartbeat is written when the worker starts; a client in another process sees it.
    let mut alive = false;
    for _ in 0..100 {
        alive = client.ping().await.unwrap();
        if alive {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(alive);
    worker.stop().await.unwrap();
    assert!(!client.ping().await.unwrap());
    worker.flush_all().await.unwrap();
}

#[qtasks::task]
async fn slow_concat(a: String, ms: u64) -> String {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn dropped_connections_reconnect_and_nothing_is_lost() {
    let Some(url) = redis_url("dropped_connections_reconnect_and_nothing_is_lost") else {
        return;
    };
    let prefix = unique_prefix("clientkill");
    // A take whose reply is lost with the connection leaves its task leased to nobody; the
    // lease brings it back. A short lease keeps the test short.
    let options = RedisOptions {
        lease: Duration::from_secs(2),
        ..Default::default()
    };
    let app = redis_app(&url, &prefix, options, 8).await;
    let mut handles = Vec::new();
    for i in 0..300 {
        handles.push(
            slow_concat::add_task(&app, format!("t{i}"), 5)
                .await
                .unwrap(),
        );
    }
    app.start().await.unwrap();
    let killer = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut con = raw_connection(&url).await;
            let mut killed = 0;
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(40)).await;
                let n: i64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("normal")
                    .arg("SKIPME")
                    .arg("yes")
                    .query_async(&mut con)
                    .await
                    .unwrap();
                killed += n;
            }
            killed
        })
    };
    for (i, handle) in handles.iter().enumerate() {
        assert_eq!(flow::succeeded(handle).await, json!(format!("t{i}")));
    }
    assert!(
        killer.await.unwrap() > 0,
        "connections were killed during the run"
    );
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[qtasks::task(retry = 1, retry_delay = 0.3)]
async fn redis_fails_twice() -> TaskResult<()> {
    Err(qtasks::TaskError::msg("still failing"))
}

#[qtasks::task]
async fn redis_stream(n: u32) -> futures_util::stream::Iter<std::ops::Range<u32>> {
    futures_util::stream::iter(0..n)
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn retries_wait_their_backoff_and_stream_items_are_stored_on_redis() {
    let Some(url) = redis_url("retries_wait_their_backoff_and_stream_items_are_stored_on_redis")
    else {
        return;
    };
    let prefix = unique_prefix("redis_retry");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 2).await;
    app.start().await.unwrap();
    let handle = redis_fails_twice::add_task(&app).await.unwrap();
    let last = handle.wait(WAIT).await.unwrap();
    assert_eq!((last.status, last.retry), (TaskStatus::Error, Some(0)));
    let first = app.get(handle.uuid()).await.unwrap().unwrap();
    assert_eq!(
        (first.status, first.retry_child_uuid),
        (TaskStatus::Retry, Some(last.uuid))
    );
    assert!(
        last.updated_at - first.updated_at >= 0.3,
        "the retry waited in the delayed set"
    );

    let stream = redis_stream::add_task(&app, 3).await.unwrap();
    assert_eq!(
        stream.wait(WAIT).await.unwrap().returning,
        Some(json!([0, 1, 2]))
    );
    // Its live items went with its finish (a first delivery that streamed), and the record
    // holds them.
    let mut con = raw_connection(&url).await;
    let live: i64 = con
        .exists(format!("{prefix}:qtasks:items:{}", stream.uuid()))
        .await
        .unwrap();
    assert_eq!(
        live, 0,
        "the live items are deleted when the stream task ends"
    );
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_finish_sent_again_is_stored_once_and_a_stale_delivery_is_refused() {
    use qtasks::backend::Connector;
    use qtasks::{Outcome, QueueConfig, QueuedTask};
    let Some(url) = redis_url("a_finish_sent_again_is_stored_once") else {
        return;
    };
    let prefix = unique_prefix("fence");
    let config = QueueConfig {
        name: prefix.clone(),
        ..Default::default()
    };
    // The broker on its own, through the public engine seam, as a backend author would test it.
    let options = RedisOptions {
        lease: Duration::from_millis(1000),
        ..Default::default()
    };
    let parts = qtasks::redis::Redis::new(&url)
        .options(options)
        .connect(&config)
        .await
        .unwrap();
    let broker = parts.broker;
    let mut con = raw_connection(&url).await;

    let task = QueuedTask::new(qtasks::Uuid::new_v4(), "concat");
    broker.add(task.clone()).await.unwrap();
    let delivery = broker.next().await.unwrap().unwrap();
    assert_eq!(delivery.task.uuid, task.uuid);
    let mut child = QueuedTask::new(qtasks::Uuid::new_v4(), "concat");
    child.retry_parent_uuid = Some(task.uuid);
    let retry = Outcome::Retry {
        traceback: "Boom: once".into(),
        child: Box::new(child.clone()),
    };
    // As if the reply to the first finish were lost: the second one is a replay.
    broker.finish(&delivery, retry.clone()).await.unwrap();
    broker.finish(&delivery, retry).await.unwrap();
    let queued: Vec<String> = con
        .lrange(format!("{prefix}:task_queue"), 0, -1)
        .await
        .unwrap();
    assert_eq!(
        queued
            .iter()
            .filter(|e| e.contains(&child.uuid.to_string()))
            .count(),
        1,
        "the next attempt is queued once: {queued:?}"
    );

    // A delivery whose lease ran out and was taken over is refused, and writes nothing.
    let stale = broker.next().await.unwrap().unwrap();
    assert_eq!(stale.task.uuid, child.uuid);
    tokio::time::sleep(Duration::from_millis(1100)).await; // the lease (1 s) runs out
    let current = broker.next().await.unwrap().unwrap(); // the take revokes the old token
    assert_eq!(current.task.uuid, child.uuid);
    assert!(current.recovered);
    let refused = broker
        .finish(&stale, Outcome::Success(json!("late")))
        .await
        .unwrap_err();
    assert!(refused.is_refused(), "{refused}");
    let status: String = con
        .hget(format!("{prefix}:{}", child.uuid), "status")
        .await
        .unwrap();
    assert_eq!(status, "process", "the late write changed nothing");
    broker
        .finish(&current, Outcome::Success(json!("on time")))
        .await
        .unwrap();
    let returning: String = con
        .hget(format!("{prefix}:{}", child.uuid), "returning")
        .await
        .unwrap();
    assert_eq!(returning, "\"on time\"");
    broker.flush_all().await.unwrap();
    parts.storage.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn every_poison_kind_fails_alone_and_its_record_can_be_read() {
    let Some(url) = redis_url("every_poison_kind_fails_alone") else {
        return;
    };
    let prefix = unique_prefix("poisonkinds");
    // Sixteen slots: the worker takes the good and the bad entries in one batch.
    let app = redis_app(&url, &prefix, RedisOptions::default(), 16).await;
    let mut con = raw_connection(&url).await;
    let queue = format!("{prefix}:task_queue");
    let record = |uuid: qtasks::Uuid| format!("{prefix}:{uuid}");
    let plant = |args: &'static [u8]| {
        [
            ("task_name", b"concat".as_slice()),
            ("priority", b"0"),
            ("args", args),
            ("kwargs", b"{}"),
            ("created_at", b"1.0"),
            ("updated_at", b"1.0"),
            ("status", b"new"),
        ]
    };
    let mut good = Vec::new();
    good.push(
        concat::add_task(&app, "a".into(), "1".into())
            .await
            .unwrap(),
    );
    // An entry that is not UTF-8.
    let _: () = con
        .rpush(&queue, b"concat:\xff\xfe:0".as_slice())
        .await
        .unwrap();
    good.push(
        concat::add_task(&app, "b".into(), "2".into())
            .await
            .unwrap(),
    );
    // Entries whose priority is a word, or overflows: their records exist.
    let (word, overflow) = (qtasks::Uuid::new_v4(), qtasks::Uuid::new_v4());
    let _: () = con
        .hset_multiple(record(word), &plant(b"[\"x\", \"y\"]"))
        .await
        .unwrap();
    let _: () = con
        .rpush(&queue, format!("concat:{word}:high"))
        .await
        .unwrap();
    let _: () = con
        .hset_multiple(record(overflow), &plant(b"[\"x\", \"y\"]"))
        .await
        .unwrap();
    let _: () = con
        .rpush(&queue, format!("concat:{overflow}:99999999999999999999"))
        .await
        .unwrap();
    // A priority of 400 digits: past what a double holds (Redis refuses it as a score, and a
    // take that passed it on as written would fail with every entry it had moved).
    let huge = qtasks::Uuid::new_v4();
    let _: () = con
        .hset_multiple(record(huge), &plant(b"[\"x\", \"y\"]"))
        .await
        .unwrap();
    let _: () = con
        .rpush(&queue, format!("concat:{huge}:{}", "9".repeat(400)))
        .await
        .unwrap();
    // Records whose arguments are not UTF-8, or not JSON.
    let (bytes, text) = (qtasks::Uuid::new_v4(), qtasks::Uuid::new_v4());
    let _: () = con
        .hset_multiple(record(bytes), &plant(b"[\"\xff\"]"))
        .await
        .unwrap();
    let _: () = con
        .rpush(&queue, format!("concat:{bytes}:0"))
        .await
        .unwrap();
    let _: () = con
        .hset_multiple(record(text), &plant(b"[1, 2"))
        .await
        .unwrap();
    let _: () = con.rpush(&queue, format!("concat:{text}:0")).await.unwrap();
    good.push(
        concat::add_task(&app, "c".into(), "3".into())
            .await
            .unwrap(),
    );
    app.start().await.unwrap();

    for (handle, expected) in good.into_iter().zip(["a1", "b2", "c3"]) {
        assert_eq!(
            handle.wait(WAIT).await.unwrap().returning,
            Some(json!(expected))
        );
    }
    for (uuid, reason) in [
        (word, "malformed priority"),
        (overflow, "malformed priority"),
        (huge, "malformed priority"),
        (bytes, "`args` is not UTF-8"),
        (text, "`args` is not a JSON list"),
    ] {
        let done = app.wait(uuid, WAIT).await.unwrap();
        assert_eq!(done.status, TaskStatus::Error, "{uuid}");
        let traceback = done.traceback.unwrap_or_default();
        assert!(traceback.contains(reason), "{traceback}");
    }
    // A record with unreadable fields still reads back, those fields raw.
    let unreadable = app.get(text).await.unwrap().unwrap();
    assert_eq!(
        unreadable.unreadable.get("args").map(String::as_str),
        Some("[1, 2")
    );
    let unreadable = app.get(bytes).await.unwrap().unwrap();
    assert!(unreadable.unreadable.contains_key("args"));

    let dead: Vec<String> = con
        .lrange(format!("{prefix}:qtasks:dead"), 0, -1)
        .await
        .unwrap();
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert!(dead.iter().any(|d| d.contains("is not UTF-8")), "{dead:?}");
    let ttl: i64 = con.ttl(format!("{prefix}:qtasks:dead")).await.unwrap();
    assert!(ttl > 0, "the dead letters expire: {ttl}");
    let leased: i64 = con.zcard(format!("{prefix}:qtasks:leases")).await.unwrap();
    assert_eq!(leased, 0, "no lease is left behind");
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

/// The records' index (what the dashboard's task list reads) follows the records: a record
/// that expired, or a member that is no uuid, leaves it when a page passes over it, and the
/// pages stay right meanwhile.
#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn the_records_index_forgets_expired_records_and_bad_members() {
    let Some(url) = redis_url("the_records_index_forgets_expired_records_and_bad_members") else {
        return;
    };
    let prefix = unique_prefix("index");
    let options = RedisOptions {
        result_ttl: Some(Duration::from_millis(300)),
        ..RedisOptions::default()
    };
    let app = redis_app(&url, &prefix, options, 2).await;
    app.start().await.unwrap();
    for i in 0..4 {
        let handle = concat::add_task(&app, "a".into(), i.to_string())
            .await
            .unwrap();
        handle.wait(WAIT).await.unwrap();
    }
    let mut con = raw_connection(&url).await;
    let index = format!("{prefix}:qtasks:records:index");
    let _: () = con.zadd(&index, "not-a-uuid", 1).await.unwrap();
    let count: u64 = con.zcard(&index).await.unwrap();
    assert_eq!(count, 5);
    let page = app
        .records()
        .list(&qtasks::records::RecordQuery::default())
        .await
        .unwrap();
    assert_eq!(page.records.len(), 4, "{page:?}");

    tokio::time::sleep(Duration::from_millis(600)).await;
    let page = app
        .records()
        .list(&qtasks::records::RecordQuery::default())
        .await
        .unwrap();
    assert!(page.records.is_empty() && page.next.is_none(), "{page:?}");
    let count: u64 = con.zcard(&index).await.unwrap();
    assert_eq!(count, 0, "the index kept what no record is behind");
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[qtasks::task(result_ttl = "2h")]
async fn kept_two_hours() -> u32 {
    2
}

/// Finished records expire after a day unless told otherwise (the original keeps them
/// forever), and a task's own `result_ttl` wins over the app's.
#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn finished_records_expire_after_a_day_by_default_or_the_tasks_own_retention() {
    let Some(url) =
        redis_url("finished_records_expire_after_a_day_by_default_or_the_tasks_own_retention")
    else {
        return;
    };
    let prefix = unique_prefix("retention");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 2).await;
    app.start().await.unwrap();
    let plain = concat::add_task(&app, "a".into(), "b".into())
        .await
        .unwrap();
    plain.wait(WAIT).await.unwrap();
    let own = kept_two_hours::add_task(&app).await.unwrap();
    own.wait(WAIT).await.unwrap();
    let mut con = raw_connection(&url).await;
    let day: i64 = con
        .pttl(format!("{prefix}:{}", plain.uuid()))
        .await
        .unwrap();
    assert!(
        (86_000_000..=86_400_000).contains(&day),
        "a day by default: {day} ms"
    );
    let two_hours: i64 = con.pttl(format!("{prefix}:{}", own.uuid())).await.unwrap();
    assert!(
        (7_000_000..=7_200_000).contains(&two_hours),
        "the task's own: {two_hours} ms"
    );
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

/// With the records' index off, adds write no index, and listing still works (by reading
/// every record).
#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn without_the_records_index_listing_reads_every_record() {
    let Some(url) = redis_url("without_the_records_index_listing_reads_every_record") else {
        return;
    };
    let prefix = unique_prefix("no_index");
    let options = RedisOptions {
        records_index: false,
        ..RedisOptions::default()
    };
    let app = redis_app(&url, &prefix, options, 2).await;
    app.start().await.unwrap();
    let mut added = Vec::new();
    for i in 0..3 {
        let handle = concat::add_task(&app, "a".into(), i.to_string())
            .await
            .unwrap();
        handle.wait(WAIT).await.unwrap();
        added.push(handle.uuid());
    }
    let failing = redis_fails_twice::add_task(&app).await.unwrap();
    let mut con = raw_connection(&url).await;
    let exists: bool = con
        .exists(format!("{prefix}:qtasks:records:index"))
        .await
        .unwrap();
    assert!(!exists, "an index was written");
    failing.wait(WAIT).await.unwrap();
    // Every page, two records at a time.
    let mut query = qtasks::records::RecordQuery::default().limit(2);
    let mut listed = Vec::new();
    loop {
        let page = app.records().list(&query).await.unwrap();
        listed.extend(page.records.iter().map(|r| r.uuid));
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    // The three tasks and the failing one's two attempts, each once.
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert!(added.iter().all(|uuid| listed.contains(uuid)), "{listed:?}");
    assert!(app.records().delete(added[0]).await.unwrap());
    assert!(app.get(added[0]).await.unwrap().is_none());
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

/// The app's default queue as it stands, and the entries the `concat` tasks of `handles`
/// have there when they are queued in the calls' order.
async fn queue_and_calls<T>(
    con: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    handles: &[qtasks::TaskHandle<T>],
) -> (Vec<String>, Vec<String>) {
    let queue: Vec<String> = con
        .lrange(format!("{prefix}:task_queue"), 0, -1)
        .await
        .unwrap();
    let expected = handles
        .iter()
        .map(|handle| format!("concat:{}:0", handle.uuid()))
        .collect();
    (queue, expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_bulk_add_queues_every_task_once_and_each_runs_once() {
    let Some(url) = redis_url("a_bulk_add_queues_every_task_once_and_each_runs_once") else {
        return;
    };
    let prefix = unique_prefix("bulkadd");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 64).await;
    let n = 1500;
    let handles = concat::add_many(&app, (0..n).map(|i| (format!("t{i}"), "!".to_owned())))
        .await
        .unwrap();
    assert_eq!(handles.len(), n);
    // Queued once each, in the order asked, indexed, counted, before any worker runs.
    let mut con = raw_connection(&url).await;
    let (queue, expected) = queue_and_calls(&mut con, &prefix, &handles).await;
    assert_eq!(queue, expected);
    let indexed: usize = con
        .zcard(format!("{prefix}:qtasks:records:index"))
        .await
        .unwrap();
    assert_eq!(indexed, n);
    let waiting = app.stats().await.unwrap().queue.unwrap().waiting_total();
    assert_eq!(waiting, n as u64);

    // Untyped calls go the same way.
    let again = app
        .add_many([
            qtasks::TaskCall::new("concat", vec![json!("a"), json!("b")], Default::default()),
            qtasks::TaskCall::new("concat", vec![json!("c"), json!("d")], Default::default()),
        ])
        .await
        .unwrap();
    assert_eq!(again.len(), 2);

    app.start().await.unwrap();
    for (i, handle) in handles.iter().enumerate() {
        assert_eq!(flow::succeeded(handle).await, json!(format!("t{i}!")));
    }
    assert_eq!(flow::succeeded(&again[0]).await, json!("ab"));
    assert_eq!(flow::succeeded(&again[1]).await, json!("cd"));
    // Each ran once: one delivery each, and the finished count is exact.
    for handle in handles.iter().step_by(97) {
        let deliveries: String = con
            .hget(format!("{prefix}:{}", handle.uuid()), "deliveries")
            .await
            .unwrap();
        assert_eq!(deliveries, "1");
    }
    let stats = app.stats().await.unwrap();
    assert_eq!(stats.queue.unwrap().waiting_total(), 0);
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

/// `add_many` sends its chunks two at a time on Redis, and still queues the calls in their
/// order: with unique calls among the plain ones (a chunk that has any is stored whole before
/// the next one goes out, since its adds after the first leave later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_bulk_add_with_unique_calls_keeps_the_order_across_chunks() {
    let Some(url) = redis_url("a_bulk_add_with_unique_calls_keeps_the_order_across_chunks") else {
        return;
    };
    let prefix = unique_prefix("bulkorder");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 64).await;
    let n = 2600;
    // Unique calls at 650, 1350 and 2050: in the second, third and fifth chunks of 512.
    let calls = (0..n).map(|i| {
        let call = concat::call(format!("t{i}"), "!".to_owned());
        if i % 700 == 650 {
            call.unique(format!("key{i}"), Duration::from_secs(600))
        } else {
            call
        }
    });
    let handles = app.add_many(calls).await.unwrap();
    assert_eq!(handles.len(), n);
    let mut con = raw_connection(&url).await;
    let (queue, expected) = queue_and_calls(&mut con, &prefix, &handles).await;
    assert_eq!(queue.len(), n);
    let first_out_of_place = queue
        .iter()
        .zip(&expected)
        .position(|(got, want)| got != want);
    assert_eq!(
        first_out_of_place, None,
        "the queue is not in the calls' order"
    );
    app.flush_all().await.unwrap();
}

/// The chunks of an `add_many` sent two at a time keep their order when the server does not
/// know the add script (a fresh server, then one whose scripts were flushed): the chunk that
/// meets the unknown script is sent again as one command that also teaches it the script, so
/// the chunk sent behind it cannot run first. On a Redis of its own (it flushes the scripts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_bulk_add_keeps_its_order_on_a_server_that_does_not_know_the_script() {
    if redis_url("a_bulk_add_keeps_its_order_on_a_server_that_does_not_know_the_script").is_none() {
        return;
    }
    let server = qtasks_test_support::OwnRedis::start("bulk-noscript", false);
    let url = format!("redis://127.0.0.1:{}/", server.port);
    let prefix = unique_prefix("bulknoscript");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 64).await;
    let mut con = raw_connection(&url).await;
    for round in 0..2 {
        if round == 1 {
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut con)
                .await
                .unwrap();
        }
        let n = 3000;
        let handles = concat::add_many(
            &app,
            (0..n).map(|i| (format!("r{round}t{i}"), "!".to_owned())),
        )
        .await
        .unwrap();
        let (queue, expected) = queue_and_calls(&mut con, &prefix, &handles).await;
        assert_eq!(queue.len(), n, "round {round}");
        let first_out_of_place = queue
            .iter()
            .zip(&expected)
            .position(|(got, want)| got != want);
        assert_eq!(
            first_out_of_place, None,
            "round {round}: not in the calls' order"
        );
        let _: () = con.del(format!("{prefix}:task_queue")).await.unwrap();
    }
}

/// Takes a map whose keys JSON cannot hold, so a call of it fails to encode.
#[qtasks::task]
async fn pairs(map: HashMap<(u8, u8), u8>) -> usize {
    map.len()
}

/// A call that cannot be added fails the whole `add_many`, and the chunks already handed over
/// still run to their end: every task added fires its after-add trigger, and none after the
/// failed call is added. (The failing call is prepared while the chunk before it is stored.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_bulk_add_that_meets_a_bad_call_finishes_what_it_handed_over() {
    let Some(url) = redis_url("a_bulk_add_that_meets_a_bad_call_finishes_what_it_handed_over")
    else {
        return;
    };
    let prefix = unique_prefix("bulkbad");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 64).await;
    let added = CountFirings::default();
    app.add_plugin(added.clone(), &[qtasks::Trigger::QtasksAddTaskAfterBroker])
        .unwrap();
    // Calls 0..=1100 are good, 1101 cannot encode: chunks 0 and 1 (0..1024) are handed over.
    let calls = (0..1200u32).map(|i| {
        let mut map = HashMap::new();
        if i == 1101 {
            map.insert((1, 2), 3);
        }
        pairs::call(map)
    });
    let error = app.add_many(calls).await.unwrap_err();
    assert!(
        matches!(error, qtasks::Error::InvalidArguments { .. }),
        "{error}"
    );
    let mut con = raw_connection(&url).await;
    let queued: usize = con.llen(format!("{prefix}:task_queue")).await.unwrap();
    assert_eq!(queued, 1024, "the chunks handed over, and none after them");
    assert_eq!(
        added.count(),
        queued,
        "every task added fired its after-add trigger"
    );
    app.flush_all().await.unwrap();
}

/// One bulk add whose calls alternate between the standard record (sent as its values alone)
/// and records with fields of their own (sent named), at priorities of one and several digits:
/// every record is written whole, every entry queued once in order, every priority counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_bulk_add_of_standard_and_other_records_writes_each_whole() {
    let Some(url) = redis_url("a_bulk_add_of_standard_and_other_records_writes_each_whole") else {
        return;
    };
    let prefix = unique_prefix("bulkmixed");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 4).await;
    let priority = |i: usize| [0, 7, -3, 12, 1_000_000_007][i % 5];
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let call = concat::call(format!("w{i}"), "!".into()).priority(priority(i));
            match i % 4 {
                0 => call.expires(Duration::from_secs(3600)),
                1 => call
                    .max_time(Duration::from_secs(60))
                    .rate_key(format!("k{i}")),
                _ => call,
            }
        })
        .collect();
    let handles = app.add_many(calls).await.unwrap();
    let mut con = raw_connection(&url).await;
    let queue: Vec<String> = con
        .lrange(format!("{prefix}:task_queue"), 0, -1)
        .await
        .unwrap();
    let expected: Vec<String> = handles
        .iter()
        .enumerate()
        .map(|(i, handle)| format!("concat:{}:{}", handle.uuid(), priority(i)))
        .collect();
    assert_eq!(queue, expected);
    for (i, handle) in handles.iter().enumerate() {
        let record: HashMap<String, String> = con
            .hgetall(format!("{prefix}:{}", handle.uuid()))
            .await
            .unwrap();
        assert_eq!(record["status"], "new", "task {i}: {record:?}");
        assert_eq!(record["task_name"], "concat", "task {i}");
        assert_eq!(record["args"], format!("[\"w{i}\",\"!\"]"), "task {i}");
        assert_eq!(record["kwargs"], "{}", "task {i}");
        assert_eq!(record["priority"], priority(i).to_string(), "task {i}");
        assert_eq!(record["deliveries"], "0", "task {i}");
        assert_eq!(record["created_at"], record["updated_at"], "task {i}");
        assert_eq!(record.contains_key("expires_at"), i % 4 == 0, "task {i}");
        assert_eq!(record.contains_key("max_time"), i % 4 == 1, "task {i}");
        assert_eq!(
            record.get("rate_key"),
            (i % 4 == 1).then(|| format!("k{i}")).as_ref()
        );
    }
    let waiting = app.stats().await.unwrap().queue.unwrap().waiting;
    let mut expected_waiting = std::collections::BTreeMap::new();
    for i in 0..40 {
        *expected_waiting.entry(priority(i)).or_insert(0u64) += 1;
    }
    assert_eq!(waiting, expected_waiting);
    app.start().await.unwrap();
    for (i, handle) in handles.iter().enumerate() {
        assert_eq!(flow::succeeded(handle).await, json!(format!("w{i}!")));
    }
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

/// A bulk add names uuids: one known already (added before) and one twice in the same batch.
/// Each is queued once; the known one keeps its first record. (The add script asks once per
/// batch whether any record exists, so both kinds of repeat go through their own paths.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_bulk_add_of_known_and_repeated_uuids_queues_each_once() {
    let Some(url) = redis_url("a_bulk_add_of_known_and_repeated_uuids_queues_each_once") else {
        return;
    };
    let prefix = unique_prefix("bulkrepeat");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 4).await;
    let (known, twice, fresh) = (
        qtasks::Uuid::new_v4(),
        qtasks::Uuid::new_v4(),
        qtasks::Uuid::new_v4(),
    );
    concat::call("first".into(), "!".into())
        .uuid(known)
        .add(&app)
        .await
        .unwrap();
    let call = |uuid: qtasks::Uuid, word: &str| concat::call(word.into(), "!".into()).uuid(uuid);
    // Repeats only, nothing known: the batch's own table tells the second one.
    let handles = app
        .add_many([call(twice, "a"), call(twice, "b")])
        .await
        .unwrap();
    assert!(handles.iter().all(|handle| handle.uuid() == twice));
    // A known uuid among new ones.
    app.add_many([call(fresh, "c"), call(known, "second"), call(fresh, "d")])
        .await
        .unwrap();
    let mut con = raw_connection(&url).await;
    let queue: Vec<String> = con
        .lrange(format!("{prefix}:task_queue"), 0, -1)
        .await
        .unwrap();
    let expected: Vec<String> = [known, twice, fresh]
        .iter()
        .map(|uuid| format!("concat:{uuid}:0"))
        .collect();
    assert_eq!(queue, expected);
    app.start().await.unwrap();
    for (uuid, expected) in [(known, "first!"), (twice, "a!"), (fresh, "c!")] {
        let done = app.wait(uuid, Duration::from_secs(10)).await.unwrap();
        assert_eq!(
            done.returning,
            Some(json!(expected)),
            "the first add's record"
        );
    }
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_record_spoiled_mid_run_fails_alone_in_its_finish_batch() {
    let Some(url) = redis_url("a_record_spoiled_mid_run_fails_alone_in_its_finish_batch") else {
        return;
    };
    let prefix = unique_prefix("spoiled");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 64).await;
    // 60 tasks that end within the same few milliseconds: their outcomes go in few batches.
    let handles = slow_concat::add_many(&app, (0..60).map(|i| (format!("t{i}"), 400)))
        .await
        .unwrap();
    app.start().await.unwrap();
    let spoiled = handles[17].uuid();
    let mut con = raw_connection(&url).await;
    let record = format!("{prefix}:{spoiled}");
    for _ in 0..200 {
        let status: Option<String> = con.hget(&record, "status").await.unwrap();
        if status.as_deref() == Some("process") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The record key now holds a string: that one outcome cannot be stored.
    let _: () = con.del(&record).await.unwrap();
    let _: () = con.set(&record, "not a hash").await.unwrap();
    for (i, handle) in handles.iter().enumerate() {
        if i != 17 {
            assert_eq!(flow::succeeded(handle).await, json!(format!("t{i}")));
        }
    }
    // Its lease is dropped all the same (it is not run again and again), and the worker goes
    // on with new tasks.
    let mut leases = usize::MAX;
    for _ in 0..300 {
        leases = con.zcard(format!("{prefix}:qtasks:leases")).await.unwrap();
        if leases == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(leases, 0, "the spoiled task's lease is released");
    let value: String = con.get(&record).await.unwrap();
    assert_eq!(
        value, "not a hash",
        "nothing is written over a key that holds no hash"
    );
    let after = concat::add_task(&app, "still".into(), " going".into())
        .await
        .unwrap();
    assert_eq!(flow::succeeded(&after).await, json!("still going"));
    app.stop().await.unwrap();
    let _: () = con.del(&record).await.unwrap();
    app.flush_all().await.unwrap();
}

#[qtasks::task(retry = 1)]
async fn fails_then_retries(i: u64) -> TaskResult<u64> {
    Err(qtasks::TaskError::msg(format!("attempt failed for {i}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn retries_and_plain_outcomes_share_finish_batches_with_the_index_on_and_off() {
    let Some(url) = redis_url("retries_and_plain_outcomes_share_finish_batches") else {
        return;
    };
    for indexed in [true, false] {
        let prefix = unique_prefix("mixedfinish");
        let options = RedisOptions {
            records_index: indexed,
            ..RedisOptions::default()
        };
        let app = redis_app(&url, &prefix, options, 64).await;
        // Queued first, then run at once: their outcomes reach the finish script together.
        let failing = fails_then_retries::add_many(&app, (0..40).map(|i| (i,)))
            .await
            .unwrap();
        let plain = concat::add_many(&app, (0..40).map(|i| (format!("p{i}"), String::new())))
            .await
            .unwrap();
        app.start().await.unwrap();
        for (i, handle) in plain.iter().enumerate() {
            assert_eq!(flow::succeeded(handle).await, json!(format!("p{i}")));
        }
        let mut con = raw_connection(&url).await;
        let index = format!("{prefix}:qtasks:records:index");
        for handle in &failing {
            // A wait follows the retries to the last attempt.
            let last = handle.wait(WAIT).await.unwrap();
            assert_eq!(
                (last.status, last.retry),
                (TaskStatus::Error, Some(0)),
                "indexed: {indexed}"
            );
            let first = app.get(handle.uuid()).await.unwrap().unwrap();
            assert_eq!(
                (first.status, first.retry_child_uuid),
                (TaskStatus::Retry, Some(last.uuid)),
                "indexed: {indexed}"
            );
            let child = last.uuid;
            // The next attempt is in the index exactly when the index is kept.
            let place: Option<f64> = con.zscore(&index, child.to_string()).await.unwrap();
            assert_eq!(place.is_some(), indexed, "child {child}");
        }
        let leases: usize = con.zcard(format!("{prefix}:qtasks:leases")).await.unwrap();
        assert_eq!(leases, 0);
        app.stop().await.unwrap();
        app.flush_all().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_task_added_with_the_index_off_enters_it_when_a_worker_with_it_takes_it() {
    let Some(url) = redis_url("a_task_added_with_the_index_off_enters_it") else {
        return;
    };
    let prefix = unique_prefix("indexlater");
    let without = RedisOptions {
        records_index: false,
        ..RedisOptions::default()
    };
    let client = redis_app(&url, &prefix, without, 1).await;
    let handle = concat::add_task(&client, "late".into(), "r".into())
        .await
        .unwrap();
    let mut con = raw_connection(&url).await;
    let index = format!("{prefix}:qtasks:records:index");
    let place: Option<f64> = con.zscore(&index, handle.uuid().to_string()).await.unwrap();
    assert_eq!(place, None, "not indexed by a client without the index");
    let worker = redis_app(&url, &prefix, RedisOptions::default(), 4).await;
    worker.start().await.unwrap();
    assert_eq!(flow::succeeded(&handle).await, json!("later"));
    let place: Option<f64> = con.zscore(&index, handle.uuid().to_string()).await.unwrap();
    assert!(place.is_some(), "indexed at its first mark");
    worker.stop().await.unwrap();
    worker.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn an_add_batch_whose_queue_key_is_no_list_writes_nothing() {
    let Some(url) = redis_url("an_add_batch_whose_queue_key_is_no_list") else {
        return;
    };
    let prefix = unique_prefix("badqueue");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let mut con = raw_connection(&url).await;
    let queue = format!("{prefix}:task_queue");
    let _: () = con.set(&queue, "not a list").await.unwrap();
    let error = concat::add_many(&app, (0..5).map(|i| (format!("{i}"), String::new())))
        .await
        .expect_err("the queue cannot take entries");
    let mut reasons = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        reasons.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(
        reasons.contains("holds a string"),
        "the error says why: {reasons}"
    );
    // Nothing was written: no record, no counter, no place in the index.
    let keys: Vec<String> = con.keys(format!("{prefix}:*")).await.unwrap();
    assert_eq!(keys, vec![queue.clone()]);
    let _: () = con.del(&queue).await.unwrap();
    let added = concat::add_task(&app, "now".into(), " it works".into())
        .await
        .unwrap();
    app.start().await.unwrap();
    assert_eq!(flow::succeeded(&added).await, json!("now it works"));
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}
