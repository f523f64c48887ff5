#[qtasks::task]
async fn generic<T: serde::Serialize>(value: T) -> T {
    value
}

fn main() {}
