//! Cancel requests for running tasks, across processes: a fanout exchange `N:qtasks:cancel`
//! that every broker instance listens on with a queue of its own.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer, ExchangeKind};
use qtasks_core::backend::{BackendError, CancelRequest};
use tokio::sync::broadcast;

use crate::link::{Link, failure};

/// Listens for cancel requests on the app's fanout exchange and passes them on, binding a
/// queue of its own again after each reconnect, until the broker is dropped.
pub(crate) async fn listen_for_cancels(
    link: Arc<Link>,
    cancels: broadcast::Sender<CancelRequest>,
    mut stopped: tokio::sync::watch::Receiver<()>,
    bound: Arc<tokio::sync::Notify>,
) {
    let mut pause = Duration::from_millis(100);
    loop {
        let consumer = async {
            let live = link.live().await?;
            let channel = live
                .connection
                .create_channel()
                .await
                .map_err(|e| failure("opening a channel failed", e))?;
            let consumer = bind_cancel_queue(&channel, &link.names.cancel)
                .await
                .map_err(|e| failure("listening for cancel requests failed", e))?;
            Ok::<_, BackendError>((channel, consumer))
        };
        let listening = tokio::select! {
            biased;
            _ = stopped.changed() => return,
            listening = consumer => listening,
        };
        match listening {
            Ok((_channel, mut consumer)) => {
                // A permit, not a wake-up: `connect` may start waiting after this.
                bound.notify_one();
                pause = Duration::from_millis(100);
                loop {
                    let message = tokio::select! {
                        biased;
                        _ = stopped.changed() => return,
                        message = consumer.next() => message,
                    };
                    let Some(Ok(message)) = message else { break };
                    let request: serde_json::Value =
                        serde_json::from_slice(&message.data).unwrap_or_default();
                    let uuid = request
                        .get("uuid")
                        .and_then(|u| u.as_str())
                        .and_then(|u| u.parse().ok());
                    let reason = request
                        .get("reason")
                        .and_then(|r| r.as_str())
                        .unwrap_or_default();
                    if let Some(uuid) = uuid {
                        let _ = cancels.send(CancelRequest::new(uuid, reason));
                    }
                }
            }
            Err(error) => {
                tracing::warn!(
                    "cannot listen for cancel requests, trying again in {pause:?}: {}",
                    qtasks_core::backend::ErrorChain(&error)
                );
                tokio::select! {
                    biased;
                    _ = stopped.changed() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A queue of this listener's own (server-named, gone with its connection), bound to the
/// cancel exchange, consumed with automatic acks.
async fn bind_cancel_queue(channel: &Channel, exchange: &str) -> Result<Consumer, lapin::Error> {
    declare_cancel_exchange(channel, exchange).await?;
    let own = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), own, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

pub(crate) async fn declare_cancel_exchange(
    channel: &Channel,
    exchange: &str,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}
