//! Dead letters: messages that are not tasks, set aside in `N:qtasks:dead` with the reason in
//! a header, and read back as [`DeadLetter`]s.

use lapin::BasicProperties;
use lapin::message::Delivery as AmqpDelivery;
use lapin::types::AMQPValue;
use qtasks_core::stats::DeadLetter;

/// The header of a dead letter that says why the message could not run.
pub(crate) const REASON_HEADER: &str = "x-qtasks-reason";
/// The header of a dead letter that says when it was set aside (Unix seconds).
pub(crate) const AT_HEADER: &str = "x-qtasks-at";
/// The header of a dead letter set aside by workers that could not run its task: queued
/// again, its record comes back to `new`.
pub(crate) const REVIVE_HEADER: &str = "x-qtasks-revive";

/// Whether a dead letter's record comes back with it.
pub(crate) fn revives(properties: &BasicProperties) -> bool {
    matches!(
        properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get(REVIVE_HEADER)),
        Some(AMQPValue::Boolean(true))
    )
}

fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

fn header_number(properties: &BasicProperties, name: &str) -> Option<f64> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::Double(at) => Some(*at),
        AMQPValue::Float(at) => Some(f64::from(*at)),
        _ => None,
    }
}

pub(crate) fn letter_of(message: &AmqpDelivery) -> DeadLetter {
    let id = message
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .unwrap_or_default();
    DeadLetter::new(
        id,
        String::from_utf8_lossy(&message.data).into_owned(),
        header_text(&message.properties, REASON_HEADER).unwrap_or_default(),
        header_number(&message.properties, AT_HEADER).unwrap_or_default(),
    )
}
