//! Catching panics of user code (tasks and plugin handlers), so that one bad task or plugin
//! fails alone and the worker goes on.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

/// Runs a future of user code, turning a panic into `Err(message)`.
pub(crate) async fn catch_panic<F: Future>(future: F) -> Result<F::Output, String> {
    // The future is dropped right after a panic and never polled again, so no broken invariant
    // can be observed: asserting unwind safety is sound here.
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()))
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_owned()
    }
}
