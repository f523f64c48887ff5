//! The benchmark program: the workloads of the peer harness (`../shared/bench/`), in memory and
//! on Redis, printing one `BENCH_JSON {...}` line as the harness expects.
//!
//! ```text
//! qtasks-bench enqueue --url URL --n N [--bulk] # W1: enqueue N no-op tasks (no worker);
//!                                               # --bulk: one add_many instead of single adds
//! qtasks-bench worker  --url URL                # a worker process, until SIGTERM
//! qtasks-bench w2      --url URL --n N --warmup W   # sequential add-and-wait round trips
//! qtasks-bench waiters --url URL --n N          # N tasks added and waited for at once
//! qtasks-bench enqueue ... --nap-ms M           # N tasks that sleep M ms (the scaling run)
//! qtasks-bench worker  --url URL [--concurrency S] [--threads T]
//! qtasks-bench inmem   --n N [--lat-n 500]      # in memory: e2e, W1, W2, peak RSS, and the
//!                                               # bare tokio channel ceiling measured alongside
//! ```
//!
//! `--partitions K` (Redis) spreads the app over K partitions (`RedisOptions::partitions`).
//!
//! `--wait-replicas N` (Redis) waits for N replicas after each add and finish
//! (`RedisOptions::wait_for_replicas`, at most 1 s each).
//!
//! `--amqp URL` puts the queue on RabbitMQ, `--kafka HOST:PORT` on Kafka (records stay on the
//! Redis of `--url` either way); `--pg URL`
//! puts the whole app on PostgreSQL instead (`?schema=` in the URL names its tables' schema).
//!
//! ```text
//! qtasks-bench drain --url URL [--pg URL] --n N --server-comm NAME [--keep]
//!     # W1 in one program: N tasks added (one add_many), then a worker started in this process
//!     # drains them; prints the enqueue and drain rates, and the CPU the server's processes
//!     # (those whose /proc comm is NAME: redis-server, postgres) spent per task meanwhile
//! qtasks-bench drain ... --live
//!     # W1-live: the worker started (and warmed with a task) first, then N single adds
//! qtasks-bench addin --pg URL --n N [--rounds R]
//!     # add against add_in (BEGIN, add, COMMIT), and an INSERT alone against an INSERT with
//!     # the task in its transaction: N one at a time each, alternated R rounds
//! ```
//!
//! The no-op task takes a small integer and returns it. Everything a real deployment keeps on
//! stays on: leases (at-least-once), priorities, the plugin triggers and events.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use qtasks::redis::RedisOptions;
use qtasks::{QueueConfig, QueueTasks, TaskStatus};
use serde_json::{Value, json};

/// The no-op task of every workload; it counts its runs in [`RAN`].
#[qtasks::task]
async fn noop(i: u64) -> u64 {
    RAN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    i
}

/// Runs of [`noop`] in this process: a drain looks at the backend's stats only once its
/// worker ran them all (as the apalis-postgres peer does), so that its polling does not load
/// the server while the worker drains.
static RAN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Waits until this process ran `n` no-op tasks more than `before`, then until the backend
/// holds none waiting, delayed or running (their outcomes written).
async fn drained(app: &QueueTasks, before: u64, n: u64) {
    while RAN.load(std::sync::atomic::Ordering::Relaxed) < before + n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    loop {
        let stats = app.stats().await.expect("stats read");
        let queue = stats.queue.expect("the engine keeps stats");
        if queue.waiting_total() + queue.delayed + queue.running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A task that takes `ms` milliseconds (a sleep, not CPU): the scaling run's work.
#[qtasks::task]
async fn nap(i: u64, ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    i
}

const APP: &str = "QueueTasks";

fn arg<T: std::str::FromStr>(key: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == key)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn emit(value: &Value) {
    println!("BENCH_JSON {value}");
}

/// A Markdown table of `rows` on stderr, for a person running the binary by hand; stdout keeps
/// the one JSON line the harness parses.
fn table(rows: &[(&str, String)]) {
    eprintln!("| measure | value |\n|---|---|");
    for (name, value) in rows {
        eprintln!("| {name} | {value} |");
    }
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The app on Redis at `url`; with `--amqp URL`, the queue on that RabbitMQ instead and the
/// records on the Redis.
async fn redis_app(url: &str, concurrency: usize) -> QueueTasks {
    let config = QueueConfig {
        // `--app NAME`: several apps on one server or cluster (`bench/cluster.py`).
        name: arg("--app", APP.to_owned()),
        max_tasks_process: concurrency,
        ..Default::default()
    };
    let amqp: String = arg("--amqp", String::new());
    let kafka: String = arg("--kafka", String::new());
    let pg: String = arg("--pg", String::new());
    if !kafka.is_empty() {
        return other_engines::kafka_app(url, &kafka, config).await;
    }
    if !pg.is_empty() {
        return other_engines::postgres_app(&pg, config).await;
    }
    if !amqp.is_empty() {
        return other_engines::rabbitmq_app(url, &amqp, config).await;
    }
    // QTASKS_BENCH_NO_RECORDS_INDEX=1 measures the hot path without the records' index;
    // `--wait-replicas N` waits for N replicas after each add and finish (at most 1 s).
    let replicas: u32 = arg("--wait-replicas", 0);
    let options = RedisOptions {
        records_index: std::env::var_os("QTASKS_BENCH_NO_RECORDS_INDEX").is_none(),
        wait_for_replicas: (replicas > 0).then_some(qtasks::redis::WaitForReplicas {
            replicas,
            timeout: Duration::from_secs(1),
        }),
        // `--partitions K`: the app spread over K partitions (`bench/cluster.py`).
        partitions: arg("--partitions", 1),
        ..RedisOptions::default()
    };
    qtasks::redis::connect_with(url, config, options)
        .await
        .expect("Redis is reachable")
}

/// The engines beside Redis, each behind the bench's cargo feature of its name (all on by
/// default): `bench/compare.sh` builds without them, so that the worker it measures is the
/// binary a user of the Redis engine builds (its peak RSS counts the code it maps).
mod other_engines {
    use qtasks::{QueueConfig, QueueTasks};

    /// The queue on Kafka at `kafka`, the records on the Redis at `url`.
    #[cfg(feature = "kafka")]
    pub(super) async fn kafka_app(url: &str, kafka: &str, config: QueueConfig) -> QueueTasks {
        let storage = qtasks::redis::Redis::new(url);
        let options = qtasks::kafka::KafkaOptions::default();
        qtasks::kafka::connect_with(kafka, storage, config, options)
            .await
            .expect("Kafka and Redis are reachable")
    }

    /// The whole app on PostgreSQL at `pg`.
    #[cfg(feature = "postgres")]
    pub(super) async fn postgres_app(pg: &str, config: QueueConfig) -> QueueTasks {
        qtasks::postgres::connect_with(pg, config, qtasks::postgres::PostgresOptions::default())
            .await
            .expect("PostgreSQL is reachable")
    }

    /// The queue on RabbitMQ at `amqp`, the records on the Redis at `url`.
    #[cfg(feature = "rabbitmq")]
    pub(super) async fn rabbitmq_app(url: &str, amqp: &str, config: QueueConfig) -> QueueTasks {
        let storage = qtasks::redis::Redis::new(url);
        let options = qtasks::rabbitmq::RabbitMqOptions::default();
        qtasks::rabbitmq::connect_with(amqp, storage, config, options)
            .await
            .expect("RabbitMQ and Redis are reachable")
    }

    #[cfg(not(feature = "kafka"))]
    pub(super) async fn kafka_app(_: &str, _: &str, _: QueueConfig) -> QueueTasks {
        missing("kafka")
    }

    #[cfg(not(feature = "postgres"))]
    pub(super) async fn postgres_app(_: &str, _: QueueConfig) -> QueueTasks {
        missing("postgres")
    }

    #[cfg(not(feature = "rabbitmq"))]
    pub(super) async fn rabbitmq_app(_: &str, _: &str, _: QueueConfig) -> QueueTasks {
        missing("rabbitmq")
    }

    #[cfg(not(all(feature = "kafka", feature = "postgres", feature = "rabbitmq")))]
    fn missing(feature: &str) -> ! {
        panic!(
            "this qtasks-bench was built without its `{feature}` feature: build it with the default features (`cargo build --release -p qtasks-bench`)"
        )
    }
}

/// Adds `n` tasks with `in_flight` adds on the wire at once.
async fn add_many(app: &QueueTasks, n: u64, in_flight: usize) -> Vec<qtasks::TaskHandle<u64>> {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let app = app.clone();
            async move { noop::add_task(&app, i).await.expect("the task is added") }
        })
        .buffered(in_flight)
        .collect()
        .await
}

/// W1's enqueue: `n` single adds, 64 on the wire at once; with `--bulk`, one `add_many` of all
/// `n` (the adds go out in batches).
async fn enqueue(url: &str, n: u64) {
    let app = redis_app(url, 1).await;
    let bulk = std::env::args().any(|arg| arg == "--bulk");
    let nap_ms: u64 = arg("--nap-ms", 0);
    let t_start = now_s();
    if nap_ms > 0 {
        nap::add_many(&app, (0..n).map(|i| (i, nap_ms)))
            .await
            .expect("the tasks are added");
    } else if bulk {
        noop::add_many(&app, (0..n).map(|i| (i,)))
            .await
            .expect("the tasks are added");
    } else {
        add_many(&app, n, 64).await;
    }
    emit(&json!({"t_start": t_start, "t_end": now_s(), "n": n, "bulk": bulk}));
}

/// `n` tasks added at once and waited for all at once, while a worker process drains them:
/// what many concurrent waiters cost (the caller counts Redis's commands around it).
async fn waiters(url: &str, n: u64) {
    let app = redis_app(url, 1).await;
    let started = Instant::now();
    let handles = noop::add_many(&app, (0..n).map(|i| (i,)))
        .await
        .expect("the tasks are added");
    let waits = handles
        .iter()
        .map(|handle| handle.wait(Duration::from_secs(120)));
    let done = futures_util::future::join_all(waits).await;
    let ok = done.iter().filter(|done| done.is_ok()).count();
    emit(&json!({"n": n, "ok": ok, "seconds": started.elapsed().as_secs_f64()}));
}

/// How long `app.stats()` takes: `n` reads, p50 and p99 in milliseconds, and what it read.
async fn stats(url: &str, n: usize) {
    let app = redis_app(url, 1).await;
    let mut times = Vec::with_capacity(n);
    let mut last = None;
    for _ in 0..n {
        let started = Instant::now();
        let read = app.stats().await.expect("stats read");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        last = read.queue;
    }
    times.sort_by(f64::total_cmp);
    let last = last.expect("Redis keeps stats");
    emit(&json!({
        "n": n,
        "p50_ms": percentile(&times, 50.0),
        "p99_ms": percentile(&times, 99.0),
        "waiting": last.waiting_total(),
    }));
}

async fn worker(url: &str, concurrency: usize) {
    let app = redis_app(url, concurrency).await;
    app.run_forever().await.expect("the worker runs");
}

async fn round_trips(app: &QueueTasks, n: usize, warmup: usize) -> (Vec<f64>, usize) {
    for i in 0..warmup {
        let _ = noop::add_task(app, i as u64)
            .await
            .expect("added")
            .wait(Duration::from_secs(30))
            .await;
    }
    let mut latencies = Vec::with_capacity(n);
    let mut timeouts = 0;
    for i in 0..n {
        let started = Instant::now();
        match noop::add_task(app, i as u64)
            .await
            .expect("added")
            .wait(Duration::from_secs(30))
            .await
        {
            Ok(done) => assert_eq!(done.returning, Some(json!(i))),
            Err(_) => timeouts += 1,
        }
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    (latencies, timeouts)
}

async fn w2(url: &str, n: usize, warmup: usize) {
    let app = redis_app(url, 1).await;
    let (latencies, timeouts) = round_trips(&app, n, warmup).await;
    emit(&json!({
        "n": n, "timeouts": timeouts,
        "p50_ms": percentile(&latencies, 50.0), "p99_ms": percentile(&latencies, 99.0),
        "max_ms": percentile(&latencies, 100.0), "lat_ms": latencies,
    }));
    table(&[
        ("W2 round trips", n.to_string()),
        ("W2 p50", format!("{:.3} ms", percentile(&latencies, 50.0))),
        ("W2 p99", format!("{:.3} ms", percentile(&latencies, 99.0))),
        ("timeouts", timeouts.to_string()),
    ]);
}

/// Waits for every handle, checking each result.
async fn wait_all(handles: Vec<qtasks::TaskHandle<u64>>) {
    for (i, handle) in handles.into_iter().enumerate() {
        let done = handle
            .wait(Duration::from_secs(120))
            .await
            .expect("the task ends");
        assert_eq!(
            (done.status, done.returning),
            (TaskStatus::Success, Some(json!(i)))
        );
    }
}

fn memory_app(concurrency: usize) -> QueueTasks {
    QueueTasks::with_config(QueueConfig {
        max_tasks_process: concurrency,
        ..Default::default()
    })
}

async fn inmem(n: u64, lat_n: usize, concurrency: usize) {
    // e2e: the worker runs while the tasks are added.
    let app = memory_app(concurrency);
    app.start().await.unwrap();
    let t0 = Instant::now();
    let handles = add_many(&app, n, 1).await;
    let producer_s = t0.elapsed().as_secs_f64();
    wait_all(handles).await;
    let e2e_s = t0.elapsed().as_secs_f64();
    app.stop().await.unwrap();
    drop(app);

    // W1: add all with no worker, then start one and drain.
    let app = memory_app(concurrency);
    let t0 = Instant::now();
    let handles = add_many(&app, n, 1).await;
    let enqueue_s = t0.elapsed().as_secs_f64();
    let t_drain = Instant::now();
    app.start().await.unwrap();
    wait_all(handles).await;
    let drain_s = t_drain.elapsed().as_secs_f64();
    let total_s = t0.elapsed().as_secs_f64();

    // W2: round trips on the running worker.
    let (latencies, _) = round_trips(&app, lat_n, 50).await;
    app.stop().await.unwrap();

    // The ceiling, in the same process: a bare tokio channel with oneshot replies.
    let ceiling = channel_ceiling(n).await;
    emit(&json!({
        "system": "qtasks-inmem",
        "config": {"n": n, "concurrency": concurrency},
        "e2e": {"n": n, "total_s": e2e_s, "rate": n as f64 / e2e_s, "producer_s": producer_s},
        "w1": {"n": n, "enqueue_s": enqueue_s, "enqueue_rate": n as f64 / enqueue_s,
               "drain_s": drain_s, "drain_rate": n as f64 / drain_s, "total_rate": n as f64 / total_s},
        "w2": {"n": lat_n, "p50_ms": percentile(&latencies, 50.0), "p99_ms": percentile(&latencies, 99.0),
               "max_ms": percentile(&latencies, 100.0)},
        "ceiling": ceiling,
        "drain_vs_ceiling": (n as f64 / drain_s) / ceiling["drain_rate"].as_f64().unwrap_or(f64::NAN),
        "vmhwm_kb": peak_rss_kb(),
    }));
    let ceiling_drain = ceiling["drain_rate"].as_f64().unwrap_or(f64::NAN);
    table(&[
        ("W1 enqueue", format!("{:.0} tasks/s", n as f64 / enqueue_s)),
        ("W1 drain", format!("{:.0} tasks/s", n as f64 / drain_s)),
        ("end to end", format!("{:.0} tasks/s", n as f64 / e2e_s)),
        ("W2 p50", format!("{:.3} ms", percentile(&latencies, 50.0))),
        (
            "bare channel drain (same process)",
            format!("{ceiling_drain:.0} tasks/s"),
        ),
        (
            "W1 drain / channel",
            format!("{:.1} %", 100.0 * n as f64 / drain_s / ceiling_drain),
        ),
        ("peak RSS", format!("{} kB", peak_rss_kb())),
    ]);
}

/// W1 through a bare tokio channel: N boxed no-op jobs with oneshot replies, drained by 4
/// workers (the harness's `inmem` peer, measured here so the ratio is from one run).
async fn channel_ceiling(n: u64) -> Value {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = u64> + Send>> + Send>;
    let (tx, rx) =
        tokio::sync::mpsc::unbounded_channel::<(Job, tokio::sync::oneshot::Sender<u64>)>();
    let mut replies = Vec::with_capacity(n as usize);
    let t0 = Instant::now();
    for i in 0..n {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || Box::pin(async move { i }));
        tx.send((job, reply)).expect("open");
        replies.push(answer);
    }
    let enqueue_s = t0.elapsed().as_secs_f64();
    drop(tx);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let t_drain = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let rx = Arc::clone(&rx);
            tokio::spawn(async move {
                loop {
                    let next = { rx.lock().await.recv().await };
                    let Some((job, reply)) = next else { break };
                    let _ = reply.send(job().await);
                }
            })
        })
        .collect();
    let mut sum = 0;
    for answer in replies {
        sum += answer.await.expect("answered");
    }
    let drain_s = t_drain.elapsed().as_secs_f64();
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(sum, n * (n - 1) / 2);
    json!({"enqueue_rate": n as f64 / enqueue_s, "drain_rate": n as f64 / drain_s})
}

/// The CPU time (ms) the processes whose `/proc/*/comm` is `comm` have used so far.
fn server_cpu_ms(comm: &str) -> f64 {
    let ticks_per_ms = 100.0 / 1000.0; // USER_HZ is 100 on Linux
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        if name.trim() != comm {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for at in [11, 12] {
            ticks += fields
                .get(at)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ticks as f64 / ticks_per_ms
}

/// W1 in one program (see the module): enqueue `n`, then drain them with a worker of this
/// process, timing both and the server's CPU.
async fn drain(url: &str, n: u64) {
    let comm: String = arg("--server-comm", "redis-server".to_owned());
    let app = redis_app(url, arg("--concurrency", 64)).await;
    // `--keep`: the records already there stay (a take beside a million finished records).
    if !std::env::args().any(|arg| arg == "--keep") {
        app.flush_all().await.expect("flushed");
    }
    if std::env::args().any(|arg| arg == "--live") {
        return drain_live(&app, n, &comm).await;
    }
    let enqueue_started = Instant::now();
    noop::add_many(&app, (0..n).map(|i| (i,)))
        .await
        .expect("the tasks are added");
    let enqueue_s = enqueue_started.elapsed().as_secs_f64();
    let cpu_before = server_cpu_ms(&comm);
    let drain_started = Instant::now();
    let before = RAN.load(std::sync::atomic::Ordering::Relaxed);
    app.start().await.expect("the worker starts");
    drained(&app, before, n).await;
    let drain_s = drain_started.elapsed().as_secs_f64();
    let server_ms = server_cpu_ms(&comm) - cpu_before;
    app.stop().await.expect("the worker stops");
    let result = json!({
        "n": n,
        "enqueue_rate": n as f64 / enqueue_s,
        "drain_rate": n as f64 / drain_s,
        "server_cpu_us_per_task": server_ms * 1000.0 / n as f64,
        "vmhwm_mb": peak_rss_kb() as f64 / 1024.0,
    });
    emit(&result);
}

/// W1-live in one program: the worker started and warmed with one task, then `n` tasks added
/// one by one (64 adds in flight) while it runs; the rate is `n` over the time from the first
/// add to the last task's end.
async fn drain_live(app: &QueueTasks, n: u64, comm: &str) {
    app.start().await.expect("the worker starts");
    let warm = noop::call(0)
        .add(app)
        .await
        .expect("the warm-up task is added");
    warm.wait(Duration::from_secs(30))
        .await
        .expect("the warm-up task ends");
    let cpu_before = server_cpu_ms(comm);
    let started = Instant::now();
    let before = RAN.load(std::sync::atomic::Ordering::Relaxed);
    add_many(app, n, 64).await;
    let enqueue_s = started.elapsed().as_secs_f64();
    drained(app, before, n).await;
    let live_s = started.elapsed().as_secs_f64();
    let server_ms = server_cpu_ms(comm) - cpu_before;
    app.stop().await.expect("the worker stops");
    emit(&json!({
        "n": n,
        "live_enqueue_rate": n as f64 / enqueue_s,
        "live_rate": n as f64 / live_s,
        "live_server_cpu_us_per_task": server_ms * 1000.0 / n as f64,
    }));
}

/// What a transactional add costs against a plain one, on PostgreSQL (`--pg URL`): `n` adds
/// each way, one at a time, alternated in `--rounds` rounds: `add` (the engine's own
/// transaction), `add_in` (`BEGIN`, the add, `COMMIT` on a connection of the caller's pool),
/// and, as an application would, an `INSERT` of an order row alone and with the task in its
/// transaction. Prints the median rate of each, and the ratios.
#[cfg(feature = "postgres")]
async fn add_in_cost(n: u64) {
    use qtasks::postgres::AddInExt;
    use qtasks::postgres::sqlx::{self, AssertSqlSafe, Executor};
    let pg: String = arg("--pg", String::new());
    assert!(!pg.is_empty(), "addin needs --pg URL");
    let rounds: usize = arg("--rounds", 3);
    let app = redis_app("", 1).await;
    app.flush_all().await.expect("flushed");
    let base = pg.split('?').next().unwrap_or(&pg).to_owned();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&base)
        .await
        .expect("PostgreSQL is reachable");
    pool.execute(AssertSqlSafe(
        "DROP TABLE IF EXISTS qtasks_bench_orders;
         CREATE TABLE qtasks_bench_orders (id bigint PRIMARY KEY)"
            .to_owned(),
    ))
    .await
    .expect("the orders table");
    let mut rates: [Vec<f64>; 4] = Default::default();
    let mut order_id = 0_i64;
    for _ in 0..rounds {
        let started = Instant::now();
        for i in 0..n {
            noop::call(i).add(&app).await.expect("added");
        }
        rates[0].push(n as f64 / started.elapsed().as_secs_f64());

        let started = Instant::now();
        for i in 0..n {
            let mut tx = pool.begin().await.expect("begin");
            noop::call(i).add_in(&app, &mut tx).await.expect("added in");
            tx.commit().await.expect("commit");
        }
        rates[1].push(n as f64 / started.elapsed().as_secs_f64());

        for with_task in [false, true] {
            let started = Instant::now();
            for i in 0..n {
                order_id += 1;
                let mut tx = pool.begin().await.expect("begin");
                sqlx::query("INSERT INTO qtasks_bench_orders (id) VALUES ($1)")
                    .bind(order_id)
                    .execute(&mut *tx)
                    .await
                    .expect("the order");
                if with_task {
                    noop::call(i).add_in(&app, &mut tx).await.expect("added in");
                }
                tx.commit().await.expect("commit");
            }
            rates[2 + usize::from(with_task)].push(n as f64 / started.elapsed().as_secs_f64());
        }
        app.flush_all().await.expect("flushed");
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let [add, add_in, order, order_and_task] = rates.each_mut().map(median);
    let _ = pool.execute("DROP TABLE qtasks_bench_orders").await;
    emit(&json!({
        "n": n,
        "rounds": rounds,
        "add_rate": add,
        "add_in_rate": add_in,
        "add_in_over_add": add_in / add,
        "order_rate": order,
        "order_and_task_rate": order_and_task,
        "order_and_task_over_order": order_and_task / order,
    }));
}

fn main() {
    let command = std::env::args().nth(1).unwrap_or_default();
    let url: String = arg("--url", "redis://127.0.0.1:6391/0".to_owned());
    let threads: usize = arg("--threads", 2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match command.as_str() {
            "enqueue" => enqueue(&url, arg("--n", 20_000)).await,
            "worker" => worker(&url, arg("--concurrency", 64)).await,
            "w2" => w2(&url, arg("--n", 500), arg("--warmup", 5)).await,
            "stats" => stats(&url, arg("--n", 200)).await,
            "waiters" => waiters(&url, arg("--n", 10_000)).await,
            "drain" => drain(&url, arg("--n", 20_000)).await,
            #[cfg(feature = "postgres")]
            "addin" => add_in_cost(arg("--n", 2_000)).await,
            "inmem" => {
                inmem(
                    arg("--n", 200_000),
                    arg("--lat-n", 500),
                    arg("--concurrency", 64),
                )
                .await;
            }
            other => {
                eprintln!(
                    "unknown command `{other}`: enqueue, worker, w2, waiters, stats, drain, addin or inmem"
                );
                std::process::exit(2);
            }
        }
    });
}
