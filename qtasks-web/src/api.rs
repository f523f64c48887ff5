//! The JSON API under `/api/v1` (every page's data), and the event stream of the pages.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qtasks_core::backend::ErrorChain;
use serde::Deserialize;
use serde_json::json;

use crate::Shared;
use crate::live::{Regions, serve_events};
use crate::pages::{BadFilter, TaskFilter};

/// A backend failure as a 503 naming it.
fn unavailable(error: &qtasks_core::Error) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": ErrorChain(error).to_string() })),
    )
        .into_response()
}

fn bad_request(why: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": why }))).into_response()
}

/// The overview's data: the stats and the throughput of the last 15 minutes (`[bucket start,
/// finished]`, 30-second buckets, oldest first, since `counting_since`).
pub(crate) async fn overview(State(shared): State<Shared>) -> Response {
    let snapshot = shared.live().await.ready().await;
    match &snapshot.stats {
        Ok(stats) => Json(json!({
            "stats": stats,
            "throughput": snapshot.throughput,
            "bucket_secs": crate::live::BUCKET_SECS,
            "counting_since": snapshot.since,
        }))
        .into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": error })),
        )
            .into_response(),
    }
}

pub(crate) async fn stats(State(shared): State<Shared>) -> Response {
    match shared.app.stats().await {
        Ok(stats) => Json(stats).into_response(),
        Err(error) => unavailable(&error),
    }
}

pub(crate) async fn workers(State(shared): State<Shared>) -> Response {
    match shared.app.stats().await {
        Ok(stats) => Json(stats.workers).into_response(),
        Err(error) => unavailable(&error),
    }
}

/// A page of records: `?status=&name=&since=&until=&after=&limit=` as on the tasks page
/// (`status=delayed`: waiting tasks whose due time is ahead).
pub(crate) async fn tasks(
    State(shared): State<Shared>,
    Query(filter): Query<TaskFilter>,
) -> Response {
    let query = match filter.query() {
        Ok(query) => query,
        Err(BadFilter(why)) => return bad_request(why),
    };
    match shared.app.records().list(&query).await {
        Ok(mut page) => {
            filter.narrow(&mut page);
            Json(page).into_response()
        }
        Err(error) => unavailable(&error),
    }
}

pub(crate) async fn task(State(shared): State<Shared>, Path(uuid): Path<String>) -> Response {
    let Ok(uuid) = uuid.parse::<qtasks_core::Uuid>() else {
        return bad_request(format!("`{uuid}` is not a task uuid"));
    };
    match shared.app.get(uuid).await {
        Ok(Some(record)) => Json(record).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("task {uuid} does not exist") })),
        )
            .into_response(),
        Err(error) => unavailable(&error),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeadQuery {
    limit: Option<usize>,
}

pub(crate) async fn dead_letters(
    State(shared): State<Shared>,
    Query(query): Query<DeadQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(100).min(crate::DEAD_LETTERS_MAX);
    match shared.app.dead_letters().list(limit).await {
        Ok(letters) => Json(letters).into_response(),
        Err(error) => unavailable(&error),
    }
}

/// Each named queue's numbers (waiting, delayed, paused), by name.
pub(crate) async fn queues(State(shared): State<Shared>) -> Response {
    match shared.app.queues().list().await {
        Ok(queues) => Json(queues).into_response(),
        Err(error) => unavailable(&error),
    }
}

pub(crate) async fn schedules(State(shared): State<Shared>) -> Response {
    match shared.app.schedules().recorded().await {
        Ok(schedules) => Json(schedules).into_response(),
        Err(error) => unavailable(&error),
    }
}

/// The CSRF token an API client without the bearer token sends as `X-Qtasks-Csrf` (readable
/// only by this origin: no other site's script can fetch it).
pub(crate) async fn csrf(State(shared): State<Shared>) -> Response {
    Json(json!({ "token": shared.csrf, "header": crate::security::CSRF_HEADER })).into_response()
}

/// The event stream of a page: `?view=overview|tasks|workers|task` (with the tasks page's
/// filters, or the task's `uuid`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EventsQuery {
    #[serde(default)]
    view: String,
    #[serde(default)]
    uuid: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

pub(crate) async fn events(
    State(shared): State<Shared>,
    Query(query): Query<EventsQuery>,
) -> Response {
    let live = shared.live().await;
    let closing = shared.closing.clone();
    match query.view.as_str() {
        "overview" => serve_events(
            live.events(|snapshot| async move { crate::pages::overview_regions(&snapshot) }),
            closing,
        )
        .into_response(),
        "workers" => serve_events(
            live.events(|snapshot| async move {
                let regions: Regions =
                    vec![("region-workers", crate::pages::workers_region(&snapshot))];
                regions
            }),
            closing,
        )
        .into_response(),
        "tasks" => {
            let filter = TaskFilter {
                status: query.status,
                name: query.name,
                since: query.since,
                until: query.until,
                ..TaskFilter::default()
            };
            let list = match filter.query() {
                Ok(list) => list,
                Err(BadFilter(why)) => return bad_request(why),
            };
            let app = shared.app.clone();
            let selectable = !shared.read_only;
            let rows = live.events(move |_| {
                let (app, list, filter) = (app.clone(), list.clone(), filter.clone());
                async move {
                    match app.records().list(&list).await {
                        Ok(mut page) => {
                            filter.narrow(&mut page);
                            let rows = crate::pages::task_rows(&page, &filter, selectable);
                            vec![("region-task-rows", rows)]
                        }
                        // Keep the rows shown; the next change tries again.
                        Err(_) => Vec::new(),
                    }
                }
            });
            serve_events(rows, closing).into_response()
        }
        "task" => match query.uuid.parse() {
            Ok(uuid) => serve_events(crate::live::task_events(shared.app.clone(), uuid), closing)
                .into_response(),
            Err(_) => bad_request(format!("`{}` is not a task uuid", query.uuid)),
        },
        other => bad_request(format!(
            "`{other}` is not a view: use overview, tasks, workers or task"
        )),
    }
}
