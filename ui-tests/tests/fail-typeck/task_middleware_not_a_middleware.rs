static NOT_A_MIDDLEWARE: u8 = 1;

#[qtasks::task(middlewares_after = [NOT_A_MIDDLEWARE])]
async fn wrapped() -> u8 {
    1
}

fn main() {}
