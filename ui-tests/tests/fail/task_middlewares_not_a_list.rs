struct Trim;
static TRIM: Trim = Trim;

#[qtasks::task(middlewares_before = TRIM)]
async fn trimmed(text: String) -> String {
    text
}

fn main() {}
