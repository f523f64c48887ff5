//! The gRPC service (`qtasks.v1`, Python QTasks' proto) with a Rust client: add and wait, get,
//! the strict answers to bad input, a failing and a late task, health and reflection; the
//! token on every call, the refusal to serve beyond loopback without one, TLS. (The Python
//! client speaking the original's stubs is in `python_interop.rs`.)

use std::time::Duration;

use qtasks::grpc::proto::q_tasks_service_client::QTasksServiceClient;
use qtasks::grpc::proto::{AddTaskRequest, GetTaskRequest};
use qtasks::grpc::{Grpc, GrpcError, Tls};
use qtasks::records::RecordQuery;
use qtasks::{QueueTasks, TaskError, TaskResult};
use qtasks_test_support::grpc::grpc_tls_channel;
use qtasks_test_support::grpc::serve_grpc_with;
use qtasks_test_support::grpc::test_certificates;
use qtasks_test_support::grpc::with_token;
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
    let (address, stop) = qtasks_test_support::grpc::serve_grpc(&app).await;
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

/// How many records the app holds.
async fn records(app: &QueueTasks) -> usize {
    app.records()
        .list(&RecordQuery::default())
        .await
        .unwrap()
        .records
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_that_is_no_duration_is_refused_before_anything_is_queued() {
    // Not started: a task that were queued would stay, to be counted.
    let (app, address, stop) = {
        let app = QueueTasks::new();
        let (address, stop) = qtasks_test_support::grpc::serve_grpc(&app).await;
        (app, format!("http://{address}"), stop)
    };
    let mut client = QTasksServiceClient::connect(address).await.unwrap();
    // 1e20 s is more than a `Duration` holds: it used to panic after the task was queued.
    for timeout in [
        1e20,
        f64::NAN,
        -1.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
    ] {
        let status = client
            .add_task(AddTaskRequest {
                name: "grpc_add".into(),
                args_json: "[1, 2]".into(),
                timeout,
                ..AddTaskRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{timeout}: {status:?}"
        );
        assert!(
            status.message().contains("timeout"),
            "{timeout}: {status:?}"
        );
        assert_eq!(records(&app).await, 0, "{timeout}: a task was queued");
    }
    // The server is still there, and a timeout that is a duration still works.
    let late = client
        .add_task(AddTaskRequest {
            name: "grpc_add".into(),
            args_json: "[1, 2]".into(),
            timeout: 0.05,
            ..AddTaskRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!late.ok && late.error.contains("timed out"), "{late:?}");
    // The extremes of `priority` are priorities like any other.
    for priority in [i32::MIN, i32::MAX] {
        let added = client
            .add_task(AddTaskRequest {
                name: "grpc_add".into(),
                args_json: "[1, 2]".into(),
                priority,
                ..AddTaskRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(added.ok, "{priority}: {added:?}");
    }
    assert_eq!(records(&app).await, 3);
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_call_but_health() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let app = QueueTasks::new();
    app.start().await.unwrap();
    let (address, stop) =
        serve_grpc_with(Grpc::new(app.clone()).token(Some("s3cret-token".into()))).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = QTasksServiceClient::new(channel.clone());
    let add = || AddTaskRequest {
        name: "grpc_add".into(),
        args_json: "[2, 3]".into(),
        timeout: 5.0,
        ..AddTaskRequest::default()
    };

    // No token, a wrong one, a prefix of it, another scheme: UNAUTHENTICATED, nothing queued.
    let status = client.add_task(add()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("authorization: Bearer"),
        "says how: {status:?}"
    );
    for wrong in ["nope", "s3cret", "s3cret-token!"] {
        let status = client.add_task(with_token(add(), wrong)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{wrong}: {status:?}");
    }
    let mut basic = tonic::Request::new(add());
    basic
        .metadata_mut()
        .insert("authorization", "Basic s3cret-token".parse().unwrap());
    let status = client.add_task(basic).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = client
        .get_task(GetTaskRequest {
            uuid: qtasks::Uuid::new_v4().to_string(),
            include_result: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(records(&app).await, 0, "a refused call queued a task");

    // The right token: the service works.
    let added = client
        .add_task(with_token(add(), "s3cret-token"))
        .await
        .unwrap()
        .into_inner();
    assert!(added.ok && added.result_json == "5", "{added:?}");
    let got = client
        .get_task(with_token(
            GetTaskRequest {
                uuid: added.uuid.clone(),
                include_result: true,
            },
            "s3cret-token",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status, "success", "{got:?}");

    // Health stays open (a probe needs no secret); reflection does not.
    let answer = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "qtasks.v1.QTasksService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, 1, "SERVING");
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let status = ServerReflectionClient::new(channel)
        .server_reflection_info(futures_util::stream::iter([list]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let _ = stop.send(());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn serving_beyond_loopback_needs_a_token() {
    // Refused before binding, by address...
    let error = Grpc::new(QueueTasks::new())
        .serve("0.0.0.0:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, GrpcError::TokenRequired(_)), "{error:?}");
    assert!(error.to_string().contains("without a token"), "{error}");
    // ...and the same from the plain functions, with an empty token counting as none.
    let error = qtasks::grpc::serve(QueueTasks::new(), "[::]:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, GrpcError::TokenRequired(_)), "{error:?}");
    let error = Grpc::new(QueueTasks::new())
        .token(Some(String::new()))
        .serve("0.0.0.0:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, GrpcError::TokenRequired(_)), "{error:?}");
    // A listener bound beyond loopback already is refused too (nothing accepted on it).
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let error = qtasks::grpc::serve_listener(QueueTasks::new(), listener, std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(error, GrpcError::TokenRequired(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_carries_the_calls_and_the_token() {
    let certificates = test_certificates();
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let (address, stop) = serve_grpc_with(
        Grpc::new(app.clone())
            .token(Some("s3cret-token".into()))
            .tls(Some(Tls::from_pem(&certificates.cert, &certificates.key))),
    )
    .await;

    let channel = grpc_tls_channel(address.port(), &certificates.ca)
        .await
        .unwrap();
    let mut client = QTasksServiceClient::new(channel);
    let added = client
        .add_task(with_token(
            AddTaskRequest {
                name: "grpc_add".into(),
                args_json: "[20, 22]".into(),
                timeout: 5.0,
                ..AddTaskRequest::default()
            },
            "s3cret-token",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(added.ok && added.result_json == "42", "{added:?}");
    // The token is still needed over TLS.
    let status = client
        .get_task(GetTaskRequest {
            uuid: added.uuid,
            include_result: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A client that does not trust the certificate, or speaks plain HTTP/2, gets nothing.
    let stranger = test_certificates();
    assert!(
        grpc_tls_channel(address.port(), &stranger.ca)
            .await
            .is_err(),
        "a certificate of another authority was trusted"
    );
    let mut plain = QTasksServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let status = plain
        .get_task(with_token(
            GetTaskRequest {
                uuid: qtasks::Uuid::new_v4().to_string(),
                include_result: false,
            },
            "s3cret-token",
        ))
        .await
        .unwrap_err();
    assert_ne!(status.code(), Code::Ok, "{status:?}");
    let _ = stop.send(());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_tls_key_that_is_not_one_is_a_typed_error() {
    let certificates = test_certificates();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = Grpc::new(QueueTasks::new())
        .tls(Some(Tls::from_pem(&certificates.cert, "not a key")))
        .serve_listener(listener, std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(error, GrpcError::Tls { .. }), "{error:?}");
    assert!(
        error.to_string().contains("key"),
        "says what is wrong: {error}"
    );
    let error =
        Tls::from_pem_files("/nonexistent/server.crt", "/nonexistent/server.key").unwrap_err();
    assert!(
        matches!(&error, GrpcError::TlsFile { path, .. } if path.ends_with("server.crt")),
        "{error:?}"
    );
}
