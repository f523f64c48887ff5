//! Traces across processes: the trace a task is added in travels with it through Redis, and
//! the worker's span for the task continues it, in this process (spans read back from an
//! in-memory exporter) and in a worker process that exports with OTLP (spans received by a
//! collector this test plays).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use qtasks::otel::Otlp;
use qtasks::redis::RedisOptions;
use qtasks_test_support::WAIT;
use qtasks_test_support::redis::raw_connection;
use qtasks_test_support::redis::redis_app;
use qtasks_test_support::redis_url;
use qtasks_test_support::unique_prefix;
use redis::AsyncCommands;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[qtasks::task]
async fn otel_echo(text: String) -> String {
    text
}

/// This process's pipeline: every span kept in memory, read back by the tests.
static PIPELINE: LazyLock<(InMemorySpanExporter, Otlp)> = LazyLock::new(|| {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let otlp = Otlp::with_provider(provider);
    let subscriber = tracing_subscriber::registry().with(otlp.layer());
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber per test binary");
    (exporter, otlp)
});

fn finished_spans() -> Vec<SpanData> {
    PIPELINE.0.get_finished_spans().expect("spans are kept")
}

fn span_named<'a>(spans: &'a [SpanData], name: &str, trace: TraceId) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name && s.span_context.trace_id() == trace)
        .unwrap_or_else(|| {
            let names: Vec<_> = spans
                .iter()
                .map(|s| (&s.name, s.span_context.trace_id()))
                .collect();
            panic!("no `{name}` span in trace {trace}; spans: {names:?}")
        })
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_task_span_continues_the_trace_it_was_added_in() {
    let Some(url) = redis_url("a_task_span_continues_the_trace_it_was_added_in") else {
        return;
    };
    let otlp = &PIPELINE.1;
    let prefix = unique_prefix("otel");
    // A client and a worker that share nothing but Redis.
    let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    let worker = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    assert!(otlp.install(&client) && otlp.install(&worker));
    worker.start().await.unwrap();

    let request = tracing::info_span!("request");
    let handle = otel_echo::add_task(&client, "hi".into())
        .instrument(request.clone())
        .await
        .unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.returning, Some(serde_json::json!("hi")));
    // The trace travelled in the record, as a field Python QTasks ignores.
    let mut con = raw_connection(&url).await;
    let stored: Option<String> = con
        .hget(format!("{prefix}:{}", handle.uuid()), "traceparent")
        .await
        .unwrap();
    let stored = stored.expect("the record carries a traceparent");
    drop(request);
    worker.stop().await.unwrap();

    let spans = finished_spans();
    let request = spans
        .iter()
        .find(|s| s.name == "request" && stored.contains(&s.span_context.span_id().to_string()))
        .expect("the request span, whose id the traceparent names");
    let trace = request.span_context.trace_id();
    assert_eq!(
        stored,
        format!("00-{trace}-{}-01", request.span_context.span_id())
    );
    let task = span_named(&spans, "task", trace);
    let queued = span_named(&spans, qtasks::otel::QUEUED_SPAN, trace);
    assert_eq!(task.parent_span_id, request.span_context.span_id());
    assert_eq!(queued.parent_span_id, request.span_context.span_id());
    assert!(queued.end_time >= queued.start_time);
    client.flush_all().await.unwrap();
}

/// One request a collector received: path, content type, body.
type Export = (String, String, Vec<u8>);

/// A collector's endpoint: answers every request 200 and keeps what it received.
fn collector() -> (u16, Arc<Mutex<Vec<Export>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
            let (mut length, mut content_type) = (0usize, String::new());
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap_or(("", ""));
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "content-type" => content_type = value.trim().to_owned(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                keep.lock().unwrap().push((path, content_type, body));
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (port, received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test]
#[ignore = "needs Redis (QTASKS_TEST_REDIS_URL)"]
async fn a_worker_process_exports_the_continued_trace_with_otlp() {
    let Some(url) = redis_url("a_worker_process_exports_the_continued_trace_with_otlp") else {
        return;
    };
    let otlp = &PIPELINE.1;
    let prefix = unique_prefix("otlp");
    let (port, received) = collector();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_worker_cli"))
        .arg("worker")
        .env("QTASKS_URL", &url)
        .env("QTASKS_NAME", &prefix)
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_SERVICE_NAME", "otlp-test-worker")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let client = redis_app(&url, &prefix, RedisOptions::default(), 1).await;
    assert!(otlp.install(&client));
    let request = tracing::info_span!("shell_request");
    let handle = client
        .add_task("add", (20, 22), ())
        .instrument(request.clone())
        .await
        .unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.returning, Some(serde_json::json!(42)));
    let stored: String = raw_connection(&url)
        .await
        .hget(format!("{prefix}:{}", handle.uuid()), "traceparent")
        .await
        .unwrap();
    // `00-{trace id}-{span id}-01`: the client's trace and the request span.
    let mut parts = stored.split('-').skip(1);
    let trace = TraceId::from_hex(parts.next().unwrap()).unwrap();
    let parent = SpanId::from_hex(parts.next().unwrap()).unwrap();
    drop(request);

    // Stopped as a service manager does: the exporter sends what it holds before exiting.
    let pid = worker.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = worker.wait().unwrap();
    assert!(exit.success(), "{exit:?}");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let exports = received.lock().unwrap().clone();
        let found = exports.iter().find(|(path, content_type, body)| {
            path == "/v1/traces"
                && content_type == "application/x-protobuf"
                && contains(body, &trace.to_bytes())
                && contains(body, &parent.to_bytes())
        });
        if found.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no OTLP export carries trace {trace} with parent {parent}; got {} request(s): {:?}",
            exports.len(),
            exports
                .iter()
                .map(|(p, c, b)| (p, c, b.len()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    client.flush_all().await.unwrap();
}
