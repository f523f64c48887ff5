//! The core of [qtasks](https://docs.rs/qtasks): the app, tasks, the trigger dispatch table,
//! the executor and worker, the component traits and the in-memory backend.
//!
//! **Depend on `qtasks`, not on this crate.** `qtasks` re-exports everything here together with
//! the `#[task]` and `#[plugin]` macros, and turns engines (Redis, ...) and surfaces on by cargo
//! features. This crate exists so that those engines and surfaces are separate crates that
//! reach the core through its public API alone: the compiler keeps the walls. An engine of
//! your own does the same; see [`backend`].
//!
//! The layout of the public API:
//! - at the root, what every user of a task queue touches: [`QueueTasks`], [`TaskContext`],
//!   statuses and records, errors, plugins and events;
//! - [`backend`]: the [`Broker`](backend::Broker) and [`Storage`](backend::Storage) traits,
//!   the in-memory backend, and what an engine needs to implement them;
//! - [`components`]: the other replaceable parts (global config, worker, starter, executor);
//! - [`triggers`]: one payload type per trigger, and the partial updates replacing triggers
//!   take;
//! - [`schedule`]: delayed and periodic tasks;
//! - [`inspect`], [`stats`], [`trace`], [`testing`].
#![warn(missing_docs)]

mod app;
pub mod backend;
mod builder;
mod call;
pub mod components;
mod config;
mod context;
mod deps;
mod dispatch;
mod error;
mod events;
mod executor;
mod group;
mod handle;
pub mod inspect;
pub mod limits;
mod middleware;
mod panic;
pub mod plugin;
mod progress;
pub mod queues;
pub mod records;
mod registry;
pub mod schedule;
mod signals;
pub mod stats;
mod task;
pub mod testing;
pub mod trace;
pub mod triggers;
pub mod unique;
pub mod workflow;

#[doc(hidden)]
pub mod __private;

#[cfg(feature = "__bench")]
#[doc(hidden)]
pub mod bench_hooks;

// The app and how it is built and configured.
pub use app::{AddOptions, QueueTasks};
/// The attribute on an engine's trait impls ([`backend::Broker`], [`backend::Storage`],
/// [`components::GlobalConfig`], ...): `async fn` methods in object-safe traits.
pub use async_trait::async_trait;
pub use builder::AppBuilder;
pub use config::{ConfigError, QueueConfig};

// Tasks: what they receive, how they are called, what they leave behind.
pub use call::{Chain, TaskCall, chain};
pub use context::TaskContext;
pub use deps::{DependencyScope, Depends, State};
pub use group::{Chord, ChordHandle, Group, GroupHandle, chord, group};
pub use handle::{FromTaskHandle, StreamHandle, TaskFailure, TaskHandle};
pub use progress::PROGRESS_INTERVAL;
pub use records::TaskRecord;
pub use task::{
    Backoff, Outcome, QueuedTask, RetryBackoff, TaskDefinition, TaskParam, TaskStatus,
    UnknownStatus,
};
pub use uuid::Uuid;

// Errors.
pub use error::{
    ArgumentError, Error, PluginTriggerError, Result, TaskError, TaskResult, TimeoutError,
};

// Extending the app: plugins, triggers, events, middlewares.
pub use events::{Event, EventKind};
pub use middleware::Middleware;
pub use plugin::Plugin;
pub use qtasks_triggers::{Component, Trigger, TriggerKind, UnknownTrigger};
