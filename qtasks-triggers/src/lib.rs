//! The one catalogue of qtasks plugin triggers.
//!
//! Every trigger of the Python original (QTasks 1.7.3, 56 names) is one row of the table in
//! [`for_each_trigger!`]. The `#[qtasks::plugin(on = "...")]` macro validates trigger names
//! against this table at compile time, the runtime keys its dispatch table by [`Trigger`], and
//! the trigger list in the docs is tested against [`Trigger::ALL`]. Nothing else in the
//! workspace keeps its own list.
//!
//! This crate has no dependencies so that both the proc-macro crate and the runtime can use it.
//!
//! ```
//! use qtasks_triggers::{Component, Trigger};
//!
//! let t = Trigger::from_name("task_executor_run_task_trigger_error").unwrap();
//! assert_eq!(t, Trigger::TaskExecutorRunTaskTriggerError);
//! assert_eq!(t.component(), Component::TaskExecutor);
//! assert!(t.returns_value());
//! ```
#![warn(missing_docs)]

mod suggest;

pub use suggest::{Suggestion, closest, suggest};

/// Calls `$callback! { (Variant, "wire_name", Component, Kind), ... }` with every trigger.
///
/// This is the table itself. The runtime uses it to generate its typed event enum, so that a
/// trigger added here shows up everywhere at once. Columns:
///
/// * the Rust variant (and the name of the payload type in `qtasks::triggers`);
/// * the wire name, as the Python original spells it;
/// * the [`Component`] that fires it;
/// * the [`TriggerKind`]: `Notify` (handlers observe) or `Replace` (the last value a handler
///   returns replaces something).
#[macro_export]
macro_rules! for_each_trigger {
    ($callback:ident) => {
        $callback! {
            // QueueTasks (the app)
            (QtasksAddTaskBeforeBroker, "qtasks_add_task_before_broker", QueueTasks, Replace),
            (QtasksAddTaskAfterBroker, "qtasks_add_task_after_broker", QueueTasks, Notify),
            (QtasksGet, "qtasks_get", QueueTasks, Replace),
            (QtasksStop, "qtasks_stop", QueueTasks, Notify),
            (QtasksPing, "qtasks_ping", QueueTasks, Notify),
            (QtasksFlushAll, "qtasks_flush_all", QueueTasks, Notify),
            // Broker
            (BrokerListenStart, "broker_listen_start", Broker, Notify),
            (BrokerAddWorker, "broker_add_worker", Broker, Replace),
            (BrokerAddBefore, "broker_add_before", Broker, Replace),
            (BrokerAddAfter, "broker_add_after", Broker, Notify),
            (BrokerGet, "broker_get", Broker, Replace),
            (BrokerUpdate, "broker_update", Broker, Replace),
            (BrokerStart, "broker_start", Broker, Notify),
            (BrokerStop, "broker_stop", Broker, Notify),
            (BrokerRemoveFinishedTask, "broker_remove_finished_task", Broker, Replace),
            (BrokerRunningOlderTasks, "broker_running_older_tasks", Broker, Notify),
            (BrokerFlushAll, "broker_flush_all", Broker, Notify),
            // Storage
            (StorageAdd, "storage_add", Storage, Replace),
            (StorageGet, "storage_get", Storage, Replace),
            (StorageGetAll, "storage_get_all", Storage, Replace),
            (StorageUpdate, "storage_update", Storage, Replace),
            (StorageRemoveFinishedTask, "storage_remove_finished_task", Storage, Notify),
            (StorageStart, "storage_start", Storage, Notify),
            (StorageStop, "storage_stop", Storage, Notify),
            (StorageAddProcess, "storage_add_process", Storage, Replace),
            (StorageRunningOlderTasks, "storage_running_older_tasks", Storage, Replace),
            (StorageDeleteFinishedTasks, "storage_delete_finished_tasks", Storage, Notify),
            (StorageFlushAll, "storage_flush_all", Storage, Notify),
            // GlobalConfig
            (GlobalConfigSet, "global_config_set", GlobalConfig, Replace),
            (GlobalConfigGet, "global_config_get", GlobalConfig, Replace),
            (GlobalConfigGetAll, "global_config_get_all", GlobalConfig, Replace),
            (GlobalConfigGetMatch, "global_config_get_match", GlobalConfig, Replace),
            (GlobalConfigStart, "global_config_start", GlobalConfig, Notify),
            (GlobalConfigStop, "global_config_stop", GlobalConfig, Notify),
            (GlobalConfigSetStatus, "global_config_set_status", GlobalConfig, Notify),
            // Worker
            (WorkerStart, "worker_start", Worker, Notify),
            (WorkerStop, "worker_stop", Worker, Notify),
            (WorkerAdd, "worker_add", Worker, Replace),
            (WorkerExecuteBefore, "worker_execute_before", Worker, Replace),
            (WorkerRunTaskBefore, "worker_run_task_before", Worker, Replace),
            (WorkerTaskErrorRetry, "worker_task_error_retry", Worker, Replace),
            (WorkerRemoveFinishedTask, "worker_remove_finished_task", Worker, Replace),
            (WorkerExecuteAfter, "worker_execute_after", Worker, Notify),
            // TaskExecutor
            (TaskExecutorMiddlewaresExecute, "task_executor_middlewares_execute", TaskExecutor, Notify),
            (TaskExecutorArgsReplace, "task_executor_args_replace", TaskExecutor, Replace),
            (TaskExecutorBeforeExecute, "task_executor_before_execute", TaskExecutor, Notify),
            (TaskExecutorRunTask, "task_executor_run_task", TaskExecutor, Replace),
            (TaskExecutorRunTaskGen, "task_executor_run_task_gen", TaskExecutor, Replace),
            (TaskExecutorRunTaskTriggerError, "task_executor_run_task_trigger_error", TaskExecutor, Replace),
            (TaskExecutorAfterExecute, "task_executor_after_execute", TaskExecutor, Notify),
            (TaskExecutorAfterExecuteResultReplace, "task_executor_after_execute_result_replace", TaskExecutor, Replace),
            (TaskExecutorDecode, "task_executor_decode", TaskExecutor, Replace),
            (TaskExecutorTaskClose, "task_executor_task_close", TaskExecutor, Notify),
            // Starter
            (StarterStart, "starter_start", Starter, Notify),
            (StarterStop, "starter_stop", Starter, Notify),
            // Stats
            (StatsInspect, "stats_inspect", Stats, Notify),
        }
    };
}

/// The component of the architecture that fires a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Component {
    /// The app object, `QueueTasks`.
    QueueTasks,
    /// The broker: the queue of waiting tasks.
    Broker,
    /// The storage: task records and results.
    Storage,
    /// The global config shared by workers.
    GlobalConfig,
    /// The worker: takes tasks from the broker and runs them.
    Worker,
    /// The executor: runs one task through its steps.
    TaskExecutor,
    /// The starter: starts and stops the other components.
    Starter,
    /// Stats and inspection.
    Stats,
}

impl Component {
    /// Every component, in catalogue order.
    pub const ALL: [Component; 8] = [
        Component::QueueTasks,
        Component::Broker,
        Component::Storage,
        Component::GlobalConfig,
        Component::Worker,
        Component::TaskExecutor,
        Component::Starter,
        Component::Stats,
    ];

    /// The prefix every trigger name of this component starts with (`"task_executor"`, ...).
    pub const fn prefix(self) -> &'static str {
        match self {
            Component::QueueTasks => "qtasks",
            Component::Broker => "broker",
            Component::Storage => "storage",
            Component::GlobalConfig => "global_config",
            Component::Worker => "worker",
            Component::TaskExecutor => "task_executor",
            Component::Starter => "starter",
            Component::Stats => "stats",
        }
    }

    /// The triggers this component fires, in catalogue order.
    pub fn triggers(self) -> impl Iterator<Item = Trigger> {
        Trigger::ALL
            .iter()
            .copied()
            .filter(move |t| t.component() == self)
    }
}

/// Whether handlers of a trigger only observe, or may replace a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TriggerKind {
    /// Every handler runs; what they return is ignored.
    Notify,
    /// Every handler runs; the last value a handler returns replaces the value the trigger
    /// carries (the original's `return_last=True`).
    Replace,
}

macro_rules! define_trigger_enum {
    ($(($variant:ident, $name:literal, $component:ident, $kind:ident)),* $(,)?) => {
        /// A plugin trigger: a named point where the framework calls plugin handlers.
        ///
        /// The discriminants are dense (`0..Trigger::COUNT`), so the runtime indexes its
        /// dispatch table with `trigger as usize` instead of hashing names. New triggers may
        /// come in minor releases, so a `match` outside this crate needs a `_` arm.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum Trigger {
            $(
                #[doc = concat!("`", $name, "`, fired by the ", stringify!($component), " (", stringify!($kind), ").")]
                $variant,
            )*
        }

        impl Trigger {
            /// Every trigger, in catalogue order (the order of the discriminants).
            pub const ALL: &'static [Trigger] = &[$(Trigger::$variant),*];

            /// How many triggers there are.
            pub const COUNT: usize = Trigger::ALL.len();

            /// The wire name, as the Python original spells it.
            pub const fn name(self) -> &'static str {
                match self { $(Trigger::$variant => $name,)* }
            }

            /// The Rust variant name, which is also the name of the payload type in
            /// `qtasks::triggers`.
            pub const fn variant_str(self) -> &'static str {
                match self { $(Trigger::$variant => stringify!($variant),)* }
            }

            /// The component that fires this trigger.
            pub const fn component(self) -> Component {
                match self { $(Trigger::$variant => Component::$component,)* }
            }

            /// Whether handlers observe or may replace a value.
            pub const fn kind(self) -> TriggerKind {
                match self { $(Trigger::$variant => TriggerKind::$kind,)* }
            }

            /// Looks a trigger up by its wire name.
            pub fn from_name(name: &str) -> Option<Trigger> {
                match name {
                    $($name => Some(Trigger::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

for_each_trigger!(define_trigger_enum);

impl Trigger {
    /// Whether the last value a handler returns is used (see [`TriggerKind::Replace`]).
    pub const fn returns_value(self) -> bool {
        matches!(self.kind(), TriggerKind::Replace)
    }

    /// The position of this trigger in [`Trigger::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing a trigger name that is not in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTrigger {
    /// The name that was given.
    pub name: String,
}

impl std::fmt::Display for UnknownTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown trigger `{}`", self.name)?;
        match suggest(&self.name) {
            Suggestion::DidYouMean(t) => write!(f, "; did you mean `{}`?", t.name()),
            Suggestion::SameComponent(c) => {
                write!(f, "; `{}` triggers are:", c.prefix())?;
                for t in c.triggers() {
                    write!(f, " {}", t.name())?;
                }
                Ok(())
            }
            Suggestion::None => Ok(()),
        }
    }
}

impl std::error::Error for UnknownTrigger {}

impl std::str::FromStr for Trigger {
    type Err = UnknownTrigger;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Trigger::from_name(s).ok_or_else(|| UnknownTrigger { name: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_has_the_56_triggers_of_the_original() {
        assert_eq!(Trigger::COUNT, 56);
    }

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut names: Vec<&str> = Trigger::ALL.iter().map(|t| t.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Trigger::COUNT);
        for (i, t) in Trigger::ALL.iter().enumerate() {
            assert_eq!(Trigger::from_name(t.name()), Some(*t));
            assert_eq!(
                t.index(),
                i,
                "discriminants must be dense for table indexing"
            );
        }
    }

    #[test]
    fn every_name_starts_with_its_component() {
        for t in Trigger::ALL {
            let prefix = format!("{}_", t.component().prefix());
            assert!(
                t.name().starts_with(&prefix),
                "{} does not start with {prefix}",
                t.name()
            );
        }
    }

    #[test]
    fn variant_names_are_the_camel_case_of_wire_names() {
        for t in Trigger::ALL {
            let camel: String = t
                .name()
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
            assert_eq!(camel, t.variant_str());
        }
    }

    #[test]
    fn parsing_an_unknown_name_suggests_the_close_one() {
        let err = "task_executor_run_task_trigger_eror"
            .parse::<Trigger>()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown trigger `task_executor_run_task_trigger_eror`; did you mean `task_executor_run_task_trigger_error`?"
        );
    }
}
