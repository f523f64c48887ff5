//! The randomized fault harness (issue #21): every engine runs one mix of task kinds under
//! faults at random times, then the run is checked against invariants read from outside the
//! engine (the workers' execution logs, the records, the server's append-only file).
//!
//! Each run is driven by a seed, printed first; `QTASKS_TORTURE_SEEDS=7,8,9` reruns seeds,
//! `QTASKS_TORTURE_RUNS=200` runs that many seeds taken from the time:
//!
//! ```sh
//! QTASKS_TEST_REDIS_URL=redis://127.0.0.1:6379/ QTASKS_TORTURE_SEEDS=1234 \
//!     cargo test -p qtasks-tests --test torture -- --include-ignored --nocapture redis_engine
//! ```
//!
//! The workers log warnings to `target/tmp/torture-{seed}-{engine}.log`; `QTASKS_TORTURE_LOG`
//! (a `RUST_LOG` filter) asks for more.
//!
//! The engines: Redis (queue and records on a Redis server of the run's own), RabbitMQ (the
//! machine's RabbitMQ, under a queue name of the run's own) with its records on such a Redis,
//! and memory (where only the faults a process does to itself apply: `stop_now` and a start
//! again, cancels at random moments), and Redis through Sentinels and on a Redis Cluster (the
//! run's own servers; their faults are in `mod replicated`), there also with the app spread
//! over three partitions, one per master (the faults hit partition 0's master; poison goes
//! to partition 0; the keys and the outcomes are read from every partition; task limits are
//! refused there, as on RabbitMQ). A new engine adds a variant here. Faults: worker SIGKILL (the supervisor restarts it), SIGSTOP/SIGCONT for less and
//! for more than the lease, the Redis server SIGKILLed and restarted from its append-only
//! file, paused with SIGSTOP, every client connection cut (pub/sub too), and the workers'
//! network held silent (a blackhole, through a proxy of the run's, for Redis and RabbitMQ
//! alike), then healed or cut; one worker runs with its clock offset (`faketime`, when
//! installed). Task kinds: short, longer than the lease, failing with retries, panicking,
//! aborting its process, delayed, cancelled while it waits and while it runs, streams, added
//! twice under one uuid, chords (members and callback), a schedule's slots, poison entries
//! (and on Redis poison records). One run in four has a single worker, the others three.
//! Every worker serves two queues, `default` and a named one (weighted 2 to 1), and about a
//! third of the tasks go to the named one, so leases and hand-backs cross queues under the
//! faults too.
//!
//! Invariants: every added task reaches a final status, the right one for its kind; no
//! attempt has two recorded outcomes; two runs of one attempt overlap only when a fault hit a
//! holder (killed or frozen), and each such overlap is reported; a `true` cancel of a waiting
//! task means it never ran, of a running one that it ended `cancel`; waiters return the stored
//! record; every live worker takes tasks to the end; every slot of the schedule adds its task
//! once and it runs; a chord's callback runs once with its members' results; the engine's keys
//! (both queues') come back to empty.

#![cfg(unix)]

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qtasks::redis::{Redis, RedisOptions};
use qtasks::{AddOptions, QueueConfig, QueueTasks, TaskRecord, TaskStatus, Uuid};
use qtasks_test_support::amqp_url;
use qtasks_test_support::kafka_url;
use qtasks_test_support::postgres_url;
use qtasks_test_support::redis::raw_connection;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use qtasks_test_support::{OwnPostgres, OwnRedis, recorded_outcomes};
use qtasks_test_support::{Proxy, host_port};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use support::WorkerProcess;

/// The lease of the run's workers: faults are timed around it.
const LEASE_MS: u64 = 1000;
/// Worker processes (one in a quarter of the runs), and the tasks each runs at once.
const WORKERS: usize = 3;
const CONCURRENCY: usize = 4;
/// Deliveries of one attempt before it ends `DeliveryLimit` (the aborting task's end). The
/// limit cannot tell a worker the task killed from one a fault killed while it held the task:
/// with a fault every second, a long task's holders can be killed or frozen four times (seen
/// once in 61 Redis seeds at 4), so the harness allows six.
const MAX_DELIVERIES: u32 = 6;
/// Items of a stream task (one every 100 ms: its run spans a few renewals).
const STREAM_ITEMS: u32 = 15;
/// How long faults are injected, from the first add.
const FAULT_WINDOW: Duration = Duration::from_secs(6);
/// How long the run may take to drain once the faults end.
const DRAIN: Duration = Duration::from_secs(90);
/// The schedule's slots, one a second from five seconds after the workers are spawned (a
/// worker fires only the slots after its start, and three engines at once on two cores take
/// seconds to start one).
const SCHEDULE_SLOTS: u64 = 5;
/// How long the in-memory run waits for a task to end.
const MEMORY_DRAIN: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Engine {
    Redis,
    /// Redis behind three Sentinels: a master and a replica, each with its append-only file.
    RedisSentinel,
    /// A Redis Cluster of three masters with a replica each.
    RedisCluster,
    /// The same cluster, the app spread over three partitions (`RedisOptions::partitions`).
    RedisPartitions,
    RabbitMq,
    /// Kafka (the machine's tansu, under topic and group names of the run's own) with its
    /// records on a Redis of the run's own.
    Kafka,
    Postgres,
}

impl Engine {
    /// The test that runs it (for the rerun line).
    /// Whether the queue is on Redis (one server, Sentinels or a cluster).
    fn on_redis(self) -> bool {
        matches!(
            self,
            Engine::Redis | Engine::RedisSentinel | Engine::RedisCluster | Engine::RedisPartitions
        )
    }

    /// Whether it keeps task limits (RabbitMQ does not; an app in partitions refuses them).
    fn keeps_limits(self) -> bool {
        !matches!(
            self,
            Engine::RabbitMq | Engine::Kafka | Engine::RedisPartitions
        )
    }

    /// How many deliveries of a task may end with their worker: on Kafka two fewer, since
    /// each death there waits out the group's session and a restart (about 13 s) before the
    /// task is read again, and the run must end within its drain (a freeze under the session
    /// is no death there, so fewer faults count).
    fn max_deliveries(self) -> u32 {
        if self == Engine::Kafka {
            MAX_DELIVERIES - 2
        } else {
            MAX_DELIVERIES
        }
    }

    /// How long the drain may take: on Kafka a minute more, for the aborting task's deaths
    /// (each waits out the group's session, a restart and a join: up to 20 s with one worker).
    fn drain(self) -> Duration {
        if self == Engine::Kafka {
            DRAIN + Duration::from_secs(60)
        } else {
            DRAIN
        }
    }

    /// Whether it keeps named queues (Kafka does not: its workers serve the default one).
    fn keeps_queues(self) -> bool {
        self != Engine::Kafka
    }

    /// Whether a delivery's count of deaths travels in a copy of its message (RabbitMQ and
    /// Kafka never change a message): the count can lag (see the aborting task's check).
    fn counts_in_copies(self) -> bool {
        matches!(self, Engine::RabbitMq | Engine::Kafka)
    }

    /// How many partitions the app is spread over.
    fn partitions(self) -> u16 {
        if self == Engine::RedisPartitions {
            PARTITIONS
        } else {
            1
        }
    }

    fn test_name(self) -> &'static str {
        match self {
            Engine::Redis => "redis_engine",
            Engine::RedisSentinel => "redis_sentinel_engine",
            Engine::RedisCluster => "redis_cluster_engine",
            Engine::RedisPartitions => "redis_partitions_engine",
            Engine::RabbitMq => "rabbitmq_engine_with_redis_records",
            Engine::Postgres => "postgres_engine",
            Engine::Kafka => "kafka_engine_with_redis_records",
        }
    }
}

/// What a task is, and so how it must end.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
enum Kind {
    Short,
    Long,
    Delayed,
    FailsWithRetries,
    Panics,
    Aborts,
    CancelWaiting,
    CancelRunning,
    PoisonEntry,
    PoisonRecord,
    Stream,
    /// Added, then added again under the same uuid (at once or later, maybe after its end).
    AddedTwice,
    /// A member of a chord, and the chord's callback (its result: the members' labels).
    ChordMember,
    ChordCallback,
    /// A slot's task of the schedule the workers run.
    Scheduled,
    /// A task with a rate limit and `max_running` (`paced_log`): it waits for its turn or a
    /// slot through the faults (on RabbitMQ, which keeps no limits, it ends `error`).
    Limited,
}

struct Added {
    uuid: Uuid,
    kind: Kind,
    /// What `app.cancel` answered, for the cancelled kinds.
    cancelled: Option<bool>,
    /// What it must return, where the kind says (a chord's callback).
    returns: Option<serde_json::Value>,
    /// A chord callback's members (told when it never comes).
    members: Vec<Uuid>,
}

impl Added {
    fn new(uuid: Uuid, kind: Kind) -> Self {
        Added {
            uuid,
            kind,
            cancelled: None,
            returns: None,
            members: Vec::new(),
        }
    }
}

/// A fault as it happened: when, to which process, and whether it can make a run repeat.
#[derive(Debug)]
struct Fault {
    what: &'static str,
    pid: Option<u32>,
    from: u128,
    to: u128,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn redis_engine() {
    let Some(_) = redis_url("torture redis_engine") else {
        return;
    };
    for seed in seeds() {
        run(Engine::Redis, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL: its tools start the run's servers)"]
async fn redis_sentinel_engine() {
    let Some(_) = redis_url("torture redis_sentinel_engine") else {
        return;
    };
    // Short freezes of the master are opt-in (`QTASKS_TORTURE_SENTINEL_FREEZE=1`): with them
    // about one seed in five still fails (a task lost or a lease left after a failover the
    // harness did not cause; RELIABILITY.md's open points).
    if std::env::var_os("QTASKS_TORTURE_SENTINEL_FREEZE").is_none() {
        eprintln!(
            "torture redis_sentinel_engine: no freezes of the master (QTASKS_TORTURE_SENTINEL_FREEZE=1 adds them; open points in RELIABILITY.md)"
        );
    }
    for seed in seeds() {
        run(Engine::RedisSentinel, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL: its tools start the run's servers)"]
async fn redis_cluster_engine() {
    let Some(_) = redis_url("torture redis_cluster_engine") else {
        return;
    };
    for seed in seeds() {
        run(Engine::RedisCluster, seed).await;
    }
}

/// How many partitions the partitioned engine spreads its app over: one per master.
const PARTITIONS: u16 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL: its tools start the run's servers)"]
async fn redis_partitions_engine() {
    let Some(_) = redis_url("torture redis_partitions_engine") else {
        return;
    };
    for seed in seeds() {
        run(Engine::RedisPartitions, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn rabbitmq_engine_with_redis_records() {
    let (Some(_), Some(_)) = (
        redis_url("torture rabbitmq_engine_with_redis_records"),
        amqp_url("torture rabbitmq_engine_with_redis_records"),
    ) else {
        return;
    };
    for seed in seeds() {
        run(Engine::RabbitMq, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and Redis (QTASKS_TEST_KAFKA_URL, QTASKS_TEST_REDIS_URL)"]
async fn kafka_engine_with_redis_records() {
    let (Some(_), Some(_)) = (
        redis_url("torture kafka_engine_with_redis_records"),
        kafka_url("torture kafka_engine_with_redis_records"),
    ) else {
        return;
    };
    for seed in seeds() {
        run(Engine::Kafka, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL) and its Debian cluster tools"]
async fn postgres_engine() {
    // The machine's server must be there (this test's skip rule); its tools make a server of
    // the run's own, which the faults stop, freeze and cut.
    let Some(_) = postgres_url("torture postgres_engine") else {
        return;
    };
    for seed in seeds() {
        run(Engine::Postgres, seed).await;
    }
}

// -- The in-memory engine ----------------------------------------------------------------------
//
// One process holds the queue, so the faults that apply are the ones a process does to
// itself: a stop that cannot wait (`stop_now`, which hands the running tasks back) and a start
// again, cancels at random moments, panics and failures. The same invariants hold.

/// Runs of the in-memory engine's tasks: `(uuid, start ms, end ms)` (end 0 while running).
static MEMORY_RUNS: std::sync::Mutex<Vec<(Uuid, u128, u128)>> = std::sync::Mutex::new(Vec::new());

#[qtasks::task(echo = true)]
async fn memory_run(ctx: qtasks::TaskContext, ms: u64) -> u64 {
    let index = {
        let mut runs = MEMORY_RUNS.lock().unwrap();
        runs.push((ctx.task_uuid(), now_ms(), 0));
        runs.len() - 1
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    MEMORY_RUNS.lock().unwrap()[index].2 = now_ms();
    ms
}

#[qtasks::task(echo = true, retry = 2)]
async fn memory_fail(ctx: qtasks::TaskContext) -> qtasks::TaskResult<()> {
    MEMORY_RUNS
        .lock()
        .unwrap()
        .push((ctx.task_uuid(), now_ms(), now_ms()));
    Err(qtasks::TaskError::msg("fails every time"))
}

#[qtasks::task(echo = true)]
async fn memory_panic(ctx: qtasks::TaskContext) -> u64 {
    MEMORY_RUNS
        .lock()
        .unwrap()
        .push((ctx.task_uuid(), now_ms(), now_ms()));
    panic!("panics on purpose")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_engine() {
    // The engine's logs when asked (`RUST_LOG=qtasks_core=debug`), none otherwise.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    for seed in seeds() {
        run_in_memory(seed).await;
    }
}

async fn run_in_memory(seed: u64) {
    eprintln!(
        "torture: engine Memory seed {seed} (rerun: QTASKS_TORTURE_SEEDS={seed} cargo test -p qtasks-tests --test torture -- --include-ignored --nocapture memory_engine)"
    );
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let app = QueueTasks::with_config(QueueConfig {
        max_tasks_process: CONCURRENCY,
        queues: SERVED_QUEUES.parse().expect("a queue list"),
        ..Default::default()
    });
    app.start().await.unwrap();
    let mut added: Vec<Added> = Vec::new();
    let mut interrupts: Vec<u128> = Vec::new();
    let window = Instant::now();
    while window.elapsed() < FAULT_WINDOW {
        for _ in 0..rng.random_range(1..=4) {
            let kind = match rng.random_range(0..100) {
                0..35 => Kind::Short,
                35..50 => Kind::Long,
                50..60 => Kind::Delayed,
                60..70 => Kind::FailsWithRetries,
                70..76 => Kind::Panics,
                76..86 => Kind::CancelWaiting,
                _ => Kind::CancelRunning,
            };
            let (name, args, options): (&str, Vec<serde_json::Value>, AddOptions) = match kind {
                Kind::Short => (
                    "memory_run",
                    vec![rng.random_range(0..40).into()],
                    AddOptions::default(),
                ),
                Kind::Long | Kind::CancelRunning => (
                    "memory_run",
                    vec![rng.random_range(500..2500).into()],
                    AddOptions::default(),
                ),
                Kind::Delayed => (
                    "memory_run",
                    vec![10.into()],
                    AddOptions::default().delay(Duration::from_millis(rng.random_range(100..1500))),
                ),
                Kind::CancelWaiting => (
                    "memory_run",
                    vec![10.into()],
                    AddOptions::default().delay(Duration::from_secs(30)),
                ),
                Kind::FailsWithRetries => ("memory_fail", Vec::new(), AddOptions::default()),
                _ => ("memory_panic", Vec::new(), AddOptions::default()),
            };
            let options = in_some_queue(options, &mut rng);
            let uuid = app
                .add_task_with(name, args, (), options)
                .await
                .unwrap()
                .uuid();
            added.push(Added::new(uuid, kind));
        }
        // Cancels: of a waiting task at once, of a running one once it runs.
        for task in added.iter_mut().filter(|task| task.cancelled.is_none()) {
            let running = MEMORY_RUNS
                .lock()
                .unwrap()
                .iter()
                .any(|run| run.0 == task.uuid);
            if task.kind == Kind::CancelWaiting || (task.kind == Kind::CancelRunning && running) {
                task.cancelled = Some(app.cancel(task.uuid, "torture").await.unwrap());
            }
        }
        // A stop that cannot wait, then a start again. Its time is when it returned: a task
        // the worker took while it ran was handed back too.
        if rng.random_bool(0.08) {
            app.stop_now().await.unwrap();
            interrupts.push(now_ms());
            app.start().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..120))).await;
    }
    for task in added
        .iter_mut()
        .filter(|task| task.cancelled.is_none() && task.kind == Kind::CancelRunning)
    {
        task.cancelled = Some(app.cancel(task.uuid, "torture").await.unwrap());
    }
    let mut repeated = 0;
    for task in &added {
        let record = match app.wait(task.uuid, MEMORY_DRAIN).await {
            Ok(record) => record,
            Err(error) => panic!(
                "seed {seed}: {:?} task {} never ended ({error}); its record: {:?}; interrupts at {interrupts:?}; stats {:?}",
                task.kind,
                task.uuid,
                app.get(task.uuid).await,
                app.stats()
                    .await
                    .map(|stats| (stats.queue, stats.workers.len()))
            ),
        };
        let runs: Vec<(Uuid, u128, u128)> = MEMORY_RUNS
            .lock()
            .unwrap()
            .iter()
            .filter(|run| run.0 == record.uuid || run.0 == task.uuid)
            .copied()
            .collect();
        let context = format!(
            "seed {seed}: {:?} task {} ended {} ({:?}), {} runs",
            task.kind,
            task.uuid,
            record.status,
            record.traceback,
            runs.len()
        );
        match task.kind {
            Kind::Short | Kind::Long | Kind::Delayed => {
                assert_eq!(record.status, TaskStatus::Success, "{context}");
                if runs.len() > 1 {
                    repeated += 1;
                    // Run again only when a stop handed it back while it ran: every run but
                    // the last never ended, and a stop returned after it started.
                    for run in &runs[..runs.len() - 1] {
                        assert!(
                            run.2 == 0 && interrupts.iter().any(|at| *at >= run.1),
                            "{context}: it ran again with no stop to hand it back (runs {runs:?}, stops returned at {interrupts:?})"
                        );
                    }
                }
            }
            Kind::FailsWithRetries | Kind::Panics => {
                assert_eq!(record.status, TaskStatus::Error, "{context}");
            }
            Kind::CancelWaiting if task.cancelled == Some(true) => {
                assert_eq!(record.status, TaskStatus::Cancel, "{context}");
                assert!(
                    runs.is_empty(),
                    "a task cancelled while it waited never runs: {context}"
                );
            }
            Kind::CancelRunning => {
                let expected = if task.cancelled == Some(true) {
                    TaskStatus::Cancel
                } else {
                    TaskStatus::Success
                };
                assert_eq!(record.status, expected, "{context}");
            }
            _ => {}
        }
    }
    app.stop().await.unwrap();
    println!(
        "torture: engine Memory seed {seed} ok in {:.1} s: {} tasks, {} run again after {} stops that could not wait",
        started.elapsed().as_secs_f64(),
        added.len(),
        repeated,
        interrupts.len()
    );
}

/// The seeds of this run: `QTASKS_TORTURE_SEEDS` (one seed, or a comma-separated list, to
/// rerun), else `QTASKS_TORTURE_RUNS` seeds taken from the time (a longer run), else two fixed
/// ones (CI's bounded budget).
fn seeds() -> Vec<u64> {
    if let Ok(text) = std::env::var("QTASKS_TORTURE_SEEDS") {
        return text
            .split(',')
            .map(|seed| seed.trim().parse().expect("QTASKS_TORTURE_SEEDS: numbers"))
            .collect();
    }
    if let Ok(runs) = std::env::var("QTASKS_TORTURE_RUNS") {
        let runs: u64 = runs.trim().parse().expect("QTASKS_TORTURE_RUNS: a number");
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            * 1000;
        return (0..runs).map(|i| base + i).collect();
    }
    vec![20261203, 20261204]
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The engine's servers of the run's own, which the faults kill, freeze and cut: a Redis (the
/// RabbitMQ engine's records are on it), Redis behind Sentinels, a Redis Cluster, or a
/// PostgreSQL cluster.
enum Server {
    Redis(OwnRedis),
    Sentinel(replicated::Sentinel),
    Cluster(replicated::Cluster),
    Postgres(OwnPostgres),
}

impl Server {
    async fn start(engine: Engine) -> Server {
        match engine {
            Engine::Redis | Engine::RabbitMq | Engine::Kafka => {
                Server::Redis(OwnRedis::start("torture", true))
            }
            Engine::RedisSentinel => Server::Sentinel(replicated::Sentinel::start().await),
            Engine::RedisCluster | Engine::RedisPartitions => {
                Server::Cluster(replicated::Cluster::start(engine.partitions()).await)
            }
            Engine::Postgres => {
                Server::Postgres(OwnPostgres::start().expect(
                    "pg_createcluster makes a server of the run's (run as root or postgres)",
                ))
            }
        }
    }

    /// The engine's URL (PostgreSQL's names the run's schema).
    fn url(&self) -> String {
        match self {
            Server::Redis(redis) => redis.url(),
            Server::Sentinel(sentinel) => sentinel.url(),
            Server::Cluster(cluster) => cluster.url(),
            Server::Postgres(postgres) => format!("{}?schema={}", postgres.url(), postgres::SCHEMA),
        }
    }

    /// The port the workers reach through the run's proxy, for the network faults; none
    /// behind Sentinels or on a cluster, whose clients connect where the servers tell them.
    fn proxied_port(&self) -> Option<u16> {
        match self {
            Server::Redis(redis) => Some(redis.port),
            Server::Postgres(postgres) => Some(postgres.port),
            Server::Sentinel(_) | Server::Cluster(_) => None,
        }
    }

    /// A plain `redis://` URL of the server that holds the app's keys now, for what the
    /// harness writes and reads itself (poison, the keys left).
    async fn direct_redis_url(&self, app: &str) -> String {
        match self {
            Server::Redis(redis) => redis.url(),
            Server::Sentinel(sentinel) => sentinel.master_url().await,
            Server::Cluster(cluster) => cluster.master_url(app).await,
            Server::Postgres(_) => unreachable!("PostgreSQL has no Redis"),
        }
    }

    /// What the app's Redis keys start with: its name, or on a cluster its hash tag (its
    /// first partition's, when it is spread over several).
    fn key_prefix(&self, app: &str) -> String {
        match self {
            Server::Cluster(cluster) => cluster.tag(app, 0),
            _ => app.to_owned(),
        }
    }

    /// Where the app's keys are, each key prefix with the URL of the server that holds it now:
    /// one place, or one per partition.
    async fn key_places(&self, app: &str) -> Vec<(String, String)> {
        match self {
            Server::Cluster(cluster) => cluster.places(app).await,
            _ => vec![(self.key_prefix(app), self.direct_redis_url(app).await)],
        }
    }

    /// A new task's uuid in the app's first partition (where `key_prefix` points).
    fn uuid_in_first_partition(&self) -> Uuid {
        let partitions = match self {
            Server::Cluster(cluster) => cluster.partitions,
            _ => 1,
        };
        loop {
            let uuid = Uuid::new_v4();
            if qtasks::redis::partitions::partition_of(uuid, partitions) == 0 {
                return uuid;
            }
        }
    }
}

/// The run's folder, its server, its workers (restarted when they die) and its client.
struct Run {
    engine: Engine,
    seed: u64,
    server: Server,
    /// The run's folder: the execution and span logs.
    dir: PathBuf,
    /// The engine server's URL (PostgreSQL's with the run's `?schema=`).
    url: String,
    amqp: Option<String>,
    /// The Kafka servers (the Kafka engine's queue), reached directly: its clients connect
    /// where the servers advertise, past any proxy.
    kafka: Option<String>,
    prefix: String,
    exec_log: PathBuf,
    span_log: PathBuf,
    /// The workers' standard error (logs, panics), kept when the run fails.
    worker_log: PathBuf,
    /// The workers reach the engine's server (and RabbitMQ) through these, for the network
    /// faults; the harness's own client does not.
    server_proxy: Option<Proxy>,
    amqp_proxy: Option<Proxy>,
    /// The first slot of the schedule the workers run (Unix seconds).
    schedule_from: u64,
    workers: Vec<WorkerProcess>,
    /// The worker (by index) whose clock is offset, and by how many seconds.
    clock_offset: Option<(usize, i32)>,
    /// The processes that ran with that offset: their logged times are shifted back by it.
    offset_pids: HashMap<u32, i128>,
    restarts: usize,
    /// On Kafka, since when each dead worker has waited for its restart.
    dead_since: Vec<Option<Instant>>,
    faults: Vec<Fault>,
}

impl Run {
    fn spawn_worker(&self, index: usize) -> WorkerProcess {
        let exec_log = self.exec_log.to_string_lossy().into_owned();
        let span_log = self.span_log.to_string_lossy().into_owned();
        let max_deliveries = self.engine.max_deliveries().to_string();
        let server_url = match (&self.server_proxy, self.server.proxied_port()) {
            (Some(proxy), Some(port)) => proxy.url_through(&self.url, &format!("127.0.0.1:{port}")),
            _ => self.url.clone(),
        };
        // A PostgreSQL worker is on PostgreSQL alone (no Redis: an empty URL).
        let (redis_url, postgres_url) = match &self.server {
            Server::Postgres(_) => (String::new(), Some(server_url)),
            _ => (server_url, None),
        };
        let amqp_url = match (&self.amqp, &self.amqp_proxy) {
            (Some(amqp), Some(proxy)) => Some(proxy.url_through(amqp, &host_port(amqp))),
            _ => None,
        };
        let schedule_from = self.schedule_from.to_string();
        let log_filter = std::env::var("QTASKS_TORTURE_LOG").unwrap_or_else(|_| "warn".into());
        let schedule_slots = SCHEDULE_SLOTS.to_string();
        let mut env: Vec<(&str, &str)> = vec![
            ("QTASKS_TEST_REDIS_URL", &redis_url),
            ("QTASKS_TEST_SCHEDULE_FROM", &schedule_from),
            ("QTASKS_TEST_SCHEDULE_SLOTS", &schedule_slots),
            ("QTASKS_TEST_SCHEDULE_LOGGED", "1"),
            ("QTASKS_TEST_EXEC_LOG", &exec_log),
            ("QTASKS_TEST_SPAN_LOG", &span_log),
            ("QTASKS_MAX_DELIVERIES", &max_deliveries),
            ("QTASKS_STOP_TIMEOUT", "5"),
            (
                "QTASKS_QUEUES",
                if self.engine.keeps_queues() {
                    SERVED_QUEUES
                } else {
                    "default"
                },
            ),
            // Warnings too: a lost lease is one, and explains an overlap. More with
            // `QTASKS_TORTURE_LOG` (a `RUST_LOG` filter) when a seed needs explaining.
            ("RUST_LOG", &log_filter),
        ];
        if let Some(amqp) = &amqp_url {
            env.push(("QTASKS_TEST_WORKER_AMQP", amqp));
        }
        if let Some(kafka) = &self.kafka {
            env.push(("QTASKS_TEST_WORKER_KAFKA", kafka));
            // The group hands a dead worker's partitions on after this (10 s by default).
            env.push(("QTASKS_TEST_KAFKA_SESSION_MS", KAFKA_SESSION_MS));
        }
        if let Some(postgres) = &postgres_url {
            env.push(("QTASKS_TEST_WORKER_POSTGRES", postgres));
        }
        let partitions;
        if let Server::Cluster(cluster) = &self.server {
            env.push((
                "QTASKS_TEST_RESPONSE_TIMEOUT_MS",
                replicated::CLUSTER_RESPONSE_TIMEOUT_MS,
            ));
            partitions = cluster.partitions.to_string();
            env.push(("QTASKS_TEST_PARTITIONS", &partitions));
        }
        match &self.clock_offset {
            Some((offset_index, offset)) if *offset_index == index => {
                let offset = format!("{offset:+}s");
                env.push(("FAKETIME", &offset));
                env.push(("FAKETIME_DONT_FAKE_MONOTONIC", "1"));
                env.push(("LD_PRELOAD", FAKETIME_LIBRARY));
                WorkerProcess::spawn_logged(
                    &self.prefix,
                    LEASE_MS,
                    CONCURRENCY,
                    &env,
                    &self.worker_log,
                )
            }
            _ => WorkerProcess::spawn_logged(
                &self.prefix,
                LEASE_MS,
                CONCURRENCY,
                &env,
                &self.worker_log,
            ),
        }
    }

    /// Restarts the workers that died (as a supervisor would); returns how many. On Kafka a
    /// dead worker is restarted once the group has dropped it ([`KAFKA_REJOIN_AFTER`]).
    fn supervise(&mut self) -> usize {
        let mut restarted = 0;
        self.dead_since.resize(self.workers.len(), None);
        for index in 0..self.workers.len() {
            if self.workers[index].0.try_wait().unwrap().is_some() {
                if self.engine == Engine::Kafka {
                    let since = *self.dead_since[index].get_or_insert_with(Instant::now);
                    if since.elapsed() < KAFKA_REJOIN_AFTER {
                        continue;
                    }
                    self.dead_since[index] = None;
                }
                self.workers[index] = self.spawn_worker(index);
                self.note_offset(index);
                restarted += 1;
            }
        }
        self.restarts += restarted;
        restarted
    }

    /// Remembers the offset of worker `index`'s process, if it runs with one.
    fn note_offset(&mut self, index: usize) {
        if let Some((offset_index, seconds)) = self.clock_offset
            && offset_index == index
        {
            let pid = self.workers[index].0.id();
            self.offset_pids.insert(pid, i128::from(seconds) * 1000);
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|worker| worker.0.id()).collect()
    }
}

/// `host:port` of an AMQP URL.
/// Debian's libfaketime (package `faketime`).
const FAKETIME_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").args([name, &pid.to_string()]).status();
}

/// How long the Kafka group waits to hear from a worker before it hands the worker's
/// partitions on.
const KAFKA_SESSION_MS: &str = "6000";

/// How long a dead Kafka worker waits for its restart: past the session timeout, so that the
/// group has dropped it before its successor joins. tansu 0.6.0 drops a silent member without
/// a rebalance, and a member that joins before the drop is balanced with it: the partitions it
/// is given then wait for the group's next join (seen: a partition stranded for a minute).
const KAFKA_REJOIN_AFTER: Duration = Duration::from_secs(9);

/// The harness's own app: `queue_url` is the queue's server when it is not the records' (the
/// RabbitMQ URL, the Kafka servers).
async fn client(engine: Engine, url: &str, queue_url: Option<&str>, prefix: &str) -> QueueTasks {
    let config = QueueConfig {
        name: prefix.to_owned(),
        ..Default::default()
    };
    let mut options = RedisOptions {
        lease: Duration::from_millis(LEASE_MS),
        ..Default::default()
    };
    options.partitions = engine.partitions();
    if matches!(engine, Engine::RedisCluster | Engine::RedisPartitions) {
        options.response_timeout =
            Duration::from_millis(replicated::CLUSTER_RESPONSE_TIMEOUT_MS.parse().unwrap());
    }
    match (engine, queue_url) {
        (Engine::Postgres, _) => {
            let options = qtasks::postgres::PostgresOptions {
                lease: options.lease,
                ..Default::default()
            };
            qtasks::postgres::connect_with(url, config, options)
                .await
                .expect("the run's PostgreSQL is up")
        }
        (Engine::Kafka, Some(servers)) => {
            let kafka = qtasks::kafka::KafkaOptions::default()
                .session_timeout(Duration::from_millis(KAFKA_SESSION_MS.parse().unwrap()));
            qtasks::kafka::connect_with(servers, Redis::new(url).options(options), config, kafka)
                .await
                .expect("Kafka and the run's Redis are up")
        }
        (Engine::RabbitMq, Some(amqp)) => {
            let rabbit = qtasks::rabbitmq::RabbitMqOptions::default()
                .queue_expires(Duration::from_secs(600));
            qtasks::rabbitmq::connect_with(amqp, Redis::new(url).options(options), config, rabbit)
                .await
                .expect("RabbitMQ and the run's Redis are up")
        }
        _ => qtasks::redis::connect_with(url, config, options)
            .await
            .expect("the run's Redis is up"),
    }
}

/// Retries an operation through the faults (a Redis restarting, paused or cutting clients).
async fn through_faults<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = qtasks::Result<T>>,
{
    let deadline = Instant::now() + DRAIN;
    loop {
        match op().await {
            Ok(value) => return value,
            Err(error) => {
                assert!(Instant::now() < deadline, "{what} kept failing: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Held by a run of an engine of several Redis servers (Sentinels, a cluster): those take
/// turns, since two of them at once (a dozen server processes on two cores, beside the other
/// engines) starve their masters into failovers the harness did not cause, which its counts
/// cannot account for.
static REPLICATED_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(engine: Engine, seed: u64) {
    let _turn = match engine {
        Engine::RedisSentinel | Engine::RedisCluster | Engine::RedisPartitions => {
            Some(REPLICATED_TURN.lock().await)
        }
        _ => None,
    };
    let started = Instant::now();
    eprintln!(
        "torture: engine {engine:?} seed {seed}; the workers' logs in target/tmp/torture-{seed}-{engine:?}.log (rerun: QTASKS_TORTURE_SEEDS={seed} cargo test -p qtasks-tests --test torture -- --include-ignored --nocapture {})",
        engine.test_name()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let server = Server::start(engine).await;
    let url = server.url();
    let amqp = match engine {
        Engine::RabbitMq => amqp_url("torture"),
        _ => None,
    };
    let prefix = unique_prefix(&format!("torture{seed}"));
    let dir = qtasks_test_support::scratch::scratch_dir("torture");
    let exec_log = dir.join("executions.log");
    let span_log = dir.join("spans.log");
    let worker_log =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("torture-{seed}-{engine:?}.log"));
    let _ = std::fs::remove_file(&worker_log);
    let worker_count = if rng.random_bool(0.25) { 1 } else { WORKERS };
    let faketime = Path::new(FAKETIME_LIBRARY).exists();
    let clock_offset = (faketime && rng.random_bool(0.5)).then(|| {
        let seconds: i32 = rng.random_range(1..=5) * if rng.random_bool(0.5) { 1 } else { -1 };
        (rng.random_range(0..worker_count), seconds)
    });
    let kafka = match engine {
        Engine::Kafka => kafka_url("torture"),
        _ => None,
    };
    let app = client(engine, &url, amqp.as_deref().or(kafka.as_deref()), &prefix).await;
    if let Server::Postgres(_) = &server {
        postgres::record_outcomes(&url).await;
    }
    let server_proxy = match server.proxied_port() {
        Some(port) => Some(Proxy::start(format!("127.0.0.1:{port}")).await),
        None => None,
    };
    let amqp_proxy = match &amqp {
        Some(amqp) => Some(Proxy::start(host_port(amqp)).await),
        None => None,
    };
    let schedule_from = (now_ms() / 1000) as u64 + 5;
    let mut run = Run {
        engine,
        seed,
        server,
        dir,
        url,
        amqp,
        kafka,
        prefix,
        exec_log,
        span_log,
        worker_log,
        server_proxy,
        amqp_proxy,
        schedule_from,
        workers: Vec::new(),
        clock_offset,
        offset_pids: HashMap::new(),
        restarts: 0,
        dead_since: Vec::new(),
        faults: Vec::new(),
    };
    run.workers = (0..worker_count)
        .map(|index| run.spawn_worker(index))
        .collect();
    for index in 0..worker_count {
        run.note_offset(index);
    }

    // -- Tasks and faults, interleaved ----------------------------------------------------------
    let mut added: Vec<Added> = Vec::new();
    let mut waiters = Vec::new();
    let mut pending_cancels: Vec<(usize, Instant)> = Vec::new();
    let mut second_adds: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let window_start = Instant::now();
    let mut next_fault = window_start + Duration::from_millis(rng.random_range(200..800));
    let mut thawing: Vec<(u32, Instant)> = Vec::new();
    let mut label = 0;
    while window_start.elapsed() < FAULT_WINDOW || !thawing.is_empty() {
        run.supervise();
        // Thaw the workers that were frozen.
        let now = Instant::now();
        thawing.retain(|(pid, until)| {
            if *until > now {
                return true;
            }
            signal(*pid, "-CONT");
            false
        });
        // A few tasks every round while the window lasts (adds retried through the faults).
        if window_start.elapsed() < FAULT_WINDOW - Duration::from_secs(1) {
            for _ in 0..rng.random_range(1..=4) {
                label += 1;
                let kind = pick_kind(&mut rng, engine, &added);
                for task in add(&app, &run, kind, label, &mut rng, &mut second_adds).await {
                    if matches!(kind, Kind::CancelWaiting | Kind::CancelRunning) {
                        pending_cancels.push((added.len(), Instant::now()));
                    }
                    // (A chord's callback has no record to wait on before its members end.)
                    let waitable = !matches!(task.kind, Kind::PoisonEntry | Kind::ChordCallback);
                    if waitable && rng.random_bool(0.2) {
                        let (app, uuid, drain) = (app.clone(), task.uuid, engine.drain());
                        waiters.push(tokio::spawn(
                            async move { (uuid, app.wait(uuid, drain).await) },
                        ));
                    }
                    added.push(task);
                }
            }
        }
        // Cancels: a waiting task at once, a running one once it runs.
        let mut still = Vec::new();
        for (index, since) in pending_cancels.drain(..) {
            let task = &added[index];
            let ready = match task.kind {
                Kind::CancelWaiting => true,
                _ => {
                    executions(&run.exec_log).contains_key(&task.uuid)
                        || since.elapsed() > Duration::from_secs(10)
                }
            };
            if ready {
                let uuid = task.uuid;
                let answer = through_faults("cancel", || app.cancel(uuid, "torture")).await;
                added[index].cancelled = Some(answer);
            } else {
                still.push((index, since));
            }
        }
        pending_cancels = still;
        // A fault when its time comes.
        if Instant::now() >= next_fault && window_start.elapsed() < FAULT_WINDOW {
            inject(&mut run, &mut rng, &mut thawing).await;
            next_fault = Instant::now() + Duration::from_millis(rng.random_range(300..1500));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Cancels still due (their task never started in the window).
    while !pending_cancels.is_empty() {
        run.supervise();
        let mut still = Vec::new();
        for (index, since) in pending_cancels.drain(..) {
            let uuid = added[index].uuid;
            if executions(&run.exec_log).contains_key(&uuid)
                || since.elapsed() > Duration::from_secs(10)
            {
                let answer = through_faults("cancel", || app.cancel(uuid, "torture")).await;
                added[index].cancelled = Some(answer);
            } else {
                still.push((index, since));
            }
        }
        pending_cancels = still;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for second in second_adds {
        second.await.expect("a second add ends");
    }
    // The schedule's slots: each must add its task (under the slot's id) once.
    let slots: Vec<Uuid> = (0..SCHEDULE_SLOTS)
        .map(|n| {
            let slot = std::time::UNIX_EPOCH + Duration::from_secs(run.schedule_from + n);
            qtasks::schedule::slot_task_id(&run.prefix, "tick", slot)
        })
        .collect();
    // Past the last slot, before they are waited for.
    while now_ms() / 1000 < u128::from(run.schedule_from + SCHEDULE_SLOTS) {
        run.supervise();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    added.extend(slots.iter().map(|uuid| Added::new(*uuid, Kind::Scheduled)));

    // -- Drain: every task reaches its final status ------------------------------------------
    let mut finals: HashMap<Uuid, TaskRecord> = HashMap::new();
    let deadline = Instant::now() + engine.drain();
    for task in added.iter().filter(|task| task.kind != Kind::PoisonEntry) {
        loop {
            run.supervise();
            let record = final_attempt(&app, task.uuid).await;
            if let Some(record) =
                record.filter(|r| r.status.is_final() && r.status != TaskStatus::Retry)
            {
                finals.insert(task.uuid, record);
                break;
            }
            if Instant::now() >= deadline {
                // Each attempt's record as the engine reads it (an error, or none), and on
                // PostgreSQL its rows as they are.
                let mut chain = Vec::new();
                let mut next = Some(task.uuid);
                while let Some(uuid) = next.take() {
                    let read = app.get(uuid).await;
                    next = read
                        .as_ref()
                        .ok()
                        .and_then(|r| r.as_ref()?.retry_child_uuid);
                    let rows = match &run.server {
                        Server::Postgres(_) => postgres::rows_of(&run.url, uuid).await,
                        _ => String::new(),
                    };
                    chain.push(format!(
                        "{uuid}: {:?} {rows}",
                        read.map(|r| r.map(|r| r.status))
                    ));
                    if chain.len() > 5 {
                        break;
                    }
                }
                eprintln!("seed {seed}: the attempts of {}: {chain:#?}", task.uuid);
                let mut members = Vec::new();
                for member in &task.members {
                    let record = final_attempt(&app, *member).await;
                    members.push((*member, record.map(|r| (r.status, r.traceback))));
                }
                panic!(
                    "seed {seed}: {:?} task {} never reached a final status (its record: {:?}; chord members: {members:?})",
                    task.kind,
                    task.uuid,
                    app.get(task.uuid).await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // -- Every live worker still takes tasks (no silent zombie) -------------------------------
    // (Every worker restarted first: a Kafka worker waits out its group's session.)
    while run.dead_since.iter().any(Option::is_some) {
        run.supervise();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let live: HashSet<u32> = run.pids().into_iter().collect();
    let probes_from = now_ms();
    let mut probes = Vec::new();
    for i in 0..(worker_count * CONCURRENCY * 3) {
        let uuid = through_faults("adding a probe", || {
            app.add_task("log_run", (format!("probe{i}"), 150), ())
        })
        .await
        .uuid();
        probes.push(uuid);
    }
    for uuid in &probes {
        let record = app.wait(*uuid, DRAIN).await.expect("a probe ends");
        assert_eq!(
            record.status,
            TaskStatus::Success,
            "seed {seed}: a probe failed"
        );
    }
    let probed: HashSet<u32> = executions_with_pids(&run.exec_log)
        .into_iter()
        .filter(|(uuid, _)| probes.contains(uuid))
        .map(|(_, pid)| pid)
        .collect();
    // On Kafka a worker takes only from the partitions the group gave it, and a live worker may
    // hold none (a group mid-rebalance, or more workers than partitions): a zombie there is a
    // worker that holds partitions and takes nothing, and then some probes never end (above).
    let idle: Vec<&u32> = if engine == Engine::Kafka {
        Vec::new()
    } else {
        live.difference(&probed).collect()
    };
    assert!(
        idle.is_empty(),
        "seed {seed}: live workers {idle:?} took none of {} probes after the faults (zombies?)",
        probes.len()
    );
    let _ = probes_from;

    // -- Invariants ----------------------------------------------------------------------------
    let runs = executions(&run.exec_log);
    let mut repeated = 0;
    for task in added.iter().filter(|task| task.kind != Kind::PoisonEntry) {
        let record = &finals[&task.uuid];
        let ran = runs.get(&task.uuid).copied().unwrap_or(0);
        let context = format!(
            "seed {seed}: {:?} task {} ended {} ({:?} / {:?}), ran {ran} times",
            task.kind, task.uuid, record.status, record.traceback, record.cancel_reason
        );
        match task.kind {
            Kind::Short
            | Kind::Long
            | Kind::Delayed
            | Kind::AddedTwice
            | Kind::ChordMember
            | Kind::Scheduled => {
                assert_eq!(record.status, TaskStatus::Success, "{context}");
                assert!(ran >= 1, "{context}");
                if ran > 1 {
                    repeated += 1;
                }
            }
            Kind::Limited if !engine.keeps_limits() => {
                assert_eq!(record.status, TaskStatus::Error, "{context}");
                let traceback = record.traceback.as_deref().unwrap_or_default();
                assert!(traceback.contains("LimitsUnsupported"), "{context}");
                assert_eq!(ran, 0, "never run past its limits: {context}");
            }
            Kind::Limited => {
                assert_eq!(record.status, TaskStatus::Success, "{context}");
                assert!(ran >= 1, "{context}");
                assert_eq!(
                    record.hand_backs, 0,
                    "a wait for a turn is no hand-back: {context}"
                );
                if ran > 1 {
                    repeated += 1;
                }
            }
            Kind::ChordCallback => {
                assert_eq!(
                    (record.status, record.returning.clone()),
                    (TaskStatus::Success, task.returns.clone()),
                    "the callback gets its members' results: {context}"
                );
            }
            Kind::FailsWithRetries => {
                assert_eq!(record.status, TaskStatus::Error, "{context}");
                assert!(
                    record
                        .traceback
                        .as_deref()
                        .is_some_and(|t| t.contains("fails every time")),
                    "{context}"
                );
            }
            Kind::Panics => {
                assert_eq!(record.status, TaskStatus::Error, "{context}");
            }
            Kind::Aborts => {
                assert_eq!(record.status, TaskStatus::Error, "{context}");
                assert!(
                    record
                        .traceback
                        .as_deref()
                        .is_some_and(|t| t.starts_with("DeliveryLimit:")),
                    "{context}"
                );
                // On RabbitMQ the count travels in a copy of the message, published before
                // the original is acked: when that ack is lost (a cut connection), the
                // original comes back with the older count and runs while the copy is
                // dropped, so the count can lag (seen: 10 runs under a limit of 6, RabbitMQ
                // seed 1796289538011). The limit still ends the task; the bound is looser.
                let bound = if engine.counts_in_copies() {
                    engine.max_deliveries() * 2
                } else {
                    engine.max_deliveries()
                };
                assert!(ran as u32 <= bound, "{context}");
            }
            Kind::CancelWaiting => {
                if task.cancelled == Some(true) {
                    assert_eq!(record.status, TaskStatus::Cancel, "{context}");
                    assert_eq!(
                        ran, 0,
                        "a task cancelled while it waited never runs: {context}"
                    );
                }
            }
            Kind::CancelRunning => {
                if task.cancelled == Some(true) {
                    assert_eq!(
                        record.status,
                        TaskStatus::Cancel,
                        "a `true` cancel of a running task ends it `cancel`: {context}"
                    );
                } else {
                    assert_eq!(record.status, TaskStatus::Success, "{context}");
                }
            }
            Kind::PoisonEntry => {}
            Kind::Stream => {
                // Every item once, in order, whatever runs were cut short on the way.
                let expected: Vec<serde_json::Value> = (1..=STREAM_ITEMS).map(Into::into).collect();
                assert_eq!(
                    (record.status, record.returning.clone()),
                    (
                        TaskStatus::Success,
                        Some(serde_json::Value::Array(expected))
                    ),
                    "{context}"
                );
            }
            Kind::PoisonRecord => {
                assert_eq!(record.status, TaskStatus::Error, "{context}");
            }
        }
    }
    // The schedule added no task but its slots' (one per slot, by their ids).
    let ticks: HashSet<Uuid> = executions_labelled(&run.exec_log, "tick");
    let strays: Vec<&Uuid> = ticks.iter().filter(|uuid| !slots.contains(uuid)).collect();
    assert!(
        strays.is_empty(),
        "seed {seed}: schedule tasks with no slot's id: {strays:?}"
    );
    // Poison entries are dead letters, each with its reason.
    let poison = added
        .iter()
        .filter(|task| task.kind == Kind::PoisonEntry)
        .count();
    if poison > 0 {
        let letters =
            through_faults("reading the dead letters", || app.dead_letters().list(1000)).await;
        assert!(
            letters.len() >= poison,
            "seed {seed}: {poison} poison entries, {} dead letters",
            letters.len()
        );
    }
    // Waiters returned the stored record.
    for waiter in waiters {
        let (uuid, waited) = waiter.await.unwrap();
        let waited =
            waited.unwrap_or_else(|e| panic!("seed {seed}: a wait for {uuid} failed: {e}"));
        let stored = final_attempt(&app, uuid).await.expect("stored");
        assert_eq!(
            (waited.uuid, waited.status),
            (stored.uuid, stored.status),
            "seed {seed}: the waiter of {uuid} returned another record"
        );
    }
    // One recorded outcome per attempt (every final write of a record, from the AOF).
    let outcomes = match &run.server {
        Server::Redis(redis) => Some(recorded_outcomes(redis, &run.prefix)),
        Server::Sentinel(sentinel) => sentinel.recorded_outcomes(&run.prefix).await,
        Server::Cluster(cluster) => cluster.recorded_outcomes(&run.prefix).await,
        Server::Postgres(_) => Some(postgres::recorded_outcomes(&run.url, &run.prefix).await),
    };
    // (Counted from the right files: most final records are there.)
    if let Some(outcomes) = &outcomes
        && !matches!(engine, Engine::RabbitMq | Engine::Kafka)
    {
        let seen = finals
            .keys()
            .filter(|uuid| outcomes.contains_key(uuid))
            .count();
        assert!(
            seen * 2 >= finals.len(),
            "seed {seed}: the recorded outcomes name {seen} of {} final records",
            finals.len()
        );
    }
    let outcomes = outcomes.unwrap_or_default();
    // On PostgreSQL every final record was written as one (the trigger sees every write of
    // the engine's, so the count can fail). The append-only file's count reads `HSET`s only,
    // and some final records are written otherwise (a handful of a run's).
    let unseen: Vec<Uuid> = finals
        .values()
        .filter(|_| engine == Engine::Postgres)
        .map(|record| record.uuid)
        .filter(|uuid| !outcomes.contains_key(uuid))
        .collect();
    assert!(
        unseen.is_empty(),
        "seed {seed}: final records whose outcome no write recorded: {unseen:?}"
    );
    let duplicates: Vec<_> = outcomes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicates.is_empty(),
        "seed {seed}: attempts with more than one recorded outcome: {duplicates:?}"
    );
    // Two runs of one attempt overlap only when a fault hit one of their holders.
    // A worker the machine starved past its lease is stalled as surely as one frozen on
    // purpose: the engine says so in the worker's log, and that explains an overlap too.
    let stalled = stalled_tasks(&run.worker_log);
    let (overlaps, unexplained) = overlaps(&run.span_log, &run.faults, &stalled, &run.offset_pids);
    assert!(
        unexplained.is_empty(),
        "seed {seed}: runs of one attempt overlapped with no fault to explain it: {unexplained:?}\nfaults: {:?}",
        run.faults
    );
    // The engine's working rows come back to empty (PostgreSQL keeps the queue in a table).
    if engine == Engine::Postgres {
        let left = postgres::live_rows(&run.url, &run.prefix).await;
        assert!(
            left.iter().all(|(_, n)| *n == 0),
            "seed {seed}: rows left after the drain: {left:?}"
        );
    }
    // The engine's working keys come back to empty (Redis keeps the queue).
    for (key_prefix, url) in if engine.on_redis() {
        run.server.key_places(&run.prefix).await
    } else {
        Vec::new()
    } {
        let mut con = raw_connection(&url).await;
        let named = |key: &str| format!("qtasks:q:{NAMED_QUEUE}:{key}");
        for (key, kind) in [
            ("task_queue".to_owned(), "list"),
            ("qtasks:incoming".to_owned(), "list"),
            ("qtasks:ready".to_owned(), "zset"),
            ("qtasks:leases".to_owned(), "zset"),
            ("qtasks:delayed".to_owned(), "zset"),
            ("qtasks:recovered".to_owned(), "set"),
            ("qtasks:cancel_requests".to_owned(), "hash"),
            ("qtasks:gone".to_owned(), "set"),
            (named("list"), "list"),
            (named("incoming"), "list"),
            (named("ready"), "zset"),
            (named("delayed"), "zset"),
        ] {
            let key = format!("{key_prefix}:{key}");
            let left: i64 = match kind {
                "list" => con.llen(&key).await.unwrap(),
                "zset" => con.zcard(&key).await.unwrap(),
                "set" => con.scard(&key).await.unwrap(),
                _ => con.hlen(&key).await.unwrap(),
            };
            assert_eq!(left, 0, "seed {seed}: {key} holds {left} after the drain");
        }
    }
    let mut kinds: HashMap<&'static str, usize> = HashMap::new();
    for fault in &run.faults {
        *kinds.entry(fault.what).or_insert(0) += 1;
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort();
    println!(
        "torture: engine {:?} seed {} ok in {:.1} s: {} workers, {} tasks, {} repeated runs, {} overlaps explained by faults, {} worker restarts, clock offset {:?}, faults {:?}",
        run.engine,
        run.seed,
        started.elapsed().as_secs_f64(),
        run.workers.len(),
        added.len(),
        repeated,
        overlaps,
        run.restarts,
        run.clock_offset,
        kinds
    );
    for worker in run.workers.drain(..) {
        signal(worker.0.id(), "-TERM");
        drop(worker);
    }
    if run.amqp.is_some() || run.kafka.is_some() {
        let _ = app.flush_all().await;
    } // (Kept when the run fails, for its logs.)
    let _ = std::fs::remove_dir_all(&run.dir);
}

/// A task kind, by weight; the aborting kind at most once a run (each costs a worker
/// `max_deliveries` times), poison records not on RabbitMQ (its message is the record).
fn pick_kind(rng: &mut StdRng, engine: Engine, added: &[Added]) -> Kind {
    loop {
        let kind = match rng.random_range(0..100) {
            0..24 => Kind::Short,
            24..37 => Kind::Long,
            37..46 => Kind::Delayed,
            46..53 => Kind::FailsWithRetries,
            53..57 => Kind::Panics,
            57..59 => Kind::Aborts,
            59..66 => Kind::CancelWaiting,
            66..75 => Kind::CancelRunning,
            75..79 => Kind::PoisonEntry,
            79..83 => Kind::PoisonRecord,
            83..88 => Kind::Stream,
            88..93 => Kind::AddedTwice,
            93..96 => Kind::Limited,
            _ => Kind::ChordMember,
        };
        // Poison records are written to Redis and PostgreSQL (RabbitMQ's message carries the
        // task); poison entries to every engine's queue.
        if kind == Kind::PoisonRecord && engine == Engine::RabbitMq {
            continue;
        }
        if kind == Kind::Aborts && added.iter().any(|task| task.kind == Kind::Aborts) {
            continue;
        }
        return kind;
    }
}

/// The queues every worker of a run serves: the default one, and a named one.
const SERVED_QUEUES: &str = "default:2,torture_b:1";

/// The named queue about a third of a run's tasks go to.
const NAMED_QUEUE: &str = "torture_b";

/// `options` in the named queue, one time in three.
fn in_some_queue(options: AddOptions, rng: &mut StdRng) -> AddOptions {
    if rng.random_bool(1.0 / 3.0) {
        options.queue(NAMED_QUEUE)
    } else {
        options
    }
}

/// Adds a task of `kind` (a chord: its members and its callback); the second add of a task
/// added twice is spawned into `second_adds`.
async fn add(
    app: &QueueTasks,
    run: &Run,
    kind: Kind,
    label: usize,
    rng: &mut StdRng,
    second_adds: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Vec<Added> {
    let label = format!("{kind:?}{label}");
    let long_ms = rng.random_range(LEASE_MS * 3 / 2..LEASE_MS * 5 / 2);
    let (name, args, options): (&str, serde_json::Value, AddOptions) = match kind {
        // (The schedule's slots are added by the workers; a task of theirs is a short one.)
        Kind::Short | Kind::Scheduled => (
            "log_run",
            serde_json::json!([label, rng.random_range(0..40)]),
            AddOptions::default(),
        ),
        Kind::AddedTwice => (
            "log_run",
            serde_json::json!([label, rng.random_range(0..200)]),
            AddOptions::default().uuid(Uuid::new_v4()),
        ),
        Kind::ChordMember | Kind::ChordCallback => return add_chord(app, &label, rng).await,
        Kind::Limited => (
            "paced_log",
            serde_json::json!([label, rng.random_range(0..300)]),
            AddOptions::default(),
        ),
        Kind::Long => (
            "log_run",
            serde_json::json!([label, long_ms]),
            AddOptions::default(),
        ),
        Kind::Delayed => (
            "log_run",
            serde_json::json!([label, 10]),
            AddOptions::default().delay(Duration::from_millis(rng.random_range(200..1500))),
        ),
        Kind::FailsWithRetries => (
            "always_fail",
            serde_json::json!([label]),
            AddOptions::default(),
        ),
        Kind::Panics => ("panics", serde_json::json!([label]), AddOptions::default()),
        Kind::Aborts => ("crash", serde_json::json!([label]), AddOptions::default()),
        Kind::CancelWaiting => (
            "log_run",
            serde_json::json!([label, 10]),
            AddOptions::default().delay(Duration::from_secs(30)),
        ),
        Kind::CancelRunning => (
            "log_run",
            serde_json::json!([label, 4000]),
            AddOptions::default(),
        ),
        Kind::Stream => (
            "count_up",
            serde_json::json!([STREAM_ITEMS]),
            AddOptions::default(),
        ),
        Kind::PoisonEntry | Kind::PoisonRecord => {
            return vec![add_poison(run, kind, rng).await];
        }
    };
    let options = if run.engine.keeps_queues() {
        in_some_queue(options, rng)
    } else {
        options
    };
    let args = args.as_array().cloned().unwrap_or_default();
    let handle = through_faults("adding a task", || {
        app.add_task_with(name, args.clone(), (), options.clone())
    })
    .await;
    let uuid = handle.uuid();
    if kind == Kind::AddedTwice {
        // Again under its uuid: at once, while it waits or runs, or after its end.
        let (app, pause) = (
            app.clone(),
            Duration::from_millis(rng.random_range(0..2500)),
        );
        second_adds.push(tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            let again = through_faults("adding a task again", || {
                app.add_task_with(name, args.clone(), (), options.clone())
            })
            .await;
            assert_eq!(again.uuid(), uuid, "an add again names the task");
        }));
    }
    vec![Added::new(uuid, kind)]
}

/// A chord of two or three short members whose callback joins their labels: every other one
/// a workflow (`parallel(members).then(callback)`, moved on by the workers), the others a
/// `qtasks::chord`.
async fn add_chord(app: &QueueTasks, label: &str, rng: &mut StdRng) -> Vec<Added> {
    let labels: Vec<String> = (0..rng.random_range(2..=3))
        .map(|n| format!("{label}m{n}"))
        .collect();
    let ms = rng.random_range(0..100);
    if rng.random_bool(0.5) {
        return add_workflow_chord(app, &labels, ms).await;
    }
    let chord = || {
        let members = labels.iter().map(|label| {
            qtasks::TaskCall::new(
                "log_run",
                vec![label.clone().into(), ms.into()],
                Default::default(),
            )
        });
        let callback = qtasks::TaskCall::new("join_labels", vec!["+".into()], Default::default());
        qtasks::chord(qtasks::group(members), callback).add(app)
    };
    let handle = through_faults("adding a chord", chord).await;
    let mut added: Vec<Added> = handle
        .group()
        .members()
        .iter()
        .map(|uuid| Added::new(*uuid, Kind::ChordMember))
        .collect();
    let mut callback = Added::new(handle.callback_uuid(), Kind::ChordCallback);
    callback.returns = Some(labels.join("+").into());
    callback.members = handle.group().members().to_vec();
    added.push(callback);
    added
}

/// [`add_chord`] as a workflow. Its ids are fixed before the first try, so an add tried again
/// through a fault finishes the earlier one rather than starting another.
async fn add_workflow_chord(app: &QueueTasks, labels: &[String], ms: u64) -> Vec<Added> {
    let id = Uuid::new_v4();
    let members: Vec<Uuid> = labels.iter().map(|_| Uuid::new_v4()).collect();
    let callback = Uuid::new_v4();
    let flow = || {
        let calls = labels.iter().zip(&members).map(|(label, uuid)| {
            qtasks::TaskCall::new(
                "log_run",
                vec![label.clone().into(), ms.into()],
                Default::default(),
            )
            .uuid(*uuid)
        });
        let join = qtasks::TaskCall::new("join_labels", vec!["+".into()], Default::default())
            .uuid(callback);
        qtasks::workflow::parallel(calls)
            .then(join)
            .uuid(id)
            .add(app)
    };
    through_faults("adding a workflow", flow).await;
    let mut added: Vec<Added> = members
        .iter()
        .map(|uuid| Added::new(*uuid, Kind::ChordMember))
        .collect();
    let mut last = Added::new(callback, Kind::ChordCallback);
    last.returns = Some(labels.join("+").into());
    last.members = members;
    added.push(last);
    added
}

/// Poison written as another producer could: an entry that names no task, or a task whose
/// record cannot run (its `created_at` is `nan`, or its arguments are no JSON).
async fn add_poison(run: &Run, kind: Kind, rng: &mut StdRng) -> Added {
    // (Written where the app looks for it: in its first partition, when it has several.)
    let uuid = run.server.uuid_in_first_partition();
    if let Some(amqp) = &run.amqp {
        // A message that is no task, or names a time that is none.
        let body: Vec<u8> = match rng.random_range(0..3) {
            0 => b"no json at all".to_vec(),
            1 => serde_json::json!({"uuid": uuid, "task_name": "log_run", "priority": 0,
                "args": ["x", 1], "kwargs": {}, "created_at": 1.0, "run_at": 1e300})
            .to_string()
            .into_bytes(),
            _ => b"\xff\xfe{".to_vec(),
        };
        qtasks_test_support::amqp::publish_raw(amqp, &format!("{}:task_queue", run.prefix), &body)
            .await;
        return Added::new(uuid, kind);
    }
    if let Server::Postgres(_) = &run.server {
        postgres::add_poison(&run.url, &run.prefix, uuid, kind, rng).await;
        return Added::new(uuid, kind);
    }
    if let (Some(kafka), Kind::PoisonEntry) = (&run.kafka, kind) {
        // A value that is not `name:uuid:priority`, or a task header that is no task.
        let value: Vec<u8> = match rng.random_range(0..4) {
            0 => b"no colons at all".to_vec(),
            1 => format!("log_run:{uuid}:high").into_bytes(),
            2 => b"log_run:\xff\xfe:0".to_vec(),
            _ => format!("log_run:{uuid}:0").into_bytes(),
        };
        let header: &[(&str, &[u8])] = &[("qtasks-task", b"{\"uuid\": 7")];
        qtasks_test_support::kafka::send_raw(
            kafka,
            &format!("{}_task_queue", run.prefix),
            0,
            &value,
            if value.ends_with(b":0") { header } else { &[] },
        )
        .await;
        return Added::new(uuid, kind);
    }
    let key_prefix = run.server.key_prefix(&run.prefix);
    let queue = format!("{key_prefix}:task_queue");
    let deadline = Instant::now() + DRAIN;
    loop {
        let written: redis::RedisResult<()> = async {
            // (Through Sentinels or on a cluster: the master that holds the app's keys now.)
            let url = run.server.direct_redis_url(&run.prefix).await;
            let mut con = redis::Client::open(url.as_str())?
                .get_multiplexed_async_connection()
                .await?;
            if kind == Kind::PoisonEntry {
                let entry: Vec<u8> = match rng.random_range(0..3) {
                    0 => b"no colons at all".to_vec(),
                    1 => format!("log_run:{uuid}:high").into_bytes(),
                    _ => b"log_run:\xff\xfe:0".to_vec(),
                };
                con.rpush::<_, _, ()>(&queue, entry).await?;
            } else {
                let (created, args) = if rng.random_bool(0.5) {
                    ("nan", "[\"x\", 1]")
                } else {
                    ("1.0", "not json")
                };
                let record = [
                    ("task_name", "log_run"),
                    ("priority", "0"),
                    ("args", args),
                    ("kwargs", "{}"),
                    ("created_at", created),
                    ("updated_at", "1.0"),
                    ("status", "new"),
                ];
                con.hset_multiple::<_, _, _, ()>(format!("{key_prefix}:{uuid}"), &record)
                    .await?;
                // (On Kafka the message comes next, as the original's producer sends it: the
                // three fields alone, the rest read from the record.)
                if run.kafka.is_none() {
                    con.rpush::<_, _, ()>(&queue, format!("log_run:{uuid}:0"))
                        .await?;
                }
            }
            Ok(())
        }
        .await;
        match written {
            Ok(()) => break,
            Err(error) => {
                assert!(
                    Instant::now() < deadline,
                    "writing poison kept failing: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if let Some(kafka) = &run.kafka {
        qtasks_test_support::kafka::send_raw(
            kafka,
            &format!("{}_task_queue", run.prefix),
            0,
            format!("log_run:{uuid}:0").as_bytes(),
            &[],
        )
        .await;
    }
    Added::new(uuid, kind)
}

/// One fault, chosen by the seed; recorded in the run's faults. A worker frozen is thawed by
/// the main loop later; Redis is brought back here, after its outage (the harness itself adds
/// nothing meanwhile, while the workers live through it).
async fn inject(run: &mut Run, rng: &mut StdRng, thawing: &mut Vec<(u32, Instant)>) {
    let pids = run.pids();
    let victim = pids[rng.random_range(0..pids.len())];
    let frozen: HashSet<u32> = thawing.iter().map(|(pid, _)| *pid).collect();
    let from = now_ms();
    let mut roll = rng.random_range(0..100);
    // Behind Sentinels and on a cluster, the second and third faults are the servers' own
    // (the master's kill, and the slot's migration, in either order), so every run has them.
    if run.server.proxied_port().is_none() && matches!(run.faults.len(), 1 | 2) {
        let kill_first = run.seed.is_multiple_of(2);
        roll = if (run.faults.len() == 1) == kill_first {
            65
        } else {
            75
        };
    }
    let (what, pid, ms): (&'static str, Option<u32>, u64) = match roll {
        0..25 => {
            signal(victim, "-KILL");
            ("worker SIGKILL", Some(victim), 0)
        }
        25..45 if !frozen.contains(&victim) => {
            let ms = rng.random_range(100..LEASE_MS / 2);
            signal(victim, "-STOP");
            thawing.push((victim, Instant::now() + Duration::from_millis(ms)));
            (UNDER_THE_LEASE, Some(victim), ms)
        }
        45..65 if !frozen.contains(&victim) => {
            let ms = rng.random_range(LEASE_MS * 3 / 2..LEASE_MS * 3);
            signal(victim, "-STOP");
            thawing.push((victim, Instant::now() + Duration::from_millis(ms)));
            ("worker SIGSTOP past the lease", Some(victim), ms)
        }
        // Behind Sentinels and on a cluster, the servers' own faults (a master killed and its
        // replica promoted, a slot migrated, a master frozen, connections cut).
        65.. if run.server.proxied_port().is_none() => {
            let (what, ms) = match &mut run.server {
                Server::Sentinel(sentinel) => sentinel.inject(rng, roll).await,
                Server::Cluster(cluster) => cluster.inject(rng, roll, &run.prefix).await,
                _ => unreachable!("only these have no proxy"),
            };
            (what, None, ms)
        }
        65..75 => {
            let ms = rng.random_range(200..1000);
            match &mut run.server {
                Server::Redis(redis) => {
                    redis.kill();
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    redis.launch();
                    ("Redis SIGKILL and restart", None, ms)
                }
                Server::Sentinel(_) | Server::Cluster(_) => unreachable!("handled above"),
                Server::Postgres(postgres) => {
                    // As a crash: no checkpoint, recovery from the WAL at the start.
                    postgres.ctl(&["stop", "-m", "immediate"]);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    postgres.ctl(&["start"]);
                    let ms = u64::try_from(now_ms() - from).unwrap_or(ms);
                    ("PostgreSQL stopped (immediate) and started", None, ms)
                }
            }
        }
        75..85 => {
            let ms = rng.random_range(200..LEASE_MS * 2);
            match &run.server {
                Server::Redis(redis) => {
                    signal(redis.pid(), "-STOP");
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    signal(redis.pid(), "-CONT");
                    ("Redis SIGSTOP", None, ms)
                }
                Server::Sentinel(_) | Server::Cluster(_) => unreachable!("handled above"),
                Server::Postgres(postgres) => {
                    postgres.signal_all("-STOP");
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    postgres.signal_all("-CONT");
                    ("PostgreSQL SIGSTOP (every process)", None, ms)
                }
            }
        }
        85..92 => match &run.server {
            Server::Redis(_) => {
                cut_every_connection(&run.url);
                ("CLIENT KILL of every connection", None, 0)
            }
            Server::Sentinel(_) | Server::Cluster(_) => unreachable!("handled above"),
            Server::Postgres(_) => {
                postgres::terminate_every_connection(&run.url).await;
                ("pg_terminate_backend of every connection", None, 0)
            }
        },
        92.. => {
            // The workers' network answers nothing for a while (Redis and RabbitMQ alike),
            // then heals, or is cut.
            let ms = rng.random_range(300..LEASE_MS * 3);
            let proxies = || run.server_proxy.iter().chain(run.amqp_proxy.as_ref());
            proxies().for_each(|proxy| proxy.blackhole(true));
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let cut = rng.random_bool(0.5);
            for proxy in proxies() {
                if cut {
                    proxy.cut();
                }
                proxy.blackhole(false);
            }
            if cut {
                ("network blackhole, then cut", None, ms)
            } else {
                ("network blackhole, then healed", None, ms)
            }
        }
        _ => return,
    };
    run.faults.push(Fault {
        what,
        pid,
        from,
        to: from + u128::from(ms),
    });
}

/// A worker frozen for less than the lease: it keeps its tasks, so it explains no overlap.
const UNDER_THE_LEASE: &str = "worker SIGSTOP under the lease";

/// `CLIENT KILL` of every connection (pub/sub too) but the one that asks; best effort.
fn cut_every_connection(url: &str) {
    if let Ok(client) = redis::Client::open(url)
        && let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1))
    {
        for kind in ["normal", "pubsub"] {
            let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg(kind)
                .arg("SKIPME")
                .arg("yes")
                .query(&mut con);
        }
    }
}

/// The record of a task's last attempt (following `retry_child_uuid`), read through faults.
async fn final_attempt(app: &QueueTasks, uuid: Uuid) -> Option<TaskRecord> {
    let mut uuid = uuid;
    for _ in 0..20 {
        let record = app.get(uuid).await.ok()??;
        match (record.status, record.retry_child_uuid) {
            (TaskStatus::Retry, Some(child)) => uuid = child,
            _ => return Some(record),
        }
    }
    None
}

/// Runs per task, from the workers' execution log.
fn executions(log: &Path) -> HashMap<Uuid, usize> {
    let mut counts = HashMap::new();
    for (uuid, _) in executions_with_pids(log) {
        *counts.entry(uuid).or_insert(0) += 1;
    }
    counts
}

/// The tasks that ran with `label`, from the workers' execution log.
fn executions_labelled(log: &Path, label: &str) -> HashSet<Uuid> {
    execution_log(log)
        .into_iter()
        .filter(|(_, logged, _)| logged == label)
        .map(|(uuid, _, _)| uuid)
        .collect()
}

/// `(task, worker pid)` per run, from the workers' execution log.
fn executions_with_pids(log: &Path) -> Vec<(Uuid, u32)> {
    execution_log(log)
        .into_iter()
        .map(|(uuid, _, pid)| (uuid, pid))
        .collect()
}

/// The workers' execution log, a run a line: `uuid label pid` (a line cut short by a kill is
/// left out).
fn execution_log(log: &Path) -> Vec<(Uuid, String, u32)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let uuid = Uuid::parse_str(fields.next()?).ok()?;
            let label = fields.next()?.to_owned();
            let pid = fields.next()?.parse().ok()?;
            Some((uuid, label, pid))
        })
        .collect()
}

/// The tasks whose lease a worker lost while it ran them, as the workers logged it.
fn stalled_tasks(worker_log: &Path) -> HashSet<Uuid> {
    std::fs::read_to_string(worker_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let rest = line.split("the lease of task ").nth(1)?;
            let uuid = rest.split(' ').next()?;
            rest.contains("was lost")
                .then(|| Uuid::parse_str(uuid).ok())?
        })
        .collect()
}

/// Overlapping runs of one attempt (from the span log: `uuid pid start_ms end_ms`, written by
/// runs that ended): how many a fault explains (one of the two holders was killed or frozen
/// while the other ran, or Redis was down or frozen past the lease), and those none explains.
fn overlaps(
    span_log: &Path,
    faults: &[Fault],
    stalled: &HashSet<Uuid>,
    offsets: &HashMap<u32, i128>,
) -> (usize, Vec<String>) {
    let mut spans: HashMap<Uuid, Vec<(u32, u128, u128)>> = HashMap::new();
    for line in std::fs::read_to_string(span_log)
        .unwrap_or_default()
        .lines()
    {
        let fields: Vec<&str> = line.split(' ').collect();
        if let [uuid, pid, start, end] = fields[..]
            && let (Ok(uuid), Ok(pid), Ok(start), Ok(end)) = (
                Uuid::parse_str(uuid),
                pid.parse::<u32>(),
                start.parse::<i128>(),
                end.parse::<i128>(),
            )
        {
            // A worker whose clock is offset logs its times by that clock: back to the
            // machine's.
            let offset = offsets.get(&pid).copied().unwrap_or(0);
            let real = |ms: i128| u128::try_from(ms - offset).unwrap_or(0);
            spans
                .entry(uuid)
                .or_default()
                .push((pid, real(start), real(end)));
        }
    }
    let explains = |pid: u32, from: u128, to: u128| {
        faults.iter().any(|fault| {
            let holder = fault.pid.is_none_or(|faulted| faulted == pid);
            let long_enough = fault.what != UNDER_THE_LEASE;
            holder && long_enough && fault.from <= to && fault.to + u128::from(LEASE_MS) >= from
        })
    };
    let (mut explained, mut unexplained) = (0, Vec::new());
    for (uuid, runs) in spans {
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                if a.1 < b.2 && b.1 < a.2 {
                    if explains(a.0, a.1, a.2) || explains(b.0, b.1, b.2) || stalled.contains(&uuid)
                    {
                        explained += 1;
                    } else {
                        unexplained.push(format!("{uuid}: {a:?} and {b:?}"));
                    }
                }
            }
        }
    }
    (explained, unexplained)
}

/// The servers of the Sentinel and Cluster engines, and their faults.
///
/// Counting outcomes: every node keeps an append-only file that is never rewritten, so a
/// node's file holds each write it made as a master or received from its master since its
/// first sync, which happens before any task is added. A node that syncs again later (a
/// killed master, back as its successor's replica) loads its master's data whole: its file
/// no longer tells the history. So each run kills at most one master, and the outcomes are
/// counted in the files of the masters at the end (the promoted replica's holds its old
/// master's writes it received, then its own): an attempt's final writes are in them once
/// each. An acknowledged write the killed master had not passed on is lost with it, as
/// RELIABILITY.md says, and is not counted: the task runs again, and its one recorded
/// outcome is the second run's. A failover the harness did not cause (a server starved past
/// its down-after time on a busy machine) would break the count: the count is then skipped,
/// and says why.
mod replicated {
    use std::collections::{HashMap, HashSet};
    use std::time::{Duration, Instant};

    use qtasks::Uuid;
    use qtasks_test_support::{
        OwnCluster, OwnRedis, OwnSentinels, recorded_outcomes, recorded_outcomes_in,
    };
    use rand::Rng;
    use rand::rngs::StdRng;

    use super::{cut_every_connection, signal};

    /// The cluster's clients wait this long for an answer (the workers' and the harness's): a
    /// dead master holds a command until then, before the client asks for the new layout.
    pub(super) const CLUSTER_RESPONSE_TIMEOUT_MS: &str = "2000";

    /// How long a master may be frozen: under the Sentinels' down-after time and the
    /// cluster's node timeout (1 s each), so the freeze causes no failover.
    const FREEZE_MS: std::ops::Range<u64> = 200..500;

    /// How long a failover may take before the run fails.
    const FAILOVER: Duration = Duration::from_secs(30);

    /// A master and a replica, each with its append-only file, behind three Sentinels.
    pub(super) struct Sentinel {
        /// The first master, then its replica.
        nodes: Vec<OwnRedis>,
        sentinels: OwnSentinels,
        /// The master's port the harness expects at the end (the replica's once it killed
        /// the first master).
        expected_master: u16,
        killed: bool,
    }

    impl Sentinel {
        pub(super) async fn start() -> Sentinel {
            let master = OwnRedis::start("torture-sentinel-master", true);
            let replica = OwnRedis::start_replica("torture-sentinel-replica", master.port);
            qtasks_test_support::until_replica_synced(replica.port).await;
            // Down after 3 s, not 1 s: on two busy cores a promoted master starved for a second
            // was called down again, and the Sentinels failed back over to the killed master
            // (relaunched with its stale data), losing what the new one had taken (CI, seed
            // 20261204; the Sentinels' logs showed the second failover).
            let sentinels = OwnSentinels::start_with_down_after(&master, "torture", 3000);
            sentinels.until_ready(1).await;
            Sentinel {
                expected_master: master.port,
                nodes: vec![master, replica],
                sentinels,
                killed: false,
            }
        }

        pub(super) fn url(&self) -> String {
            self.sentinels.url()
        }

        /// The master's port, once every Sentinel names it with no failover in progress
        /// (a Sentinel names the old master until the failover ends, or until it hears of it).
        async fn master_port(&self) -> u16 {
            let started = Instant::now();
            loop {
                if let Some(port) = self.agreed().await {
                    return port;
                }
                assert!(
                    started.elapsed() < FAILOVER,
                    "the Sentinels never agreed on a master"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        /// The master every Sentinel names, when they agree and none is failing over.
        async fn agreed(&self) -> Option<u16> {
            let mut agreed = None;
            for sentinel in &self.sentinels.ports {
                let client = redis::Client::open(format!("redis://127.0.0.1:{sentinel}/")).ok()?;
                let mut con = client.get_multiplexed_async_connection().await.ok()?;
                let master: HashMap<String, String> = redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(&self.sentinels.name)
                    .query_async(&mut con)
                    .await
                    .ok()?;
                if master.get("flags")?.contains("failover_in_progress") {
                    return None;
                }
                let port: u16 = master.get("port")?.parse().ok()?;
                if agreed.is_some_and(|agreed| agreed != port) {
                    return None;
                }
                agreed = Some(port);
            }
            agreed
        }

        pub(super) async fn master_url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.master_port().await)
        }

        fn node(&self, port: u16) -> &OwnRedis {
            self.nodes
                .iter()
                .find(|node| node.port == port)
                .expect("a node of the run's")
        }

        pub(super) async fn recorded_outcomes(&self, prefix: &str) -> Option<HashMap<Uuid, usize>> {
            let master = self.master_port().await;
            if master != self.expected_master {
                eprintln!(
                    "torture: the Sentinels moved the master to {master} on their own (a starved server?): the recorded outcomes are not counted"
                );
                return None;
            }
            Some(recorded_outcomes(self.node(master), prefix))
        }

        pub(super) async fn inject(&mut self, rng: &mut StdRng, roll: u32) -> (&'static str, u64) {
            let started = Instant::now();
            let master = self.master_port().await;
            let index = self
                .nodes
                .iter()
                .position(|node| node.port == master)
                .expect("a node of the run's");
            match roll {
                65..80 if !self.killed => {
                    self.killed = true;
                    caught_up_then_paused(master).await;
                    self.nodes[index].kill();
                    while self.master_port().await == master {
                        assert!(
                            started.elapsed() < FAILOVER,
                            "the Sentinels never failed over"
                        );
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    self.expected_master = self.master_port().await;
                    // Back, as the new master's replica at once (the Sentinels would make it one
                    // only seconds later: meanwhile a master with stale data, which a failover
                    // of their own could promote).
                    let new_master = self.expected_master;
                    self.nodes[index].launch_as_replica_of(new_master);
                    (
                        "master SIGKILLed, its replica promoted",
                        elapsed_ms(started),
                    )
                }
                90.. => {
                    cut_every_connection(&format!("redis://127.0.0.1:{master}/"));
                    ("CLIENT KILL of every connection to the master", 0)
                }
                _ if std::env::var_os("QTASKS_TORTURE_SENTINEL_FREEZE").is_none() => {
                    cut_every_connection(&format!("redis://127.0.0.1:{master}/"));
                    ("CLIENT KILL of every connection to the master", 0)
                }
                _ => {
                    let ms = rng.random_range(FREEZE_MS);
                    freeze(self.nodes[index].pid(), ms).await;
                    ("master SIGSTOP under the down-after time", ms)
                }
            }
        }
    }

    /// Three masters with a replica each, every node with its append-only file.
    pub(super) struct Cluster {
        cluster: OwnCluster,
        /// How many partitions the app is spread over (1: one hash tag, its name).
        pub(super) partitions: u16,
        /// The masters the harness expects at the end.
        expected_masters: HashSet<u16>,
        killed: bool,
        migrated: bool,
    }

    impl Cluster {
        pub(super) async fn start(partitions: u16) -> Cluster {
            let cluster = OwnCluster::start_with_aof(3, 1);
            cluster.until_ok(3).await;
            Cluster {
                expected_masters: cluster.masters().await.into_iter().collect(),
                cluster,
                partitions,
                killed: false,
                migrated: false,
            }
        }

        pub(super) fn url(&self) -> String {
            self.cluster.url()
        }

        /// The port of the master that serves app `app`'s slot.
        /// The hash tag of app `app`'s partition `index` (`{app}` when it has one).
        pub(super) fn tag(&self, app: &str, index: usize) -> String {
            if self.partitions == 1 {
                return format!("{{{app}}}");
            }
            let names = qtasks::redis::partitions::partition_names(app, self.partitions);
            format!("{{{}}}", names[index])
        }

        /// Each partition's key prefix, with the URL of its master now.
        pub(super) async fn places(&self, app: &str) -> Vec<(String, String)> {
            let mut places = Vec::new();
            for index in 0..usize::from(self.partitions) {
                let tag = self.tag(app, index);
                let port = self.cluster.master_of(&tag).await;
                places.push((tag, format!("redis://127.0.0.1:{port}/")));
            }
            places
        }

        /// The port of the master that serves app `app`'s slot (its first partition's): the
        /// one the faults kill and migrate.
        async fn master_of(&self, app: &str) -> u16 {
            self.cluster.master_of(&self.tag(app, 0)).await
        }

        pub(super) async fn master_url(&self, app: &str) -> String {
            format!("redis://127.0.0.1:{}/", self.master_of(app).await)
        }

        pub(super) async fn recorded_outcomes(&self, prefix: &str) -> Option<HashMap<Uuid, usize>> {
            let masters: HashSet<u16> = self.cluster.masters().await.into_iter().collect();
            if masters != self.expected_masters {
                eprintln!(
                    "torture: the cluster's masters are {masters:?}, not {:?} (a failover of its own, a starved server?): the recorded outcomes are not counted",
                    self.expected_masters
                );
                return None;
            }
            let dirs: Vec<_> = masters
                .iter()
                .map(|port| self.cluster.aof_dir(self.cluster.node(*port)))
                .collect();
            let mut outcomes: HashMap<Uuid, usize> = HashMap::new();
            for index in 0..usize::from(self.partitions) {
                for (uuid, count) in recorded_outcomes_in(&dirs, &self.tag(prefix, index)) {
                    *outcomes.entry(uuid).or_default() += count;
                }
            }
            Some(outcomes)
        }

        pub(super) async fn inject(
            &mut self,
            rng: &mut StdRng,
            roll: u32,
            app: &str,
        ) -> (&'static str, u64) {
            let started = Instant::now();
            let master = self.master_of(app).await;
            let node = self.cluster.node(master);
            match roll {
                65..75 if !self.killed => {
                    self.killed = true;
                    caught_up_then_paused(master).await;
                    self.cluster.kill(node);
                    let promoted = loop {
                        let now = self.master_of(app).await;
                        if now != master {
                            break now;
                        }
                        assert!(started.elapsed() < FAILOVER, "the replica never took over");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    };
                    self.expected_masters.remove(&master);
                    self.expected_masters.insert(promoted);
                    // Back, as the promoted replica's replica.
                    self.cluster.launch(node);
                    (
                        "the app's master SIGKILLed, its replica promoted",
                        elapsed_ms(started),
                    )
                }
                75..85 if !self.migrated => {
                    self.migrated = true;
                    // (A node killed before is back and syncing: the slot moves once it is.)
                    self.cluster.until_ok(3).await;
                    let masters = self.cluster.masters().await;
                    let others: Vec<u16> =
                        masters.into_iter().filter(|port| *port != master).collect();
                    let to = others[rng.random_range(0..others.len())];
                    let slot = self.cluster.keyslot(&self.tag(app, 0)).await;
                    let moved = self.cluster.migrate_slot(slot, master, to).await;
                    eprintln!(
                        "torture: the app's slot {slot} moved from {master} to {to} ({moved} keys)"
                    );
                    (
                        "the app's slot migrated to another master",
                        elapsed_ms(started),
                    )
                }
                90.. => {
                    for port in &self.cluster.ports {
                        if self.cluster.is_up(self.cluster.node(*port)) {
                            cut_every_connection(&format!("redis://127.0.0.1:{port}/"));
                        }
                    }
                    ("CLIENT KILL of every connection to every node", 0)
                }
                _ => {
                    let ms = rng.random_range(FREEZE_MS);
                    let pid = self.cluster.pid(node).expect("the app's master runs");
                    freeze(pid, ms).await;
                    ("the app's master SIGSTOP under the node timeout", ms)
                }
            }
        }
    }

    /// Pauses the clients' writes on the master at `port` (`CLIENT PAUSE WRITE`, for 10 s)
    /// and waits until its replicas have every write it made, so that a kill now loses no
    /// acknowledged write. Without this a failover can lose the last writes the master
    /// acknowledged: an add, a cancel (as RELIABILITY.md says of a failover, and
    /// `wait_for_replicas` narrows for adds and finishes); this harness checks that qtasks
    /// follows the failover and loses nothing of what the new master has.
    async fn caught_up_then_paused(port: u16) {
        let mut con = super::raw_connection(&format!("redis://127.0.0.1:{port}/")).await;
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(10_000)
            .arg("WRITE")
            .query_async(&mut con)
            .await
            .unwrap();
        let started = Instant::now();
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut con)
                .await
                .unwrap();
            let written: Option<u64> = info.lines().find_map(|line| {
                line.strip_prefix("master_repl_offset:")?
                    .trim()
                    .parse()
                    .ok()
            });
            // `slave0:ip=127.0.0.1,port=6380,state=online,offset=1234,lag=0`
            let replicas: Vec<u64> = info
                .lines()
                .filter(|line| line.starts_with("slave"))
                .filter_map(|line| {
                    line.split(',')
                        .find_map(|part| part.strip_prefix("offset=")?.parse().ok())
                })
                .collect();
            assert!(written.is_some(), "no master_repl_offset in: {info}");
            if !replicas.is_empty() && replicas.iter().all(|offset| Some(*offset) >= written) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the replicas never caught up: {info}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn freeze(pid: u32, ms: u64) {
        signal(pid, "-STOP");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        signal(pid, "-CONT");
    }

    fn elapsed_ms(since: Instant) -> u64 {
        u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What the harness reads and writes on PostgreSQL itself (its server is the run's own, its
/// schema [`SCHEMA`]).
mod postgres {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use qtasks::Uuid;
    use qtasks::postgres::sqlx::{self, AssertSqlSafe, Connection, Executor, PgConnection, Row};
    use rand::Rng;
    use rand::rngs::StdRng;

    use super::{DRAIN, Kind};

    /// The run's schema.
    pub(super) const SCHEMA: &str = "torture";

    /// A connection to the run's server (`url` without its `?schema=`), tried again through
    /// the faults.
    async fn connect(url: &str) -> PgConnection {
        let base = url.split('?').next().unwrap_or(url);
        let deadline = Instant::now() + DRAIN;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(base)).await {
                Ok(Ok(conn)) => return conn,
                Ok(Err(error)) => assert!(
                    Instant::now() < deadline,
                    "connecting to the run's PostgreSQL kept failing: {error}"
                ),
                Err(_) => assert!(
                    Instant::now() < deadline,
                    "connecting to the run's PostgreSQL kept timing out"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `sql` (statements without parameters) through the faults.
    async fn execute(url: &str, sql: &str) {
        let deadline = Instant::now() + DRAIN;
        loop {
            let mut conn = connect(url).await;
            match conn.execute(AssertSqlSafe(sql.to_owned())).await {
                Ok(_) => return,
                Err(error) => assert!(Instant::now() < deadline, "{sql} kept failing: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// From now on, every write of a final status to a record (a row added final, a status
    /// that becomes final, a final record's document written again) is noted in
    /// `{SCHEMA}.outcomes` by a trigger: the engine's writes, seen from the database.
    pub(super) async fn record_outcomes(url: &str) {
        let finals = "('success', 'error', 'cancel', 'retry')";
        execute(
            url,
            &format!(
                "CREATE TABLE {SCHEMA}.outcomes (app text, uuid uuid, status text);
                 CREATE FUNCTION {SCHEMA}.note_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     INSERT INTO {SCHEMA}.outcomes VALUES (NEW.app, NEW.uuid, NEW.status);
                     RETURN NULL;
                 END $$;
                 CREATE TRIGGER outcome_added AFTER INSERT ON {SCHEMA}.records FOR EACH ROW
                     WHEN (NEW.status IN {finals}) EXECUTE FUNCTION {SCHEMA}.note_outcome();
                 CREATE TRIGGER outcome_written AFTER UPDATE ON {SCHEMA}.records FOR EACH ROW
                     WHEN (NEW.status IN {finals}
                           AND (OLD.status NOT IN {finals} OR OLD.doc IS DISTINCT FROM NEW.doc))
                     EXECUTE FUNCTION {SCHEMA}.note_outcome();"
            ),
        )
        .await;
    }

    /// The outcomes [`record_outcomes`] noted, per task of `app`.
    pub(super) async fn recorded_outcomes(url: &str, app: &str) -> HashMap<Uuid, usize> {
        let mut conn = connect(url).await;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT uuid, count(*) FROM {SCHEMA}.outcomes WHERE app = $1 GROUP BY uuid"
        )))
        .bind(app)
        .fetch_all(&mut conn)
        .await
        .expect("reading the outcomes");
        rows.iter()
            .map(|row| {
                let n: i64 = row.get(1);
                (row.get(0), usize::try_from(n).unwrap_or(0))
            })
            .collect()
    }

    /// The rows of `app` that must be gone once every task ended: queue rows, stream items.
    pub(super) async fn live_rows(url: &str, app: &str) -> Vec<(&'static str, i64)> {
        let mut conn = connect(url).await;
        let mut left = Vec::new();
        for table in ["queue", "items"] {
            let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT count(*) FROM {SCHEMA}.{table} WHERE app = $1"
            )))
            .bind(app)
            .fetch_one(&mut conn)
            .await
            .expect("counting rows");
            left.push((table, n));
        }
        left
    }

    /// A task's rows in the records and queue tables, as text (for a failure's message).
    pub(super) async fn rows_of(url: &str, uuid: Uuid) -> String {
        let mut conn = connect(url).await;
        let records: Vec<(String, Option<String>)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT status, left(doc, 300) FROM {SCHEMA}.records WHERE uuid = $1"
        )))
        .bind(uuid)
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
        let queue: Vec<(String, String, Option<String>)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT state, queue, due_at::text FROM {SCHEMA}.queue WHERE uuid = $1"
        )))
        .bind(uuid)
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
        format!("records {records:?} queue {queue:?}")
    }

    /// `pg_terminate_backend` of every client connection but the one that asks.
    pub(super) async fn terminate_every_connection(url: &str) {
        execute(
            url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .await;
    }

    /// Poison as another writer of the tables could leave it: a queue row with no record, or
    /// a record whose document cannot be read (no JSON, or a field of the wrong type).
    pub(super) async fn add_poison(url: &str, app: &str, uuid: Uuid, kind: Kind, rng: &mut StdRng) {
        let app = app.replace('\'', "''");
        // (Idempotent: a try again after a reply lost past the commit adds nothing.)
        let row = format!(
            "INSERT INTO {SCHEMA}.queue (app, uuid, queue, priority, state, created_at)
             VALUES ('{app}', '{uuid}', 'default', 0, 'w', extract(epoch FROM now()))
             ON CONFLICT DO NOTHING;"
        );
        let sql = if kind == Kind::PoisonEntry {
            row
        } else {
            let doc = if rng.random_bool(0.5) {
                "not json".to_owned()
            } else {
                format!(
                    r#"{{"uuid": "{uuid}", "task_name": "log_run", "created_at": "yesterday"}}"#
                )
            };
            format!(
                "BEGIN;
                 INSERT INTO {SCHEMA}.records (app, uuid, status, task_name, created_ms, updated_at, doc)
                 VALUES ('{app}', '{uuid}', 'new', 'log_run', 0, 0, '{doc}')
                 ON CONFLICT DO NOTHING;
                 {row}
                 COMMIT;"
            )
        };
        execute(url, &sql).await;
    }
}
