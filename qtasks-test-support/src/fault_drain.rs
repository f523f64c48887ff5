//! A drain through a fault: tasks with a waiter on each, a fault made once a quarter of them
//! ran (a master killed, a slot migrated), and what the waiters saw.

use std::collections::HashMap;
use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use qtasks::QueueTasks;

/// Runs per task, by its number (each test numbers its tasks from its own base).
static RUNS: LazyLock<std::sync::Mutex<HashMap<u64, usize>>> = LazyLock::new(Default::default);

/// Counts its run, takes 20 ms, and answers `n * 2`.
#[qtasks::task]
pub async fn drained_step(n: u64) -> u64 {
    *RUNS.lock().unwrap().entry(n).or_default() += 1;
    tokio::time::sleep(Duration::from_millis(20)).await;
    n * 2
}

/// How many times task `n` ran.
pub fn runs_of(n: u64) -> usize {
    RUNS.lock().unwrap().get(&n).copied().unwrap_or(0)
}

/// What a drain through a fault showed.
#[derive(Debug)]
pub struct Figures {
    /// From the end of the fault to the first result a waiter got after it.
    pub resumed_after: Duration,
    /// Tasks that ran more than once.
    pub ran_twice: usize,
    /// Results that waiters got while the fault was under way.
    pub during: usize,
}

/// Adds `count` tasks numbered from `base` with a waiter on each, starts the app's worker,
/// runs `fault` once a quarter of them ran, and checks that every waiter gets its result (none
/// failed) and every task ran; stops the worker.
pub async fn drain_through<F, Fut>(app: &QueueTasks, base: u64, count: u64, fault: F) -> Figures
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let handles = drained_step::add_many(app, (base..base + count).map(|n| (n,)))
        .await
        .unwrap();
    let mut waiters = Vec::new();
    for handle in handles {
        waiters.push(tokio::spawn(async move {
            let answer = handle.result(Duration::from_secs(120)).await;
            (handle.uuid(), answer, Instant::now())
        }));
    }
    app.start().await.unwrap();
    let started = Instant::now();
    let quarter = usize::try_from(count / 4).unwrap();
    while (base..base + count).filter(|n| runs_of(*n) > 0).count() < quarter {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the drain never got going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fault_started = Instant::now();
    fault().await;
    let faulted = Instant::now();
    let mut first_after: Option<Instant> = None;
    let mut during = 0;
    for waiter in waiters {
        let (uuid, answer, at) = waiter.await.unwrap();
        let value = answer.unwrap_or_else(|failure| panic!("task {uuid} failed: {failure:?}"));
        assert_eq!(value % 2, 0);
        if at > faulted {
            first_after = Some(first_after.map_or(at, |first| first.min(at)));
        } else if at > fault_started {
            during += 1;
        }
    }
    app.stop().await.unwrap();
    let missing: Vec<u64> = (base..base + count).filter(|n| runs_of(*n) == 0).collect();
    assert!(missing.is_empty(), "never ran: {missing:?}");
    Figures {
        resumed_after: first_after.map_or(Duration::ZERO, |at| at - faulted),
        ran_twice: (base..base + count).filter(|n| runs_of(*n) > 1).count(),
        during,
    }
}
