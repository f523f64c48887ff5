//! An app spread over partitions (`RedisOptions::partitions`) on the machine's Redis
//! (`QTASKS_TEST_REDIS_URL`): its tasks land in every partition's keys and run with their
//! retries there; a process that asks for another number of partitions is refused, since its
//! tasks would go where no worker looks. (On a cluster: `cluster.rs` and the conformance suite.)

use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::redis::partitions::{partition_names, partition_of};
use qtasks::{QueueConfig, QueueTasks, TaskResult, TaskStatus};
use qtasks_test_support::redis::raw_connection;
use qtasks_test_support::{WAIT, redis_url, unique_prefix};
use redis::AsyncCommands;

#[qtasks::task]
async fn spread_double(n: u64) -> u64 {
    n * 2
}

#[qtasks::task(retry = 2)]
async fn spread_fails(n: u64) -> TaskResult<u64> {
    let _ = n;
    Err(qtasks::TaskError::msg("failing on purpose"))
}

async fn app(url: &str, name: &str, partitions: u16) -> qtasks::Result<QueueTasks> {
    let config = QueueConfig {
        name: name.to_owned(),
        max_tasks_process: 8,
        ..QueueConfig::default()
    };
    let options = RedisOptions {
        partitions,
        ..RedisOptions::default()
    };
    qtasks::redis::connect_with(url, config, options).await
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_partitioned_app_spreads_its_tasks_and_their_retries_stay_in_their_partition() {
    let Some(url) = redis_url("partitions spread") else {
        return;
    };
    let name = unique_prefix("partitions");
    let app = app(&url, &name, 3).await.unwrap();
    let mut handles = Vec::new();
    for n in 0..60 {
        handles.push(spread_double::add_task(&app, n).await.unwrap());
    }
    // Each partition's queue holds the tasks its uuids place there, and every one has some.
    let mut con = raw_connection(&url).await;
    let names = partition_names(&name, 3);
    for (index, partition) in names.iter().enumerate() {
        let waiting: usize = con.llen(format!("{partition}:task_queue")).await.unwrap();
        let placed = handles
            .iter()
            .filter(|handle| partition_of(handle.uuid(), 3) == index)
            .count();
        assert_eq!(waiting, placed, "partition {index} ({partition})");
        assert!(placed > 0, "partition {index} got none of 60 tasks");
        assert_eq!(
            app.partition_of(handles[0].uuid()),
            partition_of(handles[0].uuid(), 3)
        );
    }
    let failing = spread_fails::add_task(&app, 7).await.unwrap();
    app.start().await.unwrap();
    for (n, handle) in (0..).zip(&handles) {
        assert_eq!(handle.result(WAIT).await.unwrap(), n * 2);
    }
    // Two retries, each attempt read back by its own uuid: each lives where its uuid places it.
    let last = failing.wait(WAIT).await.unwrap();
    assert_eq!((last.status, last.retry), (TaskStatus::Error, Some(0)));
    let mut attempt = app.get(failing.uuid()).await.unwrap().unwrap();
    let mut attempts = 1;
    while let Some(next) = attempt.retry_child_uuid {
        assert_eq!(
            partition_of(next, 3),
            partition_of(failing.uuid(), 3),
            "a retry stays in its task's partition"
        );
        attempt = app
            .get(next)
            .await
            .unwrap()
            .expect("the next attempt's record");
        attempts += 1;
    }
    assert_eq!(attempts, 3);
    // The listing and the counters see every partition.
    let page = app
        .records()
        .list(&qtasks::records::RecordQuery::default().limit(100))
        .await
        .unwrap();
    assert_eq!(page.records.len(), 63, "60 tasks and three attempts");
    let stats = app.stats().await.unwrap().queue.expect("Redis keeps stats");
    assert_eq!(stats.finished.success, 60);
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
    let _: () = con.del(format!("{name}:qtasks:partitions")).await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_process_with_another_number_of_partitions_is_refused() {
    let Some(url) = redis_url("partitions agree") else {
        return;
    };
    let name = unique_prefix("partitions-agree");
    let spread = app(&url, &name, 3).await.unwrap();
    for other in [1, 2] {
        let refused = app(&url, &name, other)
            .await
            .err()
            .unwrap_or_else(|| panic!("partitions = {other} connected to an app spread over 3"));
        let said = refused.to_string();
        assert!(
            said.contains("spread over 3 partitions")
                && said.contains(&format!("asks for {other}")),
            "{said}"
        );
    }
    // The same number connects (also said by the URL, as the command line would), and a task
    // one adds the other runs.
    let again = app(&format!("{url}?partitions=3"), &name, 1).await.unwrap();
    let twice = app(&format!("{url}?partitions=3"), &name, 2)
        .await
        .err()
        .unwrap();
    assert!(twice.to_string().contains("say it once"), "{twice}");
    let handle = spread_double::add_task(&again, 21).await.unwrap();
    spread.start().await.unwrap();
    assert_eq!(handle.result(Duration::from_secs(10)).await.unwrap(), 42);
    spread.stop().await.unwrap();
    spread.flush_all().await.unwrap();
    let mut con = raw_connection(&url).await;
    let _: () = con.del(format!("{name}:qtasks:partitions")).await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn spreading_an_app_whose_tasks_wait_in_one_partition_is_refused() {
    let Some(url) = redis_url("partitions stranded") else {
        return;
    };
    let name = unique_prefix("partitions-stranded");
    let single = app(&url, &name, 1).await.unwrap();
    let waiting = spread_double::add_task(&single, 1).await.unwrap();
    let refused = app(&url, &name, 3).await.expect_err("refused");
    assert!(
        refused.to_string().contains("would be stranded"),
        "{refused}"
    );
    // Nothing was written: the app's own workers still see one partition, and run the task.
    single.start().await.unwrap();
    assert_eq!(waiting.result(WAIT).await.unwrap(), 2);
    single.stop().await.unwrap();
    single.flush_all().await.unwrap();
    let mut con = raw_connection(&url).await;
    let marker: Option<String> = con.get(format!("{name}:qtasks:partitions")).await.unwrap();
    assert_eq!(marker, None);
}
