//! A worker process stops gracefully on Ctrl-C (SIGINT) and SIGTERM: the running task
//! finishes and is stored before the process exits 0. A second signal stops it at once: the
//! running task is handed back to the queue.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn stop_worker_with(signal: &str) {
    let mut worker = Command::new(env!("CARGO_BIN_EXE_qtasks-test-worker"))
        .arg("500")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the worker binary starts");
    let mut lines = BufReader::new(worker.stdout.take().expect("stdout is piped")).lines();
    let first = lines
        .next()
        .expect("the worker prints a line")
        .expect("stdout is readable");
    assert_eq!(first, "running");

    let sent = Command::new("kill")
        .args([signal, &worker.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());

    let status = worker.wait().expect("the worker exits");
    let rest: Vec<String> = lines
        .map(|line| line.expect("stdout is readable"))
        .collect();
    assert!(status.success(), "exit status {status:?}, output {rest:?}");
    assert_eq!(
        rest,
        ["stopping", "stopped: success Some(String(\"finished\"))"]
    );
}

/// The signal tests' worker process, its standard output read line by line.
struct TestWorker {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl TestWorker {
    /// `qtasks-test-worker ARGS` with these variables.
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_qtasks-test-worker"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the worker binary starts");
        let lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        TestWorker { child, lines }
    }

    fn next_line(&mut self) -> String {
        self.lines
            .next()
            .expect("the worker prints a line")
            .expect("stdout is readable")
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
    }
}

#[test]
fn a_second_signal_stops_at_once_and_hands_the_running_task_back() {
    // A task of a minute, and the default 30 s stop timeout: only the second signal can make
    // this worker exit within the test.
    let mut worker = TestWorker::start(&["60000"], &[]);
    assert_eq!(worker.next_line(), "running");
    worker.signal("-TERM");
    assert_eq!(worker.next_line(), "stopping", "the graceful stop began");
    worker.signal("-INT");
    assert_eq!(
        worker.next_line(),
        "stopped: new None",
        "handed back, waiting again"
    );
    assert!(worker.child.wait().expect("the worker exits").success());
}

#[test]
fn ctrl_c_stops_the_worker_after_the_running_task() {
    stop_worker_with("-INT");
}

#[test]
fn sigterm_stops_the_worker_after_the_running_task() {
    stop_worker_with("-TERM");
}

#[test]
fn a_second_signal_ends_the_process_even_while_a_plain_fn_task_runs() {
    // A plain `fn` task of a minute: its thread cannot be stopped, and the runtime would wait
    // for it when `main` returns. The second signal must end the process within the stop
    // timeout (1 s here) all the same.
    let mut worker = TestWorker::start(&["60000", "blocking"], &[("QTASKS_STOP_TIMEOUT", "1")]);
    assert_eq!(worker.next_line(), "running");
    worker.signal("-TERM");
    assert_eq!(worker.next_line(), "stopping", "the graceful stop began");
    worker.signal("-TERM");
    assert_eq!(worker.next_line(), "stopped: new None", "handed back");
    // Well past the 1 s stop timeout, far short of the task's minute.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = worker.child.try_wait().expect("the worker can be polled") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = worker.child.kill();
            panic!("the worker still runs 20 s after its second signal");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "forced: exit code 1");
}
