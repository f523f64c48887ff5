//! W1 on apalis-postgres, measured as `qtasks-bench drain` measures qtasks on PostgreSQL: `n`
//! no-op tasks enqueued (timed), then drained by a worker of this process (timed from its start
//! to the last task `Done` in the table), with the server's CPU over the drain and this
//! process's peak RSS. One JSON line on stdout (`BENCH_JSON {...}`).
//!
//!   apalis-postgres-peer --url URL --n 20000 [--listen] [--batch 10] [--server-comm postgres]
//!
//! By default the storage of apalis-postgres's README (polling, `Config::default()`: batches
//! of 10); `--listen` adds its LISTEN/NOTIFY wake-ups (`with_pubsub`), as qtasks's engine
//! uses; `--batch` sets the fetch size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::{Config, PgPool, PostgresStorage};
use futures::stream::{self, StreamExt};

/// The queue (apalis's `job_type`) of the run.
const QUEUE: &str = "qtasks_bench_peer";

fn arg<T: std::str::FromStr>(key: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|pair| pair[0] == key)
        .and_then(|pair| pair[1].parse().ok())
        .unwrap_or(default)
}

fn flag(key: &str) -> bool {
    std::env::args().any(|arg| arg == key)
}

/// CPU milliseconds of every process named `comm` (utime + stime from `/proc`).
fn server_cpu_ms(comm: &str) -> f64 {
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
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for at in [11, 12] {
            ticks += fields.get(at).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    // USER_HZ is 100: a tick is 10 ms.
    ticks as f64 * 10.0
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

static DONE: AtomicU64 = AtomicU64::new(0);

async fn noop(x: u64) -> Result<u64, BoxDynError> {
    DONE.fetch_add(1, Ordering::Relaxed);
    Ok(x)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url: String = arg("--url", "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let n: u64 = arg("--n", 20_000);
    let batch: usize = arg("--batch", 10);
    let comm: String = arg("--server-comm", "postgres".to_owned());
    let pool = PgPool::connect(&url).await.expect("PostgreSQL is up");
    PostgresStorage::setup(&pool).await.expect("apalis's migrations");
    sqlx_clear(&pool).await;
    let config = Config::default().queue(QUEUE).batch_size(batch);

    let mut backend = PostgresStorage::<u64>::new(&pool).with_config(config.clone());
    let enqueue_started = Instant::now();
    let mut tasks = stream::iter(0..n).map(|i| TaskBuilder::new(i).build());
    backend.push_all(&mut tasks).await.expect("the tasks are added");
    let enqueue_s = enqueue_started.elapsed().as_secs_f64();

    let cpu_before = server_cpu_ms(&comm);
    let drain_started = Instant::now();
    let worker = if flag("--listen") {
        let backend = PostgresStorage::<u64>::new(&pool)
            .with_config(config)
            .with_pubsub();
        tokio::spawn(async move {
            WorkerBuilder::new("bench-worker")
                .backend(backend)
                .build(noop)
                .run()
                .await
        })
    } else {
        tokio::spawn(async move {
            WorkerBuilder::new("bench-worker")
                .backend(backend)
                .build(noop)
                .run()
                .await
        })
    };
    // Every task ran, then every one is `Done` in the table (its outcome written).
    while DONE.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    loop {
        let left = sqlx_left(&pool).await;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    let server_ms = server_cpu_ms(&comm) - cpu_before;
    worker.abort();
    let result = serde_json::json!({
        "n": n,
        "enqueue_rate": n as f64 / enqueue_s,
        "drain_rate": n as f64 / drain_s,
        "server_cpu_us_per_task": server_ms * 1000.0 / n as f64,
        "vmhwm_mb": peak_rss_kb() as f64 / 1024.0,
    });
    println!("BENCH_JSON {result}");
}

/// The run's queue emptied of earlier runs' rows.
async fn sqlx_clear(pool: &PgPool) {
    sqlx::query("DELETE FROM apalis.jobs WHERE job_type = $1")
        .bind(QUEUE)
        .execute(pool)
        .await
        .expect("clearing the queue");
}

/// The run's tasks not `Done` yet.
async fn sqlx_left(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM apalis.jobs WHERE job_type = $1 AND status <> 'Done'")
        .bind(QUEUE)
        .fetch_one(pool)
        .await
        .expect("counting")
}
