//! The queue: adds, takes under fenced leases, finishes, hand-backs, cancels, dead letters,
//! pauses and stats.
//!
//! A delivery's receipt is its token (a uuid made by the take). Every write of the holder
//! names it, and does nothing once it no longer matches: the lease ran out and another take
//! reclaimed the task. Lock order, everywhere: the `queue` row, then the `records` row.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use uuid::Uuid;

use qtasks_core::backend::{
    BackendError, Broker, CancelRequest, CancelState, Delivery, ErrorChain, RunInfo, unix_now,
};
use qtasks_core::limits::{Admission, TaskLimits};
use qtasks_core::queues::{DEFAULT_QUEUE, Take};
use qtasks_core::records::{RecordChange, secs_to_ms};
use qtasks_core::stats::{DeadLetter, QueueNumbers, QueueStats};
use qtasks_core::{Outcome, QueuedTask, TaskRecord, TaskStatus};

use crate::batch::Batcher;
use crate::record::{self, Locked, Purge, write_record};
use crate::{App, failure, is_transient, secs};

/// Why a run stops when its worker lost the lease.
const LEASE_LOST: &str =
    "LeaseLost: the task's lease ran out while this worker stalled; another worker runs it";

/// How long an idle take sleeps when nothing wakes it: the slow safety net under the
/// notifications (a reconnect of the listener wakes everyone anyway).
const SAFETY_LOOK: Duration = Duration::from_secs(30);

/// How often the maintenance runs (expired records, stats folded, expired claims).
const MAINTENANCE_EVERY: Duration = Duration::from_secs(10);

/// How often a worker checks that the planner's idea of the tables' sizes is not far behind
/// (see [`refresh_statistics`]).
const STATISTICS_CHECK_EVERY: Duration = Duration::from_secs(2);

pub(crate) struct PgBroker {
    app: Arc<App>,
    /// The deliveries this process holds, by token, with their task: renewed until finished.
    held: Arc<Mutex<HashMap<Uuid, Uuid>>>,
    /// The renewer and the maintainer, while the broker runs.
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Finishes made at once go out as one transaction.
    finisher: Batcher<Finishing, Stored>,
    /// Adds made at once (`add_many`) go out as one statement.
    adder: Batcher<QueuedTask, Result<(), Arc<sqlx::Error>>>,
    /// The last look at due and expired rows (see [`LOOK_EVERY_WHILE_BUSY`]).
    looked: Mutex<Option<Looked>>,
}

/// A look at the queue (`PREPARE_TAKE`): when, the queues it served (whose due rows it
/// promoted), and those it found paused.
struct Looked {
    at: std::time::Instant,
    served: Vec<String>,
    paused: Vec<String>,
    /// When the look said the next delayed row of the served queues is due, or the next lease
    /// runs out: a take from then on looks again, whatever [`LOOK_EVERY_WHILE_BUSY`] says.
    next_due: Option<std::time::Instant>,
}

/// While takes find tasks, the look that promotes due rows and reclaims expired leases
/// (`PREPARE_TAKE`, a statement and a commit of its own) runs at most this often: a busy worker
/// leases first and looks only when that gave nothing, this long passed, or the take serves a
/// queue the last look did not (a queue left out of takes at its cap), or a delayed row or a
/// lease the last look knew of came due: a task waiting for its time (a delay, a retry's
/// backoff, a rate's turn) is promoted on time under load too, where it waited up to 100 ms
/// more before (bunched rate turns: the conformance suite's rate case failed in CI). A take that
/// finds nothing looks at once, as before. (It cut a drain's commits by about a quarter.)
const LOOK_EVERY_WHILE_BUSY: Duration = Duration::from_millis(100);

/// The most finishes one transaction stores, and the most adds one statement writes.
const FINISH_BATCH: usize = 256;
const ADD_BATCH_MAX: usize = 512;

impl PgBroker {
    pub(crate) fn new(app: Arc<App>) -> Self {
        let finisher = {
            let app = Arc::clone(&app);
            Batcher::new(FINISH_BATCH, move |items| {
                let app = Arc::clone(&app);
                async move { finish_batch(&app, items).await }
            })
        };
        let adder = {
            let app = Arc::clone(&app);
            Batcher::new(ADD_BATCH_MAX, move |tasks| {
                let app = Arc::clone(&app);
                async move { add_batch(&app, tasks).await }
            })
        };
        PgBroker {
            app,
            held: Arc::default(),
            background: Mutex::default(),
            finisher,
            adder,
            looked: Mutex::default(),
        }
    }

    /// The statements of an add, with the schema's name in them.
    pub(crate) fn statements(&self) -> &crate::unique::Statements {
        &self.app.shared.statements
    }

    pub(crate) fn app_name(&self) -> &str {
        &self.app.name
    }

    fn lease_secs(&self) -> f64 {
        secs(self.app.options.lease)
    }

    fn unhold(&self, receipt: &str) {
        if let Ok(token) = Uuid::parse_str(receipt) {
            self.held.lock().remove(&token);
        }
    }

    /// One look at the queues: reclaims expired leases, moves due tasks on, and leases up to
    /// `take.max` waiting tasks. Returns them, and when to look again if none.
    async fn take_once(
        &self,
        take: &Take<'_>,
    ) -> Result<(Vec<Delivery>, Option<Duration>), BackendError> {
        // Busy (the last look was recent): lease first, and look only if that gave nothing.
        let recent = self
            .looked
            .lock()
            .as_ref()
            .filter(|looked| {
                looked.at.elapsed() < LOOK_EVERY_WHILE_BUSY
                    && looked
                        .next_due
                        .is_none_or(|due| std::time::Instant::now() < due)
                    && take
                        .queues
                        .iter()
                        .all(|queue| looked.served.iter().any(|name| name == queue.name))
            })
            .map(|looked| looked.paused.clone());
        let mut next_wake = None;
        let mut rows = match recent {
            Some(paused) => self.lease(take, &paused).await?,
            None => Vec::new(),
        };
        if rows.is_empty() {
            let served: Vec<&str> = take.queues.iter().map(|queue| queue.name).collect();
            let prepared = sqlx::query(PREPARE_TAKE)
                .bind(&self.app.name)
                .bind(&served)
                .fetch_one(self.app.pool())
                .await
                .map_err(|e| failure("looking at the queue failed", e))?;
            let paused: Vec<String> = prepared.try_get(0).unwrap_or_default();
            next_wake = prepared.try_get::<Option<f64>, _>(1).unwrap_or(None);
            let now = std::time::Instant::now();
            *self.looked.lock() = Some(Looked {
                at: now,
                served: served.iter().map(|name| (*name).to_owned()).collect(),
                paused: paused.clone(),
                // Seconds on the database's clock from now; below zero when due rows were
                // left (locked, or past the look's limit): the next take looks again.
                next_due: next_wake.map(|secs| now + Duration::from_secs_f64(secs.clamp(0.0, 1e6))),
            });
            rows = self.lease(take, &paused).await?;
        }
        let mut deliveries = Vec::with_capacity(rows.len());
        let mut tokens = Vec::with_capacity(rows.len());
        let mut set_aside = Vec::new();
        let leased_any = !rows.is_empty();
        for (_, row) in rows {
            match row.delivery() {
                Ok(delivery) => {
                    tokens.push((row.token, row.uuid));
                    deliveries.push(delivery);
                }
                Err(reason) => set_aside.push((row, reason)),
            }
        }
        for (row, reason) in set_aside {
            if let Err(error) = self.set_aside(&row, &reason).await {
                tracing::error!(uuid = %row.uuid, "dropping the queue entry of task {} failed; its lease runs out and it is taken again: {}", row.uuid, ErrorChain(&error));
            }
        }
        // Held (renewed) only from here, with nothing awaited before the return: a take
        // dropped earlier leaves its leases to run out, never renewed by nobody's run.
        self.held.lock().extend(tokens);
        // A take whose every row was set aside (poison, ended, cancelled) looks again at once:
        // more tasks may wait behind them, and no notification would come for those.
        let wake = if leased_any && deliveries.is_empty() {
            Some(Duration::ZERO)
        } else {
            next_wake.map(|secs| Duration::from_secs_f64(secs.clamp(0.01, 1e6)))
        };
        Ok((deliveries, wake))
    }

    /// Leases waiting rows of the take's queues (not `paused`), each queue up to its share and
    /// the take up to its `max`, with the index of the queue each came from.
    async fn lease(
        &self,
        take: &Take<'_>,
        paused: &[String],
    ) -> Result<Vec<(usize, Leased)>, BackendError> {
        let mut rows = Vec::new();
        for (order, wanted) in take.queues.iter().enumerate() {
            let room = wanted.max.min(take.max.saturating_sub(rows.len()));
            if room == 0 || paused.iter().any(|name| name == wanted.name) {
                continue;
            }
            let leased = match sqlx::query(LEASE)
                .bind(&self.app.name)
                .bind(wanted.name)
                .bind(i64::try_from(room).unwrap_or(i64::MAX))
                .bind(self.lease_secs())
                .fetch_all(self.app.pool())
                .await
            {
                Ok(leased) => leased,
                // What the earlier queues gave is handed out rather than left to its leases.
                Err(error) if !rows.is_empty() => {
                    tracing::warn!(
                        "taking tasks of queue `{}` failed: {}",
                        wanted.name,
                        ErrorChain(&error)
                    );
                    break;
                }
                Err(error) => return Err(failure("taking tasks failed", error)),
            };
            let mut leased: Vec<Leased> = leased.iter().filter_map(Leased::read).collect();
            leased.sort_by_key(|row| (row.priority, row.seq));
            rows.extend(leased.into_iter().map(|row| (order, row)));
        }
        Ok(rows)
    }

    /// A taken row that cannot run: its record is missing, cannot be read, or ended already.
    /// The row goes; an unreadable or missing record is set aside in the dead letters.
    async fn set_aside(&self, row: &Leased, reason: &SetAside) -> Result<(), BackendError> {
        let app = &self.app.name;
        let mut tx = self.begin().await?;
        let gone = sqlx::query(
            "DELETE FROM queue WHERE app = $1 AND uuid = $2 AND token = $3 RETURNING queue, priority",
        )
        .bind(app)
        .bind(row.uuid)
        .bind(row.token)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| failure("setting a task aside failed", e))?;
        let Some(gone) = gone else {
            return commit(tx).await;
        };
        let why = match reason {
            SetAside::Ended => return commit(tx).await,
            SetAside::Cancelled(reason) => {
                // Cancelled while its worker died: it ends `cancel`, unrun.
                if let Some(mut record) = row.record.clone() {
                    RecordChange::Finished(Outcome::Cancel(reason.clone()), RunInfo::default())
                        .apply_to(&mut record, unix_now());
                    record.updated_at = unix_now();
                    let purge = Purge::After(self.app.options.result_ttl);
                    write_record(&mut tx, app, &record, purge).await?;
                }
                return commit(tx).await;
            }
            SetAside::Dead(why) => why,
        };
        let queue: String = gone.try_get(0).unwrap_or_default();
        let priority: i64 = gone.try_get(1).unwrap_or_default();
        if let Some(mut record) = row.record.clone() {
            RecordChange::Finished(Outcome::Error(why.clone()), RunInfo::default())
                .apply_to(&mut record, unix_now());
            record.updated_at = unix_now();
            write_record(&mut tx, app, &record, Purge::After(None)).await?;
        }
        let task_name = row
            .record
            .as_ref()
            .map_or("?", |record| record.task_name.as_str());
        let entry = format!("{task_name}:{}:{priority}", row.uuid);
        self.dead_letter(&mut tx, row.uuid, &queue, &entry, why)
            .await?;
        tracing::error!(uuid = %row.uuid, "task {} cannot run and was set aside in the dead letters: {why}", row.uuid);
        commit(tx).await
    }

    async fn dead_letter(
        &self,
        tx: &mut PgConnection,
        uuid: Uuid,
        queue: &str,
        entry: &str,
        reason: &str,
    ) -> Result<(), BackendError> {
        sqlx::query(
            "WITH added AS (INSERT INTO dead_letters (app, uuid, queue, entry, reason, at)
                            VALUES ($1, $2, $3, $4, $5, extract(epoch FROM clock_timestamp()))
                            RETURNING id)
             DELETE FROM dead_letters WHERE app = $1 AND id <= (
                 SELECT id FROM dead_letters WHERE app = $1 ORDER BY id DESC OFFSET $6 LIMIT 1)",
        )
        .bind(&self.app.name)
        .bind(uuid)
        .bind(queue)
        .bind(crate::pg_text(entry))
        .bind(crate::pg_text(reason))
        .bind(i64::try_from(self.app.options.dead_letters_max.max(1)).unwrap_or(i64::MAX) - 1)
        .execute(&mut *tx)
        .await
        .map_err(|e| failure("writing a dead letter failed", e))?;
        Ok(())
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, BackendError> {
        self.app
            .pool()
            .begin()
            .await
            .map_err(|e| failure("starting a transaction failed", e))
    }

    /// Hands a delivery back unrun, in its own transaction (see [`Self::hand_back_in`]).
    async fn hand_back(&self, delivery: &Delivery, how: HandBack) -> Result<(), BackendError> {
        self.unhold(&delivery.receipt);
        let mut tx = self.begin().await?;
        self.hand_back_in(&mut tx, delivery, how).await?;
        commit(tx).await
    }

    /// Hands a delivery back unrun, fenced by its token: waiting again at once (`release`),
    /// or delayed (a `defer`, counting one more hand-back; a rate's turn; a parked task). A
    /// cancel asked while it was held ends it `cancel` instead.
    async fn hand_back_in(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
        how: HandBack,
    ) -> Result<HandedBack, BackendError> {
        let Ok(token) = Uuid::parse_str(&delivery.receipt) else {
            return Ok(HandedBack::NotHeld);
        };
        let app = &self.app.name;
        let uuid = delivery.task.uuid;
        let what = || format!("handing task {uuid} back failed");
        let (delay, parked_for) = match &how {
            HandBack::Release => (None, None),
            HandBack::Defer(delay) | HandBack::Postpone(delay) => (Some(secs(*delay)), None),
            HandBack::Park(task_name) => (
                Some(secs(qtasks_core::limits::PARKED_RECHECK)),
                Some(task_name.as_str()),
            ),
        };
        // The row back in the queue and, unless a cancel was asked meanwhile, the record
        // `new` (its status column: the document keeps the rest), in one statement. A defer
        // counts a hand-back in the document, written below.
        let counts = matches!(how, HandBack::Defer(_));
        let row = sqlx::query(HAND_BACK)
            .bind(app)
            .bind(uuid)
            .bind(token)
            .bind(delay)
            .bind(parked_for)
            .bind(!counts)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| failure(what(), e))?;
        let moved: i64 = row.try_get(0).unwrap_or(0);
        let marked: i64 = row.try_get(1).unwrap_or(0);
        if moved == 0 {
            // Not ours any more: the lease ran out and another delivery has the task.
            return Ok(HandedBack::NotHeld);
        }
        if marked > 0 {
            return Ok(HandedBack::Waiting);
        }
        let Some(Locked {
            mut record,
            cancel_requested,
        }) = record::lock(&mut *tx, app, uuid)
            .await
            .map_err(|e| failure(what(), e))?
        else {
            return Ok(HandedBack::Waiting);
        };
        let now = unix_now();
        let (ttl, handed_back) = match cancel_requested {
            Some(reason) => {
                sqlx::query("DELETE FROM queue WHERE app = $1 AND uuid = $2")
                    .bind(app)
                    .bind(uuid)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| failure(what(), e))?;
                RecordChange::Finished(Outcome::Cancel(reason), delivery.run.clone())
                    .apply_to(&mut record, now);
                let ttl = delivery.run.result_ttl.or(self.app.options.result_ttl);
                (ttl, HandedBack::Cancelled)
            }
            None => {
                record.status = TaskStatus::New;
                record.hand_backs += u32::from(matches!(how, HandBack::Defer(_)));
                (None, HandedBack::Waiting)
            }
        };
        record.updated_at = now;
        write_record(&mut *tx, app, &record, Purge::After(ttl)).await?;
        Ok(handed_back)
    }

    /// The rate's decision for a delivery, in one statement (`admit_rate` of the migrations):
    /// it starts, or it is handed back until its turn. A cancel asked while it was held is
    /// left to `hand_back_in` (`Cancel`).
    async fn rate_answer(
        &self,
        conn: &mut PgConnection,
        delivery: &Delivery,
        limits: &TaskLimits,
        token: Uuid,
        interval: Duration,
    ) -> Result<RateAnswer, BackendError> {
        let uuid = delivery.task.uuid;
        let row = sqlx::query("SELECT answer, wait FROM admit_rate($1, $2, $3, $4, $5, $6)")
            .bind(&self.app.name)
            .bind(&limits.rate_key)
            .bind(uuid)
            .bind(token)
            .bind(interval.as_secs_f64())
            .bind(qtasks_core::limits::RESERVATION_SLACK)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| failure(format!("deciding whether task {uuid} may start failed"), e))?;
        let answer: String = row.try_get(0).unwrap_or_default();
        let wait = row
            .try_get::<Option<f64>, _>(1)
            .unwrap_or(None)
            .map(|secs| Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX));
        Ok(match (answer.as_str(), wait) {
            ("run", _) => RateAnswer::Run,
            ("wait", Some(wait)) => RateAnswer::Waits(wait),
            ("cancel", Some(wait)) => RateAnswer::Cancel(wait),
            _ => RateAnswer::Lost,
        })
    }

    /// Locks the running slots of task `task_name` until the transaction ends: admits and
    /// leaves of one task go one at a time.
    async fn lock_slots(
        tx: &mut PgConnection,
        app: &str,
        task_name: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('qtasks slots ' || $1 || ' ' || $2))")
            .bind(app)
            .bind(task_name)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// The decision of [`Broker::admit`], in `tx`.
    async fn admit_in(
        &self,
        tx: &mut PgConnection,
        delivery: &Delivery,
        limits: &TaskLimits,
        token: Uuid,
    ) -> Result<Admission, BackendError> {
        let app = &self.app.name;
        let uuid = delivery.task.uuid;
        let what = || format!("deciding whether task {uuid} may start failed");
        let held = record::holds(tx, app, uuid, token, true)
            .await
            .map_err(|e| failure(what(), e))?;
        if !held {
            return Ok(Admission::Lost);
        }
        let parked = |handed: HandedBack, admission: Admission| match handed {
            HandedBack::Cancelled => Admission::Cancelled,
            HandedBack::NotHeld => Admission::Lost,
            HandedBack::Waiting => admission,
        };
        if let Some(max) = limits.max_running {
            Self::lock_slots(tx, app, &limits.task_name)
                .await
                .map_err(|e| failure(what(), e))?;
            // Slots whose delivery no longer holds its lease (its worker died) count for
            // nothing: they free themselves.
            let row = sqlx::query(
                "SELECT count(*) FILTER (WHERE q.token IS NOT NULL),
                        bool_or(s.token = $3)
                 FROM running_slots s
                 LEFT JOIN queue q ON q.app = s.app AND q.token = s.token AND q.state = 'r'
                 WHERE s.app = $1 AND s.task_name = $2",
            )
            .bind(app)
            .bind(&limits.task_name)
            .bind(token)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| failure(what(), e))?;
            let running: i64 = row.try_get(0).unwrap_or(0);
            let holds: bool = row
                .try_get::<Option<bool>, _>(1)
                .unwrap_or(None)
                .unwrap_or(false);
            if !holds && running >= i64::from(max) {
                // A turn its rate gave it is given up: woken later, it takes a new one.
                sqlx::query(
                    "DELETE FROM rate_turns WHERE app = $1 AND rate_key = $2 AND uuid = $3",
                )
                .bind(app)
                .bind(&limits.rate_key)
                .bind(uuid)
                .execute(&mut *tx)
                .await
                .map_err(|e| failure(what(), e))?;
                let handed = self
                    .hand_back_in(tx, delivery, HandBack::Park(limits.task_name.clone()))
                    .await?;
                return Ok(parked(handed, Admission::Parked));
            }
        }
        if let Some(rate) = limits.rate {
            match self
                .rate_answer(tx, delivery, limits, token, rate.interval())
                .await?
            {
                RateAnswer::Run => {}
                RateAnswer::Waits(wait) => return Ok(Admission::Postponed { wait }),
                RateAnswer::Lost => return Ok(Admission::Lost),
                RateAnswer::Cancel(wait) => {
                    let handed = self
                        .hand_back_in(tx, delivery, HandBack::Postpone(wait))
                        .await?;
                    return Ok(parked(handed, Admission::Postponed { wait }));
                }
            }
        }
        if limits.max_running.is_some() {
            sqlx::query(
                "INSERT INTO running_slots (app, task_name, token) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(app)
            .bind(&limits.task_name)
            .bind(token)
            .execute(&mut *tx)
            .await
            .map_err(|e| failure(what(), e))?;
        }
        Ok(Admission::Run)
    }
}

/// The error of a call whose batch failed without an answer (it panicked, or the engine is
/// shutting down).
fn batch_failed() -> sqlx::Error {
    sqlx::Error::Protocol(
        "the batch this call was in failed without an answer (see the log)".to_owned(),
    )
}

/// A finish waiting for its batch.
pub(crate) struct Finishing {
    delivery: Delivery,
    outcome: Outcome,
}

/// What a batch answers each finish: what storing it found, or the batch's failure.
type Stored = Result<Written, Arc<sqlx::Error>>;

/// Stores the outcomes of a batch of deliveries in one transaction (see [`finish_batch_in`]).
async fn finish_batch(app: &App, items: Vec<Finishing>) -> Vec<Stored> {
    match finish_batch_in(app, &items).await {
        Ok(written) => written.into_iter().map(Ok).collect(),
        // One bad item must not fail the others: each goes alone.
        Err(error) if items.len() > 1 && !is_transient(&error) => {
            let mut answers = Vec::with_capacity(items.len());
            for item in items.chunks(1) {
                answers.push(match finish_batch_in(app, item).await {
                    Ok(mut written) => Ok(written.remove(0)),
                    Err(error) => Err(Arc::new(error)),
                });
            }
            answers
        }
        Err(error) => {
            let error = Arc::new(error);
            items.iter().map(|_| Err(Arc::clone(&error))).collect()
        }
    }
}

/// Stores the outcomes of a batch of deliveries, each fenced by its token, in one
/// transaction of a few statements whatever the batch's size: the queue rows of the deliveries
/// that still hold their lease deleted, their records locked and written back, retries'
/// next attempts added, live items dropped. A delivery whose lease is another's writes nothing
/// (refused); one that stored its outcome before (a lost reply) answers as it did.
async fn finish_batch_in(app: &App, items: &[Finishing]) -> Result<Vec<Written>, sqlx::Error> {
    let name = &app.name;
    let uuids: Vec<Uuid> = items.iter().map(|item| item.delivery.task.uuid).collect();
    let tokens: Vec<Option<Uuid>> = items
        .iter()
        .map(|item| Uuid::parse_str(&item.delivery.receipt).ok())
        .collect();
    // Rows locked in one order (by uuid), as the renewer locks them: the two never wait on
    // each other in turn. Each row is found by its token, one at a time in the list's order
    // (a lateral lookup that no filter is pushed into, so the unique token index is the only
    // way in), and deleted by token: no step joins the batch to the app's rows, which the
    // planner may do by reading all of them once per row of the batch when the queue's
    // statistics are behind (5 million rows compared for a batch of 256, 0.7 s).
    let mut by_uuid: Vec<(Uuid, Option<Uuid>)> =
        uuids.iter().copied().zip(tokens.iter().copied()).collect();
    by_uuid.sort_unstable();
    let (sorted_uuids, sorted_tokens): (Vec<Uuid>, Vec<Option<Uuid>>) = by_uuid.into_iter().unzip();
    let mut tx = app.pool().begin().await?;
    let fenced: std::collections::HashSet<Uuid> = sqlx::query_scalar(
        "WITH held AS (
             SELECT q.token FROM unnest($2::uuid[], $3::uuid[]) AS f(uuid, token)
             CROSS JOIN LATERAL (
                 SELECT app, uuid, token, state FROM queue WHERE token = f.token
                 OFFSET 0 FOR UPDATE) q
             WHERE q.app = $1 AND q.uuid = f.uuid AND q.state = 'r')
         DELETE FROM queue WHERE token = ANY(ARRAY(SELECT token FROM held))
         RETURNING token",
    )
    .bind(name)
    .bind(&sorted_uuids)
    .bind(&sorted_tokens)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    // The records this batch writes are locked, in one order (by uuid); the others (stale or
    // replayed deliveries) are only read.
    let mut to_write = Vec::new();
    let mut to_read = Vec::new();
    for (item, token) in items.iter().zip(&tokens) {
        let uuid = item.delivery.task.uuid;
        if token.is_some_and(|token| fenced.contains(&token)) {
            to_write.push(uuid);
        } else {
            to_read.push(uuid);
        }
    }
    to_read.retain(|uuid| !to_write.contains(uuid));
    to_write.sort_unstable();
    to_write.dedup();
    // Looked up one by one by key, in the list's order (a lateral lookup), as the queue rows.
    let mut rows = sqlx::query(
        "SELECT r.* FROM unnest($2::uuid[]) AS f(uuid)
         CROSS JOIN LATERAL (
             SELECT uuid, task_name, status, doc, updated_at, cancel_requested, finished_by
             FROM records WHERE app = $1 AND uuid = f.uuid FOR UPDATE) r",
    )
    .bind(name)
    .bind(&to_write)
    .fetch_all(&mut *tx)
    .await?;
    if !to_read.is_empty() {
        rows.extend(
            sqlx::query(
                "SELECT uuid, task_name, status, doc, updated_at, cancel_requested, finished_by
                 FROM records WHERE app = $1 AND uuid = ANY($2)",
            )
            .bind(name)
            .bind(&to_read)
            .fetch_all(&mut *tx)
            .await?,
        );
    }
    let mut found: HashMap<Uuid, (TaskRecord, Option<String>, Option<Uuid>)> = rows
        .iter()
        .map(|row| {
            let record = record::read(row);
            let cancel_requested = row.try_get("cancel_requested").unwrap_or(None);
            let finished_by = row.try_get("finished_by").unwrap_or(None);
            (record.uuid, (record, cancel_requested, finished_by))
        })
        .collect();
    let now = unix_now();
    let mut written = Vec::with_capacity(items.len());
    let mut updates = Updates::default();
    let mut children = Vec::new();
    let mut items_dropped = Vec::new();
    // A delivery given twice in one batch (a caller that tried again while its first try
    // still waited) answers twice alike.
    let mut answered: HashMap<Uuid, Written> = HashMap::new();
    for (item, token) in items.iter().zip(&tokens) {
        let uuid = item.delivery.task.uuid;
        let Some(token) = *token else {
            written.push(Written::Refused);
            continue;
        };
        if let Some(answer) = answered.get(&token) {
            written.push(answer.clone());
            continue;
        }
        if !fenced.contains(&token) {
            written.push(match found.get(&uuid) {
                Some((record, _, finished_by)) if *finished_by == Some(token) => {
                    if record.status == TaskStatus::Cancel
                        && !matches!(item.outcome, Outcome::Cancel(_))
                    {
                        Written::Cancelled(record.cancel_reason.clone().unwrap_or_default())
                    } else {
                        Written::Replayed
                    }
                }
                _ => Written::Refused,
            });
            continue;
        }
        let Some((mut record, cancel_requested, _)) = found.remove(&uuid) else {
            written.push(Written::Gone);
            continue;
        };
        let (outcome, cancelled) = match cancel_requested {
            Some(reason) => (Outcome::Cancel(reason.clone()), Some(reason)),
            None => (item.outcome.clone(), None),
        };
        RecordChange::Finished(outcome.clone(), item.delivery.run.clone())
            .apply_to(&mut record, now);
        record.updated_at = now;
        let ttl = item.delivery.run.result_ttl.or(app.options.result_ttl);
        updates.push(&record, token, ttl)?;
        if let (Outcome::Retry { child, .. }, None) = (outcome, &cancelled) {
            children.push(child);
        }
        let delivery = &item.delivery;
        if delivery.run.streamed || delivery.recovered || delivery.deliveries > 1 {
            items_dropped.push(uuid);
        }
        let answer = match cancelled {
            Some(reason) => Written::Cancelled(reason),
            None => Written::Stored,
        };
        answered.insert(token, answer.clone());
        written.push(answer);
    }
    if !updates.uuids.is_empty() {
        sqlx::query(
            "UPDATE records r SET status = u.status, doc = u.doc, updated_at = u.updated_at,
                 finished_by = u.token, cancel_requested = NULL,
                 purge_at = clock_timestamp() + make_interval(secs => u.ttl)
             FROM unnest($2::uuid[], $3::text[], $4::text[], $5::float8[], $6::uuid[], $7::float8[])
                  AS u(uuid, status, doc, updated_at, token, ttl)
             WHERE r.app = $1 AND r.uuid = u.uuid",
        )
        .bind(name)
        .bind(&updates.uuids)
        .bind(&updates.statuses)
        .bind(&updates.docs)
        .bind(&updates.times)
        .bind(&updates.tokens)
        .bind(&updates.ttls)
        .execute(&mut *tx)
        .await?;
    }
    for child in children {
        insert_task(&mut tx, &app.shared.statements, name, &child).await?;
    }
    if !items_dropped.is_empty() {
        sqlx::query("DELETE FROM items WHERE app = $1 AND uuid = ANY($2)")
            .bind(name)
            .bind(&items_dropped)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(written)
}

/// The records a finish batch writes back, as the columns of one `UPDATE ... FROM unnest`.
#[derive(Default)]
struct Updates {
    uuids: Vec<Uuid>,
    statuses: Vec<&'static str>,
    docs: Vec<String>,
    times: Vec<f64>,
    tokens: Vec<Uuid>,
    ttls: Vec<Option<f64>>,
}

impl Updates {
    fn push(
        &mut self,
        record: &TaskRecord,
        token: Uuid,
        ttl: Option<Duration>,
    ) -> Result<(), sqlx::Error> {
        let doc = record::encode(record).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        self.uuids.push(record.uuid);
        self.statuses.push(record.status.as_str());
        self.docs.push(doc);
        self.times.push(record.updated_at);
        self.tokens.push(token);
        self.ttls.push(ttl.map(secs));
        Ok(())
    }
}

/// Adds a batch of tasks in one statement (see [`ADD_BATCH`]); each answers alike.
async fn add_batch(app: &App, tasks: Vec<QueuedTask>) -> Vec<Result<(), Arc<sqlx::Error>>> {
    let count = tasks.len();
    match add_batch_in(app, &tasks).await {
        Ok(()) => (0..count).map(|_| Ok(())).collect(),
        // One bad task must not fail the others: each goes alone.
        Err(error) if count > 1 && !is_transient(&error) => {
            let mut answers = Vec::with_capacity(count);
            for task in tasks.chunks(1) {
                answers.push(add_batch_in(app, task).await.map_err(Arc::new));
            }
            answers
        }
        Err(error) => {
            let error = Arc::new(error);
            (0..count).map(|_| Err(Arc::clone(&error))).collect()
        }
    }
}

async fn add_batch_in(app: &App, tasks: &[QueuedTask]) -> Result<(), sqlx::Error> {
    let now = unix_now();
    let mut uuids = Vec::with_capacity(tasks.len());
    let mut names = Vec::with_capacity(tasks.len());
    let mut created_ms = Vec::with_capacity(tasks.len());
    let mut times = Vec::with_capacity(tasks.len());
    let mut docs = Vec::with_capacity(tasks.len());
    let mut queues = Vec::with_capacity(tasks.len());
    let mut priorities = Vec::with_capacity(tasks.len());
    let mut delays = Vec::with_capacity(tasks.len());
    let mut created_at = Vec::with_capacity(tasks.len());
    for task in tasks {
        let record = TaskRecord::new(task);
        docs.push(record::encode(&record).map_err(|e| sqlx::Error::Encode(Box::new(e)))?);
        uuids.push(task.uuid);
        names.push(task.task_name.as_str());
        created_ms.push(i64::try_from(secs_to_ms(task.created_at)).unwrap_or(i64::MAX));
        times.push(record.updated_at);
        queues.push(task.queue.as_deref().unwrap_or(DEFAULT_QUEUE));
        priorities.push(task.priority);
        delays.push(delay_of(task, now));
        created_at.push(task.created_at);
    }
    sqlx::query(ADD_BATCH)
        .bind(&app.name)
        .bind(&uuids)
        .bind(&names)
        .bind(&created_ms)
        .bind(&times)
        .bind(&docs)
        .bind(&queues)
        .bind(&priorities)
        .bind(&delays)
        .bind(&created_at)
        .execute(app.pool())
        .await?;
    Ok(())
}

/// How long a task waits before it may run (its `run_at` from now), if at all.
fn delay_of(task: &QueuedTask, now: f64) -> Option<f64> {
    task.run_at
        .map(|run_at| run_at - now)
        .filter(|delay| *delay > 0.0)
        .map(|delay| delay.min(1e9))
}

/// The add of many tasks in one statement: their records and queue rows, nothing for a uuid
/// known already (or given twice), queued in the order given.
const ADD_BATCH: &str = "
WITH input AS (
    SELECT DISTINCT ON (t.uuid) t.*
    FROM unnest($2::uuid[], $3::text[], $4::bigint[], $5::float8[], $6::text[], $7::text[],
                $8::bigint[], $9::float8[], $10::float8[])
         WITH ORDINALITY AS t(uuid, task_name, created_ms, updated_at, doc, queue, priority, delay,
                              created_at, ord)
    ORDER BY t.uuid, t.ord
),
added AS (
    INSERT INTO records (app, uuid, status, task_name, created_ms, updated_at, doc)
    SELECT $1, uuid, 'new', task_name, created_ms, updated_at, doc FROM input
    ON CONFLICT (app, uuid) DO NOTHING
    RETURNING uuid
)
INSERT INTO queue (app, uuid, queue, priority, state, due_at, created_at)
SELECT $1, i.uuid, i.queue, i.priority,
       CASE WHEN i.delay IS NULL THEN 'w' ELSE 'd' END,
       CASE WHEN i.delay IS NULL THEN NULL ELSE clock_timestamp() + make_interval(secs => i.delay) END,
       i.created_at
FROM input i JOIN added a ON a.uuid = i.uuid
ORDER BY i.ord";

/// Moves the app's stat deltas into the totals.
async fn fold_stats(app: &App, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(FOLD_STATS)
        .bind(&app.name)
        .bind(i64::try_from(unix_now() as u64).unwrap_or(i64::MAX) - 120)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes what has expired (records past their retention, claims, workers, workflows, keys)
/// and folds the stats, so the deltas stay few when nobody reads them. Each statement gives up
/// after 5 s: the next round goes on.
async fn maintain(app: &App) -> Result<(), sqlx::Error> {
    let mut tx = app.pool().begin().await?;
    sqlx::query("SET LOCAL statement_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(MAINTAIN)
        .bind(&app.name)
        .execute(&mut *tx)
        .await?;
    fold_stats(app, &mut tx).await?;
    tx.commit().await
}

/// Analyzes the engine's tables whose statistics say they are (nearly) empty while they hold
/// at least 1,000 rows.
///
/// The queue table is empty whenever the workers keep up, and an autovacuum that finds it
/// so records zero rows on its pages. The planner then sizes the table by that density: as
/// empty, however many rows a burst adds, until the next autovacuum analyzes it (a minute or
/// more). Every plan then looks as cheap as every other, and a take may sort the whole backlog
/// to pick its rows (with 512 slots, a burst of 20,000 tasks drained at 465 tasks/s before
/// the statements were made to hold without statistics, and at 12,000 after, against 17,500
/// once analyzed). The live row counts PostgreSQL keeps per table
/// tell it without reading the table; from PostgreSQL 15 on, the writing sessions flush them
/// within about a second while they are busy and ten seconds after they go idle (before 15 an
/// idle session may keep them until its next transaction, and autovacuum is the fallback).
///
/// Only tables the connection's role owns are analyzed (others are left to autovacuum), and
/// not within 3 s of their last ANALYZE by anyone (the counters may still be catching up with
/// a table that was emptied). An ANALYZE that would wait for a lock (a vacuum running) gives up
/// after 100 ms, rather than hold the maintenance up or cancel that vacuum; the next check,
/// 2 s later, tries again.
///
/// The first check of a worker counts the rows itself (up to 1,000 of them) when the
/// statistics say a table is empty: a worker started for a backlog just added may be ahead
/// of the counters.
async fn refresh_statistics(app: &App, first_check: &mut bool) -> Result<(), sqlx::Error> {
    let check = if *first_check {
        STALE_TABLES_COUNTED
    } else {
        STALE_TABLES
    };
    let stale: Vec<String> = sqlx::query_scalar(check).fetch_all(app.pool()).await?;
    *first_check = false;
    for table in stale {
        let analyze = match table.as_str() {
            "queue" => "ANALYZE queue",
            "records" => "ANALYZE records",
            _ => continue,
        };
        tracing::debug!(table = %table, "the planner's statistics say the table is empty; analyzing");
        let mut tx = app.pool().begin().await?;
        sqlx::query("SET LOCAL lock_timeout = '100ms'")
            .execute(&mut *tx)
            .await?;
        match sqlx::query(analyze).execute(&mut *tx).await {
            Ok(_) => tx.commit().await?,
            // 55P03: the lock was not granted in time (the transaction rolls back as it drops).
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {}
            // The other table may still be analyzed.
            Err(error) => tracing::warn!(
                "analyzing table `{table}` of app `{}` failed: {}",
                app.name,
                ErrorChain(&error)
            ),
        }
    }
    Ok(())
}

/// The engine's tables (of the connection's schema, owned by its role, not analyzed in the
/// last 3 s) whose statistics give them under 250 rows while they hold at least 1,000 live ones.
const STALE_TABLES: &str = "
SELECT c.relname::text FROM pg_class c
WHERE c.oid IN ('queue'::regclass, 'records'::regclass)
  AND c.reltuples < 250
  AND pg_stat_get_live_tuples(c.oid) >= 1000
  AND pg_has_role(c.relowner, 'USAGE')
  AND coalesce(greatest(pg_stat_get_last_analyze_time(c.oid),
                        pg_stat_get_last_autoanalyze_time(c.oid)), '-infinity')
      < now() - interval '3 seconds'";

/// As [`STALE_TABLES`], counting the rows of a table whose statistics give it none (up to
/// 1,000: a heap of at most a few thousand pages is read, once per worker).
const STALE_TABLES_COUNTED: &str = "
SELECT c.relname::text FROM pg_class c
WHERE c.oid IN ('queue'::regclass, 'records'::regclass)
  AND c.reltuples < 250
  AND pg_has_role(c.relowner, 'USAGE')
  AND (pg_stat_get_live_tuples(c.oid) >= 1000
       OR (c.reltuples < 1 AND c.relpages BETWEEN 1 AND 5000
           AND CASE c.relname
                 WHEN 'queue' THEN (SELECT count(*) FROM (SELECT 1 FROM queue LIMIT 1000) AS q)
                 ELSE (SELECT count(*) FROM (SELECT 1 FROM records LIMIT 1000) AS r)
               END >= 1000))";

/// How a delivery is handed back.
enum HandBack {
    /// Waiting again at once, as a delivery whose worker stopped (`release`).
    Release,
    /// Waiting this long, one more hand-back counted (`defer`).
    Defer(Duration),
    /// Waiting this long for its rate's turn.
    Postpone(Duration),
    /// Waiting for a running slot of this task (or [`PARKED_RECHECK`](qtasks_core::limits::PARKED_RECHECK)).
    Park(String),
}

/// What a rate said of a delivery.
enum RateAnswer {
    /// It starts now.
    Run,
    /// It was handed back until its turn, this far away.
    Waits(Duration),
    /// Its turn is this far away, and a cancel was asked while it was held: not handed back.
    Cancel(Duration),
    /// The delivery no longer holds its task.
    Lost,
}

/// What a hand-back did.
#[derive(Clone, Copy)]
enum HandedBack {
    /// The task waits again.
    Waiting,
    /// A cancel asked while it was held ended it.
    Cancelled,
    /// The delivery did not hold its task any more: nothing was done.
    NotHeld,
}

/// What storing an outcome found.
#[derive(Clone)]
enum Written {
    Stored,
    /// Stored before, by this delivery: a reply that was lost.
    Replayed,
    /// A cancel asked while the task ran won.
    Cancelled(String),
    /// The delivery's lease is another's.
    Refused,
    /// The record was deleted meanwhile (a flush).
    Gone,
}

/// Why a taken row does not run.
enum SetAside {
    /// It ended already (cancelled or changed by hand while it waited): the row just goes.
    Ended,
    /// A cancel was asked of a run whose worker died: it ends `cancel` with this reason.
    Cancelled(String),
    /// Its record is missing or cannot be read: set aside with this reason.
    Dead(String),
}

/// A row a take leased, with its record when it was there.
struct Leased {
    uuid: Uuid,
    token: Uuid,
    recovered: bool,
    deliveries: i32,
    priority: i64,
    seq: i64,
    record: Option<TaskRecord>,
    cancel_requested: Option<String>,
}

impl Leased {
    fn read(row: &PgRow) -> Option<Self> {
        let uuid: Uuid = row.try_get("uuid").ok()?;
        let doc: Option<String> = row.try_get("doc").ok()?;
        let record = doc.map(|doc| {
            let task_name: String = row.try_get("task_name").unwrap_or_default();
            let status: String = row.try_get("status").unwrap_or_default();
            let mut record = record::decode(uuid, &task_name, &status, &doc);
            if let Ok(updated_at) = row.try_get::<f64, _>("updated_at") {
                record.updated_at = updated_at;
            }
            record
        });
        Some(Leased {
            uuid,
            token: row.try_get("token").ok()?,
            recovered: row.try_get("recovered").unwrap_or(false),
            deliveries: row.try_get("deliveries").unwrap_or(1),
            priority: row.try_get("priority").unwrap_or(0),
            seq: row.try_get("seq").unwrap_or(0),
            record,
            cancel_requested: row.try_get("cancel_requested").unwrap_or(None),
        })
    }

    fn delivery(&self) -> Result<Delivery, SetAside> {
        let Some(record) = &self.record else {
            return Err(SetAside::Dead(format!(
                "UnknownTask: the queue entry of task {} has no record (or it ended already)",
                self.uuid
            )));
        };
        if !record.unreadable.is_empty() {
            let fields: Vec<&str> = record.unreadable.keys().map(String::as_str).collect();
            return Err(SetAside::Dead(format!(
                "UndecodableRecord: the record of task {} cannot be read ({})",
                self.uuid,
                fields.join(", ")
            )));
        }
        if record.status.is_final() {
            return Err(SetAside::Ended);
        }
        if let Some(reason) = &self.cancel_requested {
            return Err(SetAside::Cancelled(reason.clone()));
        }
        let task = QueuedTask::from_record(record.clone());
        Ok(Delivery::new(task, self.token.simple().to_string())
            .recovered(self.recovered)
            .deliveries(u32::try_from(self.deliveries).unwrap_or(1)))
    }
}

/// Adds a task (its record and its queue row) unless its uuid is known: `true` when added.
pub(crate) async fn insert_task(
    conn: &mut PgConnection,
    sql: &crate::unique::Statements,
    app: &str,
    task: &QueuedTask,
) -> Result<bool, sqlx::Error> {
    insert_task_with(sqlx::AssertSqlSafe(Arc::clone(&sql.add)), conn, app, task).await
}

/// [`insert_task`] with the add statement `sql`.
pub(crate) async fn insert_task_with(
    sql: impl sqlx::SqlSafeStr,
    conn: &mut PgConnection,
    app: &str,
    task: &QueuedTask,
) -> Result<bool, sqlx::Error> {
    let record = TaskRecord::new(task);
    let doc = record::encode(&record).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let delay = delay_of(task, unix_now());
    let added = sqlx::query(sql)
        .bind(app)
        .bind(task.uuid)
        .bind(&task.task_name)
        .bind(i64::try_from(secs_to_ms(task.created_at)).unwrap_or(i64::MAX))
        .bind(record.updated_at)
        .bind(doc)
        .bind(task.queue.as_deref().unwrap_or(DEFAULT_QUEUE))
        .bind(task.priority)
        .bind(delay)
        .bind(task.created_at)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(added.is_some())
}

async fn commit(tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Result<(), BackendError> {
    tx.commit()
        .await
        .map_err(|e| failure("committing a transaction failed", e))
}

/// The record and the queue row of a new task, in one statement; nothing when the uuid is
/// known. A task due later waits in state `d`.
pub(crate) const ADD: &str = "
WITH added AS (
    INSERT INTO {s}records (app, uuid, status, task_name, created_ms, updated_at, doc)
    VALUES ($1, $2, 'new', $3, $4, $5, $6)
    ON CONFLICT (app, uuid) DO NOTHING
    RETURNING uuid
)
INSERT INTO {s}queue (app, uuid, queue, priority, state, due_at, created_at)
SELECT $1, uuid, $7, $8,
       CASE WHEN $9::float8 IS NULL THEN 'w' ELSE 'd' END,
       CASE WHEN $9::float8 IS NULL THEN NULL ELSE clock_timestamp() + make_interval(secs => $9) END,
       $10
FROM added
RETURNING uuid";

/// Hands a delivery back (see `PgBroker::hand_back_in`): its queue row, fenced by the token,
/// waits again (`$4` seconds later, parked for task `$5`), and with `$6` its record is `new`
/// again unless a cancel was asked meanwhile. Answers how many rows of each moved.
const HAND_BACK: &str = "
WITH moved AS (
    UPDATE queue SET token = NULL, lease_until = NULL,
        deliveries = greatest(deliveries - 1, 0),
        state = CASE WHEN $4::float8 IS NULL THEN 'w' ELSE 'd' END,
        due_at = CASE WHEN $4::float8 IS NULL THEN NULL
                      ELSE clock_timestamp() + make_interval(secs => $4) END,
        recovered = recovered OR $4::float8 IS NULL,
        parked_for = $5
    WHERE app = $1 AND uuid = $2 AND token = $3 AND state = 'r'
    RETURNING uuid
),
marked AS (
    UPDATE records SET status = 'new', updated_at = extract(epoch FROM clock_timestamp())
    WHERE app = $1 AND uuid IN (SELECT uuid FROM moved) AND $6 AND cancel_requested IS NULL
    RETURNING uuid
)
SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM marked)";

/// Before a take: leases that ran out go back to waiting (at their old place), delayed tasks
/// that are due wait now (each row updated where the locking pick found it, as in [`LEASE`]);
/// answers the paused queues and, in seconds, when the next delayed
/// task of the served queues is due or the next lease runs out.
const PREPARE_TAKE: &str = "
WITH paused AS (SELECT queue FROM paused WHERE app = $1),
reclaimed AS (
    UPDATE queue SET state = 'w', token = NULL, lease_until = NULL, recovered = true
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM queue WHERE app = $1 AND state = 'r' AND lease_until < (SELECT clock_timestamp())
        ORDER BY lease_until LIMIT 100 FOR UPDATE SKIP LOCKED))
    RETURNING 1
),
promoted AS (
    UPDATE queue SET state = 'w', due_at = NULL, parked_for = NULL, seq = nextval('arrival')
    WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM queue WHERE app = $1 AND state = 'd' AND due_at <= (SELECT clock_timestamp())
          AND queue = ANY($2) AND queue NOT IN (SELECT queue FROM paused)
        ORDER BY due_at LIMIT 1000 FOR UPDATE SKIP LOCKED))
    RETURNING 1
)
SELECT ARRAY(SELECT queue FROM paused),
       extract(epoch FROM least(
           (SELECT min(due_at) FROM queue WHERE app = $1 AND state = 'd' AND queue = ANY($2)
              AND queue NOT IN (SELECT queue FROM paused)),
           (SELECT min(lease_until) FROM queue WHERE app = $1 AND state = 'r')
       ) - clock_timestamp())::float8,
       (SELECT count(*) FROM reclaimed) + (SELECT count(*) FROM promoted)";

/// Leases up to `$3` waiting tasks of queue `$2`, lowest priority number first then FIFO,
/// skipping rows another take holds, and marks their records `process`: one statement. A
/// leased row without a record to mark comes back with NULL record columns (set aside).
///
/// No step joins one CTE to another or to the whole queue: a CTE has no index, and the plan
/// is made for a guess of one row, so such a join can run as a nested loop whose cost grows
/// with the square of the batch (256 rows: 13 ms, against 4 ms for the rest), or with the
/// backlog times the batch when the queue's statistics say it is empty (1.6 s a take with
/// 20,000 waiting). The picked rows are updated where they lie (`ctid`, locked by the pick),
/// their records by primary key, and the rows without a record found by a hashed `NOT IN`.
/// A picked row that another transaction changed after this statement began is not visible
/// to its update and stays waiting: the only such change of a waiting row (its priority)
/// announces the row's queue when it commits, so an idle take looks again.
const LEASE: &str = "
WITH picked AS MATERIALIZED (
    SELECT ctid FROM queue WHERE app = $1 AND queue = $2 AND state = 'w'
      -- Paused since the take looked: this statement's snapshot has every pause that
      -- committed before the tasks it can see were added.
      AND NOT EXISTS (SELECT 1 FROM paused WHERE app = $1 AND queue = $2)
    ORDER BY priority, seq LIMIT $3 FOR UPDATE SKIP LOCKED
),
leased AS (
    UPDATE queue q SET state = 'r', token = gen_random_uuid(),
        lease_until = clock_timestamp() + make_interval(secs => $4),
        deliveries = q.deliveries + 1
    WHERE q.ctid = ANY(ARRAY(SELECT ctid FROM picked))
    RETURNING q.uuid, q.token, q.recovered, q.deliveries, q.priority, q.seq
),
marked AS (
    UPDATE records r SET status = 'process', updated_at = extract(epoch FROM clock_timestamp())
    FROM leased WHERE r.app = $1 AND r.uuid = leased.uuid AND r.status IN ('new', 'process')
    RETURNING leased.uuid, leased.token, leased.recovered, leased.deliveries, leased.priority,
              leased.seq, r.task_name, r.status, r.doc, r.updated_at, r.cancel_requested
)
SELECT * FROM marked
UNION ALL
SELECT uuid, token, recovered, deliveries, priority, seq,
       NULL::text, NULL::text, NULL::text, NULL::float8, NULL::text
FROM leased WHERE uuid NOT IN (SELECT uuid FROM marked)";

/// Moves the stat deltas into the totals (one folder at a time per app), and merges the
/// finished counts of seconds older than `$2` into second 0.
const FOLD_STATS: &str = "
WITH lock AS (SELECT pg_advisory_xact_lock(hashtext('qtasks stats ' || $1))),
moved AS (
    DELETE FROM stat_deltas WHERE app = $1 AND (SELECT true FROM lock)
    RETURNING queue, priority, kind, sec, n
),
aged AS (
    DELETE FROM stat_totals WHERE app = $1 AND sec > 0 AND sec < $2 AND (SELECT true FROM lock)
    RETURNING queue, priority, kind, 0::bigint AS sec, n
)
INSERT INTO stat_totals (app, queue, priority, kind, sec, n)
SELECT $1, queue, priority, kind, CASE WHEN sec > 0 AND sec < $2 THEN 0 ELSE sec END, sum(n)
FROM (SELECT * FROM moved UNION ALL SELECT * FROM aged) AS d
GROUP BY 2, 3, 4, 5
ORDER BY 2, 3, 4, 5
ON CONFLICT (app, queue, priority, kind, sec) DO UPDATE SET n = stat_totals.n + excluded.n";

/// The maintenance of one app: records past their retention, expired claims, workers,
/// workflows and unique keys, the running slots of dead deliveries, rate turns an hour old;
/// at most 5,000 records a time.
const MAINTAIN: &str = "
WITH purged AS (
    DELETE FROM records WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM records WHERE app = $1 AND purge_at < (SELECT clock_timestamp())
        LIMIT 5000 FOR UPDATE SKIP LOCKED))
    RETURNING uuid
),
items AS (DELETE FROM items WHERE app = $1 AND uuid IN (SELECT uuid FROM purged) RETURNING 1),
claims AS (DELETE FROM claims WHERE app = $1 AND expires_at < (SELECT clock_timestamp()) RETURNING 1),
workers AS (DELETE FROM workers WHERE app = $1 AND expires_at < (SELECT clock_timestamp()) RETURNING 1),
flows AS (DELETE FROM workflows WHERE app = $1 AND expires_at < (SELECT clock_timestamp()) RETURNING id),
fields AS (DELETE FROM workflow_fields WHERE app = $1 AND id IN (SELECT id FROM flows) RETURNING 1),
joins AS (DELETE FROM workflow_joins WHERE app = $1 AND id IN (SELECT id FROM flows) RETURNING 1),
slots AS (
    DELETE FROM running_slots s WHERE app = $1 AND NOT EXISTS (
        SELECT 1 FROM queue q WHERE q.app = s.app AND q.token = s.token AND q.state = 'r')
    RETURNING 1),
turns AS (
    DELETE FROM rate_turns
    WHERE app = $1 AND turn < extract(epoch FROM clock_timestamp()) - 3600
    RETURNING 1),
keys AS (DELETE FROM unique_keys WHERE app = $1 AND expires_at < (SELECT clock_timestamp()) RETURNING 1)
SELECT (SELECT count(*) FROM purged), (SELECT count(*) FROM items), (SELECT count(*) FROM claims),
       (SELECT count(*) FROM workers), (SELECT count(*) FROM fields), (SELECT count(*) FROM joins)";

#[qtasks_core::async_trait]
impl qtasks_core::backend::Lifecycle for PgBroker {
    fn name(&self) -> &str {
        "PostgresBroker"
    }

    async fn start(&self) -> Result<(), BackendError> {
        let held = Arc::clone(&self.held);
        let app = Arc::clone(&self.app);
        let every = self.app.options.lease / 3;
        let lease = self.lease_secs();
        // Renewals on a task of their own, each bounded by the time to the next one: nothing
        // else (the maintenance, a slow pool) may hold them up past the lease.
        let renewer = {
            let app = Arc::clone(&app);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let tokens: Vec<Uuid> = held.lock().keys().copied().collect();
                    if tokens.is_empty() {
                        continue;
                    }
                    let renewal = renew(&app, &held, &tokens, lease);
                    if tokio::time::timeout(every, renewal).await.is_err() {
                        tracing::warn!(
                            "renewing {} task lease(s) took over {every:?}; trying again",
                            tokens.len()
                        );
                    }
                }
            })
        };
        let maintainer = tokio::spawn(async move {
            let mut last_maintained = std::time::Instant::now();
            let mut first_check = true;
            let mut statistics_failed_at = None;
            // The statistics are checked at once (a worker started for a backlog) and then
            // every few seconds; the rest every 10 s.
            loop {
                // A check that fails is not tried again before the next maintenance round:
                // one warning every 10 s, not every 2.
                let checks_due = statistics_failed_at
                    .is_none_or(|at: std::time::Instant| at.elapsed() >= MAINTENANCE_EVERY);
                if checks_due {
                    statistics_failed_at = None;
                    if let Err(error) = refresh_statistics(&app, &mut first_check).await {
                        statistics_failed_at = Some(std::time::Instant::now());
                        tracing::warn!(
                            "checking the table statistics of app `{}` failed: {}",
                            app.name,
                            ErrorChain(&error)
                        );
                    }
                }
                if last_maintained.elapsed() >= MAINTENANCE_EVERY {
                    last_maintained = std::time::Instant::now();
                    if let Err(error) = maintain(&app).await {
                        tracing::warn!(
                            "the maintenance of app `{}` failed: {}",
                            app.name,
                            ErrorChain(&error)
                        );
                    }
                }
                tokio::time::sleep(STATISTICS_CHECK_EVERY).await;
            }
        });
        let previous = std::mem::replace(&mut *self.background.lock(), vec![renewer, maintainer]);
        for task in previous {
            task.abort();
        }
        Ok(())
    }

    async fn stop(&self) -> Result<(), BackendError> {
        for task in self.background.lock().drain(..) {
            task.abort();
        }
        Ok(())
    }
}

/// Renews the leases of `tokens`; stops the runs whose lease was lost, and passes on the
/// cancels asked of held tasks (stored, so seen here even when their notification was lost).
async fn renew(app: &App, held: &Mutex<HashMap<Uuid, Uuid>>, tokens: &[Uuid], lease: f64) {
    use backon::Retryable;
    let renewed = (|| async {
        sqlx::query(
            // Rows locked in one order (by uuid), as a finish batch locks them; found and
            // updated by token (see `finish_batch_in`).
            // Tokens are unique and held only by leased rows (a check of the table), so
            // the token alone names the row.
            "WITH held AS (
                 SELECT token FROM queue WHERE token = ANY($2)
                 ORDER BY uuid FOR UPDATE)
             UPDATE queue q SET lease_until = clock_timestamp() + make_interval(secs => $1)
             FROM records r
             WHERE q.token = ANY(ARRAY(SELECT token FROM held))
               AND r.app = q.app AND r.uuid = q.uuid
             RETURNING q.token, q.uuid, r.cancel_requested",
        )
        .bind(lease)
        .bind(tokens)
        .fetch_all(app.pool())
        .await
    })
    .retry(crate::reconnect_pauses().take(6))
    .when(is_transient)
    .await;
    let rows = match renewed {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(
                "renewing {} task lease(s) failed: {}",
                tokens.len(),
                ErrorChain(&error)
            );
            return;
        }
    };
    let mut kept = std::collections::HashSet::with_capacity(rows.len());
    for row in &rows {
        let (Ok(token), Ok(uuid)) = (row.try_get::<Uuid, _>(0), row.try_get::<Uuid, _>(1)) else {
            continue;
        };
        kept.insert(token);
        if let Ok(Some(reason)) = row.try_get::<Option<String>, _>(2) {
            let _ = app.hub.cancels.send(CancelRequest::new(uuid, reason));
        }
    }
    for token in tokens {
        if kept.contains(token) {
            continue;
        }
        // Stalled past the lease: the task is another worker's now. Stop this run (only this
        // delivery's); its outcome would be refused.
        let Some(uuid) = held.lock().remove(token) else {
            continue; // finished meanwhile
        };
        tracing::warn!(uuid = %uuid, "the lease of task {uuid} was lost (this worker stalled past it); stopping this run");
        let _ = app
            .hub
            .cancels
            .send(CancelRequest::new(uuid, LEASE_LOST).for_delivery(token.simple().to_string()));
    }
}

#[qtasks_core::async_trait]
impl Broker for PgBroker {
    fn location(&self) -> Option<String> {
        Some(format!(
            "{} (schema {})",
            self.app.shared.shown_url, self.app.shared.schema
        ))
    }

    fn supports_queues(&self) -> bool {
        true
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    async fn add(&self, task: QueuedTask) -> Result<(), BackendError> {
        use backon::Retryable;
        let uuid = task.uuid;
        crate::no_nul(&format!("task {uuid}: its name"), &task.task_name)?;
        if let Some(queue) = &task.queue {
            crate::no_nul(&format!("task {uuid}: its queue"), queue)?;
        }
        (|| async {
            self.adder
                .call(task.clone())
                .await
                .unwrap_or_else(|| Err(Arc::new(batch_failed())))
        })
        .retry(crate::reconnect_pauses().take(6))
        .when(|error| is_transient(error))
        .await
        .map_err(|e| {
            BackendError::new("postgres", format!("adding task {uuid} failed")).with_source(e)
        })
    }

    /// One statement per chunk (`app.add_many` hands at most 512), with `add`'s retries: an
    /// add sent again adds nothing (a known uuid is kept), and a bad task fails alone.
    async fn add_many(&self, tasks: &[QueuedTask]) -> Result<(), BackendError> {
        use backon::Retryable;
        for task in tasks {
            let uuid = task.uuid;
            crate::no_nul(&format!("task {uuid}: its name"), &task.task_name)?;
            if let Some(queue) = &task.queue {
                crate::no_nul(&format!("task {uuid}: its queue"), queue)?;
            }
        }
        for chunk in tasks.chunks(ADD_BATCH_MAX) {
            (|| async {
                add_batch(&self.app, chunk.to_vec())
                    .await
                    .into_iter()
                    .collect::<Result<(), _>>()
            })
            .retry(crate::reconnect_pauses().take(6))
            .when(|error| is_transient(error))
            .await
            .map_err(|e| {
                BackendError::new(
                    "postgres",
                    format!(
                        "adding {} tasks (`{}`, ...) failed",
                        chunk.len(),
                        chunk[0].task_name
                    ),
                )
                .with_source(e)
            })?;
        }
        Ok(())
    }

    async fn add_unique(
        &self,
        task: QueuedTask,
        unique: &qtasks_core::unique::UniqueKey,
    ) -> Result<Option<Uuid>, BackendError> {
        use backon::Retryable;
        let uuid = task.uuid;
        (|| async {
            let mut conn = self.app.pool().acquire().await?;
            crate::unique::add_unique(&mut conn, self.statements(), &self.app.name, &task, unique)
                .await
        })
        .retry(crate::reconnect_pauses().take(6))
        .when(is_transient)
        .await
        .map_err(|e| {
            failure(
                format!(
                    "adding task {uuid} under unique key `{}` failed",
                    unique.key
                ),
                e,
            )
        })
    }

    async fn next_batch(&self, max: usize) -> Result<Vec<Delivery>, BackendError> {
        self.take(&Take::default_queue(max)).await
    }

    async fn take(&self, take: &Take<'_>) -> Result<Vec<Delivery>, BackendError> {
        let give_up = take
            .patience
            .and_then(|patience| tokio::time::Instant::now().checked_add(patience));
        loop {
            // Registered before looking: an add between the look and the wait is not missed.
            let added = self.app.hub.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            let (deliveries, next_wake) = self.take_once(take).await?;
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            let now = tokio::time::Instant::now();
            if give_up.is_some_and(|at| now >= at) {
                return Ok(Vec::new());
            }
            let wait = [
                Some(SAFETY_LOOK),
                next_wake,
                give_up.map(|at| at.saturating_duration_since(now)),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(SAFETY_LOOK);
            tokio::select! {
                () = added => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn finish(&self, delivery: &Delivery, outcome: Outcome) -> Result<(), BackendError> {
        use backon::Retryable;
        let uuid = delivery.task.uuid;
        // Kept and sent again through an outage: the write is idempotent (a reply lost after
        // the commit makes the next try answer "replayed").
        let patience = self.app.options.lease.saturating_mul(2);
        let started = tokio::time::Instant::now();
        let written = (|| async {
            let finishing = Finishing {
                delivery: delivery.clone(),
                outcome: outcome.clone(),
            };
            self.finisher
                .call(finishing)
                .await
                .unwrap_or_else(|| Err(Arc::new(batch_failed())))
        })
        .retry(crate::reconnect_pauses())
        .when(|error| is_transient(error) && started.elapsed() < patience)
            .notify(|error, pause| {
                tracing::warn!(uuid = %uuid, "storing the result failed (trying again in {pause:?}): {}", ErrorChain(error));
            })
            .await;
        self.unhold(&delivery.receipt);
        match written {
            Ok(Written::Stored | Written::Replayed) => Ok(()),
            Ok(Written::Cancelled(reason)) => Err(BackendError::cancelled("postgres", reason)),
            Ok(Written::Refused) => Err(BackendError::refused(
                "postgres",
                format!(
                    "the outcome of task {uuid} was refused: its lease is another worker's now (this worker stalled past it)"
                ),
            )),
            Ok(Written::Gone) => Err(BackendError::new(
                "postgres",
                format!("the outcome of task {uuid} was not stored: its record was deleted"),
            )),
            Err(error) => Err(BackendError::new(
                "postgres",
                format!("storing the result of task {uuid} failed"),
            )
            .with_source(error)),
        }
    }

    async fn release(&self, delivery: &Delivery) -> Result<(), BackendError> {
        self.hand_back(delivery, HandBack::Release).await
    }

    async fn defer(&self, delivery: &Delivery, delay: Duration) -> Result<(), BackendError> {
        self.hand_back(delivery, HandBack::Defer(delay)).await
    }

    async fn bury(&self, delivery: &Delivery, reason: &str) -> Result<(), BackendError> {
        self.unhold(&delivery.receipt);
        let Ok(token) = Uuid::parse_str(&delivery.receipt) else {
            return Ok(());
        };
        let app = &self.app.name;
        let uuid = delivery.task.uuid;
        let mut tx = self.begin().await?;
        let gone = sqlx::query(
            "DELETE FROM queue WHERE app = $1 AND uuid = $2 AND token = $3 AND state = 'r'
             RETURNING queue, priority",
        )
        .bind(app)
        .bind(uuid)
        .bind(token)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| failure(format!("setting task {uuid} aside failed"), e))?;
        let Some(gone) = gone else {
            return Ok(());
        };
        let queue: String = gone.try_get(0).unwrap_or_default();
        let priority: i64 = gone.try_get(1).unwrap_or_default();
        let locked = record::lock(&mut tx, app, uuid)
            .await
            .map_err(|e| failure(format!("setting task {uuid} aside failed"), e))?;
        if let Some(Locked { mut record, .. }) = locked {
            let now = unix_now();
            RecordChange::Finished(Outcome::Error(reason.to_owned()), delivery.run.clone())
                .apply_to(&mut record, now);
            record.updated_at = now;
            write_record(&mut tx, app, &record, Purge::After(None)).await?;
        }
        let entry = format!("{}:{uuid}:{priority}", delivery.task.task_name);
        self.dead_letter(&mut tx, uuid, &queue, &entry, reason)
            .await?;
        commit(tx).await
    }

    fn supports_limits(&self) -> bool {
        true
    }

    async fn admit(
        &self,
        delivery: &Delivery,
        limits: &TaskLimits,
    ) -> Result<Admission, BackendError> {
        let Ok(token) = Uuid::parse_str(&delivery.receipt) else {
            return Ok(Admission::Lost);
        };
        let admission = match (limits.rate, limits.max_running) {
            // A rate alone: one statement, its own transaction.
            (Some(rate), None) => {
                let mut conn = self
                    .app
                    .pool()
                    .acquire()
                    .await
                    .map_err(|e| failure("deciding whether a task may start failed", e))?;
                match self
                    .rate_answer(&mut conn, delivery, limits, token, rate.interval())
                    .await?
                {
                    RateAnswer::Run => Admission::Run,
                    RateAnswer::Waits(wait) => Admission::Postponed { wait },
                    RateAnswer::Lost => Admission::Lost,
                    RateAnswer::Cancel(wait) => {
                        let mut tx = self.begin().await?;
                        let handed = self
                            .hand_back_in(&mut tx, delivery, HandBack::Postpone(wait))
                            .await?;
                        commit(tx).await?;
                        match handed {
                            HandedBack::Cancelled => Admission::Cancelled,
                            HandedBack::NotHeld => Admission::Lost,
                            HandedBack::Waiting => Admission::Postponed { wait },
                        }
                    }
                }
            }
            _ => {
                let mut tx = self.begin().await?;
                let admission = self.admit_in(&mut tx, delivery, limits, token).await?;
                commit(tx).await?;
                admission
            }
        };
        if !matches!(admission, Admission::Run) {
            // Handed back (or lost): no longer this worker's to renew.
            self.unhold(&delivery.receipt);
        }
        Ok(admission)
    }

    async fn leave(&self, delivery: &Delivery, limits: &TaskLimits) -> Result<(), BackendError> {
        if limits.max_running.is_none() {
            return Ok(());
        }
        let Ok(token) = Uuid::parse_str(&delivery.receipt) else {
            return Ok(());
        };
        let app = &self.app.name;
        let what = |e| {
            failure(
                format!(
                    "giving back a running slot of `{}` failed",
                    limits.task_name
                ),
                e,
            )
        };
        let mut tx = self.begin().await?;
        Self::lock_slots(&mut tx, app, &limits.task_name)
            .await
            .map_err(what)?;
        // The slot goes, and the task parked longest for one waits again (announced by the
        // trigger: the row becomes waiting).
        sqlx::query(
            "WITH freed AS (
                 DELETE FROM running_slots WHERE app = $1 AND task_name = $2 AND token = $3
                 RETURNING 1),
             woken AS (
                 SELECT uuid FROM queue
                 WHERE app = $1 AND state = 'd' AND parked_for = $2 AND EXISTS (SELECT 1 FROM freed)
                 ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
             UPDATE queue SET state = 'w', due_at = NULL, parked_for = NULL, seq = nextval('arrival')
             WHERE app = $1 AND uuid IN (SELECT uuid FROM woken)",
        )
        .bind(app)
        .bind(&limits.task_name)
        .bind(token)
        .execute(&mut *tx)
        .await
        .map_err(what)?;
        commit(tx).await
    }

    async fn pause_queue(&self, queue: &str, paused: bool) -> Result<(), BackendError> {
        let statement = if paused {
            "INSERT INTO paused (app, queue) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        } else {
            "WITH resumed AS (DELETE FROM paused WHERE app = $1 AND queue = $2 RETURNING 1)
             SELECT pg_notify('qtasks_' || current_schema(), 'a ' || left(md5($1), 16) || ' ' || $2)"
        };
        sqlx::query(statement)
            .bind(&self.app.name)
            .bind(queue)
            .execute(self.app.pool())
            .await
            .map_err(|e| failure(format!("pausing queue `{queue}` failed"), e))?;
        Ok(())
    }

    async fn paused_queues(&self) -> Result<Vec<String>, BackendError> {
        sqlx::query_scalar("SELECT queue FROM paused WHERE app = $1 ORDER BY queue")
            .bind(&self.app.name)
            .fetch_all(self.app.pool())
            .await
            .map_err(|e| failure("reading the paused queues failed", e))
    }

    async fn flush_all(&self) -> Result<(), BackendError> {
        let mut tx = self.begin().await?;
        for statement in [
            "DELETE FROM queue WHERE app = $1",
            "DELETE FROM stat_deltas WHERE app = $1",
            "DELETE FROM stat_totals WHERE app = $1",
            "DELETE FROM dead_letters WHERE app = $1",
            "DELETE FROM paused WHERE app = $1",
            "DELETE FROM rate_limits WHERE app = $1",
            "DELETE FROM rate_turns WHERE app = $1",
            "DELETE FROM running_slots WHERE app = $1",
        ] {
            sqlx::query(statement)
                .bind(&self.app.name)
                .execute(&mut *tx)
                .await
                .map_err(|e| failure("flushing the queue failed", e))?;
        }
        commit(tx).await
    }

    async fn cancel(&self, uuid: Uuid, reason: &str) -> Result<Option<CancelState>, BackendError> {
        let app = &self.app.name;
        let what = || format!("cancelling task {uuid} failed");
        let mut tx = self.begin().await?;
        // The queue row first (the lock order): a take that holds it makes this wait, and then
        // finds it leased. A lease that ran out (its worker died or stalled) counts as waiting:
        // the task must not be taken again and run.
        // Locked whatever its state: a hand-back or a take that holds it makes this wait, and
        // what it then finds decides.
        let row: Option<(bool, bool)> = sqlx::query_as(
            "SELECT state = 'r', coalesce(lease_until < clock_timestamp(), false)
             FROM queue WHERE app = $1 AND uuid = $2 FOR UPDATE",
        )
        .bind(app)
        .bind(uuid)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| failure(what(), e))?;
        let waiting = match row {
            Some((leased, expired)) if !leased || expired => {
                sqlx::query("DELETE FROM queue WHERE app = $1 AND uuid = $2")
                    .bind(app)
                    .bind(uuid)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| failure(what(), e))?;
                Some(leased)
            }
            _ => None,
        };
        if waiting == Some(true) {
            // A stalled holder hears it and stops; its outcome would be refused anyway.
            ask_cancel(&mut *tx, app, uuid, reason)
                .await
                .map_err(|e| failure(what(), e))?;
        }
        let locked = record::lock(&mut tx, app, uuid)
            .await
            .map_err(|e| failure(what(), e))?;
        let Some(Locked { mut record, .. }) = locked else {
            commit(tx).await?;
            return Ok(Some(if waiting.is_some() {
                CancelState::Cancelled
            } else {
                CancelState::NotFound
            }));
        };
        let state = if waiting.is_some() || record.status == TaskStatus::New {
            if record.status.is_final() {
                CancelState::Ended(record.status)
            } else {
                let now = unix_now();
                RecordChange::Finished(Outcome::Cancel(reason.to_owned()), RunInfo::default())
                    .apply_to(&mut record, now);
                record.updated_at = now;
                write_record(
                    &mut tx,
                    app,
                    &record,
                    Purge::After(self.app.options.result_ttl),
                )
                .await?;
                CancelState::Cancelled
            }
        } else if record.status == TaskStatus::Process {
            ask_cancel(&mut *tx, app, uuid, reason)
                .await
                .map_err(|e| failure(what(), e))?;
            CancelState::Running
        } else {
            CancelState::Ended(record.status)
        };
        commit(tx).await?;
        Ok(Some(state))
    }

    async fn request_cancel(&self, uuid: Uuid, reason: &str) -> Result<(), BackendError> {
        ask_cancel(self.app.pool(), &self.app.name, uuid, reason)
            .await
            .map_err(|e| failure(format!("asking to cancel task {uuid} failed"), e))?;
        Ok(())
    }

    fn cancel_requests(&self) -> Option<broadcast::Receiver<CancelRequest>> {
        Some(self.app.hub.cancels.subscribe())
    }

    async fn requeue_taken(&self) -> Result<usize, BackendError> {
        let count: i64 = sqlx::query_scalar(
            "WITH reclaimed AS (
                 UPDATE queue SET state = 'w', token = NULL, lease_until = NULL, recovered = true
                 WHERE app = $1 AND state = 'r' AND lease_until < (SELECT clock_timestamp())
                 RETURNING 1)
             SELECT count(*) FROM reclaimed",
        )
        .bind(&self.app.name)
        .fetch_one(self.app.pool())
        .await
        .map_err(|e| failure("putting expired tasks back failed", e))?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    async fn stats(&self) -> Result<Option<QueueStats>, BackendError> {
        {
            let mut conn = self
                .app
                .pool()
                .acquire()
                .await
                .map_err(|e| failure("reading the stats failed", e))?;
            fold_stats(&self.app, &mut conn)
                .await
                .map_err(|e| failure("folding the stats failed", e))?;
        }
        let app = &self.app.name;
        let pool = self.app.pool();
        let what = |e| failure("reading the stats failed", e);
        let totals = sqlx::query(
            "SELECT queue, priority, kind, sec, n FROM stat_totals WHERE app = $1 AND n <> 0",
        )
        .bind(app)
        .fetch_all(pool)
        .await
        .map_err(what)?;
        let now = unix_now();
        let mut stats = QueueStats::default();
        for row in &totals {
            let queue: String = row.try_get(0).unwrap_or_default();
            let priority: i64 = row.try_get(1).unwrap_or_default();
            let kind: String = row.try_get(2).unwrap_or_default();
            let sec: i64 = row.try_get(3).unwrap_or_default();
            let n = u64::try_from(row.try_get::<i64, _>(4).unwrap_or_default()).unwrap_or(0);
            match kind.as_str() {
                "w" => {
                    *stats.waiting.entry(priority).or_default() += n;
                    stats.queues.entry(queue).or_default().waiting += n;
                }
                "d" => {
                    stats.delayed += n;
                    stats.queues.entry(queue).or_default().delayed += n;
                }
                "r" => stats.running += n,
                status => {
                    if let Ok(status) = status.parse::<TaskStatus>() {
                        stats.finished.add(status, n);
                        if sec as f64 >= now - 60.0 {
                            stats.finished_last_minute += n;
                        }
                    }
                }
            }
        }
        stats.waiting.retain(|_, n| *n > 0);
        let extra = sqlx::query(
            "SELECT ARRAY(SELECT queue FROM paused WHERE app = $1),
                    (SELECT count(*) FROM dead_letters WHERE app = $1),
                    (SELECT min(head.created_at)
                     FROM stat_totals line,
                     LATERAL (SELECT created_at FROM queue
                              WHERE app = $1 AND queue = line.queue AND priority = line.priority
                                AND state = 'w'
                              ORDER BY seq LIMIT 1) head
                     WHERE line.app = $1 AND line.kind = 'w' AND line.n > 0)",
        )
        .bind(app)
        .fetch_one(pool)
        .await
        .map_err(what)?;
        for queue in extra.try_get::<Vec<String>, _>(0).unwrap_or_default() {
            stats.queues.entry(queue).or_default().paused = true;
        }
        stats.dead_letters = u64::try_from(extra.try_get::<i64, _>(1).unwrap_or(0)).unwrap_or(0);
        stats.oldest_waiting_secs = extra
            .try_get::<Option<f64>, _>(2)
            .unwrap_or(None)
            .map(|created_at| (now - created_at).max(0.0));
        stats
            .queues
            .entry(DEFAULT_QUEUE.to_owned())
            .or_insert_with(QueueNumbers::default);
        Ok(Some(stats))
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BackendError> {
        let rows = sqlx::query(
            "SELECT id, entry, reason, at FROM dead_letters WHERE app = $1 ORDER BY id LIMIT $2",
        )
        .bind(&self.app.name)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.app.pool())
        .await
        .map_err(|e| failure("reading the dead letters failed", e))?;
        Ok(rows
            .iter()
            .map(|row| {
                DeadLetter::new(
                    row.try_get::<i64, _>(0).unwrap_or_default().to_string(),
                    row.try_get::<String, _>(1).unwrap_or_default(),
                    row.try_get::<String, _>(2).unwrap_or_default(),
                    row.try_get::<f64, _>(3).unwrap_or_default(),
                )
            })
            .collect())
    }

    async fn resolve_dead_letter(
        &self,
        letter: &DeadLetter,
        requeue: bool,
    ) -> Result<bool, BackendError> {
        let Ok(id) = letter.id.parse::<i64>() else {
            return Ok(false);
        };
        let app = &self.app.name;
        let what = || format!("resolving dead letter {} failed", letter.id);
        let mut tx = self.begin().await?;
        let taken = sqlx::query(
            "DELETE FROM dead_letters WHERE app = $1 AND id = $2 RETURNING uuid, queue",
        )
        .bind(app)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| failure(what(), e))?;
        let Some(taken) = taken else {
            return Ok(false);
        };
        let uuid: Uuid = taken.try_get(0).unwrap_or_default();
        if !requeue {
            // Its record was kept while the letter was: its retention starts now.
            sqlx::query(
                "UPDATE records SET purge_at = clock_timestamp() + make_interval(secs => $3)
                 WHERE app = $1 AND uuid = $2 AND purge_at IS NULL
                   AND status IN ('success', 'error', 'cancel', 'retry') AND $3::float8 IS NOT NULL",
            )
            .bind(app)
            .bind(uuid)
            .bind(self.app.options.result_ttl.map(secs))
            .execute(&mut *tx)
            .await
            .map_err(|e| failure(what(), e))?;
        }
        if requeue {
            let queue: String = taken.try_get(1).unwrap_or_default();
            let locked = record::lock(&mut tx, app, uuid)
                .await
                .map_err(|e| failure(what(), e))?;
            match locked {
                Some(Locked { mut record, .. }) => {
                    // Waiting again, from the start: a worker that knows it now runs it.
                    let now = unix_now();
                    RecordChange::HandedBack(0).apply_to(&mut record, now);
                    record.updated_at = now;
                    write_record(&mut tx, app, &record, Purge::After(None)).await?;
                    sqlx::query(
                        "INSERT INTO queue (app, uuid, queue, priority, state, created_at)
                         VALUES ($1, $2, $3, $4, 'w', $5) ON CONFLICT DO NOTHING",
                    )
                    .bind(app)
                    .bind(uuid)
                    .bind(queue)
                    .bind(record.priority)
                    .bind(record.created_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| failure(what(), e))?;
                }
                None => {
                    // Nothing to queue again: the letter stays, for the operator to drop.
                    return Err(BackendError::new(
                        "postgres",
                        format!(
                            "dead letter {}: the record of task {uuid} is gone, so it cannot be queued again; drop the letter instead",
                            letter.id
                        ),
                    ));
                }
            }
        }
        commit(tx).await?;
        Ok(true)
    }
}

/// Asks the workers to cancel running task `uuid` (see [`CANCEL_REQUEST`]).
async fn ask_cancel(
    conn: impl sqlx::PgExecutor<'_>,
    app: &str,
    uuid: Uuid,
    reason: &str,
) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    sqlx::query(CANCEL_REQUEST)
        .bind(app)
        .bind(uuid)
        .bind(crate::pg_text(reason))
        .execute(conn)
        .await
}

/// Keeps a cancel asked of a running task with its record (the run's finish, or a hand-back,
/// ends it `cancel`; renewals pass it on) and tells the workers.
const CANCEL_REQUEST: &str = "
WITH asked AS (
    UPDATE records SET cancel_requested = $3
    WHERE app = $1 AND uuid = $2 AND status = 'process'
    RETURNING uuid
)
SELECT pg_notify('qtasks_' || current_schema(),
                 'c ' || left(md5($1), 16) || ' ' || $2::text || ' ' || left($3, 1900))";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_use_their_parameters_in_order() {
        // A parameter PostgreSQL cannot type fails at run time only: every one of `$1..$n`
        // must appear in the text.
        for (sql, count) in [
            (ADD, 10),
            (ADD_BATCH, 10),
            (HAND_BACK, 6),
            (PREPARE_TAKE, 2),
            (LEASE, 4),
            (FOLD_STATS, 2),
        ] {
            for n in 1..=count {
                assert!(sql.contains(&format!("${n}")), "${n} missing in {sql}");
            }
            assert!(!sql.contains(&format!("${}", count + 1)));
        }
    }

    #[test]
    fn a_row_without_its_record_is_set_aside() {
        let row = Leased {
            uuid: Uuid::new_v4(),
            token: Uuid::new_v4(),
            recovered: false,
            deliveries: 1,
            priority: 0,
            seq: 0,
            record: None,
            cancel_requested: None,
        };
        assert!(matches!(row.delivery(), Err(SetAside::Dead(_))));
    }
}
