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
use crate::panic::{CatchUnwind, panic_message};
use crate::plugin::DynPlugin;
use crate::triggers::{FromReply, Payload, wrong_reply_message};

#[derive(Clone)]
enum Handler {
    Static(&'static PluginRegistration),
    Runtime(Arc<dyn DynPlugin>),
}

impl Handler {
    fn name(&self) -> &str {
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

    /// Runs every handler of `P`'s trigger in order and returns the last value one returned.
    ///
    /// A handler that fails or panics is logged with its name and skipped; the others still
    /// run. (The original stops at the first failing plugin.)
    pub(crate) async fn fire<P: Payload>(&self, payload: &P) -> Option<P::Output> {
        let handlers = &self.table[P::TRIGGER.index()];
        if handlers.is_empty() {
            return None;
        }
        let event = payload.event();
        let mut last = None;
        for handler in handlers {
            let outcome = match handler {
                Handler::Static(registration) => {
                    let shim = registration.handler;
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shim(event))) {
                        Ok(HandlerCall::Skip) => Ok(None),
                        Ok(HandlerCall::Ready(outcome)) => outcome,
                        Ok(HandlerCall::Pending(future)) => flatten(CatchUnwind::new(future).await),
                        Err(payload) => {
                            Err(format!("panicked: {}", panic_message(payload.as_ref())))
                        }
                    }
                }
                Handler::Runtime(plugin) => {
                    let result = CatchUnwind::new(plugin.trigger(event)).await;
                    flatten(result.map(|r| r.map_err(|e| e.to_string())))
                }
            };
            match outcome {
                Ok(None) => {}
                Ok(Some(reply)) => match P::Output::from_reply(reply) {
                    Ok(value) => last = Some(value),
                    Err(reply) => report(
                        handler,
                        P::TRIGGER,
                        &wrong_reply_message::<P::Output>(P::TRIGGER, &reply),
                    ),
                },
                Err(message) => report(handler, P::TRIGGER, &message),
            }
        }
        last
    }
}

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
fn static_registrations() -> &'static [&'static PluginRegistration] {
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
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::__private::{TaskArgs, TaskFuture};
    use crate::triggers::TaskExecutorBeforeExecute;
    use crate::{QueueTasks, QueuedTask, TaskContext, TaskDefinition, TaskExecutor};

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

    fn never_invoked(_: TaskContext, _: TaskArgs) -> TaskFuture {
        unreachable!("the dispatch tests do not run tasks")
    }

    static DEFINITION: TaskDefinition = TaskDefinition {
        name: "dispatch_test",
        priority: None,
        echo: false,
        tags: &[],
        description: None,
        params: &[],
        blocking: false,
        module_path: module_path!(),
        file: file!(),
        line: line!(),
        invoke: never_invoked,
    };

    fn executor() -> TaskExecutor {
        let queued = QueuedTask {
            uuid: uuid::Uuid::nil(),
            task_name: "dispatch_test".into(),
            priority: 0,
            args: Vec::new(),
            kwargs: serde_json::Map::new(),
            created_at: 0.0,
            definition: None,
        };
        TaskExecutor::new(QueueTasks::new(), &DEFINITION, queued)
    }

    #[test]
    fn a_trigger_without_handlers_returns_at_once_and_allocates_nothing() {
        let dispatch = Dispatch::build(&[]);
        assert_eq!(
            dispatch.handler_count(Trigger::TaskExecutorBeforeExecute),
            0
        );
        let executor = executor();
        let payload = TaskExecutorBeforeExecute {
            executor: &executor,
        };
        let mut context = Context::from_waker(Waker::noop());

        let before = ALLOCATIONS.with(Cell::get);
        let mut fire = pin!(dispatch.fire(&payload));
        let ready = matches!(fire.as_mut().poll(&mut context), Poll::Ready(None));
        let allocations = ALLOCATIONS.with(Cell::get) - before;

        assert!(ready, "no handler: the trigger completes in one poll");
        assert_eq!(allocations, 0);
    }

    struct Counting;

    impl crate::Plugin for Counting {
        async fn trigger(
            &self,
            _event: crate::TriggerEvent<'_>,
        ) -> Result<Option<crate::Reply>, crate::BoxError> {
            Ok(Some(crate::Reply::value(1)))
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
