//! A RabbitMQ node of a test's own (its own ports, folder and node name, never the shared
//! server), to pause, kill and start again from its disk.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::scratch::{free_port, unique_prefix};

/// How long a node may take to start here (about 20 s on two busy cores).
const BOOT: Duration = Duration::from_secs(120);

pub struct OwnRabbitMq {
    pub port: u16,
    /// Erlang distribution's port (the node must not take the shared node's).
    dist_port: u16,
    dir: PathBuf,
    /// The `rabbitmq-server` script that runs the node: reaped when the node is gone.
    script: Mutex<Option<Child>>,
}

impl OwnRabbitMq {
    /// Whether this machine can start one (`rabbitmq-server` installed, run by root, which
    /// hands the node to the `rabbitmq` user as the package's script does).
    pub fn available() -> bool {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
        root && std::path::Path::new("/usr/sbin/rabbitmq-server").exists()
    }

    pub fn start(name: &str) -> Self {
        let (port, dist_port) = (free_port(), free_port());
        // Under /tmp: the node runs as the `rabbitmq` user, who must reach its folder.
        let dir = std::env::temp_dir().join(unique_prefix(name));
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\n"),
        )
        .unwrap();
        let owned = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            owned.success(),
            "the node's folder goes to the rabbitmq user"
        );
        let node = OwnRabbitMq {
            port,
            dist_port,
            dir,
            script: Mutex::new(None),
        };
        node.launch();
        node
    }

    /// Starts the node (again, from its folder) and waits until it takes connections.
    pub fn launch(&self) {
        let path = |name: &str| self.dir.join(name);
        let script = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", format!("qt{}@localhost", self.port))
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_PID_FILE", path("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rabbitmq-server starts");
        *self.script.lock().unwrap() = Some(script);
        let deadline = Instant::now() + BOOT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the RabbitMQ node never listened (its log: {})",
                path("log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The node's process (its Erlang VM), from the pid file it writes.
    fn pid(&self) -> Option<String> {
        let pid = std::fs::read_to_string(self.dir.join("pid")).ok()?;
        Some(pid.trim().to_owned()).filter(|pid| !pid.is_empty())
    }

    /// Sends `signal` (`-STOP`, `-CONT`, `-KILL`) to the node.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the node wrote its pid");
        let sent = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }

    /// SIGKILL: nothing flushed but what the node already wrote; returns once it is gone.
    pub fn kill(&self) {
        self.signal("-KILL");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "the killed node still listens");
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(self.dir.join("pid"));
        self.reap();
    }

    /// Waits for the script of a node that is gone.
    fn reap(&self) {
        if let Some(mut script) = self.script.lock().unwrap().take() {
            let _ = script.wait();
        }
    }
}

impl Drop for OwnRabbitMq {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        self.reap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
