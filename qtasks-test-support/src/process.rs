//! A process a test starts (a worker binary, say), its stderr in a log file the test reads,
//! stopped as a service manager stops it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process whose stderr goes to a log file; killed if the test ends without stopping
/// it.
#[derive(Debug)]
pub struct LoggedProcess {
    /// The process.
    pub child: Child,
    log: PathBuf,
}

impl LoggedProcess {
    /// Spawns `command` with stdout discarded and stderr written to a log named after `name`
    /// (unique per test: a scratch prefix).
    pub fn spawn(mut command: Command, name: &str) -> LoggedProcess {
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("a log file in the temp dir"))
            .spawn()
            .expect("the binary runs");
        LoggedProcess { child, log }
    }

    /// What it has written to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log says `what`; fails showing the log after 30 s.
    #[track_caller]
    pub fn wait_for_log(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains(what) {
            assert!(
                Instant::now() < deadline,
                "the process never logged {what:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it as a service manager does (SIGTERM) and fails unless it exits cleanly.
    /// Returns its log.
    #[track_caller]
    pub fn terminate(mut self) -> String {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            sent.is_ok_and(|status| status.success()),
            "kill -TERM {pid}"
        );
        let exit = self
            .child
            .wait()
            .expect("the process is a child of this test");
        let log = self.log();
        assert!(
            exit.success(),
            "the process exited {exit:?}; its log:\n{log}"
        );
        log
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
