//! A command connection of the engine: Redis's `ConnectionManager` for one server (it reconnects
//! to its address by itself), and for a Sentinel-monitored master or a Redis Cluster one that is
//! made anew when the servers behind it change.
//!
//! A failover shows on a connection as a dropped connection that will not come back (the old
//! master is gone), as timeouts, or as `READONLY` answers (the old master came back as a
//! replica). After one of these, a Sentinel link asks the Sentinels which server is master now
//! and, when it is another one, moves every clone of the link to it; a cluster link connects
//! anew, learning the cluster's layout from its nodes (the cluster client itself follows
//! `MOVED` and `ASK`, but keeps sending to a master that died). The command that met the error
//! still fails: the engine's callers retry connection errors already, and their next try goes
//! to the new master.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::server::{ClusterNodes, SentinelMaster, Timeouts};

/// How often a link looks for new servers at most, while they do not answer: it looks again on
/// the next error after this.
const LOOK_AGAIN_AFTER: Duration = Duration::from_millis(200);

/// A command connection; clones share it (and, when followed, its moves).
#[derive(Clone)]
pub(crate) enum Link {
    /// One server's connection.
    Direct(ConnectionManager),
    /// A connection made anew when the servers behind it change.
    Followed(Arc<Followed>),
}

/// What a followed link connects to, and how it finds the servers again.
pub(crate) enum Behind {
    /// The master Sentinels name.
    Sentinel {
        master: Arc<SentinelMaster>,
        config: ConnectionManagerConfig,
    },
    /// A Redis Cluster. Each command goes to its key's slot, and `SCAN` and `SCRIPT LOAD`,
    /// which name no key, to the node of the app's slot (`home`: every key of an app shares
    /// its hash tag).
    Cluster {
        nodes: Arc<ClusterNodes>,
        timeouts: Timeouts,
        home: Route,
    },
}

/// A connection of either kind.
#[derive(Clone)]
enum Connection {
    Master(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The connection in use, where it goes (the master's address; empty for a cluster), and a
/// count of the moves so far.
#[derive(Clone)]
struct Current {
    connection: Connection,
    address: String,
    moves: u64,
}

/// A connection that is made anew when the servers behind it change.
pub(crate) struct Followed {
    behind: Behind,
    current: parking_lot::Mutex<Current>,
    /// When the servers were last looked for: one look at a time, and not too often.
    looked: tokio::sync::Mutex<Option<Instant>>,
}

impl Followed {
    /// Connects to what `behind` names now.
    pub(crate) async fn connect(behind: Behind) -> RedisResult<Followed> {
        let (connection, address) = behind.connect().await?;
        Ok(Followed {
            behind,
            current: parking_lot::Mutex::new(Current {
                connection,
                address,
                moves: 0,
            }),
            looked: tokio::sync::Mutex::new(None),
        })
    }

    fn current(&self) -> Current {
        self.current.lock().clone()
    }

    /// After `error` on the connection of move `moves`: when it may mean the servers changed,
    /// connects anew (for Sentinels, only when they name another master). Errors doing so are
    /// only logged: the new master may not be elected yet, and the next error looks again.
    async fn after(&self, error: &redis::RedisError, moves: u64) {
        if !may_mean_failover(error) {
            return;
        }
        let mut looked = self.looked.lock().await;
        // Another clone moved while this one waited, or looked a moment ago.
        if self.current.lock().moves != moves
            || looked.is_some_and(|at| at.elapsed() < LOOK_AGAIN_AFTER)
        {
            return;
        }
        *looked = Some(Instant::now());
        tracing::debug!("looking for the servers again after: {error}");
        match self.behind.connect_if_moved(&self.current().address).await {
            Ok(None) => {}
            Ok(Some((connection, address))) => {
                let mut current = self.current.lock();
                let before = std::mem::replace(&mut current.address, address);
                current.connection = connection;
                current.moves += 1;
                match &self.behind {
                    Behind::Sentinel { master, .. } => tracing::warn!(
                        master = %master.name,
                        from = %before,
                        to = %current.address,
                        "the Sentinels moved master `{}` from {before} to {}; following it",
                        master.name,
                        current.address
                    ),
                    Behind::Cluster { .. } => {
                        tracing::info!("connected to the Redis Cluster anew after: {error}");
                    }
                }
            }
            Err(why) => tracing::debug!("looking for the servers again failed: {why}"),
        }
    }
}

impl Behind {
    /// A connection to what this names now, and the master's address (empty for a cluster).
    async fn connect(&self) -> RedisResult<(Connection, String)> {
        match self {
            Behind::Sentinel { master, config } => {
                let client = master.client().await?;
                let address = client.get_connection_info().addr().to_string();
                let connection = ConnectionManager::new_with_config(client, config.clone()).await?;
                Ok((Connection::Master(connection), address))
            }
            Behind::Cluster {
                nodes, timeouts, ..
            } => Ok((
                Connection::Cluster(nodes.connect(*timeouts).await?),
                String::new(),
            )),
        }
    }

    /// A new connection, unless the Sentinels still name the master at `address`.
    async fn connect_if_moved(&self, address: &str) -> RedisResult<Option<(Connection, String)>> {
        match self {
            Behind::Sentinel { master, config } => {
                let client = master.client().await?;
                let now = client.get_connection_info().addr().to_string();
                if now == address {
                    return Ok(None);
                }
                let connection = ConnectionManager::new_with_config(client, config.clone()).await?;
                Ok(Some((Connection::Master(connection), now)))
            }
            Behind::Cluster { .. } => self.connect().await.map(Some),
        }
    }
}

/// Errors after which the servers may have changed: the connection dropped, could not be made
/// or timed out, a write was refused as on a replica, or a cluster has no node for the slot.
fn may_mean_failover(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::ReadOnly
                    | redis::ServerErrorKind::MasterDown
                    | redis::ServerErrorKind::ClusterDown
            ) | redis::ErrorKind::ClusterConnectionNotFound
        )
}

/// Whether `cmd` names no key but must reach the node of the app's keys on a cluster: `SCAN`
/// (the cluster client would send it to any node), and `SCRIPT LOAD` (the cluster client
/// would send it to every node, and wait for a dead one: the script is needed only where the
/// app's keys are, and a promoted replica does not have it).
fn goes_home(cmd: &Cmd) -> bool {
    let mut args = cmd.args_iter().filter_map(|arg| match arg {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    match args.next() {
        Some(name) if name.eq_ignore_ascii_case(b"SCAN") => true,
        Some(name) if name.eq_ignore_ascii_case(b"SCRIPT") => args
            .next()
            .is_some_and(|sub| sub.eq_ignore_ascii_case(b"LOAD")),
        _ => false,
    }
}

/// The first answer of a pipeline that refuses a write as a replica does: a pipeline's
/// commands fail one by one, so the refusal comes back as one of its answers.
fn refused_write(answers: &[Value]) -> Option<redis::RedisError> {
    answers.iter().find_map(|answer| match answer {
        Value::ServerError(error) if error.kind() == Some(redis::ServerErrorKind::ReadOnly) => {
            Some(redis::RedisError::from(error.clone()))
        }
        _ => None,
    })
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Direct(connection) => connection.req_packed_command(cmd),
            Link::Followed(followed) => Box::pin(async move {
                let Current {
                    connection, moves, ..
                } = followed.current();
                let answer = match connection {
                    Connection::Master(mut connection) => connection.req_packed_command(cmd).await,
                    Connection::Cluster(mut connection) => match &followed.behind {
                        Behind::Cluster { home, .. } if goes_home(cmd) => {
                            let route =
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(*home));
                            connection.route_command(cmd.clone(), route).await
                        }
                        _ => connection.req_packed_command(cmd).await,
                    },
                };
                if let Err(error) = &answer {
                    followed.after(error, moves).await;
                }
                answer
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Direct(connection) => connection.req_packed_commands(pipeline, offset, count),
            Link::Followed(followed) => Box::pin(async move {
                let Current {
                    connection, moves, ..
                } = followed.current();
                let answer = match connection {
                    Connection::Master(mut connection) => {
                        connection
                            .req_packed_commands(pipeline, offset, count)
                            .await
                    }
                    Connection::Cluster(mut connection) => {
                        connection
                            .req_packed_commands(pipeline, offset, count)
                            .await
                    }
                };
                match &answer {
                    Err(error) => followed.after(error, moves).await,
                    Ok(answers) => {
                        if let Some(error) = refused_write(answers) {
                            followed.after(&error, moves).await;
                        }
                    }
                }
                answer
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Direct(connection) => connection.get_db(),
            Link::Followed(followed) => match &followed.current().connection {
                Connection::Master(connection) => connection.get_db(),
                Connection::Cluster(_) => 0,
            },
        }
    }
}
