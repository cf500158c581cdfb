//! The `ferry` binary: parses the command line and hands it to the library (`ferry::cli`).
fn main() -> std::process::ExitCode {
    ferry::cli::main()
}
