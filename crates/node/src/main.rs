//! The `punchgate` binary: flags → config → node, until Ctrl-C or SIGTERM.

use clap::Parser as _;

#[global_allocator]
static ALLOCATOR: punchgate::Allocator = punchgate::Allocator;

fn main() -> std::process::ExitCode {
    punchgate::cli::run_main(punchgate::cli::Cli::parse())
}
