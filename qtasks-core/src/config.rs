//! The app's configuration: the original's `QueueConfig` fields and defaults, overridable from
//! `QTASKS_*` environment variables with typed parsing.

use std::time::Duration;

use serde::Serialize;

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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueConfig {
    /// The app name: it names the app in logs and is the key prefix on Redis.
    pub name: String,
    /// How many tasks one worker runs at once (the original's semaphore); at least 1.
    pub max_tasks_process: usize,
    /// At start, put back in the queue at once the tasks other workers took and did not finish
    /// (otherwise they come back when their lease runs out). Tasks of live workers may then
    /// run twice, as in the original.
    pub running_older_tasks: bool,
    /// At start, delete the records of finished tasks.
    pub delete_finished_tasks: bool,
    /// The priority of tasks that set none; lower runs first.
    pub task_default_priority: i64,
    /// Unused, as in the original (kept so its environment variable is accepted).
    pub task_default_decode: Option<String>,
    /// How long the worker heartbeat lives without a refresh, in seconds.
    pub global_config_status_ttl: u64,
    /// How often a running worker refreshes its heartbeat, in seconds.
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
    pub result_time_interval: f64,
    /// The statuses `wait` returns on. (`retry` is followed to the next attempt.)
    pub result_statuses_end: Vec<TaskStatus>,
    /// How long a graceful stop waits for running tasks, in seconds. Past it, the async tasks
    /// still running are interrupted and handed back to the queue at once, so another worker
    /// starts them without waiting for their lease to run out. A second Ctrl-C or SIGTERM (or
    /// [`QueueTasks::stop_now`](crate::QueueTasks::stop_now)) does the same at once.
    pub stop_timeout: f64,
    /// How many times the broker may hand out one attempt of a task (default 5). A delivery
    /// past it is not run: the task ends `error` with a `DeliveryLimit` reason. Only a worker
    /// that dies or stalls past its lease while it runs the task (a task that aborts, overflows
    /// its stack or is OOM-killed) leaves an attempt to be handed out again; failures the
    /// worker survives are counted by `retry` instead. Counted by the engines whose tasks
    /// outlive a worker (Redis, RabbitMQ); `0` means no limit. (Not in the original.)
    pub max_deliveries: u32,
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
        config.apply_env(std::env::vars())?;
        Ok(config)
    }

    /// Applies `prefix`ed variables from `vars` (testable without touching the process
    /// environment).
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        let prefix = self.environ_prefix.clone();
        for (variable, value) in vars {
            let Some(field) = variable.strip_prefix(&prefix) else {
                continue;
            };
            let field = field.to_ascii_lowercase();
            if QueueConfig::FIELDS.contains(&field.as_str()) {
                self.set_field(&field, &value).map_err(|e| ConfigError {
                    source_name: variable.clone(),
                    ..e
                })?;
            }
        }
        Ok(())
    }

    /// The names of the fields, as [`set_field`](Self::set_field) and the environment take them.
    pub const FIELDS: &'static [&'static str] = &[
        "name",
        "max_tasks_process",
        "running_older_tasks",
        "delete_finished_tasks",
        "task_default_priority",
        "task_default_decode",
        "global_config_status_ttl",
        "global_config_status_set_periodic",
        "logs_default_level_server",
        "logs_default_level_client",
        "logs_format",
        "result_time_interval",
        "result_statuses_end",
        "stop_timeout",
        "max_deliveries",
        "environ_prefix",
    ];

    /// Sets one field from its text form, parsed by the field's type.
    pub fn set_field(&mut self, field: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = |expected: &str| ConfigError {
            source_name: field.to_owned(),
            value: value.to_owned(),
            expected: expected.to_owned(),
        };
        match field {
            "name" => self.name = value.to_owned(),
            "max_tasks_process" => {
                self.max_tasks_process = parse_number(field, value, "a whole number")?;
            }
            "running_older_tasks" => {
                self.running_older_tasks = parse_bool(value).ok_or_else(|| invalid("a boolean"))?;
            }
            "delete_finished_tasks" => {
                self.delete_finished_tasks =
                    parse_bool(value).ok_or_else(|| invalid("a boolean"))?;
            }
            "task_default_priority" => {
                self.task_default_priority = parse_number(field, value, "an integer")?;
            }
            "task_default_decode" => self.task_default_decode = Some(value.to_owned()),
            "global_config_status_ttl" => {
                self.global_config_status_ttl =
                    parse_number(field, value, "a whole number of seconds")?;
            }
            "global_config_status_set_periodic" => {
                self.global_config_status_set_periodic =
                    parse_number(field, value, "a whole number of seconds")?;
            }
            "logs_default_level_server" => self.logs_default_level_server = value.to_owned(),
            "logs_default_level_client" => self.logs_default_level_client = value.to_owned(),
            "logs_format" => self.logs_format = value.to_owned(),
            "result_time_interval" => {
                let seconds: f64 = parse_number(field, value, "a number of seconds")?;
                if !(seconds.is_finite() && seconds > 0.0) {
                    return Err(invalid("a positive number of seconds"));
                }
                self.result_time_interval = seconds;
            }
            "result_statuses_end" => {
                self.result_statuses_end = value
                    .split(',')
                    .map(|status| parse_status(status.trim()))
                    .collect::<Option<_>>()
                    .ok_or_else(|| invalid("a comma-separated list of statuses (new, process, success, error, cancel, retry)"))?;
            }
            "stop_timeout" => {
                let seconds: f64 = parse_number(field, value, "a number of seconds")?;
                if !(seconds.is_finite() && seconds >= 0.0) {
                    return Err(invalid("a finite, non-negative number of seconds"));
                }
                self.stop_timeout = seconds;
            }
            "max_deliveries" => {
                self.max_deliveries = parse_number(field, value, "a whole number (0: no limit)")?;
            }
            "environ_prefix" => self.environ_prefix = value.to_owned(),
            other => {
                return Err(ConfigError {
                    source_name: other.to_owned(),
                    value: value.to_owned(),
                    expected: format!(
                        "a field of QueueConfig ({})",
                        QueueConfig::FIELDS.join(", ")
                    ),
                });
            }
        }
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

fn parse_number<T: std::str::FromStr>(
    field: &str,
    value: &str,
    expected: &str,
) -> Result<T, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError {
        source_name: field.to_owned(),
        value: value.to_owned(),
        expected: expected.to_owned(),
    })
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn parse_status(text: &str) -> Option<TaskStatus> {
    text.parse().ok()
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
    }
}
