//! The app's configuration.

/// Settings of an app, with the original's defaults.
///
/// ```
/// let config = qtasks::QueueConfig { max_tasks_process: 4, ..Default::default() };
/// let app = qtasks::QueueTasks::with_config(config);
/// assert_eq!(app.config().max_tasks_process, 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The app name; it names the app in logs and (with a server backend) prefixes its keys.
    pub name: String,
    /// How many tasks one worker runs at once (the original's semaphore); at least 1.
    pub max_tasks_process: usize,
    /// The priority of tasks that set none; lower runs first.
    pub task_default_priority: i64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            name: "QueueTasks".to_owned(),
            max_tasks_process: 10,
            task_default_priority: 0,
        }
    }
}
