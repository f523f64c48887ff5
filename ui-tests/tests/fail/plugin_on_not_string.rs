#[qtasks::plugin(on = task_executor_run_task_trigger_error)]
fn handler(_event: &qtasks::triggers::TaskExecutorRunTaskTriggerError<'_>) {}

fn main() {}
