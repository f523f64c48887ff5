//! The dashboard over plain HTTP (`qtasks::web`): its routes, the token on every request, the
//! security headers, CSRF and the origin and host checks, escaping, the live streams, the
//! refusal to listen beyond loopback without a token and to answer a peer beyond loopback, the
//! login cookie that is not the token, and the actions' log lines. (`web_browser.rs` drives it
//! in Chromium.)

use std::future::Future;
use std::io::{Read, Write};
use std::time::Duration;

use futures_util::StreamExt;

use qtasks::web::{Web, WebError};
use qtasks::{QueueTasks, Uuid};
use serde_json::Value;

#[qtasks::task]
async fn web_echo(text: String) -> String {
    text
}

/// `GET path` with an optional bearer token: (status, headers, body).
fn get(port: u16, path: &str, token: Option<&str>) -> (u16, String, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}"),
        "",
    )
}

/// One request, `head` being its request line and headers (each ending in CRLF), then `body`:
/// (status, headers in lower case, body).
fn request(port: u16, head: &str, body: &str) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "{head}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), body.to_owned())
}

/// A form POST from a page of `origin` (with the browser's headers), to a server on `port`.
fn post_form(port: u16, path: &str, origin: &str, site: &str, form: &str) -> (u16, String, String) {
    request(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {origin}\r\nSec-Fetch-Site: {site}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        ),
        form,
    )
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

        let (status, _, body) = get(port, &format!("/api/v1/tasks/{}", Uuid::new_v4()), token);
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

/// A task's page says which worker ran it and for how long, and when a delayed task is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_page_shows_its_run_and_a_delayed_task_its_due_time() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let ran = web_echo::add_task(&app, "hello".into()).await.unwrap();
    ran.wait(Duration::from_secs(10)).await.unwrap();
    let later = web_echo::call("later".into())
        .delay(Duration::from_secs(3600))
        .add(&app)
        .await
        .unwrap();
    let port = Web::new(app.clone())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    let (ran, later) = (ran.uuid(), later.uuid());
    tokio::task::spawn_blocking(move || {
        let (status, _, body) = get(port, &format!("/tasks/{ran}"), None);
        assert_eq!(status, 200, "{body}");
        for shown in ["<dt>Worker</dt>", "<dt>Runtime</dt>", "<dt>Started</dt>"] {
            assert!(body.contains(shown), "{shown} in {body}");
        }
        assert!(!body.contains("<dt>Due</dt>"), "{body}");
        let (status, _, body) = get(port, &format!("/tasks/{later}"), None);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("<dt>Due</dt>"), "{body}");
        assert!(!body.contains("<dt>Worker</dt>"), "{body}");
    })
    .await
    .unwrap();
    app.stop().await.unwrap();
}

/// `status=delayed` lists the waiting tasks whose due time is ahead, and not those that may
/// run now, on the page and in the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delayed_filter_lists_only_tasks_due_later() {
    // Not started: both tasks wait.
    let app = QueueTasks::new();
    let now = web_echo::add_task(&app, "now".into()).await.unwrap().uuid();
    let later = web_echo::call("later".into())
        .delay(Duration::from_secs(3600))
        .add(&app)
        .await
        .unwrap()
        .uuid();
    // The newest waits without a delay: a page of one holds it alone (added a few ms later,
    // as pages are ordered by the millisecond of the add, then by uuid).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let newest = web_echo::add_task(&app, "newest".into())
        .await
        .unwrap()
        .uuid();
    let port = Web::new(app.clone())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    tokio::task::spawn_blocking(move || {
        // A page thinned to nothing says more may follow, and the next page has the task.
        let (status, _, body) = get(port, "/tasks?status=delayed&limit=1", None);
        assert_eq!(status, 200, "{body}");
        assert!(!body.contains(&format!("tasks/{newest}\"")), "{body}");
        assert!(body.contains("No task matches"), "{body}");
        assert!(body.contains("Keep looking"), "{body}");
        for path in ["/tasks?status=delayed", "/api/v1/tasks?status=delayed"] {
            let (status, _, body) = get(port, path, None);
            assert_eq!(status, 200, "{path}: {body}");
            assert!(body.contains(&later.to_string()), "{path}: {body}");
            assert!(!body.contains(&now.to_string()), "{path}: {body}");
        }
        let (_, _, body) = get(port, "/tasks?status=new", None);
        assert!(
            body.contains(&later.to_string()) && body.contains(&now.to_string()),
            "{body}"
        );
        assert!(
            body.contains("due later (delayed)"),
            "the filter is offered: {body}"
        );
    })
    .await
    .unwrap();
}

/// The pages and actions over plain HTTP: what a browser does not show (headers, refusals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_escape_what_they_show_and_actions_need_the_csrf_token() {
    let app = QueueTasks::new();
    let script = "<script>alert(1)</script>";
    // Not started: the task waits, so it can be cancelled.
    let handle = web_echo::add_task(&app, script.into()).await.unwrap();
    let uuid = handle.uuid();
    // The metrics beside the dashboard, as `qtasks web` serves them.
    let port = Web::new(app.clone())
        .routes(qtasks::metrics::Metrics::install(&app).router())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    let app_for_checks = app.clone();
    tokio::task::spawn_blocking(move || {
        // The tasks page and the task's page show the argument as text.
        for path in ["/tasks".to_owned(), format!("/tasks/{uuid}")] {
            let (status, head, body) = get(port, &path, None);
            assert_eq!(status, 200, "{path}: {body}");
            assert!(head.contains("content-type: text/html"), "{head}");
            assert!(
                head.contains("content-security-policy: default-src 'none'; script-src 'self';"),
                "{head}"
            );
            assert!(
                !body.contains(script),
                "{path} carries the script as markup"
            );
            assert!(
                body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
                "{path}: {body}"
            );
            assert_eq!(
                body.matches("<script").count(),
                1,
                "{path}: only the dashboard's own"
            );
        }
        let csrf: Value = serde_json::from_str(&get(port, "/api/v1/csrf", None).2).unwrap();
        let csrf = csrf["token"].as_str().unwrap().to_owned();
        let origin = format!("http://127.0.0.1:{port}");
        let cancel = format!("/tasks/{uuid}/cancel");

        // Refused: no token, a wrong one, another site, another origin, a GET.
        for (form, origin, site, why) in [
            (
                "reason=x".to_owned(),
                origin.as_str(),
                "same-origin",
                "CSRF",
            ),
            (
                "csrf=nope".to_owned(),
                origin.as_str(),
                "same-origin",
                "CSRF",
            ),
            (
                format!("csrf={csrf}"),
                origin.as_str(),
                "cross-site",
                "another site",
            ),
            (
                format!("csrf={csrf}"),
                "http://evil.example",
                "same-origin",
                "another origin",
            ),
        ] {
            let (status, _, body) = post_form(port, &cancel, origin, site, &form);
            assert_eq!(status, 403, "{form} from {origin}: {body}");
            assert!(body.contains(why), "{body}");
        }
        let (status, _, _) = get(port, &cancel, None);
        assert_eq!(status, 405, "actions are POST only");
        assert_eq!(
            futures_block(app_for_checks.get(uuid))
                .unwrap()
                .unwrap()
                .status,
            qtasks::TaskStatus::New,
            "a refused action changed the task"
        );

        // With the token from the page: done, and back to the task's page.
        let (status, head, _) = post_form(
            port,
            &cancel,
            &origin,
            "same-origin",
            &format!("csrf={csrf}&reason=by+hand"),
        );
        assert_eq!(status, 303, "{head}");
        assert!(
            head.contains(&format!("location: /tasks/{uuid}?done=cancelled")),
            "{head}"
        );
        let record = futures_block(app_for_checks.get(uuid)).unwrap().unwrap();
        assert_eq!(record.status, qtasks::TaskStatus::Cancel);
        assert_eq!(record.cancel_reason.as_deref(), Some("by hand"));

        // The JSON API's actions take the token as a header.
        let delete = format!("POST /api/v1/tasks/{uuid}/delete HTTP/1.1\r\nHost: localhost\r\n");
        assert_eq!(request(port, &delete, "").0, 403);
        let (status, _, body) = request(port, &format!("{delete}X-Qtasks-Csrf: {csrf}\r\n"), "");
        assert_eq!((status, body.as_str()), (200, r#"{"deleted":true}"#));

        // Without a token, only requests to a loopback name are answered (DNS rebinding).
        let (status, _, body) = request(port, "GET / HTTP/1.1\r\nHost: rebound.example:80\r\n", "");
        assert_eq!(status, 421, "{body}");

        // The live stream, the metrics, the list API, the assets.
        let (status, head, _) = get(port, "/api/v1/tasks?status=nope", None);
        assert_eq!(status, 400, "{head}");
        let (status, _, body) = get(port, "/metrics", None);
        assert_eq!(status, 200);
        assert!(body.contains("qtasks_tasks_running 0"), "{body}");
        let (status, head, body) = get(port, "/assets/app.js", None);
        assert_eq!(status, 200);
        assert!(head.contains("content-type: text/javascript"), "{head}");
        assert!(body.contains("EventSource"), "{body}");
        assert_eq!(get(port, "/assets/nope.js", None).0, 404);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_page_pauses_and_resumes_a_queue() {
    let app = QueueTasks::new();
    let billed = web_echo::call("invoice".into())
        .queue("billing")
        .add(&app)
        .await
        .unwrap();
    let port = Web::new(app.clone())
        .routes(qtasks::metrics::Metrics::install(&app).router())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    let checks = app.clone();
    tokio::task::spawn_blocking(move || {
        let (status, _, body) = get(port, "/queues", None);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("billing") && body.contains("Pause"), "{body}");
        let csrf: Value = serde_json::from_str(&get(port, "/api/v1/csrf", None).2).unwrap();
        let csrf = csrf["token"].as_str().unwrap().to_owned();
        let origin = format!("http://127.0.0.1:{port}");

        // Without the CSRF token: refused, and nothing changes.
        let (status, _, _) = post_form(port, "/queues/pause", &origin, "same-origin", "name=billing");
        assert_eq!(status, 403);
        let queues = futures_block(checks.queues().list()).unwrap();
        assert!(!queues["billing"].paused);

        let form = format!("csrf={csrf}&name=billing");
        let (status, head, _) = post_form(port, "/queues/pause", &origin, "same-origin", &form);
        assert_eq!(status, 303, "{head}");
        assert!(head.contains("location: /queues?done=paused"), "{head}");
        let queues: Value = serde_json::from_str(&get(port, "/api/v1/queues", None).2).unwrap();
        assert_eq!(queues["billing"]["paused"], true, "{queues}");
        assert_eq!(queues["billing"]["waiting"], 1, "{queues}");
        let (_, _, page) = get(port, "/queues?done=paused", None);
        assert!(page.contains("Resume") && page.contains("The queue is paused"), "{page}");
        let (_, _, metrics) = get(port, "/metrics", None);
        assert!(
            metrics.contains(r#"qtasks_queue_paused{queue="billing"} 1"#)
                && metrics.contains(r#"qtasks_queue_waiting{queue="billing"} 1"#),
            "{metrics}"
        );

        // The JSON API takes the token as a header; a name that is no queue name is refused.
        let resume = "POST /api/v1/queues/billing/resume HTTP/1.1\r\nHost: localhost\r\n";
        assert_eq!(request(port, resume, "").0, 403);
        let (status, _, body) = request(port, &format!("{resume}X-Qtasks-Csrf: {csrf}\r\n"), "");
        assert_eq!((status, body.as_str()), (200, r#"{"paused":false,"queue":"billing"}"#));
        let bad = format!("POST /api/v1/queues/bad%7Cname/pause HTTP/1.1\r\nHost: localhost\r\nX-Qtasks-Csrf: {csrf}\r\n");
        let (status, _, body) = request(port, &bad, "");
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("bad|name"), "{body}");
        let queues = futures_block(checks.queues().list()).unwrap();
        assert!(!queues["billing"].paused);
    })
    .await
    .unwrap();
    // Nothing served billing: the task still waits.
    assert_eq!(
        billed.get().await.unwrap().unwrap().status,
        qtasks::TaskStatus::New
    );
}

/// Runs a future to its end from a blocking thread of the test's runtime.
fn futures_block<F: Future>(future: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(future)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_sends_the_overview_as_it_changes() {
    let app = QueueTasks::new();
    let port = Web::new(app.clone())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /events?view=overview HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    app.start().await.unwrap();
    web_echo::add_task(&app, "one".into())
        .await
        .unwrap()
        .result(Duration::from_secs(5))
        .await
        .unwrap();
    // Read until an event shows the finished task.
    let mut seen = String::new();
    let mut buffer = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !seen.contains("c-success") || !seen.contains(r#"href=\"tasks?status=success\">1</a>"#) {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .expect("no event showed the finished task")
            .unwrap();
        assert!(read > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert!(
        seen.to_lowercase()
            .contains("content-type: text/event-stream"),
        "{seen}"
    );
    assert!(seen.contains("event: regions"), "{seen}");
    app.stop().await.unwrap();
}

static ITEM_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

/// Yields one item, then waits for the test before the second.
#[qtasks::task]
async fn web_items() -> impl futures_util::Stream<Item = String> {
    futures_util::stream::iter(["first", "second"]).then(|item| async move {
        if item == "second" {
            ITEM_GATE.acquire().await.unwrap().forget();
        }
        format!("<b>{item}</b>")
    })
}

/// Reads an event stream until `wanted` shows, or fails after 15 s with what it read.
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, wanted: &str) {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !seen.contains(wanted) {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("{wanted} never came: {seen}"))
            .unwrap();
        assert!(read > 0, "the stream ended before {wanted}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_tasks_items_reach_its_page_as_they_arrive() {
    use tokio::io::AsyncWriteExt;
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let port = Web::new(app.clone())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    let handle = web_items::add_task(&app).await.unwrap();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "GET /events?view=task&uuid={} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        handle.uuid()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    // The first item while the task still runs, escaped; then the second, and the end.
    read_until(&mut stream, &mut seen, "Items so far (1)").await;
    assert!(seen.contains("&lt;b&gt;first&lt;/b&gt;"), "{seen}");
    assert!(!seen.contains("second"), "{seen}");
    ITEM_GATE.add_permits(1);
    read_until(&mut stream, &mut seen, "s-success").await;
    assert!(seen.contains("second"), "{seen}");
    app.stop().await.unwrap();
}

/// A request to the router itself, as if from `peer` (none: served without `ConnectInfo`),
/// with `Host: localhost`: a connection from beyond loopback cannot be made on a test machine.
async fn call_router(
    router: &axum::Router,
    peer: Option<&str>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tower::ServiceExt;
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(axum::body::Body::empty()).unwrap();
    if let Some(peer) = peer {
        let peer: std::net::SocketAddr = peer.parse().unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
    }
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn without_a_token_only_loopback_peers_are_answered_whatever_the_host_says() {
    let app = QueueTasks::new();
    let uuid = web_echo::add_task(&app, "x".into()).await.unwrap().uuid();
    let router = Web::new(app.clone()).router();
    let (status, body) =
        call_router(&router, Some("127.0.0.1:40000"), "GET", "/api/v1/csrf", &[]).await;
    assert_eq!(status, 200, "{body}");
    let csrf: Value = serde_json::from_str(&body).unwrap();
    let csrf = csrf["token"].as_str().unwrap().to_owned();

    // A peer beyond loopback (a port forwarded from the network), or none known, with
    // `Host: localhost` all the same: refused, pages, API and actions alike.
    let cancel = format!("/api/v1/tasks/{uuid}/cancel");
    for peer in [Some("192.0.2.7:40000"), Some("[2001:db8::7]:40000"), None] {
        for (method, path) in [
            ("GET", "/"),
            ("GET", "/api/v1/stats"),
            ("POST", cancel.as_str()),
        ] {
            let (status, body) =
                call_router(&router, peer, method, path, &[("x-qtasks-csrf", &csrf)]).await;
            assert_eq!(status, 403, "{peer:?} {method} {path}: {body}");
            assert!(body.contains("loopback"), "{body}");
        }
    }
    assert_eq!(
        app.get(uuid).await.unwrap().unwrap().status,
        qtasks::TaskStatus::New,
        "a refused action changed the task"
    );
    // A loopback peer gets the action.
    let (status, body) = call_router(
        &router,
        Some("[::1]:40000"),
        "POST",
        &cancel,
        &[("x-qtasks-csrf", &csrf)],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"cancelled":true}"#));

    // With a token, the peer may be anywhere: the token is the proof.
    let router = Web::new(app.clone()).token(Some("t0ken".into())).router();
    let (status, _) = call_router(
        &router,
        Some("192.0.2.7:40000"),
        "GET",
        "/api/v1/stats",
        &[("authorization", "Bearer t0ken")],
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_a_request_a_proxy_forwarded_is_refused() {
    let port = Web::new(QueueTasks::new())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    tokio::task::spawn_blocking(move || {
        assert_eq!(get(port, "/api/v1/stats", None).0, 200);
        for header in [
            "X-Forwarded-For: 192.0.2.7",
            "Forwarded: for=192.0.2.7",
            "X-Real-IP: 192.0.2.7",
        ] {
            let (status, _, body) = request(
                port,
                &format!("GET /api/v1/stats HTTP/1.1\r\nHost: localhost\r\n{header}\r\n"),
                "",
            );
            assert_eq!(status, 403, "{header}: {body}");
            assert!(body.contains("proxy"), "{body}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_cookie_holds_a_value_derived_from_the_token_not_the_token() {
    let token = "s3cret-token";
    let port = Web::new(QueueTasks::new())
        .token(Some(token.into()))
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    tokio::task::spawn_blocking(move || {
        let login = |form: &str| {
            request(
                port,
                "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n",
                form,
            )
        };
        let (status, _, _) = login("token=s3cret");
        assert_eq!(status, 401, "a prefix of the token is not it");
        let (status, head, _) = login(&format!("token={token}"));
        assert_eq!(status, 303, "{head}");
        let cookie = head
            .lines()
            .find_map(|line| line.strip_prefix("set-cookie: "))
            .unwrap_or_else(|| panic!("no cookie: {head}"));
        let value = cookie
            .split(';')
            .next()
            .and_then(|pair| pair.strip_prefix("qtasks_token="))
            .unwrap_or_else(|| panic!("{cookie}"));
        let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(!value.is_empty(), "{cookie}");
        assert!(!cookie.contains(token), "the cookie holds the token: {cookie}");
        assert!(!cookie.contains(&hex), "the cookie holds the token's hex: {cookie}");
        assert!(cookie.contains("httponly") && cookie.contains("samesite=strict"), "{cookie}");

        let page = |cookie: &str| {
            request(
                port,
                &format!("GET / HTTP/1.1\r\nHost: localhost\r\nCookie: qtasks_token={cookie}\r\n"),
                "",
            )
        };
        // The cookie opens the pages; the token or its hex in its place does not.
        let (status, _, body) = page(value);
        assert_eq!(status, 200, "{body}");
        for forged in [token, hex.as_str(), "", &value[1..]] {
            let (status, head, _) = page(forged);
            assert_eq!(status, 303, "{forged}: {head}");
            assert!(head.contains("location: /login"), "{head}");
        }
    })
    .await
    .unwrap();
}

/// A `tracing` writer into a buffer the test reads.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn actions_are_logged_with_who_and_what() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    // This thread's subscriber: the router runs on it (a current-thread test runtime).
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = QueueTasks::new();
    let uuid = web_echo::add_task(&app, "x".into()).await.unwrap().uuid();
    let router = Web::new(app.clone()).token(Some("t0ken".into())).router();
    let (status, body) = call_router(
        &router,
        Some("192.0.2.7:4242"),
        "POST",
        &format!("/api/v1/tasks/{uuid}/cancel"),
        &[("authorization", "Bearer t0ken")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call_router(
        &router,
        Some("192.0.2.8:4343"),
        "POST",
        "/api/v1/dead/some-letter/drop",
        &[("authorization", "Bearer t0ken")],
    )
    .await;
    assert_eq!(status, 200);

    let router = Web::new(app.clone()).router();
    let (status, _) = call_router(
        &router,
        Some("127.0.0.1:5151"),
        "POST",
        &format!("/api/v1/tasks/{uuid}/delete"),
        &[],
    )
    .await;
    assert_eq!(status, 403, "no CSRF token");

    let log = captured.text();
    let line = |needle: &str| {
        log.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle}: {log}"))
            .to_owned()
    };
    let cancel = line("dashboard action cancel");
    for part in [
        "INFO",
        "192.0.2.7:4242",
        "bearer token",
        &uuid.to_string(),
        "done",
    ] {
        assert!(cancel.contains(part), "{part}: {cancel}");
    }
    let dropped = line("dashboard action drop");
    assert!(
        dropped.contains("192.0.2.8:4343") && dropped.contains("some-letter"),
        "{dropped}"
    );
    let refused = line("dashboard action delete");
    for part in ["127.0.0.1:5151", "loopback", "refused"] {
        assert!(refused.contains(part), "{part}: {refused}");
    }
    assert!(!log.contains("t0ken"), "the token was logged: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_server_even_with_a_live_stream_open() {
    use tokio::io::AsyncWriteExt;
    let app = QueueTasks::new();
    let server = Web::new(app)
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let address = server.address();
    // A browser that keeps a page open holds its event stream: it must not hold the shutdown.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /events?view=overview HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "event: regions").await;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("the shutdown waited for the open event stream");
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "still listening after the shutdown"
    );
    // The stream ended (the server closed it) rather than hanging.
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the event stream was left open")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_dashboard_shows_no_action_and_refuses_every_one() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let failed = web_fail::add_task(&app, "nope".into()).await.unwrap();
    let _ = failed.result(Duration::from_secs(5)).await;
    let uuid = failed.uuid();
    let port = Web::new(app.clone())
        .read_only(true)
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    let (status, _, page) = get(port, &format!("/tasks/{uuid}"), None);
    assert_eq!(status, 200);
    assert!(
        page.contains("nope"),
        "the page still shows the task: {page}"
    );
    assert!(
        !page.contains("<form method=\"post\""),
        "an action form: {page}"
    );
    // Refused however it is asked: a form with its CSRF token, the JSON API.
    let (_, _, csrf) = get(port, "/api/v1/csrf", None);
    let csrf: Value = serde_json::from_str(&csrf).unwrap();
    let form = format!("csrf={}", csrf["token"].as_str().unwrap());
    let origin = format!("http://127.0.0.1:{port}");
    let (status, _, body) = post_form(
        port,
        &format!("/tasks/{uuid}/retry"),
        &origin,
        "same-origin",
        &form,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("read-only"), "{body}");
    let (status, _, _) = request(
        port,
        &format!(
            "POST /api/v1/tasks/{uuid}/delete HTTP/1.1\r\nHost: localhost\r\nX-Qtasks-Csrf: {}\r\n",
            csrf["token"].as_str().unwrap()
        ),
        "",
    );
    assert_eq!(status, 403);
    assert!(
        app.get(uuid).await.unwrap().is_some(),
        "the record is still there"
    );
    app.stop().await.unwrap();
}

#[qtasks::task]
async fn web_fail(reason: String) -> qtasks::TaskResult<()> {
    Err(qtasks::TaskError::msg(reason))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedules_page_pauses_resumes_and_runs_a_schedule_now() {
    use qtasks::schedule::Schedule;
    let app = QueueTasks::new();
    let call = web_echo::call("rates".into()).untyped();
    app.schedules()
        .add("rates", Schedule::every(Duration::from_secs(3600)), call)
        .unwrap();
    app.start().await.unwrap();
    // The dashboard reads what the worker recorded (as `qtasks web` does, without the code).
    let port = Web::new(app.clone())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    let checks = app.clone();
    tokio::task::spawn_blocking(move || {
        let (status, _, body) = get(port, "/schedules", None);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("rates") && body.contains("web_echo") && body.contains("every"), "{body}");
        assert!(body.contains("Run now") && body.contains("Pause"), "{body}");
        let csrf: Value = serde_json::from_str(&get(port, "/api/v1/csrf", None).2).unwrap();
        let csrf = csrf["token"].as_str().unwrap().to_owned();
        let origin = format!("http://127.0.0.1:{port}");

        // Run now: the task is added once, with the schedule's arguments, and runs.
        let form = format!("csrf={csrf}&name=rates");
        let (status, head, _) = post_form(port, "/schedules/run", &origin, "same-origin", &form);
        assert_eq!(status, 303, "{head}");
        let location = head.lines().find(|l| l.starts_with("location: /tasks/")).expect("to the added task");
        let uuid: Uuid = location["location: /tasks/".len()..]
            .split('?')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let record = futures_block(checks.wait(uuid, Duration::from_secs(10))).unwrap();
        assert_eq!(record.returning, Some(serde_json::json!("rates")));

        // Pause, as the page and the API show it; then resume by the API.
        let (status, head, _) = post_form(port, "/schedules/pause", &origin, "same-origin", &form);
        assert_eq!(status, 303, "{head}");
        assert!(head.contains("location: /schedules?done=schedule-paused"), "{head}");
        let schedules: Value = serde_json::from_str(&get(port, "/api/v1/schedules", None).2).unwrap();
        let rates = schedules.as_array().unwrap().iter().find(|s| s["name"] == "rates").unwrap();
        assert_eq!(rates["paused"], true, "{schedules}");
        let (_, _, page) = get(port, "/schedules?done=schedule-paused", None);
        assert!(page.contains("Resume") && page.contains("The schedule is paused"), "{page}");
        let resume = format!("POST /api/v1/schedules/rates/resume HTTP/1.1\r\nHost: localhost\r\nX-Qtasks-Csrf: {csrf}\r\n");
        assert_eq!(request(port, &resume, "").0, 200);
        // No such schedule, no such action: refused, saying so.
        let missing = format!("POST /api/v1/schedules/nightly/run HTTP/1.1\r\nHost: localhost\r\nX-Qtasks-Csrf: {csrf}\r\n");
        let (status, _, body) = request(port, &missing, "");
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("no schedule `nightly`"), "{body}");
        let (status, _, _) = post_form(port, "/schedules/explode", &origin, "same-origin", &form);
        assert_eq!(status, 404);
    })
    .await
    .unwrap();
    app.stop().await.unwrap();
}

/// The sum of the overview's throughput bars.
fn charted(port: u16) -> u64 {
    let (status, _, body) = get(port, "/api/v1/overview", None);
    assert_eq!(status, 200, "{body}");
    let overview: Value = serde_json::from_str(&body).unwrap();
    overview["throughput"]
        .as_array()
        .unwrap()
        .iter()
        .map(|bar| bar[1].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_throughput_history_outlives_the_dashboard_that_counted_it() {
    let app = QueueTasks::new();
    throughput_outlives_its_dashboard(&app, &app).await;
}

/// On Redis, the dashboard started again is another app (as a new `qtasks web` process is),
/// and still shows what the first one counted: the history is kept in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn on_redis_the_throughput_history_outlives_the_dashboards_process() {
    let Some(url) = qtasks_test_support::redis_url("throughput history on Redis") else {
        return;
    };
    let config = qtasks::QueueConfig {
        name: qtasks_test_support::unique_prefix("web-history"),
        ..qtasks::QueueConfig::default()
    };
    let connect = || qtasks::redis::connect_with(&url, config.clone(), Default::default());
    let app = connect().await.unwrap();
    let restarted = connect().await.unwrap();
    throughput_outlives_its_dashboard(&app, &restarted).await;
    app.flush_all().await.unwrap();
}

/// Three tasks counted by a dashboard on `app`, then a new dashboard on `restarted` (the same
/// app's backend) charts them.
async fn throughput_outlives_its_dashboard(app: &QueueTasks, restarted: &QueueTasks) {
    app.start().await.unwrap();
    let first = Web::new(app.clone())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = first.address().port();
    // The first dashboard is counting before the tasks finish.
    tokio::task::spawn_blocking(move || charted(port))
        .await
        .unwrap();
    for word in ["a", "b", "c"] {
        web_echo::add_task(app, word.into())
            .await
            .unwrap()
            .result(Duration::from_secs(5))
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::task::spawn_blocking(move || charted(port))
        .await
        .unwrap()
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first dashboard never counted 3"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    first.shutdown().await;
    // A dashboard started afterwards (a restart) shows them from the backend's global config.
    let second = Web::new(restarted.clone())
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = second.address().port();
    let shown = tokio::task::spawn_blocking(move || charted(port))
        .await
        .unwrap();
    assert_eq!(shown, 3, "the restarted dashboard's chart");
    second.shutdown().await;
    app.stop().await.unwrap();
}

/// Bulk actions over HTTP: the first post only asks (nothing is done), the confirmed one does
/// each, and a task the action cannot apply to is reported, not a failure of the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_retry_and_cancel_ask_first_then_act_on_each() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let failed = web_fail::add_task(&app, "broken".into()).await.unwrap();
    failed.wait(Duration::from_secs(10)).await.unwrap();
    let failed = failed.uuid();
    let ok = web_echo::add_task(&app, "fine".into()).await.unwrap();
    ok.wait(Duration::from_secs(10)).await.unwrap();
    let ok = ok.uuid();
    let waiting: Vec<Uuid> = {
        let mut uuids = Vec::new();
        for word in ["x", "y"] {
            let handle = web_echo::call(word.into())
                .delay(Duration::from_secs(3600))
                .add(&app)
                .await
                .unwrap();
            uuids.push(handle.uuid());
        }
        uuids
    };
    let port = Web::new(app.clone())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    let checks = app.clone();
    tokio::task::spawn_blocking(move || {
        let csrf: Value = serde_json::from_str(&get(port, "/api/v1/csrf", None).2).unwrap();
        let csrf = csrf["token"].as_str().unwrap().to_owned();
        let origin = format!("http://127.0.0.1:{port}");
        let status_of = |uuid: Uuid| futures_block(checks.get(uuid)).unwrap().unwrap().status;

        // Retry the failed task and the succeeded one: asked first, nothing done.
        let retry = format!("csrf={csrf}&action=retry&uuid={failed}&uuid={ok}");
        let (status, _, body) = post_form(port, "/tasks/bulk", &origin, "same-origin", &retry);
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("Retry 2 tasks?") && body.contains("Back, doing nothing"),
            "{body}"
        );
        assert!(
            futures_block(checks.get(failed))
                .unwrap()
                .unwrap()
                .retry_child_uuid
                .is_none()
        );
        // Confirmed: the failed task is retried; the succeeded one is refused, with why.
        let (status, _, body) = post_form(
            port,
            "/tasks/bulk",
            &origin,
            "same-origin",
            &format!("{retry}&confirm=yes"),
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("1 of 2 done."), "{body}");
        assert!(body.contains("retried as"), "{body}");
        assert!(
            body.contains("not done: cannot retry task") && body.contains("it is `success`"),
            "the succeeded task is the one refused: {body}"
        );
        let child = futures_block(checks.get(failed))
            .unwrap()
            .unwrap()
            .retry_child_uuid
            .expect("the failed task was retried");
        assert_eq!(
            futures_block(checks.wait(child, Duration::from_secs(10)))
                .unwrap()
                .status,
            qtasks::TaskStatus::Error,
            "the retry ran (and failed again, as the task does)"
        );

        // Cancel both waiting tasks at once.
        let cancel = format!(
            "csrf={csrf}&action=cancel&uuid={}&uuid={}&confirm=yes",
            waiting[0], waiting[1]
        );
        let (status, _, body) = post_form(port, "/tasks/bulk", &origin, "same-origin", &cancel);
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("2 of 2 done."), "{body}");
        for uuid in &waiting {
            assert_eq!(status_of(*uuid), qtasks::TaskStatus::Cancel);
        }
    })
    .await
    .unwrap();
    app.stop().await.unwrap();
}

#[qtasks::task]
async fn web_slow() {
    tokio::time::sleep(Duration::from_secs(30)).await;
}

/// The workers page shows what each worker runs now and which tasks its binary registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_page_shows_running_and_registered_tasks() {
    let app = QueueTasks::new();
    app.start().await.unwrap();
    let running = web_slow::add_task(&app).await.unwrap().uuid();
    let port = Web::new(app.clone())
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .port();
    let body = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (status, _, body) = get(port, "/workers", None);
            assert_eq!(status, 200, "{body}");
            if body.contains(&format!("tasks/{running}")) {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the running task never showed: {body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    assert!(body.contains("Running now"), "{body}");
    let registered = &body[body.find("Registered tasks").expect("the list")..];
    for name in ["web_slow", "web_echo", "web_fail"] {
        assert!(registered.contains(name), "{name} in {registered}");
    }
    assert!(!registered.contains("none listed"), "{registered}");
    app.stop_now().await.unwrap();
}
