use qtasks::triggers::TaskExecutorRunTaskTriggerError;

#[qtasks::task]
async fn charge() {}

#[qtasks::task]
async fn refund() {}

#[qtasks::plugin(on = "task_executor_run_task_trigger_error", task = charge, task = refund)]
fn recover(_event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<()> {
    None
}

fn main() {}
