//! Wake-ups: one `LISTEN` connection per database and schema, its notifications handed to the
//! apps they name.
//!
//! The triggers of the schema send, on channel `qtasks_{schema}`: `a {app} {queue}` (a task
//! waits in a queue) and `d {app} {uuid} {uuid} ...` (records became final, up to 100 a
//! message); the engine itself sends `p {app} {uuid}` (new progress or stream items) and
//! `c {app} {uuid} {reason}` (a cancel asked of a running task). `{app}` is the first 16 hex digits of the md5 of the app's name.
//!
//! A notification sent while the connection is down is lost (PostgreSQL keeps none for a
//! listener that is gone), so a reconnect wakes every take and waiter to look again; and each
//! of them looks on its own now and then anyway.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use uuid::Uuid;

use qtasks_core::backend::{BackendError, CancelRequest};

use crate::failure;

/// The listening task of one database and schema; stopped when dropped.
pub(crate) struct Listener {
    hubs: Arc<Hubs>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The apps that listen, by the hash their notifications carry.
#[derive(Default)]
struct Hubs {
    by_hash: Mutex<HashMap<String, Weak<Hub>>>,
}

impl Hubs {
    fn dispatch(&self, payload: &str) {
        let mut parts = payload.splitn(3, ' ');
        let (Some(kind), Some(hash), rest) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        let Some(hub) = self.by_hash.lock().get(hash).and_then(Weak::upgrade) else {
            return;
        };
        let rest = rest.unwrap_or("");
        match kind {
            "a" => hub.added.notify_waiters(),
            // Finished tasks (up to 100 a message), or a stream task's new item.
            "d" | "p" => {
                for uuid in rest
                    .split(' ')
                    .filter_map(|uuid| Uuid::parse_str(uuid).ok())
                {
                    hub.waiters.wake(uuid);
                }
            }
            "c" => {
                let (uuid, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                if let Ok(uuid) = Uuid::parse_str(uuid) {
                    let _ = hub.cancels.send(CancelRequest::new(uuid, reason));
                }
            }
            _ => {}
        }
    }

    fn wake_all(&self) {
        let hubs: Vec<Arc<Hub>> = self
            .by_hash
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for hub in hubs {
            hub.added.notify_waiters();
            hub.waiters.wake_all();
        }
    }
}

impl Listener {
    /// Listens on the schema's channel before returning, so that nothing sent after the first
    /// app connected is missed.
    pub(crate) async fn start(pool: &PgPool, schema: &str) -> Result<Listener, BackendError> {
        let channel = format!("qtasks_{schema}");
        let listener = open(pool, &channel)
            .await
            .map_err(|e| failure(format!("listening on `{channel}` failed"), e))?;
        let hubs = Arc::new(Hubs::default());
        let task = tokio::spawn(listen(listener, pool.clone(), channel, Arc::clone(&hubs)));
        Ok(Listener { hubs, task })
    }

    /// The hub of the app whose notifications carry `hash`.
    pub(crate) fn hub(&self, hash: &str) -> Arc<Hub> {
        let mut by_hash = self.hubs.by_hash.lock();
        if let Some(hub) = by_hash.get(hash).and_then(Weak::upgrade) {
            return hub;
        }
        by_hash.retain(|_, hub| hub.strong_count() > 0);
        let hub = Arc::new(Hub {
            added: Notify::new(),
            waiters: Waiters::default(),
            cancels: broadcast::channel(4096).0,
        });
        by_hash.insert(hash.to_owned(), Arc::downgrade(&hub));
        hub
    }
}

/// A connection listening on `channel`.
async fn open(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

async fn listen(mut listener: PgListener, pool: PgPool, channel: String, hubs: Arc<Hubs>) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => hubs.dispatch(notification.payload()),
            // The connection was lost; the next call reconnects and listens again. What was
            // sent meanwhile is gone: everyone looks again.
            Ok(None) => {
                tracing::debug!("the notification connection was lost; reconnecting");
                hubs.wake_all();
            }
            Err(error) => {
                tracing::warn!(
                    "listening for notifications failed (opening a new connection): {}",
                    qtasks_core::backend::ErrorChain(&error)
                );
                // A new connection, listening before anyone is told to look again: what is
                // sent from then on is heard.
                let mut pauses = crate::reconnect_pauses();
                listener = loop {
                    tokio::time::sleep(pauses.next().unwrap_or(Duration::from_secs(2))).await;
                    match open(&pool, &channel).await {
                        Ok(listener) => break listener,
                        Err(error) => tracing::debug!(
                            "listening on `{channel}` failed (trying again): {}",
                            qtasks_core::backend::ErrorChain(&error)
                        ),
                    }
                };
                hubs.wake_all();
            }
        }
    }
}

/// One app's wake-ups.
pub(crate) struct Hub {
    /// A task of the app waits in a queue: idle takes look.
    pub(crate) added: Notify,
    /// Waiters on records, by task.
    pub(crate) waiters: Waiters,
    /// Cancels asked of running tasks of the app.
    pub(crate) cancels: broadcast::Sender<CancelRequest>,
}

/// Waiters by task id.
#[derive(Default)]
pub(crate) struct Waiters {
    by_task: Mutex<HashMap<Uuid, Weak<Notify>>>,
}

impl Waiters {
    /// The wake-up of `uuid`'s waiters; the entry goes when the last of them drops it.
    pub(crate) fn register(&self, uuid: Uuid) -> Arc<Notify> {
        let mut by_task = self.by_task.lock();
        if let Some(existing) = by_task.get(&uuid).and_then(Weak::upgrade) {
            return existing;
        }
        if by_task.len() >= 1024 && by_task.len().is_power_of_two() {
            by_task.retain(|_, notify| notify.strong_count() > 0);
        }
        let notify = Arc::new(Notify::new());
        by_task.insert(uuid, Arc::downgrade(&notify));
        notify
    }

    pub(crate) fn wake(&self, uuid: Uuid) {
        let notify = self.by_task.lock().get(&uuid).and_then(Weak::upgrade);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let all: Vec<Arc<Notify>> = self
            .by_task
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for notify in all {
            notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_their_app_only() {
        let hubs = Hubs::default();
        let hub = Arc::new(Hub {
            added: Notify::new(),
            waiters: Waiters::default(),
            cancels: broadcast::channel(4).0,
        });
        hubs.by_hash
            .lock()
            .insert("0123456789abcdef".to_owned(), Arc::downgrade(&hub));
        let mut cancels = hub.cancels.subscribe();
        let uuid = Uuid::new_v4();
        hubs.dispatch(&format!("c 0123456789abcdef {uuid} no longer needed"));
        hubs.dispatch(&format!("c ffffffffffffffff {uuid} another app's"));
        hubs.dispatch("c 0123456789abcdef not-a-uuid reason");
        hubs.dispatch("garbage");
        hubs.dispatch("");
        let request = cancels.try_recv().expect("the app's cancel");
        assert_eq!(request, CancelRequest::new(uuid, "no longer needed"));
        assert!(cancels.try_recv().is_err(), "nothing else reached the app");
    }
}
