use qtasks::triggers::TaskExecutorRunTaskTriggerError;

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn recover(_event: TaskExecutorRunTaskTriggerError<'_>) -> Option<serde_json::Value> {
    None
}

fn main() {}
