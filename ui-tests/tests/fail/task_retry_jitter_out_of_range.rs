#[qtasks::task(retry = 2, retry_backoff = "exponential", retry_jitter = 1.5)]
async fn a() {}

#[qtasks::task(retry = 2, retry_backoff = "exponential", retry_jitter = "half")]
async fn b() {}

fn main() {}
