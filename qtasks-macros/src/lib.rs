//! The attributes of qtasks: `#[qtasks::task]` and `#[qtasks::plugin]`.
//!
//! Use them through the `qtasks` crate, which re-exports them and provides everything the
//! generated code names (under `::qtasks::__private`). This crate only parses, validates and
//! emits; it holds no runtime logic. Set `QTASKS_MACROS_DEBUG=1` while building to print what
//! each attribute expands to.
#![warn(missing_docs)]

mod errors;
mod plugin;
mod task;

use proc_macro::TokenStream;

/// Registers an `async fn` (or a plain `fn`, run on the blocking pool) as a task.
///
/// The fn stays as it is, callable directly; next to it the attribute adds a handle type of
/// the same name holding `NAME`, `DEFINITION`, `add_task(&app, args..)` (typed: argument types
/// are checked at compile time, and the returned `TaskHandle<T>`'s `result` gives the task's
/// own output type back), `call(args..)` and `call_with(..)` (for chains and chords).
///
/// ```rust,standalone_crate
/// use std::time::Duration;
///
/// #[qtasks::task(name = "math.add", priority = 1, tags = ["math"], max_time = 5)]
/// async fn add(a: i64, b: i64) -> i64 {
///     a + b
/// }
///
/// #[tokio::main]
/// async fn main() -> qtasks::Result<()> {
///     let app = qtasks::QueueTasks::new();
///     app.start().await?;
///     let done = add::add_task(&app, 2, 3).await?.wait(Duration::from_secs(5)).await?;
///     assert_eq!(done.returning, Some(serde_json::json!(5)));
///     assert_eq!(add::NAME, "math.add");
///     app.stop().await
/// }
/// ```
///
/// Parameters are any serde types (an `Option` may be left out by the caller), plus
/// `Depends<T>` and `State<T>` extractors; a parameter that is no serde type is a compile error
/// at that parameter. The fn returns any `Serialize` value, `Result<T, E>` with `E: Display`
/// (any type named `...Result<T, ..>` counts: the handle's output is `T`), or a
/// `impl Stream<Item = I>` (the handle is a `StreamHandle<I>` with typed items).
///
/// # Options
///
/// | option | what it does |
/// |---|---|
/// | `name = "..."` | the name on the queue; default: the fn's name. `:` is refused. |
/// | `echo = true` | the first parameter is the task's `qtasks::TaskContext` |
/// | `priority = N` | the priority of new tasks, lower runs first; default: the app's |
/// | `tags = ["..."]` | free-form tags (metadata) |
/// | `description = "..."` | a description (metadata) |
/// | `retry = N` | retry a failed run up to N more times, each as a linked child task |
/// | `retry_on_exc = [Type, ..]` | retry only errors of these types (`qtasks::TimeoutError` for timeouts) |
/// | `retry_delay = TIME` | the wait before a retry |
/// | `retry_backoff = "fixed" \| "exponential"` | the same wait each time, or doubling (from 1 s when `retry_delay` is not given) |
/// | `retry_backoff_max = TIME` | the longest wait a doubling backoff grows to; default 10 minutes |
/// | `retry_jitter = 0.0..=1.0` | the part of each wait taken off at random; default 0.5 when doubling, else 0 |
/// | `max_time = TIME` | the time limit of one run; ends `error` with `TimeoutError` |
/// | `timeout = TIME` | another name for `max_time` (give one of them) |
/// | `result_ttl = TIME` | how long the task's record is kept once it ended, instead of the engine's retention |
/// | `decode = path` | a `fn(Value) -> Value` (or `-> Result<Value, E>`) that turns the result into the stored value |
/// | `generate_handler = path` | a `fn(Value) -> Value` applied to each item of a stream task |
/// | `middlewares_before = [STATIC, ..]` | `qtasks::Middleware` statics run before this task, after the app's |
/// | `middlewares_after = [STATIC, ..]` | `qtasks::Middleware` statics run after this task, before the app's |
/// | `router = "..."` | the router the task belongs to (`AppBuilder::routers`) |
/// | `unique_for = TIME` | one call per arguments at a time: an add of the same task with the same arguments while one waits or runs (or within `TIME` of its add) returns the first one's handle |
/// | `rate_limit = "N/PERIOD"` | at most N starts per period across every worker of the app, spaced evenly (`"100/s"`, `"60/m"`, `"5/10s"`); per key with `AddOptions::rate_key` |
/// | `max_running = N` | at most N runs of the task at once across every worker of the app |
/// | `queue = "..."` | the named queue its calls wait in (default `default`); workers serve the queues `QueueConfig::queues` lists |
/// | `executor = STATIC` | a `static` implementing `qtasks::components::TaskRunner`, instead of the app's |
/// | `cron = "..."` | run the task (it takes no arguments) on this cron schedule, in every worker of the app, once per slot; the expression is checked when the task compiles |
///
/// A `TIME` is a number of seconds (`2.5`, or a `const`), as in the original, or a string with
/// units checked when the task compiles: `"500ms"`, `"30s"`, `"10m"`, `"1h30m"`, `"1d"`.
/// From inside a task, `ctx.retry_after(duration)` (or `TaskError::retry_after`) asks for a
/// retry after that wait, counted against `retry`.
///
/// ```rust,standalone_crate
/// use qtasks::{TaskContext, TaskResult};
///
/// fn shout(value: serde_json::Value) -> serde_json::Value {
///     value.as_str().map(str::to_uppercase).into()
/// }
///
/// #[qtasks::task(
///     echo = true,
///     retry = 3, retry_on_exc = [std::io::Error], retry_delay = "500ms", retry_backoff = "exponential",
///     retry_backoff_max = "1m", retry_jitter = 0.2,
///     timeout = 30,
///     decode = shout,
///     router = "greetings",
///     description = "Greets someone, loudly",
/// )]
/// async fn greet(ctx: TaskContext, who: String) -> TaskResult<String> {
///     tracing::info!(parent: ctx.span(), "greeting {who}");
///     Ok(format!("hello, {who}"))
/// }
///
/// fn main() {
///     assert_eq!(greet::DEFINITION.retry(), Some(3));
///     assert_eq!(greet::DEFINITION.router(), Some("greetings"));
/// }
/// ```
///
/// A periodic task: 5 cron fields, or 6 with seconds first (UTC; for a time zone, use
/// `app.schedules().add(name, Schedule::cron(..)?.in_time_zone(..)?, call)`):
///
/// ```rust,standalone_crate
/// #[qtasks::task(cron = "0 */15 * * * *")] // every quarter of an hour, on the second 0
/// async fn refresh_rates() {}
///
/// fn main() {
///     let app = qtasks::QueueTasks::new();
///     assert!(app.schedules().registered().iter().any(|s| s.name == "refresh_rates"));
/// }
/// ```
///
/// `generate_handler` maps each item of a stream task before it is stored:
///
/// ```rust,standalone_crate
/// fn in_cents(item: serde_json::Value) -> serde_json::Value {
///     (item.as_f64().unwrap_or_default() * 100.0).round().into()
/// }
///
/// #[qtasks::task(generate_handler = in_cents)]
/// async fn prices() -> impl futures_util::Stream<Item = f64> {
///     futures_util::stream::iter([1.25, 2.5])
/// }
/// # fn main() {}
/// ```
///
/// `middlewares_before` and `middlewares_after` take `static`s implementing
/// `qtasks::Middleware`, run around this task only:
///
/// ```rust,standalone_crate
/// use qtasks::{Middleware, TaskDefinition, TaskError};
/// use qtasks::plugin::BoxFuture;
/// use serde_json::{Map, Value};
///
/// /// Rounds a number result to two decimals.
/// struct Round;
///
/// impl Middleware for Round {
///     fn after<'a>(
///         &'a self,
///         _task: &'a TaskDefinition,
///         result: &'a mut Value,
///     ) -> BoxFuture<'a, Result<(), TaskError>> {
///         if let Some(x) = result.as_f64() {
///             *result = ((x * 100.0).round() / 100.0).into();
///         }
///         Box::pin(async { Ok(()) })
///     }
/// }
///
/// /// Logs the arguments.
/// struct Log;
///
/// impl Middleware for Log {
///     fn before<'a>(
///         &'a self,
///         task: &'a TaskDefinition,
///         args: &'a mut Vec<Value>,
///         _kwargs: &'a mut Map<String, Value>,
///     ) -> BoxFuture<'a, Result<(), TaskError>> {
///         tracing::info!(task = task.name(), ?args, "starting");
///         Box::pin(async { Ok(()) })
///     }
/// }
///
/// static ROUND: Round = Round;
/// static LOG: Log = Log;
///
/// #[qtasks::task(middlewares_before = [LOG], middlewares_after = [ROUND])]
/// async fn ratio(a: f64, b: f64) -> f64 {
///     a / b
/// }
/// # fn main() {}
/// ```
///
/// `executor` runs this task with its own `qtasks::components::TaskRunner` (here one that
/// times the default steps):
///
/// ```rust,standalone_crate
/// use qtasks::components::{TaskRunner, TaskExecutor};
/// use qtasks::Outcome;
/// use qtasks::plugin::BoxFuture;
///
/// struct Timed;
///
/// impl TaskRunner for Timed {
///     fn execute<'a>(&'a self, run: &'a TaskExecutor) -> BoxFuture<'a, Outcome> {
///         Box::pin(async move {
///             let started = std::time::Instant::now();
///             let outcome = run.run_default().await;
///             tracing::info!(took = ?started.elapsed(), "ran");
///             outcome
///         })
///     }
/// }
///
/// static TIMED: Timed = Timed;
///
/// #[qtasks::task(executor = TIMED)]
/// async fn report(year: u32) -> String {
///     format!("report {year}")
/// }
/// # fn main() {}
/// ```
///
/// An unknown option, a misspelt one, a wrong value or a fn the attribute cannot register is
/// a compile error that says how to fix it ("did you mean ...").
#[proc_macro_attribute]
pub fn task(args: TokenStream, item: TokenStream) -> TokenStream {
    debug("task", task::expand(args.into(), item.into())).into()
}

/// Registers a fn as the handler of a named plugin trigger, for every app of the binary.
///
/// The option `on = "..."` names the trigger as the Python original spells it; the name is
/// checked at compile time against the catalogue (a misspelt one is an error with a "did you
/// mean"). The fn, sync or `async`, takes `&` the trigger's payload type
/// (`qtasks::triggers::<TriggerInCamelCase>`) and returns:
///
/// - `()` or `Result<(), E>` (with `E: Display`) for any trigger;
/// - for a replacing trigger, also `Option<V>` or `Result<Option<V>, E>`, where `V` is what the
///   trigger replaces (a JSON value, or a partial update such as `qtasks::triggers::TaskUpdate`):
///   the last value returned wins.
///
/// A `task_executor_run_task_trigger_error` handler may name the task it recovers,
/// `task = my_task`: it then hears only that task's failures and returns that task's result
/// type (`Option<T>` for a task returning `T` or `TaskResult<T>`), checked at compile time with
/// an error naming both types. A handler without it returns JSON, checked against the failed
/// task's result type before it is stored.
///
/// A handler that fails or panics is logged and skipped; the others still run.
///
/// ```rust,standalone_crate
/// use qtasks::triggers::{TaskExecutorRunTaskTriggerError, TaskExecutorAfterExecute};
///
/// #[qtasks::task(echo = true)]
/// async fn fetch(ctx: qtasks::TaskContext, url: String) -> qtasks::TaskResult<String> {
///     Err(ctx.plugin_error().with("url", url).into())
/// }
///
/// // Turns `fetch`'s `plugin_error` into a result: the task then succeeds with it.
/// #[qtasks::plugin(on = "task_executor_run_task_trigger_error", task = fetch)]
/// fn recover(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<String> {
///     Some(format!("cached copy of {}", event.error.get("url")?))
/// }
///
/// // Hears every task's failures, and answers in JSON.
/// #[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
/// fn recover_any(event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<serde_json::Value> {
///     (event.task.name() == "lookup").then(|| serde_json::json!(null))
/// }
///
/// // Observes every run; an async handler is fine too.
/// #[qtasks::plugin(on = "task_executor_after_execute")]
/// async fn audit(event: &TaskExecutorAfterExecute<'_>) {
///     tracing::debug!(task = event.executor.task().name(), "ran");
/// }
/// # fn main() {}
/// ```
///
/// Handlers run in a fixed order for every trigger: by module path, then source line; runtime
/// plugins (`QueueTasks::add_plugin`) after them.
#[proc_macro_attribute]
pub fn plugin(args: TokenStream, item: TokenStream) -> TokenStream {
    debug("plugin", plugin::expand(args.into(), item.into())).into()
}

fn debug(attribute: &str, expansion: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    if std::env::var_os("QTASKS_MACROS_DEBUG").is_some() {
        eprintln!("#[qtasks::{attribute}] expands to:\n{expansion}\n");
    }
    expansion
}
