//! Watching an app from outside: live stats, this process's worker counters, dead letters.

use std::sync::atomic::Ordering;

use super::QueueTasks;
use crate::Result;
use crate::stats::DeadLetter;

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
        let (queue, workers, schedules) = tokio::join!(
            self.inner.broker.stats(),
            self.inner.global_config.workers(),
            self.schedules()
        );
        Ok(crate::stats::Stats {
            app: self.name(),
            at: crate::backend::unix_now(),
            queue: queue?,
            workers: workers?,
            schedules: schedules?,
        })
    }

    /// Tasks this process's worker has finished (any outcome) since the app was built.
    pub fn processed(&self) -> u64 {
        self.inner.counters.processed.load(Ordering::Relaxed)
    }

    /// Tasks this process's worker interrupted while stopping and handed back to the queue.
    pub fn handed_back(&self) -> u64 {
        self.inner.counters.handed_back.load(Ordering::Relaxed)
    }

    /// Tasks this process's worker runs now.
    pub fn running_count(&self) -> u64 {
        self.inner.counters.running.load(Ordering::Relaxed)
    }

    /// Up to `limit` dead letters (queue entries that could not run, with the reason), oldest
    /// first.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(self.inner.broker.dead_letters(limit).await?)
    }

    /// Takes a dead letter out: queued again as it was when `requeue`, else dropped. `false`
    /// when it was not there any more.
    pub async fn resolve_dead_letter(&self, letter: &DeadLetter, requeue: bool) -> Result<bool> {
        Ok(self
            .inner
            .broker
            .resolve_dead_letter(letter, requeue)
            .await?)
    }
}
