#[qtasks::task(retry = 2, retry_backoff = "linear")]
async fn backoff() {}

#[qtasks::task(retry = 2, retry_on_exc = std::io::Error)]
async fn not_a_list() {}

#[qtasks::task(retry = 2, retry_on_exc = ["io"])]
async fn not_a_type() {}

fn main() {}
