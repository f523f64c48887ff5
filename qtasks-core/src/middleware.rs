//! Middlewares: code that runs around every run of a task, once per run.

use serde_json::{Map, Value};

use crate::plugin::BoxFuture;
use crate::{TaskDefinition, TaskError};

/// Runs before and after a task: can change its arguments before the run and its result after.
///
/// A task lists its own with `#[qtasks::task(middlewares_before = [A], middlewares_after = [B])]`
/// (statics); the app's run for every task ([`AppBuilder::middleware`](crate::AppBuilder::middleware)).
/// Before the run the app's go first, then the task's; after the run the task's go first, then
/// the app's. Each runs exactly once per run. (The original's worker-wide middlewares pile up and
/// run once more with every run of a task.) A middleware that fails or panics fails the task.
///
/// ```
/// use qtasks::{Middleware, TaskDefinition, TaskError};
/// use qtasks::plugin::BoxFuture;
/// use serde_json::{Map, Value};
///
/// /// Trims string arguments.
/// struct Trim;
///
/// impl Middleware for Trim {
///     fn before<'a>(
///         &'a self,
///         _task: &'a TaskDefinition,
///         args: &'a mut Vec<Value>,
///         _kwargs: &'a mut Map<String, Value>,
///     ) -> BoxFuture<'a, Result<(), TaskError>> {
///         for arg in args.iter_mut() {
///             if let Value::String(text) = arg {
///                 *text = text.trim().to_owned();
///             }
///         }
///         Box::pin(async { Ok(()) })
///     }
/// }
///
/// static TRIM: Trim = Trim;
///
/// #[qtasks::task(middlewares_before = [TRIM])]
/// async fn shout(text: String) -> String {
///     text.to_uppercase()
/// }
/// # fn main() {}
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a middleware",
    label = "the middleware lists take `static`s whose types implement `qtasks::Middleware`"
)]
pub trait Middleware: Send + Sync + 'static {
    /// The name the `task_executor_middlewares_execute` trigger shows; the type name by default.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// Runs before the task; may change the arguments.
    fn before<'a>(
        &'a self,
        task: &'a TaskDefinition,
        args: &'a mut Vec<Value>,
        kwargs: &'a mut Map<String, Value>,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        let _ = (task, args, kwargs);
        Box::pin(async { Ok(()) })
    }

    /// Runs after a successful run; may change the result.
    fn after<'a>(
        &'a self,
        task: &'a TaskDefinition,
        result: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), TaskError>> {
        let _ = (task, result);
        Box::pin(async { Ok(()) })
    }
}
