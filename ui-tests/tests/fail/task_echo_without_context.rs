#[qtasks::task(echo = true)]
async fn needs_context() -> i32 {
    1
}

fn main() {}
