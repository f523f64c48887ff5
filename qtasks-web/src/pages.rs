//! The dashboard's pages, rendered on the server: overview, tasks, a task, workers, dead
//! letters, and the login form. Each page names its live regions (`id="region-..."`); the
//! event stream of [`live`](crate::live) sends new HTML for them as the numbers change.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use qtasks_core::backend::{ErrorChain, unix_now};
use qtasks_core::records::{RecordCursor, RecordPage, RecordQuery};
use qtasks_core::schedule::ScheduleInfo;
use qtasks_core::stats::{DeadLetter, Stats, WorkerInfo};
use qtasks_core::{TaskRecord, TaskStatus, Uuid};
use serde::Deserialize;

use maud::{DOCTYPE, Markup, html};

use crate::Shared;
use crate::html::{age, link, query_value, time, timestamp};
use crate::live::{BUCKET_SECS, BUCKETS, Snapshot};

/// The sections of the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Tasks,
    Workers,
    Queues,
    Schedules,
    Dead,
    Login,
}

const SECTIONS: [(Section, &str, &str); 6] = [
    (Section::Overview, "", "Overview"),
    (Section::Tasks, "tasks", "Tasks"),
    (Section::Workers, "workers", "Workers"),
    (Section::Queues, "queues", "Queues"),
    (Section::Schedules, "schedules", "Schedules"),
    (Section::Dead, "dead", "Dead letters"),
];

/// A whole page around `body`.
pub(crate) fn page(
    shared: &Shared,
    section: Section,
    title: &str,
    live: Option<&str>,
    body: Markup,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · qtasks" }
                // Every link below is relative to the mount point (see `mount`).
                base href=(crate::mount::base_href());
                link rel="stylesheet" href="assets/app.css";
                link rel="icon" href="assets/icon.svg" type="image/svg+xml";
                script src="assets/app.js" defer {}
            }
            body data-live=[live] {
                a.skip href=(crate::mount::on_this_page("main")) { "Skip to content" }
                header {
                    nav aria-label="Sections" {
                        span.brand { "qtasks " span.app { (shared.app.name()) } }
                        @if section != Section::Login {
                            @for (each, href, label) in SECTIONS {
                                // The front page is the mount point itself (see `mount::home`).
                                @let href = if each == Section::Overview { crate::mount::home() } else { href.to_owned() };
                                a href=(href) aria-current=[(each == section).then_some("page")] { (label) }
                            }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
                footer {
                    span { "qtasks " (env!("CARGO_PKG_VERSION")) }
                    @if live.is_some() {
                        " · " span #live-state role="status" { "live updates on" }
                    }
                }
            }
        }
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A page that says what went wrong, with the status code it deserves.
pub(crate) fn problem(shared: &Shared, status: StatusCode, title: &str, detail: &str) -> Response {
    let body = html! {
        h1 { (title) }
        p.problem role="alert" { (detail) }
        p { a href="tasks" { "Back to the tasks" } }
    };
    let mut response = page(shared, Section::Tasks, title, None, body);
    *response.status_mut() = status;
    response
}

/// What an action reports back after its redirect (a fixed set: nothing the URL says is shown).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Flash {
    done: Option<String>,
}

impl Flash {
    fn render(&self) -> Markup {
        let message = match self.done.as_deref() {
            Some("cancelled") => "The task was cancelled (or asked to stop, if it was running).",
            Some("not-cancelled") => "The task had ended already; nothing was cancelled.",
            Some("retried") => "A new attempt was added; this is it.",
            Some("deleted") => "The task's record was deleted.",
            Some("requeued") => "The dead letter was put back in the queue.",
            Some("dropped") => "The dead letter was dropped.",
            Some("gone") => "That dead letter was not there any more.",
            Some("paused") => "The queue is paused: no worker takes its tasks until it is resumed.",
            Some("resumed") => "The queue is resumed: workers take its tasks again.",
            Some("schedule-paused") => {
                "The schedule is paused: its slots pass without firing until it is resumed."
            }
            Some("schedule-resumed") => "The schedule is resumed from its next slot.",
            Some("schedule-ran") => "The schedule's task was added once, now; this is it.",
            _ => return html! {},
        };
        html! { p.notice role="status" { (message) } }
    }
}

fn status_badge(status: TaskStatus) -> Markup {
    html! { span class={ "status s-" (status.as_str()) } { (status.as_str()) } }
}

fn short(uuid: Uuid) -> String {
    uuid.simple().to_string()[..8].to_owned()
}

fn json_pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("(not JSON: {e})"))
}

// ------------------------------------------------------------------------------------------
// Overview

pub(crate) async fn overview(State(shared): State<Shared>, Query(flash): Query<Flash>) -> Response {
    let snapshot = shared.live().await.ready().await;
    let body = html! {
        h1 { "Overview" }
        (flash.render())
        @for (id, region) in overview_regions(&snapshot) {
            div id=(id) { (region) }
        }
    };
    page(
        &shared,
        Section::Overview,
        "Overview",
        Some("events?view=overview"),
        body,
    )
}

/// The live parts of the overview.
pub(crate) fn overview_regions(snapshot: &Snapshot) -> Vec<(&'static str, Markup)> {
    let stats = match &snapshot.stats {
        Ok(stats) => stats,
        Err(error) => {
            let problem = html! {
                p.problem role="alert" { "The backend could not be read: " (error) }
            };
            return vec![("region-counts", problem)];
        }
    };
    vec![
        ("region-counts", counts(stats)),
        ("region-chart", chart(snapshot)),
        (
            "region-workers",
            workers_table(&stats.workers, stats.at, true),
        ),
    ]
}

fn counts(stats: &Stats) -> Markup {
    let Some(queue) = &stats.queue else {
        return html! { p { "This backend keeps no queue numbers." } };
    };
    let oldest = queue
        .oldest_waiting_secs
        .map_or_else(|| "-".to_owned(), age);
    // label, value, where it links, the card's class
    let cards: [(&str, String, Option<&str>, &str); 10] = [
        (
            "Waiting",
            queue.waiting_total().to_string(),
            Some("tasks?status=new"),
            "",
        ),
        ("Delayed", queue.delayed.to_string(), None, ""),
        (
            "Running",
            queue.running.to_string(),
            Some("tasks?status=process"),
            "c-process",
        ),
        (
            "Success",
            queue.finished.success.to_string(),
            Some("tasks?status=success"),
            "c-success",
        ),
        (
            "Error",
            queue.finished.error.to_string(),
            Some("tasks?status=error"),
            "c-error",
        ),
        (
            "Cancelled",
            queue.finished.cancel.to_string(),
            Some("tasks?status=cancel"),
            "c-cancel",
        ),
        (
            "Retried",
            queue.finished.retry.to_string(),
            Some("tasks?status=retry"),
            "",
        ),
        (
            "Dead letters",
            queue.dead_letters.to_string(),
            Some("dead"),
            "",
        ),
        (
            "Per second (1 min)",
            format!("{:.1}", queue.per_second()),
            None,
            "",
        ),
        ("Oldest waiting", oldest, None, ""),
    ];
    html! {
        section aria-labelledby="counts-h" {
            h2 #counts-h { "Queue" }
            dl.cards {
                @for (label, value, href, class) in &cards {
                    div class={ "card " (class) } {
                        dt { (label) }
                        dd {
                            @match href {
                                Some(href) => { a href=(href) { (value) } }
                                None => { (value) }
                            }
                        }
                    }
                }
            }
            h3 { "Waiting by priority" }
            @if queue.waiting.is_empty() {
                p.quiet { "Nothing waits." }
            } @else {
                div.scroll {
                    table.narrow {
                        thead { tr { th scope="col" { "Priority" } th.n scope="col" { "Waiting" } } }
                        tbody {
                            @for (priority, count) in &queue.waiting {
                                tr { td { (priority) } td.n { (count) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The throughput of the last 15 minutes as SVG bars (no script needed to see it).
fn chart(snapshot: &Snapshot) -> Markup {
    const WIDTH: u64 = 600;
    const HEIGHT: u64 = 120;
    let now = unix_now() as u64;
    let last = now - now % BUCKET_SECS;
    let first = last - BUCKET_SECS * (BUCKETS as u64 - 1);
    let counts: Vec<(u64, u64)> = (0..BUCKETS as u64)
        .map(|i| {
            let start = first + i * BUCKET_SECS;
            let count = snapshot
                .throughput
                .iter()
                .find(|(at, _)| *at == start)
                .map_or(0, |(_, count)| *count);
            (start, count)
        })
        .collect();
    let highest = counts.iter().map(|(_, c)| *c).max().unwrap_or(0);
    let peak = highest.max(1);
    let total: u64 = counts.iter().map(|(_, c)| *c).sum();
    let bar = WIDTH / BUCKETS as u64;
    html! {
        section aria-labelledby="chart-h" {
            h2 #chart-h { "Throughput, last 15 minutes" }
            figure {
                svg.chart viewBox={ "0 0 " (WIDTH) " " (HEIGHT + 4) } role="img" aria-labelledby="chart-cap" preserveAspectRatio="none" {
                    @for (i, (start, count)) in counts.iter().enumerate() {
                        @let height = (count * HEIGHT).div_ceil(peak);
                        rect.bar x=(i as u64 * bar + 1) y=(HEIGHT - height) width=(bar - 2) height=(height.max(1)) {
                            title { (timestamp(*start as f64)) ": " (count) " finished" }
                        }
                    }
                    line.axis x1="0" x2=(WIDTH) y1=(HEIGHT + 1) y2=(HEIGHT + 1) {}
                }
                figcaption #chart-cap {
                    (total) " tasks finished in 30-second bars; the highest bar is " (highest) "."
                    @if snapshot.since > first as f64 {
                        " Counted since " (time(snapshot.since)) " (the dashboards keep what they count in the backend)."
                    }
                }
            }
        }
    }
}

fn workers_table(workers: &[WorkerInfo], now: f64, heading: bool) -> Markup {
    let table = html! {
        @if workers.is_empty() {
            p.quiet { "No worker is running (none has a live heartbeat)." }
        } @else {
            div.scroll {
                table {
                    thead {
                        tr {
                            th scope="col" { "Worker" }
                            th scope="col" { "Host" }
                            th.n scope="col" { "PID" }
                            th.n scope="col" { "Slots" }
                            th.n scope="col" { "Running" }
                            th.n scope="col" { "Processed" }
                            th scope="col" { "Started" }
                            th.n scope="col" { "Heartbeat" }
                            th scope="col" { "Version" }
                        }
                    }
                    tbody {
                        @for worker in workers {
                            tr {
                                td.mono { (worker.id) }
                                td { (worker.host) }
                                td.n { (worker.pid) }
                                td.n { (worker.concurrency) }
                                td.n { (worker.running) }
                                td.n { (worker.processed) }
                                td { (time(worker.started_at)) }
                                td.n { (age(now - worker.heartbeat_at)) " ago" }
                                td { (worker.version) }
                            }
                        }
                    }
                }
            }
        }
    };
    if heading {
        html! {
            section aria-labelledby="workers-h" {
                h2 #workers-h { "Workers" }
                (table)
            }
        }
    } else {
        // The workers page: what each one runs now, and which tasks it can run.
        html! {
            (table)
            @if !workers.is_empty() {
                h2 { "Running now" }
                @if workers.iter().all(|w| w.running_tasks.is_empty()) {
                    p.quiet { "No task is running." }
                } @else {
                    ul.running {
                        @for worker in workers {
                            @for uuid in &worker.running_tasks {
                                li { span.mono { a href={ "tasks/" (uuid) } { (uuid) } } " on " span.mono { (worker.id) } }
                            }
                        }
                    }
                }
                h2 { "Registered tasks" }
                dl.registered {
                    @for worker in workers {
                        dt.mono { (worker.id) }
                        dd {
                            @if worker.tasks.is_empty() {
                                span.problem { "none listed: its binary registers no task (a tasks crate it never names?), or it runs a qtasks older than this list" }
                            } @else {
                                span.mono { (worker.tasks.join(", ")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Workers

pub(crate) async fn workers(State(shared): State<Shared>) -> Response {
    let snapshot = shared.live().await.ready().await;
    let body = html! {
        h1 { "Workers" }
        div #region-workers { (workers_region(&snapshot)) }
    };
    page(
        &shared,
        Section::Workers,
        "Workers",
        Some("events?view=workers"),
        body,
    )
}

pub(crate) fn workers_region(snapshot: &Snapshot) -> Markup {
    match &snapshot.stats {
        Ok(stats) => workers_table(&stats.workers, stats.at, false),
        Err(error) => html! { p.problem role="alert" { (error) } },
    }
}

// ------------------------------------------------------------------------------------------
// Tasks

/// The tasks page's filters, as the form sends them.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct TaskFilter {
    /// A status, `delayed` ([`DELAYED`]), or empty for any.
    #[serde(default)]
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) since: String,
    #[serde(default)]
    pub(crate) until: String,
    #[serde(default)]
    pub(crate) after: String,
    #[serde(default)]
    pub(crate) uuid: String,
    #[serde(default)]
    pub(crate) limit: Option<usize>,
}

/// The `status` filter's value for waiting tasks whose due time is ahead.
pub(crate) const DELAYED: &str = "delayed";

/// A filter value the page cannot use, named.
#[derive(Debug)]
pub(crate) struct BadFilter(pub(crate) String);

/// A time as the form sends it (`2026-12-01T10:30`, UTC) or as Unix seconds.
fn parse_time(field: &str, text: &str) -> Result<Option<f64>, BadFilter> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(secs) = text.parse::<f64>() {
        return Ok(Some(secs));
    }
    text.parse::<jiff::civil::DateTime>()
        .ok()
        .and_then(|civil| civil.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|zoned| Some(zoned.timestamp().as_millisecond() as f64 / 1000.0))
        .ok_or_else(|| {
            BadFilter(format!(
                "`{text}` is not a time for `{field}`: write 2026-12-01T10:30 (UTC) or Unix seconds"
            ))
        })
}

impl TaskFilter {
    pub(crate) fn query(&self) -> Result<RecordQuery, BadFilter> {
        let mut query = RecordQuery::default().limit(self.limit.unwrap_or(50));
        if self.delayed_only() {
            // Waiting tasks, narrowed to the delayed ones by `narrow`.
            query = query.status(TaskStatus::New);
        } else if !self.status.is_empty() {
            let status = self
                .status
                .parse::<TaskStatus>()
                .map_err(|e| BadFilter(e.to_string()))?;
            query = query.status(status);
        }
        if !self.name.trim().is_empty() {
            query = query.task_name(self.name.trim());
        }
        query = query.between(
            parse_time("since", &self.since)?,
            parse_time("until", &self.until)?,
        );
        if !self.after.is_empty() {
            let cursor = self
                .after
                .parse::<RecordCursor>()
                .map_err(|e| BadFilter(e.to_string()))?;
            query = query.after(cursor);
        }
        Ok(query)
    }

    /// Whether the filter asks for delayed tasks only (`status=delayed`): waiting tasks whose
    /// due time (set when they were added with a delay or a time to run) is still ahead, a
    /// view the storages' queries do not have (see `narrow`).
    pub(crate) fn delayed_only(&self) -> bool {
        self.status == DELAYED
    }

    /// What the storage's page holds that the filter leaves out: for `status=delayed`, the
    /// waiting tasks that may run now. The page may then be shorter than its limit while
    /// older pages hold more (the pager goes on), and its total is no longer known.
    pub(crate) fn narrow(&self, page: &mut RecordPage) {
        if self.delayed_only() {
            let now = unix_now();
            let before = page.records.len();
            page.records
                .retain(|record| record.run_at.is_some_and(|due| due > now));
            page.total = None;
            // A page thinned out (perhaps to nothing) with more behind it says so, and the
            // pager offers to keep looking rather than implying the older pages are all.
            if page.records.len() < before && page.next.is_some() {
                page.scan_incomplete = true;
            }
        }
    }

    /// The query string of these filters (no cursor), to link pages and the event stream.
    pub(crate) fn query_string(&self) -> String {
        let mut parts = Vec::new();
        for (key, value) in [
            ("status", &self.status),
            ("name", &self.name),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !value.is_empty() {
                parts.push(format!("{key}={}", query_value(value)));
            }
        }
        parts.join("&")
    }
}

pub(crate) async fn tasks(
    State(shared): State<Shared>,
    Query(filter): Query<TaskFilter>,
    Query(flash): Query<Flash>,
) -> Response {
    // A uuid searched for: its page, if it is one.
    let wanted = filter.uuid.trim();
    if !wanted.is_empty() {
        return match wanted.parse::<Uuid>() {
            Ok(uuid) => Redirect::to(&crate::mount::path(&format!("tasks/{uuid}"))).into_response(),
            Err(_) => problem(
                &shared,
                StatusCode::BAD_REQUEST,
                "Not a task id",
                &format!("`{wanted}` is not a task uuid (it looks like 6f1c2a4e-...)."),
            ),
        };
    }
    let query = match filter.query() {
        Ok(query) => query,
        Err(BadFilter(why)) => {
            return problem(&shared, StatusCode::BAD_REQUEST, "Bad filter", &why);
        }
    };
    let mut page_result = shared.app.records().list(&query).await;
    if let Ok(page) = &mut page_result {
        filter.narrow(page);
    }
    let first_page = query.after.is_none();
    let body = html! {
        h1 { "Tasks" }
        (flash.render())
        (filter_form(&filter))
        @match page_result {
            Ok(found) => {
                @if !shared.read_only { (crate::bulk::controls(&shared, true)) }
                div #region-task-rows { (task_rows(&found, &filter, !shared.read_only)) }
            }
            Err(error) => {
                p.problem role="alert" { "Listing failed: " (ErrorChain(&error).to_string()) }
            }
        }
    };
    // Only the first page follows the newest tasks live; older pages stay where they are.
    let live = first_page.then(|| {
        let query = filter.query_string();
        if query.is_empty() {
            "events?view=tasks".to_owned()
        } else {
            format!("events?view=tasks&{query}")
        }
    });
    page(&shared, Section::Tasks, "Tasks", live.as_deref(), body)
}

fn filter_form(filter: &TaskFilter) -> Markup {
    html! {
        form.filters method="get" action="tasks" role="search" {
            label {
                "Status "
                select name="status" {
                    option value="" { "any" }
                    @for status in TaskStatus::ALL {
                        option selected[filter.status == status.as_str()] { (status.as_str()) }
                    }
                    option value=(DELAYED) selected[filter.delayed_only()] { "new, due later (delayed)" }
                }
            }
            label { "Task " input name="name" value=(filter.name) placeholder="any name" autocomplete="off"; }
            label { "Added from (UTC) " input type="datetime-local" step="1" name="since" value=(filter.since); }
            label { "to " input type="datetime-local" step="1" name="until" value=(filter.until); }
            button type="submit" { "Filter" }
            " "
            a href="tasks" { "Clear" }
        }
        form.filters method="get" action="tasks" role="search" {
            label { "Find by uuid " input name="uuid" size="38" autocomplete="off" spellcheck="false"; }
            button type="submit" { "Open" }
        }
    }
}

/// A record's arguments in one short line (at most 60 characters).
fn arguments_line(record: &TaskRecord) -> String {
    let mut args = serde_json::to_string(&record.args).unwrap_or_default();
    if !record.kwargs.is_empty() {
        args.push(' ');
        args.push_str(&serde_json::to_string(&record.kwargs).unwrap_or_default());
    }
    if args.chars().count() > 60 {
        args = args.chars().take(59).collect::<String>() + "…";
    }
    args
}

/// The table of a page of tasks, with its pager: the live region of the tasks page.
/// The tasks table; with `selectable`, each row has the bulk form's checkbox (see `bulk`).
pub(crate) fn task_rows(found: &RecordPage, filter: &TaskFilter, selectable: bool) -> Markup {
    let now = unix_now();
    let query = filter.query_string();
    let sep = if query.is_empty() { "" } else { "&" };
    html! {
        @if let Some(total) = found.total {
            p.quiet { (total) " matching records." }
        }
        @if found.records.is_empty() {
            p.quiet { "No task matches." }
        } @else {
            div.scroll {
                table.tasks {
                    thead {
                        tr {
                            @if selectable { th scope="col" { span.visually-hidden { "Select" } } }
                            th scope="col" { "Task" }
                            th scope="col" { "Name" }
                            th scope="col" { "Status" }
                            th.n scope="col" { "Priority" }
                            th scope="col" { "Added" }
                            th scope="col" { "Updated" }
                            th scope="col" { "Arguments" }
                        }
                    }
                    tbody {
                        @for record in &found.records {
                            tr {
                                @if selectable {
                                    td { (crate::bulk::checkbox("uuid", &record.uuid.to_string(), &format!("select task {}", record.uuid))) }
                                }
                                td.mono { a href={ "tasks/" (record.uuid) } title=(record.uuid) { (short(record.uuid)) } }
                                td { (record.task_name) }
                                td {
                                    (status_badge(record.status))
                                    // A delayed task: when it is due.
                                    @if let (TaskStatus::New, Some(due)) = (record.status, record.run_at.filter(|due| *due > now)) {
                                        " " span.quiet { "due " (time(due)) }
                                    }
                                }
                                td.n { (record.priority) }
                                td { (time(record.created_at)) }
                                td { (time(record.updated_at)) }
                                td.mono.args { (arguments_line(record)) }
                            }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if !filter.after.is_empty() {
                (link(&format!("tasks?{query}"), "« Newest"))
            }
            @if let Some(next) = found.next {
                @let href = format!("tasks?{query}{sep}after={next}");
                @if found.scan_incomplete {
                    span.quiet { "Looked through " (found.scanned) " records for this page. " }
                    (link(&href, "Keep looking »"))
                } @else {
                    (link(&href, "Older »"))
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// One task

pub(crate) async fn task(
    State(shared): State<Shared>,
    Path(uuid): Path<String>,
    Query(flash): Query<Flash>,
) -> Response {
    let Ok(uuid) = uuid.parse::<Uuid>() else {
        return problem(
            &shared,
            StatusCode::BAD_REQUEST,
            "Not a task id",
            &format!("`{uuid}` is not a task uuid."),
        );
    };
    let record = match shared.app.get(uuid).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            return problem(
                &shared,
                StatusCode::NOT_FOUND,
                "No such task",
                &format!("Task {uuid} does not exist (or its record has expired)."),
            );
        }
        Err(error) => {
            return problem(
                &shared,
                StatusCode::SERVICE_UNAVAILABLE,
                "The backend could not be read",
                &ErrorChain(&error).to_string(),
            );
        }
    };
    let chain = retry_chain(&shared, &record).await;
    let body = html! {
        h1 { (record.task_name) " " span.mono.quiet { (uuid) } }
        (flash.render())
        div #region-task { (task_region(&record)) }
        @if chain.len() > 1 {
            section aria-labelledby="chain-h" {
                h2 #chain-h { "Attempts" }
                ol.chain {
                    @for (attempt, status) in &chain {
                        li {
                            @if *attempt == uuid {
                                strong aria-current="true" { (attempt) }
                            } @else {
                                (link(&format!("tasks/{attempt}"), &attempt.to_string()))
                            }
                            " "
                            @match status {
                                Some(status) => { (status_badge(*status)) }
                                None => { span.quiet { "(record gone)" } }
                            }
                        }
                    }
                }
            }
        }
        (actions(&shared, &record))
    };
    let live = (!record.status.is_final()).then(|| format!("events?view=task&uuid={uuid}"));
    page(
        &shared,
        Section::Tasks,
        &record.task_name,
        live.as_deref(),
        body,
    )
}

/// Every attempt of the task, first to last, by the records' links (at most 50).
async fn retry_chain(shared: &Shared, record: &TaskRecord) -> Vec<(Uuid, Option<TaskStatus>)> {
    let mut before = Vec::new();
    let mut parent = record.retry_parent_uuid;
    while let Some(uuid) = parent.filter(|_| before.len() < 25) {
        let found = shared.app.get(uuid).await.ok().flatten();
        before.push((uuid, found.as_ref().map(|r| r.status)));
        parent = found.and_then(|r| r.retry_parent_uuid);
    }
    before.reverse();
    before.push((record.uuid, Some(record.status)));
    let mut child = record.retry_child_uuid;
    let mut after = 0;
    while let Some(uuid) = child.filter(|_| after < 25) {
        after += 1;
        let found = shared.app.get(uuid).await.ok().flatten();
        before.push((uuid, found.as_ref().map(|r| r.status)));
        child = found.and_then(|r| r.retry_child_uuid);
    }
    before
}

/// The parts of a task's page that change while it runs.
pub(crate) fn task_region(record: &TaskRecord) -> Markup {
    html! {
        dl.fields {
            dt { "Status" } dd { (status_badge(record.status)) }
            dt { "Priority" } dd { (record.priority) }
            dt { "Added" } dd { (time(record.created_at)) }
            dt { "Updated" } dd { (time(record.updated_at)) }
            @if let Some(run_at) = record.run_at {
                dt { "Due" } dd { (time(run_at)) }
            }
            @if let Some(started) = record.started_at {
                dt { "Started" } dd { (time(started)) }
            }
            @if let Some(runtime) = record.runtime() {
                dt { "Runtime" } dd { (runtime_text(runtime)) }
            }
            @if let Some(queue) = &record.queue {
                dt { "Queue" } dd.mono { (queue) }
            }
            @if record.hand_backs > 0 {
                dt { "Handed back" } dd { (record.hand_backs) " time(s) by workers that do not run it" }
            }
            @if let Some(worker) = &record.worker {
                dt { "Worker" } dd.mono { (worker) }
            }
            @if let Some(progress) = &record.progress {
                dt { "Progress" } dd.mono { (progress.to_string()) }
            }
            @if let Some(group) = record.group_uuid {
                dt { "Group" } dd.mono { (group) }
            }
            @if let Some(left) = record.retry {
                dt { "Retries left" } dd { (left) }
            }
            @if let Some(trace) = &record.traceparent {
                dt { "Trace" } dd.mono { (trace) }
            }
        }
        h2 { "Arguments" }
        pre.code aria-label="Positional arguments" { (json_pretty(&record.args)) }
        @if !record.kwargs.is_empty() {
            h2 { "Keyword arguments" }
            pre.code { (json_pretty(&record.kwargs)) }
        }
        @match record.status {
            TaskStatus::Success => {
                h2 { "Result" }
                pre.code { (json_pretty(&record.returning)) }
            }
            TaskStatus::Error | TaskStatus::Retry => {
                h2 { "Error" }
                pre.code.error { (record.traceback.as_deref().unwrap_or("(no reason recorded)")) }
            }
            TaskStatus::Cancel => {
                h2 { "Cancelled" }
                pre.code { (record.cancel_reason.as_deref().unwrap_or("(no reason given)")) }
            }
            _ => {
                // A stream task's items, as they arrive.
                @if let Some(serde_json::Value::Array(items)) = &record.returning {
                    h2 { "Items so far (" (items.len()) ")" }
                    ol.items {
                        @for item in items {
                            li { code { (item.to_string()) } }
                        }
                    }
                }
            }
        }
        @for (field, raw) in &record.unreadable {
            p.problem { "The stored field " code { (field) } " could not be read: " code { (raw) } }
        }
    }
}

/// One button of a table row's actions: a form posting `field` (the row's name or id) and the
/// CSRF token to `action`.
fn row_action(
    shared: &Shared,
    action: &str,
    (field, value): (&str, &str),
    label: &str,
    class: &str,
) -> Markup {
    html! {
        form method="post" action=(action) {
            (csrf_field(shared))
            input type="hidden" name=(field) value=(value);
            button type="submit" class=(class) { (label) }
        }
    }
}

fn csrf_field(shared: &Shared) -> Markup {
    html! { input type="hidden" name="csrf" value=(shared.csrf); }
}

fn actions(shared: &Shared, record: &TaskRecord) -> Markup {
    let uuid = record.uuid;
    let json = format!("api/v1/tasks/{uuid}");
    if shared.read_only {
        return html! { p.quiet { "JSON: " (link(&json, &json)) } };
    }
    let retriable = matches!(record.status, TaskStatus::Error | TaskStatus::Cancel)
        && record.retry_child_uuid.is_none();
    html! {
        section.actions aria-labelledby="actions-h" {
            h2 #actions-h { "Actions" }
            @if !record.status.is_final() {
                form method="post" action={ "tasks/" (uuid) "/cancel" } {
                    (csrf_field(shared))
                    label { "Reason " input name="reason" value="cancelled from the dashboard"; }
                    " "
                    button.danger #cancel type="submit" { "Cancel task" }
                }
            }
            @if retriable {
                form method="post" action={ "tasks/" (uuid) "/retry" } {
                    (csrf_field(shared))
                    button #retry type="submit" { "Retry as a new attempt" }
                }
            }
            @if record.status.is_final() {
                form method="post" action={ "tasks/" (uuid) "/delete" } {
                    (csrf_field(shared))
                    button.danger #delete type="submit" { "Delete record" }
                }
            }
            p.quiet { "JSON: " (link(&json, &json)) }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Schedules

/// The schedules the workers recorded, and those of this process that no worker recorded yet.
async fn schedule_list(shared: &Shared) -> qtasks_core::Result<Vec<ScheduleInfo>> {
    let mut schedules = shared.app.schedules().recorded().await?;
    for registered in shared.app.schedules().registered() {
        if !schedules.iter().any(|s| s.name == registered.name) {
            schedules.push(registered);
        }
    }
    schedules.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(schedules)
}

pub(crate) async fn schedules(
    State(shared): State<Shared>,
    Query(flash): Query<Flash>,
) -> Response {
    let schedules = schedule_list(&shared).await;
    let body = html! {
        h1 { "Schedules" }
        p.quiet {
            "What the workers fire, when next, and their last firing. A paused schedule's slots "
            "pass without firing; running one now adds its task once and leaves its slots as they are."
        }
        (flash.render())
        @match schedules {
            Ok(schedules) if schedules.is_empty() => {
                p.quiet { "No schedule: a worker records its schedules when it starts." }
            }
            Ok(schedules) => { (schedules_table(&shared, &schedules)) }
            Err(error) => { p.problem role="alert" { (ErrorChain(&error).to_string()) } }
        }
    };
    page(&shared, Section::Schedules, "Schedules", None, body)
}

fn schedules_table(shared: &Shared, schedules: &[ScheduleInfo]) -> Markup {
    html! {
        div.scroll {
            table.schedules {
                thead {
                    tr {
                        th scope="col" { "Schedule" }
                        th scope="col" { "Task" }
                        th scope="col" { "When" }
                        th scope="col" { "Next" }
                        th scope="col" { "Last fired" }
                        th scope="col" { "State" }
                        @if !shared.read_only { th scope="col" { "Actions" } }
                    }
                }
                tbody {
                    @for schedule in schedules {
                        tr {
                            td.mono { (schedule.name) }
                            td.mono { (schedule.task) }
                            td { (schedule.when) }
                            td { @match schedule.next_at { Some(at) => (time(at)), None => "-" } }
                            td {
                                @match (schedule.last_fired_at, schedule.last_uuid) {
                                    (Some(at), Some(uuid)) => { a href={ "tasks/" (uuid) } { (time(at)) } }
                                    (Some(at), None) => { (time(at)) }
                                    _ => "never"
                                }
                            }
                            td { @if schedule.paused { "paused" } @else { "firing" } }
                            @if !shared.read_only {
                                td.row-actions {
                                    @let (toggle, label, class) = if schedule.paused {
                                        ("resume", "Resume", "")
                                    } else {
                                        ("pause", "Pause", "danger")
                                    };
                                    @for (action, label, class) in [(toggle, label, class), ("run", "Run now", "")] {
                                        (row_action(shared, &format!("schedules/{action}"), ("name", &schedule.name), label, class))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Dead letters

pub(crate) async fn dead(State(shared): State<Shared>, Query(flash): Query<Flash>) -> Response {
    let letters = shared
        .app
        .dead_letters()
        .list(crate::DEAD_LETTERS_MAX)
        .await;
    let body = html! {
        h1 { "Dead letters" }
        p.quiet {
            "Queue entries that could not run (not a task's failure: those are tasks with status "
            code { "error" } "). Put one back in the queue, or drop it."
        }
        (flash.render())
        @match letters {
            Ok(letters) => {
                @if !shared.read_only && !letters.is_empty() { (crate::bulk::controls(&shared, false)) }
                (dead_table(&shared, &letters))
            }
            Err(error) => { p.problem role="alert" { (ErrorChain(&error).to_string()) } }
        }
    };
    page(&shared, Section::Dead, "Dead letters", None, body)
}

pub(crate) async fn queues(State(shared): State<Shared>, Query(flash): Query<Flash>) -> Response {
    let queues = shared.app.queues().list().await;
    let body = html! {
        h1 { "Queues" }
        p.quiet {
            "Each named queue's waiting and delayed tasks. A paused queue keeps its tasks: no "
            "worker takes one until it is resumed."
        }
        (flash.render())
        @match queues {
            Ok(queues) => { (queues_table(&shared, &queues)) }
            Err(error) => { p.problem role="alert" { (ErrorChain(&error).to_string()) } }
        }
    };
    page(&shared, Section::Queues, "Queues", None, body)
}

fn queues_table(
    shared: &Shared,
    queues: &std::collections::BTreeMap<String, qtasks_core::stats::QueueNumbers>,
) -> Markup {
    html! {
        div.scroll {
            table {
                thead {
                    tr {
                        th scope="col" { "Queue" }
                        th.n scope="col" { "Waiting" }
                        th.n scope="col" { "Delayed" }
                        th scope="col" { "State" }
                        @if !shared.read_only { th scope="col" { "Actions" } }
                    }
                }
                tbody {
                    @for (name, numbers) in queues {
                        tr {
                            td.mono { (name) }
                            td.n { (numbers.waiting) }
                            td.n { (numbers.delayed) }
                            td { @if numbers.paused { "paused" } @else { "taking tasks" } }
                            @if !shared.read_only { td.row-actions {
                                @let (action, label, class) = if numbers.paused {
                                    ("resume", "Resume", "")
                                } else {
                                    ("pause", "Pause", "danger")
                                };
                                (row_action(shared, &format!("queues/{action}"), ("name", name), label, class))
                            } }
                        }
                    }
                }
            }
        }
    }
}

fn dead_table(shared: &Shared, letters: &[DeadLetter]) -> Markup {
    if letters.is_empty() {
        return html! { p.quiet { "No dead letters." } };
    }
    html! {
        div.scroll {
            table {
                thead {
                    tr {
                        @if !shared.read_only { th scope="col" { span.visually-hidden { "Select" } } }
                        th scope="col" { "Id" }
                        th scope="col" { "When" }
                        th scope="col" { "Reason" }
                        th scope="col" { "Entry" }
                        @if !shared.read_only { th scope="col" { "Actions" } }
                    }
                }
                tbody {
                    @for letter in letters {
                        tr {
                            @if !shared.read_only {
                                td { (crate::bulk::checkbox("id", &letter.short_id(), &format!("select dead letter {}", letter.short_id()))) }
                            }
                            td.mono { (letter.short_id()) }
                            td { (time(letter.at)) }
                            td { (letter.reason) }
                            td.mono.args { (letter.entry) }
                            @if !shared.read_only { td.row-actions {
                                @for (action, label, class) in [("requeue", "Requeue", ""), ("drop", "Drop", "danger")] {
                                    (row_action(shared, &format!("dead/{action}"), ("id", &letter.id), label, class))
                                }
                            } }
                        }
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Login

#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

pub(crate) async fn login_page(State(shared): State<Shared>) -> Response {
    login_form(&shared, None)
}

fn login_form(shared: &Shared, problem_text: Option<&'static str>) -> Response {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(text) = problem_text {
            p.problem role="alert" { (text) }
        }
        @if shared.token.is_none() {
            p { "This dashboard needs no token: it listens on this machine only. " a href=(crate::mount::home()) { "Open it" } "." }
        } @else {
            form.login method="post" action="login" {
                label { "Token " input type="password" name="token" autocomplete="current-password" required autofocus; }
                " "
                button type="submit" { "Sign in" }
            }
            p.quiet {
                "The token the server was started with (" code { "--token" } " or " code { "QTASKS_WEB_TOKEN" } ")."
            }
        }
    };
    page(shared, Section::Login, "Sign in", None, body)
}

pub(crate) async fn login(
    State(shared): State<Shared>,
    axum::Extension(caller): axum::Extension<crate::security::Caller>,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let Some(expected) = shared.token.as_deref() else {
        return Redirect::to(&crate::mount::home()).into_response();
    };
    if !crate::security::constant_time_eq(form.token.as_bytes(), expected.as_bytes()) {
        tracing::info!(who = %caller, "dashboard login refused: not the token");
        let mut response = login_form(&shared, Some("That is not the token."));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    tracing::info!(who = %caller, "dashboard login");
    // The token's HMAC, not the token: see `security`.
    let cookie =
        crate::security::login_cookie(crate::security::cookie_value(&shared.cookie_key, expected));
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to(&crate::mount::home()),
    )
        .into_response()
}

/// A run's length: milliseconds under a second (`12.3 ms`), else seconds (`4.2 s`).
fn runtime_text(runtime: std::time::Duration) -> String {
    let seconds = runtime.as_secs_f64();
    if seconds < 1.0 {
        format!("{:.1} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.1} s")
    }
}
