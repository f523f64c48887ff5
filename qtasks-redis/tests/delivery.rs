//! Delivery on Redis under the faults the adversarial review found: bad records in a take's
//! batch, a stale finisher, a process that takes back its own expired lease, and a cancel whose
//! message was lost. Each test drives the broker itself where the fault needs a precise order
//! (a lease made to run out by hand), or a worker where it does not. Every test uses its own key
//! prefix on the machine's Redis.

use std::time::Duration;

use qtasks::backend::{BackendParts, Broker, Connector, Delivery};
use qtasks::redis::{Redis, RedisOptions};
use qtasks::{Outcome, QueueConfig, QueuedTask, TaskStatus, Uuid};
use qtasks_test_support::WAIT;
use qtasks_test_support::flow;
use qtasks_test_support::redis::raw_connection;
use qtasks_test_support::redis::redis_app;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use redis::AsyncCommands;
use serde_json::json;

#[qtasks::task]
async fn delivery_echo(label: String) -> String {
    label
}

/// The broker, storage and global config of an app under `prefix`, with a one-second lease.
async fn parts(url: &str, prefix: &str) -> BackendParts {
    let config = QueueConfig {
        name: prefix.to_owned(),
        ..Default::default()
    };
    Redis::new(url)
        .options(RedisOptions {
            lease: Duration::from_secs(1),
            ..Default::default()
        })
        .connect(&config)
        .await
        .expect("Redis is reachable")
}

/// Takes exactly one delivery (waiting for it).
async fn take_one(broker: &dyn Broker) -> Delivery {
    let mut taken = tokio::time::timeout(WAIT, broker.next_batch(1))
        .await
        .expect("a task is taken in time")
        .expect("the take works");
    assert_eq!(taken.len(), 1);
    taken.remove(0)
}

/// Adds one task (of a name no worker here runs: the test plays the worker).
async fn add_one(broker: &dyn Broker) -> QueuedTask {
    let task = QueuedTask::new(Uuid::new_v4(), "delivery_echo");
    broker.add(task.clone()).await.unwrap();
    task
}

/// Deletes the test's queue and records.
async fn flush(broker: &dyn Broker, storage: &dyn qtasks::backend::Storage) {
    broker.flush_all().await.unwrap();
    storage.flush_all().await.unwrap();
}

/// Makes every lease of the app run out now, as a stall past the lease would.
async fn expire_leases(url: &str, prefix: &str) {
    let mut con = raw_connection(url).await;
    let leases = format!("{prefix}:qtasks:leases");
    let members: Vec<String> = con.zrange(&leases, 0, -1).await.unwrap();
    for member in members {
        let _: () = con.zadd(&leases, member, 0).await.unwrap();
    }
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn bad_records_fail_alone_and_the_rest_of_their_batch_runs() {
    let Some(url) = redis_url("bad_records_fail_alone") else {
        return;
    };
    let prefix = unique_prefix("badrecords");
    let mut con = raw_connection(&url).await;
    let queue = format!("{prefix}:task_queue");
    // Twelve good tasks around two poisoned records, all in the queue before a worker starts,
    // so that one take's batch holds them all.
    let app = redis_app(&url, &prefix, RedisOptions::default(), 16).await;
    let mut good = Vec::new();
    for i in 0..6 {
        good.push(
            delivery_echo::add_task(&app, format!("g{i}"))
                .await
                .unwrap(),
        );
    }
    // A record whose `created_at` is `nan` (Lua reads it as NaN, which ZADD refuses).
    let nan = Uuid::new_v4();
    let record = [
        ("task_name", "delivery_echo"),
        ("priority", "0"),
        ("args", r#"["nan"]"#),
        ("kwargs", "{}"),
        ("created_at", "nan"),
        ("updated_at", "nan"),
        ("status", "new"),
    ];
    let _: () = con
        .hset_multiple(format!("{prefix}:{nan}"), &record)
        .await
        .unwrap();
    let _: () = con
        .rpush(&queue, format!("delivery_echo:{nan}:0"))
        .await
        .unwrap();
    // A record key that holds no hash (WRONGTYPE for every hash command).
    let wrong_type = Uuid::new_v4();
    let _: () = con
        .set(format!("{prefix}:{wrong_type}"), "not a hash")
        .await
        .unwrap();
    let _: () = con
        .rpush(&queue, format!("delivery_echo:{wrong_type}:0"))
        .await
        .unwrap();
    for i in 6..12 {
        good.push(
            delivery_echo::add_task(&app, format!("g{i}"))
                .await
                .unwrap(),
        );
    }
    app.start().await.unwrap();

    // The good tasks of the batch ran.
    for (i, handle) in good.iter().enumerate() {
        assert_eq!(flow::succeeded(handle).await, json!(format!("g{i}")));
    }
    // The NaN record is failed with a reason naming the field.
    let failed = app.wait(nan, WAIT).await.unwrap();
    assert_eq!(failed.status, TaskStatus::Error);
    let traceback = failed.traceback.unwrap_or_default();
    assert!(
        traceback.contains("created_at") && traceback.contains("finite"),
        "{traceback}"
    );
    // The entry whose key holds no hash is a dead letter saying why; the key is left alone.
    let mut letters = Vec::new();
    for _ in 0..500 {
        letters = app.dead_letters().list(10).await.unwrap();
        if !letters.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].entry.contains(&wrong_type.to_string()));
    assert!(
        letters[0].reason.contains("holds a string, not a hash"),
        "{}",
        letters[0].reason
    );
    let kept: String = con.get(format!("{prefix}:{wrong_type}")).await.unwrap();
    assert_eq!(kept, "not a hash");
    // Nothing is left leased: no batch is taken again.
    let leased: i64 = con.zcard(format!("{prefix}:qtasks:leases")).await.unwrap();
    assert_eq!(leased, 0);
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

/// The take marks the entries in canonical form itself and leaves the others (an upper-case
/// uuid, a priority written `+0`, as another client may push them) to the separate mark, by the
/// record key the worker builds. Both kinds in one batch run once each, and their deliveries
/// are counted.
#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn entries_in_and_out_of_canonical_form_run_once_each_in_one_batch() {
    let Some(url) = redis_url("entries_in_and_out_of_canonical_form") else {
        return;
    };
    let prefix = unique_prefix("canonical");
    let mut con = raw_connection(&url).await;
    let queue = format!("{prefix}:task_queue");
    let app = redis_app(&url, &prefix, RedisOptions::default(), 16).await;
    let mut good = Vec::new();
    for i in 0..4 {
        good.push(
            delivery_echo::add_task(&app, format!("g{i}"))
                .await
                .unwrap(),
        );
    }
    let mut raw = Vec::new();
    for (i, entry) in [
        |uuid: Uuid| format!("delivery_echo:{}:0", uuid.to_string().to_uppercase()),
        |uuid: Uuid| format!("delivery_echo:{uuid}:+0"),
    ]
    .iter()
    .enumerate()
    {
        let uuid = Uuid::new_v4();
        let label = format!(r#"["raw{i}"]"#);
        let record = [
            ("task_name", "delivery_echo"),
            ("priority", "0"),
            ("args", label.as_str()),
            ("kwargs", "{}"),
            ("created_at", "1796395301.5"),
            ("updated_at", "1796395301.5"),
            ("status", "new"),
        ];
        let _: () = con
            .hset_multiple(format!("{prefix}:{uuid}"), &record)
            .await
            .unwrap();
        let _: () = con.rpush(&queue, entry(uuid)).await.unwrap();
        raw.push(uuid);
    }
    app.start().await.unwrap();

    for (i, handle) in good.iter().enumerate() {
        assert_eq!(flow::succeeded(handle).await, json!(format!("g{i}")));
    }
    for (i, uuid) in raw.iter().enumerate() {
        let record = app.wait(*uuid, WAIT).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
        assert_eq!(record.returning, Some(json!(format!("raw{i}"))));
    }
    for uuid in raw
        .iter()
        .copied()
        .chain(good.iter().map(|handle| handle.uuid()))
    {
        let deliveries: String = con
            .hget(format!("{prefix}:{uuid}"), "deliveries")
            .await
            .unwrap();
        assert_eq!(deliveries, "1", "task {uuid} was handed out once");
    }
    let leased: i64 = con.zcard(format!("{prefix}:qtasks:leases")).await.unwrap();
    assert_eq!(leased, 0);
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_stale_finisher_is_refused_even_after_the_task_ended_and_a_replay_is_not() {
    let Some(url) = redis_url("a_stale_finisher_is_refused") else {
        return;
    };
    let prefix = unique_prefix("stalefinish");
    let BackendParts {
        broker, storage, ..
    } = parts(&url, &prefix).await;
    let task = add_one(&*broker).await;
    let stalled = take_one(&*broker).await;
    // The first holder stalls past its lease; another take hands the task out again.
    expire_leases(&url, &prefix).await;
    let takeover = take_one(&*broker).await;
    assert_eq!(takeover.task.uuid, task.uuid);
    assert_ne!(takeover.receipt, stalled.receipt, "a new delivery token");
    assert!(takeover.recovered && takeover.deliveries == 2);
    broker
        .finish(&takeover, Outcome::Success(json!("new holder")))
        .await
        .unwrap();
    // The stalled one wakes up and finishes: the record is final, but not by its delivery.
    let stale = broker
        .finish(&stalled, Outcome::Success(json!("stalled")))
        .await
        .expect_err("a finish whose lease is gone is refused");
    assert!(stale.is_refused(), "{stale}");
    let record = storage.get(task.uuid).await.unwrap().unwrap();
    assert_eq!(record.returning, Some(json!("new holder")));
    // The holder's own finish sent again (its reply lost) is a replay: stored, once.
    broker
        .finish(&takeover, Outcome::Success(json!("new holder")))
        .await
        .expect("a replay of the holder's own finish answers stored");
    flush(&*broker, &*storage).await;
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_process_that_takes_back_its_own_lease_keeps_the_two_deliveries_apart() {
    let Some(url) = redis_url("a_process_that_takes_back_its_own_lease") else {
        return;
    };
    let prefix = unique_prefix("ownlease");
    let BackendParts {
        broker, storage, ..
    } = parts(&url, &prefix).await;
    let mut requests = broker
        .cancel_requests()
        .expect("Redis sends cancel requests");
    broker.start().await.unwrap(); // the renewer: every third of the one-second lease
    let task = add_one(&*broker).await;
    let old = take_one(&*broker).await;
    // A stall past the lease (made here by hand), then this same process takes it back.
    expire_leases(&url, &prefix).await;
    let new = take_one(&*broker).await;
    assert_eq!(new.task.uuid, task.uuid);
    // The renewer finds the old lease lost and asks to stop that run alone.
    let request = tokio::time::timeout(WAIT, requests.recv())
        .await
        .expect("the lost lease is reported")
        .unwrap();
    assert_eq!(request.uuid, task.uuid);
    assert_eq!(request.delivery.as_deref(), Some(old.receipt.as_str()));
    // The old run's refused finish must not stop the renewal of the new delivery: three
    // leases later, the new holder still holds it and records its outcome.
    let refused = broker
        .finish(&old, Outcome::Success(json!("old")))
        .await
        .expect_err("the old delivery's finish is refused");
    assert!(refused.is_refused());
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker
        .finish(&new, Outcome::Success(json!("new")))
        .await
        .expect("the new delivery's lease was renewed all along");
    let record = storage.get(task.uuid).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.returning),
        (TaskStatus::Success, Some(json!("new")))
    );
    broker.stop().await.unwrap();
    flush(&*broker, &*storage).await;
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_cancel_of_a_running_task_is_stored_and_wins_at_its_finish() {
    let Some(url) = redis_url("a_cancel_of_a_running_task_is_stored") else {
        return;
    };
    let prefix = unique_prefix("storedcancel");
    let BackendParts {
        broker, storage, ..
    } = parts(&url, &prefix).await;
    let task = add_one(&*broker).await;
    let running = take_one(&*broker).await;
    // The holder never hears of the cancel (no renewer runs here, no message is read): the
    // request must still decide the outcome.
    let state = broker.cancel(task.uuid, "no longer needed").await.unwrap();
    assert_eq!(state, Some(qtasks::backend::CancelState::Running));
    let finished = broker
        .finish(&running, Outcome::Success(json!("done anyway")))
        .await
        .expect_err("the finish reports the cancel that won");
    assert_eq!(finished.cancel_reason(), Some("no longer needed"));
    let record = storage.get(task.uuid).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.cancel_reason.as_deref()),
        (TaskStatus::Cancel, Some("no longer needed"))
    );
    // The same finish sent again (its reply lost) hears the same answer, not "stored".
    let again = broker
        .finish(&running, Outcome::Success(json!("done anyway")))
        .await
        .expect_err("a replay reports the cancel that won");
    assert_eq!(again.cancel_reason(), Some("no longer needed"));
    // The request is gone with the task.
    let mut con = raw_connection(&url).await;
    let pending: i64 = con
        .hlen(format!("{prefix}:qtasks:cancel_requests"))
        .await
        .unwrap();
    assert_eq!(pending, 0);
    flush(&*broker, &*storage).await;
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_cancel_is_seen_by_the_holders_renewal_without_its_message() {
    let Some(url) = redis_url("a_cancel_is_seen_by_the_holders_renewal") else {
        return;
    };
    let prefix = unique_prefix("renewcancel");
    let BackendParts {
        broker, storage, ..
    } = parts(&url, &prefix).await;
    let mut requests = broker
        .cancel_requests()
        .expect("Redis sends cancel requests");
    broker.start().await.unwrap();
    let task = add_one(&*broker).await;
    let running = take_one(&*broker).await;
    // Stored as `CANCEL` stores it, with no message sent at all.
    let mut con = raw_connection(&url).await;
    let _: () = con
        .hset(
            format!("{prefix}:qtasks:cancel_requests"),
            task.uuid.to_string(),
            "asked while the message was lost",
        )
        .await
        .unwrap();
    let request = tokio::time::timeout(WAIT, requests.recv())
        .await
        .expect("the renewal reports the stored cancel")
        .unwrap();
    assert_eq!(request.uuid, task.uuid);
    assert_eq!(request.reason, "asked while the message was lost");
    let _ = broker
        .finish(&running, Outcome::Cancel(request.reason.clone()))
        .await;
    let record = storage.get(task.uuid).await.unwrap().unwrap();
    assert_eq!(record.status, TaskStatus::Cancel);
    broker.stop().await.unwrap();
    flush(&*broker, &*storage).await;
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_second_add_of_a_known_uuid_changes_nothing() {
    let Some(url) = redis_url("a_second_add_of_a_known_uuid_changes_nothing") else {
        return;
    };
    let prefix = unique_prefix("addtwice");
    let BackendParts {
        broker, storage, ..
    } = parts(&url, &prefix).await;
    let task = add_one(&*broker).await;
    let running = take_one(&*broker).await;
    broker
        .finish(&running, Outcome::Success(json!("once")))
        .await
        .unwrap();
    // Added again (a schedule's slot recovered, an add sent twice): the finished record stays
    // as it is and nothing is queued, so it does not run a second time.
    broker.add(task.clone()).await.unwrap();
    let mut delayed = task.clone();
    delayed.run_at = Some(qtasks::backend::unix_now() + 60.0);
    broker.add(delayed).await.unwrap();
    let record = storage.get(task.uuid).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.returning),
        (TaskStatus::Success, Some(json!("once")))
    );
    let mut con = raw_connection(&url).await;
    let queued: i64 = con.llen(format!("{prefix}:task_queue")).await.unwrap();
    let waiting: i64 = con.zcard(format!("{prefix}:qtasks:delayed")).await.unwrap();
    assert_eq!((queued, waiting), (0, 0), "nothing queued again");
    flush(&*broker, &*storage).await;
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn stream_items_are_appended_only_under_the_deliverys_lease() {
    let Some(url) = redis_url("stream_items_are_appended_only_under_the_deliverys_lease") else {
        return;
    };
    let prefix = unique_prefix("streamfence");
    let BackendParts {
        broker, storage, ..
    } = parts(&url, &prefix).await;
    let task = add_one(&*broker).await;
    let old = take_one(&*broker).await;
    assert!(
        storage
            .append_item(task.uuid, &old.receipt, json!(1))
            .await
            .unwrap()
    );
    // The old holder stalls past its lease; a new delivery runs the task from the start.
    expire_leases(&url, &prefix).await;
    let new = take_one(&*broker).await;
    assert!(
        !storage
            .append_item(task.uuid, &old.receipt, json!("stale"))
            .await
            .unwrap(),
        "a run that lost its lease appends nothing"
    );
    assert!(
        storage
            .append_item(task.uuid, &new.receipt, json!("a"))
            .await
            .unwrap()
    );
    assert!(
        storage
            .append_item(task.uuid, &new.receipt, json!("b"))
            .await
            .unwrap()
    );
    let read = storage.wait_items(task.uuid, 0).await.unwrap();
    assert_eq!(
        (read.items, read.ended),
        (vec![json!("a"), json!("b")], false),
        "the new delivery's items, not the old run's"
    );
    broker
        .finish(&new, Outcome::Success(json!(["a", "b"])))
        .await
        .unwrap();
    let read = storage.wait_items(task.uuid, 1).await.unwrap();
    assert_eq!((read.items, read.ended), (vec![json!("b")], true));
    // Ended: the live items are gone, and a late item neither lands nor brings them back.
    assert!(
        !storage
            .append_item(task.uuid, &new.receipt, json!("late"))
            .await
            .unwrap()
    );
    let mut con = raw_connection(&url).await;
    let left: i64 = con
        .exists(format!("{prefix}:qtasks:items:{}", task.uuid))
        .await
        .unwrap();
    assert_eq!(left, 0);
    flush(&*broker, &*storage).await;
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn an_outcome_for_a_record_key_that_is_no_hash_drops_its_lease_and_says_why() {
    let Some(url) = redis_url("an_outcome_for_a_record_key_that_is_no_hash") else {
        return;
    };
    let prefix = unique_prefix("finishwrongtype");
    let BackendParts {
        broker, storage, ..
    } = parts(&url, &prefix).await;
    let task = add_one(&*broker).await;
    let running = take_one(&*broker).await;
    let mut con = raw_connection(&url).await;
    let _: () = con
        .set(format!("{prefix}:{}", task.uuid), "overwritten")
        .await
        .unwrap();
    let error = broker
        .finish(&running, Outcome::Success(json!(1)))
        .await
        .expect_err("nothing can be stored there");
    assert!(!error.is_refused(), "{error}");
    assert!(error.to_string().contains("holds a string"), "{error}");
    let leased: i64 = con.zcard(format!("{prefix}:qtasks:leases")).await.unwrap();
    assert_eq!(
        leased, 0,
        "the lease is gone, so the task is not taken again and again"
    );
    let _: () = con.del(format!("{prefix}:{}", task.uuid)).await.unwrap();
    flush(&*broker, &*storage).await;
}
