#[qtasks::task(max_running = 0)]
async fn none_at_once(n: u32) -> u32 {
    n
}

#[qtasks::task(max_running = -1)]
async fn negative(n: u32) -> u32 {
    n
}

#[qtasks::task(max_running = "5")]
async fn a_string(n: u32) -> u32 {
    n
}

#[qtasks::task(max_running = 2.5)]
async fn a_fraction(n: u32) -> u32 {
    n
}

fn main() {}
