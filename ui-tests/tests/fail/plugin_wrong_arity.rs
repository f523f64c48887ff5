use qtasks::triggers::TaskExecutorRunTaskTriggerError;

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
fn recover(
    _event: &TaskExecutorRunTaskTriggerError<'_>,
    _extra: u32,
) -> Option<serde_json::Value> {
    None
}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error")]
async fn no_parameter() -> Option<serde_json::Value> {
    None
}

fn main() {}
