#[qtasks::task(prority = 1)]
async fn first() {}

#[qtasks::task(countdown = 5)]
async fn second() {}

fn main() {}
