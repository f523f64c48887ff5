struct Receipt;

#[qtasks::task]
async fn print() -> Result<Receipt, std::io::Error> {
    Ok(Receipt)
}

fn main() {}
