//! The two-process quickstart as the README walks through it, against the machine's Redis:
//! the worker binary (`qtasks::cli::main`) in one process, the producer in another, the
//! worker's own command line adding a task from the shell, and the worker's log on stderr.
//! Then the mistake it guards against: a worker binary that never names its tasks crate says
//! so when it starts, and with each task it cannot run.

use std::process::{Command, Output};

use qtasks_test_support::{LoggedProcess, redis_url, unique_prefix};

const WORKER: &str = env!("CARGO_BIN_EXE_shop-worker");
const PRODUCER: &str = env!("CARGO_BIN_EXE_shop-producer");
const UNLINKED_WORKER: &str = env!("CARGO_BIN_EXE_shop-worker-unlinked");

/// A worker process of the app `app`, its log (stderr) in a file.
fn start_worker(binary: &str, url: &str, app: &str) -> LoggedProcess {
    let mut command = Command::new(binary);
    command
        .arg("worker")
        // A setting from the environment (`QueueConfig::from_env`, applied by `cli::main`).
        .env("QTASKS_MAX_TASKS_PROCESS", "4")
        .env("QTASKS_URL", url)
        .env("QTASKS_NAME", app)
        .env_remove("RUST_LOG");
    LoggedProcess::spawn(command, app)
}

fn run(binary: &str, url: &str, app: &str, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .env("QTASKS_URL", url)
        .env("QTASKS_NAME", app)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}; stdout {stdout:?}; stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
fn a_producer_and_a_worker_in_two_processes() {
    let Some(url) = redis_url("a_producer_and_a_worker_in_two_processes") else {
        return;
    };
    let app = unique_prefix("two-process");
    let worker = start_worker(WORKER, &url, &app);
    worker.wait_for_log("worker starting");
    assert!(
        worker.log().contains(" concurrency=4 "),
        "QTASKS_MAX_TASKS_PROCESS is applied: {}",
        worker.log()
    );

    let said = succeeded(&run(PRODUCER, &url, &app, &[]));
    assert!(said.contains("order 42 totals 1649 cents"), "{said}");
    assert!(
        said.contains("receipt for order 42 sent to ann@example.com"),
        "{said}"
    );

    // The worker binary carries the whole command line: `add` from the shell, by name.
    let order = r#"{"id": 7, "items": [100, 23]}"#;
    let said = succeeded(&run(
        WORKER,
        &url,
        &app,
        &["add", "shop.total", order, "--wait", "10"],
    ));
    assert_eq!(said.trim(), "123");
    // The standalone `qtasks` binary too, as the README runs it (`QTASKS_CLI_BIN`: CI points it
    // at the workspace's build of `qtasks-cli`).
    match std::env::var("QTASKS_CLI_BIN") {
        Ok(qtasks) => {
            let said = succeeded(&run(
                &qtasks,
                &url,
                &app,
                &["add", "shop.total", order, "--wait", "10"],
            ));
            assert_eq!(said.trim(), "123");
        }
        Err(_) => eprintln!("QTASKS_CLI_BIN is not set: the standalone `qtasks add` is not run"),
    }
    let said = succeeded(&run(WORKER, &url, &app, &["inspect"]));
    assert!(
        said.contains("shop.total") && said.contains("shop.send_receipt"),
        "{said}"
    );

    // A cancel from the task itself is exit code 1 for a waiting shell, with the reason.
    let empty = r#"[{"id": 8, "items": []}, "bob@example.com"]"#;
    let output = run(
        WORKER,
        &url,
        &app,
        &["add", "shop.send_receipt", empty, "--wait", "10"],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("an empty order gets no receipt"));

    let log = worker.terminate();
    assert!(
        log.contains("totalling"),
        "the task's own log line is there:\n{log}"
    );
    assert!(!log.contains("no task is registered"), "{log}");
}

#[test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
fn a_worker_that_never_names_its_tasks_crate_says_so() {
    let Some(url) = redis_url("a_worker_that_never_names_its_tasks_crate_says_so") else {
        return;
    };
    let app = unique_prefix("unlinked");
    // A task waits before the worker starts.
    let uuid = succeeded(&run(
        WORKER,
        &url,
        &app,
        &["add", "shop.total", r#"{"id": 1, "items": []}"#],
    ));
    let worker = start_worker(UNLINKED_WORKER, &url, &app);
    worker.wait_for_log("worker starting");
    // None of the example's tasks is registered, and the worker says so as it starts. Built
    // alone (as a user's workspace builds it, and CI's step for this example), the binary
    // registers no task at all; in a workspace build with every feature on, the conformance
    // suite's tasks are linked in, and the warning is that none of the waiting tasks is.
    let log = worker.log();
    let starting = log
        .lines()
        .find(|line| line.contains("worker starting"))
        .unwrap_or_else(|| panic!("{log}"));
    if starting.contains(" tasks=0 ") {
        worker.wait_for_log("no task is registered in this binary");
    } else {
        worker.wait_for_log(
            "none of the tasks waiting in the queue (`shop.total`; queues served: default) is registered in this binary",
        );
    }
    assert!(
        worker.log().contains("use my_tasks as _;"),
        "{}",
        worker.log()
    );

    // The task it takes is handed back, not failed, and the hand-back says why.
    worker.wait_for_log("UnknownTask: task `shop.total` is not registered in this worker");
    worker.wait_for_log("the binary must name that crate (`use my_tasks as _;`)");
    let record = succeeded(&run(WORKER, &url, &app, &["--json", "get", uuid.trim()]));
    assert!(
        record.contains(r#""status":"new""#) || record.contains(r#""status": "new""#),
        "{record}"
    );
    worker.terminate();
}
