//! The `statelock` command-line tool (see `statelock --help`; the commands
//! live in the library's `cli` module).
fn main() {
    std::process::exit(statelock::cli::main());
}
