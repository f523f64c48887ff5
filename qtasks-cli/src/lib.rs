//! The qtasks command line, in two parts that share one implementation:
//!
//! - the `qtasks` binary (`cargo install --path qtasks-cli`), for everything that needs no
//!   task code: `add`, `get`, `wait`, `cancel`, `retry`, `delete`, `purge`, `tasks`, `stats`,
//!   `workers`, `ping`, `flush`, `dead`, `queues`, `schedule`, `web`, `grpc`, `completions`;
//! - [`main`], the whole `main` of a worker binary of your own (`qtasks::cli::main` with the
//!   `cli` feature of `qtasks`), which adds `worker`, `inspect` and `timer` to the same commands:
//!
//! ```no_run
//! use my_tasks as _; // the crate with your `#[qtasks::task]` fns: name it, or the linker drops it
//! # mod my_tasks {}
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     qtasks::cli::main().await
//! }
//! ```
//!
//! Both build the app the same way ([`connect`]): the settings from the environment
//! ([`QueueConfig::from_env`]: `QTASKS_MAX_TASKS_PROCESS=4`, ...), the name from `--app` /
//! `QTASKS_NAME`, the backend from `--url` / `QTASKS_URL` by the engine compiled in for its
//! scheme (`redis://`, `amqp://` with `--storage-url`, `postgres://`, `memory://`, or an engine
//! of your own: see `qtasks::backend::UrlEngine`). They install logging ([`init_logging`]) before anything
//! else, so a worker's start and every task it fails are on stderr.
//!
//! Every read command takes `--json` for scripts. Exit codes: [`EXIT_OK`] (0),
//! [`EXIT_TASK_FAILED`] (1: the task failed or was cancelled, or is not there),
//! [`EXIT_USAGE`] (2: bad arguments, an unconfirmed `flush` or `purge`), [`EXIT_UNREACHABLE`]
//! (3: the backend cannot be reached), [`EXIT_TIMEOUT`] (4: `wait` or `add --wait` gave up).
#![warn(missing_docs)]

mod args;
mod commands;
mod logging;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};
use qtasks_core::{QueueConfig, QueueTasks};

pub use args::{Cli, Command, LogFormat, SharedCommand};

// The engines compiled in, named so that the linker keeps them, and with them their
// `url_engine!` registrations, which `connect` finds by the URL's scheme.
pub use logging::{Telemetry, init_logging};
#[cfg(feature = "kafka")]
use qtasks_kafka as _;
#[cfg(feature = "postgres")]
use qtasks_postgres as _;
#[cfg(feature = "rabbitmq")]
use qtasks_rabbitmq as _;
#[cfg(feature = "redis")]
use qtasks_redis as _;

/// Exit code: done.
pub const EXIT_OK: u8 = 0;
/// Exit code: the task failed, was cancelled, or does not exist.
pub const EXIT_TASK_FAILED: u8 = 1;
/// Exit code: bad arguments (clap's own code for them), or a `flush` not confirmed.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the backend cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: a wait for a task's end gave up (the task may still end later).
pub const EXIT_TIMEOUT: u8 = 4;

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
            qtasks_core::Error::WaitTimeout { .. } => Failure::new(EXIT_TIMEOUT, message),
            qtasks_core::Error::TaskNotFound(_) | qtasks_core::Error::UnknownSchedule(_) => {
                Failure::task(message)
            }
            _ => Failure::task(message),
        }
    }
}

/// The whole `main` of a worker binary: parses the process's arguments, installs logging,
/// builds the app with [`connect`] and runs the command (`worker`, `inspect`, `timer`, and
/// every command of the `qtasks` binary) with the tasks compiled into the binary. Returns the
/// exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::from_args();
    if let Some(code) = run_offline(&cli) {
        return code;
    }
    let telemetry = init_logging(cli.log_level.as_deref(), cli.log_format, &cli.app);
    let app = match connect(&cli).await {
        Ok(app) => app,
        Err(failure) => return finish(Err(failure)),
    };
    telemetry.install(&app);
    let result = commands::run_app_command(&app, &cli).await;
    telemetry.shutdown();
    finish(result)
}

/// The app a command line names: the config from the environment
/// ([`QueueConfig::from_env`]), named `--app` / `QTASKS_NAME`, on the backend at `--url` /
/// `QTASKS_URL` (and `--storage-url` for an engine that keeps only the queue), by the engine
/// compiled in for the URL's scheme. A setting that does not parse or a scheme no engine
/// serves is a usage error (exit code 2), a backend that cannot be reached exit code 3.
pub async fn connect(cli: &Cli) -> Result<QueueTasks, Failure> {
    let mut config = QueueConfig::from_env().map_err(|error| Failure::usage(error.to_string()))?;
    config.name.clone_from(&cli.app);
    let url = qtasks_core::backend::EngineUrl::new(&cli.url).with_records(Some(&cli.storage_url));
    let connector = qtasks_core::backend::connector_for(url).map_err(|error| {
        Failure::usage(format!(
            "--url: {}",
            qtasks_core::backend::ErrorChain(&error)
        ))
    })?;
    let app = QueueTasks::builder()
        .config(config)
        .connect(connector)
        .await?
        .build();
    Ok(app)
}

/// Runs a command that needs no app (`completions`) of a worker binary; `None` for every
/// other.
pub fn run_offline(cli: &Cli) -> Option<ExitCode> {
    offline(cli, Cli::command())
}

/// [`run_offline`] for the `qtasks` binary: its completions leave out the worker-only
/// commands, as its help does.
pub fn run_offline_standalone(cli: &Cli) -> Option<ExitCode> {
    // clap_complete offers hidden commands too: the completions are made from a command line
    // without them.
    let full = Cli::command();
    let without_workers = clap::Command::new("qtasks")
        .args(full.get_arguments().cloned())
        .subcommands(
            full.get_subcommands()
                .filter(|sub| !WORKER_ONLY.contains(&sub.get_name()))
                .cloned(),
        );
    offline(cli, without_workers)
}

/// The commands only a worker binary has (its tasks are compiled in).
const WORKER_ONLY: [&str; 3] = ["worker", "inspect", "timer"];

fn offline(cli: &Cli, mut command: clap::Command) -> Option<ExitCode> {
    match &cli.command {
        Command::Shared(SharedCommand::Completions { shell }) => {
            use std::io::Write;
            // Written whole, and a closed pipe (`| head`) is not an error worth a panic.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "qtasks", &mut script);
            let _ = std::io::stdout().write_all(&script);
            Some(ExitCode::from(EXIT_OK))
        }
        _ => None,
    }
}

/// The `qtasks` binary's command line: the worker-only commands hidden.
fn standalone_command() -> clap::Command {
    let mut command = Cli::command();
    for worker_only in WORKER_ONLY {
        command = command.mut_subcommand(worker_only, |sub| sub.hide(true));
    }
    command
}

/// Runs the command line of a worker binary on an app built already: the shared commands plus
/// `worker`, `inspect` and `timer` (its tasks are those compiled into the binary). Parses the
/// process's arguments, installs logging (see [`init_logging`]), and returns the exit code for
/// `main`. `--url`, `--app` and the `QTASKS_` settings are not applied here (the app is built);
/// [`main`] builds it from them.
pub async fn run(app: QueueTasks) -> ExitCode {
    run_with(app, Cli::from_args()).await
}

/// [`run`] with a command line parsed already: for a binary that builds its app from
/// [`Cli::url`] and [`Cli::app`] its own way (with engine options, say).
pub async fn run_with(app: QueueTasks, cli: Cli) -> ExitCode {
    if let Some(code) = run_offline(&cli) {
        return code;
    }
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

    /// [`from_args`](Self::from_args) for the `qtasks` binary, which has no tasks: `worker`,
    /// `inspect` and `timer` are left out of its help (and refused, saying why, if given).
    pub fn from_args_standalone() -> Self {
        let matches = standalone_command().get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
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
