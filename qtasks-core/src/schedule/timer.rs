//! `Timer`: the original's `AsyncTimer`, for code ported from Python QTasks.

use serde::Serialize;
use serde_json::{Map, Value};

use super::Schedule;
use crate::{Error, QueueTasks, Result, TaskCall};

/// Schedules with the original's shape: `timer.add_task(task_name, trigger, args, kwargs)`
/// for cron, interval and date triggers ([`Schedule::cron`], [`Schedule::every`],
/// [`Schedule::at`]), then `run_forever`. Unlike the original, it needs no process of its own
/// (the app's workers run its schedules too) and two of them fire each slot once.
///
/// ```no_run
/// use std::time::Duration;
/// use qtasks::schedule::{Schedule, Timer};
///
/// # async fn demo(app: qtasks::QueueTasks) -> qtasks::Result<()> {
/// let mut timer = Timer::new(&app);
/// timer.add_task("report", Schedule::every(Duration::from_secs(60)), (2026,), ())?;
/// timer.add_task("cleanup", Schedule::cron("0 3 * * *").unwrap(), (), ())?;
/// timer.run_forever().await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Timer {
    app: QueueTasks,
    added: usize,
}

impl Timer {
    /// A timer adding to `app`'s queue.
    pub fn new(app: &QueueTasks) -> Self {
        Timer {
            app: app.clone(),
            added: 0,
        }
    }

    /// Adds `task_name(*args, **kwargs)` at every slot of `trigger`. The schedule is named
    /// `task_name`, then `task_name#2`, ... for more of the same task.
    pub fn add_task(
        &mut self,
        task_name: &str,
        trigger: Schedule,
        args: impl Serialize,
        kwargs: impl Serialize,
    ) -> Result<&mut Self> {
        let invalid = |reason: String| Error::InvalidArguments {
            task: task_name.to_owned(),
            reason,
        };
        let args = match serde_json::to_value(args).map_err(|e| invalid(e.to_string()))? {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            other => vec![other],
        };
        let kwargs = match serde_json::to_value(kwargs).map_err(|e| invalid(e.to_string()))? {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        self.added += 1;
        let name = if self.added == 1 {
            task_name.to_owned()
        } else {
            format!("{task_name}#{}", self.added)
        };
        self.app
            .schedules()
            .add(&name, trigger, TaskCall::new(task_name, args, kwargs))
            .map_err(|e| invalid(e.to_string()))?;
        Ok(self)
    }

    /// Runs the schedules (and no worker) until a shutdown signal.
    pub async fn run_forever(&self) -> Result<()> {
        self.app.schedules().run().await
    }
}
