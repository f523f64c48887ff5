//! The dashboard's pages, rendered on the server: overview, tasks, a task, workers, dead
//! letters, and the login form. Each page names its live regions (`id="region-..."`); the
//! event stream of [`live`](crate::live) sends new HTML for them as the numbers change.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use qtasks_core::backend::{ErrorChain, unix_now};
use qtasks_core::records::{RecordCursor, RecordPage, RecordQuery};
use qtasks_core::stats::{DeadLetter, Stats, WorkerInfo};
use qtasks_core::{TaskRecord, TaskStatus, Uuid};
use serde::Deserialize;

use crate::Shared;
use crate::html::{Html, age, query_value, timestamp};
use crate::live::{BUCKET_SECS, BUCKETS, Snapshot};

/// The sections of the navigation bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Overview,
    Tasks,
    Workers,
    Dead,
    Login,
}

const SECTIONS: [(Section, &str, &str); 4] = [
    (Section::Overview, "/", "Overview"),
    (Section::Tasks, "/tasks", "Tasks"),
    (Section::Workers, "/workers", "Workers"),
    (Section::Dead, "/dead", "Dead letters"),
];

/// A whole page around `body`.
pub(crate) fn page(
    shared: &Shared,
    section: Section,
    title: &str,
    live: Option<&str>,
    body: &Html,
) -> Response {
    let mut html = Html::new();
    html.raw("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .raw("<meta name=\"color-scheme\" content=\"light dark\"><title>")
        .text(title)
        .raw(" · qtasks</title>")
        .raw("<link rel=\"stylesheet\" href=\"/assets/app.css\">")
        .raw("<link rel=\"icon\" href=\"/assets/icon.svg\" type=\"image/svg+xml\">")
        .raw("<script src=\"/assets/app.js\" defer></script></head><body");
    if let Some(live) = live {
        html.raw(" data-live=\"").text(live).raw("\"");
    }
    html.raw("><a class=\"skip\" href=\"#main\">Skip to content</a>")
        .raw("<header><nav aria-label=\"Sections\"><span class=\"brand\">qtasks <span class=\"app\">")
        .text(&shared.app.name())
        .raw("</span></span>");
    if section != Section::Login {
        for (each, href, label) in SECTIONS {
            html.raw("<a href=\"").raw(href).raw("\"");
            if each == section {
                html.raw(" aria-current=\"page\"");
            }
            html.raw(">").raw(label).raw("</a>");
        }
    }
    html.raw("</nav></header><main id=\"main\" tabindex=\"-1\">")
        .html(body)
        .raw("</main><footer><span>qtasks ")
        .raw(env!("CARGO_PKG_VERSION"))
        .raw("</span>");
    if live.is_some() {
        html.raw(" · <span id=\"live-state\" role=\"status\">live updates on</span>");
    }
    html.raw("</footer></body></html>");
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html.into_string(),
    )
        .into_response()
}

/// A page that says what went wrong, with the status code it deserves.
pub(crate) fn problem(shared: &Shared, status: StatusCode, title: &str, detail: &str) -> Response {
    let mut body = Html::new();
    body.raw("<h1>")
        .text(title)
        .raw("</h1><p class=\"problem\" role=\"alert\">")
        .text(detail)
        .raw("</p><p><a href=\"/tasks\">Back to the tasks</a></p>");
    let mut response = page(shared, Section::Tasks, title, None, &body);
    *response.status_mut() = status;
    response
}

/// What an action reports back after its redirect (a fixed set: nothing the URL says is shown).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Flash {
    done: Option<String>,
}

impl Flash {
    fn render(&self, html: &mut Html) {
        let message = match self.done.as_deref() {
            Some("cancelled") => "The task was cancelled (or asked to stop, if it was running).",
            Some("not-cancelled") => "The task had ended already; nothing was cancelled.",
            Some("retried") => "A new attempt was added; this is it.",
            Some("deleted") => "The task's record was deleted.",
            Some("requeued") => "The dead letter was put back in the queue.",
            Some("dropped") => "The dead letter was dropped.",
            Some("gone") => "That dead letter was not there any more.",
            _ => return,
        };
        html.raw("<p class=\"notice\" role=\"status\">")
            .raw(message)
            .raw("</p>");
    }
}

fn status_badge(html: &mut Html, status: TaskStatus) {
    html.raw("<span class=\"status s-")
        .raw(status.as_str())
        .raw("\">")
        .raw(status.as_str())
        .raw("</span>");
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
    let mut body = Html::new();
    body.raw("<h1>Overview</h1>");
    flash.render(&mut body);
    for (id, region) in overview_regions(&snapshot) {
        body.raw("<div id=\"")
            .raw(id)
            .raw("\">")
            .html(&region)
            .raw("</div>");
    }
    page(
        &shared,
        Section::Overview,
        "Overview",
        Some("/events?view=overview"),
        &body,
    )
}

/// The live parts of the overview.
pub(crate) fn overview_regions(snapshot: &Snapshot) -> Vec<(&'static str, Html)> {
    let stats = match &snapshot.stats {
        Ok(stats) => stats,
        Err(error) => {
            let mut html = Html::new();
            html.raw("<p class=\"problem\" role=\"alert\">The backend could not be read: ")
                .text(error)
                .raw("</p>");
            return vec![("region-counts", html)];
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

fn counts(stats: &Stats) -> Html {
    let mut html = Html::new();
    let Some(queue) = &stats.queue else {
        html.raw("<p>This backend keeps no queue numbers.</p>");
        return html;
    };
    html.raw(
        "<section aria-labelledby=\"counts-h\"><h2 id=\"counts-h\">Queue</h2><dl class=\"cards\">",
    );
    let mut card =
        |label: &'static str, value: String, href: Option<&'static str>, class: &'static str| {
            html.raw("<div class=\"card ")
                .raw(class)
                .raw("\"><dt>")
                .raw(label)
                .raw("</dt><dd>");
            match href {
                Some(href) => {
                    html.raw("<a href=\"")
                        .raw(href)
                        .raw("\">")
                        .text(&value)
                        .raw("</a>");
                }
                None => {
                    html.text(&value);
                }
            }
            html.raw("</dd></div>");
        };
    card(
        "Waiting",
        queue.waiting_total().to_string(),
        Some("/tasks?status=new"),
        "",
    );
    card("Delayed", queue.delayed.to_string(), None, "");
    card(
        "Running",
        queue.running.to_string(),
        Some("/tasks?status=process"),
        "c-process",
    );
    card(
        "Success",
        queue.finished.success.to_string(),
        Some("/tasks?status=success"),
        "c-success",
    );
    card(
        "Error",
        queue.finished.error.to_string(),
        Some("/tasks?status=error"),
        "c-error",
    );
    card(
        "Cancelled",
        queue.finished.cancel.to_string(),
        Some("/tasks?status=cancel"),
        "c-cancel",
    );
    card(
        "Retried",
        queue.finished.retry.to_string(),
        Some("/tasks?status=retry"),
        "",
    );
    card(
        "Dead letters",
        queue.dead_letters.to_string(),
        Some("/dead"),
        "",
    );
    card(
        "Per second (1 min)",
        format!("{:.1}", queue.per_second()),
        None,
        "",
    );
    card(
        "Oldest waiting",
        queue
            .oldest_waiting_secs
            .map_or_else(|| "-".to_owned(), age),
        None,
        "",
    );
    html.raw("</dl>");
    html.raw("<h3>Waiting by priority</h3>");
    if queue.waiting.is_empty() {
        html.raw("<p class=\"quiet\">Nothing waits.</p>");
    } else {
        html.raw("<div class=\"scroll\"><table class=\"narrow\"><thead><tr><th scope=\"col\">Priority</th><th scope=\"col\" class=\"n\">Waiting</th></tr></thead><tbody>");
        for (priority, count) in &queue.waiting {
            html.raw("<tr><td>")
                .num(priority)
                .raw("</td><td class=\"n\">")
                .num(count)
                .raw("</td></tr>");
        }
        html.raw("</tbody></table></div>");
    }
    html.raw("</section>");
    html
}

/// The throughput of the last 15 minutes as SVG bars (no script needed to see it).
fn chart(snapshot: &Snapshot) -> Html {
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
    let mut html = Html::new();
    html.raw(
        "<section aria-labelledby=\"chart-h\"><h2 id=\"chart-h\">Throughput, last 15 minutes</h2>",
    )
    .raw("<figure><svg class=\"chart\" viewBox=\"0 0 ")
    .num(WIDTH)
    .raw(" ")
    .num(HEIGHT + 4)
    .raw("\" role=\"img\" aria-labelledby=\"chart-cap\" preserveAspectRatio=\"none\">");
    let bar = WIDTH / BUCKETS as u64;
    for (i, (start, count)) in counts.iter().enumerate() {
        let height = (count * HEIGHT).div_ceil(peak);
        html.raw("<rect class=\"bar\" x=\"")
            .num(i as u64 * bar + 1)
            .raw("\" y=\"")
            .num(HEIGHT - height)
            .raw("\" width=\"")
            .num(bar - 2)
            .raw("\" height=\"")
            .num(height.max(1))
            .raw("\"><title>")
            .text(&timestamp(*start as f64))
            .raw(": ")
            .num(count)
            .raw(" finished</title></rect>");
    }
    html.raw("<line class=\"axis\" x1=\"0\" x2=\"")
        .num(WIDTH)
        .raw("\" y1=\"")
        .num(HEIGHT + 1)
        .raw("\" y2=\"")
        .num(HEIGHT + 1)
        .raw("\"></line></svg><figcaption id=\"chart-cap\">")
        .num(total)
        .raw(" tasks finished in 30-second bars; the highest bar is ")
        .num(highest)
        .raw(".");
    if snapshot.since > first as f64 {
        html.raw(" Counted since this dashboard started, ")
            .time(snapshot.since)
            .raw(".");
    }
    html.raw("</figcaption></figure></section>");
    html
}

fn workers_table(workers: &[WorkerInfo], now: f64, heading: bool) -> Html {
    let mut html = Html::new();
    if heading {
        html.raw("<section aria-labelledby=\"workers-h\"><h2 id=\"workers-h\">Workers</h2>");
    }
    if workers.is_empty() {
        html.raw("<p class=\"quiet\">No worker is running (none has a live heartbeat).</p>");
    } else {
        html.raw("<div class=\"scroll\"><table><thead><tr><th scope=\"col\">Worker</th><th scope=\"col\">Host</th><th scope=\"col\" class=\"n\">PID</th><th scope=\"col\" class=\"n\">Slots</th><th scope=\"col\" class=\"n\">Running</th><th scope=\"col\" class=\"n\">Processed</th><th scope=\"col\">Started</th><th scope=\"col\" class=\"n\">Heartbeat</th><th scope=\"col\">Version</th></tr></thead><tbody>");
        for worker in workers {
            html.raw("<tr><td class=\"mono\">")
                .text(&worker.id)
                .raw("</td><td>")
                .text(&worker.host)
                .raw("</td><td class=\"n\">")
                .num(worker.pid)
                .raw("</td><td class=\"n\">")
                .num(worker.concurrency)
                .raw("</td><td class=\"n\">")
                .num(worker.running)
                .raw("</td><td class=\"n\">")
                .num(worker.processed)
                .raw("</td><td>")
                .time(worker.started_at)
                .raw("</td><td class=\"n\">")
                .text(&age(now - worker.heartbeat_at))
                .raw(" ago</td><td>")
                .text(&worker.version)
                .raw("</td></tr>");
        }
        html.raw("</tbody></table></div>");
    }
    if heading {
        html.raw("</section>");
    }
    html
}

// ------------------------------------------------------------------------------------------
// Workers

pub(crate) async fn workers(State(shared): State<Shared>) -> Response {
    let snapshot = shared.live().await.ready().await;
    let mut body = Html::new();
    body.raw("<h1>Workers</h1><div id=\"region-workers\">")
        .html(&workers_region(&snapshot))
        .raw("</div>");
    page(
        &shared,
        Section::Workers,
        "Workers",
        Some("/events?view=workers"),
        &body,
    )
}

pub(crate) fn workers_region(snapshot: &Snapshot) -> Html {
    match &snapshot.stats {
        Ok(stats) => workers_table(&stats.workers, stats.at, false),
        Err(error) => {
            let mut html = Html::new();
            html.raw("<p class=\"problem\" role=\"alert\">")
                .text(error)
                .raw("</p>");
            html
        }
    }
}

// ------------------------------------------------------------------------------------------
// Tasks

/// The tasks page's filters, as the form sends them.
#[derive(Debug, Default, Clone, Deserialize)]
pub(crate) struct TaskFilter {
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
        if !self.status.is_empty() {
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
            Ok(uuid) => Redirect::to(&format!("/tasks/{uuid}")).into_response(),
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
    let page_result = shared.app.list_tasks(&query).await;
    let mut body = Html::new();
    body.raw("<h1>Tasks</h1>");
    flash.render(&mut body);
    filter_form(&mut body, &filter);
    let first_page = query.after.is_none();
    match page_result {
        Ok(found) => {
            body.raw("<div id=\"region-task-rows\">")
                .html(&task_rows(&found, &filter))
                .raw("</div>");
        }
        Err(error) => {
            body.raw("<p class=\"problem\" role=\"alert\">Listing failed: ")
                .text(&ErrorChain(&error).to_string())
                .raw("</p>");
        }
    }
    // Only the first page follows the newest tasks live; older pages stay where they are.
    let live = first_page.then(|| {
        let query = filter.query_string();
        if query.is_empty() {
            "/events?view=tasks".to_owned()
        } else {
            format!("/events?view=tasks&{query}")
        }
    });
    page(&shared, Section::Tasks, "Tasks", live.as_deref(), &body)
}

fn filter_form(html: &mut Html, filter: &TaskFilter) {
    html.raw("<form class=\"filters\" method=\"get\" action=\"/tasks\" role=\"search\">")
        .raw("<label>Status <select name=\"status\"><option value=\"\">any</option>");
    for status in TaskStatus::ALL {
        html.raw("<option");
        if filter.status == status.as_str() {
            html.raw(" selected");
        }
        html.raw(">").raw(status.as_str()).raw("</option>");
    }
    html.raw("</select></label>")
        .raw("<label>Task <input name=\"name\" value=\"")
        .text(&filter.name)
        .raw("\" placeholder=\"any name\" autocomplete=\"off\"></label>")
        .raw("<label>Added from (UTC) <input type=\"datetime-local\" step=\"1\" name=\"since\" value=\"")
        .text(&filter.since)
        .raw("\"></label><label>to <input type=\"datetime-local\" step=\"1\" name=\"until\" value=\"")
        .text(&filter.until)
        .raw("\"></label><button type=\"submit\">Filter</button> <a href=\"/tasks\">Clear</a></form>")
        .raw("<form class=\"filters\" method=\"get\" action=\"/tasks\" role=\"search\"><label>Find by uuid <input name=\"uuid\" size=\"38\" autocomplete=\"off\" spellcheck=\"false\"></label><button type=\"submit\">Open</button></form>");
}

/// The table of a page of tasks, with its pager: the live region of the tasks page.
pub(crate) fn task_rows(found: &RecordPage, filter: &TaskFilter) -> Html {
    let mut html = Html::new();
    if let Some(total) = found.total {
        html.raw("<p class=\"quiet\">")
            .num(total)
            .raw(" matching records.</p>");
    }
    if found.records.is_empty() {
        html.raw("<p class=\"quiet\">No task matches.</p>");
    } else {
        html.raw("<div class=\"scroll\"><table class=\"tasks\"><thead><tr><th scope=\"col\">Task</th><th scope=\"col\">Name</th><th scope=\"col\">Status</th><th scope=\"col\" class=\"n\">Priority</th><th scope=\"col\">Added</th><th scope=\"col\">Updated</th><th scope=\"col\">Arguments</th></tr></thead><tbody>");
        for record in &found.records {
            let mut args = serde_json::to_string(&record.args).unwrap_or_default();
            if !record.kwargs.is_empty() {
                args.push(' ');
                args.push_str(&serde_json::to_string(&record.kwargs).unwrap_or_default());
            }
            if args.chars().count() > 60 {
                args = args.chars().take(59).collect::<String>() + "…";
            }
            html.raw("<tr><td class=\"mono\"><a href=\"/tasks/")
                .num(record.uuid)
                .raw("\" title=\"")
                .num(record.uuid)
                .raw("\">")
                .text(&short(record.uuid))
                .raw("</a></td><td>")
                .text(&record.task_name)
                .raw("</td><td>");
            status_badge(&mut html, record.status);
            html.raw("</td><td class=\"n\">")
                .num(record.priority)
                .raw("</td><td>")
                .time(record.created_at)
                .raw("</td><td>")
                .time(record.updated_at)
                .raw("</td><td class=\"mono args\">")
                .text(&args)
                .raw("</td></tr>");
        }
        html.raw("</tbody></table></div>");
    }
    html.raw("<nav class=\"pager\" aria-label=\"Pages\">");
    let query = filter.query_string();
    let sep = if query.is_empty() { "" } else { "&" };
    if !filter.after.is_empty() {
        html.link(&format!("/tasks?{query}"), "« Newest");
    }
    if let Some(next) = found.next {
        let href = format!("/tasks?{query}{sep}after={next}");
        if found.scan_incomplete {
            html.raw("<span class=\"quiet\">Looked through ")
                .num(found.scanned)
                .raw(" records for this page. </span>");
            html.link(&href, "Keep looking »");
        } else {
            html.link(&href, "Older »");
        }
    }
    html.raw("</nav>");
    html
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
    let mut body = Html::new();
    body.raw("<h1>")
        .text(&record.task_name)
        .raw(" <span class=\"mono quiet\">")
        .num(uuid)
        .raw("</span></h1>");
    flash.render(&mut body);
    body.raw("<div id=\"region-task\">")
        .html(&task_region(&record))
        .raw("</div>");
    if chain.len() > 1 {
        body.raw("<section aria-labelledby=\"chain-h\"><h2 id=\"chain-h\">Attempts</h2><ol class=\"chain\">");
        for (attempt, status) in &chain {
            body.raw("<li>");
            if *attempt == uuid {
                body.raw("<strong aria-current=\"true\">")
                    .num(attempt)
                    .raw("</strong>");
            } else {
                body.link(&format!("/tasks/{attempt}"), &attempt.to_string());
            }
            body.raw(" ");
            match status {
                Some(status) => status_badge(&mut body, *status),
                None => {
                    body.raw("<span class=\"quiet\">(record gone)</span>");
                }
            }
            body.raw("</li>");
        }
        body.raw("</ol></section>");
    }
    actions(&mut body, &shared, &record);
    let live = (!record.status.is_final()).then(|| format!("/events?view=task&uuid={uuid}"));
    page(
        &shared,
        Section::Tasks,
        &record.task_name,
        live.as_deref(),
        &body,
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
pub(crate) fn task_region(record: &TaskRecord) -> Html {
    let mut html = Html::new();
    html.raw("<dl class=\"fields\"><dt>Status</dt><dd>");
    status_badge(&mut html, record.status);
    html.raw("</dd><dt>Priority</dt><dd>")
        .num(record.priority)
        .raw("</dd><dt>Added</dt><dd>")
        .time(record.created_at)
        .raw("</dd><dt>Updated</dt><dd>")
        .time(record.updated_at)
        .raw("</dd>");
    if let Some(group) = record.group_uuid {
        html.raw("<dt>Group</dt><dd class=\"mono\">")
            .num(group)
            .raw("</dd>");
    }
    if let Some(left) = record.retry {
        html.raw("<dt>Retries left</dt><dd>").num(left).raw("</dd>");
    }
    if let Some(trace) = &record.traceparent {
        html.raw("<dt>Trace</dt><dd class=\"mono\">")
            .text(trace)
            .raw("</dd>");
    }
    html.raw("</dl><h2>Arguments</h2><pre class=\"code\" aria-label=\"Positional arguments\">")
        .text(&json_pretty(&record.args))
        .raw("</pre>");
    if !record.kwargs.is_empty() {
        html.raw("<h2>Keyword arguments</h2><pre class=\"code\">")
            .text(&json_pretty(&record.kwargs))
            .raw("</pre>");
    }
    match record.status {
        TaskStatus::Success => {
            html.raw("<h2>Result</h2><pre class=\"code\">")
                .text(&json_pretty(&record.returning))
                .raw("</pre>");
        }
        TaskStatus::Error | TaskStatus::Retry => {
            html.raw("<h2>Error</h2><pre class=\"code error\">")
                .text(
                    record
                        .traceback
                        .as_deref()
                        .unwrap_or("(no reason recorded)"),
                )
                .raw("</pre>");
        }
        TaskStatus::Cancel => {
            html.raw("<h2>Cancelled</h2><pre class=\"code\">")
                .text(
                    record
                        .cancel_reason
                        .as_deref()
                        .unwrap_or("(no reason given)"),
                )
                .raw("</pre>");
        }
        _ => {
            // A stream task's items, as they arrive.
            if let Some(serde_json::Value::Array(items)) = &record.returning {
                html.raw("<h2>Items so far (")
                    .num(items.len())
                    .raw(")</h2><ol class=\"items\">");
                for item in items {
                    html.raw("<li><code>")
                        .text(&item.to_string())
                        .raw("</code></li>");
                }
                html.raw("</ol>");
            }
        }
    }
    for (field, raw) in &record.unreadable {
        html.raw("<p class=\"problem\">The stored field <code>")
            .text(field)
            .raw("</code> could not be read: <code>")
            .text(raw)
            .raw("</code></p>");
    }
    html
}

fn csrf_field(html: &mut Html, shared: &Shared) {
    html.raw("<input type=\"hidden\" name=\"csrf\" value=\"")
        .text(&shared.csrf)
        .raw("\">");
}

fn actions(html: &mut Html, shared: &Shared, record: &TaskRecord) {
    let uuid = record.uuid;
    html.raw("<section aria-labelledby=\"actions-h\" class=\"actions\"><h2 id=\"actions-h\">Actions</h2>");
    if !record.status.is_final() {
        html.raw("<form method=\"post\" action=\"/tasks/")
            .num(uuid)
            .raw("/cancel\">");
        csrf_field(html, shared);
        html.raw("<label>Reason <input name=\"reason\" value=\"cancelled from the dashboard\"></label> <button type=\"submit\" class=\"danger\" id=\"cancel\">Cancel task</button></form>");
    }
    if matches!(record.status, TaskStatus::Error | TaskStatus::Cancel)
        && record.retry_child_uuid.is_none()
    {
        html.raw("<form method=\"post\" action=\"/tasks/")
            .num(uuid)
            .raw("/retry\">");
        csrf_field(html, shared);
        html.raw("<button type=\"submit\" id=\"retry\">Retry as a new attempt</button></form>");
    }
    if record.status.is_final() {
        html.raw("<form method=\"post\" action=\"/tasks/")
            .num(uuid)
            .raw("/delete\">");
        csrf_field(html, shared);
        html.raw(
            "<button type=\"submit\" class=\"danger\" id=\"delete\">Delete record</button></form>",
        );
    }
    html.raw("<p class=\"quiet\">JSON: ");
    html.link(
        &format!("/api/v1/tasks/{uuid}"),
        &format!("/api/v1/tasks/{uuid}"),
    );
    html.raw("</p></section>");
}

// ------------------------------------------------------------------------------------------
// Dead letters

pub(crate) async fn dead(State(shared): State<Shared>, Query(flash): Query<Flash>) -> Response {
    let mut body = Html::new();
    body.raw("<h1>Dead letters</h1><p class=\"quiet\">Queue entries that could not run (not a task's failure: those are tasks with status <code>error</code>). Put one back in the queue, or drop it.</p>");
    flash.render(&mut body);
    match shared.app.dead_letters(crate::DEAD_LETTERS_MAX).await {
        Ok(letters) => dead_table(&mut body, &shared, &letters),
        Err(error) => {
            body.raw("<p class=\"problem\" role=\"alert\">")
                .text(&ErrorChain(&error).to_string())
                .raw("</p>");
        }
    }
    page(&shared, Section::Dead, "Dead letters", None, &body)
}

fn dead_table(html: &mut Html, shared: &Shared, letters: &[DeadLetter]) {
    if letters.is_empty() {
        html.raw("<p class=\"quiet\">No dead letters.</p>");
        return;
    }
    html.raw("<div class=\"scroll\"><table><thead><tr><th scope=\"col\">When</th><th scope=\"col\">Reason</th><th scope=\"col\">Entry</th><th scope=\"col\">Actions</th></tr></thead><tbody>");
    for letter in letters {
        html.raw("<tr><td>")
            .time(letter.at)
            .raw("</td><td>")
            .text(&letter.reason)
            .raw("</td><td class=\"mono args\">")
            .text(&letter.entry)
            .raw("</td><td class=\"row-actions\">");
        for (action, label, class) in [("requeue", "Requeue", ""), ("drop", "Drop", "danger")] {
            html.raw("<form method=\"post\" action=\"/dead/")
                .raw(action)
                .raw("\">");
            csrf_field(html, shared);
            html.raw("<input type=\"hidden\" name=\"id\" value=\"")
                .text(&letter.id)
                .raw("\"><button type=\"submit\" class=\"")
                .raw(class)
                .raw("\">")
                .raw(label)
                .raw("</button></form>");
        }
        html.raw("</td></tr>");
    }
    html.raw("</tbody></table></div>");
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
    let mut body = Html::new();
    body.raw("<h1>Sign in</h1>");
    if let Some(text) = problem_text {
        body.raw("<p class=\"problem\" role=\"alert\">")
            .raw(text)
            .raw("</p>");
    }
    if shared.token.is_none() {
        body.raw("<p>This dashboard needs no token: it listens on this machine only. <a href=\"/\">Open it</a>.</p>");
    } else {
        body.raw("<form method=\"post\" action=\"/login\" class=\"login\"><label>Token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required autofocus></label> <button type=\"submit\">Sign in</button></form><p class=\"quiet\">The token the server was started with (<code>--token</code> or <code>QTASKS_WEB_TOKEN</code>).</p>");
    }
    page(shared, Section::Login, "Sign in", None, &body)
}

pub(crate) async fn login(
    State(shared): State<Shared>,
    axum::Extension(caller): axum::Extension<crate::security::Caller>,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let Some(expected) = shared.token.as_deref() else {
        return Redirect::to("/").into_response();
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
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}
