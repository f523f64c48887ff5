//! The data each trigger hands its handlers, and what handlers may hand back.
//!
//! Every trigger of the catalogue ([`Trigger`]) has a payload type here with the same name as
//! its variant: `task_executor_run_task_trigger_error` hands a
//! [`TaskExecutorRunTaskTriggerError`]. A `#[qtasks::plugin]` handler takes a reference to it; a
//! runtime [`Plugin`](crate::Plugin) gets the [`TriggerEvent`] enum that wraps them all.
//!
//! Replacing triggers take **typed partial updates**: a handler returns only what it changes
//! (a [`TaskUpdate`] with just a new `priority`, say), everything else stays as it was, and the
//! next handler sees the updated data. (The original merges dictionaries instead, wiping the
//! arguments a plugin did not return.)
//!
//! Field names follow Rust conventions; each field's docs give the original's keyword.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::backend::{Broker, Storage};
use crate::components::TaskExecutor;
use crate::components::{GlobalConfig, Starter, Worker};
use crate::records::RecordUpdate;
use crate::task::Outcome;
use crate::{
    PluginTriggerError, QueueTasks, QueuedTask, TaskDefinition, TaskParam, TaskRecord, Trigger,
};

/// A trigger's data type. Implemented by every payload in this module.
pub trait Payload: Sync + fmt::Debug {
    /// The trigger this payload belongs to.
    const TRIGGER: Trigger;
    /// What a handler may return; `()` for observe-only triggers.
    type Output: FromReply + Send + 'static;
    /// Wraps the payload for handlers that take any trigger.
    fn event(&self) -> TriggerEvent<'_>;
}

/// What a handler hands back to the framework.
///
/// `#[qtasks::plugin]` handlers return the trigger's typed output and never see this. Runtime
/// [`Plugin`](crate::Plugin)s, which handle any trigger, return either the typed output
/// ([`Reply::typed`]) or JSON ([`Reply::value`]) that decodes into it, like the original's
/// dictionaries: `{"priority": 9}` for a [`TaskUpdate`].
#[non_exhaustive]
pub enum Reply {
    /// JSON: the value itself for value triggers, or the fields of an update.
    Value(Value),
    /// The trigger's output type itself.
    Typed(Box<dyn std::any::Any + Send>),
}

impl Reply {
    /// A JSON reply.
    pub fn value(value: impl Into<Value>) -> Self {
        Reply::Value(value.into())
    }

    /// A typed reply: the trigger's output type (a [`TaskUpdate`], an [`Outcome`], ...).
    pub fn typed<T: Send + 'static>(output: T) -> Self {
        Reply::Typed(Box::new(output))
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Value(value) => f.debug_tuple("Value").field(value).finish(),
            Reply::Typed(_) => f.write_str("Typed(..)"),
        }
    }
}

/// Turns a [`Reply`] into a trigger's output type; `Err` says why it does not fit.
pub trait FromReply: Sized {
    /// Takes the reply if it is of this type or decodes into it.
    fn from_reply(reply: Reply) -> Result<Self, String>;
}

impl<T: serde::de::DeserializeOwned + Send + 'static> FromReply for T {
    fn from_reply(reply: Reply) -> Result<Self, String> {
        match reply {
            Reply::Typed(boxed) => boxed.downcast::<T>().map(|typed| *typed).map_err(|_| {
                format!(
                    "returned a value that is not a `{}`",
                    std::any::type_name::<T>()
                )
            }),
            Reply::Value(value) => {
                // A JSON value for a JSON output is taken as it is.
                let mut slot = Some(value);
                if let Some(same) =
                    (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<T>>()
                {
                    return Ok(same.take().expect("slot is filled"));
                }
                serde_json::from_value(slot.take().expect("slot is filled")).map_err(|e| {
                    format!(
                        "returned JSON that is not a `{}`: {e}",
                        std::any::type_name::<T>()
                    )
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Partial updates.

/// A partial update of a task before it runs; only the fields set replace anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskUpdate {
    /// A new task name.
    pub task_name: Option<String>,
    /// A new priority.
    pub priority: Option<i64>,
    /// New positional arguments.
    pub args: Option<Vec<Value>>,
    /// New keyword arguments.
    pub kwargs: Option<Map<String, Value>>,
}

impl TaskUpdate {
    pub(crate) fn apply_to(self, task: &mut QueuedTask) {
        if let Some(task_name) = self.task_name {
            if task_name != task.task_name {
                task.definition = None;
            }
            task.task_name = task_name;
        }
        if let Some(priority) = self.priority {
            task.priority = priority;
        }
        if let Some(args) = self.args {
            task.args = args;
        }
        if let Some(kwargs) = self.kwargs {
            task.kwargs = kwargs;
        }
    }
}

/// A partial update of the arguments, before they are decoded into parameters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArgsUpdate {
    /// New positional arguments.
    pub args: Option<Vec<Value>>,
    /// New keyword arguments.
    pub kwargs: Option<Map<String, Value>>,
}

/// A partial update of a global config entry about to be written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigEntryUpdate {
    /// A new hash name (the original's `name`).
    pub name: Option<String>,
    /// A new key.
    pub key: Option<String>,
    /// A new value.
    pub value: Option<String>,
}

/// Where a middleware list runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MiddlewarePosition {
    /// Before the task runs.
    Before,
    /// After the task ran.
    After,
}

// ---------------------------------------------------------------------------------------------
// Payloads. `payloads!` declares each struct (fields public to read; `#[non_exhaustive]`, so
// only qtasks builds them and fields can be added) and its `Payload` impl.

macro_rules! payloads {
    ($(
        $(#[$doc:meta])*
        $variant:ident -> $output:ty {
            $( $(#[$field_doc:meta])* $field:ident : $ty:ty ),* $(,)?
        }
    )*) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        #[non_exhaustive]
        pub struct $variant<'a> {
            $( $(#[$field_doc])* pub $field: $ty, )*
        }

        impl Payload for $variant<'_> {
            const TRIGGER: Trigger = Trigger::$variant;
            type Output = $output;
            fn event(&self) -> TriggerEvent<'_> {
                TriggerEvent::$variant(self)
            }
        }
    )*};
}

payloads! {
    // -- QueueTasks ----------------------------------------------------------------------------

    /// `qtasks_add_task_before_broker`: a task is about to be added; a [`TaskUpdate`] changes
    /// it.
    QtasksAddTaskBeforeBroker -> TaskUpdate {
        /// The app (`qtasks`).
        app: &'a QueueTasks,
        /// The broker it goes to (`broker`).
        broker: &'a dyn Broker,
        /// The task (`task_name`, `priority`, `args`, `kw`).
        task: &'a QueuedTask,
    }
    /// `qtasks_add_task_after_broker`: a task was added.
    QtasksAddTaskAfterBroker -> () {
        /// The app (`qtasks`).
        app: &'a QueueTasks,
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The task as added (`task_name`, `priority`, `args`, `kwargs`).
        task: &'a QueuedTask,
    }
    /// `qtasks_get`: `app.get` read a task; a [`RecordUpdate`] changes what it returns.
    QtasksGet -> RecordUpdate {
        /// The app (`qtasks`).
        app: &'a QueueTasks,
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The record read, if any (`task`).
        task: Option<&'a TaskRecord>,
    }
    /// `qtasks_stop`: the app is stopping.
    QtasksStop -> () {
        /// The app (`qtasks`).
        app: &'a QueueTasks,
        /// The starter that stops it (`starter`).
        starter: &'a dyn Starter,
    }
    /// `qtasks_ping`: `app.ping` was called.
    QtasksPing -> () {
        /// The app (`qtasks`).
        app: &'a QueueTasks,
        /// The global config asked (`global_config`).
        global_config: &'a dyn GlobalConfig,
    }
    /// `qtasks_flush_all`: `app.flush_all` was called.
    QtasksFlushAll -> () {
        /// The app (`qtasks`).
        app: &'a QueueTasks,
        /// The broker (`broker`).
        broker: &'a dyn Broker,
    }

    // -- Broker --------------------------------------------------------------------------------

    /// `broker_listen_start`: the worker starts taking tasks from the broker.
    BrokerListenStart -> () {
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The worker (`worker`).
        worker: &'a dyn Worker,
    }
    /// `broker_add_worker`: the broker hands a task to the worker; a [`TaskUpdate`] changes it.
    BrokerAddWorker -> TaskUpdate {
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The worker (`worker`).
        worker: &'a dyn Worker,
        /// The task (`task_name`, `uuid`, `priority`, `args`, `kw`, `created_at`).
        task: &'a QueuedTask,
    }
    /// `broker_add_before`: a task is about to be stored and queued; a [`TaskUpdate`] changes
    /// it.
    BrokerAddBefore -> TaskUpdate {
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The storage (`storage`).
        storage: &'a dyn Storage,
        /// The new task (`model`).
        task: &'a QueuedTask,
    }
    /// `broker_add_after`: a task was stored and queued.
    BrokerAddAfter -> () {
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The storage (`storage`).
        storage: &'a dyn Storage,
        /// The task (`model`).
        task: &'a QueuedTask,
    }
    /// `broker_get`: a record was read through the broker; a [`RecordUpdate`] changes it.
    BrokerGet -> RecordUpdate {
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The record, if any (`task`).
        task: Option<&'a TaskRecord>,
    }
    /// `broker_update`: a task's record is updated as it starts running; the
    /// [`RecordUpdate`]s handlers return are laid over it and stored.
    BrokerUpdate -> RecordUpdate {
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The task's id.
        uuid: Uuid,
        /// The update so far (`kw`).
        update: &'a RecordUpdate,
    }
    /// `broker_start`: the broker starts, with the worker that will take from it.
    BrokerStart -> () {
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The worker (`worker`).
        worker: &'a dyn Worker,
    }
    /// `broker_stop`: the broker stops.
    BrokerStop -> () {
        /// The broker (`broker`).
        broker: &'a dyn Broker,
    }
    /// `broker_remove_finished_task`: a task's outcome is about to be stored; an [`Outcome`]
    /// replaces it.
    BrokerRemoveFinishedTask -> Outcome {
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The storage (`storage`).
        storage: &'a dyn Storage,
        /// The task.
        task: &'a QueuedTask,
        /// The outcome (`model`).
        outcome: &'a Outcome,
    }
    /// `broker_running_older_tasks`: tasks whose worker died were taken again. (Never fired
    /// by the original.)
    BrokerRunningOlderTasks -> () {
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The worker that took them (`worker`).
        worker: &'a dyn Worker,
        /// The recovered tasks.
        tasks: &'a [QueuedTask],
    }
    /// `broker_flush_all`: the broker's tasks are about to be deleted.
    BrokerFlushAll -> () {
        /// The broker (`broker`).
        broker: &'a dyn Broker,
    }

    // -- Storage -------------------------------------------------------------------------------

    /// `storage_add`: a new record is about to be stored; a [`TaskUpdate`] changes it.
    StorageAdd -> TaskUpdate {
        /// The storage (`storage`).
        storage: &'a dyn Storage,
        /// The task's id (`uuid`).
        uuid: Uuid,
        /// The new task (`task_status`).
        task: &'a QueuedTask,
    }
    /// `storage_get`: a record was read; a [`RecordUpdate`] changes what is returned.
    StorageGet -> RecordUpdate {
        /// The storage (`storage`).
        storage: &'a dyn Storage,
        /// The record (`result`).
        record: &'a TaskRecord,
    }
    /// `storage_get_all`: all records were read; a list replaces them.
    StorageGetAll -> Vec<TaskRecord> {
        /// The storage (`storage`).
        storage: &'a dyn Storage,
        /// The records (`results`).
        records: &'a [TaskRecord],
    }
    /// `storage_update`: a record is updated as its task starts running; the
    /// [`RecordUpdate`]s handlers return are laid over it and stored.
    StorageUpdate -> RecordUpdate {
        /// The storage (`storage`).
        storage: &'a dyn Storage,
        /// The task's id.
        uuid: Uuid,
        /// The update so far (`kw`).
        update: &'a RecordUpdate,
    }
    /// `storage_remove_finished_task`: a task's outcome was stored.
    StorageRemoveFinishedTask -> () {
        /// The storage (`storage`).
        storage: &'a dyn Storage,
        /// The task (`task_broker`).
        task: &'a QueuedTask,
        /// The outcome (`model`).
        outcome: &'a Outcome,
    }
    /// `storage_start`: the storage starts.
    StorageStart -> () {
        /// The storage (`storage`).
        storage: &'a dyn Storage,
    }
    /// `storage_stop`: the storage stops.
    StorageStop -> () {
        /// The storage (`storage`).
        storage: &'a dyn Storage,
    }
    /// `storage_add_process`: a task enters processing; a [`TaskUpdate`] changes it before it
    /// runs.
    StorageAddProcess -> TaskUpdate {
        /// The storage (`storage`).
        storage: &'a dyn Storage,
        /// The task (`task_data`, `priority`).
        task: &'a QueuedTask,
    }
    /// `storage_running_older_tasks`: one recovered task (its worker died) is about to run
    /// again; a [`TaskUpdate`] changes it.
    StorageRunningOlderTasks -> TaskUpdate {
        /// The storage (`storage`).
        storage: &'a dyn Storage,
        /// The worker that took it (`worker`).
        worker: &'a dyn Worker,
        /// The task.
        task: &'a QueuedTask,
    }
    /// `storage_delete_finished_tasks`: finished records are about to be deleted (at start,
    /// with `QueueConfig::delete_finished_tasks`).
    StorageDeleteFinishedTasks -> () {
        /// The storage (`storage`).
        storage: &'a dyn Storage,
    }
    /// `storage_flush_all`: the storage's records are about to be deleted.
    StorageFlushAll -> () {
        /// The storage (`storage`).
        storage: &'a dyn Storage,
    }

    // -- GlobalConfig --------------------------------------------------------------------------

    /// `global_config_set`: an entry is about to be written; a [`ConfigEntryUpdate`] changes it.
    GlobalConfigSet -> ConfigEntryUpdate {
        /// The global config (`global_config`).
        global_config: &'a dyn GlobalConfig,
        /// The hash name (`name_`).
        name: &'a str,
        /// The key (`key`).
        key: &'a str,
        /// The value (`value`).
        value: &'a str,
    }
    /// `global_config_get`: an entry was read; a string replaces it.
    GlobalConfigGet -> String {
        /// The global config (`global_config`).
        global_config: &'a dyn GlobalConfig,
        /// The hash name.
        name: &'a str,
        /// The key.
        key: &'a str,
        /// The value read (`get`).
        value: Option<&'a str>,
    }
    /// `global_config_get_all`: a hash was read; a map replaces it.
    GlobalConfigGetAll -> BTreeMap<String, String> {
        /// The global config (`global_config`).
        global_config: &'a dyn GlobalConfig,
        /// The hash name.
        name: &'a str,
        /// The entries read (`get`).
        values: &'a BTreeMap<String, String>,
    }
    /// `global_config_get_match`: entries matching a pattern were read; a map replaces them.
    GlobalConfigGetMatch -> BTreeMap<String, String> {
        /// The global config (`global_config`).
        global_config: &'a dyn GlobalConfig,
        /// The glob pattern (`match`).
        pattern: &'a str,
        /// The entries read, keyed `name:key` (`get`).
        values: &'a BTreeMap<String, String>,
    }
    /// `global_config_start`: the global config starts.
    GlobalConfigStart -> () {
        /// The global config (`global_config`).
        global_config: &'a dyn GlobalConfig,
    }
    /// `global_config_stop`: the global config stops.
    GlobalConfigStop -> () {
        /// The global config (`global_config`).
        global_config: &'a dyn GlobalConfig,
    }
    /// `global_config_set_status`: the worker heartbeat is written (every
    /// `global_config_status_set_periodic` seconds).
    GlobalConfigSetStatus -> () {
        /// The global config (`global_config`).
        global_config: &'a dyn GlobalConfig,
    }

    // -- Worker --------------------------------------------------------------------------------

    /// `worker_start`: the worker starts.
    WorkerStart -> () {
        /// The worker (`worker`).
        worker: &'a dyn Worker,
    }
    /// `worker_stop`: the worker stops.
    WorkerStop -> () {
        /// The worker (`worker`).
        worker: &'a dyn Worker,
    }
    /// `worker_add`: the worker accepts a task; a [`TaskUpdate`] changes it.
    WorkerAdd -> TaskUpdate {
        /// The worker (`worker`).
        worker: &'a dyn Worker,
        /// The task (`task_name`, `uuid`, `priority`, `args`, `kw`, `created_at`).
        task: &'a QueuedTask,
    }
    /// `worker_execute_before`: a task is about to run; [`RecordUpdate`]s are laid over its
    /// `process` record and stored.
    WorkerExecuteBefore -> RecordUpdate {
        /// The worker (`worker`).
        worker: &'a dyn Worker,
        /// The task (`task_broker`).
        task: &'a QueuedTask,
        /// Its definition (`task_func`).
        definition: &'a TaskDefinition,
        /// The update so far (`model`).
        update: &'a RecordUpdate,
    }
    /// `worker_run_task_before`: the executor is about to run the task; a [`TaskUpdate`]
    /// changes it.
    WorkerRunTaskBefore -> TaskUpdate {
        /// The worker (`worker`).
        worker: &'a dyn Worker,
        /// The task (`task_broker`).
        task: &'a QueuedTask,
        /// Its definition (`task_func`).
        definition: &'a TaskDefinition,
    }
    /// `worker_task_error_retry`: a task with retries left failed; by default it is retried
    /// as a new task. An [`Outcome`] ends it that way instead.
    WorkerTaskErrorRetry -> Outcome {
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The task (`task_broker`).
        task: &'a QueuedTask,
        /// Its definition (`task_func`).
        definition: &'a TaskDefinition,
        /// The error (`trace`).
        traceback: &'a str,
        /// The retries left before this one.
        retries_left: u32,
    }
    /// `worker_remove_finished_task`: a task ended; an [`Outcome`] replaces how.
    WorkerRemoveFinishedTask -> Outcome {
        /// The worker (`worker`).
        worker: &'a dyn Worker,
        /// The broker (`broker`).
        broker: &'a dyn Broker,
        /// The task (`task_broker`).
        task: &'a QueuedTask,
        /// Its definition, if the worker knows the task (`task_func`).
        definition: Option<&'a TaskDefinition>,
        /// The outcome (`model`).
        outcome: &'a Outcome,
    }
    /// `worker_execute_after`: a task ended and its outcome is stored.
    WorkerExecuteAfter -> () {
        /// The task (`task_broker`).
        task: &'a QueuedTask,
        /// Its definition, if the worker knows the task (`task_func`).
        definition: Option<&'a TaskDefinition>,
        /// The outcome (`model`).
        outcome: &'a Outcome,
    }

    // -- TaskExecutor --------------------------------------------------------------------------

    /// `task_executor_middlewares_execute`: the executor is about to run a middleware list.
    TaskExecutorMiddlewaresExecute -> () {
        /// The running executor (`task_executor`).
        executor: &'a TaskExecutor,
        /// Before or after the run (`middlewares_before` or `middlewares_after`).
        position: MiddlewarePosition,
        /// The names of the middlewares about to run.
        middlewares: &'a [&'a str],
    }
    /// `task_executor_args_replace`: the arguments are about to be decoded; an [`ArgsUpdate`]
    /// changes them.
    TaskExecutorArgsReplace -> ArgsUpdate {
        /// The running executor (`task_executor`).
        executor: &'a TaskExecutor,
        /// The positional arguments (`args`).
        args: &'a [Value],
        /// The keyword arguments (`kw`).
        kwargs: &'a Map<String, Value>,
        /// The task's parameters (`args_info`).
        params: &'a [TaskParam],
    }
    /// `task_executor_before_execute`: the task is about to run.
    TaskExecutorBeforeExecute -> () {
        /// The running executor (`task_executor`).
        executor: &'a TaskExecutor,
    }
    /// `task_executor_run_task`: the task returned; a value replaces its result.
    TaskExecutorRunTask -> Value {
        /// The running executor (`task_executor`).
        executor: &'a TaskExecutor,
        /// What the task returned (`result`).
        result: &'a Value,
    }
    /// `task_executor_run_task_gen`: a stream task produced all its items; a list replaces
    /// them.
    TaskExecutorRunTaskGen -> Vec<Value> {
        /// The running executor (`task_executor`).
        executor: &'a TaskExecutor,
        /// The items (`results`).
        results: &'a [Value],
    }
    /// `task_executor_run_task_trigger_error`: the task failed with a [`PluginTriggerError`].
    ///
    /// If a handler returns a value, the last such value becomes the task's result and the
    /// task ends `success`; if none does, the task ends `error` with the error's message.
    TaskExecutorRunTaskTriggerError -> Value {
        /// The running executor (`task_executor`).
        executor: &'a TaskExecutor,
        /// The task's definition (`task_func`).
        task: &'a TaskDefinition,
        /// The task as the broker delivered it (`task_broker`).
        queued: &'a QueuedTask,
        /// The error, with the key/value pairs the task gave it (`e`).
        error: &'a PluginTriggerError,
    }
    /// `task_executor_after_execute`: the task ran successfully.
    TaskExecutorAfterExecute -> () {
        /// The running executor (`task_executor`).
        executor: &'a TaskExecutor,
    }
    /// `task_executor_after_execute_result_replace`: a value replaces the result.
    TaskExecutorAfterExecuteResultReplace -> Value {
        /// The running executor (`task_executor`).
        executor: &'a TaskExecutor,
        /// The result so far (`result`).
        result: &'a Value,
    }
    /// `task_executor_decode`: the result is about to be stored; a value replaces what is
    /// stored.
    TaskExecutorDecode -> Value {
        /// The running executor (`task_executor`).
        executor: &'a TaskExecutor,
        /// The value about to be stored (`result`).
        result: &'a Value,
    }
    /// `task_executor_task_close`: the run is over, whatever its outcome. Unlike the
    /// original, this also fires when the task failed, so task-scoped resources are always
    /// released.
    TaskExecutorTaskClose -> () {
        /// The running executor (`task_executor`).
        executor: &'a TaskExecutor,
        /// The task's definition (`task_func`).
        task: &'a TaskDefinition,
        /// The task as the broker delivered it (`task_broker`).
        queued: &'a QueuedTask,
    }

    // -- Starter and Stats ---------------------------------------------------------------------

    /// `starter_start`: the starter starts the app's parts.
    StarterStart -> () {
        /// The starter (`starter`).
        starter: &'a dyn Starter,
    }
    /// `starter_stop`: the starter stops the app's parts.
    StarterStop -> () {
        /// The starter (`starter`).
        starter: &'a dyn Starter,
    }
    /// `stats_inspect`: `app.inspect()` was called.
    StatsInspect -> () {
        /// The app whose stats are read (`stats`).
        app: &'a QueueTasks,
    }
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
