#[qtasks::task(echo = true)]
async fn wrong(first: u32) -> u32 {
    first
}

fn main() {}
