//! `app.stats()`: the live numbers checked against what was done, on memory and on Redis.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::stats::QueueStats;
use qtasks::{AddOptions, QueueConfig, QueueTasks, TaskResult};
use qtasks_test_support::WAIT;
use qtasks_test_support::redis::raw_connection;
use qtasks_test_support::redis::redis_app;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use tokio::sync::Semaphore;

/// Per-test gates: a gated task runs until its test lets it finish.
static GATES: LazyLock<Mutex<HashMap<String, Arc<Semaphore>>>> = LazyLock::new(Mutex::default);

fn gate(name: &str) -> Arc<Semaphore> {
    Arc::clone(
        GATES
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(0))),
    )
}

#[qtasks::task]
async fn stats_gated(gate_name: String) -> u32 {
    gate(&gate_name).acquire().await.unwrap().forget();
    1
}

#[qtasks::task]
async fn stats_fails() -> TaskResult<()> {
    Err(qtasks::TaskError::msg("counted as an error"))
}

/// Reads stats until `ready` holds (the worker takes tasks on its own time).
async fn stats_when(app: &QueueTasks, ready: impl Fn(&QueueStats) -> bool) -> QueueStats {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let queue = app
            .stats()
            .await
            .unwrap()
            .queue
            .expect("the broker keeps stats");
        if ready(&queue) {
            return queue;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stats never got there; last: {queue:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stats_follow_what_was_done(app: QueueTasks, gate_name: &str) {
    let empty = app.stats().await.unwrap();
    assert_eq!(empty.app, app.name());
    let queue = empty.queue.unwrap();
    assert_eq!(queue.waiting_total(), 0);
    assert_eq!(queue.oldest_waiting_secs, None);

    // Waiting, by priority; one cancelled before it runs.
    let mut handles = Vec::new();
    for priority in [0, 0, 0, 5, 5] {
        let options = AddOptions::default().priority(priority);
        handles.push(
            app.add_task_with("stats_gated", (gate_name,), (), options)
                .await
                .unwrap(),
        );
    }
    let doomed = app
        .add_task_with(
            "stats_gated",
            (gate_name,),
            (),
            AddOptions::default().priority(9),
        )
        .await
        .unwrap();
    let queue = app.stats().await.unwrap().queue.unwrap();
    assert_eq!(
        queue.waiting,
        BTreeMap::from([(0, 3), (5, 2), (9, 1)]),
        "{queue:?}"
    );
    assert!(queue.oldest_waiting_secs.is_some_and(|age| age >= 0.0));
    app.cancel(doomed.uuid(), "not wanted").await.unwrap();

    // Two run (the worker's slots), three wait; the worker lists itself.
    app.start().await.unwrap();
    let queue = stats_when(&app, |q| q.running == 2).await;
    assert_eq!(queue.waiting_total(), 3, "{queue:?}");
    assert_eq!(queue.finished.cancel, 1);
    let workers = app.stats().await.unwrap().workers;
    assert_eq!(workers.len(), 1, "{workers:?}");
    let worker = &workers[0];
    assert_eq!(worker.concurrency, 2);
    assert_eq!(worker.pid, std::process::id());
    assert!(worker.heartbeat_age() < Duration::from_secs(10));

    // All finish; one more fails.
    gate(gate_name).add_permits(5);
    for handle in handles {
        handle.wait(WAIT).await.unwrap();
    }
    stats_fails::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let queue = stats_when(&app, |q| q.running == 0).await;
    assert_eq!(queue.waiting_total(), 0);
    assert_eq!(
        (
            queue.finished.success,
            queue.finished.error,
            queue.finished.cancel
        ),
        (5, 1, 1)
    );
    assert_eq!(queue.finished_last_minute, 7);
    assert_eq!(app.counters().processed, 6);

    app.stop().await.unwrap();
    assert!(app.stats().await.unwrap().workers.is_empty());
}

#[tokio::test]
async fn memory_stats_follow_what_was_done() {
    let app = QueueTasks::with_config(QueueConfig {
        max_tasks_process: 2,
        ..Default::default()
    });
    stats_follow_what_was_done(app, "memory").await;
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn redis_stats_follow_what_was_done() {
    let Some(url) = redis_url("redis_stats_follow_what_was_done") else {
        return;
    };
    let prefix = unique_prefix("stats");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 2).await;
    stats_follow_what_was_done(app.clone(), &prefix).await;
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn redis_dead_letters_are_counted_listed_and_resolved() {
    use redis::AsyncCommands;
    let Some(url) = redis_url("redis_dead_letters_are_counted_listed_and_resolved") else {
        return;
    };
    let prefix = unique_prefix("dead");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 2).await;
    let mut con = raw_connection(&url).await;
    for garbage in ["no colons at all", "stats_fails:not-a-uuid:0"] {
        let _: () = con
            .rpush(format!("{prefix}:task_queue"), garbage)
            .await
            .unwrap();
    }
    // Python clients push without the per-priority counters: counted under priority 0.
    assert_eq!(
        app.stats().await.unwrap().queue.unwrap().waiting,
        BTreeMap::from([(0, 2)])
    );
    app.start().await.unwrap();
    let queue = stats_when(&app, |q| q.dead_letters == 2).await;
    assert_eq!(queue.waiting_total(), 0);

    let letters = app.dead_letters().list(10).await.unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0].entry, "no colons at all");
    assert!(!letters[0].reason.is_empty());
    assert!(
        app.dead_letters()
            .resolve(&letters[0], false)
            .await
            .unwrap()
    );
    // Resolved once only.
    assert!(
        !app.dead_letters()
            .resolve(&letters[0], false)
            .await
            .unwrap()
    );
    assert_eq!(app.stats().await.unwrap().queue.unwrap().dead_letters, 1);
    app.stop().await.unwrap();

    // Requeued: back in the queue as it was.
    assert!(app.dead_letters().resolve(&letters[1], true).await.unwrap());
    // (In `task_queue`, or in `incoming` if the stopped worker's last blocking wait, which
    // Redis finishes on its own, moved it there.)
    let mut queued: Vec<String> = Vec::new();
    for list in ["task_queue", "qtasks:incoming"] {
        let entries: Vec<String> = con.lrange(format!("{prefix}:{list}"), 0, -1).await.unwrap();
        queued.extend(entries);
    }
    assert_eq!(queued, ["stats_fails:not-a-uuid:0"]);
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn redis_throughput_buckets_older_than_a_minute_fold_into_the_totals() {
    use redis::AsyncCommands;
    let Some(url) = redis_url("redis_throughput_buckets_older_than_a_minute_fold_into_the_totals")
    else {
        return;
    };
    let prefix = unique_prefix("fold");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let mut con = raw_connection(&url).await;
    // Seven successes two minutes ago, as the finish script counted them then.
    let (seconds, _): (u64, u64) = redis::cmd("TIME").query_async(&mut con).await.unwrap();
    let stats_key = format!("{prefix}:qtasks:stats");
    let old_bucket = format!("t:{}:success", seconds - 120);
    let _: () = con.hset(&stats_key, &old_bucket, 7).await.unwrap();
    let queue = app.stats().await.unwrap().queue.unwrap();
    assert_eq!((queue.finished.success, queue.finished_last_minute), (7, 0));

    app.start().await.unwrap();
    stats_fails::add_task(&app)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    app.add_task("stats_gated", ("fold",), ()).await.unwrap();
    gate("fold").add_permits(1);
    let queue = stats_when(&app, |q| q.finished.success == 8).await;
    assert_eq!(queue.finished.error, 1);
    assert_eq!(queue.finished_last_minute, 2);
    // The old bucket was folded into the total when this second's first bucket was made.
    let fields: Vec<String> = con.hkeys(&stats_key).await.unwrap();
    assert!(!fields.contains(&old_bucket), "{fields:?}");
    assert!(fields.contains(&"success".to_owned()), "{fields:?}");
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}
