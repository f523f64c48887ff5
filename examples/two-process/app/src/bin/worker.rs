//! The worker: the tasks of `shop-tasks`, and the qtasks command line as `main`.
//!
//! ```text
//! QTASKS_URL=redis://127.0.0.1:6379/0 cargo run -p shop-app --bin shop-worker -- worker
//! ```
//!
//! `worker` runs the tasks; every other command of the `qtasks` binary works here too (`add`,
//! `stats`, `tasks`, ...), and `inspect` lists the tasks this binary registered.

use shop_tasks as _; // name the tasks crate: a crate the binary never names is not linked in

#[tokio::main]
async fn main() -> std::process::ExitCode {
    qtasks::cli::main().await
}
