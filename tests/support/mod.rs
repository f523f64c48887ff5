//! Helpers shared by the Redis tests.

#![allow(dead_code)] // each test binary uses a different part

pub(crate) mod own_rabbitmq;
pub(crate) mod own_redis;
pub(crate) mod proxy;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::{QueueConfig, QueueTasks};

/// The Redis URL of the machine, or `None`: locally, a test without a reachable Redis is
/// skipped with a line on stderr. When `CI` is set, a missing or unreachable Redis fails the
/// test instead, so a green CI run always means the Redis tests ran.
pub(crate) fn redis_url(test: &str) -> Option<String> {
    service_url("Redis", "QTASKS_TEST_REDIS_URL", 6379, test)
}

/// The RabbitMQ URL of the machine (`QTASKS_TEST_AMQP_URL`), or `None`, as [`redis_url`].
pub(crate) fn amqp_url(test: &str) -> Option<String> {
    service_url("RabbitMQ", "QTASKS_TEST_AMQP_URL", 5672, test)
}

fn service_url(service: &str, variable: &str, default_port: u16, test: &str) -> Option<String> {
    let on_ci = std::env::var_os("CI").is_some_and(|value| !value.is_empty());
    let url = match std::env::var(variable) {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(!on_ci, "{test}: {variable} is not set, and CI is");
            eprintln!("skipped {test}: {variable} is not set");
            return None;
        }
    };
    if let Err(reason) = reachable(&url, default_port) {
        assert!(
            !on_ci,
            "{test}: {service} at {url} is unreachable ({reason}), and CI is set"
        );
        eprintln!("skipped {test}: {service} at {url} is unreachable ({reason})");
        return None;
    }
    Some(url)
}

/// Whether something answers on the host and port of a server URL.
fn reachable(url: &str, default_port: u16) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    };
    let address = host_port
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A key prefix (app name) no other test uses, also across processes and runs.
pub(crate) fn unique_prefix(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "qt_{test}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// An app on Redis under its own prefix.
pub(crate) async fn redis_app(
    url: &str,
    prefix: &str,
    options: RedisOptions,
    concurrency: usize,
) -> QueueTasks {
    let config = QueueConfig {
        name: prefix.to_owned(),
        max_tasks_process: concurrency,
        ..Default::default()
    };
    qtasks::redis::connect_with(url, config, options)
        .await
        .expect("Redis is reachable")
}

pub(crate) async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// What a worker that died mid-task leaves on Redis: a `process` record for `task_name(args)`
/// and a lease that ends at `lease_deadline_ms` (Unix milliseconds; 0 has run out already).
pub(crate) async fn plant_taken_task(
    url: &str,
    prefix: &str,
    task_name: &str,
    args: &str,
    lease_deadline_ms: i64,
) -> qtasks::Uuid {
    use redis::AsyncCommands;
    let uuid = qtasks::Uuid::new_v4();
    let mut con = raw_connection(url).await;
    let record = [
        ("task_name", task_name),
        ("priority", "0"),
        ("args", args),
        ("kwargs", "{}"),
        ("created_at", "1.0"),
        ("updated_at", "1.0"),
        ("status", "process"),
    ];
    let _: () = con
        .hset_multiple(format!("{prefix}:{uuid}"), &record)
        .await
        .unwrap();
    // A lease member is the delivery token (32 characters) and then the queue member.
    let token = qtasks::Uuid::new_v4().simple().to_string();
    let member = format!("{token}{:020}|{task_name}:{uuid}:0", 1);
    let _: () = con
        .zadd(format!("{prefix}:qtasks:leases"), member, lease_deadline_ms)
        .await
        .unwrap();
    uuid
}

/// Serves `app`'s gRPC API on a free port until the sender is dropped or sent to; returns the
/// address.
pub(crate) async fn serve_grpc(
    app: &QueueTasks,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = app.clone();
    tokio::spawn(async move {
        qtasks::grpc::serve_listener(served, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (address, stop)
}

/// Serves a gRPC server of `app` (with a token, TLS, or neither) on a free port of loopback
/// until the sender is dropped or sent to; returns the address.
pub(crate) async fn serve_grpc_with(
    grpc: qtasks::grpc::Grpc,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        grpc.serve_listener(listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (address, stop)
}

/// PEM made in the test: a certificate authority, and a server certificate for `localhost`
/// signed by it with its private key.
pub(crate) struct TestCertificates {
    pub(crate) ca: String,
    pub(crate) cert: String,
    pub(crate) key: String,
}

/// A new certificate authority and a `localhost` server certificate signed by it.
pub(crate) fn test_certificates() -> TestCertificates {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "qtasks test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    TestCertificates {
        ca: ca_cert.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A gRPC channel over TLS to `127.0.0.1:port`, trusting `ca` and expecting a certificate for
/// `localhost`.
pub(crate) async fn grpc_tls_channel(
    port: u16,
    ca: &str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name("localhost"),
        )?
        .connect()
        .await
}

/// `message` as a gRPC request carrying `authorization: Bearer <token>`.
pub(crate) fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The test worker binary: this build's, or `QTASKS_TEST_WORKER_BIN` (a long harness run uses
/// a copy, so the tree can be rebuilt meanwhile).
fn worker_binary() -> std::ffi::OsString {
    std::env::var_os("QTASKS_TEST_WORKER_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_qtasks-test-redis-worker").into())
}

/// A worker process of the test worker binary (`tests/bin/redis_worker.rs`), SIGKILLed when
/// dropped.
pub(crate) struct WorkerProcess(pub(crate) std::process::Child);

impl WorkerProcess {
    /// `qtasks-test-redis-worker <prefix> <lease_ms> <concurrency>` with these variables.
    pub(crate) fn spawn(
        prefix: &str,
        lease_ms: u64,
        concurrency: usize,
        env: &[(&str, &str)],
    ) -> Self {
        let child = std::process::Command::new(worker_binary())
            .args([prefix, &lease_ms.to_string(), &concurrency.to_string()])
            .envs(env.iter().copied())
            .spawn()
            .expect("the worker binary starts");
        WorkerProcess(child)
    }

    /// [`spawn`](Self::spawn), its standard error appended to `log` (its logs and panics).
    pub(crate) fn spawn_logged(
        prefix: &str,
        lease_ms: u64,
        concurrency: usize,
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Self {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the worker log opens");
        let child = std::process::Command::new(worker_binary())
            .args([prefix, &lease_ms.to_string(), &concurrency.to_string()])
            .envs(env.iter().copied())
            .stderr(stderr)
            .spawn()
            .expect("the worker binary starts");
        WorkerProcess(child)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on loopback now (the OS picks it).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Publishes raw bytes to a RabbitMQ queue (an app's task queue: `{prefix}:task_queue`), as a
/// producer of another language would, confirmed.
pub(crate) async fn publish_raw(amqp: &str, queue: &str, body: &[u8]) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let connection = Connection::connect(amqp, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    connection.close(200, "done".into()).await.unwrap();
}

/// Debian's libfaketime (package `faketime`), for a worker whose clock is offset: its path,
/// or `None` (with a line on stderr) where it is not installed. In CI it must be
/// (`.ci/run` installs it).
pub(crate) fn faketime() -> Option<&'static str> {
    const LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    if std::path::Path::new(LIBRARY).exists() {
        return Some(LIBRARY);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "faketime is missing (apt-get install faketime)"
    );
    eprintln!("skipped: faketime is missing (apt-get install faketime)");
    None
}
