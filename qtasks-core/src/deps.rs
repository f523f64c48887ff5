//! Dependencies and state, the Rust way: task parameters of type [`Depends<T>`] or [`State<T>`]
//! are filled by the executor, not from the arguments (the typed `add_task` leaves them out).
//!
//! - `State<T>`: a value shared by every task of the app ([`QueueTasks::set_state`]).
//! - `Depends<T>`: a value made by a provider ([`QueueTasks::provide`]) per task
//!   ([`DependencyScope::Task`]: made for the run and closed when it ends, also when it fails)
//!   or per worker ([`DependencyScope::Worker`]: made once, closed when the app stops).

use parking_lot::Mutex;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use crate::TaskError;
use crate::context::TaskContext;
use crate::panic::catch_panic;
use crate::plugin::{BoxError, BoxFuture};

/// How long a provided dependency lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DependencyScope {
    /// Made for each run of a task and closed when the run ends.
    Task,
    /// Made once per app start and closed when the app stops.
    Worker,
}

/// A task parameter filled by a provider registered with [`QueueTasks::provide`](crate::QueueTasks::provide).
///
/// ```rust,standalone_crate
/// use qtasks::{Depends, DependencyScope, QueueTasks};
///
/// struct Db {
///     url: String,
/// }
///
/// #[qtasks::task]
/// async fn lookup(db: Depends<Db>, id: u32) -> String {
///     format!("{}/{id}", db.url)
/// }
///
/// #[tokio::main]
/// async fn main() -> qtasks::Result<()> {
///     let app = QueueTasks::new();
///     app.provide(DependencyScope::Worker, |_ctx| async { Ok(Db { url: "db://main".into() }) });
///     app.start().await?;
///     let done = lookup::add_task(&app, 7).await?.wait(std::time::Duration::from_secs(5)).await?;
///     assert_eq!(done.returning, Some(serde_json::json!("db://main/7")));
///     app.stop().await
/// }
/// ```
pub struct Depends<T>(Arc<T>);

/// A task parameter holding a value shared by the app's tasks ([`QueueTasks::set_state`](crate::QueueTasks::set_state)).
pub struct State<T>(Arc<T>);

macro_rules! shared_handle {
    ($name:ident) => {
        impl<T> Deref for $name<T> {
            type Target = T;
            fn deref(&self) -> &T {
                &self.0
            }
        }

        impl<T> Clone for $name<T> {
            fn clone(&self) -> Self {
                $name(Arc::clone(&self.0))
            }
        }

        impl<T> $name<T> {
            /// The shared value.
            pub fn arc(&self) -> &Arc<T> {
                &self.0
            }
        }
    };
}

shared_handle!(Depends);
shared_handle!(State);

type AnyArc = Arc<dyn Any + Send + Sync>;
type Make = Arc<dyn Fn(TaskContext) -> BoxFuture<'static, Result<AnyArc, BoxError>> + Send + Sync>;
type Close = Arc<dyn Fn(AnyArc) -> BoxFuture<'static, ()> + Send + Sync>;

struct Provider {
    scope: DependencyScope,
    type_name: &'static str,
    make: Make,
    close: Option<Close>,
}

/// The providers, state and worker-scoped values of one app.
#[derive(Default)]
pub(crate) struct Dependencies {
    providers: Mutex<HashMap<TypeId, Arc<Provider>>>,
    state: Mutex<HashMap<TypeId, AnyArc>>,
    worker_values: tokio::sync::Mutex<HashMap<TypeId, AnyArc>>,
}

impl Dependencies {
    pub(crate) fn provide<T, F, Fut>(&self, scope: DependencyScope, make: F, close: Option<Close>)
    where
        T: Send + Sync + 'static,
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, BoxError>> + Send + 'static,
    {
        let make: Make = Arc::new(move |ctx| {
            let made = make(ctx);
            Box::pin(async move { made.await.map(|value| Arc::new(value) as AnyArc) })
        });
        let provider = Provider {
            scope,
            type_name: std::any::type_name::<T>(),
            make,
            close,
        };
        self.providers
            .lock()
            .insert(TypeId::of::<T>(), Arc::new(provider));
    }

    pub(crate) fn set_state<T: Send + Sync + 'static>(&self, value: T) {
        self.state.lock().insert(TypeId::of::<T>(), Arc::new(value));
    }

    fn state<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        let state = self.state.lock();
        state
            .get(&TypeId::of::<T>())
            .cloned()
            .and_then(|value| value.downcast().ok())
    }

    async fn depend<T: Send + Sync + 'static>(
        &self,
        ctx: &TaskContext,
    ) -> Result<Arc<T>, TaskError> {
        let provider = self.providers.lock().get(&TypeId::of::<T>()).cloned();
        let Some(provider) = provider else {
            return Err(TaskError::named(
                "DependencyError",
                format!(
                    "no provider for `{}`: register one with `app.provide(..)`",
                    std::any::type_name::<T>()
                ),
            ));
        };
        let value = match provider.scope {
            DependencyScope::Worker => {
                let mut values = self.worker_values.lock().await;
                match values.get(&TypeId::of::<T>()) {
                    Some(value) => Arc::clone(value),
                    None => {
                        let value = make(&provider, ctx).await?;
                        values.insert(TypeId::of::<T>(), Arc::clone(&value));
                        value
                    }
                }
            }
            DependencyScope::Task => {
                let value = make(&provider, ctx).await?;
                if let Some(close) = provider.close.clone() {
                    let value = Arc::clone(&value);
                    ctx.scope().defer(Box::new(move || close(value)));
                }
                value
            }
        };
        Ok(value
            .downcast()
            .expect("the provider for this type made a value of this type"))
    }

    /// Closes the worker-scoped values (when the app stops).
    pub(crate) async fn close_worker_values(&self) {
        let values: Vec<(TypeId, AnyArc)> = self.worker_values.lock().await.drain().collect();
        for (type_id, value) in values {
            let provider = self.providers.lock().get(&type_id).cloned();
            if let Some(close) = provider.and_then(|p| p.close.clone())
                && let Err(panic) = catch_panic(close(value)).await
            {
                tracing::error!("closing a worker dependency panicked: {panic}");
            }
        }
    }
}

async fn make(provider: &Provider, ctx: &TaskContext) -> Result<AnyArc, TaskError> {
    match catch_panic((provider.make)(ctx.clone())).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(TaskError::named(
            "DependencyError",
            format!("the provider of `{}` failed: {error}", provider.type_name),
        )),
        Err(panic) => Err(TaskError::named(
            "DependencyError",
            format!("the provider of `{}` panicked: {panic}", provider.type_name),
        )),
    }
}

/// Not public API. What the `#[task]` shim calls for `Depends<T>` and `State<T>` parameters.
pub trait Extract: Sized {
    /// Makes the parameter's value.
    fn extract(ctx: &TaskContext) -> BoxFuture<'_, Result<Self, TaskError>>;
}

impl<T: Send + Sync + 'static> Extract for Depends<T> {
    fn extract(ctx: &TaskContext) -> BoxFuture<'_, Result<Self, TaskError>> {
        Box::pin(async move { ctx.app().dependencies().depend::<T>(ctx).await.map(Depends) })
    }
}

impl<T: Send + Sync + 'static> Extract for State<T> {
    fn extract(ctx: &TaskContext) -> BoxFuture<'_, Result<Self, TaskError>> {
        Box::pin(async move {
            ctx.app()
                .dependencies()
                .state::<T>()
                .map(State)
                .ok_or_else(|| {
                    TaskError::named(
                        "DependencyError",
                        format!(
                            "no state of type `{}`: set it with `app.set_state(..)`",
                            std::any::type_name::<T>()
                        ),
                    )
                })
        })
    }
}

/// The resources of one run, closed when it ends, and its progress throttle: one allocation
/// per run, shared by the run's context.
#[derive(Clone, Default)]
pub(crate) struct Scope {
    shared: Arc<ScopeShared>,
}

#[derive(Default)]
struct ScopeShared {
    closers: Mutex<Vec<Closer>>,
    progress: Mutex<crate::progress::Throttle>,
    /// Held by each progress write, so the end of a run can wait for one under way.
    progress_writes: tokio::sync::Mutex<()>,
}

/// One resource's close step.
pub(crate) type Closer = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

impl Scope {
    pub(crate) fn defer(&self, close: Closer) {
        self.shared.closers.lock().push(close);
    }

    /// The run's progress throttle (see `progress`).
    pub(crate) fn progress(&self) -> &Mutex<crate::progress::Throttle> {
        &self.shared.progress
    }

    /// The lock each progress write holds.
    pub(crate) fn progress_writes(&self) -> &tokio::sync::Mutex<()> {
        &self.shared.progress_writes
    }

    /// Runs the closers, last made first; a panicking one is logged.
    pub(crate) async fn close(&self) {
        let closers: Vec<_> = self.shared.closers.lock().drain(..).rev().collect();
        for close in closers {
            if let Err(panic) = catch_panic(close()).await {
                tracing::error!("closing a task dependency panicked: {panic}");
            }
        }
    }
}
