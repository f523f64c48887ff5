#[qtasks::task(retry = 2, retry_delay = "5 sec")]
async fn a() {}

#[qtasks::task(max_time = "90")]
async fn b() {}

#[qtasks::task(timeout = "1h30x")]
async fn c() {}

fn main() {}
