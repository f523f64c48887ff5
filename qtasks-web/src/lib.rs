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
//! | `GET /queues`, `GET /schedules` | the named queues (pause, resume); the schedules: next and last firing (pause, resume, run now) |
//! | `POST /tasks/{uuid}/cancel`, `.../retry`, `.../delete`, `POST /dead/requeue`, `/dead/drop` | the actions (forms, with a CSRF token) |
//! | `POST /tasks/bulk`, `POST /dead/bulk` | an action on the ticked rows: a confirmation page first, then each one's outcome |
//! | `GET /events?view=...` | server-sent events: the parts of a page that changed |
//! | `GET /api/v1/overview`, `/stats`, `/workers`, `/tasks`, `/tasks/{uuid}`, `/queues`, `/schedules`, `/dead`, `/csrf` | the same data as JSON |
//! | `POST /api/v1/tasks/{uuid}/cancel`, `.../retry`, `.../delete`, `/api/v1/queues/{name}/pause`, `.../resume`, `/api/v1/schedules/{name}/pause`, `.../resume`, `.../run`, `/api/v1/dead/{id}/requeue`, `.../drop` | the actions, JSON |
//! | yours, given with [`Web::routes`] | e.g. `GET /metrics` of `qtasks::metrics` (the `qtasks web` command serves it) |
//!
//! Mounted under a prefix (`Router::nest("/admin", web.router())`) the routes are the same under
//! it: pages link relatively and redirect under the prefix. [`Web::read_only`] shows everything
//! and changes nothing; [`Web::start`] returns a handle that shuts the server down.
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
mod bulk;
mod html;
mod live;
mod mount;
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
    /// Pages without actions, and every action refused (see [`Web::read_only`]).
    pub(crate) read_only: bool,
    /// Turns true when the server answering shuts down: its event streams end.
    pub(crate) closing: tokio::sync::watch::Receiver<bool>,
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
                read_only: false,
                // A server of its own (`start`) replaces it; a router mounted elsewhere ends
                // its streams when the connection does.
                closing: tokio::sync::watch::channel(false).1,
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

    /// A dashboard that only shows: its pages have no action (cancel, retry, delete, pause,
    /// requeue, drop), and every action, by form or by the JSON API, is refused with `403`,
    /// whoever asks. For an operations team's wall screen, or a token handed to people who
    /// should see the queue but not change it.
    #[must_use]
    pub fn read_only(mut self, read_only: bool) -> Self {
        Arc::make_mut(&mut self.shared.0).read_only = read_only;
        self
    }

    /// The routes, to serve or to mount in an axum server of your own, at the root or under a
    /// prefix (`Router::nest("/admin", web.router())`: the pages link relatively, so they work
    /// under any prefix).
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
            .route("/tasks/bulk", post(bulk::tasks_form))
            .route("/tasks/{uuid}/cancel", post(actions::cancel_form))
            .route("/tasks/{uuid}/retry", post(actions::retry_form))
            .route("/tasks/{uuid}/delete", post(actions::delete_form))
            .route("/workers", get(pages::workers))
            .route("/queues", get(pages::queues))
            .route("/queues/pause", post(actions::pause_form))
            .route("/queues/resume", post(actions::resume_form))
            .route("/schedules", get(pages::schedules))
            .route("/schedules/{action}", post(actions::schedule_form))
            .route("/dead", get(pages::dead))
            .route("/dead/requeue", post(actions::requeue_form))
            .route("/dead/drop", post(actions::drop_form))
            .route("/dead/bulk", post(bulk::dead_form))
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
            .route("/api/v1/schedules", get(api::schedules))
            .route(
                "/api/v1/schedules/{name}/{action}",
                post(actions::schedule_api),
            )
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
            }))
            // Outermost: the guard's own redirect to the login page needs the mount point.
            .layer(axum::middleware::from_fn(mount::remember));
        security::headers(guarded)
    }

    /// Serves the routes at `address` in the background; returns the bound address (port 0
    /// picks a free one). Anything but a loopback address needs a token. It serves until the
    /// process ends: [`start`](Self::start) returns a handle that stops it.
    pub async fn serve(&self, address: SocketAddr) -> Result<SocketAddr, WebError> {
        Ok(self.start(address).await?.address())
    }

    /// Serves the routes at `address` in the background, as [`serve`](Self::serve) does, and
    /// returns the server's handle: its address, and [`WebServer::shutdown`], which stops it
    /// gracefully (requests in flight are answered; the live-update streams end).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let web = qtasks::web::Web::new(qtasks::QueueTasks::new());
    /// let server = web.start("127.0.0.1:0".parse()?).await?;
    /// let address = server.address();
    /// server.shutdown().await;
    /// assert!(std::net::TcpStream::connect(address).is_err());
    /// # Ok(()) }
    /// ```
    pub async fn start(&self, address: SocketAddr) -> Result<WebServer, WebError> {
        if !address.ip().is_loopback() && self.shared.token.is_none() {
            return Err(WebError::TokenRequired(address));
        }
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| WebError::Bind { address, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| WebError::Bind { address, source })?;
        // This server's own copy, whose event streams end when it shuts down.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut server = self.clone();
        Arc::make_mut(&mut server.shared.0).closing = stopped.clone();
        let router = server.router();
        tracing::info!(address = %bound, app = %self.shared.app.name(), "serving the dashboard at http://{bound}/");
        let task = tokio::spawn(async move {
            // The peer address reaches the guard through `ConnectInfo`: without a token only
            // loopback peers are answered.
            let service = router.into_make_service_with_connect_info::<SocketAddr>();
            let mut stopped = stopped;
            let served = axum::serve(listener, service).with_graceful_shutdown(async move {
                // A dropped handle leaves the server running, as `serve` does.
                if stopped.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            });
            if let Err(error) = served.await {
                tracing::error!("the web server stopped: {error}");
            }
        });
        Ok(WebServer {
            address: bound,
            stop,
            task,
        })
    }
}

/// A running dashboard server (see [`Web::start`]). Dropping it leaves the server running.
#[derive(Debug)]
pub struct WebServer {
    address: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl WebServer {
    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops taking connections, lets the requests in flight be answered (the pages' live
    /// streams end at once), and returns once the server has stopped: the listening socket is
    /// closed then. A connection still open after [`SHUTDOWN_GRACE`](Self::SHUTDOWN_GRACE) (a
    /// client that stopped reading, a streaming route of yours) is dropped.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Self::SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(address = %self.address, "connections still open after the shutdown's grace: dropped");
            self.task.abort();
            let _ = self.task.await;
        }
    }

    /// How long [`shutdown`](Self::shutdown) lets requests in flight finish.
    pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
}
