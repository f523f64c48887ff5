#[qtasks::task(rate_limit = "100")]
async fn no_period(n: u32) -> u32 {
    n
}

#[qtasks::task(rate_limit = "0/s")]
async fn never(n: u32) -> u32 {
    n
}

#[qtasks::task(rate_limit = "10/fortnight")]
async fn unknown_unit(n: u32) -> u32 {
    n
}

#[qtasks::task(rate_limit = "ten/s")]
async fn words(n: u32) -> u32 {
    n
}

#[qtasks::task(rate_limit = 100)]
async fn a_number(n: u32) -> u32 {
    n
}

#[qtasks::task(rate_limt = "100/s")]
async fn misspelt(n: u32) -> u32 {
    n
}

fn main() {}
