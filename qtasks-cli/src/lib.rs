//! The qtasks command line, in two parts that share one implementation:
//!
//! - the `qtasks` binary (`cargo install qtasks-cli`), for everything that needs no task code:
//!   `add`, `get`, `wait`, `cancel`, `tasks`, `stats`, `workers`, `ping`, `flush`, `dead`. It
//!   connects with `--url` / `QTASKS_URL` and `--app` / `QTASKS_NAME`;
//! - [`run`], the `main` of a worker binary of your own (reached as `qtasks::cli::run` with the
//!   `cli` feature of `qtasks`), which adds `worker` and `inspect` to the same commands.
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     let app = qtasks::QueueTasks::new(); // or `qtasks::redis::connect(url).await`
//!     qtasks::cli::run(app).await
//! }
//! ```
//!
//! Every read command takes `--json` for scripts. Exit codes: [`EXIT_OK`] (0),
//! [`EXIT_TASK_FAILED`] (1: the task failed or was cancelled, or is not there),
//! [`EXIT_USAGE`] (2: bad arguments, an unconfirmed `flush`), [`EXIT_UNREACHABLE`] (3: the
//! backend cannot be reached).
#![warn(missing_docs)]

mod args;
mod commands;
mod logging;
mod output;

use std::process::ExitCode;

use clap::Parser;
use qtasks_core::QueueTasks;

pub use args::{Cli, Command, LogFormat, SharedCommand};
pub use logging::{Telemetry, init_logging};

/// Exit code: done.
pub const EXIT_OK: u8 = 0;
/// Exit code: the task failed, was cancelled, or does not exist.
pub const EXIT_TASK_FAILED: u8 = 1;
/// Exit code: bad arguments (clap's own code for them), or a `flush` not confirmed.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the backend cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

/// What a command ends with when it cannot do its job: the exit code and a message that names
/// what was wrong (never a password: backend errors carry URLs redacted).
#[derive(Debug)]
pub struct Failure {
    /// The process's exit code.
    pub code: u8,
    /// Shown on stderr after `error: `.
    pub message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(EXIT_USAGE, message)
    }

    pub(crate) fn task(message: impl Into<String>) -> Self {
        Self::new(EXIT_TASK_FAILED, message)
    }
}

impl From<qtasks_core::Error> for Failure {
    fn from(error: qtasks_core::Error) -> Self {
        let message = qtasks_core::backend::ErrorChain(&error).to_string();
        match error {
            qtasks_core::Error::Backend(_) => Failure::new(EXIT_UNREACHABLE, message),
            qtasks_core::Error::TaskNotFound(_) | qtasks_core::Error::WaitTimeout { .. } => {
                Failure::task(message)
            }
            _ => Failure::task(message),
        }
    }
}

/// Runs the command line of a worker binary: the shared commands plus `worker` and `inspect`,
/// on this app (its tasks are those compiled into the binary). Parses the process's
/// arguments, installs logging (see [`init_logging`]), and returns the exit code for `main`.
pub async fn run(app: QueueTasks) -> ExitCode {
    run_with(app, Cli::from_args()).await
}

/// [`run`] with a command line parsed already: for a binary that reads `--url` and `--app`
/// ([`Cli::url`], [`Cli::app`]) to build its app first (see `examples/worker_cli.rs`).
pub async fn run_with(app: QueueTasks, cli: Cli) -> ExitCode {
    let telemetry = init_logging(cli.log_level.as_deref(), cli.log_format, &app.name());
    telemetry.install(&app);
    let result = commands::run_app_command(&app, &cli).await;
    telemetry.shutdown();
    finish(result)
}

impl Cli {
    /// The process's arguments, parsed; on bad arguments, prints why with the usage and exits
    /// with code 2.
    pub fn from_args() -> Self {
        Cli::parse()
    }
}

/// The exit code of a command's result, with the failure on stderr.
pub fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("error: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}

/// Runs one of the shared commands on `app` (the `qtasks` binary's whole job).
pub async fn run_shared(app: &QueueTasks, command: &SharedCommand, json: bool) -> ExitCode {
    finish(commands::run_shared(app, command, json).await)
}
