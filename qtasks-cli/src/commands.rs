//! What each command does, on an app; shown through `output`.

use std::time::Duration;

use qtasks_core::stats::{DeadLetter, Stats};
use qtasks_core::{AddOptions, QueueTasks, TaskRecord, TaskStatus, Uuid};
use serde_json::Value;
use tracing::Instrument;

use crate::args::{AddArgs, Cli, Command, DeadAction, DeadSelection, InspectArgs, SharedCommand};
use crate::args::{QueueAction, ScheduleAction};
use crate::args::{TasksArgs, WorkerArgs};
use crate::output::{self, Spinner, ago, human_duration};
use crate::{EXIT_USAGE, Failure};

type Outcome = Result<(), Failure>;

/// A command of a worker binary.
pub(crate) async fn run_app_command(app: &QueueTasks, cli: &Cli) -> Outcome {
    match &cli.command {
        Command::Shared(command) => run_shared(app, command, cli.json).await,
        Command::Worker(args) => worker(app, args).await,
        Command::Inspect(args) => inspect(app, args, cli.json).await,
        Command::Timer => Ok(app.schedules().run().await?),
    }
}

/// A command both parts have.
pub(crate) async fn run_shared(app: &QueueTasks, command: &SharedCommand, json: bool) -> Outcome {
    match command {
        SharedCommand::Add(args) => add(app, args, json).await,
        SharedCommand::Get { uuid } => get(app, parse_uuid(uuid)?, json).await,
        SharedCommand::Wait { uuid, timeout } => {
            wait(
                app,
                parse_uuid(uuid)?,
                seconds(*timeout, "--timeout")?,
                json,
            )
            .await
        }
        SharedCommand::Cancel { uuid, reason } => {
            cancel(app, parse_uuid(uuid)?, reason, json).await
        }
        SharedCommand::Tasks(args) => tasks(app, args, json).await,
        SharedCommand::Retry { uuid } => retry(app, parse_uuid(uuid)?, json).await,
        SharedCommand::Delete { uuid } => delete(app, parse_uuid(uuid)?, json).await,
        SharedCommand::Purge { queue, yes } => purge(app, queue, *yes, json).await,
        // Answered before any app is built (`run_offline`): nothing to do here.
        SharedCommand::Completions { .. } => Ok(()),
        SharedCommand::Stats { watch } => stats(app, *watch, json).await,
        SharedCommand::Workers => workers(app, json).await,
        SharedCommand::Ping => ping(app, json).await,
        SharedCommand::Flush { yes } => flush(app, *yes).await,
        SharedCommand::Dead { action } => dead(app, action.as_ref(), json).await,
        SharedCommand::Queues { action } => queues(app, action.as_ref(), json).await,
        SharedCommand::Schedule { action } => schedule(app, action.as_ref(), json).await,
        SharedCommand::Grpc {
            bind,
            token,
            tls_cert,
            tls_key,
        } => {
            let tls = tls_cert.as_deref().zip(tls_key.as_deref());
            grpc(app, *bind, token.clone(), tls).await
        }
        SharedCommand::Web { bind, token } => web(app, *bind, token.clone()).await,
    }
}

/// Resolves at Ctrl-C or SIGTERM.
#[cfg_attr(not(any(feature = "grpc", feature = "web")), allow(dead_code))]
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(feature = "web")]
async fn web(app: &QueueTasks, address: std::net::SocketAddr, token: Option<String>) -> Outcome {
    let web = qtasks_web::Web::new(app.clone()).token(token);
    // The Prometheus text beside the dashboard, under the same guard.
    let web = web.routes(qtasks_metrics::Metrics::install(app).router());
    let bound = web
        .serve(address)
        .await
        .map_err(|e| Failure::usage(e.to_string()))?;
    eprintln!("serving the dashboard at http://{bound}/ (JSON under /api/v1/; Ctrl-C stops it)");
    stop_signal().await;
    Ok(())
}

#[cfg(not(feature = "web"))]
async fn web(_app: &QueueTasks, _address: std::net::SocketAddr, _token: Option<String>) -> Outcome {
    Err(Failure::usage(
        "web needs the `web` feature of qtasks (this binary was built without it)",
    ))
}

#[cfg(feature = "grpc")]
async fn grpc(
    app: &QueueTasks,
    address: std::net::SocketAddr,
    token: Option<String>,
    tls: Option<(&std::path::Path, &std::path::Path)>,
) -> Outcome {
    let tls = tls
        .map(|(cert, key)| qtasks_grpc::Tls::from_pem_files(cert, key))
        .transpose()
        .map_err(|e| Failure::usage(e.to_string()))?;
    qtasks_grpc::Grpc::new(app.clone())
        .token(token)
        .tls(tls)
        .serve_with_shutdown(address, stop_signal())
        .await
        .map_err(|e| match e {
            // It names the address already, and how to fix it.
            qtasks_grpc::GrpcError::TokenRequired(_) => Failure::usage(e.to_string()),
            e => Failure::usage(format!("cannot serve gRPC on {address}: {e}")),
        })
}

#[cfg(not(feature = "grpc"))]
async fn grpc(
    _app: &QueueTasks,
    _address: std::net::SocketAddr,
    _token: Option<String>,
    _tls: Option<(&std::path::Path, &std::path::Path)>,
) -> Outcome {
    Err(Failure::usage(
        "grpc needs the `grpc` feature of qtasks (this binary was built without it)",
    ))
}

fn parse_uuid(text: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(text.trim()).map_err(|e| {
        Failure::usage(format!(
            "`{text}` is not a task uuid ({e}); `qtasks tasks` lists recent ones"
        ))
    })
}

fn seconds(value: f64, flag: &str) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| Failure::usage(format!("{flag} {value} is not a number of seconds")))
}

/// `--at`: an RFC 3339 time with its offset, or Unix seconds.
fn parse_time(text: &str) -> Result<std::time::SystemTime, Failure> {
    let refused = || {
        Failure::usage(format!(
            "--at `{text}` is not a time: give RFC 3339 with an offset (2026-12-05T04:00:00Z, 2026-12-05T07:00:00+03:00) or Unix seconds"
        ))
    };
    if let Ok(seconds) = text.parse::<f64>() {
        let since_epoch = Duration::try_from_secs_f64(seconds).map_err(|_| refused())?;
        return std::time::SystemTime::UNIX_EPOCH
            .checked_add(since_epoch)
            .ok_or_else(refused);
    }
    let timestamp: jiff::Timestamp = text.parse().map_err(|_| refused())?;
    Ok(std::time::SystemTime::from(timestamp))
}

fn parse_json(text: &str, what: &str) -> Result<Value, Failure> {
    serde_json::from_str(text)
        .map_err(|e| Failure::usage(format!("{what} `{text}` is not valid JSON: {e}")))
}

async fn add(app: &QueueTasks, args: &AddArgs, json: bool) -> Outcome {
    let positional = match parse_json(&args.args, "ARGS")? {
        Value::Array(items) => items,
        other => vec![other], // one argument needs no brackets: `qtasks add greet '"Ann"'`
    };
    let kwargs = parse_json(&args.kwargs, "--kwargs")?;
    if !kwargs.is_object() {
        return Err(Failure::usage(format!(
            "--kwargs must be a JSON object such as '{{\"b\": 3}}', not `{}`",
            args.kwargs
        )));
    }
    let mut options = AddOptions::default();
    if let Some(priority) = args.priority {
        options = options.priority(priority);
    }
    if let Some(delay) = args.delay {
        options = options.delay(seconds(delay, "--delay")?);
    }
    if let Some(at) = &args.at {
        options = options.at(parse_time(at)?);
    }
    if let Some(queue) = &args.queue {
        options = options.queue(queue.clone());
    }
    // Under a span of its own: with traces exported, the task's run continues this trace.
    let handle = app
        .add_task_with(&args.name, positional, kwargs, options)
        .instrument(tracing::info_span!("add_task", task = %args.name))
        .await?;
    let uuid = handle.uuid();
    match args.wait {
        None => {
            if json {
                output::json(&serde_json::json!({ "uuid": uuid }));
            } else {
                println!("{uuid}");
            }
            Ok(())
        }
        Some(timeout) => {
            // On a terminal, say which task the spinner waits for; piped, only the result.
            if !json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprintln!("added {uuid}");
            }
            wait(app, uuid, seconds(timeout, "--wait")?, json).await
        }
    }
}

async fn get(app: &QueueTasks, uuid: Uuid, json: bool) -> Outcome {
    let record = app.get(uuid).await?.ok_or_else(|| {
        Failure::task(format!(
            "task {uuid} does not exist (or its record expired)"
        ))
    })?;
    if json {
        output::json(&record);
    } else {
        show_record(&record);
    }
    Ok(())
}

fn show_record(record: &TaskRecord) {
    let mut lines = vec![
        ("uuid", record.uuid.to_string()),
        ("task", record.task_name.clone()),
        ("status", record.status.to_string()),
        ("priority", record.priority.to_string()),
        ("args", Value::Array(record.args.clone()).to_string()),
        ("kwargs", Value::Object(record.kwargs.clone()).to_string()),
        ("created", ago(record.created_at)),
        ("updated", ago(record.updated_at)),
    ];
    if let Some(run_at) = record.run_at {
        let left = run_at - qtasks_core::backend::unix_now();
        let due = if left > 0.0 {
            format!("in {}", human_duration(output::seconds(left)))
        } else {
            ago(run_at)
        };
        lines.push(("due", due));
    }
    if let Some(queue) = &record.queue {
        lines.push(("queue", queue.clone()));
    }
    if record.hand_backs > 0 {
        lines.push((
            "handed back",
            format!(
                "{} time(s) by workers that do not run it",
                record.hand_backs
            ),
        ));
    }
    if let Some(worker) = &record.worker {
        lines.push(("worker", worker.to_string()));
    }
    if let Some(progress) = &record.progress {
        lines.push(("progress", progress.to_string()));
    }
    if let Some(runtime) = record.runtime() {
        lines.push(("runtime", format_runtime(runtime)));
    }
    if let Some(returning) = &record.returning {
        lines.push(("result", returning.to_string()));
    }
    if let Some(traceback) = &record.traceback {
        lines.push(("traceback", traceback.clone()));
    }
    if let Some(reason) = &record.cancel_reason {
        lines.push(("cancel reason", reason.clone()));
    }
    if let Some(parent) = record.retry_parent_uuid {
        lines.push(("retry of", parent.to_string()));
    }
    if let Some(child) = record.retry_child_uuid {
        lines.push(("retried as", child.to_string()));
    }
    for (field, raw) in &record.unreadable {
        lines.push(("unreadable", format!("{field} = {raw}")));
    }
    output::fields(&lines);
}

async fn wait(app: &QueueTasks, uuid: Uuid, timeout: Duration, json: bool) -> Outcome {
    let record = {
        let spinner = Spinner::start(&format!("waiting for task {uuid}"));
        // The task's progress, as it reports it, on stderr (stdout keeps the result alone).
        let handle = app.handle::<Value>(uuid);
        let progress = async {
            use futures_util::StreamExt;
            let mut updates = std::pin::pin!(handle.progress_updates::<Value>());
            while let Some(Ok(progress)) = updates.next().await {
                if !json {
                    spinner.println(&format!("progress: {progress}"));
                }
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            waited = app.wait(uuid, timeout) => waited?,
            () = progress => unreachable!("the progress printer never ends on its own"),
        }
    };
    if json {
        output::json(&record);
    }
    match record.status {
        TaskStatus::Success => {
            if !json {
                println!("{}", record.returning.as_ref().unwrap_or(&Value::Null));
            }
            Ok(())
        }
        TaskStatus::Cancel => Err(Failure::task(format!(
            "task {} was cancelled: {}",
            record.uuid,
            record.cancel_reason.as_deref().unwrap_or("no reason given")
        ))),
        status => Err(Failure::task(format!(
            "task {} ended `{status}`: {}",
            record.uuid,
            record.traceback.as_deref().unwrap_or("no traceback")
        ))),
    }
}

async fn cancel(app: &QueueTasks, uuid: Uuid, reason: &str, json: bool) -> Outcome {
    let before = app.get(uuid).await?;
    let Some(before) = before else {
        return Err(Failure::task(format!("task {uuid} does not exist")));
    };
    let cancelled = app.cancel(uuid, reason).await?;
    let said = match (cancelled, before.status) {
        (true, TaskStatus::Process) => "asked the worker to stop it",
        (true, _) => "cancelled; it will not run",
        (false, _) => "not cancelled: it has ended already",
    };
    if json {
        output::json(
            &serde_json::json!({ "uuid": uuid, "cancelled": cancelled, "status_before": before.status }),
        );
    } else {
        println!("task {uuid}: {said}");
    }
    if cancelled {
        Ok(())
    } else {
        Err(Failure::task(String::new()))
    }
}

async fn retry(app: &QueueTasks, uuid: Uuid, json: bool) -> Outcome {
    let attempt = app.records().retry(uuid).await?.uuid();
    if json {
        output::json(&serde_json::json!({ "uuid": attempt, "retry_of": uuid }));
    } else {
        println!("{attempt}");
    }
    Ok(())
}

async fn delete(app: &QueueTasks, uuid: Uuid, json: bool) -> Outcome {
    let deleted = app.records().delete(uuid).await?;
    if json {
        output::json(&serde_json::json!({ "deleted": deleted }));
    }
    if !deleted {
        return Err(Failure::task(format!("there is no record of task {uuid}")));
    }
    if !json {
        println!("deleted the record of task {uuid}");
    }
    Ok(())
}

/// Cancels each task that waits in `queue` (the `new` ones, delayed tasks too), found page by
/// page from the records' index. The queue is paused meanwhile (and resumed after, unless it
/// was paused already), so no worker takes one of them between the listing and its cancel: a
/// task running when the purge starts is never touched. A record gone meanwhile is skipped.
async fn purge(app: &QueueTasks, queue: &str, yes: bool, json: bool) -> Outcome {
    if !yes
        && !confirm(&format!(
            "Cancel every task waiting in the queue `{queue}`?"
        ))
        .await
    {
        return Err(Failure::usage(
            "not confirmed; nothing was cancelled (pass --yes to skip the question)",
        ));
    }
    let was_paused = app
        .queues()
        .list()
        .await?
        .get(queue)
        .is_some_and(|numbers| numbers.paused);
    if !was_paused {
        app.queues().pause(queue).await?;
    }
    let purged = cancel_waiting(app, queue).await;
    if !was_paused {
        app.queues().resume(queue).await?;
    }
    let (purged, skipped) = purged?;
    if json {
        output::json(&serde_json::json!({ "purged": purged, "skipped": skipped, "queue": queue }));
    } else {
        println!("cancelled {purged} waiting task(s) of the queue `{queue}`");
        if skipped > 0 {
            println!("({skipped} had ended or were gone by then)");
        }
    }
    Ok(())
}

/// Cancels the `new` tasks of `queue`, a page at a time: (cancelled, skipped).
async fn cancel_waiting(app: &QueueTasks, queue: &str) -> Result<(usize, usize), Failure> {
    let mut query = qtasks_core::records::RecordQuery::default()
        .status(TaskStatus::New)
        .limit(qtasks_core::records::PAGE_MAX);
    let (mut purged, mut skipped) = (0, 0);
    loop {
        let page = app.records().list(&query).await?;
        let waiting = page
            .records
            .iter()
            .filter(|record| record.queue.as_deref().unwrap_or("default") == queue);
        for record in waiting {
            match app.cancel(record.uuid, "purged").await {
                Ok(true) => purged += 1,
                Ok(false) | Err(qtasks_core::Error::TaskNotFound(_)) => skipped += 1,
                Err(error) => return Err(error.into()),
            }
        }
        match page.next {
            Some(next) => query = query.after(next),
            None => return Ok((purged, skipped)),
        }
    }
}

async fn tasks(app: &QueueTasks, args: &TasksArgs, json: bool) -> Outcome {
    let status = args
        .status
        .as_deref()
        .map(|s| {
            s.parse::<TaskStatus>().map_err(|_| {
                Failure::usage(format!(
                    "`{s}` is not a status; use new, process, success, error, cancel or retry"
                ))
            })
        })
        .transpose()?;
    let since = args
        .since
        .as_deref()
        .map(output::parse_duration)
        .transpose()
        .map_err(Failure::usage)?;
    let oldest = since.map(|age| qtasks_core::backend::unix_now() - age.as_secs_f64());
    // Page by page, newest first, from the storage's index (Redis): a large store costs what
    // the pages shown cost, not a read of every record.
    let mut query = qtasks_core::records::RecordQuery::default().between(oldest, None);
    if let Some(status) = status {
        query = query.status(status);
    }
    if let Some(name) = &args.name {
        query = query.task_name(name.clone());
    }
    let mut records: Vec<TaskRecord> = Vec::new();
    while records.len() < args.limit {
        let page = app
            .records()
            .list(&query.clone().limit(args.limit - records.len()))
            .await?;
        records.extend(page.records);
        match page.next {
            Some(next) => query = query.after(next),
            None => break,
        }
    }
    records.truncate(args.limit);
    if json {
        output::json(&records);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.uuid.to_string(),
                r.task_name.clone(),
                r.status.to_string(),
                r.priority.to_string(),
                ago(r.created_at),
            ]
        })
        .collect();
    output::table(&["UUID", "TASK", "STATUS", "PRIORITY", "ADDED"], &rows);
    Ok(())
}

async fn stats(app: &QueueTasks, watch: bool, json: bool) -> Outcome {
    use std::io::IsTerminal;
    if !watch {
        show_stats(&app.stats().await?, json);
        return Ok(());
    }
    let in_place = std::io::stdout().is_terminal() && !json;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let stats = app.stats().await?;
        if in_place {
            // Home and clear: the numbers refresh where they are.
            print!("\x1b[H\x1b[2J");
        }
        if json {
            // One object per line while watching, for a consumer reading a stream.
            println!("{}", serde_json::to_string(&stats).unwrap_or_default());
        } else {
            show_stats(&stats, false);
            println!();
        }
    }
}

fn show_stats(stats: &Stats, json: bool) {
    if json {
        output::json(stats);
        return;
    }
    let mut lines = vec![("app", stats.app.clone())];
    match &stats.queue {
        None => lines.push(("queue", "the broker keeps no stats".to_owned())),
        Some(queue) => {
            let by_priority = queue
                .waiting
                .iter()
                .map(|(p, n)| format!("priority {p}: {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            lines.push((
                "waiting",
                if by_priority.is_empty() {
                    "0".to_owned()
                } else {
                    format!("{} ({by_priority})", queue.waiting_total())
                },
            ));
            lines.push(("delayed", queue.delayed.to_string()));
            lines.push(("running", queue.running.to_string()));
            lines.push((
                "finished",
                queue
                    .finished
                    .by_status()
                    .iter()
                    .map(|(status, n)| format!("{status} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
            lines.push((
                "last minute",
                format!(
                    "{} finished ({:.1}/s)",
                    queue.finished_last_minute,
                    queue.per_second()
                ),
            ));
            lines.push((
                "oldest waiting",
                queue
                    .oldest_waiting_secs
                    .map_or("-".to_owned(), |secs| human_duration(output::seconds(secs))),
            ));
            lines.push(("dead letters", queue.dead_letters.to_string()));
            if queue.queues.len() > 1 || queue.queues.values().any(|q| q.paused) {
                let shown = queue
                    .queues
                    .iter()
                    .map(|(name, numbers)| {
                        let paused = if numbers.paused { ", paused" } else { "" };
                        format!("{name} {}{paused}", numbers.waiting)
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                lines.push(("queues", shown));
            }
        }
    }
    lines.push(("workers", stats.workers.len().to_string()));
    lines.push(("schedules", stats.schedules.len().to_string()));
    output::fields(&lines);
    if !stats.schedules.is_empty() {
        println!();
        show_schedules(&stats.schedules);
    }
}

async fn workers(app: &QueueTasks, json: bool) -> Outcome {
    let workers = app.stats().await?.workers;
    if json {
        output::json(&workers);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.host.clone(),
                w.pid.to_string(),
                ago(w.started_at),
                w.concurrency.to_string(),
                w.running.to_string(),
                w.processed.to_string(),
                human_duration(w.heartbeat_age()),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "HOST",
            "PID",
            "STARTED",
            "CONCURRENCY",
            "RUNNING",
            "PROCESSED",
            "HEARTBEAT",
        ],
        &rows,
    );
    Ok(())
}

async fn ping(app: &QueueTasks, json: bool) -> Outcome {
    let alive = app.ping().await?;
    if json {
        output::json(&serde_json::json!({ "app": app.name(), "worker_running": alive }));
    } else if alive {
        println!("pong: a worker of `{}` is running", app.name());
    } else {
        println!("no worker of `{}` is running", app.name());
    }
    if alive {
        Ok(())
    } else {
        Err(Failure::task(String::new()))
    }
}

async fn flush(app: &QueueTasks, yes: bool) -> Outcome {
    let question = format!(
        "Delete every queued task and record of app `{}`? This cannot be undone.",
        app.name()
    );
    if !yes && !confirm(&question).await {
        return Err(Failure::new(
            EXIT_USAGE,
            "not confirmed; nothing was deleted (pass --yes to skip the question)",
        ));
    }
    app.flush_all().await?;
    println!("flushed app `{}`", app.name());
    Ok(())
}

/// Asks `question` on stderr; true when the answer on stdin is yes.
async fn confirm(question: &str) -> bool {
    use tokio::io::AsyncBufReadExt;
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let _ = stdin.read_line(&mut answer).await;
    matches!(answer.trim().to_lowercase().as_str(), "y" | "yes")
}

async fn queues(app: &QueueTasks, action: Option<&QueueAction>, json: bool) -> Outcome {
    let (name, pause) = match action {
        None | Some(QueueAction::List) => {
            let queues = app.queues().list().await?;
            if json {
                output::json(&queues);
            } else {
                let rows: Vec<Vec<String>> = queues
                    .iter()
                    .map(|(name, numbers)| {
                        vec![
                            name.clone(),
                            numbers.waiting.to_string(),
                            numbers.delayed.to_string(),
                            if numbers.paused { "paused" } else { "-" }.to_owned(),
                        ]
                    })
                    .collect();
                output::table(&["QUEUE", "WAITING", "DELAYED", "PAUSED"], &rows);
            }
            return Ok(());
        }
        Some(QueueAction::Pause { name }) => (name, true),
        Some(QueueAction::Resume { name }) => (name, false),
    };
    if pause {
        app.queues().pause(name).await?;
    } else {
        app.queues().resume(name).await?;
    }
    let done = if pause { "paused" } else { "resumed" };
    if json {
        output::json(&serde_json::json!({ "queue": name, done: true }));
    } else {
        println!("queue `{name}` {done}");
    }
    Ok(())
}

async fn schedule(app: &QueueTasks, action: Option<&ScheduleAction>, json: bool) -> Outcome {
    let (name, pause) = match action {
        None | Some(ScheduleAction::List) => {
            let schedules = app.schedules().recorded().await?;
            if json {
                output::json(&schedules);
            } else {
                show_schedules(&schedules);
            }
            return Ok(());
        }
        Some(ScheduleAction::Pause { name }) => (name, true),
        Some(ScheduleAction::Resume { name }) => (name, false),
        Some(ScheduleAction::Run { name }) => {
            let added = app.schedules().run_now(name).await?.uuid();
            if json {
                output::json(&serde_json::json!({ "schedule": name, "uuid": added }));
            } else {
                println!("{added}");
            }
            return Ok(());
        }
    };
    let known = app.schedules().recorded().await?;
    if !known.iter().any(|s| &s.name == name) {
        let names: Vec<&str> = known.iter().map(|s| s.name.as_str()).collect();
        return Err(Failure::task(format!(
            "no schedule `{name}` is known (a worker records its schedules when it starts); known: {}",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    }
    if pause {
        app.schedules().pause(name).await?;
    } else {
        app.schedules().resume(name).await?;
    }
    let done = if pause { "paused" } else { "resumed" };
    if json {
        output::json(&serde_json::json!({ "schedule": name, done: true }));
    } else {
        println!("schedule `{name}` {done}");
    }
    Ok(())
}

fn show_schedules(schedules: &[qtasks_core::schedule::ScheduleInfo]) {
    let at = |secs: Option<f64>| {
        secs.map_or("-".to_owned(), |secs| {
            let now = qtasks_core::backend::unix_now();
            if secs >= now {
                format!("in {}", human_duration(output::seconds(secs - now)))
            } else {
                ago(secs)
            }
        })
    };
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.task.clone(),
                s.when.clone(),
                if s.paused {
                    "paused".to_owned()
                } else {
                    at(s.next_at)
                },
                at(s.last_slot),
                s.last_uuid.map_or("-".to_owned(), |u| u.to_string()),
            ]
        })
        .collect();
    output::table(
        &["SCHEDULE", "TASK", "WHEN", "NEXT", "LAST", "LAST TASK"],
        &rows,
    );
}

async fn dead(app: &QueueTasks, action: Option<&DeadAction>, json: bool) -> Outcome {
    match action {
        None => list_dead(app, 100, json).await,
        Some(DeadAction::List { limit }) => list_dead(app, *limit, json).await,
        Some(DeadAction::Requeue(which)) => resolve_dead(app, which, true, json).await,
        Some(DeadAction::Drop(which)) => resolve_dead(app, which, false, json).await,
    }
}

async fn list_dead(app: &QueueTasks, limit: usize, json: bool) -> Outcome {
    let letters = app.dead_letters().list(limit).await?;
    if json {
        // Each with the short id `dead requeue` and `dead drop` take.
        let shown: Vec<Value> = letters
            .iter()
            .map(|letter| {
                serde_json::json!({
                    "id": letter.short_id(),
                    "entry": letter.entry,
                    "reason": letter.reason,
                    "at": letter.at,
                })
            })
            .collect();
        output::json(&shown);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|letter| {
            vec![
                letter.short_id(),
                ago(letter.at),
                letter.entry.clone(),
                letter.reason.clone(),
            ]
        })
        .collect();
    output::table(&["ID", "SET ASIDE", "ENTRY", "REASON"], &rows);
    Ok(())
}

async fn resolve_dead(
    app: &QueueTasks,
    which: &DeadSelection,
    requeue: bool,
    json: bool,
) -> Outcome {
    if !which.all && which.ids.is_empty() {
        return Err(Failure::usage(
            "say which: the ids `qtasks dead list` shows, or --all",
        ));
    }
    let letters = app.dead_letters().list(usize::MAX).await?;
    let chosen: Vec<&DeadLetter> = if which.all {
        letters.iter().collect()
    } else {
        // Every id is checked before anything is done: a typo resolves none of them.
        let mut chosen = Vec::new();
        for id in &which.ids {
            let id = id.to_ascii_lowercase();
            let matching: Vec<&DeadLetter> = letters
                .iter()
                .filter(|letter| letter.short_id().starts_with(&id))
                .collect();
            match matching.as_slice() {
                [letter] => chosen.push(*letter),
                [] => {
                    return Err(Failure::task(format!(
                        "there is no dead letter `{id}` (`qtasks dead list` shows their ids)"
                    )));
                }
                _ => {
                    return Err(Failure::usage(format!(
                        "`{id}` starts the ids of {} dead letters: give more of it",
                        matching.len()
                    )));
                }
            }
        }
        chosen
    };
    let mut done = 0;
    for letter in chosen {
        if app.dead_letters().resolve(letter, requeue).await? {
            done += 1;
        }
    }
    let verb = if requeue { "requeued" } else { "dropped" };
    if json {
        output::json(&serde_json::json!({ verb: done }));
    } else {
        println!("{verb} {done} dead letter(s)");
    }
    Ok(())
}

async fn worker(app: &QueueTasks, args: &WorkerArgs) -> Outcome {
    if let Some(concurrency) = args.concurrency {
        if concurrency == 0 {
            return Err(Failure::usage("--concurrency must be at least 1"));
        }
        app.set_config("max_tasks_process", &concurrency.to_string())
            .map_err(|e| Failure::usage(e.to_string()))?;
    }
    if !args.routers.is_empty() {
        app.set_routers(args.routers.iter().cloned());
    }
    let settings = [
        ("queues", "--queues", args.queues.clone()),
        (
            "queues_strict",
            "--strict",
            args.strict.then(|| "true".to_owned()),
        ),
        (
            "queue_concurrency",
            "--queue-concurrency",
            args.queue_concurrency.clone(),
        ),
    ];
    for (field, flag, value) in settings {
        if let Some(value) = value {
            app.set_config(field, &value)
                .map_err(|e| Failure::usage(format!("{flag}: {e}")))?;
        }
    }
    if let Some(address) = args.metrics {
        serve_metrics(app, address).await?;
    }
    app.run_forever().await?;
    Ok(())
}

#[cfg(feature = "metrics")]
async fn serve_metrics(app: &QueueTasks, address: std::net::SocketAddr) -> Outcome {
    let bound = qtasks_metrics::serve(app, address)
        .await
        .map_err(|e| Failure::usage(format!("cannot serve metrics on {address}: {e}")))?;
    tracing::info!(address = %bound, "serving Prometheus metrics at http://{bound}/metrics");
    Ok(())
}

#[cfg(not(feature = "metrics"))]
async fn serve_metrics(_app: &QueueTasks, _address: std::net::SocketAddr) -> Outcome {
    Err(Failure::usage(
        "--metrics needs the `metrics` feature of qtasks (this binary was built without it)",
    ))
}

async fn inspect(app: &QueueTasks, args: &InspectArgs, json: bool) -> Outcome {
    let mut inspection = app.inspect().await;
    if let Some(name) = &args.task {
        inspection.tasks.retain(|task| task.name == name);
        if inspection.tasks.is_empty() {
            return Err(Failure::task(format!(
                "no task `{name}` is registered in this binary; `inspect` lists them"
            )));
        }
    }
    if json {
        output::json(&inspection);
        return Ok(());
    }
    let app_stats = &inspection.app;
    output::fields(&[
        ("app", app_stats.name.clone()),
        ("version", app_stats.version.to_owned()),
        ("broker", app_stats.broker.clone()),
        ("storage", app_stats.storage.clone()),
        ("worker", app_stats.worker.clone()),
        (
            "concurrency",
            app_stats.config.max_tasks_process.to_string(),
        ),
        ("tasks", app_stats.tasks_count.to_string()),
        ("plugins", app_stats.plugins_count.to_string()),
    ]);
    println!();
    let rows: Vec<Vec<String>> = inspection
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.name.to_owned(),
                t.params.join(", "),
                t.priority.map_or("-".to_owned(), |p| p.to_string()),
                t.retry.map_or("-".to_owned(), |r| r.to_string()),
                t.location.clone(),
            ]
        })
        .collect();
    output::table(
        &["TASK", "PARAMS", "PRIORITY", "RETRY", "DEFINED AT"],
        &rows,
    );
    if !inspection.schedules.is_empty() {
        println!();
        show_schedules(&inspection.schedules);
    }
    Ok(())
}

/// A run's length: milliseconds under a second (`12.3 ms`), else as a duration.
fn format_runtime(runtime: Duration) -> String {
    if runtime < Duration::from_secs(1) {
        format!("{:.1} ms", runtime.as_secs_f64() * 1000.0)
    } else {
        human_duration(runtime)
    }
}
