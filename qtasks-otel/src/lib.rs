//! OpenTelemetry for qtasks: one trace follows a task from the code that adds it, through the
//! queue, to the worker that runs it, in another process or on another machine.
//!
//! - [`OtelTraceContext`] is the [`TraceContext`] that reads the current span's OpenTelemetry
//!   context when a task is added (stored with the task as a W3C `traceparent`) and, in the
//!   worker, makes the task's span its child; a `queued` span covers the time the task waited.
//! - [`Otlp`] builds the OTLP exporter (HTTP, protobuf) from the standard environment
//!   (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//!   `OTEL_SERVICE_NAME`, ...), gives the `tracing` layer that feeds it, and flushes at
//!   [`Otlp::shutdown`]. `qtasks::cli` does all of this when the endpoint variable is set.
//!
//! By hand, in a client or a worker of your own:
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//!
//! # async fn demo(app: qtasks::QueueTasks) -> Result<(), Box<dyn std::error::Error>> {
//! let otlp = qtasks::otel::Otlp::from_env("billing-worker")?.expect("an OTLP endpoint is set");
//! tracing_subscriber::registry().with(otlp.layer()).init();
//! otlp.install(&app);
//! app.run_forever().await?;
//! otlp.shutdown();
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use qtasks_core::QueueTasks;
use qtasks_core::trace::TraceContext;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The name of the span that covers the time a task waited in the queue.
pub const QUEUED_SPAN: &str = "queued";

/// The W3C trace context of the current `tracing` span, read and continued through its
/// OpenTelemetry context (a `tracing-opentelemetry` layer must be installed).
pub struct OtelTraceContext {
    tracer: SdkTracer,
}

impl std::fmt::Debug for OtelTraceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtelTraceContext").finish_non_exhaustive()
    }
}

impl OtelTraceContext {
    /// Reads and continues traces; the `queued` spans are made with `tracer`.
    pub fn new(tracer: SdkTracer) -> Self {
        OtelTraceContext { tracer }
    }
}

impl TraceContext for OtelTraceContext {
    fn current(&self) -> Option<String> {
        let context = tracing::Span::current().context();
        if !context.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut carrier);
        carrier.remove("traceparent")
    }

    fn continue_trace(&self, span: &tracing::Span, traceparent: &str, queued_at: f64) {
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        if !parent.span().span_context().is_valid() {
            tracing::debug!(
                traceparent,
                "the task's traceparent is not valid; not continued"
            );
            return;
        }
        // The wait in the queue, from when the task was added until now, under the same parent.
        let added =
            UNIX_EPOCH + Duration::try_from_secs_f64(queued_at.max(0.0)).unwrap_or_default();
        let mut queued = self
            .tracer
            .span_builder(QUEUED_SPAN)
            .with_start_time(added)
            .start_with_context(&self.tracer, &parent);
        queued.end_with_timestamp(SystemTime::now());
        let _ = span.set_parent(parent);
    }
}

/// What can go wrong setting up the exporter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// The OTLP exporter could not be built (a bad endpoint, ...).
    #[error("the OTLP trace exporter could not be built: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// An OTLP trace pipeline: a tracer provider with a batch exporter over HTTP.
#[derive(Debug, Clone)]
pub struct Otlp {
    provider: SdkTracerProvider,
}

/// The environment variables that name an OTLP endpoint; [`Otlp::from_env`] sets up nothing
/// without one.
pub const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

impl Otlp {
    /// The pipeline configured by the standard `OTEL_*` variables, with `service_name` unless
    /// `OTEL_SERVICE_NAME` says otherwise; `None` when no endpoint variable is set.
    pub fn from_env(service_name: &str) -> Result<Option<Otlp>, OtelError> {
        let configured = ENDPOINT_VARIABLES
            .iter()
            .any(|name| std::env::var(name).is_ok_and(|value| !value.is_empty()));
        if !configured {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        let service_name = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| service_name.to_owned());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Some(Otlp::with_provider(provider)))
    }

    /// A pipeline around a tracer provider of your own (another exporter, a test's in-memory
    /// one).
    pub fn with_provider(provider: SdkTracerProvider) -> Self {
        Otlp { provider }
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans for this pipeline.
    pub fn layer<S>(&self) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.tracer())
    }

    /// Makes `app` carry traces: tasks it adds record the current trace, and its worker
    /// continues them. `false` if the app had a trace context already.
    pub fn install(&self, app: &QueueTasks) -> bool {
        app.set_trace_context(Arc::new(OtelTraceContext::new(self.tracer())))
    }

    /// Sends the spans still buffered and stops the exporter; call it before the process
    /// exits.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!("the OTLP exporter did not shut down cleanly: {error}");
        }
    }

    fn tracer(&self) -> SdkTracer {
        self.provider.tracer("qtasks")
    }
}
