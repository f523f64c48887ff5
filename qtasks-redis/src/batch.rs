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
//! bad records), each answer is decoded on its own, and only a failure of the whole call (the
//! connection dropped) is shared, as the same error for every write in it.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::link::Link;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use redis::Script;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

/// The most bytes of keys and arguments one call carries (a batch of large results is split
/// rather than sent as one call that Redis might refuse or time out on; one item alone always
/// goes, whatever its size).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// One item's keys and arguments in a batched script call. The arguments are kept in one
/// buffer (a `redis::Cmd` used as such) rather than one allocation each: a batch carries
/// thousands of them, and copying them piecemeal was most of a bulk add's client time.
#[derive(Default)]
pub(super) struct ScriptPart {
    pub(super) keys: Vec<String>,
    args: redis::Cmd,
}

impl ScriptPart {
    pub(super) fn with_args(args: &impl redis::ToRedisArgs) -> Self {
        let mut part = ScriptPart::default();
        part.arg(args);
        part
    }

    /// A part with room for `args` arguments of `bytes` bytes in all (one allocation each,
    /// where growing one argument at a time reallocates several times per task).
    pub(super) fn with_capacity(args: usize, bytes: usize) -> Self {
        ScriptPart {
            keys: Vec::with_capacity(1),
            args: redis::Cmd::with_capacity(args, bytes),
        }
    }

    pub(super) fn arg(&mut self, value: impl redis::ToRedisArgs) -> &mut Self {
        self.args.arg(value);
        self
    }

    /// The arguments' bytes, in order.
    fn args(&self) -> impl Iterator<Item = &[u8]> {
        self.args.args_iter().filter_map(|arg| match arg {
            redis::Arg::Simple(bytes) => Some(bytes),
            _ => None,
        })
    }

    /// How many bytes its keys and arguments take.
    fn size(&self) -> usize {
        self.keys.iter().map(String::len).sum::<usize>()
            + self.args().map(<[u8]>::len).sum::<usize>()
    }
}

/// What a batcher does after each call when the app waits for its replicas
/// ([`RedisOptions::wait_for_replicas`](crate::RedisOptions::wait_for_replicas)).
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplicaWait {
    pub(super) wait: crate::WaitForReplicas,
    /// Late replicas fail the call's writes (adds: the caller is told), else they are logged
    /// (finishes: the outcome is stored, and failing the worker's finish would not make the
    /// replicas faster).
    pub(super) late_fails: bool,
    /// What the writes are, for the message: "the add", "the finish".
    pub(super) what: &'static str,
}

/// Sends one batch; answers one value per item, in the items' order.
type WriteBatch = Arc<
    dyn Fn(Vec<ScriptPart>) -> BoxFuture<'static, redis::RedisResult<Vec<redis::Value>>>
        + Send
        + Sync,
>;

type Queued = (ScriptPart, oneshot::Sender<Result<redis::Value, String>>);

/// Collects the writes of one kind (outcomes, new tasks) and sends them in batches of at most
/// `max` items, one batch on the wire at a time.
pub(super) struct Batcher {
    queue: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
    write: WriteBatch,
    max: usize,
    /// The runtime the writer runs on: the one the connection was made on (whose tasks drive
    /// the connection too), so a write asked for from elsewhere is still sent.
    runtime: Option<Handle>,
}

impl Batcher {
    /// A batcher of calls of the script `code`: its own keys and arguments first, then the
    /// item count, then each item's keys and arguments (the layout `scripts::FINISH` and
    /// `scripts::ADD` share).
    pub(super) fn new(
        code: &'static str,
        commands: Link,
        fixed_keys: Vec<String>,
        fixed_args: ScriptPart,
        max: usize,
        replicas: Option<ReplicaWait>,
    ) -> Self {
        Batcher {
            queue: Mutex::new(None),
            write: writer(code, commands, fixed_keys, fixed_args, replicas),
            max: max.max(1),
            runtime: Handle::try_current().ok(),
        }
    }

    /// Writes `item` in the next batch and returns its answer, for the caller to decode. A
    /// failure of the whole batch comes back as an I/O error with the batch's reason (the
    /// callers retry such errors).
    ///
    /// Once queued, the item is written even if this future is dropped: the writes are
    /// idempotent (a replay is recognised), so the caller may always ask again.
    pub(super) async fn submit(&self, item: ScriptPart) -> redis::RedisResult<redis::Value> {
        let (reply, answer) = oneshot::channel();
        let Some(sender) = self.sender() else {
            return Err(batch_failed("no Tokio runtime to write on".to_owned()));
        };
        if sender.send((item, reply)).is_err() {
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

    /// Writes `items` now, in their order, as calls of at most `max` items (and
    /// [`MAX_BATCH_BYTES`]) sent together on the connection (pipelined, not one after the
    /// other), and returns one answer per item, in order: a bulk add's many tasks need no
    /// group commit to share calls. A failed call fails the whole; the items of the calls
    /// that went through stay written (the writes are idempotent, so the caller may send all
    /// of them again).
    pub(super) async fn write_now(
        &self,
        items: Vec<ScriptPart>,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        let mut calls = Vec::new();
        let mut rest = items.into_iter().peekable();
        while rest.peek().is_some() {
            let mut call = Vec::new();
            let mut bytes = 0;
            while let Some(next) = rest.peek() {
                bytes += next.size();
                if call.len() == self.max || (!call.is_empty() && bytes > MAX_BATCH_BYTES) {
                    break;
                }
                call.extend(rest.next());
            }
            let count = call.len();
            let answers = (self.write)(call);
            calls.push(async move {
                let answers = answers.await?;
                if answers.len() == count {
                    Ok(answers)
                } else {
                    Err(batch_failed(format!(
                        "the batch script answered {} items for {count}",
                        answers.len()
                    )))
                }
            });
        }
        let answers = futures_util::future::try_join_all(calls).await?;
        Ok(answers.into_iter().flatten().collect())
    }

    /// The queue's sender, starting the writer if there is none yet or the last one is gone:
    /// on the connection's runtime, or on the caller's if that one has shut down.
    fn sender(&self) -> Option<mpsc::UnboundedSender<Queued>> {
        let mut queue = self.queue.lock();
        if let Some(sender) = queue.as_ref().filter(|sender| !sender.is_closed()) {
            return Some(sender.clone());
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        let writer = write_batches(receiver, Arc::clone(&self.write), self.max);
        let runtime = if queue.is_none() {
            self.runtime.clone().or_else(|| Handle::try_current().ok())
        } else {
            // The writer died with its runtime: the caller's runtime takes over.
            Handle::try_current().ok().or_else(|| self.runtime.clone())
        };
        drop(runtime?.spawn(writer));
        *queue = Some(sender.clone());
        Some(sender)
    }
}

/// The writer: takes what has queued up (at most `max` items, and at most `MAX_BATCH_BYTES`
/// unless one item alone is larger), sends it, hands out the answers, and goes again; ends
/// when the batcher is dropped.
async fn write_batches(mut queue: mpsc::UnboundedReceiver<Queued>, write: WriteBatch, max: usize) {
    let mut waiting: VecDeque<Queued> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match queue.recv().await {
                Some(first) => waiting.push_back(first),
                None => return,
            }
        }
        while waiting.len() < max {
            match queue.try_recv() {
                Ok(next) => waiting.push_back(next),
                Err(_) => break,
            }
        }
        let mut bytes = 0;
        let mut count = 0;
        for (part, _) in waiting.iter().take(max) {
            bytes += part.size();
            if count > 0 && bytes > MAX_BATCH_BYTES {
                break;
            }
            count += 1;
        }
        let (items, replies): (Vec<ScriptPart>, Vec<_>) = waiting.drain(..count).unzip();
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

/// The writer of one kind of batch: one call of the script per batch. The call is built in one
/// buffer of the right size; a server that does not know the script yet (restarted, flushed)
/// gets the same call again as `EVAL`, with the script's text: one command that runs it and
/// teaches it the script, so that a call sent after this one (the next chunk of an
/// `add_many`, sent while this one was on the wire) cannot run before it does.
fn writer(
    code: &'static str,
    commands: Link,
    fixed_keys: Vec<String>,
    fixed_args: ScriptPart,
    replicas: Option<ReplicaWait>,
) -> WriteBatch {
    let hash = Arc::<str>::from(Script::new(code).get_hash());
    let fixed = Arc::new(ScriptPart {
        keys: fixed_keys,
        args: fixed_args.args,
    });
    Arc::new(move |parts: Vec<ScriptPart>| {
        let (hash, fixed, mut con) = (Arc::clone(&hash), Arc::clone(&fixed), commands.clone());
        Box::pin(async move {
            let all = || std::iter::once(&*fixed).chain(&parts);
            let key_count: usize = all().map(|part| part.keys.len()).sum();
            let arg_count: usize = all()
                .map(|part| part.keys.len() + part.args().count())
                .sum();
            // `EVALSHA hash` or `EVAL code`, then the same keys and arguments.
            let build = |command: &str, script: &str| {
                let size = all().map(ScriptPart::size).sum::<usize>() + script.len() + 40;
                let mut call = redis::Cmd::with_capacity(arg_count + 4, size);
                call.arg(command).arg(script).arg(key_count);
                for part in all() {
                    for key in &part.keys {
                        call.arg(key);
                    }
                }
                for arg in fixed.args() {
                    call.arg(arg);
                }
                call.arg(parts.len());
                for part in &parts {
                    for arg in part.args() {
                        call.arg(arg);
                    }
                }
                call
            };
            let call = build("EVALSHA", &hash);
            let Some(replicas) = replicas else {
                return match call.query_async::<Vec<redis::Value>>(&mut con).await {
                    Err(error) if is_no_script(&error) => {
                        build("EVAL", code).query_async(&mut con).await
                    }
                    answer => answer,
                };
            };
            // The call and its `WAIT` in one pipeline on one connection: a connection that
            // drops fails both, so a `WAIT` never answers for writes it did not follow.
            let mut sent = call_then_wait(&call, &replicas.wait, &mut con).await?;
            if let [redis::Value::ServerError(error), _] = sent.as_slice()
                && error.kind() == Some(redis::ServerErrorKind::NoScript)
            {
                sent = call_then_wait(&build("EVAL", code), &replicas.wait, &mut con).await?;
            }
            let mut sent = sent.into_iter();
            let (Some(answers), Some(waited)) = (sent.next(), sent.next()) else {
                return Err(batch_failed(
                    "the call and its WAIT answered short".to_owned(),
                ));
            };
            let answers = match answers {
                redis::Value::ServerError(error) => return Err(error.into()),
                answers => <Vec<redis::Value> as redis::FromRedisValue>::from_redis_value(answers)?,
            };
            let late = match waited {
                redis::Value::Int(acknowledged) => replicas.wait.late(acknowledged, replicas.what),
                redis::Value::ServerError(error) => Some(format!(
                    "{} was written, but WAIT failed: {error}",
                    replicas.what
                )),
                other => Some(format!("{}: WAIT answered {other:?}", replicas.what)),
            };
            if let Some(late) = late {
                if replicas.late_fails {
                    return Err(batch_failed(late));
                }
                // The outcome is stored; failing the finish would not make the replicas faster.
                tracing::warn!(writes = parts.len(), "{late}");
            }
            Ok(answers)
        })
    })
}

fn is_no_script(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// `call`, then `WAIT` for the replicas, in one pipeline: both answers, errors included.
async fn call_then_wait(
    call: &redis::Cmd,
    wait: &crate::WaitForReplicas,
    con: &mut Link,
) -> redis::RedisResult<Vec<redis::Value>> {
    let mut pipeline = redis::pipe();
    pipeline.ignore_errors();
    pipeline.add_command(call.clone());
    pipeline.add_command(wait.command());
    pipeline.query_async(con).await
}

fn batch_failed(reason: String) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::other(reason))
}
