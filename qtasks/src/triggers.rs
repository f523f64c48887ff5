//! The data each trigger hands its handlers.
//!
//! Every trigger of the catalogue ([`Trigger`]) has a payload type here with the same name as
//! its variant: `task_executor_run_task_trigger_error` hands a
//! [`TaskExecutorRunTaskTriggerError`]. A `#[qtasks::plugin]` handler takes a reference to
//! it; a runtime [`Plugin`](crate::Plugin) gets the [`TriggerEvent`] enum that wraps them all.
//!
//! The `task_executor_*` triggers carry typed data and fire. The other components' triggers
//! are in the catalogue so that plugins can name them, but they do not fire yet: their typed
//! payloads come with the component traits.
//!
//! Field names follow Rust conventions; the original's keyword names are given in each
//! field's docs (`task_func` is [`TaskExecutorRunTaskTriggerError::task`], and so on).

use std::fmt;
use std::marker::PhantomData;

use serde_json::{Map, Value};

use crate::{PluginTriggerError, QueuedTask, TaskDefinition, TaskExecutor, TaskParam, Trigger};

/// A trigger's data type. Implemented by every payload in this module.
pub trait Payload: Sync + fmt::Debug {
    /// The trigger this payload belongs to.
    const TRIGGER: Trigger;
    /// What a handler may return to replace a value; `()` for observe-only triggers.
    type Output: FromReply;
    /// Wraps the payload for handlers that take any trigger.
    fn event(&self) -> TriggerEvent<'_>;
}

/// A value a handler hands back to the framework.
///
/// `#[qtasks::plugin]` handlers return the trigger's typed output and never see this; runtime
/// [`Plugin`](crate::Plugin)s, which handle any trigger, return it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// A JSON value: a result for `task_executor_run_task`, `..._trigger_error`,
    /// `..._result_replace` and `task_executor_decode`.
    Value(Value),
    /// A list of values: the items of a stream task for `task_executor_run_task_gen`.
    Values(Vec<Value>),
    /// New arguments for `task_executor_args_replace`.
    Args(ArgsUpdate),
}

impl Reply {
    /// A [`Reply::Value`].
    pub fn value(value: impl Into<Value>) -> Self {
        Reply::Value(value.into())
    }

    fn kind(&self) -> &'static str {
        match self {
            Reply::Value(_) => "a value",
            Reply::Values(_) => "a list of values",
            Reply::Args(_) => "arguments",
        }
    }
}

/// Turns a [`Reply`] into a trigger's output type; the reply is handed back when it is of the
/// wrong kind for the trigger.
pub trait FromReply: Sized {
    /// What a handler should return, for the message when it returns something else.
    const EXPECTED: &'static str;
    /// Takes the reply if it is of this kind.
    fn from_reply(reply: Reply) -> Result<Self, Reply>;
}

impl FromReply for () {
    const EXPECTED: &'static str = "nothing (this trigger only observes)";
    fn from_reply(reply: Reply) -> Result<Self, Reply> {
        Err(reply)
    }
}

impl FromReply for Value {
    const EXPECTED: &'static str = "a value";
    fn from_reply(reply: Reply) -> Result<Self, Reply> {
        match reply {
            Reply::Value(v) => Ok(v),
            other => Err(other),
        }
    }
}

impl FromReply for Vec<Value> {
    const EXPECTED: &'static str = "a list of values";
    fn from_reply(reply: Reply) -> Result<Self, Reply> {
        match reply {
            Reply::Values(v) => Ok(v),
            other => Err(other),
        }
    }
}

impl FromReply for ArgsUpdate {
    const EXPECTED: &'static str = "arguments";
    fn from_reply(reply: Reply) -> Result<Self, Reply> {
        match reply {
            Reply::Args(a) => Ok(a),
            other => Err(other),
        }
    }
}

pub(crate) fn wrong_reply_message<O: FromReply>(trigger: Trigger, reply: &Reply) -> String {
    format!(
        "returned {} for `{trigger}`, which takes {}",
        reply.kind(),
        O::EXPECTED
    )
}

/// Turns a handler's output into a [`Reply`]; the inverse of [`FromReply`].
pub trait IntoReply {
    /// Wraps the output.
    fn into_reply(self) -> Option<Reply>;
}

impl IntoReply for () {
    fn into_reply(self) -> Option<Reply> {
        None
    }
}

impl IntoReply for Value {
    fn into_reply(self) -> Option<Reply> {
        Some(Reply::Value(self))
    }
}

impl IntoReply for Vec<Value> {
    fn into_reply(self) -> Option<Reply> {
        Some(Reply::Values(self))
    }
}

impl IntoReply for ArgsUpdate {
    fn into_reply(self) -> Option<Reply> {
        Some(Reply::Args(self))
    }
}

/// A partial update of a task's arguments: only what is `Some` is replaced.
///
/// The original replaces both lists whenever a plugin returns anything, wiping the ones it did
/// not return; here what a handler leaves out stays as it was.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArgsUpdate {
    /// New positional arguments.
    pub args: Option<Vec<Value>>,
    /// New keyword arguments.
    pub kwargs: Option<Map<String, Value>>,
}

/// Where a middleware list runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MiddlewarePosition {
    /// Before the task runs.
    Before,
    /// After the task ran.
    After,
}

/// `task_executor_middlewares_execute`: the executor is about to run a middleware list.
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskExecutorMiddlewaresExecute<'a> {
    /// The running executor (`task_executor`).
    pub executor: &'a TaskExecutor,
    /// Before or after the run (the original passes `middlewares_before` or
    /// `middlewares_after`).
    pub position: MiddlewarePosition,
    /// The names of the middlewares about to run.
    pub middlewares: &'a [&'static str],
}

/// `task_executor_args_replace`: the arguments are about to be decoded; a handler may return
/// an [`ArgsUpdate`].
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskExecutorArgsReplace<'a> {
    /// The running executor (`task_executor`).
    pub executor: &'a TaskExecutor,
    /// The positional arguments (`args`).
    pub args: &'a [Value],
    /// The keyword arguments (`kw`).
    pub kwargs: &'a Map<String, Value>,
    /// The task's parameters (`args_info`).
    pub params: &'a [TaskParam],
}

/// `task_executor_before_execute`: the task is about to run.
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskExecutorBeforeExecute<'a> {
    /// The running executor (`task_executor`).
    pub executor: &'a TaskExecutor,
}

/// `task_executor_run_task`: the task returned; a handler may return a replacement result.
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskExecutorRunTask<'a> {
    /// The running executor (`task_executor`).
    pub executor: &'a TaskExecutor,
    /// What the task returned (`result`).
    pub result: &'a Value,
}

/// `task_executor_run_task_gen`: a stream task produced all its items; a handler may return a
/// replacement list. (Fires for stream tasks, which come with the execution-semantics work.)
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskExecutorRunTaskGen<'a> {
    /// The running executor (`task_executor`).
    pub executor: &'a TaskExecutor,
    /// The items (`results`).
    pub results: &'a [Value],
}

/// `task_executor_run_task_trigger_error`: the task failed with a [`PluginTriggerError`].
///
/// If a handler returns a value, the last such value becomes the task's result and the task
/// ends `success`; if none does, the task ends `error` with the error's message.
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskExecutorRunTaskTriggerError<'a> {
    /// The running executor (`task_executor`).
    pub executor: &'a TaskExecutor,
    /// The task's definition (`task_func`).
    pub task: &'a TaskDefinition,
    /// The task as the broker delivered it (`task_broker`).
    pub queued: &'a QueuedTask,
    /// The error, with the key/value pairs the task gave it (`e`).
    pub error: &'a PluginTriggerError,
}

/// `task_executor_after_execute`: the task ran successfully.
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskExecutorAfterExecute<'a> {
    /// The running executor (`task_executor`).
    pub executor: &'a TaskExecutor,
}

/// `task_executor_after_execute_result_replace`: a handler may replace the result.
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskExecutorAfterExecuteResultReplace<'a> {
    /// The running executor (`task_executor`).
    pub executor: &'a TaskExecutor,
    /// The result so far (`result`).
    pub result: &'a Value,
}

/// `task_executor_decode`: the result is about to be stored; a handler may replace the stored
/// value.
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskExecutorDecode<'a> {
    /// The running executor (`task_executor`).
    pub executor: &'a TaskExecutor,
    /// The value about to be stored (`result`).
    pub result: &'a Value,
}

/// `task_executor_task_close`: the run is over, whatever its outcome. Unlike the original,
/// this also fires when the task failed, so task-scoped resources can always be released.
#[derive(Debug)]
#[non_exhaustive]
pub struct TaskExecutorTaskClose<'a> {
    /// The running executor (`task_executor`).
    pub executor: &'a TaskExecutor,
    /// The task's definition (`task_func`).
    pub task: &'a TaskDefinition,
    /// The task as the broker delivered it (`task_broker`).
    pub queued: &'a QueuedTask,
}

macro_rules! typed_payloads {
    ($($variant:ident => $output:ty),* $(,)?) => {$(
        impl Payload for $variant<'_> {
            const TRIGGER: Trigger = Trigger::$variant;
            type Output = $output;
            fn event(&self) -> TriggerEvent<'_> {
                TriggerEvent::$variant(self)
            }
        }
    )*};
}

typed_payloads! {
    TaskExecutorMiddlewaresExecute => (),
    TaskExecutorArgsReplace => ArgsUpdate,
    TaskExecutorBeforeExecute => (),
    TaskExecutorRunTask => Value,
    TaskExecutorRunTaskGen => Vec<Value>,
    TaskExecutorRunTaskTriggerError => Value,
    TaskExecutorAfterExecute => (),
    TaskExecutorAfterExecuteResultReplace => Value,
    TaskExecutorDecode => Value,
    TaskExecutorTaskClose => (),
}

// Triggers of the other components: named in the catalogue, not fired yet.
macro_rules! pending_payloads {
    ($($variant:ident),* $(,)?) => {$(
        #[doc = concat!("The data of `", stringify!($variant), "`.")]
        ///
        /// This trigger is in the catalogue so plugins can name it, but qtasks does not fire it
        /// yet; its typed data comes with the component traits.
        #[derive(Debug)]
        #[non_exhaustive]
        pub struct $variant<'a> {
            _not_fired_yet: PhantomData<&'a ()>,
        }

        impl Payload for $variant<'_> {
            const TRIGGER: Trigger = Trigger::$variant;
            type Output = ();
            fn event(&self) -> TriggerEvent<'_> {
                TriggerEvent::$variant(self)
            }
        }
    )*};
}

pending_payloads! {
    QtasksAddTaskBeforeBroker, QtasksAddTaskAfterBroker, QtasksGet, QtasksStop, QtasksPing,
    QtasksFlushAll,
    BrokerListenStart, BrokerAddWorker, BrokerAddBefore, BrokerAddAfter, BrokerGet, BrokerUpdate,
    BrokerStart, BrokerStop, BrokerRemoveFinishedTask, BrokerRunningOlderTasks, BrokerFlushAll,
    StorageAdd, StorageGet, StorageGetAll, StorageUpdate, StorageRemoveFinishedTask, StorageStart,
    StorageStop, StorageAddProcess, StorageRunningOlderTasks, StorageDeleteFinishedTasks,
    StorageFlushAll,
    GlobalConfigSet, GlobalConfigGet, GlobalConfigGetAll, GlobalConfigGetMatch, GlobalConfigStart,
    GlobalConfigStop, GlobalConfigSetStatus,
    WorkerStart, WorkerStop, WorkerAdd, WorkerExecuteBefore, WorkerRunTaskBefore,
    WorkerTaskErrorRetry, WorkerRemoveFinishedTask, WorkerExecuteAfter,
    StarterStart, StarterStop,
    StatsInspect,
}

macro_rules! define_trigger_event {
    ($(($variant:ident, $name:literal, $component:ident, $kind:ident)),* $(,)?) => {
        /// Any trigger's data: what a runtime [`Plugin`](crate::Plugin) receives.
        ///
        /// One variant per trigger of the catalogue, holding that trigger's payload.
        #[derive(Debug, Clone, Copy)]
        #[non_exhaustive]
        pub enum TriggerEvent<'a> {
            $(
                #[doc = concat!("`", $name, "`.")]
                $variant(&'a $variant<'a>),
            )*
        }

        impl TriggerEvent<'_> {
            /// Which trigger fired.
            pub fn trigger(&self) -> Trigger {
                match self {
                    $(TriggerEvent::$variant(_) => Trigger::$variant,)*
                }
            }
        }
    };
}

qtasks_triggers::for_each_trigger!(define_trigger_event);
