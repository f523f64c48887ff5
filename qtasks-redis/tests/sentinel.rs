//! Following a Sentinel failover (`redis+sentinel://`): a master, a replica and three Sentinels
//! of the test's own (their own ports, never the shared Redis), the master killed during a
//! drain with a waiter on every task.

use std::time::{Duration, Instant};

use qtasks::redis::{RedisOptions, WaitForReplicas};
use qtasks::{QueueConfig, TaskStatus};
use qtasks_test_support::fault_drain::{Figures, drain_through, drained_step, runs_of};
use qtasks_test_support::{OwnRedis, OwnReplica, OwnSentinels, redis_url, unique_prefix};

/// A master, its replica (synced) and three Sentinels that watch it as `name` (ready to fail
/// over).
async fn watched_master(name: &str) -> (OwnRedis, OwnReplica, OwnSentinels) {
    let master = OwnRedis::start("sentinel-master", false);
    let replica = OwnReplica::start(&master);
    replica.until_in_sync().await;
    let sentinels = OwnSentinels::start(&master, name);
    sentinels.until_ready(1).await;
    (master, replica, sentinels)
}

async fn connection(port: u16) -> redis::aio::MultiplexedConnection {
    qtasks_test_support::redis::raw_connection(&format!("redis://127.0.0.1:{port}/")).await
}

/// Drains `count` tasks (numbered from `base`) with a waiter on each, killing the master once a
/// quarter of them ran (`drain_through`: every waiter gets its result), and checks that the
/// replica was promoted, that adds go there too, and that the subscriptions and the heartbeat
/// followed.
async fn drain_through_a_failover(
    base: u64,
    count: u64,
    wait_for_replicas: Option<WaitForReplicas>,
) -> Figures {
    let (mut master, replica, sentinels) = watched_master("qtasks-test").await;

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
    // A quarter done, the master dies, once the replica has every write made so far (the adds
    // are not what is tested here: wait_for_replicas is what keeps them; see replicas.rs).
    let (dying, promoted) = (&mut master, &replica);
    let figures = drain_through(&app, base, count, move || async move {
        promoted.until_caught_up(dying).await;
        dying.kill();
    })
    .await;
    let new_master = sentinels
        .master_port()
        .await
        .expect("the Sentinels name a master");
    assert_eq!(new_master, replica.port, "the replica was promoted");

    if wait_for_replicas.is_some() {
        // The new master has no replica yet: an add says so.
        let error = drained_step::add_task(&app, base + count + 100)
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
    app.start().await.unwrap();
    let more = drained_step::add_many(&app, (base + count..base + count + 20).map(|n| (n,)))
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
    let missing: Vec<u64> = (base + count..base + count + 20)
        .filter(|n| runs_of(*n) == 0)
        .collect();
    assert!(missing.is_empty(), "never ran: {missing:?}");
    figures
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn sentinels_that_ask_for_a_password_are_given_it() {
    if redis_url("sentinel password").is_none() {
        return;
    }
    let master = OwnRedis::start("sentinel-password-master", false);
    let replica = OwnReplica::start(&master);
    replica.until_in_sync().await;
    let sentinels = OwnSentinels::start_with_password(&master, "guarded", "s3ntinel-pw");
    sentinels.until_ready(1).await;
    let config = QueueConfig {
        name: unique_prefix("sentinel-password"),
        ..QueueConfig::default()
    };

    // Without the password, or with a wrong one, the Sentinels refuse, and the error says
    // where it failed without showing a password.
    let error =
        qtasks::redis::connect_with(&sentinels.url(), config.clone(), RedisOptions::default())
            .await
            .expect_err("the Sentinels ask for their password");
    let message = qtasks::backend::ErrorChain(&error).to_string();
    assert!(message.contains("cannot connect to Redis at"), "{message}");
    let wrong = format!("{}?sentinel_password=wrong-pw", sentinels.url());
    let error = qtasks::redis::connect_with(&wrong, config.clone(), RedisOptions::default())
        .await
        .expect_err("a wrong password is refused");
    let message = qtasks::backend::ErrorChain(&error).to_string();
    assert!(message.contains("cannot connect to Redis at"), "{message}");
    assert!(!message.contains("wrong-pw"), "{message}");

    let url = format!("{}?sentinel_password=s3ntinel-pw", sentinels.url());
    let app = qtasks::redis::connect_with(&url, config, RedisOptions::default())
        .await
        .expect("the Sentinels are given their password");
    let handle = drained_step::add_task(&app, 7_000_000).await.unwrap();
    app.start().await.unwrap();
    assert_eq!(
        handle.result(Duration::from_secs(30)).await.unwrap(),
        14_000_000
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn an_old_master_back_after_the_failover_gets_no_writes() {
    if redis_url("sentinel, the old master back").is_none() {
        return;
    }
    let (mut master, replica, sentinels) = watched_master("qtasks-back").await;
    let name = unique_prefix("sentinel-back");
    let config = QueueConfig {
        name: name.clone(),
        ..QueueConfig::default()
    };
    let app = qtasks::redis::connect_with(&sentinels.url(), config, RedisOptions::default())
        .await
        .expect("the Sentinels name the master");
    // (The app's connections are made and used before the kill.)
    drained_step::add_task(&app, 1).await.unwrap();
    replica.until_caught_up(&master).await;
    master.kill();
    // The replica is promoted. The Sentinels then stop answering (frozen: a look for the
    // master fails), and the old master comes back: it calls itself master, with its old
    // data, until the Sentinels make it a replica.
    let started = Instant::now();
    while !failed_over_to(&sentinels, replica.port).await {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never failed over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sentinels.signal("STOP");
    master.launch();
    let role: String = redis::cmd("INFO")
        .arg("replication")
        .query_async(&mut connection(master.port).await)
        .await
        .unwrap();
    assert!(role.contains("role:master"), "{role}");
    // The Sentinels answer again in 2 s.
    let thaw = {
        let pids = sentinels.pids();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            for pid in pids {
                let _ = std::process::Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
        })
    };

    // The next add goes to the new master, not to the old one's address.
    let started = Instant::now();
    let second = loop {
        match drained_step::add_task(&app, 2).await {
            Ok(handle) => break handle,
            Err(error) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "adds kept failing: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let on_new: bool = redis::cmd("EXISTS")
        .arg(format!("{name}:{}", second.uuid()))
        .query_async(&mut connection(replica.port).await)
        .await
        .unwrap();
    assert!(
        on_new,
        "the add went to the old master, whose writes are lost"
    );
    thaw.await.unwrap();
}

/// Whether every Sentinel has ended the failover to the master on `port` (`SENTINEL MASTER`
/// names it, with no failover in progress).
async fn failed_over_to(sentinels: &OwnSentinels, port: u16) -> bool {
    for sentinel in &sentinels.ports {
        let master: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(&sentinels.name)
            .query_async(&mut connection(*sentinel).await)
            .await
            .unwrap_or_default();
        let done = master.get("port") == Some(&port.to_string())
            && master
                .get("flags")
                .is_some_and(|flags| !flags.contains("failover_in_progress"));
        if !done {
            return false;
        }
    }
    true
}
