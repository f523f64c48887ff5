//! Logs a person sees: a `tracing-subscriber` on stderr, filtered by `RUST_LOG` or
//! `--log-level`, as text or JSON; panics of tasks logged once, by the worker, not a second
//! time as a raw message from the default panic hook; and, with the `otel` feature and an OTLP
//! endpoint in the environment, spans exported with OpenTelemetry.

use std::io::IsTerminal;
use std::sync::Once;

use qtasks_core::QueueTasks;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::LogFormat;

/// The name of the span the worker runs each task in (it carries the task's name, uuid and
/// attempt).
const TASK_SPAN: &str = "task";

/// What [`init_logging`] set up beyond the log lines: the trace exporter, when there is one.
/// Install it on the app, and shut it down before the process exits so buffered spans are
/// sent.
#[derive(Debug, Default)]
#[must_use = "install it on the app and shut it down at exit"]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    otlp: Option<qtasks_otel::Otlp>,
}

impl Telemetry {
    /// Makes `app` carry traces (with `otel` and an endpoint set); otherwise does nothing.
    pub fn install(&self, app: &QueueTasks) {
        #[cfg(feature = "otel")]
        if let Some(otlp) = &self.otlp {
            otlp.install(app);
        }
        let _ = app;
    }

    /// Sends what is buffered and stops the exporter.
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(otlp) = self.otlp {
            otlp.shutdown();
        }
    }
}

/// Installs the log subscriber once: `RUST_LOG` if set, else `level` (a level or a filter
/// such as `qtasks=debug,info`), else `info`. Does nothing when the program installed a
/// subscriber of its own. Also installs the panic hook (see the module's documentation) and,
/// with the `otel` feature, the OTLP exporter when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, naming the service `service_name` unless
/// `OTEL_SERVICE_NAME` does.
pub fn init_logging(level: Option<&str>, format: LogFormat, service_name: &str) -> Telemetry {
    static INIT: Once = Once::new();
    #[cfg_attr(not(feature = "otel"), allow(unused_mut))]
    let mut telemetry = Telemetry::default();
    INIT.call_once(|| {
        let filter = match std::env::var("RUST_LOG") {
            Ok(filter) if !filter.is_empty() => EnvFilter::new(filter),
            _ => EnvFilter::new(level.unwrap_or("info")),
        };
        let lines = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colours on a terminal only: a log file or a collector gets plain text.
            .with_ansi(std::io::stderr().is_terminal());
        let lines = match format {
            LogFormat::Text => lines.boxed(),
            LogFormat::Json => lines.json().with_current_span(true).boxed(),
        };
        let registry = tracing_subscriber::registry().with(lines);
        #[cfg(feature = "otel")]
        let registry = {
            telemetry.otlp = match qtasks_otel::Otlp::from_env(service_name) {
                Ok(otlp) => otlp,
                Err(error) => {
                    eprintln!("warning: traces are not exported: {error}");
                    None
                }
            };
            registry.with(telemetry.otlp.as_ref().map(|otlp| otlp.layer()))
        };
        let _ = service_name;
        if registry.with(filter).try_init().is_ok() {
            install_panic_hook();
        }
    });
    telemetry
}

/// A panic inside a task is caught by the worker, which fails that task and logs one ERROR
/// line with the panic's message: the default hook's raw message on stderr would be a second,
/// unformatted report of the same thing. Panics elsewhere go to the hook that was there.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_task = tracing::Span::current()
            .metadata()
            .is_some_and(|span| span.name() == TASK_SPAN);
        if in_task {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::debug!(location, "the task panicked; the worker reports it");
        } else {
            previous(info);
        }
    }));
}
