//! The `qtasks` binary: operates a queue from a shell, with no task code (a worker binary of
//! your own runs the tasks: see `qtasks::cli::run`).

use std::process::ExitCode;

use qtasks_cli::{Cli, Command, EXIT_UNREACHABLE, EXIT_USAGE, Failure, finish, init_logging};
use qtasks_core::{QueueConfig, QueueTasks};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::from_args();
    let telemetry = init_logging(cli.log_level.as_deref(), cli.log_format, "qtasks-cli");
    let Command::Shared(command) = &cli.command else {
        return finish(Err(Failure {
            code: EXIT_USAGE,
            message: "`worker`, `inspect` and `timer` need the tasks, which are compiled into your own binary: give it `qtasks::cli::run(app)` as main (see examples/worker_cli.rs)".to_owned(),
        }));
    };
    let app = match connect(&cli).await {
        Ok(app) => app,
        Err(failure) => return finish(Err(failure)),
    };
    telemetry.install(&app);
    let code = qtasks_cli::run_shared(&app, command, cli.json).await;
    telemetry.shutdown();
    code
}

/// The app named `--app` on the backend at `--url`.
async fn connect(cli: &Cli) -> Result<QueueTasks, Failure> {
    let config = QueueConfig {
        name: cli.app.clone(),
        ..QueueConfig::default()
    };
    let scheme = cli.url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        "redis" | "rediss" | "unix" | "redis+unix" => {
            qtasks_redis::connect_with(&cli.url, config, Default::default())
                .await
                .map_err(|error| Failure {
                    code: EXIT_UNREACHABLE,
                    message: qtasks_core::backend::ErrorChain(&error).to_string(),
                })
        }
        "amqp" | "amqps" => {
            let storage = qtasks_redis::Redis::new(&cli.storage_url);
            let options = qtasks_rabbitmq::RabbitMqOptions::default();
            qtasks_rabbitmq::connect_with(&cli.url, storage, config, options)
                .await
                .map_err(|error| Failure {
                    code: EXIT_UNREACHABLE,
                    message: qtasks_core::backend::ErrorChain(&error).to_string(),
                })
        }
        _ => Err(Failure {
            code: EXIT_USAGE,
            message: format!(
                "--url: `{scheme}://` is not a backend this binary knows; use redis://host:port/db, or amqp://host:port/vhost with --storage-url redis://..."
            ),
        }),
    }
}
