const MOST: u32 = 4;

#[qtasks::task(rate_limit = "5/10s", max_running = MOST)]
async fn sync_shop(shop: u64) -> u64 {
    shop
}

#[qtasks::task(rate_limit = "100/s", max_running = 1)]
fn resize(path: String) -> String {
    path
}

fn main() {
    let rate = sync_shop::DEFINITION.rate_limit().unwrap();
    assert_eq!(rate.interval(), std::time::Duration::from_secs(2));
    assert_eq!(sync_shop::DEFINITION.max_running(), Some(4));
    assert_eq!(resize::DEFINITION.rate_limit().unwrap().to_string(), "100/s");
    assert_eq!(resize::DEFINITION.max_running(), Some(1));
}
