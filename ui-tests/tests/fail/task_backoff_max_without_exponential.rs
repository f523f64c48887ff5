#[qtasks::task(retry = 2, retry_delay = "1s", retry_backoff_max = "1m")]
async fn a() {}

fn main() {}
