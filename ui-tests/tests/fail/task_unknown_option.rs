#[qtasks::task(prority = 1)]
async fn first() {}

#[qtasks::task(queue = "fast")]
async fn second() {}

fn main() {}
