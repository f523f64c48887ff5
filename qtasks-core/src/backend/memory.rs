//! The in-memory broker and storage: one process, no server. The reference implementation of
//! the [`Broker`] and [`Storage`] traits.

use parking_lot::Mutex;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use tokio::sync::Notify;
use uuid::Uuid;

use super::{BackendError, Broker, Delivery, ItemsRead, RunInfo, Storage, Transition};
use super::{CancelRequest, CancelState, unix_now};
use crate::queues::Take;
use crate::records::RecordChange;
use crate::records::RecordUpdate;
use crate::records::{RecordCursor, RecordPage, RecordQuery};
use crate::stats::DeadLetter;
use crate::stats::{FinishedCounts, QueueStats, ThroughputWindow};
use crate::task::Outcome;
use crate::{QueuedTask, TaskRecord, TaskStatus};

fn not_stored(uuid: Uuid) -> BackendError {
    BackendError::new("memory", format!("task {uuid} is not stored"))
}

/// In-memory priority queues (lowest priority number first, FIFO among equals), one per named
/// queue, writing to a [`MemoryStorage`].
pub struct MemoryBroker {
    storage: Arc<MemoryStorage>,
    queues: Mutex<Queues>,
    /// Woken at each push. Every waiting take is woken (not one): takes that serve other
    /// queues share the broker, and the one woken must not be one that cannot take the task.
    available: Notify,
    /// Tasks no worker could run, set aside with their reason (`bury`), oldest first.
    dead: Mutex<VecDeque<(DeadLetter, QueuedTask)>>,
    /// The ids of dead letters.
    dead_ids: std::sync::atomic::AtomicU64,
    /// Cancel requests for running tasks, heard by every app on this broker (apps in one
    /// process that share it, as worker processes share a server).
    cancel_requests: tokio::sync::broadcast::Sender<CancelRequest>,
    /// Deliveries handed out, for their receipts.
    deliveries: std::sync::atomic::AtomicU64,
    /// The task limits kept for every app on this broker ([`crate::limits`]).
    limits: Mutex<Limits>,
}

/// The rates and running slots of limited tasks. Taken before the records' and the queues'
/// locks, never after, so an admission and a leave are each one step.
#[derive(Default)]
struct Limits {
    /// By rate key.
    rates: HashMap<String, crate::limits::RateState>,
    /// By task name.
    running: HashMap<String, Running>,
}

/// The running slots of a task with `max_running`.
#[derive(Default)]
struct Running {
    /// The receipts of the deliveries that hold a slot.
    holders: HashSet<String>,
    /// The tasks waiting for a slot, in the order they asked; a leave queues the first.
    parked: VecDeque<QueuedTask>,
}

/// Past this many rate keys, the idle ones (no turn reserved, no start due) are forgotten.
const RATE_KEYS_KEPT: usize = 10_000;

/// The most dead letters kept: past it the oldest go.
const DEAD_LETTERS_MAX: usize = 10_000;

/// The queues of one broker: the default queue on its own (the hot path finds it without
/// a lookup), the named ones by name, and which are paused.
#[derive(Default)]
struct Queues {
    default: Queue,
    named: BTreeMap<String, Queue>,
    paused: std::collections::BTreeSet<String>,
}

impl Queues {
    /// The line of a task's queue, made when it is new.
    fn of_task(&mut self, queue: Option<&str>) -> &mut Queue {
        match queue {
            None | Some(crate::queues::DEFAULT_QUEUE) => &mut self.default,
            Some(name) => self.named.entry(name.to_owned()).or_default(),
        }
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Queue> {
        if name == crate::queues::DEFAULT_QUEUE {
            Some(&mut self.default)
        } else {
            self.named.get_mut(name)
        }
    }

    fn all(&self) -> impl Iterator<Item = (&str, &Queue)> {
        std::iter::once((crate::queues::DEFAULT_QUEUE, &self.default)).chain(
            self.named
                .iter()
                .map(|(name, queue)| (name.as_str(), queue)),
        )
    }
}

#[derive(Default)]
struct Queue {
    /// Tasks that may run now: one FIFO line per priority, the lowest priority served first.
    /// Priorities are few, so this beats a binary heap of whole tasks: no sifting, no moves.
    /// Emptied lines are kept so a busy priority does not reallocate its buffer.
    ready: BTreeMap<i64, VecDeque<QueuedTask>>,
    ready_len: usize,
    /// Tasks that may run later (a retry's backoff), earliest first.
    delayed: BinaryHeap<Delayed>,
}

impl Queue {
    fn push_ready(&mut self, task: QueuedTask) {
        self.ready.entry(task.priority).or_default().push_back(task);
        self.ready_len += 1;
    }

    fn pop_ready(&mut self) -> Option<QueuedTask> {
        let task = self.ready.values_mut().find_map(VecDeque::pop_front)?;
        self.ready_len -= 1;
        Some(task)
    }

    /// Moves the delayed tasks due by `now` to the ready lines; returns when the next one
    /// is due.
    fn promote_due(&mut self, now: f64) -> Option<f64> {
        while self.delayed.peek().is_some_and(|d| d.run_at <= now) {
            let due = self.delayed.pop().expect("peeked").task;
            self.push_ready(due);
        }
        self.delayed.peek().map(|d| d.run_at)
    }

    fn clear(&mut self) {
        self.ready.clear();
        self.ready_len = 0;
        self.delayed.clear();
    }
}

struct Delayed {
    run_at: f64,
    task: QueuedTask,
}

impl Ord for Delayed {
    // BinaryHeap pops the greatest: the greatest is the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        other.run_at.total_cmp(&self.run_at)
    }
}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Delayed {}

impl MemoryBroker {
    /// An empty queue writing records to `storage`.
    pub fn new(storage: Arc<MemoryStorage>) -> Self {
        MemoryBroker {
            storage,
            queues: Mutex::default(),
            available: Notify::new(),
            dead: Mutex::default(),
            dead_ids: std::sync::atomic::AtomicU64::new(0),
            cancel_requests: tokio::sync::broadcast::channel(1024).0,
            deliveries: std::sync::atomic::AtomicU64::new(0),
            limits: Mutex::default(),
        }
    }

    /// Hands a delivery back unrun: its record `new` again (one more hand-back when
    /// `hand_back`), its run counted out. `Ok(false)`: a cancel requested while it was held
    /// ended it `cancel` instead. The caller queues the returned task (or parks it).
    fn unrun(
        &self,
        delivery: &Delivery,
        hand_back: bool,
    ) -> Result<Option<QueuedTask>, BackendError> {
        let uuid = delivery.task.uuid;
        // Cancelled while it was held: it ends `cancel` rather than waiting to run again.
        let requested = self
            .storage
            .slots
            .lock()
            .get_mut(&uuid)
            .and_then(|slot| slot.cancel_requested.take());
        if let Some(reason) = requested {
            self.storage
                .finish_as(uuid, Outcome::Cancel(reason), &delivery.run)?;
            return Ok(None);
        }
        let mut hand_backs = delivery.task.hand_backs;
        self.storage.change(uuid, |slot| {
            slot.record.status = TaskStatus::New;
            slot.record.updated_at = unix_now();
            if hand_back {
                slot.record.hand_backs = slot.record.hand_backs.saturating_add(1);
            }
            hand_backs = slot.record.hand_backs;
        })?;
        {
            let mut tally = self.storage.tally.lock();
            tally.running = tally.running.saturating_sub(1);
        }
        let mut task = delivery.task.clone();
        task.hand_backs = hand_backs;
        Ok(Some(task))
    }

    /// How many tasks wait to run now, in every queue.
    pub fn len(&self) -> usize {
        self.queues
            .lock()
            .all()
            .map(|(_, queue)| queue.ready_len)
            .sum()
    }

    /// Whether no task waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a task unless its uuid is known already (a second add changes nothing).
    fn push(&self, task: QueuedTask) {
        if self.storage.insert_new_record(TaskRecord::new(&task)) {
            self.enqueue(task);
        }
    }

    fn enqueue(&self, task: QueuedTask) {
        {
            let mut queues = self.queues.lock();
            let queue = queues.of_task(task.queue.as_deref());
            match task.run_at {
                Some(run_at) if run_at > unix_now() => queue.delayed.push(Delayed { run_at, task }),
                _ => queue.push_ready(task),
            }
        }
        self.available.notify_waiters();
    }

    /// Up to `take.max` tasks that may run now, from the queues `take` names in its order
    /// (paused ones skipped), and otherwise when the next delayed one of them may.
    fn take_now(&self, take: &Take<'_>) -> (Vec<QueuedTask>, Option<f64>) {
        let mut queues = self.queues.lock();
        let now = unix_now();
        let mut next_due: Option<f64> = None;
        let mut tasks = Vec::with_capacity(take.max.min(64));
        for wanted in &take.queues {
            if !queues.paused.is_empty() && queues.paused.contains(wanted.name) {
                continue;
            }
            let Some(queue) = queues.get_mut(wanted.name) else {
                continue;
            };
            if let Some(due) = queue.promote_due(now) {
                next_due = Some(next_due.map_or(due, |earlier: f64| earlier.min(due)));
            }
            let room = wanted.max.min(take.max.saturating_sub(tasks.len()));
            for _ in 0..room {
                match queue.pop_ready() {
                    Some(task) => tasks.push(task),
                    None => break,
                }
            }
        }
        (tasks, next_due)
    }
}

#[crate::async_trait]
impl crate::backend::Lifecycle for MemoryBroker {
    fn name(&self) -> &str {
        "MemoryBroker"
    }
}

#[crate::async_trait]
impl Broker for MemoryBroker {
    fn supports_queues(&self) -> bool {
        true
    }

    async fn add(&self, task: QueuedTask) -> Result<(), BackendError> {
        self.push(task);
        Ok(())
    }

    async fn add_unique(
        &self,
        task: QueuedTask,
        unique: &crate::unique::UniqueKey,
    ) -> Result<Option<Uuid>, BackendError> {
        match self.storage.claim_unique(&task, unique) {
            Some(holder) => Ok(Some(holder)),
            None => {
                self.enqueue(task);
                Ok(None)
            }
        }
    }

    async fn next_batch(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        self.take(&Take::default_queue(max)).await
    }

    async fn take(&self, take: &Take<'_>) -> Result<Vec<Delivery>, BackendError> {
        let give_up = take
            .patience
            .and_then(|patience| tokio::time::Instant::now().checked_add(patience));
        loop {
            // Register for a wake-up before looking, so a push between the look and the
            // wait is not missed.
            let notified = self.available.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (tasks, next_due) = self.take_now(take);
            let any_taken = !tasks.is_empty();
            let deliveries: Vec<Delivery> = self
                .storage
                .start(tasks)
                .into_iter()
                .map(|task| {
                    // Unique per delivery: a task handed back and taken again while its
                    // first run still ends (a plain `fn`) must not share its receipt.
                    // Sized once (a uuid, a dash and a counter): one allocation.
                    let mut receipt = String::with_capacity(60);
                    let _ = write!(
                        receipt,
                        "{}-{}",
                        task.uuid,
                        self.deliveries
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    );
                    Delivery::new(task, receipt)
                })
                .collect();
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            if any_taken {
                // All cancelled while they waited: look again at once. (Waiting here would
                // leave the tasks behind them waiting for the next add, or for ever.)
                continue;
            }
            if give_up.is_some_and(|at| tokio::time::Instant::now() >= at) {
                return Ok(Vec::new());
            }
            let until_due = next_due.map(|run_at| {
                std::time::Duration::try_from_secs_f64((run_at - unix_now()).max(0.0))
                    .unwrap_or_default()
            });
            let until_patience = give_up.map(|at| at - tokio::time::Instant::now());
            match until_due.into_iter().chain(until_patience).min() {
                Some(wait) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn finish(&self, delivery: &Delivery, outcome: Outcome) -> Result<(), BackendError> {
        // A retry's child is stored before the parent ends, so whoever follows the parent to
        // the child finds it.
        let child = match &outcome {
            Outcome::Retry { child, .. } => {
                self.storage.insert_record(TaskRecord::new(child));
                Some((**child).clone())
            }
            _ => None,
        };
        let result = self
            .storage
            .finish(delivery.task.uuid, outcome, &delivery.run);
        match (&result, child) {
            (Ok(()), Some(child)) => self.enqueue(child),
            // A cancel won: no next attempt.
            (Err(_), Some(child)) => {
                self.storage.slots.lock().remove(&child.uuid);
            }
            _ => {}
        }
        result
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), BackendError> {
        // Cancelled while it ran: it ends `cancel` rather than waiting to run again.
        let requested = self
            .storage
            .slots
            .lock()
            .get_mut(&delivery.task.uuid)
            .and_then(|slot| slot.cancel_requested.take());
        if let Some(reason) = requested {
            let result =
                self.storage
                    .finish_as(delivery.task.uuid, Outcome::Cancel(reason), &delivery.run);
            return result;
        }
        let result = self.storage.change(delivery.task.uuid, |slot| {
            slot.record.status = TaskStatus::New;
            slot.record.updated_at = unix_now();
        });
        if result.is_ok() {
            let mut tally = self.storage.tally.lock();
            tally.running = tally.running.saturating_sub(1);
            drop(tally);
            let mut task = delivery.task.clone();
            task.run_at = None;
            self.enqueue(task);
        }
        result
    }

    async fn cancel(&self, uuid: Uuid, reason: &str) -> Result<Option<CancelState>, BackendError> {
        // Under the records' lock, which `start` takes too: a task is either cancelled before
        // it is marked `process` (and `start` leaves it out), or found running.
        let state = self.storage.cancel_if_waiting(uuid, reason);
        if state == CancelState::Running {
            // Whichever app on this broker runs it stops it (no listener: nobody runs it yet).
            let _ = self.cancel_requests.send(CancelRequest::new(uuid, reason));
        }
        Ok(Some(state))
    }

    async fn request_cancel(&self, uuid: Uuid, reason: &str) -> Result<(), BackendError> {
        let _ = self.cancel_requests.send(CancelRequest::new(uuid, reason));
        Ok(())
    }

    fn cancel_requests(&self) -> Option<tokio::sync::broadcast::Receiver<CancelRequest>> {
        Some(self.cancel_requests.subscribe())
    }

    async fn stats(&self) -> Result<Option<QueueStats>, BackendError> {
        let now = unix_now();
        let mut stats = QueueStats::default();
        {
            let queues = self.queues.lock();
            let tally = self.storage.tally.lock();
            for (name, queue) in queues.all() {
                let mut numbers = crate::stats::QueueNumbers::default();
                for (priority, line) in &queue.ready {
                    // Cancelled while they waited: still in the line (a take drops them), no
                    // longer waiting.
                    let key = (
                        (name != crate::queues::DEFAULT_QUEUE).then(|| name.to_owned()),
                        *priority,
                    );
                    let cancelled = tally.cancelled_in_queue.get(&key).copied().unwrap_or(0);
                    let waiting = (line.len() as u64).saturating_sub(cancelled);
                    if waiting > 0 {
                        *stats.waiting.entry(*priority).or_default() += waiting;
                        numbers.waiting += waiting;
                    }
                }
                numbers.delayed = queue.delayed.len() as u64;
                numbers.paused = queues.paused.contains(name);
                stats.delayed += numbers.delayed;
                // Each line is FIFO, so the oldest waiting task is at the front of one of them.
                let oldest = queue
                    .ready
                    .values()
                    .filter_map(|line| line.front())
                    .map(|task| task.created_at)
                    .min_by(f64::total_cmp)
                    .map(|created_at| (now - created_at).max(0.0));
                stats.oldest_waiting_secs = match (stats.oldest_waiting_secs, oldest) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                stats.queues.insert(name.to_owned(), numbers);
            }
            // Paused before any task came: listed too.
            for name in &queues.paused {
                stats.queues.entry(name.clone()).or_default().paused = true;
            }
        }
        stats.dead_letters = self.dead.lock().len() as u64;
        {
            let tally = self.storage.tally.lock();
            stats.running = tally.running;
            stats.finished = tally.finished;
            stats.finished_last_minute = tally.throughput.last_minute(now as u64);
        }
        Ok(Some(stats))
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        let mut queues = self.queues.lock();
        queues.default.clear();
        for queue in queues.named.values_mut() {
            queue.clear();
        }
        queues.paused.clear();
        drop(queues);
        self.dead.lock().clear();
        *self.limits.lock() = Limits::default();
        Ok(())
    }

    async fn defer(
        &self,
        delivery: &Delivery,
        delay: std::time::Duration,
    ) -> Result<(), BackendError> {
        if let Some(mut task) = self.unrun(delivery, true)? {
            task.run_at = Some(unix_now() + delay.as_secs_f64().min(1e12));
            self.enqueue(task);
        }
        Ok(())
    }

    fn supports_limits(&self) -> bool {
        true
    }

    async fn admit(
        &self,
        delivery: &Delivery,
        limits: &crate::limits::TaskLimits,
    ) -> Result<crate::limits::Admission, BackendError> {
        use crate::limits::Admission;
        let mut state = self.limits.lock();
        let now = unix_now();
        if let Some(max) = limits.max_running {
            let running = state.running.entry(limits.task_name.clone()).or_default();
            if running.holders.len() >= max as usize && !running.holders.contains(&delivery.receipt)
            {
                // Under the limits' lock: a leave cannot come between this look and the park.
                let parked = match self.unrun(delivery, false)? {
                    Some(mut task) => {
                        task.run_at = None;
                        running.parked.push_back(task);
                        Admission::Parked
                    }
                    None => Admission::Cancelled,
                };
                // A turn its rate gave it before is given up: woken later, it takes a new one
                // (or the parked tasks would start back to back past their rate).
                if let Some(turn) = state.rates.get_mut(&limits.rate_key) {
                    turn.reserved.remove(&delivery.task.uuid);
                }
                return Ok(parked);
            }
        }
        if let Some(rate) = limits.rate {
            if state.rates.len() > RATE_KEYS_KEPT {
                state
                    .rates
                    .retain(|_, rate| !rate.reserved.is_empty() || rate.next_start > now);
            }
            let turn = state.rates.entry(limits.rate_key.clone()).or_default();
            if turn.reserved.len() > RATE_KEYS_KEPT {
                turn.forget_before(now, std::time::Duration::from_secs(3600));
            }
            if let Some(wait) = turn.turn(delivery.task.uuid, now, rate.interval()) {
                return Ok(match self.unrun(delivery, false)? {
                    Some(mut task) => {
                        task.run_at = Some(now + wait.as_secs_f64().min(1e12));
                        self.enqueue(task);
                        Admission::Postponed { wait }
                    }
                    None => Admission::Cancelled,
                });
            }
        }
        if limits.max_running.is_some() {
            state
                .running
                .entry(limits.task_name.clone())
                .or_default()
                .holders
                .insert(delivery.receipt.clone());
        }
        Ok(Admission::Run)
    }

    async fn leave(
        &self,
        delivery: &Delivery,
        limits: &crate::limits::TaskLimits,
    ) -> Result<(), BackendError> {
        let mut state = self.limits.lock();
        let Some(running) = state.running.get_mut(&limits.task_name) else {
            return Ok(());
        };
        if running.holders.remove(&delivery.receipt) {
            // Wakes the first parked task that can still run; those cancelled or expired while
            // parked go to their queue too (the take drops a cancelled one, the worker ends an
            // expired one) but do not use the wake up.
            let now = unix_now();
            while let Some(parked) = running.parked.pop_front() {
                let live = self
                    .storage
                    .slots
                    .lock()
                    .get(&parked.uuid)
                    .is_some_and(|slot| slot.record.status == TaskStatus::New);
                let expired = parked.expires_at.is_some_and(|at| at <= now);
                self.enqueue(parked);
                if live && !expired {
                    break;
                }
            }
        }
        if running.holders.is_empty() && running.parked.is_empty() {
            state.running.remove(&limits.task_name);
        }
        Ok(())
    }

    async fn bury(&self, delivery: &Delivery, reason: &str) -> Result<(), BackendError> {
        let task = &delivery.task;
        self.storage
            .finish(task.uuid, Outcome::Error(reason.to_owned()), &delivery.run)?;
        let id = self
            .dead_ids
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = format!("{}:{}:{}", task.task_name, task.uuid, task.priority);
        let letter = DeadLetter::new(id.to_string(), entry, reason, unix_now());
        let mut dead = self.dead.lock();
        if dead.len() >= DEAD_LETTERS_MAX {
            dead.pop_front();
        }
        dead.push_back((letter, task.clone()));
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        Ok(self
            .dead
            .lock()
            .iter()
            .take(limit)
            .map(|(letter, _)| letter.clone())
            .collect())
    }

    async fn resolve_dead_letter(
        &self,
        letter: &DeadLetter,
        requeue: bool,
    ) -> Result<bool, BackendError> {
        let taken = {
            let mut dead = self.dead.lock();
            let at = dead.iter().position(|(held, _)| held.id == letter.id);
            at.and_then(|at| dead.remove(at))
        };
        let Some((_, mut task)) = taken else {
            return Ok(false);
        };
        if requeue {
            // Waiting again, from the start: a worker that knows it now runs it.
            let uuid = task.uuid;
            let queued = self.storage.change(uuid, |slot| {
                let record = &mut slot.record;
                record.status = TaskStatus::New;
                record.traceback = None;
                record.finished_at = None;
                record.started_at = None;
                record.worker = None;
                record.hand_backs = 0;
                record.updated_at = unix_now();
            });
            if queued.is_ok() {
                task.hand_backs = 0;
                task.run_at = None;
                self.enqueue(task);
            } else {
                tracing::warn!("dead letter of task {uuid}: its record is gone; not queued again");
            }
        }
        Ok(true)
    }

    async fn pause_queue(&self, queue: &str, paused: bool) -> Result<(), BackendError> {
        let mut queues = self.queues.lock();
        if paused {
            queues.paused.insert(queue.to_owned());
        } else {
            queues.paused.remove(queue);
        }
        drop(queues);
        if !paused {
            self.available.notify_waiters();
        }
        Ok(())
    }

    async fn paused_queues(&self) -> Result<Vec<String>, BackendError> {
        Ok(self.queues.lock().paused.iter().cloned().collect())
    }
}

/// Hashes a task's uuid by folding its bytes: a v4 uuid is random already, so the default
/// SipHash only added cost on every status change (it showed in profiles of the hot path).
#[derive(Default)]
struct UuidHasher(u64);

impl Hasher for UuidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }

    // The length a slice writes before its bytes tells nothing about a uuid.
    fn write_usize(&mut self, _: usize) {}
}

/// In-memory task records, with waiters woken the moment a task ends.
///
/// Finished records are kept for a while ([`MemoryStorage::DEFAULT_RESULT_TTL`], one hour, by
/// default) and then dropped, so a long-running process does not grow without bound; a task
/// still waiting or running is never dropped.
pub struct MemoryStorage {
    // Boxed: a record is a few hundred bytes, and a growing map would copy every one of them
    // at each resize (that copying was a tenth of the in-memory hot path).
    slots: Mutex<HashMap<Uuid, Box<Slot>, BuildHasherDefault<UuidHasher>>>,
    /// How long a finished record is kept; `None` keeps it.
    result_ttl: Option<std::time::Duration>,
    /// Finished records by the time they expire, oldest first (one TTL for all, so pushing at
    /// the back keeps the order). Locked after `slots`, never before.
    expiries: Mutex<VecDeque<(std::time::Instant, Uuid)>>,
    /// Finished records of tasks with a retention of their own (`result_ttl` on the task), by
    /// the time they expire, soonest first. Locked after `slots`, never with `expiries`.
    own_expiries: Mutex<BinaryHeap<std::cmp::Reverse<(std::time::Instant, Uuid)>>>,
    /// The counters `stats` reads, kept as tasks start and end. Locked after `slots`.
    tally: Mutex<Tally>,
    /// Tasks cancelled while they waited whose records were deleted before a take dropped
    /// their queue entries: the take drops them quietly (no record comes back). Locked after
    /// `slots`.
    gone: Mutex<HashSet<Uuid>>,
    /// Unique keys: the task that took each, when it was added (Unix seconds) and the key's
    /// window. Locked before `slots`.
    unique: Mutex<HashMap<String, (Uuid, f64, std::time::Duration)>>,
}

/// What the write path counts for [`Broker::stats`].
#[derive(Default)]
struct Tally {
    running: u64,
    /// Tasks cancelled while they waited, by priority: still in the queue (a take drops them)
    /// but no longer waiting.
    /// Keyed by queue (`None`: the default one) and priority.
    cancelled_in_queue: BTreeMap<(Option<String>, i64), u64>,
    finished: FinishedCounts,
    throughput: ThroughputWindow,
}

impl Tally {
    fn ended(&mut self, status: TaskStatus) {
        self.finished.count(status);
        self.throughput.record(unix_now() as u64, 1);
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::with_result_ttl(Some(Self::DEFAULT_RESULT_TTL))
    }
}

struct Slot {
    record: TaskRecord,
    /// Woken at every change of the record; created only when somebody waits.
    changed: Option<Arc<Notify>>,
    /// A cancel asked while the task ran: its outcome is `cancel`, whatever the run returns.
    cancel_requested: Option<String>,
    /// Cancelled while it waited, its queue entry not yet dropped by a take: kept until then
    /// (the retention starts when the take drops it), and remembered in `gone` if deleted.
    queued_cancel: bool,
    /// How long this record is kept once final, when its task says (`result_ttl`), instead
    /// of the storage's retention.
    result_ttl: Option<std::time::Duration>,
}

impl Slot {
    fn new(record: TaskRecord) -> Box<Self> {
        Box::new(Slot {
            record,
            changed: None,
            cancel_requested: None,
            queued_cancel: false,
            result_ttl: None,
        })
    }

    fn wake_waiters(&mut self) {
        if let Some(changed) = self.changed.take() {
            changed.notify_waiters();
        }
    }
}

impl MemoryStorage {
    /// How long finished records are kept by default: one hour.
    pub const DEFAULT_RESULT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

    /// An empty storage that keeps finished records for [`DEFAULT_RESULT_TTL`](Self::DEFAULT_RESULT_TTL).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty storage that keeps finished records this long (`None`: for the life of the
    /// process).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use qtasks::backend::{MemoryBroker, MemoryStorage};
    ///
    /// let storage = Arc::new(MemoryStorage::with_result_ttl(Some(Duration::from_secs(60))));
    /// let broker = Arc::new(MemoryBroker::new(Arc::clone(&storage)));
    /// let app = qtasks::QueueTasks::builder().backend(broker, storage).build();
    /// ```
    pub fn with_result_ttl(result_ttl: Option<std::time::Duration>) -> Self {
        MemoryStorage {
            slots: Mutex::default(),
            result_ttl,
            expiries: Mutex::default(),
            own_expiries: Mutex::default(),
            gone: Mutex::default(),
            unique: Mutex::default(),
            tally: Mutex::default(),
        }
    }

    /// Whether the task that took a unique key still holds it: its last attempt (a retry is
    /// followed) waits or runs, or it was added less than `window` ago. A holder whose record
    /// is gone holds nothing.
    fn holds(&self, holder: Uuid, added_at: f64, window: std::time::Duration) -> bool {
        let slots = self.slots.lock();
        let mut current = holder;
        let mut status = None;
        // At most 32 attempts are followed: past them the window alone decides.
        for _ in 0..32 {
            let Some(slot) = slots.get(&current) else {
                break;
            };
            status = Some(slot.record.status);
            match (slot.record.status, slot.record.retry_child_uuid) {
                (TaskStatus::Retry, Some(child)) if slots.contains_key(&child) => current = child,
                _ => break,
            }
        }
        let status = status.filter(|status| *status != TaskStatus::Retry);
        crate::unique::still_holds(status, added_at, window, unix_now())
    }

    /// Writes `task`'s record and gives it `unique`'s key, unless the key's holder still holds
    /// it (then its id) or `task`'s id is known (then that id: an add again adds nothing).
    fn claim_unique(&self, task: &QueuedTask, unique: &crate::unique::UniqueKey) -> Option<Uuid> {
        let mut keys = self.unique.lock();
        if let Some(&(holder, added_at, _)) = keys.get(&unique.key)
            && self.holds(holder, added_at, unique.window)
        {
            return Some(holder);
        }
        if !self.insert_new_record(TaskRecord::new(task)) {
            return Some(task.uuid);
        }
        keys.insert(unique.key.clone(), (task.uuid, unix_now(), unique.window));
        // Keys whose holder holds nothing any more go, now and then, so the map stays bounded.
        if keys.len() >= 1024 && keys.len().is_power_of_two() {
            keys.retain(|_, (holder, added_at, window)| self.holds(*holder, *added_at, *window));
        }
        None
    }

    /// Called with the records' lock held, after `uuid`'s record changed: a record that just
    /// became final is given its expiry, and records whose expiry has passed are dropped (if
    /// they are still final: a record is only ever dropped finished).
    fn retain(
        &self,
        slots: &mut HashMap<Uuid, Box<Slot>, BuildHasherDefault<UuidHasher>>,
        became_final: Option<Uuid>,
    ) {
        let own_ttl = became_final.and_then(|uuid| slots.get(&uuid)?.result_ttl);
        if let (Some(uuid), Some(ttl)) = (became_final, own_ttl) {
            // A retention past what the clock holds keeps the record.
            if let Some(deadline) = std::time::Instant::now().checked_add(ttl) {
                self.own_expiries
                    .lock()
                    .push(std::cmp::Reverse((deadline, uuid)));
            }
        }
        self.drop_own_expired(slots);
        let Some(ttl) = self.result_ttl else {
            return;
        };
        let now = std::time::Instant::now();
        let mut expiries = self.expiries.lock();
        if let (Some(uuid), None) = (became_final, own_ttl) {
            expiries.push_back((now + ttl, uuid));
        }
        while let Some(&(deadline, uuid)) = expiries.front() {
            if deadline > now {
                break;
            }
            expiries.pop_front();
            // A cancelled task whose entry still waits keeps until a take drops the entry.
            if slots
                .get(&uuid)
                .is_some_and(|slot| slot.record.status.is_final() && !slot.queued_cancel)
            {
                slots.remove(&uuid);
            }
        }
    }

    /// Drops the records kept for a retention of their own whose time has come (empty, and
    /// nothing to do, unless some task sets `result_ttl`).
    fn drop_own_expired(
        &self,
        slots: &mut HashMap<Uuid, Box<Slot>, BuildHasherDefault<UuidHasher>>,
    ) {
        let mut own = self.own_expiries.lock();
        let now = std::time::Instant::now();
        while let Some(&std::cmp::Reverse((deadline, uuid))) = own.peek() {
            if deadline > now {
                break;
            }
            own.pop();
            if slots
                .get(&uuid)
                .is_some_and(|slot| slot.record.status.is_final() && !slot.queued_cancel)
            {
                slots.remove(&uuid);
            }
        }
    }

    /// Writes a record unless one has its uuid; `true` when written.
    fn insert_new_record(&self, record: TaskRecord) -> bool {
        match self.slots.lock().entry(record.uuid) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Slot::new(record));
                true
            }
        }
    }

    fn insert_record(&self, record: TaskRecord) {
        self.slots.lock().insert(record.uuid, Slot::new(record));
    }

    fn change(&self, uuid: Uuid, change: impl FnOnce(&mut Slot)) -> Result<(), BackendError> {
        let mut slots = self.slots.lock();
        let slot = slots.get_mut(&uuid).ok_or_else(|| not_stored(uuid))?;
        let was_final = slot.record.status.is_final();
        change(slot);
        slot.wake_waiters();
        let became_final = (!was_final && slot.record.status.is_final()).then_some(uuid);
        self.retain(&mut slots, became_final);
        Ok(())
    }

    /// Marks a batch of taken tasks `process` under one lock and returns those to run. A task
    /// cancelled while it waited is left out (its record says so already), and so is one whose
    /// record was flushed meanwhile.
    fn start(&self, tasks: Vec<QueuedTask>) -> Vec<QueuedTask> {
        let now = unix_now();
        let mut slots = self.slots.lock();
        let mut dropped = Vec::new();
        let started: Vec<QueuedTask> = tasks
            .into_iter()
            .filter(|task| {
                let Some(slot) = slots.get_mut(&task.uuid) else {
                    if self.gone.lock().remove(&task.uuid) {
                        self.uncount_cancelled(task.queue.clone(), task.priority);
                    } else {
                        tracing::warn!("task {} has no record any more; not run", task.uuid);
                    }
                    return false;
                };
                if slot.record.status == TaskStatus::Cancel {
                    if slot.queued_cancel {
                        slot.queued_cancel = false;
                        self.uncount_cancelled(task.queue.clone(), task.priority);
                        dropped.push(task.uuid);
                    }
                    return false;
                }
                slot.record.status = TaskStatus::Process;
                slot.record.updated_at = now;
                slot.wake_waiters();
                true
            })
            .collect();
        self.tally.lock().running += started.len() as u64;
        for uuid in dropped {
            self.retain(&mut slots, Some(uuid));
        }
        started
    }

    /// A task cancelled while it waited leaves the counts as its queue entry goes.
    fn uncount_cancelled(&self, queue: Option<String>, priority: i64) {
        if let Some(count) = self
            .tally
            .lock()
            .cancelled_in_queue
            .get_mut(&(queue, priority))
        {
            *count = count.saturating_sub(1);
        }
    }

    /// `new` → `cancel`; otherwise reports the status, all under one lock.
    fn cancel_if_waiting(&self, uuid: Uuid, reason: &str) -> CancelState {
        let mut slots = self.slots.lock();
        let Some(slot) = slots.get_mut(&uuid) else {
            return CancelState::NotFound;
        };
        match slot.record.status {
            TaskStatus::New => {
                slot.record.status = TaskStatus::Cancel;
                slot.record.cancel_reason = Some(reason.to_owned());
                slot.record.updated_at = unix_now();
                slot.record.finished_at = Some(slot.record.updated_at);
                slot.queued_cancel = true;
                slot.wake_waiters();
                let key = (slot.record.queue.clone(), slot.record.priority);
                let mut tally = self.tally.lock();
                tally.ended(TaskStatus::Cancel);
                *tally.cancelled_in_queue.entry(key).or_default() += 1;
                CancelState::Cancelled
            }
            TaskStatus::Process => {
                slot.cancel_requested = Some(reason.to_owned());
                CancelState::Running
            }
            status => CancelState::Ended(status),
        }
    }

    /// Records an outcome; a cancel asked while the task ran wins over it (the answer says so).
    fn finish(&self, uuid: Uuid, outcome: Outcome, run: &RunInfo) -> Result<(), BackendError> {
        let requested = self
            .slots
            .lock()
            .get_mut(&uuid)
            .and_then(|slot| slot.cancel_requested.take());
        let (outcome, cancelled) = match requested {
            Some(reason) if !matches!(outcome, Outcome::Cancel(_)) => {
                (Outcome::Cancel(reason.clone()), Some(reason))
            }
            _ => (outcome, None),
        };
        self.finish_as(uuid, outcome, run)?;
        match cancelled {
            Some(reason) => Err(BackendError::cancelled("memory", reason)),
            None => Ok(()),
        }
    }

    fn finish_as(&self, uuid: Uuid, outcome: Outcome, run: &RunInfo) -> Result<(), BackendError> {
        {
            let mut tally = self.tally.lock();
            tally.running = tally.running.saturating_sub(1);
            tally.ended(outcome.status());
        }
        self.change(uuid, |slot| {
            slot.result_ttl = run.result_ttl;
            let record = &mut slot.record;
            record.updated_at = unix_now();
            record.run_ended(run, record.updated_at);
            record.status = outcome.status();
            match outcome {
                Outcome::Success(value) => record.returning = Some(value),
                Outcome::Error(traceback) => record.traceback = Some(traceback),
                Outcome::Cancel(reason) => record.cancel_reason = Some(reason),
                Outcome::Retry { traceback, child } => {
                    record.traceback = Some(traceback);
                    record.retry_child_uuid = Some(child.uuid);
                    record.retry = child.retry.map(|left| left + 1);
                }
            }
        })
    }
}

/// A wait for the next change of a record.
type Changed = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

fn items_of(record: &TaskRecord) -> &[serde_json::Value] {
    match &record.returning {
        Some(serde_json::Value::Array(items)) => items,
        _ => &[],
    }
}

impl MemoryStorage {
    /// Looks at a record: `Some(..)` when it is missing (`Some(None)`) or `ready` says so;
    /// otherwise a future woken at its next change, registered under the lock so no change
    /// between the look and the wait is missed.
    fn look(
        &self,
        uuid: Uuid,
        ready: impl Fn(&TaskRecord) -> bool,
    ) -> (Option<Option<TaskRecord>>, Option<Changed>) {
        let mut slots = self.slots.lock();
        let Some(slot) = slots.get_mut(&uuid) else {
            return (Some(None), None);
        };
        if ready(&slot.record) {
            return (Some(Some(slot.record.clone())), None);
        }
        let changed = Arc::clone(slot.changed.get_or_insert_with(Default::default));
        let mut notified = Box::pin(async move { changed.notified().await });
        // Poll once so the `Notified` registers now, while the lock is held.
        let waker = std::task::Waker::noop();
        let _ = notified
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        (None, Some(notified))
    }
}

#[crate::async_trait]
impl crate::backend::Lifecycle for MemoryStorage {
    fn name(&self) -> &str {
        "MemoryStorage"
    }
}

#[crate::async_trait]
impl Storage for MemoryStorage {
    async fn get(&self, uuid: Uuid) -> Result<Option<TaskRecord>, BackendError> {
        let record = self.slots.lock().get(&uuid).map(|slot| slot.record.clone());
        Ok(record)
    }

    async fn get_all(&self) -> Result<Vec<TaskRecord>, BackendError> {
        let mut records: Vec<TaskRecord> = self
            .slots
            .lock()
            .values()
            .map(|slot| slot.record.clone())
            .collect();
        records.sort_by(|a, b| a.created_at.total_cmp(&b.created_at));
        Ok(records)
    }

    async fn update(&self, uuid: Uuid, update: RecordUpdate) -> Result<(), BackendError> {
        self.change(uuid, |slot| {
            update.apply_to(&mut slot.record);
            slot.record.updated_at = unix_now();
        })
    }

    async fn wait_finished(&self, uuid: Uuid) -> Result<Option<TaskRecord>, BackendError> {
        loop {
            let (record, changed) = self.look(uuid, |record| record.status.is_final());
            match (record, changed) {
                (Some(found), _) => return Ok(found),
                (None, Some(changed)) => changed.await,
                (None, None) => unreachable!("look registers when it returns nothing"),
            }
        }
    }

    async fn append_item(
        &self,
        uuid: Uuid,
        delivery: &str,
        item: serde_json::Value,
    ) -> Result<bool, BackendError> {
        // In one process a task has one delivery at a time: only a running task takes items.
        let _ = delivery;
        let mut appended = false;
        let result = self.change(uuid, |slot| {
            if slot.record.status != TaskStatus::Process {
                return;
            }
            appended = true;
            match &mut slot.record.returning {
                Some(serde_json::Value::Array(items)) => items.push(item),
                other => *other = Some(serde_json::Value::Array(vec![item])),
            }
        });
        result.map(|()| appended)
    }

    async fn set_progress(
        &self,
        uuid: Uuid,
        delivery: &str,
        progress: serde_json::Value,
    ) -> Result<bool, BackendError> {
        // In one process a task has one delivery at a time: only a running task reports.
        let _ = delivery;
        let mut stored = false;
        // A record deleted meanwhile keeps no progress: nothing to report.
        let _ = self.change(uuid, |slot| {
            if slot.record.status == TaskStatus::Process {
                slot.record.progress = Some(progress);
                slot.record.progress_at = Some(unix_now());
                stored = true;
            }
        });
        Ok(stored)
    }

    async fn wait_progress(
        &self,
        uuid: Uuid,
        after: Option<f64>,
    ) -> Result<Option<TaskRecord>, BackendError> {
        loop {
            let has_news = |record: &TaskRecord| super::has_progress_news(record, after);
            match self.look(uuid, has_news) {
                (Some(found), _) => return Ok(found),
                (None, Some(changed)) => changed.await,
                (None, None) => unreachable!("look registers when it returns nothing"),
            }
        }
    }

    async fn wait_items(&self, uuid: Uuid, seen: usize) -> Result<ItemsRead, BackendError> {
        loop {
            let has_news =
                |record: &TaskRecord| record.status.is_final() || items_of(record).len() > seen;
            match self.look(uuid, has_news) {
                (Some(Some(record)), _) => {
                    let items = items_of(&record).iter().skip(seen).cloned().collect();
                    return Ok(ItemsRead {
                        items,
                        ended: record.status.is_final(),
                    });
                }
                (Some(None), _) => {
                    return Ok(ItemsRead {
                        items: Vec::new(),
                        ended: true,
                    });
                }
                (None, Some(changed)) => changed.await,
                (None, None) => unreachable!("look registers when it returns nothing"),
            }
        }
    }

    async fn delete_finished(&self) -> Result<usize, BackendError> {
        let mut slots = self.slots.lock();
        let before = slots.len();
        slots.retain(|_, slot| !slot.record.status.is_final());
        let deleted = before - slots.len();
        Ok(deleted)
    }

    /// One pass over the records under the lock, keeping only the positions that match;
    /// the page's records alone are cloned.
    async fn list(&self, query: &RecordQuery) -> Result<RecordPage, BackendError> {
        let slots = self.slots.lock();
        let mut matching: Vec<RecordCursor> = slots
            .values()
            .map(|slot| &slot.record)
            .filter(|record| {
                query.in_range(RecordCursor::of(record))
                    && query.matches(record.status, &record.task_name)
            })
            .map(RecordCursor::of)
            .collect();
        let scanned = slots.len() as u64;
        let total = matching.len() as u64;
        let size = query.page_size();
        // The newest `size + 1` first, without sorting the rest.
        if matching.len() > size + 1 {
            matching.select_nth_unstable_by(size, |a, b| b.cmp(a));
            matching.truncate(size + 1);
        }
        matching.sort_unstable_by(|a, b| b.cmp(a));
        let next = (matching.len() > size).then(|| matching[size - 1]);
        matching.truncate(size);
        let records = matching
            .iter()
            .filter_map(|position| slots.get(&position.uuid).map(|slot| slot.record.clone()))
            .collect();
        drop(slots);
        let mut page = RecordPage::new(records);
        page.next = next;
        page.scanned = scanned;
        page.total = Some(total);
        Ok(page)
    }

    async fn delete(&self, uuid: Uuid) -> Result<bool, BackendError> {
        let mut slots = self.slots.lock();
        let deleted = slots.remove(&uuid);
        if deleted.as_ref().is_some_and(|slot| slot.queued_cancel) {
            self.gone.lock().insert(uuid);
        }
        Ok(deleted.is_some())
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        let mut slots = self.slots.lock();
        slots.clear();
        *self.tally.lock() = Tally::default();
        self.gone.lock().clear();
        drop(slots);
        self.unique.lock().clear();
        Ok(())
    }
}

#[crate::async_trait]
impl crate::backend::RecordStore for MemoryStorage {
    async fn insert(&self, task: &QueuedTask) -> Result<bool, BackendError> {
        let written = match self.slots.lock().entry(task.uuid) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(slot) => {
                // Deleted after a cancel while its message still waited: not written again,
                // so the broker that meets the message drops it.
                if self.gone.lock().remove(&task.uuid) {
                    false
                } else {
                    slot.insert(Slot::new(TaskRecord::from_task(task.clone())));
                    true
                }
            }
        };
        Ok(written)
    }

    async fn insert_unique(
        &self,
        task: &QueuedTask,
        unique: &crate::unique::UniqueKey,
    ) -> Result<Option<Uuid>, BackendError> {
        Ok(self.claim_unique(task, unique))
    }

    async fn transition(
        &self,
        uuid: Uuid,
        from: &[TaskStatus],
        change: RecordChange,
    ) -> Result<Transition, BackendError> {
        let mut slots = self.slots.lock();
        let transition = match slots.get_mut(&uuid) {
            None => Transition::NotFound,
            Some(slot) if !from.contains(&slot.record.status) => {
                let status = slot.record.status;
                if slot.queued_cancel && matches!(change, RecordChange::Taken) {
                    // A take of a task cancelled while it waited: its message goes now.
                    slot.queued_cancel = false;
                    self.retain(&mut slots, Some(uuid));
                }
                Transition::Kept(status)
            }
            Some(slot) => {
                let before = slot.record.status;
                let mut change = change;
                let mut cancelled = false;
                match &change {
                    RecordChange::CancelRequested(reason) => {
                        slot.cancel_requested = Some(reason.clone());
                    }
                    // Taken again, or ending: a cancel asked while it ran wins.
                    RecordChange::Taken | RecordChange::Finished(..)
                        if !matches!(change, RecordChange::Finished(Outcome::Cancel(_), _)) =>
                    {
                        if let Some(reason) = slot.cancel_requested.take() {
                            let run = match change {
                                RecordChange::Finished(_, run) => run,
                                _ => RunInfo::default(),
                            };
                            change = RecordChange::Finished(Outcome::Cancel(reason), run);
                            cancelled = true;
                        }
                    }
                    RecordChange::Finished(..) => slot.cancel_requested = None,
                    _ => {}
                }
                let now = unix_now();
                if let RecordChange::Finished(_, run) = &change {
                    slot.result_ttl = run.result_ttl;
                }
                change.apply_to(&mut slot.record, now);
                slot.record.updated_at = now;
                slot.wake_waiters();
                let after = slot.record.status;
                if after.is_final() && !before.is_final() {
                    self.tally.lock().ended(after);
                    if before == TaskStatus::New && after == TaskStatus::Cancel {
                        // Its message still waits: kept until a take drops it.
                        slot.queued_cancel = true;
                    } else {
                        self.retain(&mut slots, Some(uuid));
                    }
                }
                if cancelled {
                    Transition::Cancelled(before)
                } else {
                    Transition::Applied(before)
                }
            }
        };
        Ok(transition)
    }

    /// Counted by a look at every record: this storage lives in one process, where a scan of
    /// its records costs what a server round trip would.
    async fn stats(&self) -> Result<QueueStats, BackendError> {
        let now = unix_now();
        let mut stats = QueueStats::default();
        let mut oldest: Option<f64> = None;
        for slot in self.slots.lock().values() {
            match slot.record.status {
                TaskStatus::New => {
                    *stats.waiting.entry(slot.record.priority).or_default() += 1;
                    let created = slot.record.created_at;
                    oldest = Some(oldest.map_or(created, |o| o.min(created)));
                }
                TaskStatus::Process => stats.running += 1,
                _ => {}
            }
        }
        stats.oldest_waiting_secs = oldest.map(|at| (now - at).max(0.0));
        let tally = self.tally.lock();
        stats.finished = tally.finished;
        stats.finished_last_minute = tally.throughput.last_minute(now as u64);
        drop(tally);
        Ok(stats)
    }
}
