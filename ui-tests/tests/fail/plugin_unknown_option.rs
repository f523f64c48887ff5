#[qtasks::plugin(on = "worker_start", priority = 1)]
fn handler(_event: &qtasks::triggers::WorkerStart<'_>) {}

fn main() {}
