//! Schedules on the app, through [`QueueTasks::schedules`]: registering them, running them
//! alone, reading, pausing and resuming them (see [`schedule`](crate::schedule)).

use std::sync::Arc;

use super::QueueTasks;
use crate::schedule::runner::{self, Entry, PAUSED};
use crate::schedule::{Clock, Schedule, ScheduleError, ScheduleInfo, SystemClock};
use crate::{Result, TaskCall};

/// The schedules registered on the app, and the clock they read.
#[derive(Default)]
pub(super) struct ScheduleState {
    entries: parking_lot::Mutex<Vec<Arc<Entry>>>,
    clock: std::sync::OnceLock<Arc<dyn Clock>>,
}

impl QueueTasks {
    /// The app's schedules: register, read, pause and resume them, run them alone.
    pub fn schedules(&self) -> Schedules<'_> {
        Schedules { app: self }
    }

    /// The schedules this app runs: those registered with [`Schedules::add`] and the
    /// `#[qtasks::task(cron = "...")]` tasks it runs.
    pub(crate) fn schedule_entries(&self) -> Vec<Arc<Entry>> {
        let mut entries = self.inner.schedules.entries.lock().clone();
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

    pub(crate) fn clock(&self) -> Arc<dyn Clock> {
        Arc::clone(
            self.inner
                .schedules
                .clock
                .get_or_init(|| Arc::new(SystemClock)),
        )
    }
}

/// The schedules of an app, from [`QueueTasks::schedules`].
#[derive(Debug, Clone, Copy)]
pub struct Schedules<'a> {
    app: &'a QueueTasks,
}

impl Schedules<'_> {
    /// Registers a periodic task: at each slot of `schedule`, one worker of the app adds
    /// `call`. Register before the worker starts (`run_forever`, `start`, [`run`](Self::run));
    /// every worker that registers the same name runs it, and each slot fires once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use qtasks::schedule::Schedule;
    ///
    /// let app = qtasks::QueueTasks::new();
    /// let call = qtasks::TaskCall::new("refresh_rates", vec![], Default::default());
    /// let schedules = app.schedules();
    /// schedules.add("rates", Schedule::every(Duration::from_secs(300)), call.clone()).unwrap();
    /// assert!(schedules.add("rates", Schedule::every(Duration::from_secs(60)), call).is_err());
    /// ```
    pub fn add<H>(
        self,
        name: &str,
        schedule: Schedule,
        call: TaskCall<H>,
    ) -> std::result::Result<(), ScheduleError> {
        let call = call.untyped();
        if name.is_empty() || name.contains(':') {
            return Err(ScheduleError::Name(name.to_owned()));
        }
        schedule.validate()?;
        let mut schedules = self.app.inner.schedules.entries.lock();
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

    /// The schedules this app runs (registered with [`add`](Self::add), or
    /// `#[qtasks::task(cron = "...")]`), with their next slot; what they did is in
    /// [`recorded`](Self::recorded).
    pub fn registered(self) -> Vec<ScheduleInfo> {
        let now = crate::schedule::unix_ms(self.app.clock().now());
        self.app
            .schedule_entries()
            .iter()
            .map(|entry| entry.info(entry.schedule.next_slot_ms(now)))
            .collect()
    }

    /// Runs this app's schedules, and no worker, until a shutdown signal (the `timer`
    /// command; the original's `AsyncTimer.run_forever`).
    pub async fn run(self) -> Result<()> {
        let entries = self.app.schedule_entries();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let runner = tokio::spawn(runner::run(self.app.clone(), entries, stopped));
        crate::signals::ShutdownSignals::listen().recv().await;
        tracing::info!(app = %self.app.name(), "shutdown signal received; the scheduler stops");
        let _ = stop.send(true);
        let _ = runner.await;
        Ok(())
    }

    /// The schedules as the workers recorded them on the backend (what fires next, the last
    /// firing), with their paused state: from any process, with or without the tasks.
    pub async fn recorded(self) -> Result<Vec<ScheduleInfo>> {
        runner::read_infos(self.app).await
    }

    /// Pauses a schedule on every worker (its slots pass without firing) until
    /// [`resume`](Self::resume).
    pub async fn pause(self, name: &str) -> Result<()> {
        Ok(self
            .app
            .components()
            .global_config
            .set(PAUSED, name, "1")
            .await?)
    }

    /// Resumes a paused schedule from its next slot.
    pub async fn resume(self, name: &str) -> Result<()> {
        Ok(self
            .app
            .components()
            .global_config
            .set(PAUSED, name, "0")
            .await?)
    }

    /// Adds a schedule's call once, now, outside its slots (the slots go on as before): a
    /// schedule registered in this process, else one a worker recorded on the backend, so that
    /// the command line and the dashboard can run it without the schedule's code.
    ///
    /// ```rust,standalone_crate
    /// use std::time::Duration;
    /// use qtasks::schedule::Schedule;
    ///
    /// #[qtasks::task]
    /// async fn refresh_rates(currency: String) -> String {
    ///     currency
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::new();
    /// let call = refresh_rates::call("EUR".into());
    /// app.schedules().add("rates", Schedule::every(Duration::from_secs(3600)), call).unwrap();
    /// let added = app.schedules().run_now("rates").await?;
    /// assert_eq!(app.get(added.uuid()).await?.unwrap().task_name, "refresh_rates");
    /// assert!(app.schedules().run_now("nightly").await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn run_now(self, name: &str) -> Result<crate::TaskHandle> {
        // A schedule of this process: its call as it is, every option kept.
        let registered = self
            .app
            .schedule_entries()
            .iter()
            .find(|entry| entry.name == name)
            .map(|entry| entry.call.clone());
        if let Some(call) = registered {
            tracing::info!(app = %self.app.name(), schedule = name, task = %call.task_name, "running a schedule's call now");
            return call.add(self.app).await;
        }
        // A schedule a worker recorded: the call as it recorded it.
        let info = runner::read_infos(self.app)
            .await?
            .into_iter()
            .find(|info| info.name == name)
            .ok_or_else(|| crate::Error::UnknownSchedule(name.to_owned()))?;
        let Some(args) = info.args else {
            return Err(crate::Error::InvalidConfig(format!(
                "schedule `{name}` was recorded by a worker of an older qtasks, which does not record its call's arguments: restart that worker, or run the schedule from a process that registers it"
            )));
        };
        let mut options = crate::AddOptions::default();
        if let Some(priority) = info.priority {
            options = options.priority(priority);
        }
        if let Some(queue) = info.queue {
            options = options.queue(queue);
        }
        tracing::info!(app = %self.app.name(), schedule = name, task = %info.task, "running a schedule's call now");
        self.app
            .add_task_with(
                &info.task,
                args,
                serde_json::Value::Object(info.kwargs),
                options,
            )
            .await
    }

    /// Replaces the clock schedules read (the system's by default): a
    /// [`TokioClock`](crate::schedule::TokioClock) lets tests run hours of schedules with
    /// tokio's paused time. `false` if one was set already.
    pub fn set_clock(self, clock: Arc<dyn Clock>) -> bool {
        self.app.inner.schedules.clock.set(clock).is_ok()
    }
}
