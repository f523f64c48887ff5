//! Traces across processes: the enqueuing code's trace travels with the task (a W3C
//! `traceparent`, stored in the record), and the worker's span for the task continues it, so
//! one trace shows the client, the time in the queue and the run.
//!
//! The core knows no tracing backend: a [`TraceContext`] installed with
//! [`QueueTasks::set_trace_context`](crate::QueueTasks::set_trace_context) reads and continues
//! traces. `qtasks::otel` (feature `otel`) is the OpenTelemetry one; without one, tasks carry
//! no trace and nothing costs anything.

/// Reads the current trace when a task is added, and continues it when the task runs.
///
/// ```
/// use std::sync::Arc;
/// use qtasks::trace::TraceContext;
///
/// /// Every task in one fixed trace (a real one reads the current span's).
/// struct Fixed;
///
/// impl TraceContext for Fixed {
///     fn current(&self) -> Option<String> {
///         Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into())
///     }
///     fn continue_trace(&self, span: &tracing::Span, traceparent: &str, queued_at: f64) {
///         let _ = (span, traceparent, queued_at);
///     }
/// }
///
/// let app = qtasks::QueueTasks::new();
/// assert!(app.set_trace_context(Arc::new(Fixed)));
/// ```
pub trait TraceContext: Send + Sync + 'static {
    /// The trace the calling code is in, as a W3C `traceparent`
    /// (`00-{trace id}-{span id}-{flags}`), or `None` outside any trace.
    fn current(&self) -> Option<String>;

    /// Makes `span` (the worker's span for one task) continue the trace `traceparent`, which
    /// the task was added in `queued_at` (Unix seconds; the time it waited is the queue's).
    fn continue_trace(&self, span: &tracing::Span, traceparent: &str, queued_at: f64);
}
