//! Batching: calls made at once by many tasks go out as one statement.
//!
//! Each call hands its item to a loop and waits for its own answer. The loop takes the first
//! item, then every item queued behind it (up to a batch's most), runs the batch, and answers
//! each caller. Nothing waits for a batch to fill: a call alone goes out at once, and the calls
//! that come while a batch is on the wire make the next one.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A loop that runs batches of `T`, answering each with an `R`; stopped when dropped.
pub(crate) struct Batcher<T, R> {
    sender: mpsc::UnboundedSender<(T, oneshot::Sender<R>)>,
    task: JoinHandle<()>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// A batcher whose batches hold at most `max` items, run by `run`, which answers each item
    /// in order.
    pub(crate) fn new<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let (sender, mut receiver) = mpsc::unbounded_channel::<(T, oneshot::Sender<R>)>();
        let task = tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                let mut items = Vec::with_capacity(max.min(64));
                let mut answers = Vec::with_capacity(max.min(64));
                let (item, answer) = first;
                items.push(item);
                answers.push(answer);
                while items.len() < max {
                    match receiver.try_recv() {
                        Ok((item, answer)) => {
                            items.push(item);
                            answers.push(answer);
                        }
                        Err(_) => break,
                    }
                }
                // A batch that panics fails its callers (they hear `None`), not the loop: the
                // next calls still go out.
                let run = std::panic::AssertUnwindSafe(run(items));
                let Ok(results) = futures_util::FutureExt::catch_unwind(run).await else {
                    tracing::error!("a batch of {} calls panicked; they failed", answers.len());
                    continue;
                };
                for (answer, result) in answers.into_iter().zip(results) {
                    // A caller that gave up (its future dropped) hears nothing.
                    let _ = answer.send(result);
                }
            }
        });
        Batcher { sender, task }
    }

    /// Runs `item` in the next batch; `None` if its batch panicked, or the loop is gone (the
    /// engine is shutting down).
    pub(crate) async fn call(&self, item: T) -> Option<R> {
        let (answer, answered) = oneshot::channel();
        self.sender.send((item, answer)).ok()?;
        answered.await.ok()
    }
}

impl<T, R> Drop for Batcher<T, R> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_made_together_share_a_batch_and_each_gets_its_answer() {
        let sizes = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = std::sync::Arc::clone(&sizes);
        let batcher = Batcher::new(3, move |items: Vec<u32>| {
            seen.lock().push(items.len());
            async move { items.into_iter().map(|n| n * 10).collect() }
        });
        let answers = futures_util::future::join_all((1..=7).map(|n| batcher.call(n))).await;
        assert_eq!(answers, (1..=7).map(|n| Some(n * 10)).collect::<Vec<_>>());
        let sizes = sizes.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 7);
        assert!(sizes.iter().all(|size| *size <= 3), "{sizes:?}");
    }

    #[tokio::test]
    async fn a_batch_that_panics_fails_its_calls_and_the_next_ones_still_go_out() {
        let batcher = Batcher::new(1, |items: Vec<u32>| async move {
            assert!(items[0] != 0, "a batch that panics on purpose");
            items
        });
        assert_eq!(batcher.call(0).await, None);
        assert_eq!(batcher.call(5).await, Some(5));
    }
}
