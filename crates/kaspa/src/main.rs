//! `kaspa-p2p`: Kaspa's P2P handshake over Punchgate (see `punchgate_kaspa::cli`).

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    punchgate_kaspa::cli::run_main(punchgate_kaspa::cli::Args::parse())
}
