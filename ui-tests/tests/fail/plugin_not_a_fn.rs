#[qtasks::plugin(on = "worker_start")]
struct NotAFn;

fn main() {}
