struct Receipt;

#[qtasks::task]
async fn print() -> Receipt {
    Receipt
}

fn main() {}
