//! Interoperability with Python QTasks 1.7.3 on one Redis, in both directions, against the
//! real package (installed by this test into a virtual environment under the target dir).

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::{TaskContext, TaskResult, TaskStatus};
use qtasks_test_support::amqp_url;
use qtasks_test_support::kafka_url;
use qtasks_test_support::redis::redis_app;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use serde_json::{Value, json};

/// With its RabbitMQ extra (aio-pika), for the RabbitMQ test; grpcio and protobuf are added
/// for the gRPC one (the marker names them so an older environment is made again).
const PYTHON_QTASKS: &str = "qtasks[rabbitmq]==1.7.3";
const PYTHON_MARKER: &str =
    "qtasks[rabbitmq]==1.7.3 grpcio grpcio-health-checking grpcio-reflection protobuf aiokafka";

/// The Python of a virtual environment with QTasks 1.7.3, made on first use.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-qtasks-1.7.3");
        let python = venv.join("bin/python");
        let ready = venv.join(".installed");
        if std::fs::read_to_string(&ready).ok().as_deref() != Some(PYTHON_MARKER) {
            let run = |command: &mut Command| {
                let status = command.status().expect("the command starts");
                assert!(status.success(), "{command:?} failed: {status}");
            };
            run(Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv));
            run(Command::new(venv.join("bin/pip")).args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                PYTHON_QTASKS,
                // The original's gRPC stubs need these; it does not declare them.
                "grpcio>=1.76",
                "grpcio-health-checking>=1.76",
                "grpcio-reflection>=1.76",
                "protobuf>=6.31",
                // The original's Kafka broker imports it; it does not declare it either.
                "aiokafka>=0.11",
            ]));
            std::fs::write(&ready, PYTHON_MARKER).unwrap();
        }
        python
    })
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(name)
}

#[qtasks::task]
async fn interop_add(a: i64, b: i64) -> i64 {
    a + b
}

#[qtasks::task]
async fn interop_greet(who: String) -> String {
    format!("привет, {who} ✓")
}

#[qtasks::task]
async fn interop_fail() -> TaskResult<()> {
    Err(qtasks::TaskError::msg("ошибка: bad input"))
}

#[qtasks::task(echo = true)]
async fn interop_cancel(ctx: TaskContext, reason: String) -> TaskResult<()> {
    Err(ctx.cancel(reason))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_python_client_uses_a_rust_worker() {
    let Some(url) = redis_url("a_python_client_uses_a_rust_worker") else {
        return;
    };
    let prefix = unique_prefix("py_client");
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let app = redis_app(&url, &prefix, RedisOptions::default(), 4).await;
    app.start().await.unwrap();

    let output = tokio::process::Command::new(python)
        .arg(script("client.py"))
        .args([&url, &prefix])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "client.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_slice(&output.stdout).expect("client.py prints JSON");

    assert_eq!(got["add"]["status"], "success");
    assert_eq!(got["add"]["returning"], 7);
    assert_eq!(got["add"]["args"], json!([2]));
    assert_eq!(got["add"]["kwargs"], json!({"b": 5}));
    assert_eq!(got["unicode"]["returning"], "привет, мир ✓");
    assert_eq!(got["error"]["status"], "error");
    assert_eq!(got["error"]["traceback"], "TaskError: ошибка: bad input");
    assert_eq!(got["cancel"]["status"], "cancel");
    assert_eq!(got["cancel"]["cancel_reason"], "не нужно");
    assert_eq!(got["get"]["status"], "success");
    assert_eq!(got["get"]["returning"], 2);
    assert_eq!(got["get"]["priority"], 3);

    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

/// The Python worker process, ended when dropped.
struct PythonWorker(Child);

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_rust_client_uses_a_python_worker() {
    let Some(url) = redis_url("a_rust_client_uses_a_python_worker") else {
        return;
    };
    let prefix = unique_prefix("py_worker");
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let _worker = PythonWorker(
        Command::new(python)
            .arg(script("worker.py"))
            .args([&url, &prefix])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // A client only: no Rust worker takes these tasks.
    let app = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let wait = Duration::from_secs(60);

    let mul = app.add_task("py_mul", (6, 7), ()).await.unwrap();
    let greet = app
        .add_task("py_greet", ("мир",), json!({"punctuation": "?"}))
        .await
        .unwrap();
    let fail = app.add_task("py_fail", (), ()).await.unwrap();

    let mul = mul.wait(wait).await.unwrap();
    assert_eq!(
        (mul.status, mul.returning),
        (TaskStatus::Success, Some(json!(42)))
    );
    assert_eq!(mul.args, [json!(6), json!(7)]);
    let greet = greet.wait(wait).await.unwrap();
    assert_eq!(greet.returning, Some(json!({"text": "привет, мир?"})));
    let fail = fail.wait(wait).await.unwrap();
    assert_eq!(fail.status, TaskStatus::Error);
    let traceback = fail.traceback.unwrap();
    assert!(traceback.contains("ValueError: bad value"), "{traceback}");

    app.flush_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and Redis (QTASKS_TEST_AMQP_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_python_rabbitmq_producer_reaches_a_rust_worker() {
    let test = "a_python_rabbitmq_producer_reaches_a_rust_worker";
    let (Some(amqp), Some(redis)) = (amqp_url(test), redis_url(test)) else {
        return;
    };
    let prefix = unique_prefix("py_amqp");
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    // The queue declared as the original declares it (no priorities, no expiry), so both
    // sides can use it; the test deletes it at the end.
    let options = qtasks::rabbitmq::RabbitMqOptions::default().as_the_original();
    let config = qtasks::QueueConfig {
        name: prefix.clone(),
        ..qtasks::QueueConfig::default()
    };
    let app =
        qtasks::rabbitmq::connect_with(&amqp, qtasks::redis::Redis::new(&redis), config, options)
            .await
            .unwrap();
    app.start().await.unwrap();

    let output = tokio::process::Command::new(python)
        .arg(script("amqp_client.py"))
        .args([&amqp, &redis, &prefix])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "amqp_client.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_slice(&output.stdout).expect("amqp_client.py prints JSON");
    let uuid: qtasks::Uuid = got["uuid"].as_str().unwrap().parse().unwrap();
    // The original writes the record before it publishes: a plain wait finds it.
    let record = app
        .wait(uuid, qtasks_test_support::WAIT)
        .await
        .expect("the Rust worker ran the Python producer's task");
    assert_eq!(
        (record.status, record.returning),
        (TaskStatus::Success, Some(json!(7)))
    );
    // The original writes the record's arguments as Python reprs (its bug): kept raw, named.
    assert_eq!(
        record.unreadable.get("args").map(String::as_str),
        Some("(2,)")
    );
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
    delete_queues(
        &amqp,
        &[
            &format!("{prefix}:task_queue"),
            &format!("{prefix}:qtasks:dead"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and Redis (QTASKS_TEST_KAFKA_URL, QTASKS_TEST_REDIS_URL)"]
async fn a_python_kafka_producer_reaches_a_rust_worker() {
    let test = "a_python_kafka_producer_reaches_a_rust_worker";
    let (Some(kafka), Some(redis)) = (kafka_url(test), redis_url(test)) else {
        return;
    };
    let prefix = unique_prefix("py_kafka");
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let config = qtasks::QueueConfig {
        name: prefix.clone(),
        ..qtasks::QueueConfig::default()
    };
    // The Rust side makes the topic (the original's producer would leave it to the server).
    let app = qtasks::kafka::connect_with(
        &kafka,
        qtasks::redis::Redis::new(&redis),
        config,
        qtasks::kafka::KafkaOptions::default(),
    )
    .await
    .unwrap();
    app.start().await.unwrap();

    let output = tokio::process::Command::new(python)
        .arg(script("kafka_client.py"))
        .args([&kafka, &redis, &prefix])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "kafka_client.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_slice(&output.stdout).expect("kafka_client.py prints JSON");
    assert_eq!(
        got["topic"],
        format!("{prefix}_task_queue"),
        "the original's topic"
    );
    let uuid: qtasks::Uuid = got["uuid"].as_str().unwrap().parse().unwrap();
    // The original's message is `name:uuid:priority` alone; the arguments are in the record it
    // wrote first, as Python reprs (`(2,)`, `{'b': 5}`), which the worker reads as literals.
    let record = app
        .wait(uuid, qtasks_test_support::WAIT)
        .await
        .expect("the Rust worker ran the Python producer's task");
    assert_eq!(
        (record.status, record.returning),
        (TaskStatus::Success, Some(json!(7)))
    );
    app.stop().await.unwrap();
    app.flush_all().await.unwrap();
}

async fn delete_queues(amqp: &str, queues: &[&str]) {
    use lapin::options::QueueDeleteOptions;
    let connection = lapin::Connection::connect(amqp, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for queue in queues {
        channel
            .queue_delete((*queue).into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    connection.close(200, "done".into()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_grpc_client_with_the_originals_stubs_uses_the_rust_server() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let app = qtasks::QueueTasks::new();
    app.start().await.unwrap();
    let (address, stop) = qtasks_test_support::grpc::serve_grpc(&app).await;
    let address = address.to_string();

    let output = tokio::process::Command::new(python)
        .arg(script("grpc_client.py"))
        .arg(&address)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "grpc_client.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_slice(&output.stdout).expect("grpc_client.py prints JSON");
    assert_eq!(got["add"]["ok"], true, "{got}");
    assert_eq!(got["add"]["result_json"], "7", "{got}");
    assert_eq!(got["get"]["status"], "success", "{got}");
    assert_eq!(got["get"]["result_json"], "7", "{got}");
    assert_eq!(got["fail"]["ok"], false, "{got}");
    assert_eq!(
        got["fail"]["error"], "TaskError: ошибка: bad input",
        "{got}"
    );
    assert_eq!(got["bad_json"], "INVALID_ARGUMENT", "{got}");
    let _ = stop.send(());
    app.stop().await.unwrap();
}
