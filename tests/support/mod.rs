#![allow(dead_code)] // each test binary uses a different part

//! The worker processes of `tests/bin`, which only this crate builds (what every crate's tests
//! share is in `qtasks-test-support`).

/// The test worker binary: this build's, or `QTASKS_TEST_WORKER_BIN` (a long harness run uses
/// a copy, so the tree can be rebuilt meanwhile).
fn worker_binary() -> std::ffi::OsString {
    std::env::var_os("QTASKS_TEST_WORKER_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_qtasks-test-redis-worker").into())
}

/// A worker process of the test worker binary (`tests/bin/redis_worker.rs`), SIGKILLed when
/// dropped.
pub(crate) struct WorkerProcess(pub(crate) std::process::Child);

impl WorkerProcess {
    /// `qtasks-test-redis-worker <prefix> <lease_ms> <concurrency>` with these variables.
    pub(crate) fn spawn(
        prefix: &str,
        lease_ms: u64,
        concurrency: usize,
        env: &[(&str, &str)],
    ) -> Self {
        let child = std::process::Command::new(worker_binary())
            .args([prefix, &lease_ms.to_string(), &concurrency.to_string()])
            .envs(env.iter().copied())
            .spawn()
            .expect("the worker binary starts");
        WorkerProcess(child)
    }

    /// [`spawn`](Self::spawn), its standard error appended to `log` (its logs and panics).
    pub(crate) fn spawn_logged(
        prefix: &str,
        lease_ms: u64,
        concurrency: usize,
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> Self {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the worker log opens");
        let child = std::process::Command::new(worker_binary())
            .args([prefix, &lease_ms.to_string(), &concurrency.to_string()])
            .envs(env.iter().copied())
            .stderr(stderr)
            .spawn()
            .expect("the worker binary starts");
        WorkerProcess(child)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
