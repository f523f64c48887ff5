//! Running a task in your own tests: through the real executor, triggers, plugins and
//! middlewares, in process, without a broker or a worker.
//!
//! ```rust,standalone_crate
//! #[qtasks::task(echo = true)]
//! async fn charge(ctx: qtasks::TaskContext, cents: u64) -> qtasks::TaskResult<u64> {
//!     if cents == 0 {
//!         return Err(ctx.cancel("nothing to charge"));
//!     }
//!     Ok(cents)
//! }
//!
//! #[tokio::test]
//! async fn a_zero_charge_is_cancelled() {
//!     let app = qtasks::QueueTasks::new();
//!     let outcome = qtasks::testing::run(&app, charge::call(0)).await.unwrap();
//!     assert_eq!(outcome, qtasks::Outcome::Cancel("nothing to charge".into()));
//! }
//! # fn main() {}
//! ```

use uuid::Uuid;

use crate::backend::unix_now;
use crate::components::TaskExecutor;
use crate::panic::catch_panic;
use crate::registry::TaskTable;
use crate::{Error, Outcome, QueueTasks, QueuedTask, Result, TaskCall};

/// Runs one call to its outcome with the app's executor (or the task's own), plugins and
/// middlewares; nothing is queued or stored. Retries do not happen here: a failed run is an
/// [`Outcome::Error`].
pub async fn run<H>(app: &QueueTasks, call: TaskCall<H>) -> Result<Outcome> {
    call.check()?;
    let definition =
        match call.definition {
            Some(definition) => definition,
            None => TaskTable::global()?.get(&call.task_name).ok_or_else(|| {
                Error::InvalidArguments {
                    task: call.task_name.clone(),
                    reason: "no task has this name".to_owned(),
                }
            })?,
        };
    let task = QueuedTask {
        uuid: Uuid::new_v4(),
        task_name: call.task_name,
        priority: call
            .priority
            .or(definition.parts.priority)
            .unwrap_or(app.config().task_default_priority),
        args: call.args,
        kwargs: call.kwargs,
        created_at: unix_now(),
        retry: None,
        retry_parent_uuid: None,
        traceparent: None,
        group_uuid: None,
        run_at: None,
        expires_at: None,
        max_time: call.max_time.map(|limit| limit.as_secs_f64()),
        queue: call.queue,
        hand_backs: 0,
        rate_key: call.rate_key,
        workflow: None,
        definition: Some(definition),
    };
    let uuid = task.uuid;
    let span = tracing::info_span!("task", task = definition.parts.name, uuid = %uuid, test = true);
    let receipt = format!("direct:{uuid}");
    let cancel = app.cancels().register(uuid, &receipt);
    let run = TaskExecutor::new(
        app.clone(),
        definition,
        task,
        app.dispatch(),
        span,
        cancel,
        std::sync::Arc::from(receipt.as_str()),
    );
    let executor = definition.parts.runner.unwrap_or(&*app.components().runner);
    let outcome = catch_panic(executor.execute(&run)).await;
    app.cancels().unregister(uuid, &receipt);
    Ok(outcome.unwrap_or_else(|panic| Outcome::Error(format!("ExecutorPanic: {panic}"))))
}
