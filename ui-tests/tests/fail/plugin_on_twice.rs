#[qtasks::plugin(on = "worker_start", on = "worker_stop")]
fn handler(_event: &qtasks::triggers::WorkerStart<'_>) {}

fn main() {}
