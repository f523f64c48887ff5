//! The machine's services, for a test that needs one.
//!
//! A test that needs Redis is marked `#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]` and
//! starts with `let Some(url) = redis_url("its name") else { return };`. A plain
//! `cargo test` lists it as ignored (the summary counts them); with `--include-ignored` it runs:
//! without the variable, or with the service unreachable, it is skipped with a line on
//! stderr, unless `CI` is set, where it fails, so that a green CI always means it ran.

use std::io::Write;
use std::time::Duration;

/// The Redis URL of the machine (`QTASKS_TEST_REDIS_URL`), or `None`: see the module.
pub fn redis_url(test: &str) -> Option<String> {
    service_url("Redis", "QTASKS_TEST_REDIS_URL", 6379, test)
}

/// The RabbitMQ URL of the machine (`QTASKS_TEST_AMQP_URL`), or `None`: see the module.
pub fn amqp_url(test: &str) -> Option<String> {
    service_url("RabbitMQ", "QTASKS_TEST_AMQP_URL", 5672, test)
}

/// The PostgreSQL URL of the machine (`QTASKS_TEST_POSTGRES_URL`), or `None`: see the module.
pub fn postgres_url(test: &str) -> Option<String> {
    service_url("PostgreSQL", "QTASKS_TEST_POSTGRES_URL", 5432, test)
}

/// The Kafka servers of the machine (`QTASKS_TEST_KAFKA_URL`, `host:port`; `.ci/run` starts
/// tansu there), or `None`: see the module.
pub fn kafka_url(test: &str) -> Option<String> {
    service_url("Kafka", "QTASKS_TEST_KAFKA_URL", 9092, test)
}

/// A schema name of this test's own: `prefix` and a random suffix, lowercase and short enough
/// for the PostgreSQL engine (at most 40 characters).
pub fn pg_schema(prefix: &str) -> String {
    let mut name: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    let suffix = qtasks::Uuid::new_v4().simple().to_string();
    format!("t_{name}_{}", &suffix[..12])
}

/// Debian's libfaketime (package `faketime`), for a worker whose clock is offset: its path,
/// or `None` (with a line on stderr) where it is not installed. In CI it must be
/// (`.ci/run` installs it).
pub fn faketime() -> Option<&'static str> {
    const LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    if std::path::Path::new(LIBRARY).exists() {
        return Some(LIBRARY);
    }
    assert!(!on_ci(), "faketime is missing (apt-get install faketime)");
    skipped(
        "a clock test",
        "faketime is missing (apt-get install faketime)",
    );
    None
}

/// Whether this run is CI's, where every service must be there.
pub fn on_ci() -> bool {
    std::env::var_os("CI").is_some_and(|value| !value.is_empty())
}

/// Says on stderr that `test` was skipped and why. Written to the process's stderr itself,
/// not through `eprintln!`, which the test harness captures and shows only for a failure: a
/// skip must be seen.
pub fn skipped(test: &str, reason: &str) {
    let _ = writeln!(std::io::stderr(), "skipped {test}: {reason}");
}

fn service_url(service: &str, variable: &str, default_port: u16, test: &str) -> Option<String> {
    let url = match std::env::var(variable) {
        Ok(url) if !url.is_empty() => url,
        _ => {
            assert!(!on_ci(), "{test}: {variable} is not set, and CI is");
            skipped(test, &format!("{variable} is not set (it needs {service})"));
            return None;
        }
    };
    if let Err(reason) = reachable(&url, default_port) {
        assert!(
            !on_ci(),
            "{test}: {service} at {url} is unreachable ({reason}), and CI is set"
        );
        skipped(
            test,
            &format!("{service} at {url} is unreachable ({reason})"),
        );
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
