//! The web dashboard of qtasks, served with axum straight from the backend (no worker needed
//! in the process): pages for operators, a JSON API for scripts, and routes of your own beside
//! them (Prometheus metrics, say) behind the same guard.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | overview: waiting per priority, counts per status, throughput of the last 15 minutes, workers |
//! | `GET /tasks` | the records, newest first, filtered by status, name and time, a page at a time; `?uuid=` opens one |
//! | `GET /tasks/{uuid}` | one task: arguments, result or error or cancel reason, times, its attempts, a stream task's items |
//! | `GET /workers`, `GET /dead` | the workers with their heartbeat; the dead letters |
//! | `POST /tasks/{uuid}/cancel`, `.../retry`, `.../delete`, `POST /dead/requeue`, `/dead/drop` | the actions (forms, with a CSRF token) |
//! | `GET /events?view=...` | server-sent events: the parts of a page that changed |
//! | `GET /api/v1/overview`, `/stats`, `/workers`, `/tasks`, `/tasks/{uuid}`, `/dead`, `/csrf` | the same data as JSON |
//! | `POST /api/v1/tasks/{uuid}/cancel`, `.../retry`, `.../delete`, `/api/v1/dead/{id}/requeue`, `.../drop` | the actions, JSON |
//! | yours, given with [`Web::routes`] | e.g. `GET /metrics` of `qtasks::metrics` (the `qtasks web` command serves it) |
//!
//! Security: without a token it listens on loopback only and answers only connections whose
//! peer address is loopback, addressed to a loopback name, and not forwarded by a proxy; with a
//! token every request must carry it (bearer header, or the login cookie, which holds an HMAC of
//! the token, never the token), compared in constant time; actions are POST with a CSRF token,
//! and each is logged (`tracing`, INFO) with who asked (peer address, and whether by token,
//! cookie or loopback) and what (the action, the task's uuid or the dead letter's id); every
//! shown value is HTML-escaped; every response carries a restrictive Content-Security-Policy.
//! All assets are compiled in: the pages need no network.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let app = qtasks::QueueTasks::new(); // or the app of any backend
//! let web = qtasks::web::Web::new(app).token(std::env::var("QTASKS_WEB_TOKEN").ok());
//! let bound = web.serve("127.0.0.1:8000".parse()?).await?;
//! println!("http://{bound}/");
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod actions;
mod api;
mod assets;
mod html;
mod live;
mod pages;
mod security;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use qtasks_core::QueueTasks;

/// The most dead letters one request returns.
pub(crate) const DEAD_LETTERS_MAX: usize = 1000;

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
    shared: Shared,
    /// Routes of the caller's, served beside the dashboard behind the same guard.
    routes: Router,
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct Shared(Arc<SharedInner>);

#[derive(Clone)]
pub(crate) struct SharedInner {
    pub(crate) app: QueueTasks,
    pub(crate) token: Option<Arc<str>>,
    /// This process's CSRF token, in every form.
    pub(crate) csrf: String,
    /// The key of the login cookie's HMAC (the cookie holds the token's HMAC, not the token).
    pub(crate) cookie_key: ring::hmac::Key,
    /// The stats sampler, started at the first request that needs it.
    live: tokio::sync::OnceCell<live::Live>,
}

impl Deref for Shared {
    type Target = SharedInner;

    fn deref(&self) -> &SharedInner {
        &self.0
    }
}

impl Shared {
    pub(crate) async fn live(&self) -> &live::Live {
        self.live
            .get_or_init(|| async { live::Live::start(self.app.clone()) })
            .await
    }
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("app", &self.shared.app.name())
            .field("token", &self.shared.token.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl Web {
    /// The surface of `app`, with no token (loopback only).
    pub fn new(app: QueueTasks) -> Self {
        Web {
            shared: Shared(Arc::new(SharedInner {
                app,
                token: None,
                csrf: security::random_secret(),
                cookie_key: security::cookie_key(),
                live: tokio::sync::OnceCell::new(),
            })),
            routes: Router::new(),
        }
    }

    /// Serves `routes` beside the dashboard, behind the same guard (the token, or loopback
    /// only): the Prometheus metrics of `qtasks::metrics`, a health check of your own. The
    /// dashboard does not depend on the metrics crate; this is how the two meet (the `qtasks
    /// web` command does it).
    ///
    /// ```
    /// # fn demo(app: qtasks::QueueTasks) {
    /// let health = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
    /// let web = qtasks::web::Web::new(app).routes(health);
    /// # let _ = web; }
    /// ```
    #[must_use]
    pub fn routes(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }

    /// Requires `token` on every request (`Authorization: Bearer <token>`, or the cookie the
    /// login page sets); an empty token counts as none.
    #[must_use]
    pub fn token(mut self, token: Option<String>) -> Self {
        Arc::make_mut(&mut self.shared.0).token = token.filter(|t| !t.is_empty()).map(Arc::from);
        self
    }

    /// The routes, to serve or to mount in an axum server of your own.
    ///
    /// Without a token they answer only connections from a loopback peer, which they read from
    /// axum's `ConnectInfo<SocketAddr>`: serve them with
    /// `into_make_service_with_connect_info::<SocketAddr>()` (without it, and without a token,
    /// every request is refused).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::net::SocketAddr;
    ///
    /// let router = qtasks::web::Web::new(qtasks::QueueTasks::new()).router();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
    /// axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await?;
    /// # Ok(()) }
    /// ```
    pub fn router(&self) -> Router {
        let pages = Router::new()
            .route("/", get(pages::overview))
            .route("/tasks", get(pages::tasks))
            .route("/tasks/{uuid}", get(pages::task))
            .route("/tasks/{uuid}/cancel", post(actions::cancel_form))
            .route("/tasks/{uuid}/retry", post(actions::retry_form))
            .route("/tasks/{uuid}/delete", post(actions::delete_form))
            .route("/workers", get(pages::workers))
            .route("/queues", get(pages::queues))
            .route("/queues/pause", post(actions::pause_form))
            .route("/queues/resume", post(actions::resume_form))
            .route("/dead", get(pages::dead))
            .route("/dead/requeue", post(actions::requeue_form))
            .route("/dead/drop", post(actions::drop_form))
            .route("/login", get(pages::login_page).post(pages::login))
            .route("/events", get(api::events))
            .route("/assets/{file}", get(assets::serve));
        let json = Router::new()
            .route("/api/v1/overview", get(api::overview))
            .route("/api/v1/stats", get(api::stats))
            .route("/api/v1/workers", get(api::workers))
            .route("/api/v1/tasks", get(api::tasks))
            .route("/api/v1/tasks/{uuid}", get(api::task))
            .route("/api/v1/tasks/{uuid}/cancel", post(actions::cancel_api))
            .route("/api/v1/tasks/{uuid}/retry", post(actions::retry_api))
            .route("/api/v1/tasks/{uuid}/delete", post(actions::delete_api))
            .route("/api/v1/queues", get(api::queues))
            .route("/api/v1/queues/{name}/pause", post(actions::pause_api))
            .route("/api/v1/queues/{name}/resume", post(actions::resume_api))
            .route("/api/v1/dead", get(api::dead_letters))
            .route("/api/v1/dead/{id}/requeue", post(actions::requeue_api))
            .route("/api/v1/dead/{id}/drop", post(actions::drop_api))
            .route("/api/v1/csrf", get(api::csrf));
        let shared = self.shared.clone();
        let guarded = pages
            .merge(json)
            .with_state(self.shared.clone())
            .merge(self.routes.clone())
            .layer(axum::middleware::from_fn(move |request, next| {
                security::guard(shared.clone(), request, next)
            }));
        security::headers(guarded)
    }

    /// Serves the routes at `address` in the background; returns the bound address (port 0
    /// picks a free one). Anything but a loopback address needs a token.
    pub async fn serve(&self, address: SocketAddr) -> Result<SocketAddr, WebError> {
        if !address.ip().is_loopback() && self.shared.token.is_none() {
            return Err(WebError::TokenRequired(address));
        }
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| WebError::Bind { address, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| WebError::Bind { address, source })?;
        let router = self.router();
        tracing::info!(address = %bound, app = %self.shared.app.name(), "serving the dashboard at http://{bound}/");
        tokio::spawn(async move {
            // The peer address reaches the guard through `ConnectInfo`: without a token only
            // loopback peers are answered.
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(error) = axum::serve(listener, service).await {
                tracing::error!("the web server stopped: {error}");
            }
        });
        Ok(bound)
    }
}
