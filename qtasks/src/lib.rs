#![doc = include_str!(concat!(env!("OUT_DIR"), "/README.md"))]
//!
//! ---
//!
//! # Engines and surfaces
//!
//! This crate is a facade: the runtime lives in `qtasks-core`, the macros in `qtasks-macros`,
//! and each engine in a crate of its own, turned on by a cargo feature of the same name:
//!
//! | feature | what it adds |
//! |---|---|
//! | `redis` | `qtasks::redis`: the Redis backend, wire-compatible with Python QTasks |
//! | `redis-tls` | `rediss://` URLs for it |
//! | `rabbitmq` | `qtasks::rabbitmq`: the RabbitMQ broker, with Redis (or any) storage |
//! | `postgres` | `qtasks::postgres`: the PostgreSQL backend, with tasks added in your transaction |
//! | `kafka` | `qtasks::kafka`: the Kafka broker, with Redis (or any) storage |
//! | `grpc` | `qtasks::grpc`: the original's gRPC service |
//! | `web` | `qtasks::web`: the dashboard and its JSON API |
//! | `cli` | `qtasks::cli::main()`: the whole `main` of a worker binary, with the command line |
//! | `metrics` | `qtasks::metrics`: Prometheus metrics |
//! | `otel` | `qtasks::otel`: traces across processes, exported with OTLP |
//! | `conformance` | `qtasks::testing::conformance`: the suite every backend must pass |
//!
//! No feature is on by default: the in-memory backend needs none.
//!
//! Tasks and `#[qtasks::plugin]` handlers are registered per binary (collected at link time):
//! every app in the process knows every task, and two tasks with one name are an error that
//! names both places. Runtime plugins ([`QueueTasks::add_plugin`]) belong to one app.
//!
//! Where this crate differs from the Python original on purpose, the item's docs say so; the
//! list is in the guide's page on migrating (`docs/guide/migrating.md`).
#![warn(missing_docs)]

#[doc(inline)]
pub use qtasks_core::*;

#[doc(inline)]
pub use qtasks_macros::{plugin, task};

/// The Redis backend (feature `redis`): `qtasks::redis::connect(url)`.
#[cfg(feature = "redis")]
#[doc(inline)]
pub use qtasks_redis as redis;

/// The RabbitMQ broker (feature `rabbitmq`): `qtasks::rabbitmq::connect(url, storage)`.
#[cfg(feature = "rabbitmq")]
#[doc(inline)]
pub use qtasks_rabbitmq as rabbitmq;

/// The PostgreSQL backend (feature `postgres`): `qtasks::postgres::connect(url)`, and tasks
/// added in the caller's own transaction.
#[cfg(feature = "postgres")]
#[doc(inline)]
pub use qtasks_postgres as postgres;

/// The Kafka broker (feature `kafka`): `qtasks::kafka::connect(servers, storage)`.
#[cfg(feature = "kafka")]
#[doc(inline)]
pub use qtasks_kafka as kafka;

/// The gRPC service (feature `grpc`): `qtasks::grpc::serve(app, address)`, or
/// `qtasks::grpc::Grpc::new(app).token(..).tls(..)` beyond loopback.
#[cfg(feature = "grpc")]
#[doc(inline)]
pub use qtasks_grpc as grpc;

/// The web API (feature `web`): `qtasks::web::Web::new(app).serve(address)`.
#[cfg(feature = "web")]
#[doc(inline)]
pub use qtasks_web as web;

/// The command line of a worker binary (feature `cli`): `qtasks::cli::main()` is a worker binary's whole `main`.
#[cfg(feature = "cli")]
#[doc(inline)]
pub use qtasks_cli as cli;

/// Prometheus metrics (feature `metrics`): `qtasks::metrics::serve(&app, address)`.
#[cfg(feature = "metrics")]
#[doc(inline)]
pub use qtasks_metrics as metrics;

/// OpenTelemetry traces across processes (feature `otel`): `qtasks::otel::Otlp`.
#[cfg(feature = "otel")]
#[doc(inline)]
pub use qtasks_otel as otel;

/// Running tasks in your own tests ([`testing::run`]) and, with the `conformance` feature, the
/// suite every backend must pass (`testing::conformance`).
pub mod testing {
    #[doc(inline)]
    pub use qtasks_core::testing::*;

    /// The backend conformance suite (feature `conformance`).
    #[cfg(feature = "conformance")]
    #[doc(inline)]
    pub use qtasks_conformance as conformance;
}

/// The guide's pages (`docs/guide/*.md`): every Rust block compiles, and runs unless
/// `no_run`, as a doc test (see `build.rs`).
#[cfg(doctest)]
mod guide {
    include!(concat!(env!("OUT_DIR"), "/guide.rs"));
}
