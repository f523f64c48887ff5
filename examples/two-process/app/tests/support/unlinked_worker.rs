//! A worker binary with the mistake the worker warns about: `shop-tasks` is a dependency, but
//! nothing here names it, so the linker leaves it out and no task is registered. Started by
//! `tests/two_process.rs` to check that the worker says so when it starts.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    qtasks::cli::main().await
}
