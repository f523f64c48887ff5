//! The command line's arguments (clap), shared by the `qtasks` binary and a worker binary's `qtasks::cli::main`.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "qtasks",
    version,
    about = "Operate a qtasks queue: add, read, wait for and cancel tasks; stats, workers, dead letters.",
    after_help = "Exit codes: 0 ok, 1 the task failed, was cancelled or does not exist, 2 usage, 3 the backend is unreachable, 4 a wait timed out.\nLogs: RUST_LOG (e.g. RUST_LOG=qtasks=debug) or --log-level.\nSettings: every QueueConfig field as QTASKS_<FIELD> (e.g. QTASKS_MAX_TASKS_PROCESS=4)."
)]
#[non_exhaustive]
pub struct Cli {
    /// The backend's URL: `redis://host:port/db`, `amqp://user:password@host:port/vhost` (with
    /// `--storage-url`), `memory://` (this process alone), or the scheme of any engine compiled
    /// into the binary.
    #[arg(
        long,
        env = "QTASKS_URL",
        global = true,
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true
    )]
    pub url: String,

    /// With an `amqp://` URL: where the records are (Redis, as Python QTasks pairs them).
    #[arg(
        long,
        env = "QTASKS_STORAGE_URL",
        global = true,
        default_value = "redis://127.0.0.1:6379/0",
        hide_env_values = true
    )]
    pub storage_url: String,

    /// The app's name (the key prefix on Redis).
    #[arg(
        long = "app",
        env = "QTASKS_NAME",
        global = true,
        default_value = "QueueTasks"
    )]
    pub app: String,

    /// Print JSON instead of tables (every read command).
    #[arg(long, global = true)]
    pub json: bool,

    /// The log level when RUST_LOG is not set: error, warn, info, debug, trace, or a filter
    /// such as `qtasks=debug,info`.
    #[arg(long, global = true)]
    pub log_level: Option<String>,

    /// How logs are written (on stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[non_exhaustive]
pub enum LogFormat {
    /// One line per event, for people.
    Text,
    /// One JSON object per event, for log collectors.
    Json,
}

/// Every command: the shared ones, and those only a worker binary has (its tasks are
/// compiled in).
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Commands that need no task code.
    #[command(flatten)]
    Shared(SharedCommand),
    /// Run a worker (only in a worker binary, `qtasks::cli::main`).
    Worker(WorkerArgs),
    /// The registered tasks and the app's parts (only in a worker binary).
    Inspect(InspectArgs),
    /// Run the app's schedules and no worker (only in a worker binary; workers run them too).
    Timer,
}

/// The commands both parts have.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum SharedCommand {
    /// Add a task by name; prints its uuid (or, with --wait, its result).
    Add(AddArgs),
    /// Show a task's record.
    Get {
        /// The task's uuid.
        uuid: String,
    },
    /// Wait until a task ends; prints its result. Exit code 1 when it failed or was cancelled,
    /// 4 when it did not end in time.
    Wait {
        /// The task's uuid.
        uuid: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Cancel a task: a waiting one never runs, a running one is asked to stop.
    Cancel {
        /// The task's uuid.
        uuid: String,
        /// Why (stored as the cancel reason).
        #[arg(default_value = "cancelled from the command line")]
        reason: String,
    },
    /// List recent tasks, newest first, a page at a time from the records' index (a store of
    /// millions lists as fast as a small one).
    Tasks(TasksArgs),
    /// Run a task that failed or was cancelled again, as a new attempt (prints its uuid).
    Retry {
        /// The task's uuid.
        uuid: String,
    },
    /// Delete a finished task's record (a waiting or running task is refused: cancel it first).
    Delete {
        /// The task's uuid.
        uuid: String,
    },
    /// Cancel every task waiting in a queue, delayed ones too (their records stay: `cancel`,
    /// reason `purged`); the queue is paused meanwhile, so running tasks and other queues are
    /// left alone. Asks first, unless --yes.
    Purge {
        /// The queue.
        #[arg(long, default_value = "default")]
        queue: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// The queue's live numbers and the workers.
    Stats {
        /// Refresh every second, in place (until Ctrl-C).
        #[arg(long)]
        watch: bool,
    },
    /// The workers whose heartbeat is alive.
    Workers,
    /// Whether a worker of the app is running. Exit code 1 when none is.
    Ping,
    /// Delete every queued task and record of the app (asks first, unless --yes).
    Flush {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// The schedules the workers run: list them, pause, resume or run one now.
    Schedule {
        /// What to do (default: list).
        #[command(subcommand)]
        action: Option<ScheduleAction>,
    },
    /// The named queues: their numbers; pause or resume one (for every worker).
    Queues {
        /// What to do (default: list).
        #[command(subcommand)]
        action: Option<QueueAction>,
    },
    /// Queue entries that could not run: list them, requeue or drop them.
    Dead {
        /// What to do with them (default: list).
        #[command(subcommand)]
        action: Option<DeadAction>,
    },
    /// Print a shell's completion script: `qtasks completions bash > /etc/bash_completion.d/qtasks`,
    /// `qtasks completions zsh > ~/.zfunc/_qtasks`, `qtasks completions fish > ~/.config/fish/completions/qtasks.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Serve the gRPC API (Python QTasks' `qtasks.v1`: AddTask, GetTask; health; reflection)
    /// until Ctrl-C or SIGTERM. Anything but loopback needs a token.
    Grpc {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:50051")]
        bind: std::net::SocketAddr,
        /// The token every call must carry (metadata `authorization: Bearer ...`); health
        /// stays open.
        #[arg(long, env = "QTASKS_GRPC_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Serve over TLS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, requires = "tls_key", value_name = "PEM")]
        tls_cert: Option<std::path::PathBuf>,
        /// The private key (PEM) of --tls-cert.
        #[arg(long, requires = "tls_cert", value_name = "PEM")]
        tls_key: Option<std::path::PathBuf>,
    },
    /// Serve the web dashboard (pages, live updates, actions), its JSON API (`/api/v1`) and
    /// `/metrics` until Ctrl-C or SIGTERM. Anything but loopback needs a token.
    Web {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8000")]
        bind: std::net::SocketAddr,
        /// The token every request must carry (`Authorization: Bearer ...`, or the cookie the
        /// login page sets).
        #[arg(long, env = "QTASKS_WEB_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// `add`'s arguments.
#[derive(Debug, Args)]
#[non_exhaustive]
pub struct AddArgs {
    /// The task's registered name.
    pub name: String,
    /// Positional arguments: a JSON list, e.g. '[2, 3]'.
    #[arg(default_value = "[]")]
    pub args: String,
    /// Keyword arguments: a JSON object, e.g. '{"b": 3}'.
    #[arg(long, default_value = "{}")]
    pub kwargs: String,
    /// The priority (lower runs first).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i64>,
    /// Wait this many seconds for the result, and print it.
    #[arg(long)]
    pub wait: Option<f64>,
    /// Run the task no sooner than this many seconds from now.
    #[arg(long, conflicts_with = "at")]
    pub delay: Option<f64>,
    /// Run the task no sooner than this time: RFC 3339 (`2026-12-05T04:00:00Z`,
    /// `2026-12-05T07:00:00+03:00`) or Unix seconds.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// The named queue to add it to (default: the task's own, else `default`).
    #[arg(long)]
    pub queue: Option<String>,
}

/// `tasks`' filters.
#[derive(Debug, Args)]
#[non_exhaustive]
pub struct TasksArgs {
    /// Only tasks with this status (new, process, success, error, cancel, retry).
    #[arg(long)]
    pub status: Option<String>,
    /// Only tasks with this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only tasks added within this long (e.g. 90s, 15m, 2h, 1d).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

/// What to do with schedules.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum ScheduleAction {
    /// Every schedule: what it adds, when it fires next, its last firing.
    List,
    /// Stop firing a schedule (on every worker) until it is resumed.
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Fire a paused schedule again, from its next slot.
    Resume {
        /// The schedule's name.
        name: String,
    },
    /// Add the schedule's task once, now (its slots go on as before); prints the task's uuid.
    Run {
        /// The schedule's name.
        name: String,
    },
}

/// What to do with named queues.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum QueueAction {
    /// Every queue with tasks, paused or served: waiting, delayed, paused.
    List,
    /// Stop every worker taking the queue's tasks (they wait) until it is resumed.
    Pause {
        /// The queue's name.
        name: String,
    },
    /// Let workers take the queue's tasks again.
    Resume {
        /// The queue's name.
        name: String,
    },
}

/// What to do with dead letters.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum DeadAction {
    /// List them, oldest first, each with its id.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Queue entries again as they were (by the ids `dead list` shows, or --all).
    Requeue(DeadSelection),
    /// Delete entries (by the ids `dead list` shows, or --all).
    Drop(DeadSelection),
}

/// Which dead letters.
#[derive(Debug, Args)]
#[non_exhaustive]
pub struct DeadSelection {
    /// The ids `dead list` shows (a letter keeps its id while others come and go; a unique
    /// prefix will do).
    pub ids: Vec<String>,
    /// All of them.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
}

/// `worker`'s arguments.
#[derive(Debug, Args)]
#[non_exhaustive]
pub struct WorkerArgs {
    /// How many tasks run at once (default: the app's `max_tasks_process`).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Run only the tasks of these routers (comma-separated); another router's task goes back
    /// to its queue for a worker that runs it.
    #[arg(long, value_delimiter = ',')]
    pub routers: Vec<String>,
    /// Serve these queues, with weights: `billing:3,default:1` asks billing first three takes
    /// in four (default: the app's `queues`, `default` alone unless set).
    #[arg(long, value_name = "QUEUE[:WEIGHT],..")]
    pub queues: Option<String>,
    /// Serve --queues in strict order: an earlier queue first while it has tasks.
    #[arg(long)]
    pub strict: bool,
    /// At most this many tasks of a queue at once in this worker: `billing:2,reports:1`.
    #[arg(long, value_name = "QUEUE:N,..")]
    pub queue_concurrency: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (needs the `metrics` feature).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// `inspect`'s arguments.
#[derive(Debug, Args)]
#[non_exhaustive]
pub struct InspectArgs {
    /// Only this task.
    pub task: Option<String>,
}
