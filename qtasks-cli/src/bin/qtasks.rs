//! The `qtasks` binary: operates a queue from a shell, with no task code (a worker binary of
//! your own runs the tasks: see `qtasks::cli::main`).

use std::process::ExitCode;

use qtasks_cli::{Cli, Command, EXIT_USAGE, Failure, finish, init_logging};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::from_args_standalone();
    if let Some(code) = qtasks_cli::run_offline_standalone(&cli) {
        return code;
    }
    let telemetry = init_logging(cli.log_level.as_deref(), cli.log_format, "qtasks-cli");
    let Command::Shared(command) = &cli.command else {
        return finish(Err(Failure {
            code: EXIT_USAGE,
            message: "`worker`, `inspect` and `timer` need the tasks, which are compiled into your own binary: make its main `qtasks::cli::main().await` (see examples/two-process)".to_owned(),
        }));
    };
    let app = match qtasks_cli::connect(&cli).await {
        Ok(app) => app,
        Err(failure) => return finish(Err(failure)),
    };
    telemetry.install(&app);
    let code = qtasks_cli::run_shared(&app, command, cli.json).await;
    telemetry.shutdown();
    code
}
