//! The signals that stop a worker process gracefully: Ctrl-C, and SIGTERM on Unix.

/// Ctrl-C, and SIGTERM on Unix. Listening starts when this is made, so a signal that comes
/// early is not lost (it would otherwise kill the process with the default action). A signal
/// that cannot be listened for is left out.
pub(crate) struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    pub(crate) fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind| match signal(kind) {
                Ok(listener) => Some(listener),
                Err(error) => {
                    tracing::warn!("cannot listen for {kind:?}: {error}");
                    None
                }
            };
            ShutdownSignals {
                interrupt: listen(SignalKind::interrupt()),
                terminate: listen(SignalKind::terminate()),
            }
        }
        #[cfg(not(unix))]
        ShutdownSignals {}
    }

    /// Resolves on the first signal; never, if none can be listened for.
    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(listener: &mut Option<tokio::signal::unix::Signal>) {
                match listener {
                    Some(listener) => {
                        listener.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(&mut self.interrupt) => {}
                () = next(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
