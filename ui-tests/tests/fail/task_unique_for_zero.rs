#[qtasks::task(unique_for = 0)]
async fn a(n: u32) -> u32 {
    n
}

#[qtasks::task(unique_for = "0s")]
async fn b(n: u32) -> u32 {
    n
}

fn main() {}
