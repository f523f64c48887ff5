//! The web surface of qtasks, first part: the JSON API the dashboard (issue #12) will be built
//! on, served with axum straight from the backend (no worker needed in the process).
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/stats` | the queue's live numbers, the workers and the schedules ([`qtasks::stats::Stats`](qtasks_core::stats::Stats)) |
//! | `GET /api/v1/workers` | the workers whose heartbeat is alive |
//! | `GET /api/v1/tasks/{uuid}` | one task's record; 404 when there is none |
//! | `GET /api/v1/dead?limit=N` | up to `N` (default 100, at most 1,000) dead letters |
//!
//! Security: [`serve`] binds to loopback unless a token is given, and with a token every
//! request must carry it (`Authorization: Bearer <token>`), compared in constant time. Every
//! response says `Cache-Control: no-store` and carries a restrictive Content-Security-Policy.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let app = qtasks::QueueTasks::new(); // or the app of any backend
//! let web = qtasks::web::Web::new(app).token(std::env::var("QTASKS_WEB_TOKEN").ok());
//! let bound = web.serve("127.0.0.1:8000".parse()?).await?;
//! println!("http://{bound}/api/v1/stats");
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use qtasks_core::QueueTasks;
use serde::Deserialize;

/// The most dead letters one request returns.
const DEAD_LETTERS_MAX: usize = 1000;

/// Why the web surface could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// Binding anywhere but loopback without a token would open the queue to the network.
    #[error(
        "refusing to serve on {0} without a token: give one (`Web::token`, `--token` or QTASKS_WEB_TOKEN), or bind to 127.0.0.1"
    )]
    TokenRequired(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The web surface of an app.
#[derive(Clone)]
pub struct Web {
    app: QueueTasks,
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("app", &self.app.name())
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Web {
    /// The surface of `app`, with no token (loopback only).
    pub fn new(app: QueueTasks) -> Self {
        Web { app, token: None }
    }

    /// Requires `token` on every request (`Authorization: Bearer <token>`); an empty token
    /// counts as none.
    #[must_use]
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty()).map(Arc::from);
        self
    }

    /// The routes, to serve or to mount in an axum server of your own.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/api/v1/stats", get(stats))
            .route("/api/v1/workers", get(workers))
            .route("/api/v1/tasks/{uuid}", get(task))
            .route("/api/v1/dead", get(dead_letters))
            .with_state(self.app.clone());
        let token = self.token.clone();
        api.layer(axum::middleware::from_fn(move |request, next| {
            let token = token.clone();
            async move { guard(token.as_deref(), request, next).await }
        }))
    }

    /// Serves the routes at `address` in the background; returns the bound address (port 0
    /// picks a free one). Anything but a loopback address needs a token.
    pub async fn serve(&self, address: SocketAddr) -> Result<SocketAddr, WebError> {
        if !address.ip().is_loopback() && self.token.is_none() {
            return Err(WebError::TokenRequired(address));
        }
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| WebError::Bind { address, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| WebError::Bind { address, source })?;
        let router = self.router();
        tracing::info!(address = %bound, app = %self.app.name(), "serving the web API at http://{bound}/api/v1/");
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!("the web server stopped: {error}");
            }
        });
        Ok(bound)
    }
}

/// Equal in time whatever the first differing byte: a token is never guessed a byte at a time.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for (i, byte) in a.iter().enumerate() {
        difference |= usize::from(byte ^ b.get(i).copied().unwrap_or(0));
    }
    difference == 0
}

/// Checks the token, and adds the headers every response carries.
async fn guard(token: Option<&str>, request: Request, next: Next) -> Response {
    if let Some(expected) = token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            let mut response =
                (StatusCode::UNAUTHORIZED, "a valid token is required\n").into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return with_headers(response);
        }
    }
    with_headers(next.run(request).await)
}

fn with_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A backend failure as a 503 naming it.
fn unavailable(error: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": error.to_string() })),
    )
        .into_response()
}

async fn stats(State(app): State<QueueTasks>) -> Response {
    match app.stats().await {
        Ok(stats) => Json(stats).into_response(),
        Err(error) => unavailable(error),
    }
}

async fn workers(State(app): State<QueueTasks>) -> Response {
    match app.stats().await {
        Ok(stats) => Json(stats.workers).into_response(),
        Err(error) => unavailable(error),
    }
}

async fn task(State(app): State<QueueTasks>, Path(uuid): Path<String>) -> Response {
    let Ok(uuid) = uuid.parse::<uuid::Uuid>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": format!("`{uuid}` is not a task uuid") })),
        )
            .into_response();
    };
    match app.get(uuid).await {
        Ok(Some(record)) => Json(record).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": format!("task {uuid} does not exist") })),
        )
            .into_response(),
        Err(error) => unavailable(error),
    }
}

#[derive(Debug, Deserialize)]
struct DeadQuery {
    limit: Option<usize>,
}

async fn dead_letters(State(app): State<QueueTasks>, Query(query): Query<DeadQuery>) -> Response {
    let limit = query.limit.unwrap_or(100).min(DEAD_LETTERS_MAX);
    match app.dead_letters(limit).await {
        Ok(letters) => Json(letters).into_response(),
        Err(error) => unavailable(error),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3cres"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret!"));
        assert!(!constant_time_eq(b"", b"s3cret"));
    }
}
