//! Not public API: hooks for the micro-benchmarks in `bench/` (feature `__bench`), parts of
//! the hot path that the public API does not reach on their own. Kept out of `__private`, which
//! is the macros' contract and nothing else.

use std::sync::Arc;

use serde_json::Value;

use crate::__private::TaskArgs;
use crate::components::TaskExecutor;
use crate::dispatch::{Dispatch, RuntimePlugin};
use crate::plugin::BoxError;
use crate::triggers::TaskExecutorBeforeExecute;
use crate::triggers::{Reply, TriggerEvent};
use crate::{Plugin, TaskError, Trigger};

struct Observer;

impl Plugin for Observer {
    async fn trigger(&self, _event: TriggerEvent<'_>) -> Result<Option<Reply>, BoxError> {
        Ok(None)
    }
}

/// Fires `task_executor_before_execute` with a number of observing handlers.
pub struct TriggerBench {
    dispatch: Dispatch,
    executor: TaskExecutor,
}

impl TriggerBench {
    /// A table with `handlers` handlers on the trigger.
    pub fn new(handlers: usize) -> Self {
        let plugins: Vec<RuntimePlugin> = (0..handlers)
            .map(|_| RuntimePlugin {
                plugin: Arc::new(Observer),
                triggers: vec![Trigger::TaskExecutorBeforeExecute],
            })
            .collect();
        TriggerBench {
            dispatch: Dispatch::build(&plugins),
            executor: TaskExecutor::detached(),
        }
    }

    /// Fires the trigger once.
    pub async fn fire(&self) {
        self.dispatch
            .fire(&TaskExecutorBeforeExecute {
                executor: &self.executor,
            })
            .await;
    }
}

/// Decodes the arguments of a task `(a: i64, name: String, items: Vec<u32>)` from JSON, as
/// the code `#[task]` generates does.
pub fn decode_args(
    args: Vec<Value>,
    kwargs: serde_json::Map<String, Value>,
) -> Result<(i64, String, Vec<u32>), TaskError> {
    let mut args = TaskArgs::new("bench", args, kwargs);
    let a = args.take(0, "a")?;
    let name = args.take(1, "name")?;
    let items = args.take(2, "items")?;
    args.finish(3)?;
    Ok((a, name, items))
}
