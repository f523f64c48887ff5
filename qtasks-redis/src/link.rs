//! A command connection of the engine: Redis's `ConnectionManager` for one server (it reconnects
//! to its address by itself), and for a Sentinel-monitored master or a Redis Cluster one that is
//! made anew when the servers behind it change.
//!
//! A failover shows on a connection as a dropped connection that will not come back (the old
//! master is gone), as timeouts, or as `READONLY` answers (the old master came back as a
//! replica). After one of these, a Sentinel link is broken: its next command first asks the
//! Sentinels which server is master now and connects there, and every clone of the link moves
//! with it. A cluster link connects anew, learning the cluster's layout from its nodes (the
//! cluster client itself follows `MOVED` and `ASK`, but keeps sending to a master that died).
//! The command that met the error still fails: the engine's callers retry connection errors
//! already, and their next try goes to the new master.
//!
//! A Sentinel link's connection never reconnects by itself (it is a plain multiplexed
//! connection, not a `ConnectionManager`): it connects only where the Sentinels have just
//! said. A master that died can come back after the Sentinels promoted its replica, still
//! calling itself master with the data it had until they tell it to follow the new one (which
//! takes them up to ten seconds); a connection that reconnected to its old address by itself
//! would write there, and the writes be lost when it resyncs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo,
};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::server::{ClusterNodes, SentinelMaster, Timeouts};

/// How often a link looks for new servers at most, while they do not answer: a cluster link
/// looks again on the next error after this, a broken Sentinel link on the next command after
/// this. (A command that began before a cluster link's last look ended does not look again
/// either: under a wave of timeouts, that makes one look per response timeout.)
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
        config: redis::AsyncConnectionConfig,
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
    Master(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// The connection in use, where it goes (the master's address; empty for a cluster), and a
/// count of the moves so far.
struct Current {
    connection: Connection,
    address: String,
    moves: u64,
    /// A Sentinel link's connection failed: the next command first asks the Sentinels for the
    /// master and connects there (see the module's notes).
    broken: bool,
}

/// A connection that is made anew when the servers behind it change.
pub(crate) struct Followed {
    behind: Behind,
    current: parking_lot::Mutex<Current>,
    /// When the last look for the servers ended: one look at a time, and not too often.
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
                broken: false,
            }),
            looked: tokio::sync::Mutex::new(None),
        })
    }

    /// The connection in use and its move's number (the address is read only by a look: no
    /// copy of it per command).
    fn current(&self) -> (Connection, u64) {
        let current = self.current.lock();
        (current.connection.clone(), current.moves)
    }

    /// After `error` on the connection of move `moves`, in a command sent at `began`, when it
    /// may mean the servers changed: a Sentinel link is broken (its next command connects
    /// anew, [`Followed::mend`]); a cluster link connects anew now, unless a look ended after
    /// the command was sent or a moment ago. Errors connecting are only logged: the new
    /// master may not be elected yet, and the next error looks again.
    async fn after(&self, error: &redis::RedisError, moves: u64, began: Instant) {
        if !may_mean_failover(error) {
            return;
        }
        if let Behind::Sentinel { .. } = &self.behind {
            let mut current = self.current.lock();
            if current.moves == moves && !current.broken {
                tracing::debug!("the master's connection is broken: {error}");
                current.broken = true;
            }
            return;
        }
        let mut looked = self.looked.lock().await;
        // Another clone moved while this one waited, or a look ended after this command was
        // sent (it knew no better), or a moment ago.
        if self.current.lock().moves != moves
            || looked.is_some_and(|ended| ended > began || ended.elapsed() < LOOK_AGAIN_AFTER)
        {
            return;
        }
        tracing::debug!("looking for the servers again after: {error}");
        let found = self.behind.connect().await;
        *looked = Some(Instant::now());
        match found {
            Ok((connection, address)) => {
                let mut current = self.current.lock();
                current.address = address;
                current.connection = connection;
                current.moves += 1;
                tracing::info!("connected to the Redis Cluster anew after: {error}");
            }
            Err(why) => tracing::debug!("looking for the servers again failed: {why}"),
        }
    }
}

impl Followed {
    /// Before a command on a broken Sentinel link: asks the Sentinels for the master and
    /// connects there (one clone at a time; the others use what it made). The error of a
    /// master not found is the command's.
    async fn mend(&self) -> RedisResult<()> {
        let moves = {
            let current = self.current.lock();
            if !current.broken {
                return Ok(());
            }
            current.moves
        };
        let mut looked = self.looked.lock().await;
        if self.current.lock().moves != moves {
            return Ok(());
        }
        // A lookup that failed a moment ago is not repeated for every queued command.
        if looked.is_some_and(|ended| ended.elapsed() < LOOK_AGAIN_AFTER) {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no master yet",
                "the Sentinels were asked a moment ago".to_owned(),
            )));
        }
        let found = self.behind.connect().await;
        *looked = Some(Instant::now());
        let (connection, address) = found?;
        let mut current = self.current.lock();
        let before = std::mem::replace(&mut current.address, address);
        current.connection = connection;
        current.moves += 1;
        current.broken = false;
        if let Behind::Sentinel { master, .. } = &self.behind {
            if before == current.address {
                tracing::debug!(master = %master.name, "connected to the master again");
            } else {
                tracing::warn!(
                    master = %master.name,
                    from = %before,
                    to = %current.address,
                    "the Sentinels moved master `{}` from {before} to {}; following it",
                    master.name,
                    current.address
                );
            }
        }
        Ok(())
    }
}

impl Behind {
    /// A connection to what this names now, and the master's address (empty for a cluster).
    async fn connect(&self) -> RedisResult<(Connection, String)> {
        match self {
            Behind::Sentinel { master, config } => {
                let client = master.client().await?;
                let address = client.get_connection_info().addr().to_string();
                let connection = client
                    .get_multiplexed_async_connection_with_config(config)
                    .await?;
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
}

/// Errors after which the servers may have changed: the connection dropped, could not be made
/// or timed out, a write was refused as on a replica (also inside an aborted transaction), or a
/// cluster has no node for the slot.
fn may_mean_failover(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || matches!(error.kind(), redis::ErrorKind::Server(kind)
            if demoted(kind, error.code().unwrap_or_default(), &error.to_string()))
        || error
            .clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, error)| server_demoted(error)))
}

/// Whether a server's error says it is no master any more (or the cluster lost the slot's):
/// `READONLY`, `MASTERDOWN`, `CLUSTERDOWN`, or a script's error that wraps a refused write
/// (Redis 6 reports it inside `ERR Error running script`). Exact codes and Redis's own words
/// only: a script's error that merely names a key containing `READONLY` is no demotion.
fn demoted(kind: redis::ServerErrorKind, code: &str, text: &str) -> bool {
    matches!(
        kind,
        redis::ServerErrorKind::ReadOnly
            | redis::ServerErrorKind::MasterDown
            | redis::ServerErrorKind::ClusterDown
    ) || code == "READONLY"
        || text.contains(REFUSED_ON_A_REPLICA)
}

/// What Redis says when a replica refuses a write.
const REFUSED_ON_A_REPLICA: &str = "You can't write against a read only replica";

fn server_demoted(error: &redis::ServerError) -> bool {
    let details = error.details().unwrap_or_default();
    error
        .kind()
        .is_some_and(|kind| demoted(kind, error.code(), details))
        || error.code() == "READONLY"
        || details.contains(REFUSED_ON_A_REPLICA)
}

/// Where a keyless command must go on a cluster, when not where the cluster client would send
/// it (to any node, or to every node for `SCRIPT LOAD`).
enum Keyless {
    /// `SCAN`, `CONFIG GET`: to the node of the app's slot.
    Home,
    /// `SCRIPT LOAD`: to the node of the app's slot, whose answer counts, and then to every
    /// master in the background, so that wherever the slot moves next (a promoted replica, a
    /// migration's target) has the script; a master that is down does not hold the load up.
    Everywhere,
}

fn keyless(cmd: &Cmd) -> Option<Keyless> {
    let mut args = cmd.args_iter().filter_map(|arg| match arg {
        redis::Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let name = args.next()?;
    if name.eq_ignore_ascii_case(b"SCAN") {
        return Some(Keyless::Home);
    }
    let sub = args.next()?;
    if name.eq_ignore_ascii_case(b"CONFIG") && sub.eq_ignore_ascii_case(b"GET") {
        return Some(Keyless::Home);
    }
    (name.eq_ignore_ascii_case(b"SCRIPT") && sub.eq_ignore_ascii_case(b"LOAD"))
        .then_some(Keyless::Everywhere)
}

/// Sends `cmd` on a cluster connection, keyless commands where they must go (`home`: the
/// app's slot).
async fn on_cluster(
    mut connection: ClusterConnection,
    cmd: &Cmd,
    home: Route,
) -> RedisResult<Value> {
    let to_home = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(home));
    match keyless(cmd) {
        None => connection.req_packed_command(cmd).await,
        Some(Keyless::Home) => connection.route_command(cmd.clone(), to_home).await,
        Some(Keyless::Everywhere) => {
            let answer = connection.route_command(cmd.clone(), to_home).await;
            if answer.is_ok() {
                let (mut connection, cmd) = (connection.clone(), cmd.clone());
                let everywhere = RoutingInfo::MultiNode((
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::AllSucceeded),
                ));
                tokio::spawn(async move {
                    if let Err(error) = connection.route_command(cmd, everywhere).await {
                        tracing::debug!("loading a script on every master failed: {error}");
                    }
                });
            }
            answer
        }
    }
}

/// The first answer that says the server is no master any more: a connection hands a
/// server's error back as an answer (the caller's `query_async` turns it into an error), and a
/// pipeline's commands fail one by one.
fn refusal<'a>(answers: impl IntoIterator<Item = &'a Value>) -> Option<redis::RedisError> {
    answers.into_iter().find_map(|answer| match answer {
        Value::ServerError(error) if server_demoted(error) => {
            Some(redis::RedisError::from(error.clone()))
        }
        _ => None,
    })
}

impl Followed {
    /// Sends a command on the current connection, and looks for the servers again when the
    /// answer says they may have changed.
    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        self.mend().await?;
        let (connection, moves) = self.current();
        let began = Instant::now();
        let answer = match (connection, &self.behind) {
            (Connection::Master(mut connection), _) => connection.req_packed_command(cmd).await,
            (Connection::Cluster(connection), Behind::Cluster { home, .. }) => {
                on_cluster(connection, cmd, *home).await
            }
            (Connection::Cluster(mut connection), Behind::Sentinel { .. }) => {
                connection.req_packed_command(cmd).await
            }
        };
        match &answer {
            Err(error) => self.after(error, moves, began).await,
            Ok(answer) => {
                if let Some(error) = refusal([answer]) {
                    self.after(&error, moves, began).await;
                }
            }
        }
        answer
    }

    /// Sends a pipeline on the current connection, and looks for the servers again when an
    /// answer says they may have changed.
    async fn pipeline(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.mend().await?;
        let (connection, moves) = self.current();
        let began = Instant::now();
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
            Err(error) => self.after(error, moves, began).await,
            Ok(answers) => {
                if let Some(error) = refusal(answers) {
                    self.after(&error, moves, began).await;
                }
            }
        }
        answer
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Direct(connection) => connection.req_packed_command(cmd),
            Link::Followed(followed) => Box::pin(followed.command(cmd)),
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
            Link::Followed(followed) => Box::pin(followed.pipeline(pipeline, offset, count)),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Direct(connection) => connection.get_db(),
            Link::Followed(followed) => match &followed.current.lock().connection {
                Connection::Master(connection) => connection.get_db(),
                Connection::Cluster(_) => 0,
            },
        }
    }
}
