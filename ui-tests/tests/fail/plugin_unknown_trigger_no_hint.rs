#[qtasks::plugin(on = "on_failure")]
fn handler(_event: &qtasks::triggers::WorkerStart<'_>) {}

fn main() {}
