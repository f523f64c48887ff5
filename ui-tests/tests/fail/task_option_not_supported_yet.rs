#[qtasks::task(retry = 3, max_time = 10)]
async fn flaky() {}

fn main() {}
