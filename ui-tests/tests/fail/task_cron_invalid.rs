// A cron expression is checked when the task compiles.
#[qtasks::task(cron = "every day at noon")]
async fn report() {}

#[qtasks::task(cron = "0 61 * * *")]
async fn cleanup() {}

fn main() {}
