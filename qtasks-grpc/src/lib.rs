//! The gRPC service of qtasks: Python QTasks' `qtasks.v1.QTasksService` (`AddTask`,
//! `GetTask`), field for field, beside the standard health service (`grpc.health.v1`, serving)
//! and server reflection (`grpc.reflection.v1`), so `grpcurl` and the original's Python stubs
//! work as they are.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let app = qtasks::redis::connect("redis://127.0.0.1:6379/0").await?;
//! qtasks::grpc::serve(app, "127.0.0.1:50051".parse()?).await?;
//! # Ok(()) }
//! ```
//!
//! The command line serves it too: `qtasks grpc --bind 127.0.0.1:50051` (with `--token`,
//! `--tls-cert` and `--tls-key` for the network).
//!
//! # Security
//!
//! As guarded as the web dashboard:
//!
//! - **Token.** With a token ([`Grpc::token`], `--token` or `QTASKS_GRPC_TOKEN`), every call
//!   of `qtasks.v1.QTasksService` and of reflection carries the metadata
//!   `authorization: Bearer <token>`, compared in constant time; a call without it, or with
//!   another, is `UNAUTHENTICATED`. The health service stays open, so a load balancer or an
//!   orchestrator can probe the server without the secret (it tells only "serving").
//! - **Loopback without a token.** Serving on an address other than loopback without a token
//!   is refused with [`GrpcError::TokenRequired`] (and `qtasks grpc` exits with code 2).
//! - **TLS.** [`Grpc::tls`] serves over TLS (rustls, with the ring provider) with a
//!   certificate and key in PEM ([`Tls::from_pem_files`], `--tls-cert` and `--tls-key`). A
//!   token sent over the network without TLS can be read on the way.
//! - **Request numbers.** `timeout` must be a finite number of seconds, 0 or more, that fits a
//!   duration, checked before the task is queued: anything else is `INVALID_ARGUMENT` naming
//!   the field, and no task is added.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use qtasks::grpc::{Grpc, Tls};
//!
//! let app = qtasks::QueueTasks::new(); // or the app of any backend
//! Grpc::new(app)
//!     .token(std::env::var("QTASKS_GRPC_TOKEN").ok())
//!     .tls(Some(Tls::from_pem_files("server.crt", "server.key")?))
//!     .serve("0.0.0.0:50051".parse()?)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Where it is stricter than the original
//!
//! - `args_json` that is not a JSON list, or `kwargs_json` that is not a JSON object, is
//!   `INVALID_ARGUMENT` naming the field (the original silently uses `[]` or `{}`); empty
//!   strings mean none.
//! - A `uuid` that is not a uuid is `INVALID_ARGUMENT`; an unknown one answers `ok = false`
//!   with the error "task ... does not exist" (as the original).
//! - A `timeout` that is negative, not a number or too large for a duration is
//!   `INVALID_ARGUMENT` (the original would fail after queuing the task).
//! - `AddTask` with a `timeout`: a task that ends `success` answers `ok = true` and its
//!   `result_json`; one that fails or is cancelled answers `ok = false`, its `uuid`, and the
//!   error or the cancel reason in `error`; a wait that runs out answers `ok = false`, the
//!   `uuid`, and "timed out ..." in `error` (the original answers `ok = true` with no uuid). The
//!   task goes on either way.
//! - An unknown task name on an in-memory app is refused at once (`ok = false`).
#![warn(missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use qtasks_core::backend::ErrorChain;
use qtasks_core::{AddOptions, QueueTasks, TaskRecord, TaskStatus};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// The generated messages, server and client of `qtasks.v1`.
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::pedantic
)]
pub mod proto {
    tonic::include_proto!("qtasks.v1");

    /// The encoded descriptors of `qtasks.proto`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/qtasks_descriptor.bin"));
}

use proto::q_tasks_service_server::{QTasksService, QTasksServiceServer};
use proto::{AddTaskRequest, AddTaskResponse, GetTaskRequest, GetTaskResponse};

/// Why the gRPC server could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcError {
    /// Serving anywhere but loopback without a token would open the queue to the network.
    #[error(
        "refusing to serve gRPC on {0} without a token: give one (`Grpc::token`, `--token` or QTASKS_GRPC_TOKEN), or bind to 127.0.0.1"
    )]
    TokenRequired(SocketAddr),
    /// A TLS certificate or key file could not be read.
    #[error("cannot read the TLS file {}: {source}", path.display())]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key is not usable (not PEM, not a matching pair, ...).
    #[error("the TLS certificate or key is not usable: {reason}")]
    Tls {
        /// What is wrong with them, as rustls says.
        reason: String,
        /// The error of tonic's TLS setup.
        #[source]
        source: tonic::transport::Error,
    },
    /// The reflection service could not be built from the descriptors.
    #[error("building the reflection service failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The address could not be bound (taken, not this machine's, ...).
    #[error("binding the address failed: {0}")]
    Bind(#[source] std::io::Error),
    /// The server failed.
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The `qtasks.v1.QTasksService` of an app.
///
/// [`Service::into_server`] checks no token: to add the service to a tonic server of your own
/// behind one, wrap it with [`BearerToken`].
///
/// ```
/// use qtasks::grpc::proto::q_tasks_service_server::QTasksServiceServer;
/// use qtasks::grpc::{BearerToken, Service};
///
/// let service = Service::new(qtasks::QueueTasks::new());
/// let guarded = QTasksServiceServer::with_interceptor(service, BearerToken::new("s3cret"));
/// let _router = tonic::transport::Server::builder().add_service(guarded);
/// ```
#[derive(Debug, Clone)]
pub struct Service {
    app: QueueTasks,
}

impl Service {
    /// The service adding and reading tasks of `app`.
    pub fn new(app: QueueTasks) -> Self {
        Service { app }
    }

    /// As a tonic service, to add to a server of your own (no token checked: see
    /// [`BearerToken`]).
    pub fn into_server(self) -> QTasksServiceServer<Service> {
        QTasksServiceServer::new(self)
    }
}

/// A tonic interceptor that lets through only the calls whose metadata carries
/// `authorization: Bearer <token>`, compared in constant time; the others end
/// `UNAUTHENTICATED`.
///
/// ```
/// use tonic::service::Interceptor;
///
/// let mut check = qtasks::grpc::BearerToken::new("s3cret");
/// let mut call = tonic::Request::new(());
/// call.metadata_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
/// assert!(check.call(call).is_ok());
/// let refused = check.call(tonic::Request::new(())).unwrap_err();
/// assert_eq!(refused.code(), tonic::Code::Unauthenticated);
/// ```
#[derive(Clone)]
pub struct BearerToken {
    token: Arc<str>,
}

impl BearerToken {
    /// Checks calls against `token` (an empty one lets no call through).
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        BearerToken {
            token: token.into(),
        }
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself: a debug print ends up in logs.
        f.debug_struct("BearerToken").finish_non_exhaustive()
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let refusal = match given {
            None => "this server needs a token: send the metadata `authorization: Bearer <token>`",
            // `ct_eq` takes as long whatever the first differing byte is (only the length
            // shows), so the token cannot be guessed a byte at a time from the answer's timing.
            // An empty token matches nothing: a mistake in the setup fails closed.
            Some(given)
                if !self.token.is_empty()
                    && bool::from(given.as_bytes().ct_eq(self.token.as_bytes())) =>
            {
                return Ok(request);
            }
            Some(_) => "the token is not this server's",
        };
        tracing::info!(
            peer = ?request.remote_addr(),
            "gRPC call refused: {refusal}"
        );
        Err(Status::unauthenticated(refusal))
    }
}

/// The token check of a server: every call passes when it has no token.
#[derive(Clone, Debug)]
struct Gate(Option<BearerToken>);

impl Interceptor for Gate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match &mut self.0 {
            Some(token) => token.call(request),
            None => Ok(request),
        }
    }
}

/// A certificate and its private key, in PEM, to serve over TLS.
#[derive(Clone)]
pub struct Tls {
    identity: Identity,
}

impl Tls {
    /// The certificate chain `cert` (PEM, the server's own first) and its private key `key`
    /// (PEM: PKCS#8, PKCS#1 or SEC1). They are checked when the server starts.
    pub fn from_pem(cert: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        Tls {
            identity: Identity::from_pem(cert, key),
        }
    }

    /// Reads the certificate chain and the private key from PEM files.
    ///
    /// ```no_run
    /// let tls = qtasks::grpc::Tls::from_pem_files("server.crt", "server.key")?;
    /// # Ok::<(), qtasks::grpc::GrpcError>(())
    /// ```
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, GrpcError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| GrpcError::TlsFile {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Tls::from_pem(read(cert.as_ref())?, read(key.as_ref())?))
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `Identity`'s own Debug would print the private key.
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

/// The gRPC server of an app: `QTasksService`, health and reflection, with an optional token
/// and TLS.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let app = qtasks::QueueTasks::new(); // or the app of any backend
/// qtasks::grpc::Grpc::new(app)
///     .token(Some("s3cret".to_owned()))
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Grpc {
    app: QueueTasks,
    token: Option<BearerToken>,
    tls: Option<Tls>,
}

impl Grpc {
    /// The server of `app`, with no token (loopback only) and no TLS.
    pub fn new(app: QueueTasks) -> Self {
        Grpc {
            app,
            token: None,
            tls: None,
        }
    }

    /// Requires `token` on every call of `QTasksService` and reflection (metadata
    /// `authorization: Bearer <token>`); health stays open. An empty token counts as none.
    #[must_use]
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.is_empty()).map(BearerToken::new);
        self
    }

    /// Serves over TLS with this certificate and key (`None`: plain HTTP/2).
    #[must_use]
    pub fn tls(mut self, tls: Option<Tls>) -> Self {
        self.tls = tls;
        self
    }

    /// Serves at `address` until the process ends. Anything but a loopback address needs a
    /// token.
    pub async fn serve(self, address: SocketAddr) -> Result<(), GrpcError> {
        self.serve_with_shutdown(address, std::future::pending())
            .await
    }

    /// Serves as [`Grpc::serve`] until `shutdown` resolves.
    pub async fn serve_with_shutdown(
        self,
        address: SocketAddr,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), GrpcError> {
        // Refused before binding: nothing listens, not even for a moment.
        self.check_address(address)?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(GrpcError::Bind)?;
        self.serve_listener(listener, shutdown).await
    }

    /// Serves on a listener bound already (port 0 picks a free one: read it from the listener
    /// first) until `shutdown` resolves. A listener on anything but loopback needs a token.
    pub async fn serve_listener(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), GrpcError> {
        let address = listener.local_addr().map_err(GrpcError::Bind)?;
        self.check_address(address)?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<QTasksServiceServer<Service>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            // tonic builds its rustls config on the process's default crypto provider; ring is
            // the one this workspace compiles in. A program that installed its own keeps it.
            let _ = rustls::crypto::ring::default_provider().install_default();
            server = server
                .tls_config(ServerTlsConfig::new().identity(tls.identity.clone()))
                .map_err(|source| GrpcError::Tls {
                    // tonic's own message is only "transport error": the reason is its cause.
                    reason: std::error::Error::source(&source)
                        .map_or_else(|| source.to_string(), |cause| ErrorChain(cause).to_string()),
                    source,
                })?;
        }
        let gate = Gate(self.token.clone());
        tracing::info!(
            %address,
            app = %self.app.name(),
            token = self.token.is_some(),
            tls = self.tls.is_some(),
            "serving gRPC (qtasks.v1.QTasksService, health, reflection)"
        );
        server
            .add_service(QTasksServiceServer::with_interceptor(
                Service::new(self.app),
                gate.clone(),
            ))
            .add_service(health_service)
            .add_service(InterceptedService::new(reflection, gate))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown,
            )
            .await?;
        Ok(())
    }

    fn check_address(&self, address: SocketAddr) -> Result<(), GrpcError> {
        if self.token.is_none() && !address.ip().is_loopback() {
            return Err(GrpcError::TokenRequired(address));
        }
        Ok(())
    }
}

/// Serves the app's `QTasksService`, health and reflection at `address` until the process
/// ends, with no token and no TLS: loopback only ([`Grpc`] has both).
pub async fn serve(app: QueueTasks, address: SocketAddr) -> Result<(), GrpcError> {
    Grpc::new(app).serve(address).await
}

/// Serves as [`serve`] until `shutdown` resolves.
pub async fn serve_with_shutdown(
    app: QueueTasks,
    address: SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError> {
    Grpc::new(app).serve_with_shutdown(address, shutdown).await
}

/// Serves on a listener bound already (port 0 picks a free one: read it from the listener
/// first) until `shutdown` resolves, with no token: the listener must be on loopback.
pub async fn serve_listener(
    app: QueueTasks,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError> {
    Grpc::new(app).serve_listener(listener, shutdown).await
}

/// The time `AddTask` waits, checked before anything is queued: `None` for 0 (do not wait).
fn wait_for(timeout: f64) -> Result<Option<Duration>, Status> {
    if timeout == 0.0 {
        return Ok(None);
    }
    // `try_from_secs_f64` refuses what `from_secs_f64` panics on: negative, NaN, infinite, or
    // more seconds than a `Duration` holds (1e20 is).
    Duration::try_from_secs_f64(timeout)
        .map(Some)
        .map_err(|_| {
            Status::invalid_argument(format!(
                "timeout must be a finite number of seconds, 0 or more, that fits a duration (got {timeout})"
            ))
        })
}

/// Parses a JSON field that may be empty (none), or says which field is wrong.
fn json_field(field: &str, text: &str, expect_list: bool) -> Result<Value, Status> {
    if text.trim().is_empty() {
        return Ok(if expect_list {
            Value::Array(Vec::new())
        } else {
            Value::Object(Map::new())
        });
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Status::invalid_argument(format!("{field} is not JSON: {e}")))?;
    match (&value, expect_list) {
        (Value::Array(_), true) | (Value::Object(_), false) => Ok(value),
        _ => Err(Status::invalid_argument(format!(
            "{field} must be a JSON {}",
            if expect_list { "list" } else { "object" }
        ))),
    }
}

fn result_json(record: &TaskRecord) -> String {
    record
        .returning
        .as_ref()
        .filter(|value| !value.is_null())
        .map(Value::to_string)
        .unwrap_or_default()
}

#[tonic::async_trait]
impl QTasksService for Service {
    async fn add_task(
        &self,
        request: Request<AddTaskRequest>,
    ) -> Result<Response<AddTaskResponse>, Status> {
        let peer = request.remote_addr();
        let request = request.into_inner();
        let args = json_field("args_json", &request.args_json, true)?;
        let kwargs = json_field("kwargs_json", &request.kwargs_json, false)?;
        let wait = wait_for(request.timeout)?;
        let mut options = AddOptions::default();
        if request.priority != 0 {
            options = options.priority(i64::from(request.priority));
        }
        let handle = match self
            .app
            .add_task_with(&request.name, args, kwargs, options)
            .await
        {
            Ok(handle) => handle,
            Err(error) => {
                return Ok(Response::new(AddTaskResponse {
                    ok: false,
                    error: error.to_string(),
                    ..AddTaskResponse::default()
                }));
            }
        };
        let uuid = handle.uuid().to_string();
        tracing::debug!(?peer, task = %request.name, %uuid, "gRPC AddTask queued a task");
        let Some(wait) = wait else {
            return Ok(Response::new(AddTaskResponse {
                ok: true,
                uuid,
                ..AddTaskResponse::default()
            }));
        };
        let response = match handle.wait(wait).await {
            Ok(record) if record.status == TaskStatus::Success => AddTaskResponse {
                ok: true,
                uuid,
                result_json: result_json(&record),
                error: String::new(),
            },
            Ok(record) => AddTaskResponse {
                ok: false,
                uuid,
                result_json: String::new(),
                error: match record.status {
                    TaskStatus::Cancel => {
                        format!("cancelled: {}", record.cancel_reason.unwrap_or_default())
                    }
                    _ => record.traceback.unwrap_or_default(),
                },
            },
            Err(error) => AddTaskResponse {
                ok: false,
                uuid,
                result_json: String::new(),
                error: error.to_string(),
            },
        };
        Ok(Response::new(response))
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<GetTaskResponse>, Status> {
        let request = request.into_inner();
        let uuid: uuid::Uuid = request
            .uuid
            .parse()
            .map_err(|e| Status::invalid_argument(format!("uuid is not a uuid: {e}")))?;
        let record = self
            .app
            .get(uuid)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let Some(record) = record else {
            return Ok(Response::new(GetTaskResponse {
                ok: false,
                error: format!("task {uuid} does not exist"),
                ..GetTaskResponse::default()
            }));
        };
        let mut response = GetTaskResponse {
            ok: true,
            status: record.status.to_string(),
            ..GetTaskResponse::default()
        };
        if request.include_result {
            response.result_json = result_json(&record);
            response.traceback = record
                .traceback
                .clone()
                .or_else(|| record.cancel_reason.clone())
                .unwrap_or_default();
        }
        Ok(Response::new(response))
    }
}
