//! Durability across a failover: `RedisOptions::wait_for_replicas` on a master and a replica of
//! the test's own (their own ports, never the shared Redis), and the warning for a Redis that
//! may evict keys.

use std::time::{Duration, Instant};

use qtasks::redis::{RedisOptions, WaitForReplicas};
use qtasks::{QueueConfig, QueueTasks, TaskStatus};
use qtasks_test_support::{OwnRedis, OwnReplica, redis_url, unique_prefix};
use redis::AsyncCommands;

#[qtasks::task]
async fn replicated(n: u64) -> u64 {
    n + 1
}

async fn connection(port: u16) -> redis::aio::MultiplexedConnection {
    qtasks_test_support::redis::raw_connection(&format!("redis://127.0.0.1:{port}/")).await
}

async fn app_on(master: &OwnRedis, name: &str, wait: Option<WaitForReplicas>) -> QueueTasks {
    let config = QueueConfig {
        name: name.to_owned(),
        max_tasks_process: 4,
        ..QueueConfig::default()
    };
    let options = RedisOptions {
        wait_for_replicas: wait,
        ..RedisOptions::default()
    };
    qtasks::redis::connect_with(&master.url(), config, options)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn adds_and_finishes_wait_for_the_replica_and_a_late_one_fails_the_add() {
    if redis_url("wait_for_replicas").is_none() {
        return;
    }
    let master = OwnRedis::start("replicated-master", false);
    let replica = OwnReplica::start(&master);
    replica.until_in_sync().await;
    let name = unique_prefix("replicated");
    let wait = WaitForReplicas {
        replicas: 1,
        timeout: Duration::from_millis(300),
    };
    let app = app_on(&master, &name, Some(wait)).await;
    let mut on_replica = connection(replica.port).await;

    // An add that returned is on the replica already, with its queue entry.
    let handle = replicated::add_task(&app, 1).await.unwrap();
    let status: Option<String> = on_replica
        .hget(format!("{name}:{}", handle.uuid()), "status")
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("new"));
    let queued: Vec<String> = on_replica
        .lrange(format!("{name}:task_queue"), 0, -1)
        .await
        .unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    // Bulk adds too.
    let many = replicated::add_many(&app, (10..20).map(|n| (n,)))
        .await
        .unwrap();
    let last: Option<String> = on_replica
        .hget(format!("{name}:{}", many[9].uuid()), "status")
        .await
        .unwrap();
    assert_eq!(last.as_deref(), Some("new"));

    // A finish the worker made is on the replica once the worker stopped (a stop waits for
    // the finishes, and each finish for the replica).
    app.start().await.unwrap();
    assert_eq!(handle.result(Duration::from_secs(10)).await.unwrap(), 2);
    for handle in &many {
        handle.result(Duration::from_secs(10)).await.unwrap();
    }
    app.stop().await.unwrap();
    let status: Option<String> = on_replica
        .hget(format!("{name}:{}", handle.uuid()), "status")
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("success"));

    // An add made while the replica is stopped returns only once it is back and has it.
    replica.signal("STOP");
    let waiting = tokio::spawn({
        let app = app.clone();
        async move {
            let started = Instant::now();
            let handle = replicated::add_task(&app, 3).await;
            (handle, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    replica.signal("CONT");
    let (handle, took) = waiting.await.unwrap();
    let late = handle.expect("the replica came back within the timeout");
    assert!(took >= Duration::from_millis(120), "it waited: {took:?}");
    let status: Option<String> = on_replica
        .hget(format!("{name}:{}", late.uuid()), "status")
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("new"));

    // A unique add waits too, and fails when the replica is late.
    replica.signal("STOP");
    let error = replicated::call(8)
        .unique("only-one", Duration::from_secs(60))
        .add(&app)
        .await
        .expect_err("no replica acknowledges the unique add");
    assert!(
        qtasks::backend::ErrorChain(&error)
            .to_string()
            .contains("reached 0 of 1 replicas"),
        "{error}"
    );
    replica.signal("CONT");

    // The replica stalls: an add fails after the timeout, saying why, though the master has
    // it; added again under its uuid once the replica is back, it is there once.
    replica.signal("STOP");
    let uuid = qtasks::Uuid::new_v4();
    let started = Instant::now();
    let error = replicated::call(7)
        .uuid(uuid)
        .add(&app)
        .await
        .expect_err("no replica acknowledges the add");
    let message = qtasks::backend::ErrorChain(&error).to_string();
    assert!(
        message.contains("reached 0 of 1 replicas within 300 ms"),
        "{message}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    let on_master = app.get(uuid).await.unwrap().expect("the master has it");
    assert_eq!(on_master.status, TaskStatus::New);
    replica.signal("CONT");
    replicated::call(7).uuid(uuid).add(&app).await.unwrap();
    let mut master_con = connection(master.port).await;
    // Queued once: in the list, or moved on by the stopped worker's last blocking read
    // (`incoming`, which the next take reads first).
    let mut queued: Vec<String> = master_con
        .lrange(format!("{name}:task_queue"), 0, -1)
        .await
        .unwrap();
    let parked: Vec<String> = master_con
        .lrange(format!("{name}:qtasks:incoming"), 0, -1)
        .await
        .unwrap();
    queued.extend(parked);
    assert_eq!(
        queued
            .iter()
            .filter(|entry| entry.contains(&uuid.to_string()))
            .count(),
        1,
        "{queued:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn wait_for_replicas_that_cannot_work_is_refused_at_connect() {
    if redis_url("wait_for_replicas refused").is_none() {
        return;
    }
    let master = OwnRedis::start("replicas-refused", false);
    let config = QueueConfig {
        name: unique_prefix("refused"),
        ..QueueConfig::default()
    };
    let options = RedisOptions {
        wait_for_replicas: Some(WaitForReplicas {
            replicas: 0,
            timeout: Duration::from_secs(1),
        }),
        ..RedisOptions::default()
    };
    let error = qtasks::redis::connect_with(&master.url(), config.clone(), options)
        .await
        .expect_err("0 replicas is refused");
    assert!(
        error.to_string().contains("ask at least 1 replica"),
        "{error}"
    );
    // A wait the connection would give up on first is refused too.
    let options = RedisOptions {
        wait_for_replicas: Some(WaitForReplicas {
            replicas: 1,
            timeout: Duration::from_secs(10),
        }),
        ..RedisOptions::default()
    };
    let error = qtasks::redis::connect_with(&master.url(), config.clone(), options)
        .await
        .expect_err("a wait as long as the response timeout is refused");
    assert!(
        error.to_string().contains("less than response_timeout"),
        "{error}"
    );
    // Redis keeping the records of another broker (RabbitMQ) does not wait: refused, saying so.
    let options = RedisOptions {
        wait_for_replicas: Some(WaitForReplicas {
            replicas: 1,
            timeout: Duration::from_secs(1),
        }),
        ..RedisOptions::default()
    };
    let records = qtasks::redis::Redis::new(master.url()).options(options);
    let error = qtasks::backend::RecordStoreConnector::connect_records(&records, &config)
        .await
        .err()
        .expect("the pairing is refused");
    assert!(
        error.to_string().contains("do not wait for replicas yet"),
        "{error}"
    );
}

// Current-thread runtime: the connect runs on this thread, under this thread's subscriber.
#[tokio::test(flavor = "current_thread")]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_redis_that_may_evict_keys_is_named_at_connect() {
    if redis_url("maxmemory-policy warning").is_none() {
        return;
    }
    let logs = qtasks_test_support::CapturedLogs::start();
    let redis = OwnRedis::start("evicting", false);
    let _quiet = app_on(&redis, &unique_prefix("noeviction"), None).await;
    let said = logs.text();
    assert!(
        !said.contains("maxmemory-policy"),
        "the default says nothing: {said}"
    );
    let mut con = connection(redis.port).await;
    let set = |name: &str, value: &str| {
        let mut command = redis::cmd("CONFIG");
        command.arg("SET").arg(name).arg(value);
        command
    };
    // An evicting policy without a memory limit evicts nothing: still quiet.
    let _: () = set("maxmemory-policy", "allkeys-lru")
        .query_async(&mut con)
        .await
        .unwrap();
    let _unlimited = app_on(&redis, &unique_prefix("unlimited"), None).await;
    let said = logs.text();
    assert!(
        !said.contains("maxmemory-policy"),
        "no limit, no eviction: {said}"
    );
    let _: () = set("maxmemory", "1gb").query_async(&mut con).await.unwrap();
    let _warned = app_on(&redis, &unique_prefix("evicting"), None).await;
    let said = logs.text();
    assert!(
        said.contains("WARN") && said.contains("maxmemory-policy allkeys-lru"),
        "{said}"
    );
    assert!(said.contains("set `maxmemory-policy noeviction`"), "{said}");
}
