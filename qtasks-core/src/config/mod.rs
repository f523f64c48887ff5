//! The app's configuration: the original's `QueueConfig` fields and defaults, overridable from
//! `QTASKS_*` environment variables with typed parsing.
//!
//! The fields are named once, in the struct: serde reads them from text (through `envy`: the
//! environment's `QTASKS_MAX_TASKS_PROCESS`, once its prefix is taken off, and the text
//! `set_config` takes) and from JSON; [`fields`] says how each kind of field reads its text
//! (checked, as the environment's values are) or a native value (taken as given).

mod fields;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::TaskStatus;

/// Settings of an app, with the original's names and defaults.
///
/// ```
/// let config = qtasks::QueueConfig { max_tasks_process: 4, ..Default::default() };
/// let app = qtasks::QueueTasks::with_config(config);
/// assert_eq!(app.config().max_tasks_process, 4);
/// ```
///
/// Differences from the original: every field can be changed (the original's heartbeat
/// timings cannot), a list from the environment is comma-separated (the original splits it into
/// characters), and a value that does not parse is an error naming the variable (the original
/// ignores it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// The app name: it names the app in logs and is the key prefix on Redis.
    pub name: String,
    /// How many tasks one worker runs at once (the original's semaphore); at least 1.
    #[serde(deserialize_with = "fields::whole_number::deserialize")]
    pub max_tasks_process: usize,
    /// At start, put back in the queue at once the tasks other workers took and did not finish
    /// (otherwise they come back when their lease runs out). Tasks of live workers may then
    /// run twice, as in the original.
    #[serde(deserialize_with = "fields::boolean::deserialize")]
    pub running_older_tasks: bool,
    /// At start, delete the records of finished tasks.
    #[serde(deserialize_with = "fields::boolean::deserialize")]
    pub delete_finished_tasks: bool,
    /// The priority of tasks that set none; lower runs first.
    #[serde(deserialize_with = "fields::integer::deserialize")]
    pub task_default_priority: i64,
    /// Unused, as in the original (kept so its environment variable is accepted).
    pub task_default_decode: Option<String>,
    /// How long the worker heartbeat lives without a refresh, in seconds.
    #[serde(deserialize_with = "fields::whole_seconds::deserialize")]
    pub global_config_status_ttl: u64,
    /// How often a running worker refreshes its heartbeat, in seconds.
    #[serde(deserialize_with = "fields::whole_seconds::deserialize")]
    pub global_config_status_set_periodic: u64,
    /// The log level meant for workers (`tracing` levels: `error`..`trace`). qtasks logs
    /// through `tracing`; the subscriber a program installs decides what is shown.
    pub logs_default_level_server: String,
    /// The log level meant for clients.
    pub logs_default_level_client: String,
    /// A log format for the program's subscriber (the original's logging format string).
    pub logs_format: String,
    /// Seconds between looks at a result when no notification can arrive (on Redis, while no
    /// Rust worker of the app is alive: Python workers publish no results); otherwise results
    /// wake waiters at once and no periodic look is made.
    #[serde(deserialize_with = "fields::positive_seconds::deserialize")]
    pub result_time_interval: f64,
    /// The statuses `wait` returns on. (`retry` is followed to the next attempt.)
    #[serde(deserialize_with = "fields::statuses::deserialize")]
    pub result_statuses_end: Vec<TaskStatus>,
    /// How long a graceful stop waits for running tasks, in seconds. Past it, the async tasks
    /// still running are interrupted and handed back to the queue at once, so another worker
    /// starts them without waiting for their lease to run out. A second Ctrl-C or SIGTERM (or
    /// [`QueueTasks::stop_now`](crate::QueueTasks::stop_now)) does the same at once.
    #[serde(deserialize_with = "fields::non_negative_seconds::deserialize")]
    pub stop_timeout: f64,
    /// How many times the broker may hand out one attempt of a task (default 5). A delivery
    /// past it is not run: the task ends `error` with a `DeliveryLimit` reason. Only a worker
    /// that dies or stalls past its lease while it runs the task (a task that aborts, overflows
    /// its stack or is OOM-killed) leaves an attempt to be handed out again; failures the
    /// worker survives are counted by `retry` instead. Counted by the engines whose tasks
    /// outlive a worker (Redis, RabbitMQ); `0` means no limit. (Not in the original.)
    #[serde(deserialize_with = "fields::delivery_limit::deserialize")]
    pub max_deliveries: u32,
    /// The queues a worker of this app serves, with their weights: `billing:3,default:1`
    /// asks `billing` first three takes in four (default: the `default` queue alone). A worker
    /// never takes a task of a queue it does not serve. See [`crate::queues`].
    pub queues: crate::queues::QueueSelection,
    /// Serve [`queues`](Self::queues) in strict order rather than by weight: a queue is asked
    /// first for as long as it has tasks (a later queue waits while an earlier one is busy).
    #[serde(deserialize_with = "fields::boolean::deserialize")]
    pub queues_strict: bool,
    /// Per-queue caps on how many of a queue's tasks one worker runs at once (`billing:2`),
    /// within its [`max_tasks_process`](Self::max_tasks_process) slots.
    pub queue_concurrency: crate::queues::QueueLimits,
    /// How many times a worker hands back a task it cannot run (its name is not registered in
    /// this worker: a rolling deploy, a worker that runs only some routers) before the task is
    /// set aside in the dead letters, its record `error` with the reason. Each hand-back waits
    /// longer (1 s, doubling, at most a minute): 20, the default, is about 15 minutes. (Not in
    /// the original, which fails such a task at once.)
    #[serde(deserialize_with = "fields::hand_back_limit::deserialize")]
    pub unknown_task_hand_backs: u32,
    /// The prefix of the environment variables [`QueueConfig::from_env`] reads.
    pub environ_prefix: String,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            name: "QueueTasks".to_owned(),
            max_tasks_process: 10,
            running_older_tasks: false,
            delete_finished_tasks: false,
            task_default_priority: 0,
            task_default_decode: None,
            global_config_status_ttl: 20,
            global_config_status_set_periodic: 17,
            logs_default_level_server: "info".to_owned(),
            logs_default_level_client: "info".to_owned(),
            logs_format: "%(asctime)s [%(name)s: %(levelname)s] (%(subname)s) %(message)s"
                .to_owned(),
            result_time_interval: 1.0,
            result_statuses_end: vec![TaskStatus::Success, TaskStatus::Error, TaskStatus::Cancel],
            stop_timeout: 30.0,
            max_deliveries: 5,
            queues: crate::queues::QueueSelection::default(),
            queues_strict: false,
            queue_concurrency: crate::queues::QueueLimits::default(),
            unknown_task_hand_backs: 20,
            environ_prefix: "QTASKS_".to_owned(),
        }
    }
}

/// A setting that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: `{value}` is not {expected}")]
pub struct ConfigError {
    /// The environment variable or field that was set (`QTASKS_MAX_TASKS_PROCESS`).
    pub source_name: String,
    /// The value given.
    pub value: String,
    /// What the field takes.
    pub expected: String,
}

impl QueueConfig {
    /// The defaults, with every `QTASKS_<FIELD>` environment variable applied (for example
    /// `QTASKS_MAX_TASKS_PROCESS=4`, `QTASKS_RESULT_STATUSES_END=success,error`). Variables
    /// that name no field are ignored; a value that does not parse is an error naming the
    /// variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut config = QueueConfig::default();
        // Read as raw bytes: `std::env::vars` panics on any variable that is not UTF-8, even
        // one that is none of ours. Ours must be UTF-8, and one that is not is an error.
        let prefix = config.environ_prefix.clone();
        let mut ours = Vec::new();
        for (variable, value) in std::env::vars_os() {
            let Some(variable) = variable.to_str().filter(|v| v.starts_with(&prefix)) else {
                continue;
            };
            let value = value.into_string().map_err(|raw| ConfigError {
                source_name: variable.to_owned(),
                value: raw.to_string_lossy().into_owned(),
                expected: "UTF-8 text".to_owned(),
            })?;
            ours.push((variable.to_owned(), value));
        }
        config.apply_env(ours)?;
        Ok(config)
    }

    /// Applies `prefix`ed variables from `vars` (testable without touching the process
    /// environment), in order; a variable that names no field is ignored.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let prefix = self.environ_prefix.clone();
        let fields = QueueConfig::fields();
        for (variable, value) in vars {
            let Some(field) = variable.strip_prefix(&prefix) else {
                continue;
            };
            let field = field.to_ascii_lowercase();
            if fields.contains(&field) {
                self.set_field(&field, &value).map_err(|e| ConfigError {
                    source_name: variable.clone(),
                    ..e
                })?;
            }
        }
        Ok(())
    }

    /// The names of the fields, as [`set_field`](Self::set_field) and the environment take
    /// them (lower case; `QTASKS_` and upper case in the environment).
    pub fn fields() -> Vec<String> {
        match serde_json::to_value(QueueConfig::default()) {
            Ok(serde_json::Value::Object(fields)) => {
                fields.into_iter().map(|(name, _)| name).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Sets one field from its text form, read as the environment's variable would be.
    pub fn set_field(&mut self, field: &str, value: &str) -> Result<(), ConfigError> {
        let refused = |expected: String| ConfigError {
            source_name: field.to_owned(),
            value: value.to_owned(),
            expected,
        };
        if !QueueConfig::fields().iter().any(|f| f == field) {
            return Err(refused(format!(
                "a field of QueueConfig ({})",
                QueueConfig::fields().join(", ")
            )));
        }
        // The text is read alone (so an error is this field's), then its value is laid over
        // this config's, field by field as JSON (which keeps every other value as it is).
        let read: QueueConfig =
            envy::from_iter([(field.to_owned(), value.to_owned())]).map_err(|error| {
                refused(match error {
                    envy::Error::Custom(expected) => expected,
                    other => other.to_string(),
                })
            })?;
        let (Ok(serde_json::Value::Object(mut fields)), Ok(serde_json::Value::Object(mut new))) =
            (serde_json::to_value(&*self), serde_json::to_value(&read))
        else {
            return Err(refused("a value QueueConfig can hold".to_owned()));
        };
        if let Some(new) = new.remove(field) {
            fields.insert(field.to_owned(), new);
        }
        *self = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|error| refused(error.to_string()))?;
        Ok(())
    }

    /// [`stop_timeout`](Self::stop_timeout) as a duration (30 s when it is not a finite,
    /// non-negative number).
    pub fn stop_limit(&self) -> Duration {
        Duration::try_from_secs_f64(self.stop_timeout).unwrap_or(Duration::from_secs(30))
    }

    /// [`result_time_interval`](Self::result_time_interval) as a duration (one second when
    /// it is not a finite, positive number).
    pub fn result_interval(&self) -> Duration {
        Duration::try_from_secs_f64(self.result_time_interval)
            .ok()
            .filter(|interval| !interval.is_zero())
            .unwrap_or(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn environment_variables_override_typed_fields() {
        let mut config = QueueConfig::default();
        config
            .apply_env(vars(&[
                ("QTASKS_MAX_TASKS_PROCESS", "4"),
                ("QTASKS_TASK_DEFAULT_PRIORITY", "21"),
                ("QTASKS_DELETE_FINISHED_TASKS", "yes"),
                ("QTASKS_RESULT_STATUSES_END", "success, error"),
                ("QTASKS_RESULT_TIME_INTERVAL", "0.25"),
                ("QTASKS_TEST_REDIS_URL", "redis://ignored"), // names no field
                ("OTHER_MAX_TASKS_PROCESS", "99"),            // another prefix
            ]))
            .unwrap();
        assert_eq!(config.max_tasks_process, 4);
        assert_eq!(config.task_default_priority, 21);
        assert!(config.delete_finished_tasks);
        assert_eq!(
            config.result_statuses_end,
            [TaskStatus::Success, TaskStatus::Error]
        );
        assert_eq!(config.result_time_interval, 0.25);
    }

    #[test]
    fn a_value_that_does_not_parse_names_the_variable() {
        let mut config = QueueConfig::default();
        let error = config
            .apply_env(vars(&[("QTASKS_MAX_TASKS_PROCESS", "many")]))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "QTASKS_MAX_TASKS_PROCESS: `many` is not a whole number"
        );
        let error = config
            .apply_env(vars(&[("QTASKS_RESULT_STATUSES_END", "success,done")]))
            .unwrap_err();
        assert!(error.to_string().starts_with(
            "QTASKS_RESULT_STATUSES_END: `success,done` is not a comma-separated list"
        ));
        let error = config
            .apply_env(vars(&[("QTASKS_RUNNING_OLDER_TASKS", "maybe")]))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "QTASKS_RUNNING_OLDER_TASKS: `maybe` is not a boolean"
        );
        let error = config
            .apply_env(vars(&[("QTASKS_STOP_TIMEOUT", "NaN")]))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "QTASKS_STOP_TIMEOUT: `NaN` is not a finite, non-negative number of seconds"
        );
        assert_eq!(
            config,
            QueueConfig::default(),
            "a refused value changes nothing"
        );
    }

    #[test]
    fn queues_read_from_the_environment() {
        let mut config = QueueConfig::default();
        config
            .apply_env(vars(&[
                ("QTASKS_QUEUES", "billing:3, default"),
                ("QTASKS_QUEUES_STRICT", "true"),
                ("QTASKS_QUEUE_CONCURRENCY", "billing:2"),
                ("QTASKS_UNKNOWN_TASK_HAND_BACKS", "4"),
            ]))
            .unwrap();
        assert_eq!(config.queues.to_string(), "billing:3,default:1");
        assert!(config.queues_strict);
        assert_eq!(config.queue_concurrency.limit_of("billing"), Some(2));
        assert_eq!(config.unknown_task_hand_backs, 4);
        let error = config
            .apply_env(vars(&[("QTASKS_QUEUES", "billing:x")]))
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("QTASKS_QUEUES: `billing:x` is not"),
            "{error}"
        );
        let mut copy = config.clone();
        copy.set_field("queues", "emails").unwrap();
        assert_eq!(copy.queues.to_string(), "emails:1");
    }

    #[test]
    fn a_field_set_by_text_keeps_the_others() {
        let mut config = QueueConfig {
            name: "reports, nightly".to_owned(),
            result_statuses_end: Vec::new(),
            stop_timeout: 0.1,
            ..Default::default()
        };
        config.set_field("task_default_decode", "utf-8").unwrap();
        config.set_field("max_deliveries", "0").unwrap();
        assert_eq!(
            config,
            QueueConfig {
                name: "reports, nightly".to_owned(),
                result_statuses_end: Vec::new(),
                stop_timeout: 0.1,
                task_default_decode: Some("utf-8".to_owned()),
                max_deliveries: 0,
                ..Default::default()
            }
        );
        let error = config.set_field("max_task_process", "4").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("max_task_process: `4` is not a field of QueueConfig ("),
            "{error}"
        );
    }

    #[test]
    fn json_gives_native_values_and_leaves_the_rest_default() {
        let config: QueueConfig = serde_json::from_str(
            r#"{"max_tasks_process": 4, "delete_finished_tasks": true, "result_statuses_end": ["success"], "stop_timeout": 2}"#,
        )
        .unwrap();
        assert_eq!(
            config,
            QueueConfig {
                max_tasks_process: 4,
                delete_finished_tasks: true,
                result_statuses_end: vec![TaskStatus::Success],
                stop_timeout: 2.0,
                ..Default::default()
            }
        );
        let round_trip: QueueConfig =
            serde_json::from_value(serde_json::to_value(&config).unwrap()).unwrap();
        assert_eq!(round_trip, config);
        assert!(serde_json::from_str::<QueueConfig>(r#"{"max_tasks_process": -1}"#).is_err());
        assert!(serde_json::from_str::<QueueConfig>(r#"{"max_task_process": 4}"#).is_err());
    }

    #[test]
    fn a_value_set_in_code_survives_a_change_of_another_field() {
        let mut config = QueueConfig {
            stop_timeout: -1.0,
            result_time_interval: f64::NAN,
            ..Default::default()
        };
        config.set_field("max_tasks_process", "3").unwrap();
        assert_eq!(config.stop_timeout, -1.0);
        assert!(config.result_time_interval.is_nan());
        assert_eq!(config.max_tasks_process, 3);
        let error = config.set_field("stop_timeout", "soon").unwrap_err();
        assert_eq!(
            error.to_string(),
            "stop_timeout: `soon` is not a number of seconds"
        );
        let error = config.set_field("stop_timeout", "-2").unwrap_err();
        assert_eq!(
            error.to_string(),
            "stop_timeout: `-2` is not a finite, non-negative number of seconds"
        );
    }
}
