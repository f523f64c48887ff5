//! Not public API. Used by the code `#[qtasks::task]` and `#[qtasks::plugin]` generate.
//!
//! Everything here may change in any release. Generated code names only items of this module
//! (through `::qtasks::__private`), so the macros never depend on the runtime's layout.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use inventory;

/// Not public API. The serde traits task parameters and results need, for the checks the
/// task attribute emits at each parameter and at the return type.
pub use serde::Serialize as SerdeSerialize;
/// Not public API. See [`SerdeSerialize`].
pub use serde::de::DeserializeOwned as SerdeDeserializeOwned;

// Everything generated code names, re-exported here so the macros reach the runtime through
// this one module.
pub use crate::components::TaskRunner;
pub use crate::deps::Extract;
pub use crate::triggers;
pub use crate::{
    Middleware, QueueTasks, Result, StreamHandle, TaskCall, TaskContext, TaskDefinition,
    TaskHandle, TaskParam, Trigger,
};

/// Not public API. Every field of a [`TaskDefinition`], as `#[task]` fills them; the
/// definition's own fields are private so options can be added without breaking users.
pub struct TaskDefinitionParts {
    /// The task name used on the queue (defaults to the fn name).
    pub name: &'static str,
    /// The priority of new tasks (lower runs first); `None` takes the app's
    /// [`task_default_priority`](crate::QueueConfig::task_default_priority).
    pub priority: Option<i64>,
    /// Whether the task receives its [`TaskContext`](crate::TaskContext) as first argument.
    pub echo: bool,
    /// Free-form tags (metadata only).
    pub tags: &'static [&'static str],
    /// A description (metadata only).
    pub description: Option<&'static str>,
    /// The parameters filled from the task's arguments (the context is not among them).
    pub params: &'static [TaskParam],
    /// Whether the fn is a plain `fn`, run on the blocking thread pool.
    pub blocking: bool,
    /// How many times a failed run is retried as a new task.
    pub retry: Option<u32>,
    /// Which errors are retried (`retry_on_exc`); `None` retries any error but a cancel.
    pub retry_on: Option<fn(&TaskError) -> bool>,
    /// The wait before each retry; `None` retries at once.
    pub retry_backoff: Option<RetryBackoffParts>,
    /// The time limit of one run, in seconds (`max_time`, alias `timeout`).
    pub max_time: Option<f64>,
    /// How long the task's record is kept once it ended, in seconds (`result_ttl`), instead
    /// of the engine's retention.
    pub result_ttl: Option<f64>,
    /// How long one call per arguments holds, in seconds (`unique_for`): adds of the same
    /// arguments meanwhile return the first call's handle.
    pub unique_for: Option<f64>,
    /// At most `.0` starts per `.1` seconds across the app (`rate_limit = "100/s"`).
    pub rate_limit: Option<(u32, f64)>,
    /// At most this many runs at once across the app (`max_running`).
    pub max_running: Option<u32>,
    /// Turns the result into the stored value; `None` stores the JSON result.
    pub decode: Option<fn(Value) -> std::result::Result<Value, String>>,
    /// Maps each item of a stream task before it is stored.
    pub generate_handler: Option<fn(Value) -> Value>,
    /// Middlewares run before this task, after the app's.
    pub middlewares_before: &'static [&'static dyn Middleware],
    /// Middlewares run after this task, before the app's.
    pub middlewares_after: &'static [&'static dyn Middleware],
    /// The router the task belongs to; an app can run only some routers' tasks.
    pub router: Option<&'static str>,
    /// The named queue the task's calls wait in (`queue = ".."`); `None`: the default queue.
    pub queue: Option<&'static str>,
    /// The runner of this task's executor (`executor = ..`), instead of the app's.
    pub runner: Option<&'static dyn TaskRunner>,
    /// The module the task fn is declared in.
    pub module_path: &'static str,
    /// The source file of the declaration.
    pub file: &'static str,
    /// The source line of the declaration.
    pub line: u32,
    /// Decodes the arguments and calls the task fn.
    pub invoke: InvokeFn,
    /// The type of the task's result, to check a value a plugin puts in its place; `None`
    /// (a task defined at run time) checks nothing.
    pub output: Option<OutputType>,
}

/// Not public API. A task's result type, as the task attribute read it off the signature: its
/// name as written and a check that a JSON value decodes as it.
#[derive(Clone, Copy)]
pub struct OutputType {
    /// The type as the source spells it (`String`, `Vec<u8>`).
    pub name: &'static str,
    /// `Err` says why a value does not decode as the type.
    pub check: fn(&Value) -> std::result::Result<(), String>,
}

impl std::fmt::Debug for OutputType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Not public API. Picks a result type's check by autoref: `(&&OutputProbe::<T>::new())`
/// finds [`DecodableOutput`] when `T` can be decoded, else [`OpaqueOutput`] (a result type
/// that is only `Serialize` cannot be checked, and is not).
pub struct OutputProbe<T>(std::marker::PhantomData<fn() -> T>);

impl<T> OutputProbe<T> {
    /// The probe.
    pub const fn new() -> Self {
        OutputProbe(std::marker::PhantomData)
    }
}

impl<T> Default for OutputProbe<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// Not public API. The check of a result type that can be decoded.
pub trait DecodableOutput {
    /// Whether `value` decodes as the type.
    fn __qtasks_check_output(&self, value: &Value) -> std::result::Result<(), String>;
}

impl<T: DeserializeOwned> DecodableOutput for &OutputProbe<T> {
    fn __qtasks_check_output(&self, value: &Value) -> std::result::Result<(), String> {
        T::deserialize(value).map(drop).map_err(|e| e.to_string())
    }
}

/// Not public API. The check of any other result type: everything passes.
pub trait OpaqueOutput {
    /// Always `Ok`.
    fn __qtasks_check_output(&self, value: &Value) -> std::result::Result<(), String>;
}

impl<T> OpaqueOutput for OutputProbe<T> {
    fn __qtasks_check_output(&self, _value: &Value) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// Not public API. What the task attribute implements on a task's handle type, so that other
/// generated code (a plugin's `task = ..`) can name the task's definition and result type `O`
/// (a stream task's: the `Vec` of its items). The result type is a parameter, not an
/// associated type: a `pub` task may return a private type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a task",
    label = "not a fn marked `#[qtasks::task]`",
    note = "`task = ..` names the task whose failure the handler recovers: a fn marked `#[qtasks::task]`, in scope"
)]
pub trait TypedTask<O> {
    /// The task's definition.
    const DEFINITION: &'static TaskDefinition;
}

/// Not public API. The retry options as the attribute wrote them, in seconds (a `Duration`
/// cannot be made from a number in a `static`); [`TaskDefinition::retry_backoff`] gives the
/// typed [`RetryBackoff`](crate::RetryBackoff).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBackoffParts {
    /// The first wait, in seconds (`retry_delay`).
    pub delay: f64,
    /// Whether the wait doubles with each retry (`retry_backoff = "exponential"`).
    pub exponential: bool,
    /// The longest wait, in seconds (`retry_backoff_max`); `None` takes the default.
    pub max: Option<f64>,
    /// The random part of each wait (`retry_jitter`); `None` takes the default.
    pub jitter: Option<f64>,
}

/// Not public API. The definition `#[task]` registers (a `const fn`, so it can be a `static`).
pub const fn define_task(parts: TaskDefinitionParts) -> TaskDefinition {
    TaskDefinition { parts }
}

/// Not public API. Makes an extractor parameter (`Depends<T>`, `State<T>`).
pub async fn extract<T: Extract>(ctx: &TaskContext) -> std::result::Result<T, TaskError> {
    T::extract(ctx).await
}

/// Not public API. Whether an error is of type `E` (for `retry_on_exc`).
pub fn error_is<E: 'static>(error: &TaskError) -> bool {
    error.is::<E>()
}

/// Not public API. What a `decode` fn may return.
pub trait DecodeOutput {
    /// The stored value, or why decoding failed.
    fn into_decoded(self) -> std::result::Result<Value, String>;
}

impl DecodeOutput for Value {
    fn into_decoded(self) -> std::result::Result<Value, String> {
        Ok(self)
    }
}

impl<E: Display> DecodeOutput for std::result::Result<Value, E> {
    fn into_decoded(self) -> std::result::Result<Value, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Not public API. Calls a task's `decode` fn.
pub fn run_decode<R: DecodeOutput>(
    decode: fn(Value) -> R,
    value: Value,
) -> std::result::Result<Value, String> {
    decode(value).into_decoded()
}

pub use crate::TaskError;
use crate::panic::panic_message;
use crate::plugin::BoxFuture;
pub use crate::triggers::{Payload, Reply, TriggerEvent};
use crate::{ArgumentError, Error};

/// Not public API. JSON values in generated signatures.
pub type JsonValue = Value;

// ---------------------------------------------------------------------------------------------
// Registrations collected by inventory.

/// Not public API. One `#[qtasks::task]`.
pub struct TaskRegistration(pub &'static TaskDefinition);

inventory::collect!(TaskRegistration);

/// Not public API. One `#[qtasks::plugin]` handler.
pub struct PluginRegistration {
    /// The trigger it handles.
    pub trigger: Trigger,
    /// `module::fn_name`, for logs.
    pub name: &'static str,
    /// For the deterministic order of handlers.
    pub module_path: &'static str,
    /// For messages.
    pub file: &'static str,
    /// For the deterministic order of handlers.
    pub line: u32,
    /// The generated shim that picks the payload out of the event and calls the handler.
    pub handler: PluginShim,
}

inventory::collect!(PluginRegistration);

/// Not public API. The schedule of a `#[qtasks::task(cron = "...")]` (the expression was
/// checked when the task compiled).
pub struct CronRegistration {
    /// The task's name (also the schedule's).
    pub task: &'static str,
    /// The cron expression.
    pub expression: &'static str,
}

inventory::collect!(CronRegistration);

/// Not public API. The signature of a plugin shim.
pub type PluginShim = for<'a> fn(TriggerEvent<'a>) -> HandlerCall<'a>;

/// Not public API. What one handler gave back; `Err` is a failure to log.
pub type HandlerOutcome = std::result::Result<Option<Reply>, String>;

/// Not public API. The result of calling a shim: sync handlers finish at once (no allocation),
/// async ones hand back a future.
pub enum HandlerCall<'a> {
    /// The event was for another trigger (cannot happen with a correct table).
    Skip,
    /// A sync handler ran.
    Ready(HandlerOutcome),
    /// An async handler is running.
    Pending(BoxFuture<'a, HandlerOutcome>),
}

// ---------------------------------------------------------------------------------------------
// Plugin handler signatures. The traits carry the error a user sees when a handler does not fit
// its trigger.

/// Not public API. What a plugin handler may return.
#[diagnostic::on_unimplemented(
    message = "a plugin handler for this trigger cannot return `{Self}`",
    label = "this return type does not fit the trigger",
    note = "return `()`, `Option<{O}>` or `Result<Option<{O}>, E>` with `E: Display`"
)]
pub trait PluginReturn<O> {
    /// Converts the handler's return value.
    fn into_outcome(self) -> HandlerOutcome;
}

impl<O> PluginReturn<O> for () {
    fn into_outcome(self) -> HandlerOutcome {
        Ok(None)
    }
}

impl<O: Send + 'static> PluginReturn<O> for Option<O> {
    fn into_outcome(self) -> HandlerOutcome {
        Ok(self.map(Reply::typed))
    }
}

impl<O: Send + 'static, E: Display> PluginReturn<O> for std::result::Result<Option<O>, E> {
    fn into_outcome(self) -> HandlerOutcome {
        self.map(|o| o.map(Reply::typed)).map_err(|e| e.to_string())
    }
}

impl<O, E: Display> PluginReturn<O> for std::result::Result<(), E> {
    fn into_outcome(self) -> HandlerOutcome {
        self.map(|()| None).map_err(|e| e.to_string())
    }
}

/// Not public API. A sync fn that handles the trigger whose payload is `P`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot handle this trigger",
    label = "expected a fn taking `&{P}`",
    note = "a handler for this trigger looks like `fn handler(event: &{P}) -> Option<..>`; see the trigger's payload type in `qtasks::triggers`"
)]
pub trait SyncHandler<P: Payload> {
    /// Calls the handler.
    fn call_handler(&self, payload: &P) -> HandlerOutcome;
}

impl<P: Payload, F, R> SyncHandler<P> for F
where
    F: Fn(&P) -> R,
    R: PluginReturn<P::Output>,
{
    fn call_handler(&self, payload: &P) -> HandlerOutcome {
        self(payload).into_outcome()
    }
}

/// Not public API. An async fn that handles the trigger whose payload is `P`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot handle this trigger",
    label = "expected an async fn taking `&{P}`",
    note = "a handler for this trigger looks like `async fn handler(event: &{P}) -> Option<..>`, and its future must be `Send`"
)]
pub trait AsyncHandler<'a, P: Payload + 'a> {
    /// Calls the handler.
    fn call_handler(&self, payload: &'a P) -> BoxFuture<'a, HandlerOutcome>;
}

impl<'a, P, F, Fut> AsyncHandler<'a, P> for F
where
    P: Payload + 'a,
    F: Fn(&'a P) -> Fut,
    Fut: Future + Send + 'a,
    Fut::Output: PluginReturn<P::Output>,
{
    fn call_handler(&self, payload: &'a P) -> BoxFuture<'a, HandlerOutcome> {
        let future = self(payload);
        Box::pin(async move { future.await.into_outcome() })
    }
}

/// Not public API. Calls a sync handler from a shim.
#[allow(clippy::needless_pass_by_value)] // handlers are fn items: zero-sized, passed by value
pub fn call_sync<'a, P: Payload, F: SyncHandler<P>>(handler: F, payload: &P) -> HandlerCall<'a> {
    HandlerCall::Ready(handler.call_handler(payload))
}

/// Not public API. Calls an async handler from a shim.
#[allow(clippy::needless_pass_by_value)] // handlers are fn items: zero-sized, passed by value
pub fn call_async<'a, P: Payload + 'a, F: AsyncHandler<'a, P>>(
    handler: F,
    payload: &'a P,
) -> HandlerCall<'a> {
    HandlerCall::Pending(handler.call_handler(payload))
}

// ---------------------------------------------------------------------------------------------
// Handlers that recover one task: `#[qtasks::plugin(on = "task_executor_run_task_trigger_error",
// task = my_task)]`. They return the task's own result type, checked when they compile.

/// Not public API. What a handler that recovers the task `T` may return.
#[diagnostic::on_unimplemented(
    message = "this handler returns `{Self}`, but the task it recovers returns `{O}`",
    label = "expected `Option<{O}>`",
    note = "a handler with `task = ..` returns `Option<{O}>` (or `Result<Option<{O}>, E>`, or `()`): the value becomes the task's result"
)]
pub trait RecoveredResult<O> {
    /// Converts the handler's return value.
    fn into_outcome(self) -> HandlerOutcome;
}

fn recovered_value<O: Serialize>(output: &O) -> HandlerOutcome {
    serde_json::to_value(output)
        .map(|value| Some(Reply::Value(value)))
        .map_err(|e| format!("returned a value that does not encode as JSON: {e}"))
}

impl<O> RecoveredResult<O> for () {
    fn into_outcome(self) -> HandlerOutcome {
        Ok(None)
    }
}

impl<O: Serialize> RecoveredResult<O> for Option<O> {
    fn into_outcome(self) -> HandlerOutcome {
        self.as_ref().map_or(Ok(None), recovered_value)
    }
}

impl<O: Serialize, E: Display> RecoveredResult<O> for std::result::Result<Option<O>, E> {
    fn into_outcome(self) -> HandlerOutcome {
        match self {
            Ok(output) => output.as_ref().map_or(Ok(None), recovered_value),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl<O, E: Display> RecoveredResult<O> for std::result::Result<(), E> {
    fn into_outcome(self) -> HandlerOutcome {
        self.map(|()| None).map_err(|e| e.to_string())
    }
}

/// Not public API. Checks, on the span of `task = ..`, that the path names a task.
pub const fn typed_task<T: TypedTask<O>, O>() {}

/// Whether the failed task is `T` (a recovering handler hears only its own task's failures).
fn recovers<T: TypedTask<O>, O>(payload: &triggers::TaskExecutorRunTaskTriggerError<'_>) -> bool {
    payload.task.parts.name == T::DEFINITION.parts.name
}

/// Not public API. Calls a sync handler that recovers the task `T`.
#[allow(clippy::needless_pass_by_value)] // handlers are fn items: zero-sized, passed by value
pub fn recover_sync<'a, 'b, T, O, F, R>(
    handler: F,
    payload: &triggers::TaskExecutorRunTaskTriggerError<'b>,
) -> HandlerCall<'a>
where
    T: TypedTask<O>,
    F: Fn(&triggers::TaskExecutorRunTaskTriggerError<'b>) -> R,
    R: RecoveredResult<O>,
{
    if !recovers::<T, O>(payload) {
        return HandlerCall::Skip;
    }
    HandlerCall::Ready(handler(payload).into_outcome())
}

/// Not public API. Calls an async handler that recovers the task `T`.
#[allow(clippy::needless_pass_by_value)] // handlers are fn items: zero-sized, passed by value
pub fn recover_async<'a, T, O, F, Fut>(
    handler: F,
    payload: &'a triggers::TaskExecutorRunTaskTriggerError<'a>,
) -> HandlerCall<'a>
where
    T: TypedTask<O>,
    F: Fn(&'a triggers::TaskExecutorRunTaskTriggerError<'a>) -> Fut,
    Fut: Future + Send + 'a,
    Fut::Output: RecoveredResult<O>,
{
    if !recovers::<T, O>(payload) {
        return HandlerCall::Skip;
    }
    let future = handler(payload);
    HandlerCall::Pending(Box::pin(async move { future.await.into_outcome() }))
}

// ---------------------------------------------------------------------------------------------
// Tasks.

/// Not public API. What a task produced: a value, or a stream of items (a stream task).
pub enum TaskOutput {
    /// The task's result.
    Value(Value),
    /// The items of a stream task, each encoded as JSON.
    Stream(ItemStream),
}

/// Not public API. The items of a stream task.
pub type ItemStream = Pin<Box<dyn Stream<Item = std::result::Result<Value, TaskError>> + Send>>;

/// Not public API. The future a task shim returns.
pub type TaskFuture =
    Pin<Box<dyn Future<Output = std::result::Result<TaskOutput, TaskError>> + Send>>;

/// Not public API. The shim `#[qtasks::task]` generates: decodes arguments, calls the fn.
pub type InvokeFn = fn(TaskContext, TaskArgs) -> TaskFuture;

/// Not public API. A task's arguments while the shim decodes them into parameters, following
/// the original: positional arguments fill parameters in order, keyword arguments by name.
pub struct TaskArgs {
    task: &'static str,
    args: Vec<Value>,
    kwargs: Map<String, Value>,
}

impl TaskArgs {
    pub(crate) fn new(task: &'static str, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        TaskArgs { task, args, kwargs }
    }

    fn problem(&self, problem: String) -> TaskError {
        ArgumentError {
            task: self.task.to_owned(),
            problem,
        }
        .into()
    }

    /// Decodes parameter number `index`, called `name`. A missing argument decodes from
    /// `null`, so `Option` parameters are optional.
    pub fn take<T: DeserializeOwned>(
        &mut self,
        index: usize,
        name: &str,
    ) -> std::result::Result<T, TaskError> {
        let value = if index < self.args.len() {
            if self.kwargs.contains_key(name) {
                return Err(self.problem(format!(
                    "got two values for parameter `{name}`, one positional and one by keyword"
                )));
            }
            std::mem::take(&mut self.args[index])
        } else if let Some(value) = self.kwargs.remove(name) {
            value
        } else {
            return serde_json::from_value(Value::Null)
                .map_err(|_| self.problem(format!("missing argument for parameter `{name}`")));
        };
        serde_json::from_value(value).map_err(|e| {
            self.problem(format!(
                "argument for parameter `{name}` does not decode: {e}"
            ))
        })
    }

    /// Checks that no argument was left over once `params` parameters were taken.
    pub fn finish(self, params: usize) -> std::result::Result<(), TaskError> {
        if self.args.len() > params {
            return Err(self.problem(format!(
                "takes {params} positional argument(s) but {} were given",
                self.args.len()
            )));
        }
        if let Some(key) = self.kwargs.keys().next() {
            return Err(self.problem(format!("got an unexpected keyword argument `{key}`")));
        }
        Ok(())
    }
}

/// Not public API. Runs a plain-fn task on the blocking thread pool, never on the async
/// worker threads.
pub async fn run_blocking<R, F>(f: F) -> std::result::Result<R, TaskError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(output) => Ok(output),
        Err(e) if e.is_panic() => Err(TaskError::panicked(&panic_message(e.into_panic().as_ref()))),
        Err(e) => Err(TaskError::msg(format!(
            "the blocking task did not finish: {e}"
        ))),
    }
}

/// Not public API. Encodes one argument of a typed `add_task` call.
pub fn encode_arg<T: Serialize + ?Sized>(task: &str, param: &str, value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::InvalidArguments {
        task: task.to_owned(),
        reason: format!("argument for parameter `{param}` does not encode as JSON: {e}"),
    })
}

/// Not public API. Builds a call of a task whose definition the caller holds.
pub fn call<H>(definition: &'static TaskDefinition, args: Result<Vec<Value>>) -> TaskCall<H> {
    TaskCall::defined(definition, args)
}

/// Not public API. Enqueues a task whose definition the caller holds.
pub async fn enqueue<T>(
    app: &QueueTasks,
    definition: &'static TaskDefinition,
    args: Vec<Value>,
) -> Result<TaskHandle<T>> {
    Ok(app
        .enqueue_defined(definition, args, Map::new())
        .await?
        .typed())
}

/// Not public API. Adds many calls of a task; the handles read the results typed.
pub async fn enqueue_many<H: crate::FromTaskHandle>(
    app: &QueueTasks,
    calls: impl IntoIterator<Item = TaskCall<H>>,
) -> Result<Vec<H>> {
    app.add_many(calls).await
}

/// Not public API. Adds a stream task; its handle reads the items typed.
pub async fn enqueue_stream<I>(
    app: &QueueTasks,
    definition: &'static TaskDefinition,
    args: Vec<Value>,
) -> Result<StreamHandle<I>> {
    Ok(StreamHandle::new(
        app.enqueue_defined(definition, args, Map::new()).await?,
    ))
}

// ---------------------------------------------------------------------------------------------
// Return values: `Result<T, E>` with `E: Display`, a `Stream` of serializable items, or any
// `T: Serialize`. The shim picks the conversion by autoref specialisation on the concrete
// return type: `(&&&ReturnProbe(&value)).__qtasks_return_kind()` finds the `Result` impl
// first, then the `Stream` one, then the catch-all.

/// Not public API. Wraps a task's return value to pick its conversion.
pub struct ReturnProbe<'a, T>(pub &'a T);

/// Not public API. The conversion for `Result<T, E>`.
pub struct ResultReturn;

/// Not public API. The conversion for a stream of items.
pub struct StreamReturn;

/// Not public API. The conversion for any serializable value.
pub struct ValueReturn;

/// Not public API. Picked for `Result` (two autorefs less than [`ValueReturnKind`]).
pub trait ResultReturnKind {
    /// Picks [`ResultReturn`].
    fn __qtasks_return_kind(&self) -> ResultReturn {
        ResultReturn
    }
}

impl<T, E> ResultReturnKind for &&ReturnProbe<'_, std::result::Result<T, E>> {}

/// Not public API. Picked for streams of `Result` items (a stream that can fail half-way);
/// never applies to the same type as [`ResultReturnKind`].
pub trait ResultStreamReturnKind {
    /// Picks [`ResultStreamReturn`].
    fn __qtasks_return_kind(&self) -> ResultStreamReturn {
        ResultStreamReturn
    }
}

impl<S, T, E> ResultStreamReturnKind for &&ReturnProbe<'_, S> where
    S: Stream<Item = std::result::Result<T, E>>
{
}

/// Not public API. The conversion for a stream of `Result` items: the first `Err` ends the task
/// with that error; the items before it are kept.
pub struct ResultStreamReturn;

impl ResultStreamReturn {
    /// Encodes each `Ok` item as it comes; an `Err` becomes the task's error.
    pub fn convert<S, T, E>(self, returned: S) -> std::result::Result<TaskOutput, TaskError>
    where
        S: Stream<Item = std::result::Result<T, E>> + Send + 'static,
        T: Serialize,
        E: Display + 'static,
    {
        Ok(TaskOutput::Stream(Box::pin(EncodeResults {
            items: Box::pin(returned),
        })))
    }
}

struct EncodeResults<S: Stream> {
    items: Pin<Box<S>>,
}

impl<S, T, E> Stream for EncodeResults<S>
where
    S: Stream<Item = std::result::Result<T, E>>,
    T: Serialize,
    E: Display + 'static,
{
    type Item = std::result::Result<Value, TaskError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.items.as_mut().poll_next(cx).map(|item| {
            item.map(|item| match item {
                Ok(item) => serde_json::to_value(item).map_err(|e| {
                    TaskError::msg(format!(
                        "an item of the stream does not encode as JSON: {e}"
                    ))
                }),
                Err(error) => Err(TaskError::from_display(error)),
            })
        })
    }
}

/// Not public API. Picked for streams.
pub trait StreamReturnKind {
    /// Picks [`StreamReturn`].
    fn __qtasks_return_kind(&self) -> StreamReturn {
        StreamReturn
    }
}

impl<S: Stream> StreamReturnKind for &ReturnProbe<'_, S> {}

/// Not public API. Picked for everything else.
pub trait ValueReturnKind {
    /// Picks [`ValueReturn`].
    fn __qtasks_return_kind(&self) -> ValueReturn {
        ValueReturn
    }
}

impl<T> ValueReturnKind for ReturnProbe<'_, T> {}

impl ResultReturn {
    /// `Ok` is serialized; `Err` becomes the task's error.
    pub fn convert<T: Serialize, E: Display + 'static>(
        self,
        returned: std::result::Result<T, E>,
    ) -> std::result::Result<TaskOutput, TaskError> {
        match returned {
            Ok(value) => ValueReturn.convert(value),
            Err(e) => Err(TaskError::from_display(e)),
        }
    }
}

impl StreamReturn {
    /// Encodes each item as it comes.
    pub fn convert<S>(self, returned: S) -> std::result::Result<TaskOutput, TaskError>
    where
        S: Stream + Send + 'static,
        S::Item: Serialize,
    {
        Ok(TaskOutput::Stream(Box::pin(EncodeItems {
            items: Box::pin(returned),
        })))
    }
}

impl ValueReturn {
    /// Serializes the value.
    pub fn convert<T: Serialize>(self, returned: T) -> std::result::Result<TaskOutput, TaskError> {
        serde_json::to_value(returned)
            .map(TaskOutput::Value)
            .map_err(|e| TaskError::msg(format!("the task's result does not encode as JSON: {e}")))
    }
}

/// Encodes the items of a stream task as JSON.
struct EncodeItems<S: Stream> {
    items: Pin<Box<S>>,
}

impl<S> Stream for EncodeItems<S>
where
    S: Stream,
    S::Item: Serialize,
{
    type Item = std::result::Result<Value, TaskError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.items.as_mut().poll_next(cx).map(|item| {
            item.map(|item| {
                serde_json::to_value(item).map_err(|e| {
                    TaskError::msg(format!(
                        "an item of the stream does not encode as JSON: {e}"
                    ))
                })
            })
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Checks that give readable errors for mistakes only the type checker can see.

/// Not public API. Implemented only by [`TaskContext`].
#[diagnostic::on_unimplemented(
    message = "with `echo = true` the first parameter must be `qtasks::TaskContext`, not `{Self}`",
    label = "expected `qtasks::TaskContext`",
    note = "write `async fn my_task(ctx: qtasks::TaskContext, ...)`, or remove `echo = true`"
)]
pub trait EchoContext {
    /// Converts the context into the first parameter's type (which can only be the context).
    fn from_context(context: TaskContext) -> Self;
}

impl EchoContext for TaskContext {
    fn from_context(context: TaskContext) -> Self {
        context
    }
}

/// Not public API. Hands the context to the first parameter; fails to compile, with the
/// message above, unless that parameter is a `TaskContext`.
pub fn echo_context<T: EchoContext>(context: TaskContext) -> T {
    T::from_context(context)
}
