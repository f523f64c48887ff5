//! Micro-benchmarks of the hot path: firing a trigger with 0, 1 and 8 handlers, decoding a
//! task's arguments, and one in-memory task from `add_task` to its result.
//!
//! `cargo bench -p qtasks-bench`. (That a trigger without handlers allocates nothing is shown by
//! the unit test `a_trigger_without_handlers_returns_at_once_and_allocates_nothing` in
//! `qtasks/src/dispatch.rs`, which counts allocations.)

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use qtasks::bench_hooks::{TriggerBench, decode_args};
use serde_json::{Map, json};

#[qtasks::task]
async fn noop(i: u64) -> u64 {
    i
}

fn triggers(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("fire_trigger");
    for handlers in [0, 1, 8] {
        let bench = TriggerBench::new(handlers);
        group.bench_with_input(BenchmarkId::from_parameter(handlers), &bench, |b, bench| {
            b.to_async(&runtime).iter(|| bench.fire());
        });
    }
    group.finish();
}

fn arguments(c: &mut Criterion) {
    let args = vec![json!(42), json!("invoice"), json!([1, 2, 3, 4])];
    c.bench_function("decode_args", |b| {
        b.iter(|| decode_args(args.clone(), Map::new()).unwrap());
    });
}

fn end_to_end(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = qtasks::QueueTasks::new();
    runtime.block_on(app.start()).unwrap();
    c.bench_function("memory_task_end_to_end", |b| {
        b.to_async(&runtime).iter(|| async {
            let handle = noop::add_task(&app, 1).await.unwrap();
            handle.wait(Duration::from_secs(5)).await.unwrap()
        });
    });
    runtime.block_on(app.stop()).unwrap();
}

criterion_group!(benches, triggers, arguments, end_to_end);
criterion_main!(benches);
