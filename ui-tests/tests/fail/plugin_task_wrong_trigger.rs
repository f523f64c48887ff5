#[qtasks::task]
async fn charge() {}

#[qtasks::plugin(on = "task_executor_before_execute", task = charge)]
fn before(_event: &qtasks::triggers::TaskExecutorBeforeExecute<'_>) {}

fn main() {}
