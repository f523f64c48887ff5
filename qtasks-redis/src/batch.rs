//! Group commit: writes that several tasks ask for at about the same moment go to Redis
//! together, as one script call, instead of one call each.
//!
//! The first write finds nothing on the wire and goes at once, alone, so a quiet worker or a
//! lone client waits no longer than before. Writes asked for while a call is on the wire queue
//! up and go together in the next one. The batches therefore grow with the load by themselves,
//! and the cost Redis pays per call (reading and parsing it, starting the script, the reply) is
//! shared by every write in it. That per-call cost was most of Redis's time per task.
//!
//! Each write keeps its own answer: the scripts decide each item on its own (fencing, replays,
//! bad records), and only a failure of the whole call (the connection dropped) is shared, as
//! the same error for every write in it.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

/// Sends one batch: the items in the order they were asked for; answers one per item, in
/// the same order.
pub(super) type WriteBatch<I, A> =
    Arc<dyn Fn(Vec<I>) -> BoxFuture<'static, Result<Vec<A>, redis::RedisError>> + Send + Sync>;

type Queued<I, A> = (I, oneshot::Sender<Result<A, String>>);

/// Collects the writes of one kind (outcomes, new tasks) and sends them in batches of at most
/// `max`, one batch on the wire at a time.
pub(super) struct Batcher<I, A> {
    queue: Mutex<Option<mpsc::UnboundedSender<Queued<I, A>>>>,
    write: WriteBatch<I, A>,
    max: usize,
}

impl<I: Send + 'static, A: Send + 'static> Batcher<I, A> {
    pub(super) fn new(max: usize, write: WriteBatch<I, A>) -> Self {
        Batcher {
            queue: Mutex::new(None),
            write,
            max: max.max(1),
        }
    }

    /// Writes `item` in the next batch and returns its answer. A failure of the whole batch
    /// comes back as an I/O error with the batch's reason (the callers retry such errors).
    ///
    /// Once queued, the item is written even if this future is dropped: the writes are
    /// idempotent (a replay is recognised), so the caller may always ask again.
    pub(super) async fn submit(&self, item: I) -> Result<A, redis::RedisError> {
        let (reply, answer) = oneshot::channel();
        if self.sender().send((item, reply)).is_err() {
            return Err(batch_failed("the batch writer has stopped".to_owned()));
        }
        match answer.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(reason)) => Err(batch_failed(reason)),
            Err(_) => Err(batch_failed(
                "the batch writer stopped before it answered".to_owned(),
            )),
        }
    }

    /// The queue's sender, starting the writer on this runtime if there is none yet or the
    /// last one is gone (its runtime shut down).
    fn sender(&self) -> mpsc::UnboundedSender<Queued<I, A>> {
        let mut queue = self.queue.lock();
        if let Some(sender) = queue.as_ref().filter(|sender| !sender.is_closed()) {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_batches(receiver, Arc::clone(&self.write), self.max));
        *queue = Some(sender.clone());
        sender
    }
}

/// The writer: takes what has queued up (at most `max`), sends it, hands out the answers, and
/// goes again; ends when the batcher is dropped.
async fn write_batches<I, A>(
    mut queue: mpsc::UnboundedReceiver<Queued<I, A>>,
    write: WriteBatch<I, A>,
    max: usize,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, max).await > 0 {
        let (items, replies): (Vec<I>, Vec<_>) = batch.drain(..).unzip();
        let count = items.len();
        match write(items).await {
            Ok(answers) if answers.len() == count => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Ok(answers) => {
                let reason = format!(
                    "the batch script answered {} items for {count}",
                    answers.len()
                );
                for reply in replies {
                    let _ = reply.send(Err(reason.clone()));
                }
            }
            Err(error) => {
                let reason = error.to_string();
                for reply in replies {
                    let _ = reply.send(Err(reason.clone()));
                }
            }
        }
    }
}

fn batch_failed(reason: String) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::other(reason))
}
