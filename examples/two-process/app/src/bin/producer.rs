//! The producer: adds an order's tasks from another process and waits for their results, as a
//! web app would.
//!
//! ```text
//! QTASKS_URL=redis://127.0.0.1:6379/0 cargo run -p shop-app --bin shop-producer
//! ```

use std::time::Duration;

use qtasks::QueueTasks;
use shop_tasks::{Order, send_receipt, total};

#[tokio::main]
async fn main() -> qtasks::Result<()> {
    // The same URL and app name as the worker's (`QTASKS_URL`, `QTASKS_NAME`), and the same
    // settings (`QTASKS_...`).
    let url = std::env::var("QTASKS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let config = qtasks::QueueConfig::from_env()?;
    let app = QueueTasks::builder()
        .config(config)
        .connect_url(&url)
        .await?
        .build();

    let order = Order {
        id: 42,
        items: vec![1250, 399],
    };
    let sum = total::add_task(&app, order.clone()).await?;
    println!("added task {} (shop.total)", sum.uuid());
    let cents: u64 = sum.result(Duration::from_secs(10)).await?;
    println!("order 42 totals {cents} cents");

    let receipt = send_receipt::add_task(&app, order, "ann@example.com".into()).await?;
    println!("{}", receipt.result(Duration::from_secs(10)).await?);
    Ok(())
}
