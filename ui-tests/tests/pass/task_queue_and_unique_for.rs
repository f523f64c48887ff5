#[qtasks::task(queue = "billing.eu-2", unique_for = "10m")]
async fn charge(order: u64) -> u64 {
    order
}

fn main() {
    assert_eq!(charge::DEFINITION.queue(), Some("billing.eu-2"));
    assert_eq!(
        charge::DEFINITION.unique_for(),
        Some(std::time::Duration::from_secs(600))
    );
}
