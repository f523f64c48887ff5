#[qtasks::plugin(on = "worker_on_everything")]
fn handler(_event: &qtasks::triggers::WorkerStart<'_>) {}

fn main() {}
