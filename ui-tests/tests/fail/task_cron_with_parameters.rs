// A cron task is added by its schedule with no arguments.
#[qtasks::task(cron = "0 */5 * * * *")]
async fn refresh(region: String) -> String {
    region
}

fn main() {}
