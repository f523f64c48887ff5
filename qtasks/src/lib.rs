//! qtasks: a task queue whose main extension point is named plugin triggers.
//!
//! qtasks is the Rust implementation of [QTasks](https://pypi.org/project/qtasks/). Tasks are
//! plain functions marked with [`#[qtasks::task]`](macro@task); plugins hook into named
//! points of the framework with [`#[qtasks::plugin(on = "...")]`](macro@plugin) or at run time
//! with [`QueueTasks::add_plugin`]. The trigger names are the original's and are checked at
//! compile time against [`Trigger`].
//!
//! The heart of it is error handling through plugins: a task fails with
//! [`TaskContext::plugin_error`], the executor fires
//! `task_executor_run_task_trigger_error`, and if a handler returns a value that value
//! becomes the task's result.
//!
//! ```rust,standalone_crate
//! use std::time::Duration;
//! use qtasks::triggers::TaskExecutorRunTaskTriggerError;
//!
//! #[qtasks::task(echo = true)]
//! async fn flaky(ctx: qtasks::TaskContext) -> qtasks::TaskResult<String> {
//!     Err(ctx.plugin_error().with("message", "Non-standard situation").into())
//! }
//!
//! #[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
//! fn recover(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<serde_json::Value> {
//!     if event.task.name() != "flaky" {
//!         return None;
//!     }
//!     assert_eq!(event.error.message(), Some("Non-standard situation"));
//!     Some(123.into())
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), qtasks::Error> {
//!     let app = qtasks::QueueTasks::new(); // in-memory broker and storage
//!     app.start().await?;
//!     let done = flaky::add_task(&app).await?.wait(Duration::from_secs(5)).await?;
//!     assert_eq!(done.status, qtasks::TaskStatus::Success);
//!     assert_eq!(done.returning, Some(serde_json::json!(123)));
//!     app.stop().await
//! }
//! ```
//!
//! Tasks and `#[qtasks::plugin]` handlers are registered per binary (collected at link time):
//! every app in the process knows every task, and two tasks with one name are an error that
//! names both places. Runtime plugins ([`QueueTasks::add_plugin`]) belong to one app.
//!
//! # Engines and surfaces
//!
//! This crate is a facade: the runtime lives in `qtasks-core`, the macros in `qtasks-macros`,
//! and each engine in a crate of its own, turned on by a cargo feature of the same name:
//!
//! | feature | what it adds |
//! |---|---|
//! | `redis` | [`redis`]: the Redis backend, wire-compatible with Python QTasks |
//! | `redis-tls` | `rediss://` URLs for it |
//! | `rabbitmq` | [`rabbitmq`]: the RabbitMQ broker, with Redis (or any) storage |
//!
//! Where this crate differs from the Python original on purpose, the item's docs say so; the
//! README has the full list.
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

/// The command line of a worker binary (feature `cli`): `qtasks::cli::run(app)` as `main`.
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
/// suite every backend must pass ([`testing::conformance`]).
pub mod testing {
    #[doc(inline)]
    pub use qtasks_core::testing::*;

    /// The backend conformance suite (feature `conformance`).
    #[cfg(feature = "conformance")]
    #[doc(inline)]
    pub use qtasks_conformance as conformance;
}

/// The README's examples, compiled and run as doc tests so they cannot rot (with the
/// `rabbitmq` feature, which turns on `redis`: the engines' sections use them).
#[cfg(all(doctest, feature = "rabbitmq"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
