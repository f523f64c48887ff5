#[qtasks::task(max_time = 10, retry_on_exc = [std::io::Error])]
async fn flaky() {}

fn main() {}
