//! Rate limits and concurrency limits (`#[task(rate_limit = ..)]`, `#[task(max_running = ..)]`,
//! `AddOptions::rate_key`) in memory, where every worker of the process shares them, and on
//! Redis across worker processes. (The conformance suite checks the contract on every engine.)

use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::{AddOptions, QueueConfig, QueueTasks, TaskHandle, TaskRecord, TaskStatus};
use qtasks_test_support::redis::redis_app;
use qtasks_test_support::{WAIT, redis_url, unique_prefix};

#[qtasks::task(rate_limit = "20/s")]
async fn paced(n: u32) -> u32 {
    n
}

#[qtasks::task(rate_limit = "10/s")]
async fn per_customer(customer: String, n: u32) -> String {
    format!("{customer}{n}")
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST_RUNNING: AtomicUsize = AtomicUsize::new(0);

#[qtasks::task(max_running = 2)]
async fn capped(ms: u64) -> u64 {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MOST_RUNNING.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    ms
}

#[qtasks::task(max_running = 1)]
async fn one_at_a_time(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

fn app_with(concurrency: usize) -> QueueTasks {
    QueueTasks::builder()
        .config(QueueConfig {
            max_tasks_process: concurrency,
            ..QueueConfig::default()
        })
        .build()
}

async fn ended<T>(handles: &[TaskHandle<T>]) -> Vec<TaskRecord> {
    let mut records = Vec::new();
    for handle in handles {
        let record = handle.wait(WAIT).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
        assert_eq!(record.hand_backs, 0, "waiting for a turn is no hand-back");
        records.push(record);
    }
    records
}

/// The starts per second from the first start to the last (the records' `started_at`).
fn measured_rate(records: &[TaskRecord]) -> f64 {
    let mut starts: Vec<f64> = records.iter().filter_map(|r| r.started_at).collect();
    assert_eq!(
        starts.len(),
        records.len(),
        "every record says when it started"
    );
    starts.sort_by(f64::total_cmp);
    let span = starts[starts.len() - 1] - starts[0];
    (starts.len() - 1) as f64 / span
}

/// The most starts in any window of `window` seconds (a window opening at each start).
fn busiest_window(records: &[TaskRecord], window: f64) -> usize {
    let mut starts: Vec<f64> = records.iter().filter_map(|r| r.started_at).collect();
    starts.sort_by(f64::total_cmp);
    (0..starts.len())
        .map(|first| {
            starts[first..]
                .iter()
                .take_while(|start| **start < starts[first] + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn a_rate_limit_spaces_the_starts_of_a_backlog_and_fails_none() {
    let app = app_with(16); // far more slots than the rate needs
    let handles = paced::add_many(&app, (0..40).map(|n| (n,))).await.unwrap();
    app.start().await.unwrap();
    let records = ended(&handles).await;
    let rate = measured_rate(&records);
    eprintln!("20/s in memory: {rate:.2}/s");
    assert!(
        (18.0..=22.0).contains(&rate),
        "20/s measured as {rate:.2}/s (more than 10 % off)"
    );
    // Evenly: no half second holds more than its share (10 starts) and one late start.
    let busiest = busiest_window(&records, 0.5);
    assert!(busiest <= 11, "{busiest} starts in half a second");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn each_rate_key_gets_the_whole_rate() {
    let app = app_with(16);
    let mut handles = Vec::new();
    for n in 0..10 {
        for customer in ["acme", "globex"] {
            let call = per_customer::call(customer.to_owned(), n).rate_key(customer);
            handles.push((customer, call.add(&app).await.unwrap()));
        }
    }
    app.start().await.unwrap();
    let mut by_customer: std::collections::BTreeMap<&str, Vec<TaskRecord>> = Default::default();
    for (customer, handle) in &handles {
        let record = handle.wait(WAIT).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
        assert_eq!(record.rate_key.as_deref(), Some(*customer));
        by_customer.entry(customer).or_default().push(record);
    }
    for (customer, records) in &by_customer {
        let rate = measured_rate(records);
        assert!(
            (9.0..=11.0).contains(&rate),
            "{customer}: 10/s measured as {rate:.2}/s"
        );
    }
    // Together, twice the rate: the keys do not share one.
    let all: Vec<TaskRecord> = by_customer.into_values().flatten().collect();
    let together = measured_rate(&all);
    assert!(together > 16.0, "two keys ran {together:.2}/s together");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn max_running_caps_the_runs_at_once_and_a_leave_wakes_the_next() {
    let app = app_with(8);
    let handles = capped::add_many(&app, (0..12).map(|_| (100,)))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    app.start().await.unwrap();
    let records = ended(&handles).await;
    let took = started.elapsed();
    assert_eq!(
        MOST_RUNNING.load(Ordering::SeqCst),
        2,
        "at most 2 at once, and the cap was reached"
    );
    assert_eq!(records.len(), 12);
    // Parked tasks were woken by the runs that ended, not by the recheck (30 s).
    assert!(
        took < Duration::from_secs(10),
        "12 runs of 100 ms two at a time took {took:?}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_parked_task_cancelled_ends_cancel_and_never_runs() {
    let app = app_with(4);
    let first = one_at_a_time::add_task(&app, 500).await.unwrap();
    let parked = one_at_a_time::add_task(&app, 0).await.unwrap();
    let behind = one_at_a_time::add_task(&app, 0).await.unwrap();
    app.start().await.unwrap();
    // Let the worker take both: the first runs, the second is parked behind it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let record = parked.get().await.unwrap().unwrap();
    assert_eq!(
        record.status,
        TaskStatus::New,
        "parked: waiting, {record:?}"
    );
    parked.cancel("not needed").await.unwrap();
    assert_eq!(first.result(WAIT).await.unwrap(), 500);
    let record = parked.wait(WAIT).await.unwrap();
    assert_eq!(record.status, TaskStatus::Cancel);
    assert!(record.started_at.is_none(), "it never started: {record:?}");
    // The wake the end of the first run gave did not go to the cancelled task alone: the
    // task parked behind it runs.
    assert_eq!(behind.result(WAIT).await.unwrap(), 0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_rate_key_is_refused_naming_it() {
    let app = QueueTasks::new();
    let error = app
        .add_task_with("paced", (1,), (), AddOptions::default().rate_key(""))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("rate key is empty"), "{error}");
    let long = "k".repeat(qtasks::limits::MAX_RATE_KEY_LEN + 1);
    let error = paced::call(1).rate_key(long).add(&app).await.unwrap_err();
    assert!(
        error.to_string().contains("rate key is 513 bytes"),
        "{error}"
    );
}

/// A worker process (`qtasks-test-redis-worker`), killed when dropped.
struct Worker(Child);

impl Worker {
    fn spawn(prefix: &str, concurrency: usize) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_qtasks-test-redis-worker"))
            .args([prefix, "5000", &concurrency.to_string()])
            .spawn()
            .expect("the worker binary starts");
        Worker(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn three_worker_processes_keep_one_rate_within_ten_percent() {
    let Some(url) = redis_url("three_worker_processes_keep_one_rate_within_ten_percent") else {
        return;
    };
    let prefix = unique_prefix("rate");
    let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    // `paced_run` is `rate_limit = "25/s"` in the worker binary.
    let mut handles = Vec::new();
    for n in 0..75 {
        handles.push(client.add_task("paced_run", (n,), ()).await.unwrap());
    }
    let _workers: Vec<Worker> = (0..3).map(|_| Worker::spawn(&prefix, 8)).collect();
    let records = ended(&handles).await;
    let rate = measured_rate(&records);
    eprintln!("25/s on Redis, three processes: {rate:.2}/s");
    assert!(
        (22.5..=27.5).contains(&rate),
        "25/s across three processes measured as {rate:.2}/s"
    );
    // Not only on average: no second holds more than 10 % over its share.
    let busiest = busiest_window(&records, 1.0);
    eprintln!("the busiest second: {busiest} starts");
    assert!(busiest <= 27, "{busiest} starts in one second");
    let workers: std::collections::HashSet<_> =
        records.iter().filter_map(|r| r.worker.clone()).collect();
    assert!(
        workers.len() >= 2,
        "the processes shared the work: {workers:?}"
    );
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn max_running_holds_across_worker_processes_and_parked_tasks_are_woken() {
    let Some(url) =
        redis_url("max_running_holds_across_worker_processes_and_parked_tasks_are_woken")
    else {
        return;
    };
    let prefix = unique_prefix("running");
    let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    // `capped_run(ms)` is `max_running = 3` in the worker binary.
    let mut handles = Vec::new();
    for _ in 0..24 {
        handles.push(client.add_task("capped_run", (150,), ()).await.unwrap());
    }
    let started = std::time::Instant::now();
    let _workers: Vec<Worker> = (0..3).map(|_| Worker::spawn(&prefix, 4)).collect();
    let records = ended(&handles).await;
    let took = started.elapsed();
    let most = most_at_once(&records);
    eprintln!("max_running = 3 on Redis, three processes: at most {most} at once, {took:?}");
    assert!(most <= 3, "{most} runs at once across the processes");
    assert_eq!(most, 3, "the cap was used");
    // Woken by the runs that ended, not by the 30 s recheck.
    assert!(
        took < Duration::from_secs(20),
        "24 runs of 150 ms three at a time took {took:?}"
    );
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_killed_workers_running_slots_free_themselves_with_its_leases() {
    let Some(url) = redis_url("a_killed_workers_running_slots_free_themselves_with_its_leases")
    else {
        return;
    };
    let prefix = unique_prefix("slots");
    let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    // `capped_run` is `max_running = 3`: the first worker holds all three slots and parks one
    // more task, then dies without giving anything back.
    let mut handles = Vec::new();
    for _ in 0..7 {
        handles.push(client.add_task("capped_run", (1500,), ()).await.unwrap());
    }
    let mut doomed = Command::new(env!("CARGO_BIN_EXE_qtasks-test-redis-worker"))
        .args([prefix.as_str(), "1500", "4"])
        .spawn()
        .unwrap();
    // Its slots are all taken once three records read `process` (a fourth may read so for
    // the moment between its delivery and its admission parking it: the cap itself is
    // checked on the runs' spans below).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut running = 0;
        for handle in &handles {
            if handle.get().await.unwrap().unwrap().status == TaskStatus::Process {
                running += 1;
            }
        }
        if running >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slots were never all taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let killed_at = std::time::Instant::now();
    let _heir = Worker::spawn(&prefix, 4);
    let mut records = Vec::new();
    for handle in &handles {
        let record = handle.wait(Duration::from_secs(60)).await.unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
        records.push(record);
    }
    let most = most_at_once(&records);
    assert!(most <= 3, "{most} runs at once with max_running = 3");
    // The dead worker's slots went with its leases (1.5 s), and the parked task was woken by
    // a run that ended, not by the 30 s recheck: 7 runs of 1.5 s, three at a time.
    let took = killed_at.elapsed();
    eprintln!("after the kill, the 7 tasks ended in {took:?}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// The most runs at once, from the spans of the runs that ended the tasks.
fn most_at_once(records: &[TaskRecord]) -> i32 {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for record in records {
        let (start, end) = (record.started_at.unwrap(), record.finished_at.unwrap());
        edges.push((start, 1));
        edges.push((end, -1));
    }
    // Ends before starts at the same instant: a slot given back is taken after.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most
}
