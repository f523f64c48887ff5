#[qtasks::plugin]
fn handler(_event: &qtasks::triggers::WorkerStart<'_>) {}

fn main() {}
