//! Watching an app from outside: live stats, the workers' list, this process's worker
//! counters, dead letters.

use std::sync::atomic::Ordering;

use super::QueueTasks;
use crate::Result;
use crate::stats::{DeadLetter, WorkerInfo};

impl QueueTasks {
    /// The live numbers of the queue and its workers, from every backend through the
    /// component traits ([`Broker::stats`](crate::backend::Broker::stats) and
    /// [`GlobalConfig::workers`](crate::components::GlobalConfig::workers)); cheap enough to
    /// call every second (counters kept by the write path, nothing scanned).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::new();
    /// let stats = app.stats().await?;
    /// let queue = stats.queue.expect("the in-memory broker keeps stats");
    /// assert_eq!(queue.waiting_total(), 0);
    /// assert!(stats.workers.is_empty()); // no worker started
    /// # Ok(()) }
    /// ```
    pub async fn stats(&self) -> Result<crate::stats::Stats> {
        let components = self.components();
        let (queue, workers, schedules) = tokio::join!(
            components.broker.stats(),
            components.global_config.workers(),
            self.schedules().recorded()
        );
        Ok(crate::stats::Stats {
            app: self.name(),
            at: crate::backend::unix_now(),
            queue: queue?,
            workers: workers?,
            schedules: schedules?,
        })
    }

    /// The workers of the app that are alive now, on every machine.
    pub fn workers(&self) -> Workers<'_> {
        Workers { app: self }
    }

    /// What this process's worker has counted since the app was built.
    ///
    /// ```
    /// let app = qtasks::QueueTasks::new();
    /// assert_eq!(app.counters(), qtasks::stats::WorkerCounters::default());
    /// ```
    pub fn counters(&self) -> WorkerCounters {
        let counters = &self.run_state().counters;
        WorkerCounters {
            processed: counters.processed.load(Ordering::Relaxed),
            running: counters.running.load(Ordering::Relaxed),
            handed_back: counters.handed_back.load(Ordering::Relaxed),
            refused_outcomes: counters.refused_outcomes.load(Ordering::Relaxed),
        }
    }

    /// The dead letters: queue entries that could not run, with the reason.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::new();
    /// for letter in app.dead_letters().list(100).await? {
    ///     println!("{}: {}", letter.id, letter.reason);
    ///     app.dead_letters().resolve(&letter, false).await?; // dropped
    /// }
    /// # Ok(()) }
    /// ```
    pub fn dead_letters(&self) -> DeadLetters<'_> {
        DeadLetters { app: self }
    }

    /// The app's named queues: pause, resume, and their numbers.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> qtasks::Result<()> {
    /// let app = qtasks::QueueTasks::new();
    /// app.queues().pause("billing").await?; // no worker takes a billing task now
    /// assert!(app.queues().list().await?["billing"].paused);
    /// app.queues().resume("billing").await?;
    /// # Ok(()) }
    /// ```
    pub fn queues(&self) -> NamedQueues<'_> {
        NamedQueues { app: self }
    }
}

/// What this process's worker has counted since the app was built, from
/// [`QueueTasks::counters`]. (The whole app's numbers are in [`QueueTasks::stats`].)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerCounters {
    /// Tasks run to an outcome (any outcome).
    pub processed: u64,
    /// Tasks running now.
    pub running: u64,
    /// Tasks interrupted while stopping and handed back to the queue.
    pub handed_back: u64,
    /// Outcomes the broker refused: the worker stalled past a task's lease (a paused process,
    /// an outage longer than the lease), another worker took the task over, and this worker's
    /// late write was dropped so that each attempt has one recorded outcome. Each refusal is
    /// also logged.
    pub refused_outcomes: u64,
}

/// The workers of an app, from [`QueueTasks::workers`].
#[derive(Debug, Clone, Copy)]
pub struct Workers<'a> {
    app: &'a QueueTasks,
}

impl Workers<'_> {
    /// The workers alive now (their description refreshed within its time to live), from any
    /// process of the app.
    pub async fn list(self) -> Result<Vec<WorkerInfo>> {
        Ok(self.app.components().global_config.workers().await?)
    }
}

/// The dead letters of an app, from [`QueueTasks::dead_letters`].
#[derive(Debug, Clone, Copy)]
pub struct DeadLetters<'a> {
    app: &'a QueueTasks,
}

impl DeadLetters<'_> {
    /// Up to `limit` dead letters, oldest first.
    pub async fn list(self, limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(self.app.components().broker.dead_letters(limit).await?)
    }

    /// Takes a dead letter out: queued again as it was when `requeue`, else dropped. `false`
    /// when it was not there any more.
    pub async fn resolve(self, letter: &DeadLetter, requeue: bool) -> Result<bool> {
        Ok(self
            .app
            .components()
            .broker
            .resolve_dead_letter(letter, requeue)
            .await?)
    }
}

/// The named queues of an app, from [`QueueTasks::queues`].
#[derive(Debug, Clone, Copy)]
pub struct NamedQueues<'a> {
    app: &'a QueueTasks,
}

impl NamedQueues<'_> {
    /// Pauses `queue` for every worker of the app: its tasks wait (they may still be added and
    /// cancelled) until [`resume`](Self::resume). Running tasks run on.
    pub async fn pause(self, queue: &str) -> Result<()> {
        self.set_paused(queue, true).await
    }

    /// Resumes a paused queue: workers take its tasks again at once.
    pub async fn resume(self, queue: &str) -> Result<()> {
        self.set_paused(queue, false).await
    }

    async fn set_paused(self, queue: &str, paused: bool) -> Result<()> {
        crate::queues::check_queue_name(queue).map_err(|reason| crate::Error::InvalidQueue {
            queue: queue.to_owned(),
            reason,
        })?;
        self.app
            .components()
            .broker
            .pause_queue(queue, paused)
            .await?;
        tracing::info!(
            app = self.app.name(),
            queue,
            paused,
            "queue {}",
            if paused { "paused" } else { "resumed" }
        );
        Ok(())
    }

    /// Each queue's numbers (waiting, delayed, paused), by name: the queues that hold tasks or
    /// are paused, and those this app serves.
    pub async fn list(
        self,
    ) -> Result<std::collections::BTreeMap<String, crate::stats::QueueNumbers>> {
        let stats = self.app.components().broker.stats().await?;
        let mut queues = stats.map(|stats| stats.queues).unwrap_or_default();
        for paused in self.app.components().broker.paused_queues().await? {
            queues.entry(paused).or_default().paused = true;
        }
        for served in self.app.config().queues.names() {
            queues.entry(served.to_owned()).or_default();
        }
        Ok(queues)
    }
}
