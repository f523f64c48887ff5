//! The deliveries a worker holds (taken, not yet finished or handed back), and what becomes of
//! them when their connection dies.
//!
//! RabbitMQ puts every unacked message of a channel back in the queue when the channel or its
//! connection ends, and hands it to another worker. A delivery of that channel is then void:
//! its acker can no longer ack, and its task runs elsewhere. The [`watch`] loop finds such
//! deliveries within [`CHECK_EVERY`] and stops their runs (a run not started yet, e.g. a
//! suspect waiting for every slot, stops as soon as it starts), so that two runs of one
//! attempt overlap for no longer than that once the connection's end is seen (at once for a
//! cut or reset; on a silent network, after two missed heartbeats). A lost delivery's outcome
//! is not stored: see [`Let::Lost`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::{Acker, Channel, Connection};
use parking_lot::Mutex;
use qtasks_core::backend::CancelRequest;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

/// Why the run of a lost delivery stops (its record is left to the delivery that replaces it).
pub(crate) const DELIVERY_LOST: &str = "DeliveryLost: this worker's RabbitMQ connection was lost while it held the task; RabbitMQ queued the task again for another worker";

/// How often the held deliveries' connections are looked at.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a lost delivery is remembered (its run ends well within it).
const LOST_KEPT: Duration = Duration::from_secs(600);

/// One delivery held by this worker.
struct Holding {
    uuid: Uuid,
    acker: Acker,
    /// The channel it came on, and that channel's connection.
    channel: Channel,
    connection: Arc<Connection>,
}

impl Holding {
    fn void(&self) -> bool {
        !(self.channel.status().connected() && self.connection.status().connected())
    }
}

/// What [`Held::release`] found.
pub(crate) enum Let {
    /// Held, on a live channel: ack or nack it with this.
    Held(Acker),
    /// Lost with its connection: its message went back to the queue, and another delivery of
    /// the task replaces it, whose record this one must leave alone.
    Lost,
    /// Not handed out by this broker (or released already).
    Unknown,
}

/// The held deliveries by receipt, and the receipts lost with their connection.
#[derive(Default)]
pub(crate) struct Held {
    holding: Mutex<HashMap<String, Holding>>,
    lost: Mutex<HashMap<String, Instant>>,
}

impl Held {
    /// Holds the delivery `receipt` of task `uuid`, which came on `channel`.
    pub(crate) fn hold(
        &self,
        receipt: String,
        uuid: Uuid,
        acker: Acker,
        channel: Channel,
        connection: Arc<Connection>,
    ) {
        self.holding.lock().insert(
            receipt,
            Holding {
                uuid,
                acker,
                channel,
                connection,
            },
        );
    }

    /// Lets go of the delivery `receipt` (its run ended, or it is handed back).
    pub(crate) fn release(&self, receipt: &str) -> Let {
        let mut holding = self.holding.lock();
        match holding.remove(receipt) {
            // Its connection ended, and the loop has not seen it yet.
            Some(held) if held.void() => {
                self.lost.lock().insert(receipt.to_owned(), Instant::now());
                Let::Lost
            }
            Some(held) => Let::Held(held.acker),
            None if self.lost.lock().contains_key(receipt) => Let::Lost,
            None => Let::Unknown,
        }
    }

    /// Lets go of the deliveries whose channel or connection ended: their task and receipt.
    fn take_void(&self) -> Vec<(Uuid, String)> {
        let mut holding = self.holding.lock();
        let void: Vec<String> = holding
            .iter()
            .filter(|(_, holding)| holding.void())
            .map(|(receipt, _)| receipt.clone())
            .collect();
        let now = Instant::now();
        let mut lost = self.lost.lock();
        lost.retain(|_, at| now.duration_since(*at) < LOST_KEPT);
        void.into_iter()
            .filter_map(|receipt| {
                let holding = holding.remove(&receipt)?;
                lost.insert(receipt.clone(), now);
                Some((holding.uuid, receipt))
            })
            .collect()
    }
}

/// Every [`CHECK_EVERY`], stops the runs of the deliveries whose connection died, until
/// `stopped` says the broker is gone.
pub(crate) async fn watch(
    held: Arc<Held>,
    cancels: broadcast::Sender<CancelRequest>,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            changed = stopped.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        for (uuid, receipt) in held.take_void() {
            tracing::warn!(uuid = %uuid, "the RabbitMQ connection of task {uuid}'s delivery was lost (RabbitMQ queues it again for another worker); its run here stops");
            let _ = cancels.send(CancelRequest::new(uuid, DELIVERY_LOST).for_delivery(receipt));
        }
    }
}
