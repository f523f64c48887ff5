//! Following a Sentinel failover (`redis+sentinel://`): a master, a replica and three Sentinels
//! of the test's own (their own ports, never the shared Redis), the master killed during a
//! drain with a waiter on every task.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use qtasks::redis::{RedisOptions, WaitForReplicas};
use qtasks::{QueueConfig, TaskStatus};
use qtasks_test_support::{OwnRedis, OwnReplica, OwnSentinels, redis_url, unique_prefix};

/// Runs per task (by its number, per test: each test numbers its tasks from its own base).
static RUNS: LazyLock<Mutex<HashMap<u64, usize>>> = LazyLock::new(Mutex::default);

#[qtasks::task]
async fn failover_step(n: u64) -> u64 {
    *RUNS.lock().entry(n).or_default() += 1;
    tokio::time::sleep(Duration::from_millis(40)).await;
    n * 2
}

async fn connection(port: u16) -> redis::aio::MultiplexedConnection {
    qtasks_test_support::redis::raw_connection(&format!("redis://127.0.0.1:{port}/")).await
}

/// What a drain through a failover showed.
struct Figures {
    /// From the kill to the first result a waiter got after it.
    resumed_after: Duration,
    /// Tasks that ran more than once.
    ran_twice: usize,
}

/// Adds `count` tasks (numbered from `base`) with a waiter on each, kills the master once a
/// quarter of them ran, and checks that every waiter gets its result from the new master,
/// that adds go there too, and that the subscriptions and the heartbeat followed.
async fn drain_through_a_failover(
    base: u64,
    count: u64,
    wait_for_replicas: Option<WaitForReplicas>,
) -> Figures {
    let mut master = OwnRedis::start("sentinel-master", false);
    let replica = OwnReplica::start(&master);
    replica.until_in_sync().await;
    let sentinels = OwnSentinels::start(&master, "qtasks-test");
    sentinels.until_ready(1).await;

    let name = unique_prefix("sentinel");
    let config = QueueConfig {
        name: name.clone(),
        max_tasks_process: 8,
        ..QueueConfig::default()
    };
    let options = RedisOptions {
        // A take the failover lost is taken again after this.
        lease: Duration::from_secs(3),
        wait_for_replicas,
        ..RedisOptions::default()
    };
    let app = qtasks::redis::connect_with(&sentinels.url(), config, options)
        .await
        .expect("the Sentinels name the master");
    let handles = failover_step::add_many(&app, (base..base + count).map(|n| (n,)))
        .await
        .unwrap();
    // Every add is on the replica before the drain starts: the adds are not what is tested
    // here (wait_for_replicas is what keeps them; see replicas.rs).
    let mut on_master = connection(master.port).await;
    let _: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query_async(&mut on_master)
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for handle in handles {
        waiters.push(tokio::spawn(async move {
            let answer = handle.result(Duration::from_secs(120)).await;
            (handle.uuid(), answer, Instant::now())
        }));
    }
    app.start().await.unwrap();

    // A quarter done, the master dies.
    let started = Instant::now();
    while RUNS
        .lock()
        .keys()
        .filter(|n| (base..base + count).contains(n))
        .count()
        < usize::try_from(count / 4).unwrap()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the drain never got going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    master.kill();
    let killed = Instant::now();

    // Every waiter gets its result; none failed.
    let mut first_after_kill: Option<Instant> = None;
    for waiter in waiters {
        let (uuid, answer, at) = waiter.await.unwrap();
        let value = answer.unwrap_or_else(|failure| panic!("task {uuid} failed: {failure}"));
        assert_eq!(value % 2, 0);
        if at > killed {
            first_after_kill = Some(first_after_kill.map_or(at, |first| first.min(at)));
        }
    }
    let new_master = sentinels
        .master_port()
        .await
        .expect("the Sentinels name a master");
    assert_eq!(new_master, replica.port, "the replica was promoted");

    if wait_for_replicas.is_some() {
        // The new master has no replica yet: an add says so.
        let error = failover_step::add_task(&app, base + count + 100)
            .await
            .expect_err("no replica acknowledges the add");
        let message = qtasks::backend::ErrorChain(&error).to_string();
        assert!(message.contains("reached 0 of 1 replicas"), "{message}");
        // The old master comes back, and the Sentinels make it the new master's replica.
        master.launch();
        let started = Instant::now();
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut connection(master.port).await)
                .await
                .unwrap_or_default();
            if info.contains("role:slave") && info.contains("master_link_status:up") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the old master never became a replica: {info}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Adds go to the new master, and run.
    let more = failover_step::add_many(&app, (base + count..base + count + 20).map(|n| (n,)))
        .await
        .unwrap();
    for handle in &more {
        assert_eq!(handle.result(Duration::from_secs(30)).await.unwrap() % 2, 0);
        let record = app.get(handle.uuid()).await.unwrap().unwrap();
        assert_eq!(record.status, TaskStatus::Success);
    }

    // The result and cancel subscriptions and the heartbeat are on the new master.
    let mut on_new = connection(new_master).await;
    let started = Instant::now();
    loop {
        let subscribed: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("{name}:qtasks:done"))
            .arg(format!("{name}:qtasks:cancel"))
            .query_async(&mut on_new)
            .await
            .unwrap();
        let beating: bool = redis::cmd("EXISTS")
            .arg(format!("{name}:GlobalConfig:main"))
            .query_async(&mut on_new)
            .await
            .unwrap();
        if beating && subscribed.iter().all(|(_, count)| *count >= 1) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "subscriptions {subscribed:?}, heartbeat {beating}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await.unwrap();

    let runs = RUNS.lock();
    let all = base..base + count + 20;
    let missing: Vec<u64> = all.clone().filter(|n| !runs.contains_key(n)).collect();
    assert!(missing.is_empty(), "never ran: {missing:?}");
    Figures {
        resumed_after: first_after_kill.map_or(Duration::ZERO, |at| at - killed),
        ran_twice: all.filter(|n| runs[n] > 1).count(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_drain_follows_the_master_through_a_sentinel_failover() {
    if redis_url("sentinel failover").is_none() {
        return;
    }
    let figures = drain_through_a_failover(0, 400, None).await;
    eprintln!(
        "sentinel failover, default options: 400 tasks, resumed {:?} after the kill, {} ran twice",
        figures.resumed_after, figures.ran_twice
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_drain_that_waits_for_replicas_follows_the_master_too() {
    if redis_url("sentinel failover, waiting for replicas").is_none() {
        return;
    }
    // After the failover the new master has no replica: each finish waits the 100 ms out and
    // is logged as late, and the drain goes on.
    let wait = WaitForReplicas {
        replicas: 1,
        timeout: Duration::from_millis(100),
    };
    let figures = drain_through_a_failover(10_000, 400, Some(wait)).await;
    eprintln!(
        "sentinel failover, wait_for_replicas 1: 400 tasks, resumed {:?} after the kill, {} ran twice",
        figures.resumed_after, figures.ran_twice
    );
}

#[tokio::test]
async fn a_bad_sentinel_url_says_what_is_wrong() {
    let error = qtasks::redis::connect("redis+sentinel://:secret@127.0.0.1:1")
        .await
        .expect_err("no master named");
    let message = error.to_string();
    assert!(message.contains("names no master"), "{message}");
    assert!(!message.contains("secret"), "{message}");
}
