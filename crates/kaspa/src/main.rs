//! `kaspa-p2p`: Kaspa's P2P handshake over Punchgate (see `punchgate_kaspa::cli`).

use clap::Parser as _;

// A node runs in this process: allocate as `punchgate` does.
#[global_allocator]
static ALLOCATOR: punchgate::Allocator = punchgate::Allocator;

fn main() -> std::process::ExitCode {
    punchgate_kaspa::cli::run_main(punchgate_kaspa::cli::Args::parse())
}
