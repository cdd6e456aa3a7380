fn main() -> std::process::ExitCode {
    zeroblk::cli::main()
}
