#[qtasks::task(tags = ["ok", 3])]
async fn tagged() {}

#[qtasks::task(tags = "single")]
async fn single() {}

fn main() {}
