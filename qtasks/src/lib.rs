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
//!     if event.task.name != "flaky" {
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
//! Where this crate differs from the Python original on purpose, the item's docs say so; the
//! README has the full list.
#![warn(missing_docs)]

// Lets the macros' absolute `::qtasks::...` paths work inside this crate's own tests and docs.
#[allow(unused_extern_crates)]
extern crate self as qtasks;

mod app;
mod backend;
mod builder;
mod call;
mod components;
mod config;
mod context;
mod deps;
mod dispatch;
mod error;
mod events;
mod executor;
mod inspect;
mod middleware;
mod panic;
mod plugin;
mod registry;
mod signals;
mod task;
pub mod testing;
pub mod triggers;

#[doc(hidden)]
pub mod __private;

pub use app::{AddOptions, QueueTasks};
#[cfg(feature = "redis")]
pub use backend::RedisOptions;
pub use backend::{
    BackendError, Broker, Delivery, ItemsRead, MemoryBroker, MemoryStorage, Storage,
};
pub use builder::AppBuilder;
pub use call::{Chain, TaskCall, chain};
pub use components::{
    ConcurrentWorker, DefaultExecutor, DefaultStarter, Executor, GlobalConfig, MemoryGlobalConfig,
    StartSteps, Starter, StopSteps, Worker, WorkerHost,
};
pub use config::{ConfigError, QueueConfig};
pub use context::TaskContext;
pub use deps::{DependencyScope, Depends, State};
pub use error::{
    ArgumentError, Error, PluginTriggerError, Result, TaskError, TaskResult, TimeoutError,
};
pub use events::{Event, EventKind};
pub use executor::TaskExecutor;
pub use inspect::{AppStats, Inspection, TaskStats};
pub use middleware::Middleware;
pub use plugin::{BoxError, BoxFuture, Plugin};
pub use qtasks_macros::{plugin, task};
pub use qtasks_triggers::{Component, Trigger, TriggerKind, UnknownTrigger};
pub use task::{
    Outcome, QueuedTask, RetryBackoff, TaskDefinition, TaskHandle, TaskParam, TaskRecord,
    TaskStatus,
};
pub use triggers::{Reply, TriggerEvent};
pub use uuid::Uuid;

/// The README's examples, compiled and run as doc tests so they cannot rot (with the `redis`
/// feature, which one of them uses).
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
