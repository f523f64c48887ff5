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
    /// The master's port, for a server started as a replica ([`OwnRedis::start_replica`]).
    replica_of: Option<u16>,
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
            replica_of: None,
            child: None,
        };
        redis.launch();
        redis
    }

    /// A durable server like [`OwnRedis::start`] that starts as a replica of the one on
    /// `master` (and again so after a kill; a Sentinel may name it master meanwhile). Its
    /// append-only file holds every write it received from its master and made as a master,
    /// once its first sync (of an empty master: wait for it) is done.
    pub fn start_replica(name: &str, master: u16) -> Self {
        let port = crate::free_port();
        let mut redis = OwnRedis {
            port,
            dir: scratch_dir(name),
            durable: true,
            replica_of: Some(master),
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
        if let Some(master) = self.replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        self.child = Some(command.spawn().expect("redis-server starts"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again as a replica of the one on `master` (a master that died, back
    /// after its replica was promoted: as the Sentinels would make it, but at once, so that it
    /// never serves its stale data as a master meanwhile).
    pub fn launch_as_replica_of(&mut self, master: u16) {
        self.replica_of = Some(master);
        self.launch();
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
        until_replica_synced(self.port).await;
    }
}

/// Waits until the replica on `port` has synced with its master.
pub async fn until_replica_synced(port: u16) {
    let started = Instant::now();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
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

impl OwnReplica {
    /// Waits until the replica has every write `master` made so far (its replication offset).
    pub async fn until_caught_up(&self, master: &OwnRedis) {
        let offset = |port: u16, field: &'static str| async move {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut con)
                .await
                .unwrap();
            info.lines()
                .find_map(|line| line.strip_prefix(field)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let written = offset(master.port, "master_repl_offset:").await;
        let started = Instant::now();
        while offset(self.port, "slave_repl_offset:").await < written {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the replica never caught up"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
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
    /// The Sentinels' own password (`requirepass`), when they ask for one.
    pub password: Option<String>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl OwnSentinels {
    pub fn start(master: &OwnRedis, name: &str) -> OwnSentinels {
        Self::start_with(master, name, None, 1000)
    }

    /// Sentinels that call a master down after `down_after_ms` of silence (1,000 for
    /// [`start`](Self::start)): a busy machine can starve a server for a second.
    pub fn start_with_down_after(
        master: &OwnRedis,
        name: &str,
        down_after_ms: u64,
    ) -> OwnSentinels {
        Self::start_with(master, name, None, down_after_ms)
    }

    /// Sentinels that ask their clients (and each other) for `password`.
    pub fn start_with_password(master: &OwnRedis, name: &str, password: &str) -> OwnSentinels {
        Self::start_with(master, name, Some(password), 1000)
    }

    fn start_with(
        master: &OwnRedis,
        name: &str,
        password: Option<&str>,
        down_after_ms: u64,
    ) -> OwnSentinels {
        let dir = scratch_dir("sentinels");
        let mut ports = Vec::new();
        let mut children = Vec::new();
        for i in 0..3 {
            let port = crate::free_port();
            // A Sentinel rewrites its configuration file: each gets its own.
            let file = dir.join(format!("sentinel-{i}.conf"));
            let auth = password.map_or_else(String::new, |password| {
                format!("requirepass {password}\nsentinel sentinel-pass {password}\n")
            });
            std::fs::write(
                &file,
                auth + &format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel-{i}.log\n\
                     sentinel monitor {name} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {name} {down_after_ms}\n\
                     sentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 1\n",
                    master.port,
                    dir = dir.display(),
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
            password: password.map(str::to_owned),
            children,
            dir,
        }
    }

    /// A plain URL of the Sentinel on `port`, with their password.
    fn sentinel_url(&self, port: u16) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{port}/"),
            None => format!("redis://127.0.0.1:{port}/"),
        }
    }

    /// `redis+sentinel://` for these Sentinels and the master's database 0 (without their
    /// password: add `?sentinel_password=`).
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
            let client = redis::Client::open(self.sentinel_url(*port)).unwrap();
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

    /// The Sentinels' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Sends every Sentinel's process a signal (`STOP`, `CONT`, ...).
    pub fn signal(&self, signal: &str) {
        for child in &self.children {
            let status = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// The master's port as the first Sentinel names it.
    pub async fn master_port(&self) -> Option<u16> {
        let client = redis::Client::open(self.sentinel_url(self.ports[0])).unwrap();
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
        if std::thread::panicking() {
            // What the Sentinels saw and did (every failover, every server they called down),
            // for the test that failed: their folder goes next.
            for i in 0..self.children.len() {
                let log = std::fs::read_to_string(self.dir.join(format!("sentinel-{i}.log")))
                    .unwrap_or_default();
                for line in log.lines().filter(|line| {
                    [
                        "+switch-master",
                        "+sdown",
                        "-sdown",
                        "+odown",
                        "+try-failover",
                        "+failover-end",
                        "+convert-to-slave",
                        "+promoted-slave",
                        "+elected-leader",
                    ]
                    .iter()
                    .any(|event| line.contains(event))
                }) {
                    eprintln!("sentinel {i}: {line}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Recorded outcomes per task: the writes of a final status to its record, from the
/// server's append-only files (script effects are logged as the commands they ran).
pub fn recorded_outcomes(redis: &OwnRedis, prefix: &str) -> HashMap<Uuid, usize> {
    recorded_outcomes_in(&[redis.dir.join("aof")], prefix)
}

/// [`recorded_outcomes`] summed over the append-only folders `aof_dirs` (the servers a
/// task's record lived on in turn), for records under `prefix` (a cluster's hash tag
/// included).
pub fn recorded_outcomes_in(aof_dirs: &[PathBuf], prefix: &str) -> HashMap<Uuid, usize> {
    let mut counts = HashMap::new();
    let record_prefix = format!("{prefix}:");
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in aof_dirs {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "aof"))
            .collect();
        found.sort();
        files.extend(found);
    }
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

/// A Redis Cluster of a test's own: `masters` masters with `replicas` replicas each, on ports
/// of their own (each node's cluster bus on its port + 10000), nodes down after 1 s; killed
/// when dropped.
pub struct OwnCluster {
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: PathBuf,
    /// Whether each node keeps an append-only file ([`OwnCluster::start_with_aof`]).
    aof: bool,
}

impl OwnCluster {
    pub fn start(masters: usize, replicas: usize) -> OwnCluster {
        Self::start_with(masters, replicas, false)
    }

    /// [`OwnCluster::start`] with an append-only file per node (fsynced always, never
    /// rewritten: [`OwnCluster::aof_dir`] holds every write the node made or received).
    pub fn start_with_aof(masters: usize, replicas: usize) -> OwnCluster {
        Self::start_with(masters, replicas, true)
    }

    fn start_with(masters: usize, replicas: usize, aof: bool) -> OwnCluster {
        let dir = scratch_dir("cluster");
        let count = masters * (1 + replicas);
        let mut ports = Vec::new();
        while ports.len() < count {
            let port = cluster_port();
            // No node's port may be another's bus port.
            let clashes = ports
                .iter()
                .any(|other| [*other, other + 10_000].contains(&port) || *other == port + 10_000);
            if !clashes {
                ports.push(port);
            }
        }
        let mut cluster = OwnCluster {
            children: ports.iter().map(|_| None).collect(),
            ports,
            dir,
            aof,
        };
        for node in 0..count {
            cluster.launch(node);
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(status.success(), "redis-cli --cluster create failed");
        cluster
    }

    /// Starts node `node` (again, after a kill: it rejoins with its saved cluster config).
    pub fn launch(&mut self, node: usize) {
        let port = self.ports[node];
        let mut command = Command::new("redis-server");
        if self.aof {
            command
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .args(["--appenddirname", &format!("aof-{port}")])
                .args(["--aof-use-rdb-preamble", "no"])
                .args(["--auto-aof-rewrite-percentage", "0"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"])
            // A replica syncs at once, and takes over however long ago it last heard from
            // its master (a test kills masters seconds after the cluster formed).
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.children[node] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs node `node`.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.children[node].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Node `node`'s append-only folder (a cluster [started with
    /// them](OwnCluster::start_with_aof)).
    pub fn aof_dir(&self, node: usize) -> PathBuf {
        self.dir.join(format!("aof-{}", self.ports[node]))
    }

    /// Node `node`'s process id (`None` while it is down).
    pub fn pid(&self, node: usize) -> Option<u32> {
        self.children[node].as_ref().map(Child::id)
    }

    /// Whether node `node` runs.
    pub fn is_up(&self, node: usize) -> bool {
        self.children[node].is_some()
    }

    /// `redis+cluster://` naming every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Waits until every live node says the cluster is ok and knows `masters` masters that
    /// serve slots, and every replica has synced with its master.
    pub async fn until_ok(&self, masters: usize) {
        let started = Instant::now();
        for (node, port) in self.ports.iter().enumerate() {
            if self.children[node].is_none() {
                continue;
            }
            loop {
                let shards = self.masters_seen_by(*port).await;
                if shards.as_ref().is_some_and(|found| found.len() == masters) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "node {port} never saw a healthy cluster of {masters} masters: {shards:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The masters that serve slots, as the node on `port` sees them, when it says the cluster
    /// is ok (and, for a replica, has synced).
    async fn masters_seen_by(&self, port: u16) -> Option<Vec<u16>> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
        let mut con = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut con)
            .await
            .ok()?;
        if !info.contains("cluster_state:ok") {
            return None;
        }
        let replication: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut con)
            .await
            .ok()?;
        if replication.contains("role:slave") && !replication.contains("master_link_status:up") {
            return None;
        }
        let mut masters: Vec<u16> = self
            .slots(&mut con)
            .await?
            .into_iter()
            .map(|(_, _, port)| port)
            .collect();
        masters.sort_unstable();
        masters.dedup();
        Some(masters)
    }

    /// `CLUSTER SLOTS`: (first slot, last slot, master port) per range.
    async fn slots(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
    ) -> Option<Vec<(u16, u16, u16)>> {
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(con)
            .await
            .ok()?;
        let mut found = Vec::new();
        for range in ranges {
            let redis::Value::Array(parts) = range else {
                return None;
            };
            let number = |value: &redis::Value| match value {
                redis::Value::Int(n) => u16::try_from(*n).ok(),
                _ => None,
            };
            let redis::Value::Array(master) = parts.get(2)? else {
                return None;
            };
            found.push((
                number(&parts[0])?,
                number(&parts[1])?,
                number(master.get(1)?)?,
            ));
        }
        Some(found)
    }

    /// The masters that serve slots, as a live node that says the cluster is ok sees them.
    pub async fn masters(&self) -> Vec<u16> {
        for (node, port) in self.ports.iter().enumerate() {
            if self.children[node].is_some()
                && let Some(masters) = self.masters_seen_by(*port).await
            {
                return masters;
            }
        }
        panic!("no live node says the cluster is ok")
    }

    /// `key`'s slot.
    pub async fn keyslot(&self, key: &str) -> u16 {
        let port = self.live_port();
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut node_connection(port).await)
            .await
            .unwrap()
    }

    fn live_port(&self) -> u16 {
        let node = (0..self.ports.len())
            .find(|node| self.children[*node].is_some())
            .expect("a live node");
        self.ports[node]
    }

    /// Moves `slot` from the master at `from` to the one at `to` as `redis-cli --cluster
    /// reshard` does: importing and migrating marks, the keys moved in batches of 20
    /// (`MIGRATE`; a client that asks meanwhile is sent on with `ASK`) with a pause between
    /// them, so that clients meet the slot half moved, then the slot given to its new owner on
    /// every live node. Returns how many keys moved.
    pub async fn migrate_slot(&self, slot: u16, from: u16, to: u16) -> usize {
        let mut source = node_connection(from).await;
        let mut target = node_connection(to).await;
        let id = |con: &mut redis::aio::MultiplexedConnection| {
            let mut con = con.clone();
            async move {
                redis::cmd("CLUSTER")
                    .arg("MYID")
                    .query_async::<String>(&mut con)
                    .await
                    .unwrap()
            }
        };
        let (source_id, target_id) = (id(&mut source).await, id(&mut target).await);
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&source_id)
            .query_async(&mut target)
            .await
            .unwrap();
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&target_id)
            .query_async(&mut source)
            .await
            .unwrap();
        let mut moved = 0;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(20)
                .query_async(&mut source)
                .await
                .unwrap();
            if keys.is_empty() {
                break;
            }
            moved += keys.len();
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query_async(&mut source)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The owners first (the target, then the source), then the others; a replica
        // refuses `SETSLOT` and learns it from its master.
        let mut order = vec![to, from];
        order.extend(self.ports.iter().filter(|port| ![to, from].contains(port)));
        for port in order {
            if self.children[self.node(port)].is_none() {
                continue;
            }
            let given: redis::RedisResult<()> = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&target_id)
                .query_async(&mut node_connection(port).await)
                .await;
            if port == to || port == from {
                given.unwrap_or_else(|error| panic!("the slot's owner {port} refused: {error}"));
            }
        }
        moved
    }

    /// The port of the master that serves `key`'s slot, as a live node sees it.
    pub async fn master_of(&self, key: &str) -> u16 {
        for (node, port) in self.ports.iter().enumerate() {
            if self.children[node].is_none() {
                continue;
            }
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
                continue;
            };
            let Ok(mut con) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            let Ok(slot) = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async::<u16>(&mut con)
                .await
            else {
                continue;
            };
            if let Some(ranges) = self.slots(&mut con).await
                && let Some((_, _, master)) = ranges
                    .into_iter()
                    .find(|(first, last, _)| (*first..=*last).contains(&slot))
            {
                return master;
            }
        }
        panic!("no live node knows who serves `{key}`")
    }

    /// The index of the node on `port`.
    pub fn node(&self, port: u16) -> usize {
        self.ports
            .iter()
            .position(|p| *p == port)
            .expect("a node of this cluster")
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for node in 0..self.children.len() {
            self.kill(node);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection to the node on `port` alone (no cluster routing).
async fn node_connection(port: u16) -> redis::aio::MultiplexedConnection {
    crate::redis::raw_connection(&format!("redis://127.0.0.1:{port}/")).await
}

/// A port that is free, and whose cluster bus port (+ 10000) is free too, below the range the
/// system hands out for outgoing connections and `bind(0)` (32768 and up), so no other test's
/// connection takes either meanwhile.
fn cluster_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    loop {
        let random = RandomState::new().hash_one(Instant::now());
        let port = 12_000 + u16::try_from(random % 10_000).unwrap();
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}
