//! The command line, driven as a user drives it: the real `qtasks` binary and a worker binary
//! built on `qtasks::cli::run_with` (as a worker binary is on `qtasks::cli::main`), against the machine's Redis.
//!
//! The worker binary is this test binary itself, started again with [`WORKER_ARGS`] set: its
//! `worker_process` entry then runs the command line over the tasks below, as a user's worker
//! binary does (a test binary has no `main` of its own to give).

use std::io::{BufRead, Read, Write};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use qtasks_test_support::LoggedProcess;
use qtasks_test_support::amqp_url;
use qtasks_test_support::free_port;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use serde_json::Value;

const QTASKS: &str = env!("CARGO_BIN_EXE_qtasks");

/// The command line of the worker process this binary runs as (a JSON list, `argv` included).
const WORKER_ARGS: &str = "QTASKS_CLI_TEST_WORKER_ARGS";

/// Adds two numbers.
#[qtasks::task]
async fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// Sleeps (a cancel stops it where it waits).
#[qtasks::task(echo = true)]
async fn sleep_for(ctx: qtasks::TaskContext, seconds: f64) -> f64 {
    ctx.sleep(Duration::from_secs_f64(seconds)).await;
    seconds
}

/// Fails with a message.
#[qtasks::task]
async fn fail(message: String) -> qtasks::TaskResult<()> {
    Err(qtasks::TaskError::msg(message))
}

/// Runs every night at four (UTC): a schedule `inspect` shows.
#[qtasks::task(cron = "0 0 4 * * *")]
async fn nightly_cleanup() {}

/// Panics (the worker fails this task, logs one line, and goes on).
#[qtasks::task]
async fn explode() -> u32 {
    panic!("the task blew up on purpose")
}

/// The worker process's entry: with [`WORKER_ARGS`] set, runs the command line over this
/// binary's tasks, as a worker binary's `main` does, and exits with its code; a no-op in a
/// test run.
#[test]
fn worker_process() {
    let Ok(args) = std::env::var(WORKER_ARGS) else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&args).expect("a JSON list of arguments");
    let cli = <qtasks::cli::Cli as clap::Parser>::parse_from(args);
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let code = runtime.block_on(async {
        let config = qtasks::QueueConfig {
            name: cli.app.clone(),
            ..qtasks::QueueConfig::default()
        };
        match qtasks::redis::connect_with(&cli.url, config, Default::default()).await {
            Ok(app) => qtasks::cli::run_with(app, cli).await,
            Err(error) => qtasks::cli::finish(Err(qtasks::cli::Failure::from(error))),
        }
    });
    drop(runtime);
    std::process::exit(i32::from(code != std::process::ExitCode::SUCCESS));
}

/// `qtasks ARGS` for the app `prefix`, with `stdin` written to its input.
fn qtasks_with_input(url: &str, prefix: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(QTASKS)
        .args(args)
        .env("QTASKS_URL", url)
        .env("QTASKS_NAME", prefix)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the qtasks binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn qtasks(url: &str, prefix: &str, args: &[&str]) -> Output {
    qtasks_with_input(url, prefix, args, "")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `qtasks ARGS`, expects exit code `code`, returns stdout.
#[track_caller]
fn expect(url: &str, prefix: &str, args: &[&str], code: i32) -> String {
    let output = qtasks(url, prefix, args);
    assert_eq!(
        output.status.code(),
        Some(code),
        "qtasks {args:?}: stdout {:?}, stderr {:?}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Repeats `check` until it holds (the worker acts on its own time).
#[track_caller]
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET http://127.0.0.1:port/path; returns the body.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_owned()
}

/// One sample of an exposition: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// The samples of an OpenMetrics text exposition: `(name, labels, value)`. Fails on a line
/// that is not a comment, a sample or the closing `# EOF`.
fn parse_exposition(text: &str) -> Vec<Sample> {
    assert!(text.trim_end().ends_with("# EOF"), "no # EOF: {text}");
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("labels end with }");
                let labels = inner
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, quoted) = pair.split_once('=').expect("label=value");
                        (key.to_owned(), quoted.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name: {line}"
        );
        samples.push((name, labels, value));
    }
    samples
}

fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, value)| *value)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

/// A worker binary (this test binary's `worker_process`) of the app `prefix`.
struct Worker {
    process: LoggedProcess,
}

impl Worker {
    fn start(url: &str, prefix: &str, metrics_port: u16) -> Worker {
        let args = serde_json::json!([
            "worker_cli",
            "worker",
            "--concurrency",
            "2",
            "--metrics",
            format!("127.0.0.1:{metrics_port}"),
        ]);
        let mut command = Command::new(std::env::current_exe().expect("this test binary"));
        command
            .args(["--exact", "worker_process", "--nocapture"])
            .env(WORKER_ARGS, args.to_string())
            .env("QTASKS_URL", url)
            .env("QTASKS_NAME", prefix)
            .env_remove("RUST_LOG");
        Worker {
            process: LoggedProcess::spawn(command, &format!("{prefix}.worker")),
        }
    }

    /// Stops it as a service manager does (SIGTERM) and returns its log.
    fn stop(self) -> String {
        self.process.terminate()
    }
}

#[test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
fn operate_a_queue_from_the_shell() {
    let Some(url) = redis_url("operate_a_queue_from_the_shell") else {
        return;
    };
    let prefix = unique_prefix("cli");
    let (url, prefix) = (url.as_str(), prefix.as_str());

    // No worker yet: `ping` says so with exit code 1.
    expect(url, prefix, &["ping"], 1);
    let port = free_port();
    let worker = Worker::start(url, prefix, port);
    eventually("the worker answers ping", || {
        qtasks(url, prefix, &["ping"]).status.code() == Some(0)
    });

    // Add and wait in one go; the result on stdout, nothing else (piped: no spinner).
    assert_eq!(
        expect(url, prefix, &["add", "add", "[2, 3]", "--wait", "30"], 0),
        "5"
    );
    let added = json(&expect(
        url,
        prefix,
        &["add", "add", "[40]", "--kwargs", r#"{"b": 2}"#, "--json"],
        0,
    ));
    let sum = added["uuid"].as_str().unwrap().to_owned();
    assert_eq!(expect(url, prefix, &["wait", &sum], 0), "42");
    let record = json(&expect(url, prefix, &["get", &sum, "--json"], 0));
    assert_eq!(record["task_name"], "add");
    assert_eq!(record["status"], "success");
    assert_eq!(record["returning"], 42);
    // Which worker ran it, and for how long.
    assert!(
        record["worker"].as_str().is_some_and(|w| !w.is_empty()),
        "{record}"
    );
    assert!(
        record["started_at"].as_f64().unwrap() <= record["finished_at"].as_f64().unwrap(),
        "{record}"
    );
    let shown = expect(url, prefix, &["get", &sum], 0);
    assert!(
        shown.contains("worker") && shown.contains("runtime"),
        "{shown}"
    );

    // A failure and a panic: exit code 1, the reason on stderr.
    let failing = expect(url, prefix, &["add", "fail", r#"["it broke"]"#], 0);
    let output = qtasks(url, prefix, &["wait", &failing]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("it broke"), "{}", stderr(&output));
    let exploding = expect(url, prefix, &["add", "explode"], 0);
    let output = qtasks(url, prefix, &["wait", &exploding]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("blew up on purpose"),
        "{}",
        stderr(&output)
    );

    // Cancel a running task.
    let sleeping = expect(url, prefix, &["add", "sleep_for", "[60]"], 0);
    eventually("the sleeper runs", || {
        json(&expect(url, prefix, &["get", &sleeping, "--json"], 0))["status"] == "process"
    });
    expect(url, prefix, &["cancel", &sleeping, "enough"], 0);
    let output = qtasks(url, prefix, &["wait", &sleeping, "--timeout", "30"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("cancelled: enough"),
        "{}",
        stderr(&output)
    );
    // Cancelling it again: it has ended.
    expect(url, prefix, &["cancel", &sleeping], 1);

    // Recent tasks, filtered.
    let failed = json(&expect(
        url,
        prefix,
        &["tasks", "--status", "error", "--json"],
        0,
    ));
    let failed: Vec<&str> = failed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uuid"].as_str().unwrap())
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed.contains(&failing.as_str()) && failed.contains(&exploding.as_str()));
    let table = expect(
        url,
        prefix,
        &["tasks", "--name", "add", "--since", "10m"],
        0,
    );
    assert_eq!(table.lines().count(), 3, "a header and two tasks:\n{table}");
    assert!(table.starts_with("UUID"));

    // Stats and workers match what was done.
    let stats = json(&expect(url, prefix, &["stats", "--json"], 0));
    let queue = &stats["queue"];
    assert_eq!(queue["finished"]["success"], 2, "{stats}");
    assert_eq!(queue["finished"]["error"], 2, "{stats}");
    assert_eq!(queue["finished"]["cancel"], 1, "{stats}");
    assert_eq!(queue["running"], 0, "{stats}");
    assert_eq!(queue["finished_last_minute"], 5, "{stats}");
    // (A worker refreshes its description every 2 seconds.)
    eventually("the worker's description counts its tasks", || {
        let workers = json(&expect(url, prefix, &["workers", "--json"], 0));
        let workers = workers.as_array().unwrap();
        assert_eq!(workers.len(), 1);
        assert_eq!(workers[0]["pid"], worker.process.child.id());
        assert_eq!(workers[0]["concurrency"], 2);
        workers[0]["processed"] == 5
    });
    let human = expect(url, prefix, &["stats"], 0);
    assert!(
        human.contains("finished") && human.contains("success 2"),
        "{human}"
    );

    // `stats --watch` writes one JSON object per line when piped.
    let mut watch = Command::new(QTASKS)
        .args(["stats", "--watch", "--json"])
        .env("QTASKS_URL", url)
        .env("QTASKS_NAME", prefix)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(watch.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(json(&first)["queue"]["finished"]["success"], 2);

    // Prometheus metrics from the worker.
    let samples = parse_exposition(&http_get(port, "/metrics"));
    let finished = "qtasks_tasks_finished_total";
    assert_eq!(
        sample(
            &samples,
            finished,
            &[("task", "add"), ("status", "success")]
        ),
        2.0
    );
    assert_eq!(
        sample(&samples, finished, &[("task", "fail"), ("status", "error")]),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            finished,
            &[("task", "sleep_for"), ("status", "cancel")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "qtasks_task_duration_seconds_count",
            &[("task", "add")]
        ),
        2.0
    );
    assert_eq!(sample(&samples, "qtasks_worker_up", &[]), 1.0);
    assert_eq!(sample(&samples, "qtasks_workers", &[]), 1.0);
    assert_eq!(sample(&samples, "qtasks_tasks_running", &[]), 0.0);
    assert_eq!(sample(&samples, "qtasks_lease_losses_total", &[]), 0.0);
    assert_eq!(sample(&samples, "qtasks_dead_letters", &[]), 0.0);

    // The worker's schedules: listed, paused and resumed from the shell.
    let listed = json(&expect(url, prefix, &["schedule", "list", "--json"], 0));
    let nightly = &listed[0];
    assert_eq!(nightly["name"], "nightly_cleanup", "{listed}");
    assert!(nightly["next_at"].as_f64().is_some(), "{listed}");
    assert_eq!(nightly["paused"], false);
    expect(url, prefix, &["schedule", "pause", "nightly_cleanup"], 0);
    let listed = json(&expect(url, prefix, &["schedule", "--json"], 0));
    assert_eq!(listed[0]["paused"], true, "{listed}");
    expect(url, prefix, &["schedule", "resume", "nightly_cleanup"], 0);
    expect(url, prefix, &["schedule", "pause", "no_such_schedule"], 1);
    // Run once now, from a process without the schedule's code: the task is added and runs.
    let ran = expect(url, prefix, &["schedule", "run", "nightly_cleanup"], 0);
    expect(url, prefix, &["wait", &ran], 0);
    let output = qtasks(url, prefix, &["schedule", "run", "no_such_schedule"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no schedule `no_such_schedule`"),
        "{}",
        stderr(&output)
    );

    // Named queues: a task added to a queue this worker does not serve waits there; the
    // queue is listed, paused and resumed from the shell.
    let billed = expect(
        url,
        prefix,
        &["add", "add", "[1, 2]", "--queue", "billing"],
        0,
    );
    let billed = billed.trim();
    expect(url, prefix, &["queues", "pause", "billing"], 0);
    let listed = json(&expect(url, prefix, &["queues", "--json"], 0));
    assert_eq!(listed["billing"]["waiting"], 1, "{listed}");
    assert_eq!(listed["billing"]["paused"], true, "{listed}");
    assert_eq!(listed["default"]["paused"], false, "{listed}");
    let table = expect(url, prefix, &["queues"], 0);
    assert!(
        table.contains("billing") && table.contains("paused"),
        "{table}"
    );
    expect(url, prefix, &["queues", "resume", "billing"], 0);
    let listed = json(&expect(url, prefix, &["queues", "list", "--json"], 0));
    assert_eq!(listed["billing"]["paused"], false, "{listed}");
    let record = json(&expect(url, prefix, &["get", billed, "--json"], 0));
    assert_eq!(
        record["status"], "new",
        "not served by this worker: {record}"
    );
    assert_eq!(record["queue"], "billing", "{record}");
    let refused = qtasks(
        url,
        prefix,
        &["add", "add", "[1, 2]", "--queue", "bill|ing"],
    );
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        stderr(&refused).contains("queue `bill|ing`"),
        "{}",
        stderr(&refused)
    );

    let stats = json(&expect(url, prefix, &["stats", "--json"], 0));
    assert_eq!(stats["schedules"][0]["name"], "nightly_cleanup", "{stats}");

    // `flush` asks first; "n" keeps everything, "y" deletes it.
    let output = qtasks_with_input(url, prefix, &["flush"], "n\n");
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("nothing was deleted"));
    expect(url, prefix, &["get", &sum], 0);

    // The worker logs one start line and one stop line, and the panic once.
    let log = worker.stop();
    assert_eq!(log.matches("worker starting").count(), 1, "{log}");
    assert_eq!(log.matches("worker stopped").count(), 1, "{log}");
    // (The count of tasks includes the conformance suite's, linked into this package's bins.)
    assert!(
        log.contains(" tasks=") && log.contains("concurrency=2"),
        "{log}"
    );
    assert_eq!(log.matches("blew up on purpose").count(), 1, "{log}");
    assert!(
        log.contains("attempt=1"),
        "task spans carry the attempt:\n{log}"
    );
    assert!(
        !log.contains("panicked at"),
        "the default panic hook printed too:\n{log}"
    );

    let output = qtasks_with_input(url, prefix, &["flush"], "y\n");
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    expect(url, prefix, &["get", &sum], 1);
}

#[test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
fn retry_delete_purge_at_and_dead_letters_from_the_shell() {
    let Some(url) = redis_url("retry_delete_purge_at_and_dead_letters_from_the_shell") else {
        return;
    };
    let prefix = unique_prefix("cli-ops");
    let (url, prefix) = (url.as_str(), prefix.as_str());
    let worker = Worker::start(url, prefix, free_port());
    eventually("the worker answers ping", || {
        qtasks(url, prefix, &["ping"]).status.code() == Some(0)
    });

    // Retry a failed task: a new attempt, linked both ways; it fails again here.
    let failing = expect(url, prefix, &["add", "fail", r#"["it broke"]"#], 0);
    expect(url, prefix, &["wait", &failing], 1);
    let attempt = expect(url, prefix, &["retry", &failing], 0);
    assert_ne!(attempt, failing);
    expect(url, prefix, &["wait", &attempt], 1);
    let first = json(&expect(url, prefix, &["get", &failing, "--json"], 0));
    assert_eq!(first["retry_child_uuid"], attempt.as_str(), "{first}");
    // The first attempt was retried already: refused, saying to retry the latest.
    let output = qtasks(url, prefix, &["retry", &failing]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("retry its latest attempt"),
        "{}",
        stderr(&output)
    );

    // Delete a finished task's record; then it is gone; a waiting task is refused.
    assert!(expect(url, prefix, &["delete", &attempt], 0).contains("deleted"));
    expect(url, prefix, &["get", &attempt], 1);
    expect(url, prefix, &["delete", &attempt], 1);

    // A wait that gives up is exit code 4, not the failure's 1.
    let sleeping = expect(url, prefix, &["add", "sleep_for", "[60]"], 0);
    let output = qtasks(url, prefix, &["wait", &sleeping, "--timeout", "0.3"]);
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    expect(url, prefix, &["cancel", &sleeping], 0);

    // `add --at`: a due time in an hour; then `purge` cancels what waits in the queue, the
    // delayed task included, and leaves other queues alone.
    let in_an_hour = (qtasks::backend::unix_now() + 3600.0).to_string();
    let later = expect(
        url,
        prefix,
        &["add", "add", "[1, 2]", "--at", &in_an_hour],
        0,
    );
    let record = json(&expect(url, prefix, &["get", &later, "--json"], 0));
    assert_eq!(record["status"], "new", "{record}");
    let due = record["run_at"].as_f64().expect("a due time");
    assert!(
        (due - in_an_hour.parse::<f64>().unwrap()).abs() < 1.0,
        "{record}"
    );
    let elsewhere = expect(
        url,
        prefix,
        &["add", "add", "[3, 4]", "--queue", "other"],
        0,
    );
    let at_rfc3339 = "2099-01-01T00:00:00+03:00";
    let far = expect(
        url,
        prefix,
        &["add", "add", "[5, 6]", "--at", at_rfc3339],
        0,
    );
    let output = qtasks(url, prefix, &["add", "add", "[1]", "--at", "tomorrow"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("RFC 3339"), "{}", stderr(&output));
    let purged = json(&expect(url, prefix, &["purge", "--yes", "--json"], 0));
    assert_eq!(purged["purged"], 2, "{purged}");
    for uuid in [&later, &far] {
        let record = json(&expect(url, prefix, &["get", uuid, "--json"], 0));
        assert_eq!(record["status"], "cancel", "{record}");
        assert_eq!(record["cancel_reason"], "purged", "{record}");
    }
    let other = json(&expect(url, prefix, &["get", &elsewhere, "--json"], 0));
    assert_eq!(other["status"], "new", "{other}");
    // Unconfirmed: exit code 2, nothing cancelled.
    let output = qtasks_with_input(url, prefix, &["purge", "--queue", "other"], "n\n");
    assert_eq!(output.status.code(), Some(2));
    let other = json(&expect(url, prefix, &["get", &elsewhere, "--json"], 0));
    assert_eq!(other["status"], "new", "{other}");

    // Dead letters by id: bytes that are no task are set aside with the reason; the id the
    // list shows acts on that letter, a wrong id on none.
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_connection().unwrap();
    redis::cmd("RPUSH")
        .arg(format!("{prefix}:task_queue"))
        .arg(b"\xff not a task".as_slice())
        .exec(&mut connection)
        .unwrap();
    redis::cmd("RPUSH")
        .arg(format!("{prefix}:task_queue"))
        .arg("neither:is-this")
        .exec(&mut connection)
        .unwrap();
    let mut letters = Vec::new();
    eventually("both are set aside", || {
        letters = json(&expect(url, prefix, &["dead", "list", "--json"], 0))
            .as_array()
            .unwrap()
            .clone();
        letters.len() == 2
    });
    let ids: Vec<String> = letters
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.iter().all(|id| id.len() == 10), "{ids:?}");
    let table = expect(url, prefix, &["dead", "list"], 0);
    assert!(
        table.starts_with("ID") && table.contains(&ids[0]),
        "{table}"
    );
    let output = qtasks(url, prefix, &["dead", "drop", "0123456789"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no dead letter `0123456789`"),
        "{}",
        stderr(&output)
    );
    assert!(expect(url, prefix, &["dead", "drop", &ids[1][..6]], 0).contains("dropped 1"));
    let left = json(&expect(url, prefix, &["dead", "list", "--json"], 0));
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(
        left[0]["id"],
        ids[0].as_str(),
        "the other letter keeps its id: {left}"
    );
    assert!(expect(url, prefix, &["dead", "drop", "--all"], 0).contains("dropped 1"));

    // Completion scripts need no backend.
    let output = Command::new(QTASKS)
        .args(["--url", "nosuch://", "completions", "bash"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let script = String::from_utf8_lossy(&output.stdout);
    assert!(script.contains("_qtasks()"), "{script}");
    // The binary has no worker: its completions do not offer what it would refuse.
    assert!(
        script.contains("purge") && !script.contains("inspect"),
        "{script}"
    );
    worker.stop();
}

#[test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
fn mistakes_get_their_exit_code_and_a_message_naming_them() {
    // Unreachable: exit code 3, the address named, the password never shown.
    let output = Command::new(QTASKS)
        .args(["--url", "redis://operator:hunter2@127.0.0.1:1/0", "stats"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("127.0.0.1:1"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");

    // Usage: exit code 2. (The last two are read once connected.)
    let url = redis_url("mistakes_get_their_exit_code_and_a_message_naming_them");
    let mut cases = vec![
        (
            &["--url", "nats://127.0.0.1/", "stats"][..],
            "no engine for `nats://` is compiled into this binary",
        ),
        (&["worker"][..], "compiled into your own binary"),
        (&["timer"][..], "compiled into your own binary"),
        (&["no-such-command"][..], "unrecognized subcommand"),
    ];
    if url.is_some() {
        cases.push((&["get", "not-a-uuid"][..], "is not a task uuid"));
        cases.push((&["tasks", "--since", "2 weeks"][..], "is not a unit of"));
    }
    for (args, says) in cases {
        let mut command = Command::new(QTASKS);
        if let Some(url) = &url {
            command.env("QTASKS_URL", url);
        }
        let output = command.args(args).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(says),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
fn the_binary_operates_a_rabbitmq_queue_with_redis_storage() {
    let test = "the_binary_operates_a_rabbitmq_queue_with_redis_storage";
    let (Some(amqp), Some(redis)) = (amqp_url(test), redis_url(test)) else {
        return;
    };
    let prefix = unique_prefix("cli_amqp");
    let run = |args: &[&str]| {
        let output = Command::new(QTASKS)
            .args(args)
            .env("QTASKS_URL", &amqp)
            .env("QTASKS_STORAGE_URL", &redis)
            .env("QTASKS_NAME", &prefix)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "qtasks {args:?}: {}",
            stderr(&output)
        );
        stdout(&output)
    };
    // No worker: the task waits in RabbitMQ, its record on Redis.
    let uuid = run(&["add", "echo", "[1]", "--priority", "2"]);
    let record = json(&run(&["get", &uuid, "--json"]));
    assert_eq!(record["status"], "new", "{record}");
    let stats = json(&run(&["stats", "--json"]));
    assert_eq!(stats["queue"]["waiting"]["2"], 1, "{stats}");
    assert_eq!(stats["queue"]["dead_letters"], 0, "{stats}");
    run(&["cancel", &uuid]);
    let record = json(&run(&["get", &uuid, "--json"]));
    assert_eq!(record["status"], "cancel", "{record}");
    run(&["flush", "--yes"]);
}

#[test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
fn the_binary_serves_grpc_until_sigterm() {
    let Some(url) = redis_url("the_binary_serves_grpc_until_sigterm") else {
        return;
    };
    let prefix = unique_prefix("cli_grpc");
    let port = free_port();
    let mut server = Command::new(QTASKS)
        .args(["grpc", "--bind", &format!("127.0.0.1:{port}")])
        .env("QTASKS_URL", &url)
        .env("QTASKS_NAME", &prefix)
        .env_remove("RUST_LOG")
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (added, got) = runtime.block_on(async {
        use qtasks::grpc::proto::q_tasks_service_client::QTasksServiceClient;
        use qtasks::grpc::proto::{AddTaskRequest, GetTaskRequest};
        let address = format!("http://127.0.0.1:{port}");
        let mut client = loop {
            match QTasksServiceClient::connect(address.clone()).await {
                Ok(client) => break client,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let added = client
            .add_task(AddTaskRequest {
                name: "echo".into(),
                args_json: "[1]".into(),
                ..AddTaskRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        let got = client
            .get_task(GetTaskRequest {
                uuid: added.uuid.clone(),
                include_result: false,
            })
            .await
            .unwrap()
            .into_inner();
        (added, got)
    });
    assert!(added.ok, "{added:?}");
    assert_eq!(got.status, "new", "no worker runs: it waits on Redis");
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.wait().unwrap();
    assert!(exit.success(), "stopped cleanly on SIGTERM: {exit:?}");
    expect(&url, &prefix, &["flush", "--yes"], 0);
}

#[test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
fn the_binary_refuses_grpc_beyond_loopback_without_a_token() {
    let Some(url) = redis_url("the_binary_refuses_grpc_beyond_loopback_without_a_token") else {
        return;
    };
    let prefix = unique_prefix("cli_grpc_refused");
    let run = |args: &[&str]| {
        Command::new(QTASKS)
            .args(args)
            .env("QTASKS_URL", &url)
            .env("QTASKS_NAME", &prefix)
            .env_remove("QTASKS_GRPC_TOKEN")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    // Beyond loopback without a token: refused, exit code 2, saying how to fix it.
    for bind in ["0.0.0.0:0", "[::]:0"] {
        let output = run(&["grpc", "--bind", bind]);
        assert_eq!(output.status.code(), Some(2), "{bind}: {}", stderr(&output));
        assert!(
            stderr(&output).contains("without a token") && stderr(&output).contains("--token"),
            "{}",
            stderr(&output)
        );
    }
    // A certificate without its key, and files that are not there: exit code 2, named.
    let output = run(&["grpc", "--tls-cert", "server.crt"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("--tls-key"), "{}", stderr(&output));
    let output = run(&[
        "grpc",
        "--bind",
        "127.0.0.1:0",
        "--tls-cert",
        "/nonexistent/server.crt",
        "--tls-key",
        "/nonexistent/server.key",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("/nonexistent/server.crt"),
        "{}",
        stderr(&output)
    );
}

#[test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
fn the_binary_serves_grpc_over_tls_to_token_holders() {
    let Some(url) = redis_url("the_binary_serves_grpc_over_tls_to_token_holders") else {
        return;
    };
    let prefix = unique_prefix("cli_grpc_tls");
    let certificates = qtasks_test_support::grpc::test_certificates();
    let cert = std::env::temp_dir().join(format!("{prefix}.crt"));
    let key = std::env::temp_dir().join(format!("{prefix}.key"));
    std::fs::write(&cert, &certificates.cert).unwrap();
    std::fs::write(&key, &certificates.key).unwrap();
    let port = free_port();
    let mut server = Command::new(QTASKS)
        .args(["grpc", "--bind", &format!("127.0.0.1:{port}"), "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("QTASKS_URL", &url)
        .env("QTASKS_NAME", &prefix)
        .env("QTASKS_GRPC_TOKEN", "t0ken")
        .env_remove("RUST_LOG")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (refused, added) = runtime.block_on(async {
        use qtasks::grpc::proto::AddTaskRequest;
        use qtasks::grpc::proto::q_tasks_service_client::QTasksServiceClient;
        let deadline = Instant::now() + Duration::from_secs(30);
        let channel = loop {
            match qtasks_test_support::grpc::grpc_tls_channel(port, &certificates.ca).await {
                Ok(channel) => break channel,
                Err(error) => {
                    assert!(Instant::now() < deadline, "never served TLS: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let mut client = QTasksServiceClient::new(channel);
        let add = || AddTaskRequest {
            name: "echo".into(),
            args_json: "[1]".into(),
            ..AddTaskRequest::default()
        };
        let refused = client.add_task(add()).await.unwrap_err();
        let added = client
            .add_task(qtasks_test_support::grpc::with_token(add(), "t0ken"))
            .await
            .unwrap()
            .into_inner();
        (refused, added)
    });
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(added.ok && !added.uuid.is_empty(), "{added:?}");
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(
        server.wait().unwrap().success(),
        "stopped cleanly on SIGTERM"
    );
    let _ = std::fs::remove_file(&cert);
    let _ = std::fs::remove_file(&key);
    expect(&url, &prefix, &["flush", "--yes"], 0);
}

#[test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
fn the_binary_serves_the_web_api_with_a_token_and_refuses_the_network_without_one() {
    let Some(url) = redis_url("the_binary_serves_the_web_api") else {
        return;
    };
    let prefix = unique_prefix("cli_web");
    // Beyond loopback without a token: refused, exit code 2, saying how to fix it.
    let output = Command::new(QTASKS)
        .args(["web", "--bind", "0.0.0.0:0"])
        .env("QTASKS_URL", &url)
        .env("QTASKS_NAME", &prefix)
        .env_remove("QTASKS_WEB_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("without a token"),
        "{}",
        stderr(&output)
    );

    let port = free_port();
    let mut server = Command::new(QTASKS)
        .args(["web", "--bind", &format!("127.0.0.1:{port}")])
        .env("QTASKS_URL", &url)
        .env("QTASKS_NAME", &prefix)
        .env("QTASKS_WEB_TOKEN", "t0ken")
        .env_remove("RUST_LOG")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let request = |path: &str, token: &str| -> String {
        let mut stream = loop {
            match std::net::TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => break stream,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    };
    assert!(request("/api/v1/stats", "nope").starts_with("HTTP/1.1 401"));
    let answer = request("/api/v1/stats", "t0ken");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!("\"app\":\"{prefix}\"")),
        "{answer}"
    );
    // The dashboard's pages and their compiled-in assets, from the same binary.
    let page = request("/", "t0ken");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<h1>Overview</h1>"), "{page}");
    let css = request("/assets/app.css", "t0ken");
    assert!(
        css.starts_with("HTTP/1.1 200") && css.contains("prefers-color-scheme"),
        "{css}"
    );
    // The metrics beside the dashboard (the web crate does not depend on the metrics crate:
    // the command composes them), behind the same token.
    assert!(request("/metrics", "nope").starts_with("HTTP/1.1 401"));
    let metrics = request("/metrics", "t0ken");
    assert!(
        metrics.starts_with("HTTP/1.1 200") && metrics.contains("qtasks_tasks_running"),
        "{metrics}"
    );
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(
        server.wait().unwrap().success(),
        "stopped cleanly on SIGTERM"
    );
}

#[test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
fn times_out_of_any_range_in_a_record_are_shown_not_a_panic() {
    let Some(url) = redis_url("times_out_of_any_range_in_a_record") else {
        return;
    };
    let prefix = unique_prefix("cli_badtime");
    let (url, prefix) = (url.as_str(), prefix.as_str());
    // Written by another producer: `created_at` a time 1e300 seconds ago, `updated_at` in the
    // year 1e300 (the age of such a time once panicked the binary: `Duration::from_secs_f64`).
    let uuid = qtasks::Uuid::new_v4();
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_connection().unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}:{uuid}"))
        .arg(
            &[
                "task_name",
                "add",
                "priority",
                "0",
                "args",
                "[1, 2]",
                "kwargs",
                "{}",
                "created_at",
                "-1e300",
                "updated_at",
                "1e300",
                "status",
                "error",
            ][..],
        )
        .query(&mut con)
        .unwrap();
    let shown = expect(url, prefix, &["get", &uuid.to_string()], 0);
    assert!(shown.contains(&uuid.to_string()), "{shown}");
    expect(url, prefix, &["tasks"], 0);
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}:{uuid}"))
        .query(&mut con)
        .unwrap();
}

#[test]
fn an_environment_that_is_not_utf8_is_no_panic() {
    use std::os::unix::ffi::OsStrExt;
    let raw = std::ffi::OsStr::from_bytes(b"\xff\xfe not text");
    // Someone else's variable: ignored.
    let output = Command::new(QTASKS)
        .args(["--url", "memory://", "stats", "--json"])
        .env("SOMEONE_ELSES", raw)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // One of ours: a usage error naming it.
    let output = Command::new(QTASKS)
        .args(["--url", "memory://", "stats"])
        .env("QTASKS_MAX_TASKS_PROCESS", raw)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("QTASKS_MAX_TASKS_PROCESS") && stderr(&output).contains("UTF-8"),
        "{}",
        stderr(&output)
    );
}

#[test]
#[ignore = "needs PostgreSQL (QTASKS_TEST_POSTGRES_URL)"]
fn the_command_line_speaks_postgres_urls() {
    let Some(base) = qtasks_test_support::postgres_url("the_command_line_speaks_postgres_urls")
    else {
        return;
    };
    let schema = qtasks_test_support::pg_schema("cli");
    let url = format!("{base}?schema={schema}");
    let prefix = unique_prefix("cli_pg");
    let (url, prefix) = (url.as_str(), prefix.as_str());
    // The binary connects by the URL's scheme, makes the schema, and keeps the task.
    expect(url, prefix, &["ping"], 1);
    let added = json(&expect(
        url,
        prefix,
        &["add", "report", "[2026]", "--json"],
        0,
    ));
    let uuid = added["uuid"].as_str().unwrap().to_owned();
    let record = json(&expect(url, prefix, &["get", &uuid, "--json"], 0));
    assert_eq!(record["status"], "new");
    assert_eq!(record["args"], serde_json::json!([2026]));
    expect(url, prefix, &["cancel", &uuid], 0);
    let record = json(&expect(url, prefix, &["get", &uuid, "--json"], 0));
    assert_eq!(record["status"], "cancel");
    let output = Command::new("psql")
        .args([
            base.as_str(),
            "-qc",
            &format!("DROP SCHEMA \"{schema}\" CASCADE"),
        ])
        .output()
        .expect("psql runs");
    assert!(output.status.success(), "{output:?}");
}

/// The standalone binary has no worker: its help lists only what it can do, and the completion
/// scripts of every shell offer the same (no backend is needed for either).
#[test]
fn the_standalone_help_and_completions_offer_only_what_it_can_do() {
    let output = Command::new(QTASKS).arg("--help").output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let help = String::from_utf8_lossy(&output.stdout).into_owned();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .unwrap_or_else(|| panic!("a list of commands in {help}"))
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    for offered in [
        "add",
        "get",
        "wait",
        "retry",
        "delete",
        "purge",
        "dead",
        "completions",
    ] {
        assert!(commands.contains(&offered), "`{offered}` in {commands:?}");
    }
    for hidden in ["worker", "inspect", "timer"] {
        assert!(!commands.contains(&hidden), "`{hidden}` in {commands:?}");
    }
    for (shell, marker) in [
        ("bash", "_qtasks()"),
        ("zsh", "#compdef qtasks"),
        ("fish", "complete -c qtasks"),
    ] {
        let output = Command::new(QTASKS)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("purge"), "{shell}: {script}");
        assert!(
            !script.contains("inspect"),
            "{shell} offers `inspect`: {script}"
        );
    }
}
