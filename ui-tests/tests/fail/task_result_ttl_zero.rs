#[qtasks::task(result_ttl = 0)]
async fn a() {}

#[qtasks::task(result_ttl = "0s")]
async fn b() {}

fn main() {}
