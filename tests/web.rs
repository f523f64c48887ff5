//! The web API (`qtasks::web`): its routes, the token on every request, the security headers,
//! and the refusal to listen beyond loopback without a token.

use std::io::{Read, Write};
use std::time::Duration;

use qtasks::QueueTasks;
use qtasks::web::{Web, WebError};
use serde_json::Value;

#[qtasks::task]
async fn web_echo(text: String) -> String {
    text
}

/// `GET path` with an optional bearer token: (status, headers, body).
fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_the_apps_data_to_token_holders_only() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let script = "<script>alert(1)</script>";
    let handle = web_echo::add_task(&app, script.into()).await.unwrap();
    handle.result(Duration::from_secs(5)).await.unwrap();

    let web = Web::new(app.clone()).token(Some("s3cret-token".into()));
    let port = web
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    let uuid = handle.uuid().to_string();
    let task_path = format!("/api/v1/tasks/{uuid}");

    tokio::task::spawn_blocking(move || {
        // No token, a wrong one, one that is a prefix: refused, with the headers still there.
        for token in [None, Some("wrong"), Some("s3cret")] {
            let (status, head, _) = get(port, "/api/v1/stats", token);
            assert_eq!(status, 401, "{token:?}");
            assert!(head.contains("www-authenticate: bearer"), "{head}");
            assert!(
                head.contains("content-security-policy: default-src 'none'"),
                "{head}"
            );
        }
        let token = Some("s3cret-token");
        let (status, head, body) = get(port, "/api/v1/stats", token);
        assert_eq!(status, 200, "{body}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("cache-control: no-store"), "{head}");
        let stats: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(stats["app"], "QueueTasks");
        assert_eq!(stats["queue"]["finished"]["success"], 1, "{stats}");
        assert_eq!(stats["workers"].as_array().unwrap().len(), 1, "{stats}");

        let (status, _, body) = get(port, "/api/v1/workers", token);
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body)
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );

        // A task's record: the argument comes back as JSON data, never as markup.
        let (status, head, body) = get(port, &task_path, token);
        assert_eq!(status, 200, "{body}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        let record: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(record["status"], "success");
        assert_eq!(record["args"][0], script);

        let (status, _, body) = get(
            port,
            &format!("/api/v1/tasks/{}", qtasks::Uuid::new_v4()),
            token,
        );
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("does not exist"), "{body}");
        let (status, _, body) = get(port, "/api/v1/tasks/not-a-uuid", token);
        assert_eq!(status, 400, "{body}");
        let (status, _, body) = get(port, "/api/v1/dead?limit=5000", token);
        assert_eq!((status, body.as_str()), (200, "[]"));
    })
    .await
    .unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn serving_beyond_loopback_needs_a_token() {
    let web = Web::new(QueueTasks::new());
    let error = web.serve("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
    assert!(matches!(error, WebError::TokenRequired(_)), "{error:?}");
    assert!(error.to_string().contains("without a token"), "{error}");
    // An empty token is none.
    let error = Web::new(QueueTasks::new())
        .token(Some(String::new()))
        .serve("0.0.0.0:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(error, WebError::TokenRequired(_)));
}
