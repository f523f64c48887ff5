static NOT_AN_EXECUTOR: u32 = 7;

#[qtasks::task(executor = NOT_AN_EXECUTOR)]
async fn run_elsewhere() {}

fn main() {}
