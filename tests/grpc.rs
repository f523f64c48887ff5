//! The gRPC service (`qtasks.v1`, Python QTasks' proto) with a Rust client: add and wait, get,
//! the strict answers to bad input, a failing and a late task, health and reflection. (The
//! Python client speaking the original's stubs is in `python_interop.rs`.)

mod support;

use std::time::Duration;

use qtasks::grpc::proto::q_tasks_service_client::QTasksServiceClient;
use qtasks::grpc::proto::{AddTaskRequest, GetTaskRequest};
use qtasks::{QueueTasks, TaskError, TaskResult};
use tonic::Code;

#[qtasks::task]
async fn grpc_add(a: i64, b: i64) -> i64 {
    a + b
}

#[qtasks::task]
async fn grpc_fails() -> TaskResult<()> {
    Err(TaskError::msg("no ledger"))
}

#[qtasks::task]
async fn grpc_slow() -> u8 {
    tokio::time::sleep(Duration::from_secs(2)).await;
    1
}

/// An in-memory app with a worker, served on a free port.
async fn served() -> (QueueTasks, String, tokio::sync::oneshot::Sender<()>) {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let (address, stop) = support::serve_grpc(&app).await;
    (app, format!("http://{address}"), stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_adds_waits_and_reads_tasks() {
    let (app, address, stop) = served().await;
    let mut client = QTasksServiceClient::connect(address).await.unwrap();

    let added = client
        .add_task(AddTaskRequest {
            name: "grpc_add".into(),
            args_json: "[2]".into(),
            kwargs_json: r#"{"b": 3}"#.into(),
            timeout: 5.0,
            priority: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(added.ok, "{added:?}");
    assert_eq!(added.result_json, "5");
    assert_eq!(added.error, "");

    let queued = client
        .add_task(AddTaskRequest {
            name: "grpc_add".into(),
            args_json: "[40, 2]".into(),
            ..AddTaskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(queued.ok && !queued.uuid.is_empty(), "{queued:?}");
    assert_eq!(queued.result_json, "", "no wait, no result");
    app.handle::<i64>(queued.uuid.parse().unwrap())
        .result(Duration::from_secs(5))
        .await
        .unwrap();
    let got = client
        .get_task(GetTaskRequest {
            uuid: queued.uuid.clone(),
            include_result: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.ok);
    assert_eq!(
        (got.status.as_str(), got.result_json.as_str()),
        ("success", "42")
    );

    // A task that fails, waited for: not ok, with its uuid and the error.
    let failed = client
        .add_task(AddTaskRequest {
            name: "grpc_fails".into(),
            timeout: 5.0,
            ..AddTaskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!failed.ok && !failed.uuid.is_empty(), "{failed:?}");
    assert_eq!(failed.error, "TaskError: no ledger");

    // A wait that runs out says so, with the uuid (the task goes on).
    let late = client
        .add_task(AddTaskRequest {
            name: "grpc_slow".into(),
            timeout: 0.2,
            ..AddTaskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!late.ok && !late.uuid.is_empty(), "{late:?}");
    assert!(late.error.contains("timed out"), "{late:?}");

    let _ = stop.send(());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument_naming_the_field() {
    let (app, address, stop) = served().await;
    let mut client = QTasksServiceClient::connect(address).await.unwrap();
    for (args_json, kwargs_json, says) in [
        ("[2,", "", "args_json is not JSON"),
        (r#"{"a": 1}"#, "", "args_json must be a JSON list"),
        ("[]", "[1]", "kwargs_json must be a JSON object"),
    ] {
        let status = client
            .add_task(AddTaskRequest {
                name: "grpc_add".into(),
                args_json: args_json.into(),
                kwargs_json: kwargs_json.into(),
                ..AddTaskRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(says), "{status:?}");
    }
    let status = client
        .get_task(GetTaskRequest {
            uuid: "not-a-uuid".into(),
            include_result: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let missing = client
        .get_task(GetTaskRequest {
            uuid: qtasks::Uuid::new_v4().to_string(),
            include_result: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !missing.ok && missing.error.contains("does not exist"),
        "{missing:?}"
    );
    // An unknown task on an in-memory app is refused at once.
    let unknown = client
        .add_task(AddTaskRequest {
            name: "grpc_ad".into(),
            ..AddTaskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !unknown.ok && unknown.error.contains("did you mean `grpc_add`"),
        "{unknown:?}"
    );
    let _ = stop.send(());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_serving_and_reflection_lists_the_service() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (app, address, stop) = served().await;
    let channel = tonic::transport::Endpoint::from_shared(address)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "qtasks.v1.QTasksService"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status, 1, "SERVING for {service:?}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"qtasks.v1.QTasksService".to_owned()),
        "{names:?}"
    );
    let _ = stop.send(());
    app.stop().await.unwrap();
}
