//! Unique tasks: `#[task(unique_for = ..)]` by arguments and `AddOptions::unique` by key, in
//! memory and on Redis, where adds race from several processes. (The conformance suite checks
//! the contract on every engine.)

use std::process::Command;
use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::{AddOptions, QueueTasks, TaskStatus};
use qtasks_test_support::redis::{raw_connection, redis_app};
use qtasks_test_support::{WAIT, redis_url, unique_prefix};
use redis::AsyncCommands;
use serde_json::json;

#[qtasks::task(unique_for = "1m")]
async fn sync_account(account: u64) -> u64 {
    account
}

#[tokio::test]
async fn unique_for_makes_one_call_per_arguments() {
    let app = QueueTasks::new(); // not started: the calls wait
    let first = sync_account::add_task(&app, 7).await.unwrap();
    let again = sync_account::add_task(&app, 7).await.unwrap();
    let other = sync_account::add_task(&app, 8).await.unwrap();
    assert_eq!(
        first.uuid(),
        again.uuid(),
        "the same arguments: the same task"
    );
    assert_ne!(first.uuid(), other.uuid(), "other arguments: another task");
    // A key of the caller's own replaces the one by arguments.
    let keyed = sync_account::call(7)
        .unique("sync:all", Duration::from_secs(60))
        .add(&app)
        .await
        .unwrap();
    assert_ne!(keyed.uuid(), first.uuid());
    app.start().await.unwrap();
    assert_eq!(first.result(WAIT).await.unwrap(), 7);
    assert_eq!(other.result(WAIT).await.unwrap(), 8);
    assert_eq!(keyed.result(WAIT).await.unwrap(), 7);
    // Within its minute, the ended call still answers for its arguments.
    let later = sync_account::add_task(&app, 7).await.unwrap();
    assert_eq!(later.uuid(), first.uuid());
    assert_eq!(
        app.stats().await.unwrap().queue.unwrap().finished.success,
        3,
        "three tasks ran: 7, 8 and the keyed one"
    );
    // A bad key is refused, naming what is wrong.
    let error = app
        .add_task_with(
            "sync_account",
            (1,),
            (),
            AddOptions::default().unique("", Duration::ZERO),
        )
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("unique key cannot be empty"),
        "{error}"
    );
    app.stop().await.unwrap();
}

/// Run as a child process by the test below: adds `record_run` under the unique key of
/// `QTASKS_TEST_UNIQUE_KEY` and prints the handle's uuid.
#[tokio::test]
async fn unique_adder_process() {
    let (Ok(url), Ok(prefix), Ok(key)) = (
        std::env::var("QTASKS_TEST_REDIS_URL"),
        std::env::var("QTASKS_TEST_UNIQUE_PREFIX"),
        std::env::var("QTASKS_TEST_UNIQUE_KEY"),
    ) else {
        return; // not a child: nothing to do
    };
    let app = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let options = AddOptions::default().unique(key, Duration::from_secs(60));
    let handle = app
        .add_task_with("record_run", ("racer", 0), (), options)
        .await
        .unwrap();
    println!("UUID {}", handle.uuid());
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn adds_racing_from_several_processes_make_one_task() {
    let Some(url) = redis_url("adds_racing_from_several_processes_make_one_task") else {
        return;
    };
    let prefix = unique_prefix("unique");
    let children: Vec<_> = (0..6)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "unique_adder_process", "--nocapture"])
                .env("QTASKS_TEST_REDIS_URL", &url)
                .env("QTASKS_TEST_UNIQUE_PREFIX", &prefix)
                .env("QTASKS_TEST_UNIQUE_KEY", "nightly-report")
                .stderr(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut uuids = Vec::new();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let uuid = text
            .lines()
            .find_map(|line| line.strip_prefix("UUID "))
            .unwrap_or_else(|| panic!("no uuid in {text:?}"))
            .to_owned();
        uuids.push(uuid);
    }
    assert!(uuids.iter().all(|uuid| *uuid == uuids[0]), "{uuids:?}");
    let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let stats = client.stats().await.unwrap().queue.unwrap();
    assert_eq!(stats.waiting_total(), 1, "one task queued: {stats:?}");
    let mut con = raw_connection(&url).await;
    let holder: String = con
        .hget(format!("{prefix}:qtasks:unique:nightly-report"), "uuid")
        .await
        .unwrap();
    assert_eq!(holder, uuids[0]);
    let record = client
        .get(uuids[0].parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, TaskStatus::New);
    assert_eq!(record.args, vec![json!("racer"), json!(0)]);
    client.flush_all().await.unwrap();
}

static FLAKY_RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[qtasks::task(retry = 1, retry_delay = "300ms")]
async fn flaky_once() -> qtasks::TaskResult<u32> {
    if FLAKY_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
        return Err(qtasks::TaskError::msg("the first attempt fails"));
    }
    Ok(2)
}

#[qtasks::task(unique_for = "1h")]
async fn always_fails_unique(n: u32) -> qtasks::TaskResult<u32> {
    Err(qtasks::TaskError::msg(format!("no {n}")))
}

#[tokio::test]
async fn a_key_follows_retries_frees_after_its_window_and_spares_groups_and_hand_retries() {
    let app = QueueTasks::new();
    // A waiting holder holds; once it ended and its window passed, the key is free.
    let window = Duration::from_millis(300);
    let first = sync_account::call(1)
        .unique("w", window)
        .add(&app)
        .await
        .unwrap();
    let again = sync_account::call(1)
        .unique("w", window)
        .add(&app)
        .await
        .unwrap();
    assert_eq!(first.uuid(), again.uuid(), "held while it waits");
    app.start().await.unwrap();
    first.result(WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    let later = sync_account::call(1)
        .unique("w", window)
        .add(&app)
        .await
        .unwrap();
    assert_ne!(later.uuid(), first.uuid(), "free after its window");

    // A holder whose first attempt failed and waits to be retried still holds (no window).
    let flaky = flaky_once::call()
        .unique("r", Duration::ZERO)
        .add(&app)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while flaky.get().await.unwrap().unwrap().status != TaskStatus::Retry {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first attempt never failed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let during = flaky_once::call()
        .unique("r", Duration::ZERO)
        .add(&app)
        .await
        .unwrap();
    assert_eq!(during.uuid(), flaky.uuid(), "held while its retry waits");
    assert_eq!(flaky.result(WAIT).await.unwrap(), 2);
    let after = flaky_once::call()
        .unique("r", Duration::ZERO)
        .add(&app)
        .await
        .unwrap();
    assert_ne!(
        after.uuid(),
        flaky.uuid(),
        "free once the last attempt ended"
    );

    // Members of a group keep their own ids: a key does not merge them.
    let group = qtasks::group([
        sync_account::call(5).unique("g", window),
        sync_account::call(5).unique("g", window),
    ])
    .add(&app)
    .await
    .unwrap();
    assert_eq!(group.results::<u64>(WAIT).await.unwrap(), vec![5, 5]);

    // A retry by hand of a failed `unique_for` task is a new attempt, not the failed one.
    let failed = always_fails_unique::add_task(&app, 3).await.unwrap();
    assert_eq!(failed.wait(WAIT).await.unwrap().status, TaskStatus::Error);
    let retried = app.records().retry(failed.uuid()).await.unwrap();
    assert_ne!(retried.uuid(), failed.uuid());
    assert_eq!(retried.wait(WAIT).await.unwrap().status, TaskStatus::Error);
    app.stop().await.unwrap();
}
