//! Logs a person sees: a `tracing-subscriber` on stderr, filtered by `RUST_LOG` or
//! `--log-level`, as text or JSON; and panics of tasks logged once, by the worker, not a second
//! time as a raw message from the default panic hook.

use std::io::IsTerminal;
use std::sync::Once;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::LogFormat;

/// The name of the span the worker runs each task in (it carries the task's name, uuid and
/// attempt).
const TASK_SPAN: &str = "task";

/// Installs the log subscriber once: `RUST_LOG` if set, else `level` (a level or a filter
/// such as `qtasks=debug,info`), else `info`. Does nothing when the program installed a
/// subscriber of its own. Also installs the panic hook (see the module's documentation).
pub fn init_logging(level: Option<&str>, format: LogFormat) {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = match std::env::var("RUST_LOG") {
            Ok(filter) if !filter.is_empty() => EnvFilter::new(filter),
            _ => EnvFilter::new(level.unwrap_or("info")),
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colours on a terminal only: a log file or a collector gets plain text.
            .with_ansi(std::io::stderr().is_terminal())
            .with_span_events(FmtSpan::NONE);
        let installed = match format {
            LogFormat::Text => builder.try_init(),
            LogFormat::Json => builder.json().with_current_span(true).try_init(),
        };
        if installed.is_ok() {
            install_panic_hook();
        }
    });
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
