#[qtasks::task(name = "billing:charge")]
async fn charge() {}

fn main() {}
