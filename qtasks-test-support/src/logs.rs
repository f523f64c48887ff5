//! What `tracing` writes during a test, captured to be read back.

use std::sync::{Arc, Mutex};

use tracing::subscriber::DefaultGuard;

/// The log lines (plain text, no colours) written on this thread until it is dropped. Use it
/// in a current-thread runtime (`#[tokio::test(flavor = "current_thread")]`), so that the
/// tasks whose lines are wanted run on this thread, under this subscriber.
pub struct CapturedLogs {
    written: Arc<Mutex<Vec<u8>>>,
    _installed: DefaultGuard,
}

impl CapturedLogs {
    /// Starts capturing this thread's log lines.
    pub fn start() -> CapturedLogs {
        let written = Arc::new(Mutex::new(Vec::new()));
        let writer = Sink(Arc::clone(&written));
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        CapturedLogs {
            written,
            _installed: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.written.lock().unwrap()).into_owned()
    }
}

/// Where the subscriber writes: the shared buffer.
#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes every `tracing` line at `level` or above to stderr, for the whole test binary (the
/// first call wins): for reading what a failing service test saw, with `--nocapture`.
pub fn log_to_stderr(level: tracing::Level) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .try_init();
}
