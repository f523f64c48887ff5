//! What qtasks's test suites share, so that each crate's tests can live with that crate
//! (`qtasks-redis/tests`, `qtasks-rabbitmq/tests`, `qtasks-cli/tests`, ...):
//!
//! - [`services`]: the machine's Redis and RabbitMQ for a test that needs one. A service test
//!   is marked `#[ignore = "needs Redis ..."]`, so a plain `cargo test` lists it as ignored
//!   and counts it; run with `--include-ignored` (as the README's test command and CI do), it
//!   asks [`services::redis_url`] for its URL, which skips it with a line on stderr when the
//!   service is missing, or fails it when `CI` is set.
//! - [`scratch`]: names, ports and folders no other test uses (tests run in parallel and share
//!   the services).
//! - [`flow`]: the add, wait, check chain every suite repeats.
//! - [`Proxy`], [`OwnRedis`], [`OwnRabbitMq`], [`OwnPostgres`]: network faults, and servers of a test's own to
//!   kill and restart (never the shared ones); [`LoggedProcess`], a binary a test starts.
//! - [`redis`], [`amqp`], [`grpc`]: an engine's or a surface's test helpers.

pub mod amqp;
pub mod counting;
pub mod fault_drain;
pub mod flow;
pub mod grpc;
pub mod kafka;
pub mod logs;
mod own_postgres;
mod own_rabbitmq;
mod own_redis;
mod process;
mod proxy;
pub mod redis;
pub mod scratch;
pub mod services;

pub use logs::{CapturedLogs, log_to_stderr};
pub use own_postgres::OwnPostgres;
pub use own_rabbitmq::OwnRabbitMq;
pub use own_redis::{
    OwnCluster, OwnRedis, OwnReplica, OwnSentinels, recorded_outcomes, recorded_outcomes_in,
    resp_commands, until_replica_synced,
};
pub use process::LoggedProcess;
pub use proxy::{Proxy, host_port};
pub use scratch::{free_port, unique_prefix};
pub use services::{amqp_url, faketime, kafka_url, pg_schema, postgres_url, redis_url};

/// How long a test waits for a task to end before it fails.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(30);
