//! The tasks of the two-process example. Both binaries depend on this crate: the worker runs
//! the tasks, the producer adds them with their typed `add_task` (argument types checked at
//! compile time). Producer and worker must also agree on the app's name (`QTASKS_NAME`) and
//! the backend's URL (`QTASKS_URL`): the name is the key prefix on Redis.

use std::time::Duration;

use qtasks::{TaskContext, TaskResult};
use serde::{Deserialize, Serialize};

/// An order, as the shop's web app hands it over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Order {
    /// The order's number.
    pub id: u64,
    /// The items' prices, in cents.
    pub items: Vec<u64>,
}

/// Totals an order (a task's arguments and result are JSON on the queue: any serde type).
#[qtasks::task(name = "shop.total")]
pub async fn total(order: Order) -> u64 {
    tracing::info!(order = order.id, "totalling");
    order.items.iter().sum()
}

/// Sends a receipt; fails for an order without items, and is retried twice for anything else
/// that goes wrong.
#[qtasks::task(name = "shop.send_receipt", echo = true, retry = 2)]
pub async fn send_receipt(ctx: TaskContext, order: Order, email: String) -> TaskResult<String> {
    if order.items.is_empty() {
        return Err(ctx.cancel("an empty order gets no receipt"));
    }
    ctx.sleep(Duration::from_millis(50)).await; // the mail server
    Ok(format!("receipt for order {} sent to {email}", order.id))
}
