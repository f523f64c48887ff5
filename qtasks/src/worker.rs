//! The worker: takes tasks from the broker, at most `max_tasks_process` at once, and runs each
//! through the executor.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use crate::QueueTasks;
use crate::backend::Delivery;
use crate::executor::TaskExecutor;
use crate::registry::TaskTable;
use crate::task::Outcome;

/// How long the worker waits before asking a failing broker again.
const BROKER_RETRY_DELAY: Duration = Duration::from_millis(500);

/// Runs until `shutdown` turns true, then waits for the tasks it started to finish.
pub(crate) async fn run(
    app: QueueTasks,
    tasks: &'static TaskTable,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = app.config().max_tasks_process.max(1);
    let slots = Arc::new(Semaphore::new(limit));
    let broker = app.broker();
    if let Err(error) = broker.start().await {
        tracing::error!(app = app.name(), "the broker did not start: {error}");
        return;
    }
    tracing::info!(app = app.name(), concurrency = limit, "worker started");
    loop {
        // A slot first, then a task: tasks wait in the broker (where priorities apply), not
        // in the worker.
        let slot = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let next = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            next = broker.next() => next,
        };
        match next {
            Ok(Some(delivery)) => {
                let app = app.clone();
                tokio::spawn(async move {
                    run_one(app, tasks, delivery).await;
                    drop(slot);
                });
            }
            Ok(None) => break,
            Err(error) => {
                tracing::error!(
                    app = app.name(),
                    "the broker failed: {error}; asking again in {BROKER_RETRY_DELAY:?}"
                );
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    () = tokio::time::sleep(BROKER_RETRY_DELAY) => {}
                }
            }
        }
    }
    tracing::info!(
        app = app.name(),
        "worker stopping; waiting for running tasks"
    );
    let all = u32::try_from(limit).unwrap_or(u32::MAX);
    let _all_slots = slots.acquire_many(all).await;
    if let Err(error) = broker.stop().await {
        tracing::error!(app = app.name(), "the broker did not stop cleanly: {error}");
    }
    tracing::info!(app = app.name(), "worker stopped");
}

async fn run_one(app: QueueTasks, tasks: &'static TaskTable, delivery: Delivery) {
    let uuid = delivery.task.uuid;
    let broker = app.broker();
    let definition = delivery
        .task
        .definition
        .or_else(|| tasks.get(&delivery.task.task_name));
    let outcome = match definition {
        Some(definition) => {
            let span = tracing::info_span!("task", task = definition.name, uuid = %uuid);
            let dispatch = app.dispatch();
            let executor = TaskExecutor::new(app.clone(), definition, delivery.task.clone());
            executor
                .execute(&dispatch, span.clone())
                .instrument(span)
                .await
        }
        None => {
            let reason = unknown_task(&delivery.task.task_name, tasks);
            tracing::warn!(uuid = %uuid, "{reason}");
            Outcome::Error(reason)
        }
    };
    if let Err(error) = broker.finish(&delivery, outcome).await {
        tracing::error!(uuid = %uuid, "could not store the result of task {uuid}: {error}");
    }
}

fn unknown_task(name: &str, tasks: &TaskTable) -> String {
    const SHOWN: usize = 20;
    let names: Vec<&str> = tasks.names().take(SHOWN).collect();
    let more = tasks.definitions().len().saturating_sub(SHOWN);
    let mut reason = format!("UnknownTask: task `{name}` is not registered in this worker; ");
    if names.is_empty() {
        reason.push_str("no tasks are registered");
    } else {
        reason.push_str(&format!("registered tasks: {}", names.join(", ")));
        if more > 0 {
            reason.push_str(&format!(" and {more} more"));
        }
    }
    reason
}
