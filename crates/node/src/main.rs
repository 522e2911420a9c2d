//! The `punchgate` binary: flags → config → node, until Ctrl-C or SIGTERM.

#[global_allocator]
static ALLOCATOR: punchgate::Allocator = punchgate::Allocator;

fn main() -> std::process::ExitCode {
    punchgate::cli::main()
}
