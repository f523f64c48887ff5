//! A running task's progress (`ctx.set_progress`): stored throttled, the last value never lost
//! to the throttle, read by `handle.progress()` and followed live by `progress_updates()`; in
//! memory and on Redis.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use qtasks::redis::RedisOptions;
use qtasks::{QueueTasks, TaskContext, TaskResult};
use qtasks_test_support::redis::redis_app;
use qtasks_test_support::{redis_url, unique_prefix};
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Done {
    done: u64,
    of: u64,
}

/// Reports every step of a tight loop (far faster than the throttle), then waits a little so
/// the last report is stored while it still runs.
#[qtasks::task(echo = true)]
async fn counts_up(ctx: TaskContext, steps: u64) -> TaskResult<u64> {
    for done in 1..=steps {
        ctx.set_progress(Done { done, of: steps })?;
        if done % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(qtasks::PROGRESS_INTERVAL * 3).await;
    Ok(steps)
}

/// Reports and ends at once: the last report is held back by the throttle when the task
/// returns.
#[qtasks::task(echo = true)]
async fn reports_and_ends(ctx: TaskContext, steps: u64) -> TaskResult<()> {
    for done in 1..=steps {
        ctx.set_progress(Done { done, of: steps })?;
    }
    Ok(())
}

/// The run's last report is stored before its outcome, even when the task returns while the
/// throttle holds it back.
async fn the_last_report_is_stored_before_the_outcome(app: &QueueTasks) {
    for steps in [1, 2, 5_000] {
        let handle = reports_and_ends::add_task(app, steps).await.unwrap();
        handle.result(WAIT).await.unwrap();
        assert_eq!(
            handle.progress::<Done>().await.unwrap(),
            Some(Done {
                done: steps,
                of: steps
            }),
            "{steps} steps"
        );
    }
}

async fn progress_is_throttled_and_the_last_value_is_kept(app: &QueueTasks) {
    let steps = 200_000;
    let handle = counts_up::add_task(app, steps).await.unwrap();
    let started = Instant::now();
    let seen: Vec<Done> = handle
        .progress_updates::<Done>()
        .map(|update| update.unwrap())
        .collect()
        .await;
    let elapsed = started.elapsed();
    assert_eq!(handle.result(WAIT).await.unwrap(), steps);

    let last = seen.last().expect("some progress was seen");
    assert_eq!(
        last,
        &Done {
            done: steps,
            of: steps
        },
        "the last report is stored"
    );
    assert!(
        seen.windows(2).all(|pair| pair[0].done < pair[1].done),
        "in order: {seen:?}"
    );
    // At most one write per interval (and the first at once): a tight loop of 200,000
    // reports costs the engine a handful of writes.
    let most =
        (elapsed.as_secs_f64() / qtasks::PROGRESS_INTERVAL.as_secs_f64()).ceil() as usize + 1;
    assert!(
        seen.len() <= most,
        "{} updates in {elapsed:?}: more than one per interval",
        seen.len()
    );
    // The record keeps the last progress after the task ended.
    assert_eq!(
        handle.progress::<Done>().await.unwrap(),
        Some(Done {
            done: steps,
            of: steps
        })
    );
    let record = handle.get().await.unwrap().unwrap();
    assert!(record.progress_at.is_some(), "{record:?}");
}

/// A plain fn that reports from a thread of its own (no runtime there).
#[qtasks::task(echo = true)]
fn reports_from_its_own_thread(ctx: TaskContext) -> TaskResult<u64> {
    std::thread::scope(|threads| {
        threads
            .spawn(|| ctx.set_progress(Done { done: 1, of: 1 }))
            .join()
            .expect("the reporting thread does not panic")
    })?;
    Ok(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_in_memory() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let threaded = reports_from_its_own_thread::add_task(&app).await.unwrap();
    assert_eq!(threaded.result(WAIT).await.unwrap(), 1);
    assert_eq!(
        threaded.progress::<Done>().await.unwrap(),
        Some(Done { done: 1, of: 1 })
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_throttled_in_memory() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    progress_is_throttled_and_the_last_value_is_kept(&app).await;
    the_last_report_is_stored_before_the_outcome(&app).await;
    // A task that never reports has none.
    let quiet = counts_up::add_task(&app, 0).await.unwrap();
    quiet.wait(WAIT).await.unwrap();
    assert_eq!(quiet.progress::<Done>().await.unwrap(), None);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn progress_on_redis() {
    let Some(url) = redis_url("progress_on_redis") else {
        return;
    };
    let prefix = unique_prefix("progress");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 2).await;
    app.start().await.unwrap();
    progress_is_throttled_and_the_last_value_is_kept(&app).await;
    the_last_report_is_stored_before_the_outcome(&app).await;
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}
