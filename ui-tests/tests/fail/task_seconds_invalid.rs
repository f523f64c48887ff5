#[qtasks::task(retry = 2, retry_delay = -1)]
async fn negative_delay() {}

#[qtasks::task(max_time = -0.5)]
async fn negative_limit() {}

#[qtasks::task(timeout = true)]
async fn text_limit() {}

#[qtasks::task(retry = 1, retry_delay = 1e400)]
async fn infinite_delay() {}

fn main() {}
