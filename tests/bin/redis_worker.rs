//! A Redis worker process for the multi-process tests.
//!
//! `qtasks-test-redis-worker <prefix> <lease_ms> <concurrency>`, with the Redis URL in
//! `QTASKS_TEST_REDIS_URL`. Its tasks:
//! - `record_run(label, ms)` counts its runs in `<prefix>:test:runs`, its start order in
//!   `<prefix>:test:order` and the process that ran it last in `<prefix>:test:pid`, then sleeps
//!   `ms`;
//! - `log_run(label, ms)` touches no Redis (for the fault tests, where Redis goes away): it
//!   appends `uuid label pid` to the file named by `QTASKS_TEST_EXEC_LOG`, sleeps `ms` and
//!   returns the label;
//! - `crash(label)` logs its run as `log_run` does, then aborts the whole process (as an OOM
//!   kill or a stack overflow would end it);
//! - `always_fail(label)` logs its run and fails, with two retries (three attempts);
//! - `panics(label)` logs its run and panics;
//! - `count_up(n)` streams the items 1 to n, one every 100 ms;
//! - with `QTASKS_TEST_SPAN_LOG` set, `log_run` also appends `uuid pid start_ms end_ms` to that
//!   file when it ends (for the harness's overlap check);
//! - `measure(text)` returns the length of its argument;
//! - `join_labels(separator, labels)` joins them (a chord's callback);
//! - `paced_run(n)` returns `n`, at most 25 starts a second across the app (`rate_limit`);
//! - `capped_run(ms)` sleeps `ms`, at most 3 runs at once across the app (`max_running`);
//! - `paced_log(label, ms)` logs its run as `log_run` does, sleeps `ms` and returns the label,
//!   at most 40 starts a second and 2 runs at once across the app (the fault harness's);
//! - `flow_step(label, ms, trail)` logs its run as `log_run` does, sleeps `ms` and returns the
//!   trail with its label; `flow_merge(trails)` logs `merge` and joins them (a workflow's).
//!
//! With `QTASKS_TEST_ADD_FLOW` it is a caller, not a worker: it adds a workflow (`start`, then
//! side by side `slow1` then `after1`, and `slow2`, 2 s each slow step, then the merge), prints
//! its id on stdout and aborts.
//!
//! With `QTASKS_TEST_WORKER_AMQP` (a RabbitMQ URL) the queue is on RabbitMQ and the records on
//! Redis.
//!
//! With `QTASKS_TEST_WORKER_KAFKA` (Kafka servers, `host:port`) the queue is on Kafka and the
//! records on Redis.
//!
//! With `QTASKS_TEST_WORKER_POSTGRES` (a PostgreSQL URL with its `?schema=`), the whole app is
//! on PostgreSQL, and Redis is not needed (`record_run` then fails: use `log_run`).
//!
//! With `QTASKS_TEST_SCHEDULE_FROM` (Unix seconds) and `QTASKS_TEST_SCHEDULE_SLOTS`, it also
//! runs a schedule `tick` that adds `record_run("tick", 0)` every second for that many slots
//! (`log_run("tick", 0)` with `QTASKS_TEST_SCHEDULE_LOGGED`).

use std::sync::OnceLock;
use std::time::Duration;

use qtasks::QueueConfig;
use qtasks::redis::RedisOptions;
use redis::aio::ConnectionManager;

static RECORDER: OnceLock<(ConnectionManager, String)> = OnceLock::new();

#[qtasks::task]
async fn record_run(label: String, ms: u64) -> qtasks::TaskResult<String> {
    let (con, prefix) = RECORDER
        .get()
        .expect("record_run needs Redis (QTASKS_TEST_REDIS_URL)");
    let mut con = con.clone();
    // In one transaction: a test that sees the run counted reads its process id too (three
    // separate writes let one read the count before the id was there).
    let _: () = redis::pipe()
        .atomic()
        .hincr(format!("{prefix}:test:runs"), &label, 1)
        .ignore()
        .rpush(format!("{prefix}:test:order"), &label)
        .ignore()
        .hset(format!("{prefix}:test:pid"), &label, std::process::id())
        .ignore()
        .query_async(&mut con)
        .await?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(label)
}

#[qtasks::task(echo = true)]
async fn log_run(ctx: qtasks::TaskContext, label: String, ms: u64) -> qtasks::TaskResult<String> {
    let started = now_ms();
    log_execution(&ctx, &label)?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    if let Ok(path) = std::env::var("QTASKS_TEST_SPAN_LOG") {
        use std::io::Write;
        let line = format!(
            "{} {} {started} {}\n",
            ctx.task_uuid(),
            std::process::id(),
            now_ms()
        );
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?
            .write_all(line.as_bytes())?;
    }
    Ok(label)
}

/// Milliseconds since the Unix epoch (the machine's clock, which every test process shares).
fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis())
}

/// Appends `uuid label pid` to the file named by `QTASKS_TEST_EXEC_LOG`.
fn log_execution(ctx: &qtasks::TaskContext, label: &str) -> qtasks::TaskResult<()> {
    use std::io::Write;
    let path = std::env::var("QTASKS_TEST_EXEC_LOG").map_err(qtasks::TaskError::msg)?;
    // One `write` of one short line to a file opened for appending: lines never interleave.
    let line = format!("{} {label} {}\n", ctx.task_uuid(), std::process::id());
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())?;
    Ok(())
}

#[qtasks::task(echo = true)]
async fn crash(ctx: qtasks::TaskContext, label: String) -> qtasks::TaskResult<()> {
    log_execution(&ctx, &label)?;
    std::process::abort();
}

#[qtasks::task(echo = true, retry = 2)]
async fn always_fail(ctx: qtasks::TaskContext, label: String) -> qtasks::TaskResult<()> {
    log_execution(&ctx, &label)?;
    Err(qtasks::TaskError::msg(format!("{label} fails every time")))
}

#[qtasks::task(echo = true)]
async fn panics(ctx: qtasks::TaskContext, label: String) -> qtasks::TaskResult<()> {
    log_execution(&ctx, &label)?;
    panic!("{label} panics on purpose");
}

/// A stream task: `n` items, one every 100 ms (its run spans several lease renewals).
#[qtasks::task]
async fn count_up(n: u32) -> impl futures_util::Stream<Item = u32> {
    use futures_util::StreamExt;
    futures_util::stream::iter(1..=n).then(|i| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        i
    })
}

#[qtasks::task]
async fn measure(text: String) -> usize {
    text.len()
}

/// A chord's callback: the members' labels joined.
#[qtasks::task]
async fn join_labels(separator: String, labels: Vec<String>) -> String {
    labels.join(&separator)
}

#[qtasks::task(rate_limit = "25/s")]
async fn paced_run(n: u32) -> u32 {
    n
}

#[qtasks::task(max_running = 3)]
async fn capped_run(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

#[qtasks::task(echo = true, rate_limit = "40/s", max_running = 2)]
async fn paced_log(ctx: qtasks::TaskContext, label: String, ms: u64) -> qtasks::TaskResult<String> {
    log_execution(&ctx, &label)?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(label)
}

#[qtasks::task(echo = true)]
async fn flow_step(
    ctx: qtasks::TaskContext,
    label: String,
    ms: u64,
    trail: Vec<String>,
) -> qtasks::TaskResult<Vec<String>> {
    log_execution(&ctx, &label)?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let mut trail = trail;
    trail.push(label);
    Ok(trail)
}

#[qtasks::task(echo = true)]
async fn flow_merge(
    ctx: qtasks::TaskContext,
    trails: Vec<Vec<String>>,
) -> qtasks::TaskResult<Vec<String>> {
    log_execution(&ctx, "merge")?;
    Ok(trails.concat())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, prefix, lease_ms, concurrency] = &args[..] else {
        return Err("usage: qtasks-test-redis-worker <prefix> <lease_ms> <concurrency>".into());
    };
    // Logs on stderr, as `RUST_LOG` asks (nothing by default).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let postgres = std::env::var("QTASKS_TEST_WORKER_POSTGRES").ok();
    let url = match (std::env::var("QTASKS_TEST_REDIS_URL"), &postgres) {
        (Ok(url), _) => url,
        (Err(_), Some(_)) => String::new(),
        (Err(error), None) => return Err(error.into()),
    };
    // (`record_run`'s counts are on one server: not through Sentinels or on a cluster.)
    if url.starts_with("redis://") {
        let recorder = redis::Client::open(url.as_str())?
            .get_connection_manager()
            .await?;
        RECORDER
            .set((recorder, prefix.clone()))
            .map_err(|_| "set once")?;
    }

    // Other settings from `QTASKS_*` variables (a test sets `QTASKS_STOP_TIMEOUT`).
    let config = QueueConfig {
        name: prefix.clone(),
        max_tasks_process: concurrency.parse()?,
        ..QueueConfig::from_env()?
    };
    let mut options = RedisOptions {
        lease: Duration::from_millis(lease_ms.parse()?),
        ..Default::default()
    };
    // `QTASKS_TEST_RESPONSE_TIMEOUT_MS`: how long a command may wait for Redis's answer (a
    // cluster client waits out a dead master's before it looks for the new one).
    if let Ok(ms) = std::env::var("QTASKS_TEST_RESPONSE_TIMEOUT_MS") {
        options.response_timeout = Duration::from_millis(ms.parse()?);
    }
    // `QTASKS_TEST_PARTITIONS`: the app spread over this many partitions.
    if let Ok(partitions) = std::env::var("QTASKS_TEST_PARTITIONS") {
        options.partitions = partitions.parse()?;
    }
    // `QTASKS_TEST_WORKER_AMQP`: the queue on this RabbitMQ instead, the records on Redis.
    let app = match std::env::var("QTASKS_TEST_WORKER_AMQP") {
        _ if postgres.is_some() => {
            let options = qtasks::postgres::PostgresOptions {
                lease: options.lease,
                ..Default::default()
            };
            let url = postgres.as_deref().unwrap_or_default();
            qtasks::postgres::connect_with(url, config, options).await?
        }
        _ if std::env::var("QTASKS_TEST_WORKER_KAFKA").is_ok() => {
            // `QTASKS_TEST_WORKER_KAFKA`: the queue on these Kafka servers, the records on
            // Redis; `QTASKS_TEST_KAFKA_SESSION_MS`, the group's session timeout.
            let servers = std::env::var("QTASKS_TEST_WORKER_KAFKA")?;
            let storage = qtasks::redis::Redis::new(url).options(options);
            let mut kafka = qtasks::kafka::KafkaOptions::default();
            if let Ok(ms) = std::env::var("QTASKS_TEST_KAFKA_SESSION_MS") {
                kafka = kafka.session_timeout(Duration::from_millis(ms.parse()?));
            }
            qtasks::kafka::connect_with(&servers, storage, config, kafka).await?
        }
        Ok(amqp) => {
            let storage = qtasks::redis::Redis::new(url).options(options);
            let options = qtasks::rabbitmq::RabbitMqOptions::default()
                .queue_expires(Duration::from_secs(600));
            qtasks::rabbitmq::connect_with(&amqp, storage, config, options).await?
        }
        Err(_) => qtasks::redis::connect_with(&url, config, options).await?,
    };
    // `QTASKS_TEST_SCHEDULE_FROM` (Unix seconds) and `QTASKS_TEST_SCHEDULE_SLOTS`: a schedule
    // `tick` firing `record_run("tick", 0)` every second for that many slots.
    if let Ok(from) = std::env::var("QTASKS_TEST_SCHEDULE_FROM") {
        let from: u64 = from.parse()?;
        let slots: u64 = std::env::var("QTASKS_TEST_SCHEDULE_SLOTS")?.parse()?;
        let at = |secs: u64| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        let schedule = qtasks::schedule::Schedule::every(Duration::from_secs(1))
            .starting_at(at(from))
            .until(at(from + slots - 1));
        // `QTASKS_TEST_SCHEDULE_LOGGED`: `log_run("tick", 0)` instead (no Redis in the task).
        // (Slots it slept through, frozen by the harness, are fired late.)
        let (schedule, call) = if std::env::var_os("QTASKS_TEST_SCHEDULE_LOGGED").is_some() {
            (schedule.catch_up(100), log_run::call("tick".to_owned(), 0))
        } else {
            (schedule, record_run::call("tick".to_owned(), 0))
        };
        app.schedules().add("tick", schedule, call)?;
    }
    if std::env::var_os("QTASKS_TEST_ADD_FLOW").is_some() {
        use qtasks::workflow::{flow, parallel};
        use std::io::Write;
        let slow = |label: &str| flow_step::call_with(label.to_owned(), 2000);
        let handle = flow(flow_step::call("start".to_owned(), 50, Vec::new()))
            .then(parallel([
                flow(slow("slow1")).then(flow_step::call_with("after1".to_owned(), 50)),
                flow(slow("slow2")),
            ]))
            .then(flow_merge::call_with())
            .add(&app)
            .await?;
        let mut out = std::io::stdout();
        writeln!(out, "{}", handle.id())?;
        out.flush()?;
        // The caller dies at once: the workers carry the workflow.
        std::process::abort();
    }
    app.run_forever().await?;
    Ok(())
}
