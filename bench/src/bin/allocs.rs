//! How many heap allocations one in-memory task costs, counted by a global allocator that
//! counts (the issue's "per-task allocations"), beside the bare tokio channel's count for the
//! same work measured in the same process.
//!
//! ```text
//! cargo run --release -p qtasks-bench --bin allocs -- [--n 100000] [--concurrency 64]
//! ```
//!
//! Prints one `BENCH_JSON {...}` line: allocations and bytes per task for adding (`add_task`,
//! no worker running), for draining (a worker runs them, each result waited for) and for the
//! channel. Counts, unlike times, repeat exactly from run to run, so a change shows as a
//! difference of whole allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use qtasks::{QueueConfig, QueueTasks};
use serde_json::json;

/// The system allocator, counting each allocation and its bytes (reallocations count as one).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to the system allocator; the counters are atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` or `realloc` above, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is the system allocator's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[qtasks::task]
async fn noop(i: u64) -> u64 {
    i
}

fn arg(key: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == key)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

/// Allocations and bytes since `from`, per task.
fn per_task(from: (u64, u64), n: usize) -> serde_json::Value {
    let (allocations, bytes) = counted();
    json!({
        "allocations": (allocations - from.0) as f64 / n as f64,
        "bytes": (bytes - from.1) as f64 / n as f64,
    })
}

fn counted() -> (u64, u64) {
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

async fn qtasks_counts(n: usize, concurrency: usize) -> (serde_json::Value, serde_json::Value) {
    let app = QueueTasks::with_config(QueueConfig {
        max_tasks_process: concurrency,
        ..Default::default()
    });
    // One task first, so the counts leave out what is built once (the dispatch table, the
    // worker's tasks).
    app.start().await.expect("the app starts");
    noop::add_task(&app, 0)
        .await
        .expect("added")
        .wait(Duration::from_secs(10))
        .await
        .expect("warm-up");
    app.stop().await.expect("the app stops");

    let start = counted();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n as u64 {
        handles.push(noop::add_task(&app, i).await.expect("added"));
    }
    let adding = per_task(start, n);
    let start = counted();
    app.start().await.expect("the app starts");
    for handle in handles {
        handle
            .wait(Duration::from_secs(60))
            .await
            .expect("the task ends");
    }
    let draining = per_task(start, n);
    app.stop().await.expect("the app stops");
    (adding, draining)
}

/// The same work through a bare tokio channel: a boxed job and a oneshot reply per task.
async fn channel_counts(n: usize) -> serde_json::Value {
    type Job = Box<dyn FnOnce() -> u64 + Send>;
    let start = counted();
    let (sender, mut receiver) =
        tokio::sync::mpsc::unbounded_channel::<(Job, tokio::sync::oneshot::Sender<u64>)>();
    let mut replies = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || i);
        sender.send((job, reply)).expect("open");
        replies.push(answer);
    }
    drop(sender);
    let worker = tokio::spawn(async move {
        while let Some((job, reply)) = receiver.recv().await {
            let _ = reply.send(job());
        }
    });
    for answer in replies {
        answer.await.expect("answered");
    }
    worker.await.expect("the worker ends");
    per_task(start, n)
}

fn main() {
    let n = arg("--n", 100_000);
    let concurrency = arg("--concurrency", 64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (adding, draining) = qtasks_counts(n, concurrency).await;
        let channel = channel_counts(n).await;
        println!(
            "BENCH_JSON {}",
            json!({"n": n, "add": adding, "drain": draining, "channel": channel})
        );
        eprintln!(
            "| per task | allocations | bytes |\n|---|---|---|\n| add | {:.2} | {:.0} |\n| drain (run, result waited for) | {:.2} | {:.0} |\n| bare channel (job and reply) | {:.2} | {:.0} |",
            adding["allocations"].as_f64().unwrap_or(f64::NAN),
            adding["bytes"].as_f64().unwrap_or(f64::NAN),
            draining["allocations"].as_f64().unwrap_or(f64::NAN),
            draining["bytes"].as_f64().unwrap_or(f64::NAN),
            channel["allocations"].as_f64().unwrap_or(f64::NAN),
            channel["bytes"].as_f64().unwrap_or(f64::NAN),
        );
    });
}
