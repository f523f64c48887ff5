//! The RabbitMQ broker: the queue lives in RabbitMQ, the records in the paired storage.
//!
//! Each step of a task's life is one conditional write of the storage
//! ([`RecordStore::transition`]) and one AMQP step, in the order that loses nothing:
//! - add: the record (`new`), then the message, published with a confirm;
//! - take: the message arrives; the record goes `new` → `process` (or, for a redelivered
//!   message whose worker died, `process` → `process`); a message whose record has ended
//!   (cancelled while it waited, or finished by a worker that died before its ack) is acked
//!   and dropped;
//! - finish: the outcome is stored (`process` → the outcome), *then* the message is acked. A
//!   worker that dies in between leaves an unacked message, which RabbitMQ delivers again; the
//!   record says it has ended, so it is dropped, not run twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, Consumer};
use qtasks_core::backend::{
    BackendError, Broker, CancelRequest, CancelState, Delivery, RecordStore, RunInfo, Transition,
    unix_now,
};
use qtasks_core::components::GlobalConfig;
use qtasks_core::queues::{DEFAULT_QUEUE, Take};
use qtasks_core::records::RecordChange;
use qtasks_core::stats::{DeadLetter, QueueStats};
use qtasks_core::{Outcome, QueuedTask, TaskStatus};
use std::sync::Arc;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::cancels::{declare_cancel_exchange, listen_for_cancels};
use crate::dead_letters::{AT_HEADER, REASON_HEADER, REVIVE_HEADER, letter_of, revives};
use crate::held::{self, Held, Let};
use crate::link::{Link, STEP, best_effort, failure, millis, step};
use crate::wire::{self, Names};

/// How long a finished task's outcome is tried again through a storage outage before its
/// message goes back to the queue (and the task runs again).
const FINISH_PATIENCE: Duration = Duration::from_secs(60);

pub(crate) struct RabbitMqBroker {
    link: Arc<Link>,
    storage: Arc<dyn RecordStore>,
    /// Where the paused queues and the named queues in use are kept for every process (the
    /// storage's engine: Redis, or memory).
    global_config: Arc<dyn GlobalConfig>,
    /// The named queues (and their delay queues) declared by this process.
    declared: parking_lot::Mutex<HashSet<String>>,
    /// The paused queues, as last read, and when.
    paused: parking_lot::Mutex<Option<(Instant, HashSet<String>)>>,
    /// Woken when this process pauses or resumes a queue (a take looks again at once).
    pauses_changed: tokio::sync::Notify,
    /// How many unacked messages a worker's consumer holds: its concurrency.
    prefetch: u16,
    consuming: tokio::sync::Mutex<Option<Consuming>>,
    /// The deliveries being run, by receipt (void once their connection dies: see `held`).
    held: Arc<Held>,
    receipts: AtomicU64,
    /// This broker's part of its receipts, so that no two processes hand out the same one.
    instance: String,
    cancels: broadcast::Sender<CancelRequest>,
    /// Dropped with the broker: the cancel listener stops.
    _listening: tokio::sync::watch::Sender<()>,
}

/// What one wait on the consumers brought: each message with the channel it came on.
struct Received {
    messages: Vec<(AmqpDelivery, Channel)>,
    connection: Arc<Connection>,
}

/// The consumers of the queues a worker serves, one channel each (each with the worker's
/// prefetch: a queue the worker does not take from now, capped or paused, holds at most that
/// many messages here and never crowds the others out).
struct Consuming {
    queues: Vec<QueueConsumer>,
    /// The connection the consumers live on (a stream does not always end when the connection
    /// dies: see `receive`).
    connection: Arc<Connection>,
}

struct QueueConsumer {
    /// The qtasks name of the queue (`default` for the task queue).
    name: String,
    /// Its channel: kept while the queue is paused, since the deliveries running from it are
    /// acked there.
    channel: Channel,
    /// `None` while the queue is paused (cancelled, so RabbitMQ sends no more).
    consumer: Option<Consumer>,
}

impl Consuming {
    /// Whether every consumer's channel and the connection are still open.
    fn alive(&self) -> bool {
        self.connection.status().connected()
            && self
                .queues
                .iter()
                .all(|queue| queue.channel.status().connected())
    }

    fn serves(&self, name: &str) -> bool {
        self.queues.iter().any(|queue| queue.name == name)
    }
}

/// How long the paused queues, once read, are taken as they were.
const PAUSED_FOR: Duration = Duration::from_secs(1);

/// The global config entries: the paused queues, and the named queues in use (key: the
/// queue, value `1`; a resumed queue is `0`).
const PAUSED_ENTRY: &str = "qtasks_paused_queues";
const QUEUES_ENTRY: &str = "qtasks_queues";

/// How long a consumer waits for a delivery before it looks whether its connection still lives.
const CONSUMER_CHECK: Duration = Duration::from_secs(1);

impl RabbitMqBroker {
    /// Connects (so a wrong URL fails here, not at the first add) and starts listening for
    /// cancel requests.
    pub(crate) async fn connect(
        link: Link,
        storage: Arc<dyn RecordStore>,
        global_config: Arc<dyn GlobalConfig>,
        prefetch: u16,
    ) -> Result<Self, BackendError> {
        let link = Arc::new(link);
        link.live().await?;
        let (cancels, _) = broadcast::channel(4096);
        let (listening, stopped) = tokio::sync::watch::channel(());
        let bound = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(listen_for_cancels(
            Arc::clone(&link),
            cancels.clone(),
            stopped,
            Arc::clone(&bound),
        ));
        // The first binding is made before connect returns, so a cancel sent right after
        // reaches this app.
        let _ = tokio::time::timeout(Duration::from_secs(5), bound.notified()).await;
        let held = Arc::new(Held::default());
        tokio::spawn(held::watch(
            Arc::clone(&held),
            cancels.clone(),
            listening.subscribe(),
        ));
        Ok(RabbitMqBroker {
            link,
            storage,
            global_config,
            declared: parking_lot::Mutex::default(),
            paused: parking_lot::Mutex::default(),
            pauses_changed: tokio::sync::Notify::new(),
            prefetch,
            consuming: tokio::sync::Mutex::default(),
            held,
            receipts: AtomicU64::new(0),
            instance: Uuid::new_v4().simple().to_string(),
            cancels,
            _listening: listening,
        })
    }

    fn names(&self) -> &Names {
        &self.link.names
    }

    /// Publishes a task: to the task queue, or to a delay queue while it may not run yet (its
    /// `run_at` turned into a wait by this process's clock, the one that set it).
    /// Returns once RabbitMQ confirmed it (stored, on a durable queue).
    async fn publish(&self, task: &QueuedTask) -> Result<(), BackendError> {
        let wait = task
            .run_at
            .map(|at| wire::wait_until(at, unix_now()))
            .unwrap_or_default();
        self.publish_counted(task, 0, wait).await
    }

    /// [`publish`](Self::publish) with the wait left (`wire::WAIT_HEADER`), the message
    /// carrying how many deliveries of the attempt ended with their worker
    /// (`wire::DELIVERIES_HEADER`, when there were any).
    async fn publish_counted(
        &self,
        task: &QueuedTask,
        ended: u32,
        wait: Duration,
    ) -> Result<(), BackendError> {
        let tier = wire::delay_tier(wait);
        let mut headers = FieldTable::default();
        if ended > 0 {
            headers.insert(
                wire::DELIVERIES_HEADER.into(),
                AMQPValue::LongLongInt(i64::from(ended)),
            );
        }
        if !wait.is_zero() {
            // What is left once this hop's delay queue has held it.
            let left = wait.saturating_sub(tier.unwrap_or_default());
            headers.insert(
                wire::WAIT_HEADER.into(),
                AMQPValue::LongLongInt(i64::try_from(left.as_millis()).unwrap_or(i64::MAX)),
            );
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(wire::amqp_priority(task.priority))
            .with_content_type("application/json".into())
            .with_headers(headers);
        let body = wire::encode(task);
        let named = task.queue.as_deref();
        match tier {
            None => {
                let queue = self.declare_named(named).await?;
                self.publish_to(&queue, &body, properties).await
            }
            Some(tier) => {
                let queue = self.declare_delay(tier, named).await?;
                self.publish_to(&queue, &body, properties).await
            }
        }
        .map_err(|e| {
            BackendError::new("rabbitmq", format!("queueing task {} failed", task.uuid))
                .with_source(e)
        })
    }

    async fn publish_to(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BackendError> {
        let live = self.link.live().await?;
        let published = async {
            live.publish
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        };
        let confirm = step(&format!("publishing to `{queue}`"), published)
            .await
            .map_err(|error| {
                // A resource alarm (memory or disk low on the server) holds every publisher:
                // the step then times out, and the reason is worth naming.
                if live.connection.status().blocked() {
                    BackendError::new(
                        "rabbitmq",
                        "RabbitMQ is blocking publishers (a memory or disk alarm on the server; \
                         `rabbitmq-diagnostics alarms` names it)",
                    )
                    .with_source(error)
                } else {
                    error
                }
            })?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BackendError::new(
                "rabbitmq",
                format!("the queue `{queue}` does not exist: the message was returned"),
            )),
            Confirmation::Nack(_) => Err(BackendError::new(
                "rabbitmq",
                format!("RabbitMQ refused the message for `{queue}` (nack)"),
            )),
        }
    }

    /// The AMQP queue of a named queue, declared (once per process) and made known to every
    /// process (for stats and flushes) at its first use here. The default queue is the link's.
    async fn declare_named(&self, queue: Option<&str>) -> Result<String, BackendError> {
        let name = self.names().queue_of(queue);
        let Some(queue) = queue.filter(|queue| *queue != DEFAULT_QUEUE) else {
            return Ok(name);
        };
        if self.declared.lock().contains(&name) {
            return Ok(name);
        }
        let live = self.link.live().await?;
        self.link.declare_named(&live.publish, &name).await?;
        self.global_config.set(QUEUES_ENTRY, queue, "1").await?;
        self.declared.lock().insert(name.clone());
        Ok(name)
    }

    /// Declares the delay queue of `tier` for the named queue `queue`: its messages expire
    /// after `tier` into that queue.
    async fn declare_delay(
        &self,
        tier: Duration,
        queue: Option<&str>,
    ) -> Result<String, BackendError> {
        let target = self.declare_named(queue).await?;
        let name = self.names().delay_of(tier, queue);
        let live = self.link.live().await?;
        // A delay queue with an expiry must outlive the wait of the messages in it.
        let arguments = self.link.queue_arguments(
            tier * 2,
            &[
                ("x-message-ttl", millis(tier)),
                ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
                (
                    "x-dead-letter-routing-key",
                    AMQPValue::LongString(target.as_str().into()),
                ),
            ],
        );
        live.publish
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(|e| failure(format!("declaring the delay queue `{name}` failed"), e))?;
        Ok(name)
    }

    /// Consumes the queue `name` (a qtasks name) on a channel of its own, on `live`.
    async fn start_consumer(
        &self,
        live: &crate::link::Live,
        name: &str,
    ) -> Result<QueueConsumer, BackendError> {
        let queue = self.declare_named(Some(name)).await?;
        let consuming = async {
            let channel = live.connection.create_channel().await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("qtasks-{}-{}-{name}", std::process::id(), live.generation).into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok((channel, consumer))
        };
        let (channel, consumer) = step(&format!("consuming `{queue}`"), consuming).await?;
        Ok(QueueConsumer {
            name: name.to_owned(),
            channel,
            consumer: Some(consumer),
        })
    }

    /// Consumes the queue of `queue` again on its channel, after a pause.
    async fn resume_consumer(
        &self,
        live: &crate::link::Live,
        queue: &mut QueueConsumer,
    ) -> Result<(), BackendError> {
        if !queue.channel.status().connected() {
            *queue = self.start_consumer(live, &queue.name).await?;
            return Ok(());
        }
        let name = self.names().queue_of(Some(&queue.name));
        let consuming = queue.channel.basic_consume(
            name.as_str().into(),
            format!(
                "qtasks-{}-{}-{}-{}",
                std::process::id(),
                live.generation,
                queue.name,
                self.receipts.fetch_add(1, Ordering::Relaxed)
            )
            .into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        );
        queue.consumer = Some(step(&format!("consuming `{name}` again"), consuming).await?);
        Ok(())
    }

    /// Stops consuming a paused queue: RabbitMQ sends no more of it, and the messages it sent
    /// that no take read go back to it. Its channel stays open: runs started from it still
    /// ack there.
    async fn pause_consumer(queue: &mut QueueConsumer) {
        let Some(mut consumer) = queue.consumer.take() else {
            return;
        };
        let options = lapin::options::BasicCancelOptions::default();
        let _ = step(
            &format!("cancelling the consumer of `{}`", queue.name),
            queue.channel.basic_cancel(consumer.tag(), options),
        )
        .await;
        while let Some(Some(Ok(message))) = consumer.next().now_or_never() {
            nack(&message.acker).await;
        }
    }

    /// Makes `consuming` hold a consumer for each of `names` and none for `paused` queues
    /// (their unread messages go back to RabbitMQ, for when they are resumed): new consumers
    /// on the live connection (all of them anew when it changed).
    async fn consume(
        &self,
        consuming: &mut Option<Consuming>,
        names: &[&str],
        paused: &HashSet<String>,
    ) -> Result<(), BackendError> {
        let live = self.link.live().await?;
        if consuming
            .as_ref()
            .is_some_and(|open| !Arc::ptr_eq(&open.connection, &live.connection))
        {
            close_channels(consuming.take());
        }
        let open = consuming.get_or_insert_with(|| Consuming {
            queues: Vec::new(),
            connection: Arc::clone(&live.connection),
        });
        for queue in &mut open.queues {
            if paused.contains(&queue.name) {
                Self::pause_consumer(queue).await;
            } else if queue.consumer.is_none() {
                self.resume_consumer(&live, queue).await?;
            }
        }
        for name in names {
            if !paused.contains(*name) && !open.serves(name) {
                let consumer = self.start_consumer(&live, name).await?;
                open.queues.push(consumer);
            }
        }
        Ok(())
    }

    /// The paused queues, read at most once a [`PAUSED_FOR`].
    async fn paused_now(&self) -> HashSet<String> {
        if let Some((at, paused)) = &*self.paused.lock()
            && at.elapsed() < PAUSED_FOR
        {
            return paused.clone();
        }
        let paused: HashSet<String> = match self.global_config.get_all(PAUSED_ENTRY).await {
            Ok(entries) => entries
                .into_iter()
                .filter(|(_, flag)| flag == "1")
                .map(|(queue, _)| queue)
                .collect(),
            Err(error) => {
                tracing::warn!("reading the paused queues failed (taken as before): {error}");
                return self
                    .paused
                    .lock()
                    .as_ref()
                    .map(|(_, paused)| paused.clone())
                    .unwrap_or_default();
            }
        };
        *self.paused.lock() = Some((Instant::now(), paused.clone()));
        paused
    }

    /// Up to `take.max` messages from the queues `take` lists, in its order (each at most its
    /// own `max`; paused ones left in their consumers): waits for the first, then takes what
    /// has arrived already; each with the channel it came on, and their connection.
    async fn receive(&self, take: &Take<'_>) -> Result<Received, BackendError> {
        let give_up = take
            .patience
            .and_then(|patience| tokio::time::Instant::now().checked_add(patience));
        let mut consuming = self.consuming.lock().await;
        loop {
            // Consumers for every queue a take asked for that is not paused (a queue left
            // out of this take, at its cap, keeps its consumer: it is only not read).
            let paused = self.paused_now().await;
            let names: Vec<&str> = take.queues.iter().map(|queue| queue.name).collect();
            let stale = consuming.as_ref().is_none_or(|open| {
                names
                    .iter()
                    .any(|name| !paused.contains(*name) && !open.serves(name))
                    || open
                        .queues
                        .iter()
                        .any(|queue| paused.contains(&queue.name) == queue.consumer.is_some())
            });
            if stale {
                self.consume(&mut consuming, &names, &paused).await?;
            }
            let changed = self.pauses_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let open = consuming.as_mut().expect("set above");
            // The queues to read, in the take's order.
            let wanted: Vec<(usize, usize)> = take
                .queues
                .iter()
                .filter(|queue| !paused.contains(queue.name))
                .filter_map(|queue| {
                    let at = open
                        .queues
                        .iter()
                        .position(|q| q.name == queue.name && q.consumer.is_some())?;
                    Some((at, queue.max))
                })
                .collect();
            let mut received: Vec<(AmqpDelivery, Channel)> = Vec::new();
            let mut failed = None;
            // What has arrived already, first queue first.
            for (at, max) in &wanted {
                let queue = &mut open.queues[*at];
                let Some(consumer) = queue.consumer.as_mut() else {
                    continue;
                };
                let mut taken = 0;
                while taken < *max && received.len() < take.max {
                    match consumer.next().now_or_never() {
                        Some(Some(Ok(message))) => {
                            received.push((message, queue.channel.clone()));
                            taken += 1;
                        }
                        Some(Some(Err(error))) => {
                            failed = Some(error);
                            break;
                        }
                        Some(None) => {
                            failed = None;
                            break;
                        }
                        None => break,
                    }
                }
            }
            if !received.is_empty() {
                return Ok(Received {
                    messages: received,
                    connection: Arc::clone(&open.connection),
                });
            }
            if let Some(error) = failed {
                close_channels(consuming.take());
                return Err(failure("the consumer stopped", error));
            }
            // Its patience ran out: none (the worker plans its take again).
            let check = match give_up {
                Some(at) => {
                    let now = tokio::time::Instant::now();
                    if now >= at {
                        return Ok(Received {
                            messages: Vec::new(),
                            connection: Arc::clone(&open.connection),
                        });
                    }
                    CONSUMER_CHECK.min(at - now)
                }
                None => CONSUMER_CHECK,
            };
            // Nothing yet: wait for the first message of a wanted queue. A consumer's stream
            // does not always end when its connection dies (seen in the fault harness: a
            // worker whose connection was cut waited on it for ever, taking nothing): while
            // no delivery comes, look at the connection every second.
            let next = if wanted.is_empty() {
                tokio::select! {
                    () = &mut changed => {}
                    () = tokio::time::sleep(check) => {}
                }
                None
            } else {
                let waits = open
                    .queues
                    .iter_mut()
                    .enumerate()
                    .filter(|(at, _)| wanted.iter().any(|(wanted, _)| wanted == at))
                    .filter_map(|(at, queue)| {
                        let channel = queue.channel.clone();
                        let consumer = queue.consumer.as_mut()?;
                        Some(Box::pin(
                            async move { (consumer.next().await, channel, at) },
                        ))
                    });
                tokio::select! {
                    biased;
                    ((next, channel, at), _, _) = futures_util::future::select_all(waits) => Some((next, channel, at)),
                    () = &mut changed => None,
                    () = tokio::time::sleep(check) => None,
                }
            };
            match next {
                None => {
                    if !open.alive() {
                        close_channels(consuming.take());
                        tracing::warn!(queue = %self.names().queue, "a RabbitMQ consumer's connection is gone; consuming again");
                    }
                }
                Some((Some(Ok(first)), channel, _)) => {
                    return Ok(Received {
                        messages: vec![(first, channel)],
                        connection: Arc::clone(&open.connection),
                    });
                }
                Some((Some(Err(error)), _, _)) => {
                    close_channels(consuming.take());
                    return Err(failure("the consumer stopped", error));
                }
                Some((None, _, at)) => {
                    // A consumer ended (its channel closed, or RabbitMQ cancelled it):
                    // consume again.
                    let name = open.queues[at].name.clone();
                    close_channels(consuming.take());
                    tracing::warn!(queue = %name, "the RabbitMQ consumer was cancelled; consuming again");
                }
            }
        }
    }

    /// Turns a message into a delivery to run, or deals with it here: a body that is not a
    /// task goes to the dead letters, a task not due yet to a delay queue, a task whose record
    /// ended is dropped.
    async fn accept(
        &self,
        message: AmqpDelivery,
        on: (&Channel, &Arc<Connection>),
    ) -> Result<Option<Delivery>, BackendError> {
        if !still_open(on) {
            // Read from the buffer of a consumer whose connection has died since it arrived:
            // RabbitMQ has put it back in the queue, and perhaps handed it to another worker,
            // which may have taken and counted it already. This copy must touch nothing.
            tracing::debug!(queue = %self.names().queue, "a message read after its consumer's connection died is left to its redelivery");
            return Ok(None);
        }
        let mut task = match wire::decode(&message.data) {
            Ok(task) => {
                tracing::debug!(uuid = %task.uuid, redelivered = message.redelivered, "received task {}", task.uuid);
                task
            }
            Err(reason) => {
                tracing::error!(queue = %self.names().queue, "{reason}; set aside as a dead letter");
                self.dead_letter(&message.data, &reason).await?;
                ack(&message.acker).await;
                return Ok(None);
            }
        };
        let ended = wire::deliveries_of(&message.properties);
        let wait = match (wire::wait_of(&message.properties), task.run_at) {
            (Some(left), _) => left,
            (None, Some(at)) => wire::wait_until(at, unix_now()),
            (None, None) => Duration::ZERO,
        };
        if wire::delay_tier(wait).is_some() {
            if let Err(error) = self.publish_counted(&task, ended, wait).await {
                nack(&message.acker).await;
                return Err(error);
            }
            ack(&message.acker).await;
            return Ok(None);
        }
        tokio::time::sleep(wait).await;
        if !still_open(on) {
            tracing::debug!(uuid = %task.uuid, "the consumer's connection died while task {} was read; it is left to its redelivery", task.uuid);
            return Ok(None);
        }
        // A message delivered again may be a task whose worker died while it ran.
        let from: &[TaskStatus] = if message.redelivered {
            &[TaskStatus::New, TaskStatus::Process]
        } else {
            &[TaskStatus::New]
        };
        let mut taken = self
            .storage
            .transition(task.uuid, from, RecordChange::Taken)
            .await;
        if let Ok(Transition::NotFound) = taken {
            // Published by a producer that writes no record (one that speaks only the
            // original's message format): the message has all the record needs.
            taken = match self.storage.insert(&task).await {
                Ok(_) => {
                    self.storage
                        .transition(task.uuid, from, RecordChange::Taken)
                        .await
                }
                Err(error) => Err(error),
            };
        }
        match taken {
            Ok(Transition::Applied(TaskStatus::Process)) => {
                // Its last delivery ended with its worker (the record still says `process`):
                // counted in a copy of the message, since RabbitMQ hands this one out again
                // unchanged. The copy is published, then this one acked (a crash between
                // leaves two messages: the second finds the task taken or ended).
                let ended = ended.saturating_add(1);
                tracing::warn!(uuid = %task.uuid, ended, "task {} was delivered before and its worker died; counting it and queueing it again", task.uuid);
                let handed_back = async {
                    self.storage
                        .transition(task.uuid, &[TaskStatus::Process], RecordChange::Released)
                        .await?;
                    // Due already: no wait left to serve.
                    self.publish_counted(&task, ended, Duration::ZERO).await
                }
                .await;
                match handed_back {
                    Ok(()) => ack(&message.acker).await,
                    Err(error) => {
                        nack(&message.acker).await;
                        return Err(error);
                    }
                }
                Ok(None)
            }
            Ok(Transition::Applied(_)) => {
                let receipt = format!(
                    "{}-{}",
                    self.instance,
                    self.receipts.fetch_add(1, Ordering::Relaxed)
                );
                let (channel, connection) = on;
                self.held.hold(
                    receipt.clone(),
                    task.uuid,
                    message.acker,
                    channel.clone(),
                    Arc::clone(connection),
                );
                task.run_at = None;
                Ok(Some(
                    Delivery::new(task, receipt)
                        .recovered(ended > 0)
                        .deliveries(ended.saturating_add(1)),
                ))
            }
            Ok(Transition::Kept(status)) => {
                if status == TaskStatus::Retry {
                    // Its worker may have died between marking it and queueing the next
                    // attempt: queued now if it still waits (a second message is harmless).
                    if let Err(error) = self.requeue_next_attempt(task.uuid).await {
                        nack(&message.acker).await;
                        return Err(error);
                    }
                }
                tracing::debug!(uuid = %task.uuid, "task is {status}; its message is dropped");
                ack(&message.acker).await;
                Ok(None)
            }
            // No record even after writing one: flushed meanwhile.
            Ok(_) => {
                ack(&message.acker).await;
                Ok(None)
            }
            Err(error) => {
                // The storage is down: the message waits in the queue for a later take.
                nack(&message.acker).await;
                Err(error)
            }
        }
    }

    /// Sets a message aside in the dead-letter queue with the reason, confirmed.
    async fn dead_letter(&self, body: &[u8], reason: &str) -> Result<(), BackendError> {
        self.dead_letter_with(body, reason, FieldTable::default())
            .await
    }

    /// [`dead_letter`](Self::dead_letter) with more headers.
    async fn dead_letter_with(
        &self,
        body: &[u8],
        reason: &str,
        mut headers: FieldTable,
    ) -> Result<(), BackendError> {
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        headers.insert(AT_HEADER.into(), AMQPValue::Double(unix_now()));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(Uuid::new_v4().to_string().into())
            .with_headers(headers);
        let dead = self.names().dead.clone();
        self.publish_to(&dead, body, properties).await
    }

    /// Publishes the next attempt of the retried task `uuid` if its record still waits with no
    /// message known to have gone out: the finish that marked `uuid` died before its publish.
    /// Due at once (its backoff is not kept in its record).
    async fn requeue_next_attempt(&self, uuid: Uuid) -> Result<(), BackendError> {
        let Some(child) = self
            .storage
            .get(uuid)
            .await?
            .and_then(|record| record.retry_child_uuid)
        else {
            return Ok(());
        };
        match self.storage.get(child).await? {
            Some(record) if record.status == TaskStatus::New => {
                tracing::warn!(uuid = %uuid, "the next attempt {child} of retried task {uuid} was never queued; queueing it now");
                self.publish(&QueuedTask::from_record(record)).await
            }
            _ => Ok(()),
        }
    }

    /// Cancels a retry's next attempt whose parent's outcome turned out not to be stored, so
    /// that it never runs (its message, if one went out, is then dropped by the take).
    async fn supersede(&self, child: Option<Uuid>, reason: String) {
        if let Some(child) = child {
            let superseded = RecordChange::Finished(Outcome::Cancel(reason), RunInfo::default());
            let _ = self
                .storage
                .transition(child, &[TaskStatus::New], superseded)
                .await;
        }
    }

    /// The acker of `delivery`, or `Err` when the delivery was lost with its connection.
    fn take_acker(&self, delivery: &Delivery) -> Result<Option<Acker>, ()> {
        match self.held.release(&delivery.receipt) {
            Let::Held(acker) => Ok(Some(acker)),
            Let::Unknown => Ok(None),
            Let::Lost => Err(()),
        }
    }

    /// The named queues in use (registered by the processes that published to them).
    async fn named_queues(&self) -> Result<Vec<String>, BackendError> {
        let mut names: Vec<String> = self
            .global_config
            .get_all(QUEUES_ENTRY)
            .await?
            .into_keys()
            .filter(|name| qtasks_core::queues::check_queue_name(name).is_ok())
            .filter(|name| name != DEFAULT_QUEUE)
            .collect();
        names.sort();
        Ok(names)
    }

    /// A channel for one look at a queue (a passive declare or a get that fails closes its
    /// channel, and the publishing one must stay open).
    async fn scratch_channel(&self) -> Result<Channel, BackendError> {
        let live = self.link.live().await?;
        live.connection
            .create_channel()
            .await
            .map_err(|e| failure("opening a channel failed", e))
    }
}

/// Whether `record` holds `outcome`, result and all.
fn holds_outcome(record: &qtasks_core::TaskRecord, outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Success(value) => {
            record.status == TaskStatus::Success
                && record
                    .returning
                    .as_ref()
                    .unwrap_or(&serde_json::Value::Null)
                    == value
        }
        Outcome::Error(traceback) => {
            record.status == TaskStatus::Error && record.traceback.as_ref() == Some(traceback)
        }
        Outcome::Cancel(reason) => {
            record.status == TaskStatus::Cancel && record.cancel_reason.as_ref() == Some(reason)
        }
        Outcome::Retry { child, .. } => {
            record.status == TaskStatus::Retry && record.retry_child_uuid == Some(child.uuid)
        }
    }
}

/// Whether the channel a message came on, and its connection, are still open: a message read
/// after they died is void (RabbitMQ has put it back in the queue).
fn still_open((channel, connection): (&Channel, &Arc<Connection>)) -> bool {
    channel.status().connected() && connection.status().connected()
}

/// Closes the consumers' channels that are done with, in the background: a channel dropped
/// without a close stays open on a live connection, and RabbitMQ would hold the messages it
/// delivered there (unacked, never to be read) until the connection ends.
fn close_channels(consuming: Option<Consuming>) {
    if let Some(consuming) = consuming {
        tokio::spawn(async move {
            for queue in consuming.queues {
                best_effort(queue.channel.close(200, "consuming again".into())).await;
            }
        });
    }
}

async fn ack(acker: &Acker) {
    // A failed ack means the channel is gone: RabbitMQ delivers the message again, and the
    // record (ended) makes that delivery a no-op.
    match tokio::time::timeout(STEP, acker.ack(BasicAckOptions::default())).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::debug!("ack failed (the message will be delivered again): {error}");
        }
        Err(_) => tracing::debug!("ack got no answer (the message will be delivered again)"),
    }
}

async fn nack(acker: &Acker) {
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    match tokio::time::timeout(STEP, acker.nack(requeue)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            tracing::debug!("nack failed (the message returns when its channel closes): {error}");
        }
        Err(_) => {
            tracing::debug!("nack got no answer (the message returns when its channel closes)");
        }
    }
}

#[qtasks_core::async_trait]
impl qtasks_core::backend::Lifecycle for RabbitMqBroker {
    fn name(&self) -> &str {
        "RabbitMqBroker"
    }

    async fn stop(&self) -> Result<(), BackendError> {
        // Messages the consumer holds and no task took return to the queue.
        if let Some(consuming) = self.consuming.lock().await.take() {
            for queue in consuming.queues {
                best_effort(queue.channel.close(200, "worker stopped".into())).await;
            }
        }
        Ok(())
    }
}

#[qtasks_core::async_trait]
impl Broker for RabbitMqBroker {
    fn location(&self) -> Option<String> {
        Some(self.link.shown.clone())
    }

    async fn add(&self, task: QueuedTask) -> Result<(), BackendError> {
        if !self.storage.insert(&task).await? {
            // Known already (a slot added again, an add sent twice): nothing changes,
            // unless it still waits: a first add may have died between its record and its
            // message, and a second message of a waiting task is harmless.
            let waiting = self
                .storage
                .get(task.uuid)
                .await?
                .is_some_and(|record| record.status == TaskStatus::New);
            if !waiting {
                tracing::debug!(uuid = %task.uuid, "task {} is known already; not added again", task.uuid);
                return Ok(());
            }
        }
        if let Err(error) = self.publish(&task).await {
            // No message (as far as this side knows) means no task: its record goes, so
            // an add again under the same uuid queues it anew (a record left `error` here
            // made such an add a silent no-op: found by the RabbitMQ restart test). A
            // message that went out after all (its confirm lost) brings the record back
            // when a worker takes it.
            if let Ok(Some(record)) = self.storage.get(task.uuid).await
                && record.status == TaskStatus::New
            {
                let _ = self.storage.delete(task.uuid).await;
            }
            return Err(error);
        }
        Ok(())
    }

    async fn add_unique(
        &self,
        task: QueuedTask,
        unique: &qtasks_core::unique::UniqueKey,
    ) -> Result<Option<Uuid>, BackendError> {
        match self.storage.insert_unique(&task, unique).await? {
            // Its own id, known: as `add`, a task that still waits is published again (an
            // earlier add may have died between its record and its message).
            Some(holder) if holder == task.uuid => {
                self.add(task).await?;
                Ok(Some(holder))
            }
            Some(holder) => Ok(Some(holder)),
            None => {
                if let Err(error) = self.publish(&task).await {
                    // As `add`: no message, no task (its record goes, if it still waits).
                    if let Ok(Some(record)) = self.storage.get(task.uuid).await
                        && record.status == TaskStatus::New
                    {
                        let _ = self.storage.delete(task.uuid).await;
                    }
                    return Err(error);
                }
                Ok(None)
            }
        }
    }

    async fn next(&self) -> Result<Option<Delivery>, BackendError> {
        Ok(self.next_batch(1).await?.into_iter().next())
    }

    fn supports_queues(&self) -> bool {
        true
    }

    async fn next_batch(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        self.take(&Take::default_queue(max)).await
    }

    async fn take(&self, take: &Take<'_>) -> Result<Vec<Delivery>, BackendError> {
        loop {
            let mut deliveries = Vec::new();
            let mut failed = None;
            let received = self.receive(take).await?;
            if received.messages.is_empty() {
                return Ok(Vec::new());
            }
            let connection = &received.connection;
            // The storage writes of a batch go out together (one round trip, pipelined).
            let accepted =
                futures_util::future::join_all(received.messages.into_iter().map(
                    |(message, channel)| async move {
                        self.accept(message, (&channel, connection)).await
                    },
                ))
                .await;
            for outcome in accepted {
                match outcome {
                    Ok(Some(delivery)) => deliveries.push(delivery),
                    Ok(None) => {}
                    Err(error) => failed = Some(error),
                }
            }
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            if let Some(error) = failed {
                return Err(error);
            }
        }
    }

    async fn finish(&self, delivery: &Delivery, outcome: Outcome) -> Result<(), BackendError> {
        let uuid = delivery.task.uuid;
        let Ok(acker) = self.take_acker(delivery) else {
            // Its message went back to the queue with its connection, and another delivery
            // has the record now (a cancel asked meanwhile is stored, and ends that one).
            return Err(BackendError::refused(
                "rabbitmq",
                format!(
                    "task {uuid}'s delivery was lost with this worker's RabbitMQ connection and is run by another delivery; this outcome is not stored"
                ),
            ));
        };
        let child = match &outcome {
            Outcome::Retry { child, .. } => Some(child.uuid),
            _ => None,
        };
        let status = outcome.status();
        let tries = std::sync::atomic::AtomicU32::new(0);
        let store = || async {
            let first_try = tries.fetch_add(1, Ordering::Relaxed) == 0;
            // A retry's next attempt: its record first (`new`, no message yet), then this
            // attempt marked `retry`, then its message. A refused mark leaves a record no
            // worker can take (superseded below), so the chain cannot fork; a crash after
            // the mark is mended when this attempt's message comes back (`accept`).
            if let Outcome::Retry { child, .. } = &outcome {
                self.storage.insert(child).await?;
            }
            let written = self
                .storage
                .transition(
                    uuid,
                    &[TaskStatus::Process],
                    RecordChange::Finished(outcome.clone(), delivery.run.clone()),
                )
                .await?;
            // A try after one whose reply was lost may find its own outcome stored: the
            // record then holds exactly this outcome (another delivery's would differ in
            // its result, and a retry's next attempt is this delivery's own).
            let replayed = match written {
                Transition::Kept(found) if !first_try && found == status => self
                    .storage
                    .get(uuid)
                    .await?
                    .is_some_and(|record| holds_outcome(&record, &outcome)),
                _ => false,
            };
            let written = if replayed {
                Transition::Applied(TaskStatus::Process)
            } else {
                written
            };
            if let (Transition::Applied(_), Outcome::Retry { child, .. }) = (&written, &outcome) {
                self.publish(child).await?;
            }
            Ok(written)
        };
        // Kept and tried again through a storage outage (the message stays unacked
        // meanwhile, so no other worker takes the task): given up only after
        // FINISH_PATIENCE, when the message goes back to the queue and the task runs again.
        use backon::Retryable;
        let started = tokio::time::Instant::now();
        let stored: Result<Transition, BackendError> = store
            .retry(
                backon::ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(2))
                    .without_max_times(),
            )
            .when(|_| started.elapsed() < FINISH_PATIENCE)
            .notify(|error, pause| {
                tracing::warn!(uuid = %uuid, "storing the result failed (trying again in {pause:?}): {}", qtasks_core::backend::ErrorChain(error));
            })
            .await;
        match stored {
            Ok(Transition::Cancelled(_)) => {
                // A cancel asked while it ran won: the record is `cancel`, and a retry's
                // next attempt must not run.
                if let Some(acker) = &acker {
                    ack(acker).await;
                }
                self.supersede(child, format!("superseded: task {uuid} was cancelled"))
                    .await;
                let reason = match self.storage.get(uuid).await {
                    Ok(Some(record)) => record.cancel_reason.unwrap_or_default(),
                    _ => String::new(),
                };
                Err(BackendError::cancelled("rabbitmq", reason))
            }
            Ok(Transition::Kept(status)) => {
                if let Some(acker) = &acker {
                    ack(acker).await;
                }
                self.supersede(child, format!("superseded: task {uuid} had ended already"))
                    .await;
                Err(BackendError::refused(
                    "rabbitmq",
                    format!(
                        "task {uuid} is `{status}` already (another delivery of it recorded its outcome); this outcome is not stored"
                    ),
                ))
            }
            // Stored (or the record is gone: flushed meanwhile).
            Ok(_) => {
                if let Some(acker) = &acker {
                    ack(acker).await;
                }
                Ok(())
            }
            Err(error) => {
                // Not stored: the message goes back to the queue and the task runs again.
                if let Some(acker) = &acker {
                    nack(acker).await;
                }
                Err(error)
            }
        }
    }

    async fn defer(&self, delivery: &Delivery, delay: Duration) -> Result<(), BackendError> {
        let uuid = delivery.task.uuid;
        let Ok(acker) = self.take_acker(delivery) else {
            // Back in the queue already (its connection died): that delivery counts.
            return Ok(());
        };
        // A copy counting the hand-back waits out the delay first; then the record says `new`
        // and this message goes (a crash in between leaves two messages: the second finds the
        // task taken or ended, and is dropped).
        let hand_backs = delivery.task.hand_backs.saturating_add(1);
        let mut task = delivery.task.clone();
        task.hand_backs = hand_backs;
        task.run_at = None;
        // The deliveries that died with a worker stay counted in the copy.
        let ended = delivery.deliveries.saturating_sub(1);
        if let Err(error) = self.publish_counted(&task, ended, delay).await {
            if let Some(acker) = &acker {
                nack(acker).await;
            }
            return Err(error);
        }
        let handed_back = self
            .storage
            .transition(
                uuid,
                &[TaskStatus::Process],
                RecordChange::HandedBack(hand_backs),
            )
            .await;
        if let Some(acker) = &acker {
            ack(acker).await;
        }
        handed_back.map(|_| ())
    }

    async fn bury(&self, delivery: &Delivery, reason: &str) -> Result<(), BackendError> {
        let Ok(acker) = self.take_acker(delivery) else {
            return Ok(());
        };
        // The letter first (marked to be brought back if it is queued again), then the record.
        let mut headers = FieldTable::default();
        headers.insert(REVIVE_HEADER.into(), AMQPValue::Boolean(true));
        if let Err(error) = self
            .dead_letter_with(&wire::encode(&delivery.task), reason, headers)
            .await
        {
            if let Some(acker) = &acker {
                nack(acker).await;
            }
            return Err(error);
        }
        let failed = self
            .storage
            .transition(
                delivery.task.uuid,
                &[TaskStatus::Process],
                RecordChange::Finished(Outcome::Error(reason.to_owned()), delivery.run.clone()),
            )
            .await;
        if let Some(acker) = &acker {
            ack(acker).await;
        }
        failed.map(|_| ())
    }

    async fn pause_queue(&self, queue: &str, paused: bool) -> Result<(), BackendError> {
        self.global_config
            .set(PAUSED_ENTRY, queue, if paused { "1" } else { "0" })
            .await?;
        // This process sees it at once; the others within a second.
        *self.paused.lock() = None;
        self.pauses_changed.notify_waiters();
        Ok(())
    }

    async fn paused_queues(&self) -> Result<Vec<String>, BackendError> {
        let mut paused: Vec<String> = self
            .global_config
            .get_all(PAUSED_ENTRY)
            .await?
            .into_iter()
            .filter(|(_, flag)| flag == "1")
            .map(|(queue, _)| queue)
            .collect();
        paused.sort();
        Ok(paused)
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), BackendError> {
        let uuid = delivery.task.uuid;
        let Ok(acker) = self.take_acker(delivery) else {
            // Back in the queue already, and perhaps taken by another worker: its record is
            // that delivery's.
            return Ok(());
        };
        let released = self
            .storage
            .transition(uuid, &[TaskStatus::Process], RecordChange::Released)
            .await;
        if let Some(acker) = &acker {
            nack(acker).await;
        }
        released.map(|_| ())
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        let live = self.link.live().await?;
        for queue in [&self.names().queue, &self.names().dead] {
            live.publish
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await
                .map_err(|e| failure(format!("purging `{queue}` failed"), e))?;
        }
        // The named queues in use (a passive look each: one that expired is skipped).
        for named in self.named_queues().await? {
            let queue = self.names().queue_of(Some(&named));
            let channel = self.scratch_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            if channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
                .is_ok()
            {
                channel
                    .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                    .await
                    .map_err(|e| failure(format!("purging `{queue}` failed"), e))?;
                best_effort(channel.close(200, "purged".into())).await;
            }
        }
        // The delay queues that exist: a passive declare of a missing one closes its
        // channel, so each look gets a channel of its own.
        let mut tier = wire::SHORTEST_TIER;
        while let Some(next) = wire::delay_tier(tier).filter(|next| *next >= tier) {
            let queue = self.names().delay(next);
            let channel = self.scratch_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            if channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
                .is_ok()
            {
                channel
                    .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                    .await
                    .map_err(|e| failure(format!("purging `{queue}` failed"), e))?;
                best_effort(channel.close(200, "purged".into())).await;
            }
            tier = next * 2;
        }
        Ok(())
    }

    async fn cancel(&self, uuid: Uuid, reason: &str) -> Result<Option<CancelState>, BackendError> {
        let reason = reason.to_owned();
        let cancel = RecordChange::Finished(Outcome::Cancel(reason.clone()), RunInfo::default());
        let request = RecordChange::CancelRequested(reason.clone());
        // Each step is one conditional write; a task that moves between two of them (it
        // was taken, handed back, or ended meanwhile) is looked at again.
        for _ in 0..3 {
            let state = match self
                .storage
                .transition(uuid, &[TaskStatus::New], cancel.clone())
                .await?
            {
                // Its message stays queued; the take that meets it drops it.
                Transition::Applied(_) | Transition::Cancelled(_) => CancelState::Cancelled,
                Transition::Kept(TaskStatus::Process) => {
                    // Kept with the record, so that the run's finish, or a take of it
                    // after its worker died, ends it `cancel` even if the message is lost.
                    match self
                        .storage
                        .transition(uuid, &[TaskStatus::Process], request.clone())
                        .await?
                    {
                        Transition::Applied(_) => {
                            self.request_cancel(uuid, &reason).await?;
                            CancelState::Running
                        }
                        Transition::Kept(status) if status.is_final() => CancelState::Ended(status),
                        Transition::NotFound => CancelState::NotFound,
                        _ => continue,
                    }
                }
                Transition::Kept(status) => CancelState::Ended(status),
                _ => CancelState::NotFound,
            };
            return Ok(Some(state));
        }
        Err(BackendError::new(
            "rabbitmq",
            format!("cancelling task {uuid}: its status kept changing; try again"),
        ))
    }

    async fn request_cancel(&self, uuid: Uuid, reason: &str) -> Result<(), BackendError> {
        let request = serde_json::json!({ "uuid": uuid.to_string(), "reason": reason });
        let exchange = self.names().cancel.clone();
        let channel = self.scratch_channel().await?;
        step(&format!("sending the cancel of task {uuid}"), async {
            declare_cancel_exchange(&channel, &exchange).await?;
            channel
                .basic_publish(
                    exchange.as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    request.to_string().as_bytes(),
                    BasicProperties::default(),
                )
                .await?;
            channel.close(200, "sent".into()).await
        })
        .await
    }

    fn cancel_requests(&self) -> Option<broadcast::Receiver<CancelRequest>> {
        Some(self.cancels.subscribe())
    }

    async fn stats(&self) -> Result<Option<QueueStats>, BackendError> {
        let mut stats = self.storage.stats().await?;
        let channel = self.scratch_channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let dead = channel
            .queue_declare(
                self.names().dead.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
            .map_err(|e| failure("reading the dead letters' count failed", e))?;
        stats.dead_letters = u64::from(dead.message_count());
        best_effort(channel.close(200, "read".into())).await;
        // Each queue's ready messages (a cancelled task's message counts until a take drops
        // it).
        let paused = self.paused_queues().await?;
        let mut names = vec![DEFAULT_QUEUE.to_owned()];
        names.extend(self.named_queues().await?);
        for name in names {
            let queue = self.names().queue_of(Some(&name));
            let channel = self.scratch_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let mut numbers = qtasks_core::stats::QueueNumbers::default();
            if let Ok(declared) = channel
                .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                .await
            {
                numbers.waiting = u64::from(declared.message_count());
                best_effort(channel.close(200, "read".into())).await;
            }
            numbers.paused = paused.contains(&name);
            stats.queues.insert(name, numbers);
        }
        for name in paused {
            stats.queues.entry(name).or_default().paused = true;
        }
        Ok(Some(stats))
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        // Read with gets that are never acked: closing the channel puts every letter back.
        let channel = self.scratch_channel().await?;
        let mut letters = Vec::new();
        while letters.len() < limit {
            let got = channel
                .basic_get(
                    self.names().dead.as_str().into(),
                    BasicGetOptions::default(),
                )
                .await
                .map_err(|e| failure("reading the dead letters failed", e))?;
            let Some(got) = got else { break };
            letters.push(letter_of(&got.delivery));
        }
        best_effort(channel.close(200, "read".into())).await;
        Ok(letters)
    }

    async fn resolve_dead_letter(
        &self,
        letter: &DeadLetter,
        requeue: bool,
    ) -> Result<bool, BackendError> {
        let channel = self.scratch_channel().await?;
        let mut found = false;
        loop {
            let got = channel
                .basic_get(
                    self.names().dead.as_str().into(),
                    BasicGetOptions::default(),
                )
                .await
                .map_err(|e| failure("reading the dead letters failed", e))?;
            let Some(got) = got else { break };
            if letter_of(&got.delivery).id == letter.id {
                if requeue && revives(&got.delivery.properties) {
                    // Set aside by workers that could not run it: its record comes back to
                    // `new` with it.
                    if let Ok(task) = wire::decode(&got.delivery.data) {
                        self.storage
                            .transition(
                                task.uuid,
                                &[TaskStatus::Error],
                                RecordChange::HandedBack(0),
                            )
                            .await?;
                    }
                }
                if requeue {
                    let named = wire::decode(&got.delivery.data)
                        .ok()
                        .and_then(|task| task.queue);
                    let queue = self.declare_named(named.as_deref()).await?;
                    let properties = BasicProperties::default().with_delivery_mode(2);
                    self.publish_to(&queue, &got.delivery.data, properties)
                        .await?;
                }
                got.delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| failure("removing the dead letter failed", e))?;
                found = true;
                break;
            }
        }
        // The letters looked at and left return to the queue.
        best_effort(channel.close(200, "resolved".into())).await;
        Ok(found)
    }
}

impl Drop for RabbitMqBroker {
    fn drop(&mut self) {
        let link = Arc::clone(&self.link);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { link.close().await });
        }
    }
}

#[cfg(test)]
mod tests {
    use qtasks_core::{Outcome, QueuedTask, TaskRecord, TaskStatus};
    use serde_json::json;

    use super::holds_outcome;

    fn ended(status: TaskStatus, edit: impl FnOnce(&mut TaskRecord)) -> TaskRecord {
        let task: QueuedTask = serde_json::from_value(json!({
            "uuid": "5a469176-81b0-4c8a-996d-22ea5df7c4cf", "task_name": "t", "priority": 0,
            "args": [], "kwargs": {}, "created_at": 1.0
        }))
        .unwrap();
        let mut record = TaskRecord::from_task(task);
        record.status = status;
        edit(&mut record);
        record
    }

    #[test]
    fn a_replayed_finish_owns_only_an_outcome_equal_to_its_own() {
        let mine = Outcome::Success(json!(1));
        let stored = ended(TaskStatus::Success, |r| r.returning = Some(json!(1)));
        assert!(holds_outcome(&stored, &mine));
        // Another delivery's success, with another result: not this finish's.
        let other = ended(TaskStatus::Success, |r| r.returning = Some(json!(2)));
        assert!(!holds_outcome(&other, &mine));
        let failed = Outcome::Error("boom".into());
        assert!(holds_outcome(
            &ended(TaskStatus::Error, |r| r.traceback = Some("boom".into())),
            &failed
        ));
        assert!(!holds_outcome(&stored, &failed));
        // A retry is this delivery's only if it names this delivery's next attempt.
        let child: QueuedTask = serde_json::from_value(json!({
            "uuid": "6b469176-81b0-4c8a-996d-22ea5df7c4cf", "task_name": "t", "priority": 0,
            "args": [], "kwargs": {}, "created_at": 1.0
        }))
        .unwrap();
        let retry = Outcome::Retry {
            traceback: "x".into(),
            child: Box::new(child.clone()),
        };
        let by_me = ended(TaskStatus::Retry, |r| r.retry_child_uuid = Some(child.uuid));
        let by_other = ended(TaskStatus::Retry, |r| {
            r.retry_child_uuid = Some(qtasks_core::Uuid::new_v4());
        });
        assert!(holds_outcome(&by_me, &retry));
        assert!(!holds_outcome(&by_other, &retry));
    }
}
