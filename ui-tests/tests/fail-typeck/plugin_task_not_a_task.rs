use qtasks::triggers::TaskExecutorRunTaskTriggerError;

struct NotATask;

#[qtasks::plugin(on = "task_executor_run_task_trigger_error", task = NotATask)]
fn recover(_event: &TaskExecutorRunTaskTriggerError<'_>) -> Option<String> {
    None
}

fn main() {}
