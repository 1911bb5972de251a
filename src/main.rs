//! The `ston-fs` command.

fn main() -> std::process::ExitCode {
    ston_fs::cli::main()
}
