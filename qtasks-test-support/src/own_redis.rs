//! A Redis server of a test's own (its own port and folder, never the shared one), and the
//! outcomes recorded in its append-only file.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qtasks::Uuid;

use crate::scratch::scratch_dir;

/// A `redis-server` on a free port with its own folder and an append-only file (fsynced
/// always when `durable`; the file is read at the end to count the recorded outcomes); killed
/// when dropped.
pub struct OwnRedis {
    pub port: u16,
    pub dir: PathBuf,
    durable: bool,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start(name: &str, durable: bool) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = scratch_dir(name);
        let mut redis = OwnRedis {
            port,
            dir,
            durable,
            child: None,
        };
        redis.launch();
        redis
    }

    pub fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .args(["--appendonly", "yes", "--appenddirname", "aof"])
            // Commands as sent, never rewritten into a snapshot: the test reads them all.
            .args([
                "--aof-use-rdb-preamble",
                "no",
                "--auto-aof-rewrite-percentage",
                "0",
            ]);
        let fsync = if self.durable { "always" } else { "everysec" };
        command.args(["--appendfsync", fsync]);
        self.child = Some(command.spawn().expect("redis-server starts"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no goodbye, nothing flushed but what the append-only file already holds.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// The server's process id (0 while it is down).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A replica of an [`OwnRedis`], on a port of its own, without persistence; killed when
/// dropped.
pub struct OwnReplica {
    pub port: u16,
    child: Child,
}

impl OwnReplica {
    pub fn start(master: &OwnRedis) -> OwnReplica {
        let port = crate::free_port();
        let dir = scratch_dir("replica");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(["--replicaof", "127.0.0.1", &master.port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        OwnReplica { port, child }
    }

    /// Sends the replica's process a signal (`STOP`, `CONT`, ...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits until the replica has synced with its master.
    pub async fn until_in_sync(&self) {
        let started = Instant::now();
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap();
        loop {
            // The replica may not listen yet.
            let info: String = match client.get_multiplexed_async_connection().await {
                Ok(mut con) => redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut con)
                    .await
                    .unwrap_or_default(),
                Err(_) => String::new(),
            };
            if info.contains("master_link_status:up") {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the replica never synced: {info}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OwnReplica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three Sentinels of a test's own watching an [`OwnRedis`] as master `name` (quorum 2, down
/// after 1 s); killed when dropped.
pub struct OwnSentinels {
    pub ports: Vec<u16>,
    pub name: String,
    children: Vec<Child>,
    dir: PathBuf,
}

impl OwnSentinels {
    pub fn start(master: &OwnRedis, name: &str) -> OwnSentinels {
        let dir = scratch_dir("sentinels");
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for i in 0..3 {
            let port = crate::free_port();
            // A Sentinel rewrites its configuration file: each gets its own.
            let file = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &file,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {name} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir.display(),
                    master.port
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&file)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel starts");
            ports.push(port);
            children.push(child);
        }
        OwnSentinels {
            ports,
            name: name.to_owned(),
            children,
            dir,
        }
    }

    /// `redis+sentinel://` for these Sentinels and the master's database 0.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+sentinel://{}/{}/0", hosts.join(","), self.name)
    }

    /// Waits until every Sentinel knows `replicas` replicas and the two other Sentinels, so
    /// that a failover can be agreed and has somewhere to go.
    pub async fn until_ready(&self, replicas: usize) {
        let started = Instant::now();
        for port in &self.ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            loop {
                let known = async {
                    let mut con = client.get_multiplexed_async_connection().await.ok()?;
                    let found: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg(&self.name)
                        .query_async(&mut con)
                        .await
                        .ok()?;
                    let peers: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("SENTINELS")
                        .arg(&self.name)
                        .query_async(&mut con)
                        .await
                        .ok()?;
                    Some((found.len(), peers.len()))
                }
                .await;
                if known.is_some_and(|(found, peers)| found >= replicas && peers >= 2) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the Sentinel on {port} never saw {replicas} replicas and 2 peers: {known:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The master's port as the first Sentinel names it.
    pub async fn master_port(&self) -> Option<u16> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.ports[0])).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        let address: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.name)
            .query_async(&mut con)
            .await
            .ok()?;
        address.get(1)?.parse().ok()
    }
}

impl Drop for OwnSentinels {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Recorded outcomes per task: the writes of a final status to its record, from the
/// server's append-only files (script effects are logged as the commands they ran).
pub fn recorded_outcomes(redis: &OwnRedis, prefix: &str) -> HashMap<Uuid, usize> {
    let mut counts = HashMap::new();
    let record_prefix = format!("{prefix}:");
    let mut files: Vec<PathBuf> = std::fs::read_dir(redis.dir.join("aof"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "aof"))
        .collect();
    files.sort();
    for file in files {
        for command in resp_commands(&std::fs::read(file).unwrap()) {
            let [name, key, pairs @ ..] = &command[..] else {
                continue;
            };
            if !name.eq_ignore_ascii_case(b"hset") {
                continue;
            }
            let Some(uuid) = std::str::from_utf8(key)
                .ok()
                .and_then(|key| key.strip_prefix(&record_prefix))
                .and_then(|uuid| Uuid::parse_str(uuid).ok())
            else {
                continue;
            };
            let ends = pairs.chunks(2).any(|pair| {
                pair[0] == b"status"
                    && matches!(
                        pair.get(1).map(Vec::as_slice),
                        Some(b"success" | b"error" | b"cancel" | b"retry")
                    )
            });
            if ends {
                *counts.entry(uuid).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// The commands of an append-only file (RESP arrays of bulk strings).
pub fn resp_commands(bytes: &[u8]) -> Vec<Vec<Vec<u8>>> {
    fn line(bytes: &[u8], at: &mut usize) -> Option<usize> {
        let end = bytes[*at..].windows(2).position(|w| w == b"\r\n")? + *at;
        let number = std::str::from_utf8(&bytes[*at + 1..end])
            .ok()?
            .parse()
            .ok()?;
        *at = end + 2;
        Some(number)
    }
    let mut commands = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'*' {
            break; // a torn last command after a kill: the rest is not a command
        }
        let Some(count) = line(bytes, &mut at) else {
            break;
        };
        let mut command = Vec::with_capacity(count);
        for _ in 0..count {
            let Some(length) = line(bytes, &mut at) else {
                return commands;
            };
            let Some(argument) = bytes.get(at..at + length) else {
                return commands;
            };
            command.push(argument.to_vec());
            at += length + 2;
        }
        commands.push(command);
    }
    commands
}
