struct Invoice {
    number: u32,
}

#[qtasks::task]
async fn send(invoice: Invoice) -> u32 {
    invoice.number
}

fn main() {}
