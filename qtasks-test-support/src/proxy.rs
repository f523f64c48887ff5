//! A TCP proxy in front of a server, for network faults: every connection through it can be
//! cut at once, or held silent (a blackhole: no byte passes either way until it ends, and what
//! was sent meanwhile arrives late, as after a partition that heals).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub port: u16,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    silent: Arc<watch::Sender<bool>>,
    accepting: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `target` (`host:port`).
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let silent = Arc::new(watch::channel(false).0);
        let (held, quiet) = (Arc::clone(&connections), Arc::clone(&silent));
        let accepting = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = target.clone();
                let quiet = quiet.subscribe();
                let piping = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(&target).await {
                        let (from_client, to_client) = inbound.into_split();
                        let (from_server, to_server) = outbound.into_split();
                        // Either way ending ends both (a close, a reset).
                        tokio::select! {
                            () = pipe(from_client, to_server, quiet.clone()) => {}
                            () = pipe(from_server, to_client, quiet) => {}
                        }
                    }
                });
                let mut held = held.lock().unwrap();
                held.retain(|connection| !connection.is_finished());
                held.push(piping);
            }
        });
        Proxy {
            port,
            connections,
            silent,
            accepting,
        }
    }

    /// A proxy in front of the server of `url` (`scheme://[user:password@]host:port/...`), and
    /// `url` through it.
    pub async fn in_front_of(url: &str) -> (Self, String) {
        let host_port = host_port(url);
        let proxy = Proxy::start(host_port.clone()).await;
        let through = proxy.url_through(url, &host_port);
        (proxy, through)
    }

    /// `url` with `host_port` (the target's) replaced by the proxy's address.
    pub fn url_through(&self, url: &str, host_port: &str) -> String {
        url.replace(host_port, &format!("127.0.0.1:{}", self.port))
    }

    /// Drops every connection through the proxy, as a network failure would; how many.
    pub fn cut(&self) -> usize {
        let cut: Vec<_> = self.connections.lock().unwrap().drain(..).collect();
        for connection in &cut {
            connection.abort();
        }
        cut.len()
    }

    /// Holds every connection silent (new ones too) until called again with `false`.
    pub fn blackhole(&self, on: bool) {
        self.silent.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

/// The `host:port` of a server URL (`scheme://[user:password@]host:port/...`).
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// Copies one direction, reading nothing while the proxy is silent (so the sender's buffers
/// fill, as they would with a peer that answers nothing).
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut silent: watch::Receiver<bool>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        if silent.wait_for(|silent| !*silent).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if silent.wait_for(|silent| !*silent).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
