#[qtasks::task]
const NOT_A_FN: u32 = 1;

fn main() {}
