//! Schedules on the app: registering them, running them alone, reading, pausing and resuming
//! them (see [`schedule`](crate::schedule)).

use std::sync::Arc;

use super::QueueTasks;
use crate::schedule::runner::{self, Entry, PAUSED};
use crate::schedule::{Clock, Schedule, ScheduleError, ScheduleInfo, SystemClock};
use crate::{Result, TaskCall};

impl QueueTasks {
    /// Registers a periodic task: at each slot of `schedule`, one worker of the app adds
    /// `call`. Register before the worker starts (`run_forever`, `start`, `run_scheduler`);
    /// every worker that registers the same name runs it, and each slot fires once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use qtasks::schedule::Schedule;
    ///
    /// let app = qtasks::QueueTasks::new();
    /// let call = qtasks::TaskCall::new("refresh_rates", vec![], Default::default());
    /// app.schedule("rates", Schedule::every(Duration::from_secs(300)), call.clone()).unwrap();
    /// assert!(app.schedule("rates", Schedule::every(Duration::from_secs(60)), call).is_err());
    /// ```
    pub fn schedule(
        &self,
        name: &str,
        schedule: Schedule,
        call: TaskCall,
    ) -> std::result::Result<(), ScheduleError> {
        if name.is_empty() || name.contains(':') {
            return Err(ScheduleError::Name(name.to_owned()));
        }
        schedule.validate()?;
        let mut schedules = self.inner.schedules.lock();
        if schedules.iter().any(|entry| entry.name == name) {
            return Err(ScheduleError::Duplicate(name.to_owned()));
        }
        schedules.push(Arc::new(Entry {
            name: name.to_owned(),
            schedule,
            call,
        }));
        Ok(())
    }

    /// The schedules this app runs: those registered with [`schedule`](Self::schedule) and
    /// the `#[qtasks::task(cron = "...")]` tasks it runs.
    pub(crate) fn schedule_entries(&self) -> Vec<Arc<Entry>> {
        let mut entries = self.inner.schedules.lock().clone();
        if let Ok(table) = crate::registry::TaskTable::global() {
            for registration in inventory::iter::<crate::__private::CronRegistration> {
                let Some(definition) = table.get(registration.task) else {
                    continue;
                };
                if !self.runs(definition) || entries.iter().any(|e| e.name == registration.task) {
                    continue;
                }
                match Schedule::cron(registration.expression) {
                    Ok(schedule) => entries.push(Arc::new(Entry {
                        name: registration.task.to_owned(),
                        schedule,
                        call: TaskCall::new(registration.task, Vec::new(), Default::default()),
                    })),
                    Err(error) => {
                        tracing::error!(
                            task = registration.task,
                            "the task's cron schedule is not run: {error}"
                        );
                    }
                }
            }
        }
        entries
    }

    /// The schedules this app runs (registered with [`schedule`](Self::schedule), or
    /// `#[qtasks::task(cron = "...")]`), with their next slot; what they did is in
    /// [`schedules`](Self::schedules).
    pub fn registered_schedules(&self) -> Vec<ScheduleInfo> {
        let now = crate::schedule::unix_ms(self.clock().now());
        self.schedule_entries()
            .iter()
            .map(|entry| entry.info(entry.schedule.next_slot_ms(now)))
            .collect()
    }

    /// Runs this app's schedules, and no worker, until a shutdown signal (the `timer`
    /// command; the original's `AsyncTimer.run_forever`).
    pub async fn run_scheduler(&self) -> Result<()> {
        let entries = self.schedule_entries();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let runner = tokio::spawn(runner::run(self.clone(), entries, stopped));
        crate::signals::ShutdownSignals::listen().recv().await;
        tracing::info!(app = %self.name(), "shutdown signal received; the scheduler stops");
        let _ = stop.send(true);
        let _ = runner.await;
        Ok(())
    }

    /// The schedules as the workers recorded them on the backend (what fires next, the last
    /// firing), with their paused state: from any process, with or without the tasks.
    pub async fn schedules(&self) -> Result<Vec<ScheduleInfo>> {
        runner::read_infos(self).await
    }

    /// Pauses a schedule on every worker (its slots pass without firing) until
    /// [`resume_schedule`](Self::resume_schedule).
    pub async fn pause_schedule(&self, name: &str) -> Result<()> {
        Ok(self.inner.global_config.set(PAUSED, name, "1").await?)
    }

    /// Resumes a paused schedule from its next slot.
    pub async fn resume_schedule(&self, name: &str) -> Result<()> {
        Ok(self.inner.global_config.set(PAUSED, name, "0").await?)
    }

    /// Replaces the clock schedules read (the system's by default): a
    /// [`TokioClock`](crate::schedule::TokioClock) lets tests run hours of schedules with
    /// tokio's paused time. `false` if one was set already.
    pub fn set_clock(&self, clock: Arc<dyn Clock>) -> bool {
        self.inner.clock.set(clock).is_ok()
    }

    pub(crate) fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(self.inner.clock.get_or_init(|| Arc::new(SystemClock)))
    }
}
