//! A PostgreSQL server of a test's own: a Debian cluster (`pg_createcluster`) on a free port,
//! dropped at the end, so that a test may stop, restart or freeze it without disturbing the
//! machine's server.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::scratch::free_port;

/// A cluster of the test's own, started with trust authentication; stopped and dropped when
/// this is dropped.
pub struct OwnPostgres {
    name: String,
    version: String,
    pub port: u16,
}

impl OwnPostgres {
    /// Creates and starts a cluster, or `None` where the Debian tools are missing or fail (they
    /// must run as root or `postgres`).
    pub fn start() -> Option<OwnPostgres> {
        // The newest installed major version (by number: "16" is newer than "9.6").
        let version = std::fs::read_dir("/etc/postgresql")
            .ok()?
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .max_by(|a, b| {
                let number = |v: &str| v.parse::<f64>().unwrap_or(0.0);
                number(a).total_cmp(&number(b))
            })?;
        let port = free_port();
        let name = format!("qt{port}");
        let created = Command::new("pg_createcluster")
            .args([
                &version,
                &name,
                "-p",
                &port.to_string(),
                "--start",
                "--",
                "--auth=trust",
            ])
            .stdout(Stdio::null())
            .status()
            .ok()?;
        let server = OwnPostgres {
            name,
            version,
            port,
        };
        // A cluster made but not started (its port taken meanwhile) is dropped here.
        created.success().then_some(server)
    }

    /// The URL of its `postgres` database, as the superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctlcluster <version> <name> <args>` (`restart -m fast`, `stop -m immediate`,
    /// `start`, ...); panics when it fails.
    pub fn ctl(&self, args: &[&str]) {
        let status = Command::new("pg_ctlcluster")
            .args([self.version.as_str(), self.name.as_str()])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctlcluster runs");
        assert!(status.success(), "pg_ctlcluster {args:?}");
    }

    /// The server's processes: the postmaster first, then its children (backends, the
    /// checkpointer, the WAL writer, ...). Empty while it is down.
    pub fn pids(&self) -> Vec<u32> {
        let data = PathBuf::from(format!(
            "/var/lib/postgresql/{}/{}/postmaster.pid",
            self.version, self.name
        ));
        let Some(postmaster) = std::fs::read_to_string(data)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
        else {
            return Vec::new();
        };
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            // `/proc/<pid>/stat`: `pid (comm) state ppid ...`; comm may hold spaces.
            let parent = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    let after = stat.rsplit_once(')')?.1;
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if parent == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Sends `signal` (`-STOP`, `-CONT`, ...) to every process of the server: the postmaster
    /// first on a stop (and its children listed after, so none forked meanwhile escapes), last
    /// on a continue.
    pub fn signal_all(&self, signal: &str) {
        let mut pids = self.pids();
        if signal == "-STOP" {
            if let Some(&postmaster) = pids.first() {
                kill(signal, postmaster);
            }
            pids = self.pids().into_iter().skip(1).collect();
        }
        if signal == "-CONT" {
            pids.reverse();
        }
        for pid in pids {
            kill(signal, pid);
        }
    }
}

/// `kill <signal> <pid>`, quietly (a process may have ended since it was listed).
fn kill(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        // A frozen server would not stop.
        self.signal_all("-CONT");
        let _ = Command::new("pg_dropcluster")
            .args([self.version.as_str(), self.name.as_str(), "--stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
