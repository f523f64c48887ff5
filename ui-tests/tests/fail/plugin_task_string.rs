use qtasks::triggers::TaskExecutorRunTaskTriggerError;

#[qtasks::task]
async fn charge() {}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error", task = "charge")]
fn recover(_event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<()> {
    None
}

fn main() {}
