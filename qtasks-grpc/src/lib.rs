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
//! The command line serves it too: `qtasks grpc --bind 127.0.0.1:50051`.
//!
//! # Where it is stricter than the original
//!
//! - `args_json` that is not a JSON list, or `kwargs_json` that is not a JSON object, is
//!   `INVALID_ARGUMENT` naming the field (the original silently uses `[]` or `{}`); empty
//!   strings mean none.
//! - A `uuid` that is not a uuid is `INVALID_ARGUMENT`; an unknown one answers `ok = false`
//!   with the error "task ... does not exist" (as the original).
//! - `AddTask` with a `timeout`: a task that ends `success` answers `ok = true` and its
//!   `result_json`; one that fails or is cancelled answers `ok = false`, its `uuid`, and the
//!   error or the cancel reason in `error`; a wait that runs out answers `ok = false`, the
//!   `uuid`, and "timed out ..." in `error` (the original answers `ok = true` with no uuid). The
//!   task goes on either way.
//! - An unknown task name on an in-memory app is refused at once (`ok = false`).
#![warn(missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use qtasks_core::{AddOptions, QueueTasks, TaskRecord, TaskStatus};
use serde_json::{Map, Value};
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
#[derive(Debug, Clone)]
pub struct Service {
    app: QueueTasks,
}

impl Service {
    /// The service adding and reading tasks of `app`.
    pub fn new(app: QueueTasks) -> Self {
        Service { app }
    }

    /// As a tonic service, to add to a server of your own.
    pub fn into_server(self) -> QTasksServiceServer<Service> {
        QTasksServiceServer::new(self)
    }
}

/// Serves the app's `QTasksService`, health and reflection at `address` until the process
/// ends.
pub async fn serve(app: QueueTasks, address: SocketAddr) -> Result<(), GrpcError> {
    serve_with_shutdown(app, address, std::future::pending()).await
}

/// Serves as [`serve`] until `shutdown` resolves.
pub async fn serve_with_shutdown(
    app: QueueTasks,
    address: SocketAddr,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(GrpcError::Bind)?;
    serve_listener(app, listener, shutdown).await
}

/// Serves on a listener bound already (port 0 picks a free one: read it from the listener
/// first) until `shutdown` resolves.
pub async fn serve_listener(
    app: QueueTasks,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GrpcError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<QTasksServiceServer<Service>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let address = listener.local_addr().map_err(GrpcError::Bind)?;
    tracing::info!(%address, app = %app.name(), "serving gRPC (qtasks.v1.QTasksService, health, reflection)");
    tonic::transport::Server::builder()
        .add_service(Service::new(app).into_server())
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown,
        )
        .await?;
    Ok(())
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
        let request = request.into_inner();
        let args = json_field("args_json", &request.args_json, true)?;
        let kwargs = json_field("kwargs_json", &request.kwargs_json, false)?;
        if !request.timeout.is_finite() || request.timeout < 0.0 {
            return Err(Status::invalid_argument(
                "timeout must be a number of seconds, 0 or more",
            ));
        }
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
        if request.timeout == 0.0 {
            return Ok(Response::new(AddTaskResponse {
                ok: true,
                uuid,
                ..AddTaskResponse::default()
            }));
        }
        let response = match handle.wait(Duration::from_secs_f64(request.timeout)).await {
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
