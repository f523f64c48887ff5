//! The dispatch table: which handlers run for which trigger, in which order.
//!
//! Built from the `#[qtasks::plugin]` registrations (collected once per process) and the app's
//! runtime plugins, and rebuilt only when a runtime plugin is added. The table is indexed by
//! [`Trigger`] discriminant, so firing a trigger never matches or hashes names, and a trigger
//! with no handler returns before building anything.
//!
//! Order, for every trigger: the `#[qtasks::plugin]` handlers sorted by module path, then
//! source line, then name; then the runtime plugins in the order they were added.

use std::sync::{Arc, OnceLock};

use crate::__private::{HandlerCall, HandlerOutcome, PluginRegistration};
use crate::Trigger;
use crate::panic::{catch_panic, panic_message};
use crate::plugin::DynPlugin;
use crate::triggers::{FromReply, Payload};

#[derive(Clone)]
pub(crate) enum Handler {
    Static(&'static PluginRegistration),
    Runtime(Arc<dyn DynPlugin>),
}

impl Handler {
    pub(crate) fn name(&self) -> &str {
        match self {
            Handler::Static(registration) => registration.name,
            Handler::Runtime(plugin) => plugin.name(),
        }
    }
}

/// A runtime plugin and the triggers it was registered for.
#[derive(Clone)]
pub(crate) struct RuntimePlugin {
    pub(crate) plugin: Arc<dyn DynPlugin>,
    pub(crate) triggers: Vec<Trigger>,
}

pub(crate) struct Dispatch {
    table: Box<[Vec<Handler>]>,
}

impl Dispatch {
    pub(crate) fn build(runtime: &[RuntimePlugin]) -> Dispatch {
        let mut table: Vec<Vec<Handler>> = vec![Vec::new(); Trigger::COUNT];
        for registration in static_registrations() {
            table[registration.trigger.index()].push(Handler::Static(registration));
        }
        for entry in runtime {
            for trigger in &entry.triggers {
                table[trigger.index()].push(Handler::Runtime(Arc::clone(&entry.plugin)));
            }
        }
        Dispatch {
            table: table.into_boxed_slice(),
        }
    }

    /// How many handlers a trigger has.
    #[cfg(test)]
    pub(crate) fn handler_count(&self, trigger: Trigger) -> usize {
        self.table[trigger.index()].len()
    }

    /// The handlers of a trigger, in order. For replacing triggers, callers run them one by
    /// one with [`call`](Self::call), rebuilding the payload from the updated data each time,
    /// so updates chain (see the `chain!` macro).
    pub(crate) fn handlers(&self, trigger: Trigger) -> &[Handler] {
        &self.table[trigger.index()]
    }

    /// Runs every handler of `P`'s trigger, ignoring what they return (observers).
    pub(crate) async fn fire<P: Payload>(&self, payload: &P) {
        for handler in self.handlers(P::TRIGGER) {
            Self::call(handler, payload).await;
        }
    }

    /// Runs one handler. A handler that fails, panics or returns something that does not fit
    /// the trigger is logged with its name and its answer dropped; the task goes on. (The
    /// original stops at the first failing plugin.)
    pub(crate) async fn call<P: Payload>(handler: &Handler, payload: &P) -> Option<P::Output> {
        let event = payload.event();
        let outcome = match handler {
            Handler::Static(registration) => {
                let shim = registration.handler;
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shim(event))) {
                    Ok(HandlerCall::Skip) => Ok(None),
                    Ok(HandlerCall::Ready(outcome)) => outcome,
                    Ok(HandlerCall::Pending(future)) => flatten(catch_panic(future).await),
                    Err(panic) => Err(format!("panicked: {}", panic_message(panic.as_ref()))),
                }
            }
            Handler::Runtime(plugin) => {
                let result = catch_panic(plugin.trigger(event)).await;
                flatten(result.map(|r| r.map_err(|e| e.to_string())))
            }
        };
        match outcome {
            Ok(None) => None,
            // Observe-only triggers ignore answers.
            Ok(Some(_)) if !P::TRIGGER.returns_value() => None,
            Ok(Some(reply)) => match P::Output::from_reply(reply) {
                Ok(output) => Some(output),
                Err(message) => {
                    report(handler, P::TRIGGER, &message);
                    None
                }
            },
            Err(message) => {
                report(handler, P::TRIGGER, &message);
                None
            }
        }
    }
}

/// Runs the handlers of a replacing trigger one by one: builds the payload from the current
/// data, and applies each handler's answer before the next handler sees the data.
///
/// `chain!(dispatch, Trigger, payload_expr, |answer| apply_expr)`
macro_rules! chain {
    ($dispatch:expr, $trigger:expr, $payload:expr, |$answer:ident| $apply:expr) => {
        for handler in $dispatch.handlers($trigger) {
            let payload = $payload;
            if let Some($answer) = $crate::dispatch::Dispatch::call(handler, &payload).await {
                $apply;
            }
        }
    };
}
pub(crate) use chain;

fn flatten(result: Result<HandlerOutcome, String>) -> HandlerOutcome {
    result
        .map_err(|panic| format!("panicked: {panic}"))
        .and_then(|outcome| outcome)
}

fn report(handler: &Handler, trigger: Trigger, message: &str) {
    tracing::error!(
        plugin = handler.name(),
        trigger = trigger.name(),
        "plugin handler failed: {message}"
    );
}

/// The `#[qtasks::plugin]` registrations in their documented order, sorted once per process.
pub(crate) fn static_registrations() -> &'static [&'static PluginRegistration] {
    static SORTED: OnceLock<Vec<&'static PluginRegistration>> = OnceLock::new();
    SORTED.get_or_init(|| {
        let mut all: Vec<&'static PluginRegistration> =
            inventory::iter::<PluginRegistration>().collect();
        all.sort_by(|a, b| (a.module_path, a.line, a.name).cmp(&(b.module_path, b.line, b.name)));
        all
    })
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Waker};

    use super::*;
    use crate::triggers::TaskExecutorBeforeExecute;

    /// Counts this thread's allocations, to show that firing a trigger without handlers
    /// allocates nothing.
    struct CountingAllocator;

    thread_local! {
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    unsafe impl GlobalAlloc for CountingAllocator {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCATIONS.with(|count| count.set(count.get() + 1));
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded unchanged to the system allocator.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: CountingAllocator = CountingAllocator;

    #[test]
    fn a_trigger_without_handlers_returns_at_once_and_allocates_nothing() {
        let dispatch = Dispatch::build(&[]);
        assert_eq!(
            dispatch.handler_count(Trigger::TaskExecutorBeforeExecute),
            0
        );
        let executor = crate::components::TaskExecutor::detached();
        let payload = TaskExecutorBeforeExecute {
            executor: &executor,
        };
        let mut context = Context::from_waker(Waker::noop());

        let before = ALLOCATIONS.with(Cell::get);
        let mut fire = pin!(dispatch.fire(&payload));
        let ready = fire.as_mut().poll(&mut context).is_ready();
        let allocations = ALLOCATIONS.with(Cell::get) - before;

        assert!(ready, "no handler: the trigger completes in one poll");
        assert_eq!(allocations, 0);
    }

    struct Counting;

    impl crate::Plugin for Counting {
        async fn trigger(
            &self,
            _event: crate::triggers::TriggerEvent<'_>,
        ) -> Result<Option<crate::triggers::Reply>, crate::plugin::BoxError> {
            Ok(Some(crate::triggers::Reply::value(1)))
        }
    }

    #[test]
    fn runtime_plugins_are_indexed_only_under_their_triggers() {
        let plugin: Arc<dyn DynPlugin> = Arc::new(Counting);
        let dispatch = Dispatch::build(&[RuntimePlugin {
            plugin,
            triggers: vec![Trigger::TaskExecutorRunTask, Trigger::WorkerStart],
        }]);
        for trigger in Trigger::ALL {
            let expected = usize::from(matches!(
                trigger,
                Trigger::TaskExecutorRunTask | Trigger::WorkerStart
            ));
            assert_eq!(dispatch.handler_count(*trigger), expected, "{trigger}");
        }
    }
}
