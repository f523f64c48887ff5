//! Fault injection on Redis: worker processes killed or frozen, Redis killed and restarted with
//! its append-only file, connections cut every 100 ms, a 5 MB argument. Each scenario runs on a
//! Redis server of its own (its own port and folder), never the shared one.
//!
//! Executions are counted outside Redis: the workers' `log_run` task appends `uuid label pid` to
//! a file per scenario. Recorded outcomes are counted in each server's append-only file: every
//! write of a final status to a task's record is there, across restarts. Every
//! scenario asserts 0 lost tasks, 0 duplicate recorded outcomes and that every waiter gets the
//! right record; executions repeat only where a crash makes it unavoidable, and are reported
//! (`cargo test -p qtasks-tests --test faults -- --include-ignored --nocapture` prints the table RELIABILITY.md shows).

#![cfg(unix)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use qtasks::redis::RedisOptions;
use qtasks::{QueueConfig, QueueTasks, TaskStatus, Uuid};
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use qtasks_test_support::{OwnRedis, recorded_outcomes};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

// -- Worker processes ---------------------------------------------------------------------------

struct Worker(Child);

impl Worker {
    fn spawn(url: &str, prefix: &str, lease_ms: u64, concurrency: usize, log: &Path) -> Self {
        Self::spawn_with(url, prefix, lease_ms, concurrency, log, &[])
    }

    fn spawn_with(
        url: &str,
        prefix: &str,
        lease_ms: u64,
        concurrency: usize,
        log: &Path,
        env: &[(&str, &str)],
    ) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_qtasks-test-redis-worker"))
            .args([prefix, &lease_ms.to_string(), &concurrency.to_string()])
            .env("QTASKS_TEST_REDIS_URL", url)
            .env("QTASKS_TEST_EXEC_LOG", log)
            .env("QTASKS_STOP_TIMEOUT", "5")
            .envs(env.iter().copied())
            .spawn()
            .expect("the worker binary starts");
        Worker(child)
    }

    /// Whether the process has ended (it died), without waiting.
    fn has_died(&mut self) -> bool {
        self.0
            .try_wait()
            .expect("the worker can be polled")
            .is_some()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.0.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {name}");
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    fn stop(mut self) {
        self.signal("-TERM");
        assert!(
            self.0.wait().unwrap().success(),
            "the worker stopped cleanly"
        );
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// -- Accounting ---------------------------------------------------------------------------------

/// Executions per task, from the append-only log.
fn executions(log: &Path) -> HashMap<Uuid, usize> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        if let Some(uuid) = line.split(' ').next().and_then(|u| Uuid::parse_str(u).ok()) {
            *counts.entry(uuid).or_insert(0) += 1;
        }
    }
    counts
}

fn executed(log: &Path) -> usize {
    executions(log).len()
}

/// One scenario's figures, printed as a row of RELIABILITY.md's table.
struct Report {
    scenario: &'static str,
    tasks: usize,
    lost: usize,
    duplicate_outcomes: usize,
    repeated_executions: usize,
    seconds: f64,
}

impl Report {
    fn print(&self) {
        eprintln!(
            "| {} | {} | {} | {} | {} | {:.1} s |",
            self.scenario,
            self.tasks,
            self.lost,
            self.duplicate_outcomes,
            self.repeated_executions,
            self.seconds
        );
    }
}

/// Waits for every task concurrently (each waiter must get its own, right record) and checks
/// the books: none lost, one recorded outcome each; returns the figures.
async fn settle(
    scenario: &'static str,
    app: &QueueTasks,
    redis: &OwnRedis,
    prefix: &str,
    log: &Path,
    tasks: &[(Uuid, String)],
    started: Instant,
) -> Report {
    let lost = wait_all(scenario, app, tasks).await;
    account(scenario, redis, prefix, log, tasks, started, lost).await
}

/// Waits for every task concurrently; returns how many did not end as they should.
async fn wait_all(scenario: &'static str, app: &QueueTasks, tasks: &[(Uuid, String)]) -> usize {
    let waits = tasks.iter().map(|(uuid, label)| {
        let app = app.clone();
        let (uuid, label) = (*uuid, label.clone());
        async move {
            let record = app.wait(uuid, WAIT).await;
            match record {
                Ok(record)
                    if record.status == TaskStatus::Success
                        && record.returning == Some(json!(label)) =>
                {
                    0
                }
                other => {
                    let now = app.get(uuid).await.ok().flatten().map(|r| r.status);
                    eprintln!("{scenario}: task {uuid} ({label}) ended as {other:?}; its record now: {now:?}");
                    1
                }
            }
        }
    });
    futures_util::future::join_all(waits)
        .await
        .into_iter()
        .sum()
}

/// The books, once the faults have stopped: none lost, one recorded outcome each.
async fn account(
    scenario: &'static str,
    redis: &OwnRedis,
    prefix: &str,
    log: &Path,
    tasks: &[(Uuid, String)],
    started: Instant,
    lost: usize,
) -> Report {
    let seconds = started.elapsed().as_secs_f64();
    // The server writes its append-only file at its own pace (with `everysec` it may hold a
    // write back while an fsync runs): read it until every task's outcome is there, or 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let outcomes = loop {
        let outcomes = recorded_outcomes(redis, prefix);
        let complete = tasks.iter().all(|(uuid, _)| outcomes.contains_key(uuid));
        if complete || Instant::now() > deadline {
            break outcomes;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let duplicate_outcomes = outcomes.values().filter(|n| **n > 1).count();
    let missing_outcomes = tasks
        .iter()
        .filter(|(uuid, _)| !outcomes.contains_key(uuid))
        .count();
    let runs = executions(log);
    let repeated_executions = runs.values().filter(|n| **n > 1).count();
    let report = Report {
        scenario,
        tasks: tasks.len(),
        lost: lost + missing_outcomes,
        duplicate_outcomes,
        repeated_executions,
        seconds,
    };
    report.print();
    assert_eq!(report.lost, 0, "{scenario}: no task is lost");
    assert_eq!(
        report.duplicate_outcomes, 0,
        "{scenario}: one recorded outcome per task"
    );
    report
}

/// What every scenario starts with: its own Redis, a key prefix, an execution log, a client.
struct Scenario {
    redis: OwnRedis,
    url: String,
    prefix: String,
    log: PathBuf,
    app: QueueTasks,
}

impl Scenario {
    async fn start(server: &str, prefix: &str, durable: bool) -> Self {
        let redis = OwnRedis::start(server, durable);
        let (url, prefix) = (redis.url(), unique_prefix(prefix));
        let log = redis.dir.join("executions.log");
        let app = client(&url, &prefix).await;
        Scenario {
            redis,
            url,
            prefix,
            log,
            app,
        }
    }
}

async fn client(url: &str, prefix: &str) -> QueueTasks {
    let config = QueueConfig {
        name: prefix.to_owned(),
        ..Default::default()
    };
    qtasks::redis::connect_with(url, config, RedisOptions::default())
        .await
        .expect("the scenario's Redis is up")
}

async fn add_all(
    app: &QueueTasks,
    labels: impl Iterator<Item = String>,
    ms: u64,
) -> Vec<(Uuid, String)> {
    let mut tasks = Vec::new();
    for label in labels {
        let handle = app.add_task("log_run", (&label, ms), ()).await.unwrap();
        tasks.push((handle.uuid(), label));
    }
    tasks
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the fault tests run: they need `redis-server` here, as the Redis tests need Redis.
fn enabled(test: &str) -> bool {
    redis_url(test).is_some()
}

// -- The scenarios --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn sigkill_mid_drain() {
    if !enabled("sigkill_mid_drain") {
        return;
    }
    let Scenario {
        redis,
        url,
        prefix,
        log,
        app,
    } = Scenario::start("fault_kill", "kill", false).await;
    let tasks = add_all(&app, (0..3000).map(|i| format!("k{i}")), 2).await;
    let started = Instant::now();
    let mut workers: Vec<Worker> = (0..3)
        .map(|_| Worker::spawn(&url, &prefix, 2000, 8, &log))
        .collect();
    until("a third ran", || executed(&log) >= 1000).await;
    workers.remove(0).kill();
    let report = settle(
        "SIGKILL of one of 3 workers mid-drain",
        &app,
        &redis,
        &prefix,
        &log,
        &tasks,
        started,
    )
    .await;
    assert!(
        report.repeated_executions <= 8,
        "only the killed worker's tasks in flight run again: {}",
        report.repeated_executions
    );
    workers.into_iter().for_each(Worker::stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn sigstop_past_the_lease_then_sigcont() {
    if !enabled("sigstop_past_the_lease_then_sigcont") {
        return;
    }
    let Scenario {
        redis,
        url,
        prefix,
        log,
        app,
    } = Scenario::start("fault_stop", "stop", false).await;
    let tasks = add_all(&app, (0..300).map(|i| format!("s{i}")), 50).await;
    let started = Instant::now();
    let frozen = Worker::spawn(&url, &prefix, 1000, 8, &log);
    until("the first worker runs", || executed(&log) >= 40).await;
    frozen.signal("-STOP");
    // Past its 1 s lease: another worker takes its tasks over and drains most of the queue.
    let other = Worker::spawn(&url, &prefix, 1000, 8, &log);
    until("the other worker drained most", || executed(&log) >= 200).await;
    frozen.signal("-CONT");
    let report = settle(
        "SIGSTOP of a worker past its lease, then SIGCONT",
        &app,
        &redis,
        &prefix,
        &log,
        &tasks,
        started,
    )
    .await;
    assert!(
        report.repeated_executions <= 8,
        "only the frozen worker's tasks in flight run again: {}",
        report.repeated_executions
    );
    frozen.stop();
    other.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn redis_killed_and_restarted_with_its_append_only_file() {
    if !enabled("redis_killed_and_restarted") {
        return;
    }
    let Scenario {
        mut redis,
        url,
        prefix,
        log,
        app,
    } = Scenario::start("fault_restart", "restart", true).await;
    let started = Instant::now();
    let workers: Vec<Worker> = (0..2)
        .map(|_| Worker::spawn(&url, &prefix, 5000, 8, &log))
        .collect();
    // Clients enqueue throughout; an add that fails during the outage is tried again (a retried
    // add whose first reply was lost would be a second task: the books are kept per uuid).
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let label = format!("r{i}");
        if i == 300 {
            redis.kill();
            tokio::time::sleep(Duration::from_millis(500)).await; // Redis stays down a while
            redis.launch();
        }
        loop {
            match app.add_task("log_run", (&label, 2), ()).await {
                Ok(handle) => {
                    tasks.push((handle.uuid(), label));
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    let report = settle(
        "Redis SIGKILLed and restarted (appendonly, fsync always) under load",
        &app,
        &redis,
        &prefix,
        &log,
        &tasks,
        started,
    )
    .await;
    assert_eq!(
        report.repeated_executions, 0,
        "no worker died: nothing runs twice"
    );
    workers.into_iter().for_each(Worker::stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn client_kill_every_100_ms() {
    if !enabled("client_kill_every_100_ms") {
        return;
    }
    let Scenario {
        redis,
        url,
        prefix,
        log,
        app,
    } = Scenario::start("fault_clientkill", "clientkill", false).await;
    let tasks = add_all(&app, (0..2000).map(|i| format!("c{i}")), 1).await;
    let started = Instant::now();
    let workers: Vec<Worker> = (0..2)
        .map(|_| Worker::spawn(&url, &prefix, 5000, 8, &log))
        .collect();
    let killer = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut con = qtasks_test_support::redis::raw_connection(&url).await;
            let mut kills = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                for kind in ["normal", "pubsub"] {
                    let killed: redis::RedisResult<i64> = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("TYPE")
                        .arg(kind)
                        .arg("SKIPME")
                        .arg("yes")
                        .query_async(&mut con)
                        .await;
                    kills += killed.unwrap_or(0);
                }
                if kills > 10_000 {
                    return;
                }
            }
        })
    };
    let scenario = "CLIENT KILL of every connection every 100 ms";
    let lost = wait_all(scenario, &app, &tasks).await;
    killer.abort();
    let report = account(scenario, &redis, &prefix, &log, &tasks, started, lost).await;
    assert_eq!(
        report.repeated_executions, 0,
        "no worker died: nothing runs twice"
    );
    workers.into_iter().for_each(Worker::stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_five_megabyte_argument() {
    if !enabled("a_five_megabyte_argument") {
        return;
    }
    let Scenario {
        redis: _redis, // kept alive until the end of the test
        url,
        prefix,
        log,
        app,
    } = Scenario::start("fault_big", "big", false).await;
    let worker = Worker::spawn(&url, &prefix, 30_000, 2, &log);
    let started = Instant::now();
    let text = "x".repeat(5 * 1024 * 1024);
    let handle = app.add_task("measure", (&text,), ()).await.unwrap();
    let done = handle.wait(WAIT).await.unwrap();
    assert_eq!(
        (done.status, done.returning),
        (TaskStatus::Success, Some(json!(text.len())))
    );
    assert_eq!(
        done.args,
        vec![json!(text)],
        "the argument reads back whole"
    );
    Report {
        scenario: "a 5 MB argument",
        tasks: 1,
        lost: 0,
        duplicate_outcomes: 0,
        repeated_executions: 0,
        seconds: started.elapsed().as_secs_f64(),
    }
    .print();
    worker.stop();
}

/// How many times Redis ran a command, from `INFO commandstats`.
async fn calls(url: &str, command: &str) -> u64 {
    let mut con = qtasks_test_support::redis::raw_connection(url).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut con)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn waiters_do_not_poll_while_the_workers_publish() {
    if !enabled("waiters_do_not_poll_while_the_workers_publish") {
        return;
    }
    let Scenario {
        redis: _redis, // kept alive until the end of the test
        url,
        prefix,
        log,
        app,
    } = Scenario::start("fault_waits", "waits", false).await;
    // 300 tasks of 3 s each, all running at once on one Rust worker, 300 waiters.
    let worker = Worker::spawn(&url, &prefix, 30_000, 300, &log);
    // Barrier: the worker is alive and has said that it publishes its results.
    let mut con = qtasks_test_support::redis::raw_connection(&url).await;
    let deadline = Instant::now() + WAIT;
    while !redis::cmd("EXISTS")
        .arg(format!("{prefix}:qtasks:publishing"))
        .query_async::<bool>(&mut con)
        .await
        .unwrap()
    {
        assert!(Instant::now() < deadline, "the worker never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tasks = add_all(&app, (0..300).map(|i| format!("w{i}")), 3000).await;
    // Barrier: all 300 taken. The take reads each record with `HGETALL` inside its script,
    // which `INFO commandstats` counts too: only the waiters' reads are counted below.
    let leases = format!("{prefix}:qtasks:leases");
    while redis::cmd("ZCARD")
        .arg(&leases)
        .query_async::<usize>(&mut con)
        .await
        .unwrap()
        < 300
    {
        assert!(
            Instant::now() < deadline,
            "the worker never took all 300 tasks"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = calls(&url, "hgetall").await;
    let started = Instant::now();
    let lost = wait_all("300 waiters of 3 s tasks", &app, &tasks).await;
    let reads = calls(&url, "hgetall").await - before;
    eprintln!(
        "| 300 waiters of 3 s tasks | {} record reads ({:.1} per waiter) | {:.1} s |",
        reads,
        reads as f64 / 300.0,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lost, 0);
    // One read when the wait starts, one when the message arrives (a polling waiter would add
    // one per second: four or more each).
    assert!(reads <= 300 * 2 + 30, "{reads} reads for 300 waiters");
    worker.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn sigterm_with_long_tasks_running() {
    if !enabled("sigterm_with_long_tasks_running") {
        return;
    }
    let Scenario {
        redis,
        url,
        prefix,
        log,
        app,
    } = Scenario::start("fault_sigterm", "sigterm", false).await;
    let tasks = add_all(&app, (0..40).map(|i| format!("t{i}")), 1500).await;
    let started = Instant::now();
    let leaving = Worker::spawn(&url, &prefix, 30_000, 8, &log);
    let staying = Worker::spawn(&url, &prefix, 30_000, 8, &log);
    until("both workers run tasks", || executed(&log) >= 16).await;
    // A graceful stop: the leaving worker's running tasks finish (1.5 s, within its 5 s stop
    // timeout) and are recorded once; the rest of the queue goes to the other worker.
    leaving.stop();
    let report = settle(
        "SIGTERM of a worker with 1.5 s tasks running",
        &app,
        &redis,
        &prefix,
        &log,
        &tasks,
        started,
    )
    .await;
    assert_eq!(
        report.repeated_executions, 0,
        "a graceful stop runs nothing twice"
    );
    staying.stop();
}

/// `GET path` on the dashboard at `port`: (status, body).
async fn dashboard_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the dashboard answers while Redis is down")
    .unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// The dashboard while its Redis is killed and started again: it answers, says what is wrong,
/// and comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn the_dashboard_through_a_redis_outage() {
    if !enabled("the_dashboard_through_a_redis_outage") {
        return;
    }
    let Scenario { mut redis, app, .. } = Scenario::start("dashboard", "dashboard", true).await;
    for i in 0..3 {
        app.add_task("log_run", (format!("waits {i}"), 0), ())
            .await
            .unwrap();
    }
    let port = qtasks::web::Web::new(app.clone())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    let (status, body) = dashboard_get(port, "/tasks").await;
    assert_eq!(status, 200);
    assert_eq!(body.matches("s-new").count(), 3, "{body}");

    redis.kill();
    let (status, body) = dashboard_get(port, "/api/v1/tasks").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("redis"), "{body}");
    let (status, body) = dashboard_get(port, "/tasks").await;
    assert_eq!(status, 200);
    assert!(body.contains("Listing failed"), "{body}");
    let (status, body) = dashboard_get(port, "/api/v1/stats").await;
    assert_eq!(status, 503, "{body}");

    redis.launch();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = dashboard_get(port, "/tasks").await;
        if status == 200 && body.matches("s-new").count() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_task_that_kills_its_worker_ends_after_max_deliveries() {
    if !enabled("a_task_that_kills_its_worker_ends_after_max_deliveries") {
        return;
    }
    let Scenario {
        redis: _redis, // kept alive until the end of the test
        url,
        prefix,
        log,
        app,
    } = Scenario::start("fault_crash", "crash", false).await;
    // Three good tasks on each side of one that aborts its process, all queued before the
    // workers start, so the first take's batch holds them together.
    let mut tasks = add_all(&app, (0..3).map(|i| format!("before{i}")), 50).await;
    let crash = app.add_task("crash", ("crash",), ()).await.unwrap().uuid();
    tasks.extend(add_all(&app, (0..3).map(|i| format!("after{i}")), 50).await);
    // Two workers, restarted whenever they die (as a supervisor would).
    let spawn = || {
        Worker::spawn_with(
            &url,
            &prefix,
            1000,
            8,
            &log,
            &[("QTASKS_MAX_DELIVERIES", "3")],
        )
    };
    let mut workers = vec![spawn(), spawn()];
    let mut restarts = 0;
    let deadline = Instant::now() + WAIT;
    let ended = loop {
        assert!(Instant::now() < deadline, "the crashing task never ended");
        for worker in &mut workers {
            if worker.has_died() {
                restarts += 1;
                *worker = spawn();
            }
        }
        let record = app.get(crash).await.unwrap().expect("its record is kept");
        if record.status.is_final() {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ended.status, TaskStatus::Error);
    let reason = ended.traceback.unwrap_or_default();
    assert!(reason.starts_with("DeliveryLimit:"), "{reason}");
    let crashes = executions(&log).get(&crash).copied().unwrap_or(0);
    assert!(
        (1..=3).contains(&crashes),
        "run at most max_deliveries times: {crashes}"
    );
    // The tasks taken beside it ran, each to one outcome.
    for (uuid, label) in &tasks {
        let done = app.wait(*uuid, WAIT).await.unwrap();
        assert_eq!(
            (done.status, done.returning),
            (TaskStatus::Success, Some(json!(label)))
        );
    }
    println!(
        "a task that aborts its worker: run {crashes} times, {restarts} worker restarts, then `error` (DeliveryLimit); {} tasks beside it ran",
        tasks.len()
    );
    workers.into_iter().for_each(Worker::stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_cancel_whose_message_is_lost_still_ends_the_task_cancelled() {
    if !enabled("a_cancel_whose_message_is_lost_still_ends_the_task_cancelled") {
        return;
    }
    let Scenario {
        redis: _redis, // kept alive until the end of the test
        url,
        prefix,
        log,
        app,
    } = Scenario::start("fault_lostcancel", "lostcancel", false).await;
    let worker = Worker::spawn(&url, &prefix, 1500, 4, &log);
    let tasks = add_all(&app, (0..3).map(|i| format!("long{i}")), 6000).await;
    until("all three run", || executed(&log) == 3).await;
    // No connection may subscribe any more, and the workers' subscriptions are cut: every
    // cancel message from now on is lost.
    let mut con = qtasks_test_support::redis::raw_connection(&url).await;
    let _: () = redis::cmd("ACL")
        .arg(
            &[
                "SETUSER",
                "default",
                "-subscribe",
                "-psubscribe",
                "-ssubscribe",
            ][..],
        )
        .query_async(&mut con)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"][..])
        .query_async(&mut con)
        .await
        .unwrap();
    for (uuid, _) in &tasks {
        assert!(
            app.cancel(*uuid, "lost message").await.unwrap(),
            "a running task can be cancelled"
        );
    }
    // Waiters cannot be told either: read the records until they end.
    for (uuid, label) in &tasks {
        let deadline = Instant::now() + WAIT;
        let record = loop {
            let record = app.get(*uuid).await.unwrap().unwrap();
            if record.status.is_final() {
                break record;
            }
            assert!(Instant::now() < deadline, "{label} never ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            (record.status, record.cancel_reason.as_deref()),
            (TaskStatus::Cancel, Some("lost message")),
            "a `true` cancel of a running task ends it `cancel`"
        );
    }
    worker.kill();
}
