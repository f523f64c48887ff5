//! Transactional enqueue: a task added in a transaction of the caller's own exists for the
//! workers when, and only if, that transaction commits.
//!
//! The add runs the app's whole pipeline (defaults, validation, plugin triggers) and writes
//! the task's record and queue row on the caller's connection. The schema's trigger sends the
//! wake-up in the same transaction, and PostgreSQL delivers it on COMMIT (never after a
//! ROLLBACK), so an idle worker wakes when the task becomes visible.

use std::future::Future;

use sqlx::PgConnection;
use uuid::Uuid;

use qtasks_core::backend::{AddTarget, BackendError};
use qtasks_core::{AddOptions, FromTaskHandle, QueueTasks, QueuedTask, TaskCall, TaskHandle};

use crate::broker::PgBroker;
use crate::failure;

/// Adds a task call in a transaction of the caller's own (`add_in`).
///
/// ```no_run
/// use qtasks::postgres::AddInExt;
///
/// #[qtasks::task]
/// async fn charge(order_id: i64) {}
///
/// # async fn demo(app: &qtasks::QueueTasks, pool: &sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(42_i64).execute(&mut *tx).await?;
/// let handle = charge::call(42).add_in(app, &mut tx).await?;
/// tx.commit().await?; // the order and its task exist from here on, together
/// # let _ = handle; Ok(()) }
/// ```
///
/// Keep the transaction short: a worker cannot see the task until it commits, and a long
/// transaction holds back the cleanup of the queue's index for everyone. The app's
/// "after broker" plugin triggers fire before the commit. The connection must be on the app's
/// database, and the transaction must not be prepared for two-phase commit (it sent a
/// `NOTIFY`).
pub trait AddInExt<H> {
    /// Adds the call's task through `conn` (a transaction, or a plain connection: then it is
    /// committed at once): the task exists for workers only after the transaction commits,
    /// and never if it rolls back. Fails when `app` is not on PostgreSQL.
    fn add_in<'a>(
        &'a self,
        app: &'a QueueTasks,
        conn: &'a mut PgConnection,
    ) -> impl Future<Output = qtasks_core::Result<H>> + Send + 'a;
}

impl<H: FromTaskHandle + Send + Sync> AddInExt<H> for TaskCall<H> {
    async fn add_in(&self, app: &QueueTasks, conn: &mut PgConnection) -> qtasks_core::Result<H> {
        let mut target = InTransaction::of(app, conn)?;
        self.add_via(app, &mut target).await
    }
}

/// The untyped form of [`AddInExt::add_in`]: adds task `task_name` with these arguments and
/// options through `conn`, as [`QueueTasks::add_task_with`] adds through the broker.
pub async fn add_task_in(
    app: &QueueTasks,
    conn: &mut PgConnection,
    task_name: &str,
    args: impl serde::Serialize,
    kwargs: impl serde::Serialize,
    options: AddOptions,
) -> qtasks_core::Result<TaskHandle> {
    let mut target = InTransaction::of(app, conn)?;
    app.add_task_via(task_name, args, kwargs, options, &mut target)
        .await
}

/// The caller's connection, as an [`AddTarget`] of the app's schema.
struct InTransaction<'a> {
    conn: &'a mut PgConnection,
    broker: &'a PgBroker,
}

impl<'a> InTransaction<'a> {
    fn of(app: &'a QueueTasks, conn: &'a mut PgConnection) -> qtasks_core::Result<Self> {
        let broker = app.broker_as::<PgBroker>().ok_or_else(|| {
            BackendError::new(
                "postgres",
                "`add_in` adds through a PostgreSQL transaction, and this app's broker is not the PostgreSQL engine's",
            )
        })?;
        Ok(InTransaction { conn, broker })
    }
}

#[qtasks_core::async_trait]
impl AddTarget for InTransaction<'_> {
    async fn add(&mut self, task: &QueuedTask) -> Result<(), BackendError> {
        crate::broker::insert_task(
            self.conn,
            self.broker.statements(),
            self.broker.app_name(),
            task,
        )
        .await
        .map(drop)
        .map_err(|e| {
            failure(
                format!("adding task {} in the transaction failed", task.uuid),
                e,
            )
        })
    }

    async fn add_unique(
        &mut self,
        task: &QueuedTask,
        unique: &qtasks_core::unique::UniqueKey,
    ) -> Result<Option<Uuid>, BackendError> {
        crate::unique::add_unique(
            self.conn,
            self.broker.statements(),
            self.broker.app_name(),
            task,
            unique,
        )
        .await
        .map_err(|e| {
            failure(
                format!(
                    "adding task {} under unique key `{}` in the transaction failed",
                    task.uuid, unique.key
                ),
                e,
            )
        })
    }
}
