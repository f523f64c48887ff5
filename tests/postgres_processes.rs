//! PostgreSQL with worker processes of the test worker binary (`tests/bin/redis_worker.rs`
//! with `QTASKS_TEST_WORKER_POSTGRES`): a worker SIGKILLed mid-task, a worker SIGSTOPped past
//! its lease, every connection of the app terminated by the server under load, and a server
//! of the test's own restarted under load. Each test has a schema (or a server) of its own.

#![cfg(unix)]

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use qtasks::postgres::PostgresOptions;
use qtasks::postgres::sqlx::{self, AssertSqlSafe, Executor, PgPool};
use qtasks::{QueueConfig, QueueTasks, TaskHandle, TaskStatus};
use qtasks_test_support::{OwnPostgres, WAIT, pg_schema, postgres_url, unique_prefix};
use support::WorkerProcess;

/// A test's app name, schema, URL (the schema in it) and execution log.
struct Setup {
    prefix: String,
    schema: String,
    url: String,
    base_url: String,
    exec_log: PathBuf,
    _dir: TempDir,
}

impl Setup {
    fn new(base_url: &str, test: &str) -> Setup {
        let schema = pg_schema(test);
        let dir = TempDir::new(test);
        Setup {
            prefix: unique_prefix(test),
            url: format!("{base_url}?schema={schema}"),
            base_url: base_url.to_owned(),
            exec_log: dir.0.join("exec.log"),
            schema,
            _dir: dir,
        }
    }

    /// A client app (no worker) with this lease.
    async fn client(&self, lease: Duration) -> QueueTasks {
        let config = QueueConfig {
            name: self.prefix.clone(),
            ..QueueConfig::default()
        };
        let options = PostgresOptions {
            lease,
            ..PostgresOptions::default()
        };
        qtasks::postgres::connect_with(&self.url, config, options)
            .await
            .expect("connecting the client")
    }

    /// A worker process with this lease and concurrency.
    fn worker(&self, lease_ms: u64, concurrency: usize) -> WorkerProcess {
        WorkerProcess::spawn(
            &self.prefix,
            lease_ms,
            concurrency,
            &[
                ("QTASKS_TEST_WORKER_POSTGRES", &self.url),
                (
                    "QTASKS_TEST_EXEC_LOG",
                    self.exec_log.to_str().expect("utf-8"),
                ),
            ],
        )
    }

    /// How many times each task ran, from the execution log (`uuid label pid` lines).
    fn runs(&self) -> HashMap<String, Vec<u32>> {
        let log = std::fs::read_to_string(&self.exec_log).unwrap_or_default();
        let mut runs: HashMap<String, Vec<u32>> = HashMap::new();
        for line in log.lines() {
            let mut parts = line.split(' ');
            if let (Some(uuid), Some(_label), Some(pid)) =
                (parts.next(), parts.next(), parts.next())
            {
                runs.entry(uuid.to_owned())
                    .or_default()
                    .push(pid.parse().unwrap_or(0));
            }
        }
        runs
    }

    async fn wait_for_runs(&self, at_least: usize) {
        let started = Instant::now();
        while self.runs().len() < at_least {
            assert!(started.elapsed() < WAIT, "{at_least} tasks never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Drops the test's schema. A connection of a worker that is still going away (or an
    /// app's maintenance) may hold a lock the drop needs, and PostgreSQL may then pick the drop
    /// as a deadlock's victim: it is tried again, a few times.
    async fn drop_schema(&self) {
        let pool = PgPool::connect(&self.base_url).await.expect("connecting");
        let mut tries = 0;
        loop {
            let dropped = pool
                .execute(AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                    self.schema
                )))
                .await;
            match dropped {
                Ok(_) => return,
                Err(error) if tries < 5 => {
                    tries += 1;
                    eprintln!("dropping the test's schema failed ({error}); again in a moment");
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                Err(error) => panic!("dropping the test's schema: {error}"),
            }
        }
    }
}

/// A directory of the test's own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique_prefix(test));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn add_logged(app: &QueueTasks, count: usize, ms: u64) -> Vec<TaskHandle> {
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        handles.push(
            app.add_task("log_run", (format!("t{i}"), ms), ())
                .await
                .expect("adding"),
        );
    }
    handles
}

async fn all_succeed(handles: &[TaskHandle]) {
    for handle in handles {
        let record = handle.wait(WAIT).await.expect("the task ends");
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    }
}

fn signal(worker: &WorkerProcess, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &worker.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn the_tasks_of_a_killed_worker_run_on_another_and_none_is_lost() {
    let Some(base) = postgres_url("pg_the_tasks_of_a_killed_worker_run_on_another") else {
        return;
    };
    let setup = Setup::new(&base, "pg_sigkill");
    let client = setup.client(Duration::from_secs(2)).await;
    let handles = add_logged(&client, 40, 300).await;
    let mut victim = setup.worker(2000, 4);
    setup.wait_for_runs(6).await;
    victim.0.kill().expect("SIGKILL");
    victim.0.wait().expect("reaped");
    let started_before = setup.runs().len();
    let _survivor = setup.worker(2000, 4);
    all_succeed(&handles).await;
    let runs = setup.runs();
    assert_eq!(runs.len(), 40, "every task ran");
    let again = runs.values().filter(|pids| pids.len() == 2).count();
    eprintln!(
        "pg sigkill: 40 tasks, 0 lost, {started_before} started before the kill, {again} ran again"
    );
    assert!(again >= 1, "the killed worker's tasks ran again");
    assert!(runs.values().all(|pids| pids.len() <= 2), "{runs:?}");
    setup.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn a_worker_stopped_past_its_lease_cannot_overwrite_the_run_that_took_over() {
    let Some(base) = postgres_url("pg_a_worker_stopped_past_its_lease") else {
        return;
    };
    let setup = Setup::new(&base, "pg_sigstop");
    let client = setup.client(Duration::from_secs(1)).await;
    let stalled = setup.worker(1000, 1);
    let handle = client
        .add_task("log_run", ("long", 2500), ())
        .await
        .expect("adding");
    setup.wait_for_runs(1).await;
    signal(&stalled, "STOP");
    // Past the lease (1 s), another worker takes the task over and runs it to its end.
    let taker = setup.worker(1000, 1);
    let record = handle.wait(WAIT).await.expect("the task ends");
    assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    let taker_pid = taker.0.id().to_string();
    let worker = record.worker.as_deref().unwrap_or_default().to_owned();
    assert!(
        worker.contains(&format!(":{taker_pid}:")),
        "the record names the run that took over ({taker_pid}): {worker}"
    );
    // The stalled worker wakes, its run ends, and its outcome is refused: the record keeps
    // the taker's.
    signal(&stalled, "CONT");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after = client
        .get(handle.uuid())
        .await
        .expect("get")
        .expect("record");
    assert_eq!(after.worker.as_deref(), Some(worker.as_str()), "{after:?}");
    assert_eq!(after.finished_at, record.finished_at, "{after:?}");
    let runs = setup.runs();
    let pids = runs
        .get(&handle.uuid().to_string())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        pids.len(),
        2,
        "ran by the stalled worker and the taker: {pids:?}"
    );
    setup.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
async fn every_connection_terminated_under_load_loses_no_task() {
    let Some(base) = postgres_url("pg_every_connection_terminated_under_load") else {
        return;
    };
    let setup = Setup::new(&base, "pg_terminate");
    let client = setup.client(Duration::from_secs(5)).await;
    let _workers = [setup.worker(5000, 4), setup.worker(5000, 4)];
    let handles = add_logged(&client, 300, 5).await;
    let admin = PgPool::connect(&base).await.expect("connecting");
    // The workers' and the client's connections, their listeners among them, cut three times
    // while the tasks drain.
    let mut terminated = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE application_name = $1 AND pid <> pg_backend_pid()",
        )
        .bind(format!("qtasks/{}", setup.schema))
        .fetch_all(&admin)
        .await
        .expect("terminating");
        terminated += cut.len();
    }
    assert!(
        terminated > 0,
        "no connection of the app was found to terminate"
    );
    all_succeed(&handles).await;
    let runs = setup.runs();
    assert_eq!(runs.len(), 300, "every task ran");
    eprintln!(
        "pg terminate: 300 tasks, {terminated} connections cut, {} ran again",
        runs.values().filter(|pids| pids.len() > 1).count()
    );
    setup.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL) and its Debian cluster tools"]
async fn a_server_restarted_under_load_loses_no_task() {
    // The machine's server must be there (this test's skip rule), and its tools make one of
    // the test's own.
    if postgres_url("pg_a_server_restarted_under_load").is_none() {
        return;
    }
    let Some(server) = OwnPostgres::start() else {
        assert!(
            !qtasks_test_support::services::on_ci(),
            "pg_createcluster failed, and CI is set"
        );
        qtasks_test_support::services::skipped(
            "pg_a_server_restarted_under_load",
            "pg_createcluster failed (run as root or postgres)",
        );
        return;
    };
    let setup = Setup::new(&server.url(), "pg_restart");
    let client = setup.client(Duration::from_secs(3)).await;
    let _workers = [setup.worker(3000, 4), setup.worker(3000, 4)];
    let handles = add_logged(&client, 200, 10).await;
    setup.wait_for_runs(20).await;
    server.ctl(&["restart", "-m", "fast"]);
    setup.wait_for_runs(120).await;
    server.ctl(&["restart", "-m", "immediate"]);
    all_succeed(&handles).await;
    let runs = setup.runs();
    assert_eq!(runs.len(), 200, "every task ran");
    eprintln!(
        "pg restart: 200 tasks through a fast and an immediate restart, {} ran again",
        runs.values().filter(|pids| pids.len() > 1).count()
    );
}
