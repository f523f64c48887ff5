#[qtasks::task(echo = "yes")]
async fn task(_ctx: qtasks::TaskContext) {}

fn main() {}
