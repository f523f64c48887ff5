#[qtasks::task]
async fn greet(name: &str, lines: &[String]) -> usize {
    name.len() + lines.len()
}

fn main() {}
