//! A command connection of the engine: Redis's `ConnectionManager`, which reconnects to its
//! address by itself, and for a Sentinel-monitored master one that also moves to the new master
//! after a failover.
//!
//! A failover shows on a connection as a dropped connection that will not come back (the old
//! master is gone) or as `READONLY` answers (the old master came back as a replica). After
//! either, the link asks the Sentinels which server is master now and, when it is another
//! one, moves every clone of the link to it. The command that met the error still fails: the
//! engine's callers retry connection errors already, and their next try goes to the new master.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::server::SentinelMaster;

/// How often a link asks the Sentinels at most, while its master does not answer: they are
/// asked again on the next error after this.
const LOOK_AGAIN_AFTER: Duration = Duration::from_millis(200);

/// A command connection; clones share it (and, when followed, its moves).
#[derive(Clone)]
pub(crate) enum Link {
    /// One server's connection.
    Direct(ConnectionManager),
    /// The connection to a master that Sentinels name, moved when they name another.
    Followed(Arc<Followed>),
}

/// The connection to the master the Sentinels named when it was made, and how to make the next.
pub(crate) struct Followed {
    master: Arc<SentinelMaster>,
    config: ConnectionManagerConfig,
    db: i64,
    /// The connection in use, with the master's address and a count of the moves so far.
    current: parking_lot::Mutex<Current>,
    /// When the Sentinels were last asked: one question at a time, and not too often.
    looked: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(Clone)]
struct Current {
    connection: ConnectionManager,
    address: String,
    moves: u64,
}

impl Followed {
    /// Connects to the master the Sentinels name now.
    pub(crate) async fn connect(
        master: Arc<SentinelMaster>,
        config: ConnectionManagerConfig,
    ) -> RedisResult<Followed> {
        let client = master.client().await?;
        let address = client.get_connection_info().addr().to_string();
        let db = client.get_connection_info().redis_settings().db();
        let connection = ConnectionManager::new_with_config(client, config.clone()).await?;
        Ok(Followed {
            master,
            config,
            db,
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

    /// After `error` on the connection of move `moves`: when it may mean a failover, asks the
    /// Sentinels for the master and moves to it if it is another server. Errors asking are
    /// only logged: the master may not be elected yet, and the next error asks again.
    async fn after(&self, error: &redis::RedisError, moves: u64) {
        if !may_mean_failover(error) {
            return;
        }
        let mut looked = self.looked.lock().await;
        // Another clone moved while this one waited, or asked a moment ago.
        if self.current.lock().moves != moves
            || looked.is_some_and(|at| at.elapsed() < LOOK_AGAIN_AFTER)
        {
            return;
        }
        *looked = Some(Instant::now());
        let client = match self.master.client().await {
            Ok(client) => client,
            Err(why) => {
                tracing::debug!(master = %self.master.name, "the Sentinels name no reachable master yet: {why}");
                return;
            }
        };
        let address = client.get_connection_info().addr().to_string();
        let before = self.current.lock().address.clone();
        if address == before {
            return;
        }
        match ConnectionManager::new_with_config(client, self.config.clone()).await {
            Ok(connection) => {
                let mut current = self.current.lock();
                current.connection = connection;
                current.address.clone_from(&address);
                current.moves += 1;
                tracing::warn!(
                    master = %self.master.name,
                    from = %before,
                    to = %address,
                    "the Sentinels moved master `{}` from {before} to {address}; following it",
                    self.master.name
                );
            }
            Err(why) => {
                tracing::debug!(master = %self.master.name, "connecting to the new master {address} failed: {why}");
            }
        }
    }
}

/// Errors after which the server may no longer be the master: the connection dropped or could
/// not be made, or a write was refused as on a replica.
fn may_mean_failover(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown)
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Direct(connection) => connection.req_packed_command(cmd),
            Link::Followed(followed) => Box::pin(async move {
                let Current {
                    mut connection,
                    moves,
                    ..
                } = followed.current();
                let answer = connection.req_packed_command(cmd).await;
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
                    mut connection,
                    moves,
                    ..
                } = followed.current();
                let answer = connection
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                match &answer {
                    Err(error) => followed.after(error, moves).await,
                    // A pipeline's commands fail one by one: a refused write comes back as
                    // one of its answers.
                    Ok(answers) => {
                        let refused = answers.iter().find_map(|answer| match answer {
                            Value::ServerError(error)
                                if error.kind() == Some(redis::ServerErrorKind::ReadOnly) =>
                            {
                                Some(redis::RedisError::from(error.clone()))
                            }
                            _ => None,
                        });
                        if let Some(error) = refused {
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
            Link::Followed(followed) => followed.db,
        }
    }
}
