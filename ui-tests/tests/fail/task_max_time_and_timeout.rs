#[qtasks::task(max_time = 1, timeout = 2)]
async fn limited() {}

fn main() {}
