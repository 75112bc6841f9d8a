//! The `statelock` command-line tool.
fn main() {
    std::process::exit(statelock_cli_main());
}

fn statelock_cli_main() -> i32 {
    0
}
