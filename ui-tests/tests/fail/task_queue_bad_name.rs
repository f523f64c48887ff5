#[qtasks::task(queue = "billing:eu")]
async fn a() {}

#[qtasks::task(queue = "")]
async fn b() {}

#[qtasks::task(queue = "reports nightly")]
async fn c() {}

fn main() {}
