//! Runtime plugins: the [`Plugin`] trait, registered with
//! [`QueueTasks::add_plugin`](crate::QueueTasks::add_plugin), as in the original, and the
//! boxed types plugins, middlewares and custom components return ([`BoxError`],
//! [`BoxFuture`]). The payloads plugins receive and the replies they give are in
//! [`triggers`](crate::triggers).

use std::future::Future;
use std::pin::Pin;

use crate::triggers::{Reply, TriggerEvent};

/// A boxed error, for plugins that fail.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A boxed, sendable future, as the component traits return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A plugin object with a lifecycle, registered on an app for a set of triggers.
///
/// This is the original's `BasePlugin`: `start` and `stop` run once each when the app starts
/// and stops, and `trigger` runs for every trigger the plugin was registered for. For a single
/// handler fn, `#[qtasks::plugin(on = "...")]` is shorter.
///
/// ```
/// use qtasks::{Plugin, Trigger};
/// use qtasks::plugin::BoxError;
/// use qtasks::triggers::{Reply, TriggerEvent};
///
/// struct Fallback;
///
/// impl Plugin for Fallback {
///     async fn trigger(&self, event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
///         match event {
///             TriggerEvent::TaskExecutorRunTaskTriggerError(e) => {
///                 println!("{} failed: {}", e.task.name(), e.error);
///                 Ok(Some(Reply::value("fallback")))
///             }
///             _ => Ok(None),
///         }
///     }
/// }
///
/// let app = qtasks::QueueTasks::new();
/// app.add_plugin(Fallback, &[Trigger::TaskExecutorRunTaskTriggerError]).unwrap();
/// ```
pub trait Plugin: Send + Sync + 'static {
    /// The name used in logs; the type name by default.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// Runs once when the app starts.
    fn start(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }

    /// Runs once when the app stops.
    fn stop(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        async { Ok(()) }
    }

    /// Handles one trigger. Return `Ok(Some(reply))` to replace the value a replacing trigger
    /// carries, `Ok(None)` to leave it. An error is logged with the plugin's name; the task
    /// goes on.
    fn trigger<'a>(
        &'a self,
        event: TriggerEvent<'a>,
    ) -> impl Future<Output = Result<Option<Reply>, BoxError>> + Send + 'a;
}

/// [`Plugin`] with boxed futures, so plugins of different types share one table.
pub(crate) trait DynPlugin: Send + Sync + 'static {
    fn name(&self) -> &str;
    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>>;
    fn stop(&self) -> BoxFuture<'_, Result<(), BoxError>>;
    fn trigger<'a>(
        &'a self,
        event: TriggerEvent<'a>,
    ) -> BoxFuture<'a, Result<Option<Reply>, BoxError>>;
}

impl<P: Plugin> DynPlugin for P {
    fn name(&self) -> &str {
        Plugin::name(self)
    }
    fn start(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(Plugin::start(self))
    }
    fn stop(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(Plugin::stop(self))
    }
    fn trigger<'a>(
        &'a self,
        event: TriggerEvent<'a>,
    ) -> BoxFuture<'a, Result<Option<Reply>, BoxError>> {
        Box::pin(Plugin::trigger(self, event))
    }
}
