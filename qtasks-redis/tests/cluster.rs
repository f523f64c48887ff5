//! A Redis Cluster (`redis+cluster://`) of the test's own (its own ports, never the shared
//! Redis): apps spread over the shards with each app on its slot, a shard's master killed during
//! a drain with waiters, the app's slot migrated to another master during a drain, and one app
//! spread over every shard by its partitions, one of them failing over during a drain.

use std::collections::BTreeMap;
use std::time::Duration;

use parking_lot::Mutex;
use qtasks::redis::RedisOptions;
use qtasks::{QueueConfig, QueueTasks};
use qtasks_test_support::fault_drain::{drain_through, drained_step, runs_of};
use qtasks_test_support::{OwnCluster, redis_url, unique_prefix};

async fn connection(port: u16) -> redis::aio::MultiplexedConnection {
    qtasks_test_support::redis::raw_connection(&format!("redis://127.0.0.1:{port}/")).await
}

async fn app_on(cluster: &OwnCluster, name: &str) -> QueueTasks {
    partitioned_app_on(cluster, name, 1).await
}

/// [`app_on`], spread over `partitions`.
async fn partitioned_app_on(cluster: &OwnCluster, name: &str, partitions: u16) -> QueueTasks {
    let config = QueueConfig {
        name: name.to_owned(),
        max_tasks_process: 8,
        queues: qtasks::queues::QueueSelection::new(["default", "emails"]),
        ..QueueConfig::default()
    };
    let options = RedisOptions {
        // A take that a failover lost is taken again after this.
        lease: Duration::from_secs(3),
        // A dead master holds the cluster client's commands until they time out (it asks the
        // dead node for the new layout first): this bounds how long.
        response_timeout: Duration::from_secs(2),
        partitions,
        ..RedisOptions::default()
    };
    qtasks::redis::connect_with(&cluster.url(), config, options)
        .await
        .expect("the cluster is reachable")
}

/// The keys of app `name` on the node at `port`.
async fn keys_on(port: u16, name: &str) -> Vec<String> {
    let mut con = connection(port).await;
    let mut keys = Vec::new();
    let mut cursor = 0_u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{{{name}}}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .unwrap();
        keys.extend(found);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn apps_spread_over_the_shards_each_on_its_slot() {
    if redis_url("cluster apps spread").is_none() {
        return;
    }
    let cluster = OwnCluster::start(3, 0);
    cluster.until_ok(3).await;
    // One app per master: names whose hash tags land on three different masters.
    let mut by_master: BTreeMap<u16, String> = BTreeMap::new();
    for i in 0.. {
        let name = unique_prefix(&format!("spread{i}"));
        by_master
            .entry(cluster.master_of(&format!("{{{name}}}")).await)
            .or_insert(name);
        if by_master.len() == 3 {
            break;
        }
    }
    let mut apps = Vec::new();
    for (base, name) in (0_u64..).step_by(1000).zip(by_master.values()) {
        let app = app_on(&cluster, name).await;
        let handles = drained_step::add_many(&app, (base..base + 50).map(|n| (n,)))
            .await
            .unwrap();
        let named = drained_step::call(base + 999)
            .queue("emails")
            .add(&app)
            .await
            .unwrap();
        apps.push((app, handles, named));
    }
    for (app, _, _) in &apps {
        app.start().await.unwrap();
    }
    for (app, handles, named) in &apps {
        for handle in handles {
            assert_eq!(handle.result(Duration::from_secs(30)).await.unwrap() % 2, 0);
        }
        assert_eq!(named.result(Duration::from_secs(30)).await.unwrap() % 2, 0);
        app.stop().await.unwrap();
    }
    // The URL alone reaches the cluster too (as the command line's `--url` does), and sees
    // the default app's stats.
    let by_url = QueueTasks::connect(&cluster.url())
        .await
        .expect("a redis+cluster:// URL connects");
    by_url.stats().await.expect("the default app's stats");

    // Each app's keys (records, queues, the named queue's, the heartbeat) are all on its
    // master, none on another.
    for (master, name) in &by_master {
        let here = keys_on(*master, name).await;
        assert!(
            here.len() > 50,
            "{name} has {} keys on {master}",
            here.len()
        );
        let named = here.iter().filter(|key| {
            apps.iter()
                .any(|(_, _, handle)| key.ends_with(&handle.uuid().to_string()))
        });
        assert_eq!(named.count(), 1, "the named queue's record is here");
        for other in by_master.keys().filter(|other| *other != master) {
            let elsewhere = keys_on(*other, name).await;
            assert!(
                elsewhere.is_empty(),
                "{name} has keys on {other}: {elsewhere:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_drain_goes_on_when_the_shards_master_dies_and_its_replica_takes_over() {
    if redis_url("cluster failover").is_none() {
        return;
    }
    let mut cluster = OwnCluster::start(3, 1);
    cluster.until_ok(3).await;
    let name = unique_prefix("cluster-failover");
    let app = app_on(&cluster, &name).await;
    let master = cluster.master_of(&format!("{{{name}}}")).await;
    let node = cluster.node(master);
    let figures = drain_through(&app, 0, 400, || {
        cluster.kill(node);
        async {}
    })
    .await;
    let promoted = cluster.master_of(&format!("{{{name}}}")).await;
    assert_ne!(promoted, master, "the replica took over");
    eprintln!(
        "cluster failover: 400 tasks, resumed {:?} after the kill, {} ran twice",
        figures.resumed_after, figures.ran_twice
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_drain_goes_on_while_the_apps_slot_migrates_to_another_master() {
    if redis_url("cluster slot migration").is_none() {
        return;
    }
    let cluster = OwnCluster::start(3, 0);
    cluster.until_ok(3).await;
    let name = unique_prefix("cluster-reshard");
    let app = app_on(&cluster, &name).await;
    let tag = format!("{{{name}}}");
    let from = cluster.master_of(&tag).await;
    let to = *cluster.ports.iter().find(|port| **port != from).unwrap();
    let slot = cluster.keyslot(&tag).await;
    let moved = std::sync::Arc::new(Mutex::new(0));
    let figures = drain_through(&app, 100_000, 400, || {
        let moved = std::sync::Arc::clone(&moved);
        let cluster = &cluster;
        async move {
            *moved.lock() = cluster.migrate_slot(slot, from, to).await;
        }
    })
    .await;
    assert_eq!(cluster.master_of(&tag).await, to);
    assert!(
        *moved.lock() > 100,
        "the slot held the app's keys: {}",
        moved.lock()
    );
    assert!(keys_on(from, &name).await.is_empty());
    // The app goes on adding and running on the slot's new master.
    let more = drained_step::add_many(&app, (200_000..200_020).map(|n| (n,)))
        .await
        .unwrap();
    app.start().await.unwrap();
    for handle in &more {
        assert_eq!(handle.result(Duration::from_secs(30)).await.unwrap() % 2, 0);
    }
    app.stop().await.unwrap();
    eprintln!(
        "cluster slot migration: 400 tasks, {} keys moved, {} results during the move, first result {:?} after it, {} ran twice",
        moved.lock(),
        figures.during,
        figures.resumed_after,
        figures.ran_twice
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_partitioned_app_drains_on_every_shard_and_through_one_shards_failover() {
    if redis_url("cluster partitions").is_none() {
        return;
    }
    let mut cluster = OwnCluster::start(3, 1);
    cluster.until_ok(3).await;
    let name = unique_prefix("cluster-partitions");
    let partitions = qtasks::redis::partitions::partition_names(&name, 3);
    let mut masters = Vec::new();
    for partition in &partitions {
        masters.push(cluster.master_of(&format!("{{{partition}}}")).await);
    }
    let mut distinct = masters.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "one partition per shard: {partitions:?} on {masters:?}"
    );
    let app = partitioned_app_on(&cluster, &name, 3).await;
    // The drain's tasks land in every partition; one shard's master is killed, and the
    // drain waits for its replica to take over.
    let (killed, node) = (masters[1], cluster.node(masters[1]));
    let ran_meanwhile = std::sync::atomic::AtomicUsize::new(0);
    let figures = drain_through(&app, 0, 600, || {
        cluster.kill(node);
        let (cluster, ran_meanwhile) = (&cluster, &ran_meanwhile);
        let partition = format!("{{{}}}", partitions[1]);
        async move {
            let started = std::time::Instant::now();
            let ran = || (0..600).filter(|n| runs_of(*n) > 0).count();
            let ran_before = ran();
            while cluster.master_of(&partition).await == killed {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "the replica never took over"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ran_meanwhile.store(ran() - ran_before, std::sync::atomic::Ordering::SeqCst);
            eprintln!(
                "partitions: the replica took over {:?} after the kill",
                started.elapsed()
            );
        }
    })
    .await;
    let ran_meanwhile = ran_meanwhile.into_inner();
    eprintln!(
        "partitions: 600 tasks over 3 shards, {ran_meanwhile} ran and {} finished while one shard failed over, resumed {:?} after, {} ran twice",
        figures.during, figures.resumed_after, figures.ran_twice
    );
    // Every task ran and every waiter got its result (`drain_through` checks both), and the
    // other shards' tasks went on while the one shard failed over (at least 1 s: hundreds of
    // 20 ms tasks on 8 slots; 2 ran when every take waited for the dead shard).
    assert!(
        ran_meanwhile >= 20,
        "only {ran_meanwhile} tasks ran while one shard of three failed over"
    );
}
