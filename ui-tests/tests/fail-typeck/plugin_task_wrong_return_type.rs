use qtasks::triggers::TaskExecutorRunTaskTriggerError;

#[qtasks::task(echo = true)]
async fn charge(ctx: qtasks::TaskContext) -> qtasks::TaskResult<String> {
    Err(ctx.plugin_error().into())
}

// `charge` returns `String`: a handler that recovers it must return `Option<String>`.
#[qtasks::plugin(on = "task_executor_run_task_trigger_error", task = charge)]
fn recover(_event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<i32> {
    Some(123)
}

fn main() {}
