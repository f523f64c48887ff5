//! A plugin that counts how often the triggers it is registered for fire, for tests that
//! check a trigger fires once per task (say, `QtasksAddTaskAfterBroker` once per task added).
//!
//! ```no_run
//! # fn demo(app: qtasks::QueueTasks) {
//! use qtasks_test_support::counting::CountFirings;
//! let fired = CountFirings::default();
//! app.add_plugin(fired.clone(), &[qtasks::Trigger::QtasksAddTaskAfterBroker]).unwrap();
//! assert_eq!(fired.count(), 0);
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts the firings of the triggers it is added for; answers nothing (changes nothing).
/// Clones share the count.
#[derive(Clone, Default)]
pub struct CountFirings(Arc<AtomicUsize>);

impl CountFirings {
    /// The firings so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl qtasks::Plugin for CountFirings {
    async fn trigger(
        &self,
        _event: qtasks::triggers::TriggerEvent<'_>,
    ) -> Result<Option<qtasks::triggers::Reply>, qtasks::plugin::BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }
}
