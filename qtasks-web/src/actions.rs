//! The actions: cancel, retry, delete a task; requeue or drop a dead letter. Each is a POST,
//! checked against cross-site requests first ([`refuse_cross_site`]); the forms of the pages
//! get a redirect back (a page that says what happened), the JSON API gets JSON.

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
use crate::security::refuse_cross_site;

/// Why an action did not happen.
struct Refusal {
    status: StatusCode,
    title: &'static str,
    detail: String,
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

async fn cancel(
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

async fn retry(shared: &Shared, uuid: &str) -> Result<Uuid, Refusal> {
    let uuid = parse_uuid(uuid)?;
    let handle = shared.app.retry_task(uuid).await.map_err(|e| refusal(&e))?;
    Ok(handle.uuid())
}

async fn delete(shared: &Shared, uuid: &str) -> Result<bool, Refusal> {
    let uuid = parse_uuid(uuid)?;
    shared.app.delete_task(uuid).await.map_err(|e| refusal(&e))
}

/// Requeues or drops the dead letter `id`; `false` when it is not there any more.
async fn resolve(shared: &Shared, id: &str, requeue: bool) -> Result<bool, Refusal> {
    let failed = |e: Error| refusal(&e);
    let letters = shared
        .app
        .dead_letters(crate::DEAD_LETTERS_MAX)
        .await
        .map_err(failed)?;
    let Some(letter) = letters.iter().find(|letter| letter.id == id) else {
        return Ok(false);
    };
    shared
        .app
        .resolve_dead_letter(letter, requeue)
        .await
        .map_err(failed)
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

pub(crate) async fn cancel_form(
    State(shared): State<Shared>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<TaskForm>,
) -> Response {
    if let Some(refused) = refuse_cross_site(&shared, &headers, Some(&form.csrf)) {
        return refused;
    }
    match cancel(&shared, &uuid, form.reason.as_deref()).await {
        Ok((uuid, true)) => Redirect::to(&format!("/tasks/{uuid}?done=cancelled")).into_response(),
        Ok((uuid, false)) => {
            Redirect::to(&format!("/tasks/{uuid}?done=not-cancelled")).into_response()
        }
        Err(refusal) => refusal.page(&shared),
    }
}

pub(crate) async fn retry_form(
    State(shared): State<Shared>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<TaskForm>,
) -> Response {
    if let Some(refused) = refuse_cross_site(&shared, &headers, Some(&form.csrf)) {
        return refused;
    }
    match retry(&shared, &uuid).await {
        Ok(new) => Redirect::to(&format!("/tasks/{new}?done=retried")).into_response(),
        Err(refusal) => refusal.page(&shared),
    }
}

pub(crate) async fn delete_form(
    State(shared): State<Shared>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<TaskForm>,
) -> Response {
    if let Some(refused) = refuse_cross_site(&shared, &headers, Some(&form.csrf)) {
        return refused;
    }
    match delete(&shared, &uuid).await {
        Ok(_) => Redirect::to("/tasks?done=deleted").into_response(),
        Err(refusal) => refusal.page(&shared),
    }
}

pub(crate) async fn requeue_form(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<DeadForm>,
) -> Response {
    dead_form(shared, headers, form, true).await
}

pub(crate) async fn drop_form(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Form(form): Form<DeadForm>,
) -> Response {
    dead_form(shared, headers, form, false).await
}

async fn dead_form(shared: Shared, headers: HeaderMap, form: DeadForm, requeue: bool) -> Response {
    if let Some(refused) = refuse_cross_site(&shared, &headers, Some(&form.csrf)) {
        return refused;
    }
    match resolve(&shared, &form.id, requeue).await {
        Ok(true) if requeue => Redirect::to("/dead?done=requeued").into_response(),
        Ok(true) => Redirect::to("/dead?done=dropped").into_response(),
        Ok(false) => Redirect::to("/dead?done=gone").into_response(),
        Err(refusal) => refusal.page(&shared),
    }
}

// ------------------------------------------------------------------------------------------
// The JSON API

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ReasonQuery {
    reason: Option<String>,
}

pub(crate) async fn cancel_api(
    State(shared): State<Shared>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    Query(query): Query<ReasonQuery>,
) -> Response {
    if let Some(refused) = refuse_cross_site(&shared, &headers, None) {
        return refused;
    }
    match cancel(&shared, &uuid, query.reason.as_deref()).await {
        Ok((_, cancelled)) => Json(json!({ "cancelled": cancelled })).into_response(),
        Err(refusal) => refusal.json(),
    }
}

pub(crate) async fn retry_api(
    State(shared): State<Shared>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse_cross_site(&shared, &headers, None) {
        return refused;
    }
    match retry(&shared, &uuid).await {
        Ok(new) => Json(json!({ "uuid": new })).into_response(),
        Err(refusal) => refusal.json(),
    }
}

pub(crate) async fn delete_api(
    State(shared): State<Shared>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse_cross_site(&shared, &headers, None) {
        return refused;
    }
    match delete(&shared, &uuid).await {
        Ok(deleted) => Json(json!({ "deleted": deleted })).into_response(),
        Err(refusal) => refusal.json(),
    }
}

pub(crate) async fn requeue_api(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    dead_api(shared, headers, &id, true).await
}

pub(crate) async fn drop_api(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    dead_api(shared, headers, &id, false).await
}

async fn dead_api(shared: Shared, headers: HeaderMap, id: &str, requeue: bool) -> Response {
    if let Some(refused) = refuse_cross_site(&shared, &headers, None) {
        return refused;
    }
    match resolve(&shared, id, requeue).await {
        Ok(resolved) => Json(json!({ "resolved": resolved })).into_response(),
        Err(refusal) => refusal.json(),
    }
}
