//! Running the app: `start`, `stop` and `run_forever` (through its [`Starter`]), the worker
//! heartbeat (`ping`) and `inspect`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::components::{StartSteps, StopSteps};
use crate::inspect::{AppStats, Inspection, TaskStats};
use crate::registry::TaskTable;
use crate::signals::ShutdownSignals;
use crate::triggers::{QtasksPing, QtasksStop, StatsInspect};
use crate::{QueueTasks, Result};

/// The reason an interrupted run stops with; its delivery is handed back, not finished.
pub(crate) const INTERRUPTED: &str =
    "Interrupted: the worker is stopping and hands the task back to the queue";

/// Whether the app runs, how it stops, and what its worker counts.
#[derive(Default)]
pub(crate) struct RunState {
    /// Set from start to stop (plugins cannot be added meanwhile).
    pub(crate) running: AtomicBool,
    /// Set while a stop interrupts the running tasks (its timeout passed, a second signal, or
    /// `stop_now`): the interrupted deliveries are handed back, not finished.
    pub(crate) interrupting: AtomicBool,
    /// Wakes a stop that waits for running tasks, to interrupt them now.
    pub(crate) interrupt: tokio::sync::Notify,
    /// What a started app holds until it stops.
    pub(crate) lifecycle: tokio::sync::Mutex<Option<Running>>,
    pub(crate) counters: Counters,
    /// The id of this process's worker while it runs (each record it finishes names it).
    pub(crate) worker_id: parking_lot::Mutex<Option<Arc<str>>>,
}

/// What this process's worker counts as it goes.
#[derive(Default)]
pub(crate) struct Counters {
    /// Outcomes the broker refused: the worker had stalled past its lease.
    pub(crate) refused_outcomes: AtomicU64,
    /// Tasks run to an outcome (stored or not).
    pub(crate) processed: AtomicU64,
    /// Tasks running now.
    pub(crate) running: AtomicU64,
    /// Tasks interrupted by a stop and handed back to the queue.
    pub(crate) handed_back: AtomicU64,
}

/// What a started app holds until it stops.
pub(crate) struct Running {
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) worker: JoinHandle<()>,
    pub(crate) heartbeat: JoinHandle<()>,
    pub(crate) plugins: Vec<crate::dispatch::RuntimePlugin>,
    /// The id this worker is listed under (see `stats`).
    pub(crate) worker_id: String,
    /// The schedules this worker runs, until it stops.
    pub(crate) scheduler: JoinHandle<()>,
}

impl QueueTasks {
    /// Starts plugins, components and a worker in the background of the current tokio
    /// runtime, and returns (through the app's [`Starter`]). Stop it with
    /// [`stop`](Self::stop). For a worker process, use [`run_forever`](Self::run_forever).
    pub async fn start(&self) -> Result<()> {
        let starter = Arc::clone(&self.components().starter);
        starter
            .start(StartSteps {
                app: self,
                starter: &*starter,
            })
            .await
    }

    /// Stops gracefully: the worker takes no new task, the running ones finish, the components
    /// stop, then each plugin's `stop` runs once. Tasks still queued stay queued. Stopping a
    /// stopped app does nothing.
    pub async fn stop(&self) -> Result<()> {
        let starter = Arc::clone(&self.components().starter);
        if self.run_state().running.load(Ordering::Acquire) {
            self.dispatch()
                .fire(&QtasksStop {
                    app: self,
                    starter: &*starter,
                })
                .await;
        }
        starter
            .stop(StopSteps {
                app: self,
                starter: &*starter,
            })
            .await
    }

    /// Stops now: the async tasks still running are interrupted and handed back to the queue
    /// (status `new`), so another worker starts them at once; then the app stops as
    /// [`stop`](Self::stop) does. A plain `fn` task cannot be stopped mid-call: its thread runs
    /// to the end in the background, its result dropped.
    pub async fn stop_now(&self) -> Result<()> {
        self.interrupt_running();
        self.stop().await
    }

    /// Interrupts the running tasks of this process so that a stop need not wait for them.
    pub(crate) fn interrupt_running(&self) {
        if !self.run_state().running.load(Ordering::Acquire) {
            return;
        }
        self.run_state().interrupting.store(true, Ordering::Release);
        let interrupted = self.cancels().cancel_all(INTERRUPTED);
        if interrupted > 0 {
            tracing::warn!(app = %self.name(), interrupted, "interrupting the running tasks; they are handed back to the queue");
        }
        self.run_state().interrupt.notify_one();
    }

    /// Runs a worker until Ctrl-C (or SIGTERM on Unix) or [`stop`](Self::stop), then stops
    /// gracefully: running tasks get [`QueueConfig::stop_timeout`](crate::QueueConfig::stop_timeout)
    /// to finish. A second signal interrupts them at once and hands them back to the queue.
    /// This is what a worker process's `main` calls.
    ///
    /// A plain `fn` task cannot be stopped mid-call, and the runtime waits for its thread when
    /// `main` returns: so after a second signal the process ends within `stop_timeout` whatever
    /// still runs, with exit code 1 if it had to be forced (the task, handed back, runs again
    /// elsewhere).
    ///
    /// ```no_run
    /// #[tokio::main]
    /// async fn main() -> qtasks::Result<()> {
    ///     qtasks::QueueTasks::new().run_forever().await
    /// }
    /// ```
    pub async fn run_forever(&self) -> Result<()> {
        let mut signals = ShutdownSignals::listen();
        self.start().await?;
        let mut stop_requested = match self.run_state().lifecycle.lock().await.as_ref() {
            Some(running) => running.shutdown.subscribe(),
            None => return Ok(()), // stopped already
        };
        tokio::select! {
            () = signals.recv() => tracing::info!(app = %self.name(), "shutdown signal received; stopping gracefully (a second one stops now)"),
            _ = stop_requested.wait_for(|stop| *stop) => {}
        }
        let stop = self.stop();
        tokio::pin!(stop);
        tokio::select! {
            result = &mut stop => return result,
            () = signals.recv() => {
                tracing::warn!(app = %self.name(), "second shutdown signal: interrupting the running tasks and handing them back");
                self.interrupt_running();
                exit_after(self.config().stop_limit());
            }
        }
        stop.await
    }

    /// Whether a worker of this app is running anywhere: its heartbeat in the global config
    /// (on Redis, any worker process, as the original's `ping`).
    pub async fn ping(&self) -> Result<bool> {
        let global_config = &*self.components().global_config;
        self.dispatch()
            .fire(&QtasksPing {
                app: self,
                global_config,
            })
            .await;
        Ok(global_config.status().await?)
    }

    /// What the app is made of and which tasks it knows (`stats_inspect` fires first).
    pub async fn inspect(&self) -> Inspection {
        self.dispatch().fire(&StatsInspect { app: self }).await;
        let tasks: Vec<TaskStats> = TaskTable::global()
            .map(|table| {
                table
                    .definitions()
                    .iter()
                    .map(|d| TaskStats::of(d))
                    .collect()
            })
            .unwrap_or_default();
        let components = self.components();
        Inspection {
            app: AppStats {
                name: self.name(),
                version: env!("CARGO_PKG_VERSION"),
                config: (*self.config()).clone(),
                tasks_count: tasks.len(),
                plugins_count: crate::dispatch::static_registrations().len()
                    + self.runtime_plugins().len(),
                events_count: self.events().count(),
                broker: components.broker.name().to_owned(),
                storage: components.storage.name().to_owned(),
                global_config: components.global_config.name().to_owned(),
                worker: components.worker.name().to_owned(),
                starter: components.starter.name().to_owned(),
                executor: components.runner.name().to_owned(),
            },
            tasks,
            schedules: self.schedules().registered(),
        }
    }
}

/// Ends the process after `limit` unless it has ended by then: a second shutdown signal must
/// end it even while a plain `fn` task's thread runs on (the runtime would wait for that thread
/// when `main` returns, and later signals are taken by the runtime's handler, not the default
/// one that would end the process). An OS thread, so a runtime that no longer runs tasks
/// cannot hold it up.
fn exit_after(limit: std::time::Duration) {
    let watchdog = std::thread::Builder::new()
        .name("qtasks-exit-watchdog".to_owned())
        .spawn(move || {
            std::thread::sleep(limit);
            tracing::error!("still running {limit:?} after the second shutdown signal (a plain `fn` task cannot be stopped mid-call); exiting now");
            std::process::exit(1);
        });
    if let Err(error) = watchdog {
        tracing::error!("could not start the exit watchdog: {error}");
    }
}
