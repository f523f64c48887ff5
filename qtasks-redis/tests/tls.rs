//! `rediss://` URLs with a password, against a TLS Redis server this test starts (with a
//! certificate authority it makes with `openssl`).

#![cfg(unix)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use qtasks::redis::RedisOptions;
use qtasks::{QueueConfig, TaskStatus};
use qtasks_test_support::WAIT;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use serde_json::json;

#[qtasks::task]
async fn tls_echo(text: String) -> String {
    text
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?} failed");
}

/// Makes a CA and a server certificate for 127.0.0.1; returns the CA's PEM.
fn make_certificates(dir: &Path) -> Vec<u8> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=qtasks test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    std::fs::read(dir.join("ca.crt")).unwrap()
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_rediss_url_with_a_password_works() {
    // Runs where the Redis tests run; it needs `redis-server` and `openssl` on the machine.
    let Some(_) = redis_url("a_rediss_url_with_a_password_works") else {
        return;
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique_prefix("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = make_certificates(&dir);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                "server.crt",
                "--tls-key-file",
                "server.key",
                "--tls-ca-cert-file",
                "ca.crt",
            ])
            .args([
                "--tls-auth-clients",
                "no",
                "--requirepass",
                "s3cret",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts"),
    );
    let url = format!("rediss://:s3cret@127.0.0.1:{port}/");
    let options = || RedisOptions {
        tls_root_certificate: Some(ca.clone()),
        ..Default::default()
    };
    let config = || QueueConfig {
        name: "tls_app".to_owned(),
        ..Default::default()
    };

    // Wait until the server listens.
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let app = qtasks::redis::connect_with(&url, config(), options())
        .await
        .expect("the TLS server accepts the connection");
    app.start().await.unwrap();
    let done = tls_echo::add_task(&app, "over TLS".into())
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        (done.status, done.returning),
        (TaskStatus::Success, Some(json!("over TLS")))
    );
    app.stop().await.unwrap();

    let wrong = format!("rediss://:wrong@127.0.0.1:{port}/");
    let error = qtasks::redis::connect_with(&wrong, config(), options())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!(
            "redis backend: cannot connect to Redis at rediss://:***@127.0.0.1:{port}/"
        )),
        "{error}"
    );
    assert!(!error.contains("wrong"), "{error}");
}
