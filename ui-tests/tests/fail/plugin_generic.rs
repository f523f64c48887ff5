#[qtasks::plugin(on = "worker_start")]
fn handler<T>(_event: &T) {}

fn main() {}
