//! The actions: cancel, retry, delete a task; requeue or drop a dead letter. Each is a POST,
//! checked against cross-site requests first ([`refuse_cross_site`]); the forms of the pages
//! get a redirect back (a page that says what happened), the JSON API gets JSON. Each is logged
//! at INFO with who asked ([`Caller`]: the peer address, and whether by token, cookie or
//! loopback), what (the action, the task's uuid or the dead letter's id) and how it ended: an
//! operator can tell afterwards who cancelled or dropped what.

use std::future::Future;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use qtasks_core::backend::ErrorChain;
use qtasks_core::{Error, Uuid};
use serde::Deserialize;
use serde_json::json;

use crate::Shared;
use crate::pages::problem;
use crate::security::{Caller, refuse_cross_site};

/// Why an action did not happen.
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) title: &'static str,
    pub(crate) detail: String,
}

impl Refusal {
    fn page(self, shared: &Shared) -> Response {
        problem(shared, self.status, self.title, &self.detail)
    }

    fn json(self) -> Response {
        (self.status, Json(json!({ "error": self.detail }))).into_response()
    }
}

fn refusal(error: &Error) -> Refusal {
    match error {
        Error::WrongStatus { .. } => Refusal {
            status: StatusCode::CONFLICT,
            title: "Not now",
            detail: error.to_string(),
        },
        Error::TaskNotFound(_) => Refusal {
            status: StatusCode::NOT_FOUND,
            title: "No such task",
            detail: error.to_string(),
        },
        Error::UnknownSchedule(_) => Refusal {
            status: StatusCode::NOT_FOUND,
            title: "No such schedule",
            detail: error.to_string(),
        },
        Error::UnknownTask { .. } | Error::InvalidArguments { .. } => Refusal {
            status: StatusCode::BAD_REQUEST,
            title: "Not added",
            detail: error.to_string(),
        },
        Error::InvalidQueue { .. } => Refusal {
            status: StatusCode::BAD_REQUEST,
            title: "No such queue",
            detail: error.to_string(),
        },
        _ => Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            title: "The backend failed",
            detail: ErrorChain(error).to_string(),
        },
    }
}

fn parse_uuid(text: &str) -> Result<Uuid, Refusal> {
    text.parse().map_err(|_| Refusal {
        status: StatusCode::BAD_REQUEST,
        title: "Not a task id",
        detail: format!("`{text}` is not a task uuid"),
    })
}

pub(crate) async fn cancel(
    shared: &Shared,
    uuid: &str,
    reason: Option<&str>,
) -> Result<(Uuid, bool), Refusal> {
    let uuid = parse_uuid(uuid)?;
    let reason = reason
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("cancelled from the dashboard");
    let cancelled = shared
        .app
        .cancel(uuid, reason)
        .await
        .map_err(|e| refusal(&e))?;
    Ok((uuid, cancelled))
}

pub(crate) async fn retry(shared: &Shared, uuid: &str) -> Result<Uuid, Refusal> {
    let uuid = parse_uuid(uuid)?;
    let handle = shared
        .app
        .records()
        .retry(uuid)
        .await
        .map_err(|e| refusal(&e))?;
    Ok(handle.uuid())
}

pub(crate) async fn delete(shared: &Shared, uuid: &str) -> Result<bool, Refusal> {
    let uuid = parse_uuid(uuid)?;
    shared
        .app
        .records()
        .delete(uuid)
        .await
        .map_err(|e| refusal(&e))
}

/// Requeues or drops the dead letter `id`; `false` when it is not there any more.
pub(crate) async fn resolve(shared: &Shared, id: &str, requeue: bool) -> Result<bool, Refusal> {
    let letters = shared
        .app
        .dead_letters()
        .list(crate::DEAD_LETTERS_MAX)
        .await
        .map_err(|e| refusal(&e))?;
    let Some(letter) = letters.iter().find(|letter| letter.id == id) else {
        return Ok(false);
    };
    resolve_letter(shared, letter, requeue).await
}

/// Takes one dead letter, listed already, out of the dead letters.
pub(crate) async fn resolve_letter(
    shared: &Shared,
    letter: &qtasks_core::stats::DeadLetter,
    requeue: bool,
) -> Result<bool, Refusal> {
    shared
        .app
        .dead_letters()
        .resolve(letter, requeue)
        .await
        .map_err(|e| refusal(&e))
}

/// A schedule's action: pause, resume, or run its call once now (the added task's uuid).
async fn schedule_action(
    shared: &Shared,
    name: &str,
    action: &str,
) -> Result<Option<Uuid>, Refusal> {
    let schedules = shared.app.schedules();
    let done = match action {
        "pause" => schedules.pause(name).await.map(|()| None),
        "resume" => schedules.resume(name).await.map(|()| None),
        _ => schedules
            .run_now(name)
            .await
            .map(|added| Some(added.uuid())),
    };
    done.map_err(|e| refusal(&e))
}

/// `POST /schedules/{pause,resume,run}` with the schedule's `name`.
pub(crate) async fn schedule_form(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(action): Path<String>,
    headers: HeaderMap,
    Form(form): Form<QueueForm>,
) -> Response {
    let Some(action) = schedule_verb(&action) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    form_action(
        &shared,
        Ask::new(caller, action, &form.name),
        &headers,
        &form.csrf,
        || async {
            Ok(match schedule_action(&shared, &form.name, action).await? {
                Some(added) => format!("tasks/{added}?done=schedule-ran"),
                None => format!("schedules?done=schedule-{action}d"),
            })
        },
    )
    .await
}

/// `POST /api/v1/schedules/{name}/{pause,resume,run}`.
pub(crate) async fn schedule_api(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(action) = schedule_verb(&action) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    api_action(
        &shared,
        Ask::new(caller, action, &name),
        &headers,
        || async {
            Ok(match schedule_action(&shared, &name, action).await? {
                Some(added) => json!({ "schedule": name, "uuid": added }),
                None => json!({ "schedule": name, "paused": action == "pause" }),
            })
        },
    )
    .await
}

/// The schedule actions, as the log names them.
fn schedule_verb(action: &str) -> Option<&'static str> {
    match action {
        "pause" => Some("pause"),
        "resume" => Some("resume"),
        "run" => Some("run"),
        _ => None,
    }
}

/// Pauses or resumes the queue `name`.
async fn set_paused(shared: &Shared, name: &str, pause: bool) -> Result<(), Refusal> {
    let queues = shared.app.queues();
    let done = if pause {
        queues.pause(name).await
    } else {
        queues.resume(name).await
    };
    done.map_err(|e| refusal(&e))
}

// ------------------------------------------------------------------------------------------
// The forms of the pages

#[derive(Debug, Deserialize)]
pub(crate) struct TaskForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeadForm {
    #[serde(default)]
    csrf: String,
    id: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct QueueForm {
    #[serde(default)]
    csrf: String,
    name: String,
}

/// Who asks for what, for the action's log line: the caller, the action, and the task's uuid
/// or the dead letter's id as given.
#[derive(Clone, Copy)]
pub(crate) struct Ask<'a> {
    caller: Caller,
    action: &'static str,
    target: &'a str,
}

impl<'a> Ask<'a> {
    pub(crate) fn new(caller: Caller, action: &'static str, target: &'a str) -> Self {
        Ask {
            caller,
            action,
            target,
        }
    }

    /// Logs who asked for what, and how it ended.
    pub(crate) fn log(self, outcome: &str) {
        tracing::info!(
            who = %self.caller,
            action = self.action,
            target = self.target,
            "dashboard action {} {}: {outcome}",
            self.action,
            self.target,
        );
    }
}

/// A form's action: refused if it is cross-site, else run, then a redirect to the page it
/// names (or a page saying why not).
async fn form_action<Fut>(
    shared: &Shared,
    ask: Ask<'_>,
    headers: &HeaderMap,
    csrf: &str,
    action: impl FnOnce() -> Fut,
) -> Response
where
    Fut: Future<Output = Result<String, Refusal>>,
{
    if let Some(refused) = refuse_cross_site(shared, headers, Some(csrf)) {
        ask.log("refused: cross-site, or no CSRF token");
        return refused;
    }
    match action().await {
        Ok(location) => {
            // `location` is relative to the dashboard: under its mount point.
            let location = crate::mount::path(&location);
            ask.log(&format!("done, then {location}"));
            Redirect::to(&location).into_response()
        }
        Err(refusal) => {
            ask.log(&format!("not done: {}", refusal.detail));
            refusal.page(shared)
        }
    }
}

pub(crate) async fn cancel_form(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<TaskForm>,
) -> Response {
    form_action(
        &shared,
        Ask::new(caller, "cancel", &uuid),
        &headers,
        &form.csrf,
        || async {
            let (uuid, cancelled) = cancel(&shared, &uuid, form.reason.as_deref()).await?;
            let done = if cancelled {
                "cancelled"
            } else {
                "not-cancelled"
            };
            Ok(format!("tasks/{uuid}?done={done}"))
        },
    )
    .await
}

pub(crate) async fn retry_form(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<TaskForm>,
) -> Response {
    form_action(
        &shared,
        Ask::new(caller, "retry", &uuid),
        &headers,
        &form.csrf,
        || async {
            Ok(format!(
                "tasks/{}?done=retried",
                retry(&shared, &uuid).await?
            ))
        },
    )
    .await
}

pub(crate) async fn delete_form(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<TaskForm>,
) -> Response {
    form_action(
        &shared,
        Ask::new(caller, "delete", &uuid),
        &headers,
        &form.csrf,
        || async {
            delete(&shared, &uuid).await?;
            Ok("tasks?done=deleted".to_owned())
        },
    )
    .await
}

pub(crate) async fn requeue_form(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Form(form): Form<DeadForm>,
) -> Response {
    dead_form(&shared, caller, &headers, &form, true).await
}

pub(crate) async fn drop_form(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Form(form): Form<DeadForm>,
) -> Response {
    dead_form(&shared, caller, &headers, &form, false).await
}

pub(crate) async fn pause_form(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Form(form): Form<QueueForm>,
) -> Response {
    queue_form(&shared, caller, &headers, &form, true).await
}

pub(crate) async fn resume_form(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Form(form): Form<QueueForm>,
) -> Response {
    queue_form(&shared, caller, &headers, &form, false).await
}

async fn queue_form(
    shared: &Shared,
    caller: Caller,
    headers: &HeaderMap,
    form: &QueueForm,
    pause: bool,
) -> Response {
    let action = if pause { "pause" } else { "resume" };
    form_action(
        shared,
        Ask::new(caller, action, &form.name),
        headers,
        &form.csrf,
        || async {
            set_paused(shared, &form.name, pause).await?;
            let done = if pause { "paused" } else { "resumed" };
            Ok(format!("queues?done={done}"))
        },
    )
    .await
}

async fn dead_form(
    shared: &Shared,
    caller: Caller,
    headers: &HeaderMap,
    form: &DeadForm,
    requeue: bool,
) -> Response {
    let action = if requeue { "requeue" } else { "drop" };
    form_action(
        shared,
        Ask::new(caller, action, &form.id),
        headers,
        &form.csrf,
        || async {
            let done = match resolve(shared, &form.id, requeue).await? {
                false => "gone",
                true if requeue => "requeued",
                true => "dropped",
            };
            Ok(format!("dead?done={done}"))
        },
    )
    .await
}

// ------------------------------------------------------------------------------------------
// The JSON API

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ReasonQuery {
    reason: Option<String>,
}

/// An API action: refused if it is cross-site, else run, answering its JSON.
async fn api_action<Fut>(
    shared: &Shared,
    ask: Ask<'_>,
    headers: &HeaderMap,
    action: impl FnOnce() -> Fut,
) -> Response
where
    Fut: Future<Output = Result<serde_json::Value, Refusal>>,
{
    if let Some(refused) = refuse_cross_site(shared, headers, None) {
        ask.log("refused: cross-site, or no CSRF token");
        return refused;
    }
    match action().await {
        Ok(answer) => {
            ask.log(&format!("done: {answer}"));
            Json(answer).into_response()
        }
        Err(refusal) => {
            ask.log(&format!("not done: {}", refusal.detail));
            refusal.json()
        }
    }
}

pub(crate) async fn cancel_api(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    Query(query): Query<ReasonQuery>,
) -> Response {
    api_action(
        &shared,
        Ask::new(caller, "cancel", &uuid),
        &headers,
        || async {
            let (_, cancelled) = cancel(&shared, &uuid, query.reason.as_deref()).await?;
            Ok(json!({ "cancelled": cancelled }))
        },
    )
    .await
}

pub(crate) async fn retry_api(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> Response {
    api_action(
        &shared,
        Ask::new(caller, "retry", &uuid),
        &headers,
        || async { Ok(json!({ "uuid": retry(&shared, &uuid).await? })) },
    )
    .await
}

pub(crate) async fn delete_api(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> Response {
    api_action(
        &shared,
        Ask::new(caller, "delete", &uuid),
        &headers,
        || async { Ok(json!({ "deleted": delete(&shared, &uuid).await? })) },
    )
    .await
}

pub(crate) async fn requeue_api(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    api_action(
        &shared,
        Ask::new(caller, "requeue", &id),
        &headers,
        || async { Ok(json!({ "resolved": resolve(&shared, &id, true).await? })) },
    )
    .await
}

pub(crate) async fn drop_api(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    api_action(&shared, Ask::new(caller, "drop", &id), &headers, || async {
        Ok(json!({ "resolved": resolve(&shared, &id, false).await? }))
    })
    .await
}

pub(crate) async fn pause_api(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    api_action(
        &shared,
        Ask::new(caller, "pause", &name),
        &headers,
        || async {
            set_paused(&shared, &name, true).await?;
            Ok(json!({ "queue": name, "paused": true }))
        },
    )
    .await
}

pub(crate) async fn resume_api(
    State(shared): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    api_action(
        &shared,
        Ask::new(caller, "resume", &name),
        &headers,
        || async {
            set_paused(&shared, &name, false).await?;
            Ok(json!({ "queue": name, "paused": false }))
        },
    )
    .await
}
