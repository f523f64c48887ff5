#[qtasks::task]
async fn forgot_echo(ctx: qtasks::TaskContext) -> String {
    ctx.task_name().to_owned()
}

fn main() {}
