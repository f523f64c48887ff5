//! Runtime plugins and events of an app.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::dispatch::{Dispatch, RuntimePlugin};
use crate::plugin::DynPlugin;
use crate::{Component, Error, Event, EventKind, Plugin, QueueTasks, Result, Trigger};

/// The app's runtime plugins, the dispatch table built from them, and its event callbacks.
pub(super) struct PluginState {
    pub(super) plugins: parking_lot::Mutex<Vec<RuntimePlugin>>,
    pub(super) dispatch: parking_lot::RwLock<Arc<Dispatch>>,
    pub(super) events: crate::events::Events,
}

impl Default for PluginState {
    fn default() -> Self {
        PluginState {
            plugins: parking_lot::Mutex::default(),
            dispatch: parking_lot::RwLock::new(Arc::new(Dispatch::build(&[]))),
            events: crate::events::Events::default(),
        }
    }
}

impl QueueTasks {
    /// Registers a runtime plugin on the app for these triggers (the original's
    /// `add_plugin`). An app plugin may ask for any trigger; pass [`Trigger::ALL`] for all.
    ///
    /// Its handlers run after the `#[qtasks::plugin]` handlers of the same trigger, in the
    /// order plugins were added. `start` and `stop` run once each when the app starts and
    /// stops. Plugins are added while the app is stopped; adding one to a running app is
    /// [`Error::AlreadyRunning`].
    pub fn add_plugin(&self, plugin: impl Plugin, triggers: &[Trigger]) -> Result<()> {
        self.register_plugin(Arc::new(plugin), triggers.to_vec())
    }

    /// Registers a runtime plugin for one component's triggers, as the original's
    /// `add_plugin(plugin, trigger_names, component=..)` does. `None` means all of them (the
    /// original's `"Globals"`). The worker's triggers include the executor's, as in the
    /// original. A trigger of another component is [`Error::TriggerNotOfComponent`].
    pub fn add_component_plugin(
        &self,
        component: Component,
        plugin: impl Plugin,
        triggers: Option<&[Trigger]>,
    ) -> Result<()> {
        let belongs = |trigger: &Trigger| {
            trigger.component() == component
                || (component == Component::Worker
                    && trigger.component() == Component::TaskExecutor)
        };
        let triggers: Vec<Trigger> = match triggers {
            Some(triggers) => {
                if let Some(foreign) = triggers.iter().find(|t| !belongs(t)) {
                    return Err(Error::TriggerNotOfComponent {
                        trigger: *foreign,
                        component,
                    });
                }
                triggers.to_vec()
            }
            None => Trigger::ALL.iter().copied().filter(belongs).collect(),
        };
        self.register_plugin(Arc::new(plugin), triggers)
    }

    fn register_plugin(&self, plugin: Arc<dyn DynPlugin>, triggers: Vec<Trigger>) -> Result<()> {
        if self.inner.run.running.load(Ordering::Acquire) {
            return Err(Error::AlreadyRunning);
        }
        let mut plugins = self.inner.plugins.plugins.lock();
        plugins.push(RuntimePlugin { plugin, triggers });
        let dispatch = Arc::new(Dispatch::build(&plugins));
        *self.inner.plugins.dispatch.write() = dispatch;
        Ok(())
    }

    /// Calls `callback` at every event of this kind (the original's `@app.events.on.<kind>()`).
    ///
    /// ```
    /// use qtasks::{EventKind, QueueTasks};
    ///
    /// let app = QueueTasks::new();
    /// app.on_event(EventKind::TaskError, |event| {
    ///     eprintln!("task {:?} failed: {:?}", event.task.as_ref().map(|t| &t.task_name), event.outcome);
    /// });
    /// ```
    pub fn on_event(&self, kind: EventKind, callback: impl Fn(&Event) + Send + Sync + 'static) {
        self.inner.plugins.events.on(kind, callback);
    }

    /// Calls an async `callback` at every event of this kind.
    pub fn on_event_async<F, Fut>(&self, kind: EventKind, callback: F)
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inner.plugins.events.on_async(kind, callback);
    }
}
