//! What `Depends<T>` and `State<T>` task parameters receive.

use std::future::Future;
use std::sync::Arc;

use crate::plugin::BoxError;
use crate::{DependencyScope, QueueTasks, TaskContext};

impl QueueTasks {
    /// Registers the provider of `Depends<T>` task parameters: `make` builds the value, per
    /// task or once per worker (see [`Depends`](crate::Depends)). A provider that fails fails
    /// the task, naming the type.
    pub fn provide<T, F, Fut>(&self, scope: DependencyScope, make: F)
    where
        T: Send + Sync + 'static,
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, BoxError>> + Send + 'static,
    {
        self.dependencies().provide(scope, make, None);
    }

    /// [`provide`](Self::provide) with a `close` step, run when the value's scope ends: the task
    /// (also when it fails) or the app (at stop).
    pub fn provide_with_close<T, F, Fut, C, CFut>(&self, scope: DependencyScope, make: F, close: C)
    where
        T: Send + Sync + 'static,
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, BoxError>> + Send + 'static,
        C: Fn(Arc<T>) -> CFut + Send + Sync + 'static,
        CFut: Future<Output = ()> + Send + 'static,
    {
        let close = Arc::new(
            move |value: Arc<dyn std::any::Any + Send + Sync>| -> crate::plugin::BoxFuture<'static, ()> {
                match value.downcast::<T>() {
                    Ok(value) => Box::pin(close(value)),
                    Err(_) => Box::pin(async {}),
                }
            },
        );
        self.dependencies().provide(scope, make, Some(close));
    }

    /// Sets the value `State<T>` task parameters receive, shared by the app's tasks.
    pub fn set_state<T: Send + Sync + 'static>(&self, value: T) {
        self.dependencies().set_state(value);
    }
}
