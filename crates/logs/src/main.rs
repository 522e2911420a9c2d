//! `punchgate-logs`: reports from Punchgate's JSON logs. Thin: arguments in, [`run`] out.

use std::{
    io::{ErrorKind, Write},
    path::PathBuf,
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use punchgate_logs::{Format, ReportKind, run};

/// Reports from Punchgate's JSON logs (`punchgate --log-format json 2> node.log`).
#[derive(Debug, Parser)]
#[command(name = "punchgate-logs", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One page per node: peer id, log span, addresses, phases, peers, round trips, tunnels,
    /// warnings.
    Summary(Args),
    /// Per remote peer: connections opened and closed, direct or relayed, TCP or QUIC, hole
    /// punches, time to a direct connection.
    Connections(Args),
    /// Per remote peer: round-trip times (count, min, p50, p90, max, mean) and failed pings.
    Latency(Args),
    /// Per service, as client and as server: tunnels opened, closed, refused, bytes, durations.
    Tunnels(Args),
    /// Lifecycle phase transitions, time in each phase, machine events, NAT status changes.
    Phases(Args),
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Log files, or folders (every *.log and *.json file inside); none, or `-`, reads stdin.
    paths: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV instead of text.
    #[arg(long)]
    csv: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (kind, args) = match cli.command {
        Command::Summary(a) => (ReportKind::Summary, a),
        Command::Connections(a) => (ReportKind::Connections, a),
        Command::Latency(a) => (ReportKind::Latency, a),
        Command::Tunnels(a) => (ReportKind::Tunnels, a),
        Command::Phases(a) => (ReportKind::Phases, a),
    };
    let format = if args.json {
        Format::Json
    } else if args.csv {
        Format::Csv
    } else {
        Format::Text
    };
    let text = match run(kind, &args.paths, format) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("punchgate-logs: {error}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped early (`| head`) is not a failure.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("punchgate-logs: cannot write the report: {e}");
            ExitCode::FAILURE
        }
    }
}
