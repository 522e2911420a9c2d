//! `punchgate-lab`: watch a tunnel cross two NATs (`demo`), measure every NAT pairing
//! (`matrix`), or run as a Punchgate node (`node`, which the lab starts in its namespaces).

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use punchgate_lab::{
    cell::{self, Cell, CellSpec, PathTaken, Transport},
    coldstart,
    nat::NatKind,
    peer::{field, matches},
    report,
    topology::Scenario,
};

// The nodes the lab runs (as `node`) must allocate as `punchgate` does.
#[global_allocator]
static ALLOCATOR: punchgate::Allocator = punchgate::Allocator;

#[derive(Debug, Parser)]
#[command(name = "punchgate-lab", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build two NATs and a public relay, start three nodes, tunnel bytes from A to B, and print
    /// the path (relayed → direct) and the timings.
    Demo {
        /// A's NAT: open, moderate or strict.
        #[arg(long, default_value = "moderate")]
        nat_a: NatKind,
        /// B's NAT: open, moderate or strict.
        #[arg(long, default_value = "moderate")]
        nat_b: NatKind,
        /// tcp or quic.
        #[arg(long, default_value = "tcp", value_parser = parse_transport)]
        transport: Transport,
        /// One-way delay added at each site's router, in milliseconds.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// After the punch, echo this many MiB through the tunnel and through a port forward on
        /// B's router, and print both throughputs (0 to skip).
        #[arg(long, default_value_t = 4)]
        bulk_mib: usize,
        /// Where the nodes' logs go.
        #[arg(long, default_value = "target/nat-lab/demo")]
        logs: PathBuf,
    },
    /// Run every cell of the matrix (NAT pairs × transports, double NAT, same NAT) several
    /// times and print a table of outcomes and timings (Markdown, plus JSON).
    Matrix {
        /// Runs per cell.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// One-way delay added at each site's router, in milliseconds.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// Cells run at once.
        #[arg(long, default_value_t = 3)]
        jobs: usize,
        /// Only cells whose name contains this (e.g. "strict", "quic", "double").
        #[arg(long)]
        only: Option<String>,
        /// Write `<OUT>.md` and `<OUT>.json`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where the nodes' logs go.
        #[arg(long, default_value = "target/nat-lab/matrix")]
        logs: PathBuf,
    },
    /// Time to a working tunnel from cold: node start → reachable, client start → first echoed
    /// byte (target long up), and both started together → first echoed byte, as median and
    /// p95 in ms and round trips (Markdown).
    Coldstart {
        /// Runs (a fresh lab each).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// One-way delay added at each site's router, in milliseconds.
        #[arg(long, default_value_t = 20)]
        delay_ms: u64,
        /// A's NAT: open, moderate or strict.
        #[arg(long, default_value = "moderate")]
        nat_a: NatKind,
        /// B's NAT: open, moderate or strict.
        #[arg(long, default_value = "moderate")]
        nat_b: NatKind,
        /// tcp or quic.
        #[arg(long, default_value = "tcp", value_parser = parse_transport)]
        transport: Transport,
        /// Write the table to `<OUT>.md` and the runs to `<OUT>.json`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where the nodes' logs go.
        #[arg(long, default_value = "target/nat-lab/coldstart")]
        logs: PathBuf,
    },
    /// Run as a Punchgate node (the `punchgate` binary); used by the lab inside namespaces.
    Node {
        /// `punchgate` flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run as `kaspa-p2p` (Kaspa's handshake over Punchgate); used by the lab.
    Kaspa {
        /// `kaspa-p2p` arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a stock rust-libp2p program (`relay` or `dcutr`, as libp2p's examples build them);
    /// used by the lab's interop tests.
    Stock {
        /// `relay ...` or `dcutr ...`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn parse_transport(s: &str) -> Result<Transport, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Transport::Tcp),
        "quic" => Ok(Transport::Quic),
        _ => Err(format!("'{s}' is not a transport: expected tcp or quic")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Node { args } => {
            let cli = <punchgate::cli::Cli as Parser>::parse_from(
                std::iter::once("punchgate".to_owned()).chain(args),
            );
            punchgate::cli::run_main(cli)
        }
        Command::Kaspa { args } => {
            let cli = <punchgate_kaspa::cli::Args as Parser>::parse_from(
                std::iter::once("kaspa-p2p".to_owned()).chain(args),
            );
            punchgate_kaspa::cli::run_main(cli)
        }
        Command::Stock { args } => {
            let args = <punchgate_lab::stock::Args as Parser>::parse_from(
                std::iter::once("punchgate-lab stock".to_owned()).chain(args),
            );
            punchgate_lab::stock::run_main(args)
        }
        command => with_lab(command),
    }
}

/// The commands that build namespaces.
fn with_lab(command: Command) -> ExitCode {
    // The tools and rights the lab needs, before anything is built.
    if let Err(error) = punchgate_lab::preflight::check() {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    // Namespaces without root: enter a user namespace before any thread exists.
    if let Err(error) = patchbay::init_userns() {
        eprintln!("error: cannot enter a user namespace: {error:#}");
        return ExitCode::FAILURE;
    }
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(command)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<bool> {
    let bin = std::env::current_exe().context("cannot find this executable")?;
    match command {
        Command::Demo {
            nat_a,
            nat_b,
            transport,
            delay_ms,
            bulk_mib,
            logs,
        } => demo(&bin, nat_a, nat_b, transport, delay_ms, bulk_mib, &logs).await,
        Command::Matrix {
            runs,
            delay_ms,
            jobs,
            only,
            out,
            logs,
        } => matrix(&bin, runs, delay_ms, jobs, only, out, &logs).await,
        Command::Coldstart {
            runs,
            delay_ms,
            nat_a,
            nat_b,
            transport,
            out,
            logs,
        } => {
            let spec = coldstart::Spec {
                nat_a,
                nat_b,
                transport,
                one_way_delay: Duration::from_millis(delay_ms),
            };
            coldstart(&bin, spec, runs, out, &logs).await
        }
        Command::Node { .. } | Command::Kaspa { .. } | Command::Stock { .. } => {
            unreachable!("run without a lab, before the runtime starts")
        }
    }
}

async fn coldstart(
    bin: &Path,
    spec: coldstart::Spec,
    runs: usize,
    out: Option<PathBuf>,
    logs: &Path,
) -> Result<bool> {
    let mut done = Vec::new();
    let mut failures = Vec::new();
    for n in 0..runs {
        match coldstart::run_once(spec, bin, logs, n).await {
            Ok(run) => {
                println!(
                    "run {n}: both together → echo {:.0} ms ({}), node start → reachable {:.0} ms, client start → echo {:.0} ms, RTT {:.0} ms",
                    run.together_ms,
                    run.together_path,
                    run.reachable_ms,
                    run.warm_client_ms,
                    run.rtt_ms
                );
                done.push(run);
            }
            Err(error) => {
                println!("run {n}: failed: {error:#}");
                failures.push(format!("run {n}: {error:#}"));
            }
        }
    }
    let table = coldstart::markdown(&spec, &done, &failures);
    println!("\n{table}");
    if let Some(out) = out {
        std::fs::write(out.with_extension("md"), &table)?;
        std::fs::write(
            out.with_extension("json"),
            serde_json::to_string_pretty(&done)?,
        )?;
    }
    Ok(failures.is_empty())
}

async fn demo(
    bin: &Path,
    a: NatKind,
    b: NatKind,
    transport: Transport,
    delay_ms: u64,
    bulk_mib: usize,
    logs: &Path,
) -> Result<bool> {
    let scenario = Scenario::Pair { a, b };
    let mut spec = CellSpec::new(scenario, transport);
    spec.one_way_delay = Duration::from_millis(delay_ms);
    println!(
        "Lab: a public relay; peer A behind a {a} NAT; peer B behind a {b} NAT; {delay_ms} ms one-way delay at each site; {transport}."
    );
    println!(
        "Starting the nodes (each reserves a slot on the relay at once, and learns its NAT status with AutoNAT meanwhile)..."
    );
    let mut cell = Cell::start(spec, bin, logs).await?;
    let relay_ip = cell.net.relay_ip()?;
    println!("  relay  {}  at {relay_ip} (public)", cell.relay.peer_id);
    let status = |events: &[serde_json::Value]| {
        events
            .iter()
            .rev()
            .find(|e| matches(e, "nat status changed", &[]))
            .and_then(|e| field(e, "to"))
            .unwrap_or_else(|| "not known yet".into())
    };
    let reservation = cell
        .b
        .events()
        .iter()
        .find(|e| matches(e, "relay reservation accepted", &[]))
        .and_then(|e| field(e, "addr"));
    println!(
        "  peer B {}  exposes 'echo' (TCP) and 'echo-udp' (UDP) to peer A only (--allow echo={}); AutoNAT: {}; reachable at {}",
        cell.b.peer_id,
        cell.a.peer_id,
        status(&cell.b.events()),
        reservation.as_deref().unwrap_or("its public address")
    );
    if spec.relay_trusts_peers {
        println!(
            "  the relay trusts A and B (--trust): their circuits may carry the tunnel; strangers get short circuits"
        );
    } else {
        println!(
            "  the relay trusts nobody: A and B get short circuits (2 min, 128 KiB), enough to punch a hole, not to carry the tunnel"
        );
    }
    println!(
        "  peer A {}  AutoNAT: {}; tunnel to B's echo on {} (inside A's namespace)",
        cell.a.peer_id,
        status(&cell.a.events()),
        cell.a.tunnel_addrs[0]
    );

    let took = cell.round_trip(spec.payload, 1).await?;
    let first = cell.tunnel_paths()[0];
    println!(
        "Sent 1 MiB through A's tunnel: echoed intact in {} ms, over the {first} path.",
        took.as_millis()
    );
    println!("Waiting for the hole punch to succeed or give up...");
    cell.settle().await?;
    let took = cell.round_trip(spec.payload, 2).await?;
    let result = cell.result()?;
    println!(
        "Sent 1 MiB again: echoed intact in {} ms, over the {} path.",
        took.as_millis(),
        result.final_path
    );
    let took = cell
        .udp_round_trip(&punchgate_lab::cell::UDP_SIZES, 3)
        .await?;
    let sizes = punchgate_lab::cell::UDP_SIZES
        .map(|s| s.to_string())
        .join(", ");
    // The UDP session's path is the last one in A's log: the verdict.
    let result = cell.result()?;
    println!(
        "Sent datagrams of {sizes} bytes through A's UDP tunnel ({}): each echoed whole, in {} ms for all, over the {} path.",
        cell.a.udp_tunnel_addrs[0],
        took.as_millis(),
        result.final_path
    );

    if bulk_mib > 0 {
        let len = bulk_mib << 20;
        let mbits = |took: Duration| len as f64 * 8.0 / took.as_secs_f64() / 1e6;
        // The tunnel already worked: a failing comparison is reported, not fatal.
        match cell.round_trip(len, 3).await {
            Ok(tunnel) => println!(
                "Echoed {bulk_mib} MiB through the tunnel ({} path): {:.0} Mbit/s each way.",
                result.final_path,
                mbits(tunnel)
            ),
            Err(error) => println!("Bulk echo through the tunnel failed: {error:#}"),
        }
        match cell.raw_round_trip(len, 4).await {
            Ok(raw) => println!(
                "Plain TCP over the same routers (a port forward on B's router): {:.0} Mbit/s each way. The lab's user-space delay limits both.",
                mbits(raw)
            ),
            Err(error) => println!("Plain TCP through a port forward failed: {error:#}"),
        }
    }

    println!("Path between A and B, from A's log:");
    let t0 = cell
        .a
        .events()
        .iter()
        .find(|e| {
            matches(e, "dialing", &[("peer", &cell.b.peer_id)])
                || matches(e, "starting DHT lookup for tunnel target", &[])
        })
        .and_then(|e| field(e, "timestamp"));
    for e in cell.a.events() {
        let opened = matches(&e, "connection opened", &[("peer", &cell.b.peer_id)]);
        let failed = matches(
            &e,
            "hole punch failed, tunnels to this peer use the relay",
            &[],
        );
        if opened || failed {
            println!(
                "  {}  {}  {}",
                field(&e, "timestamp").unwrap_or_default(),
                if opened {
                    field(&e, "path").unwrap_or_default()
                } else {
                    "hole punch failed".into()
                },
                field(&e, "endpoint")
                    .or_else(|| field(&e, "reason"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(t0) = t0 {
        println!("  (first dial of B at {t0})");
    }
    match (result.time_to_direct_ms, result.relayed_to_direct_ms) {
        (Some(total), Some(upgrade)) => println!(
            "Relayed → direct: {upgrade} ms after the relayed connection, {total} ms after the first dial ({} round trips of {} ms), {} dial attempt(s).",
            result
                .round_trips()
                .map_or("?".into(), |r| format!("{r:.1}")),
            result.rtt_ms.map_or(2 * delay_ms, |r| r.round() as u64),
            result.attempts.unwrap_or(0)
        ),
        (Some(total), None) => println!(
            "Direct from the first dial: {total} ms ({} round trips).",
            result
                .round_trips()
                .map_or("?".into(), |r| format!("{r:.1}"))
        ),
        _ => println!(
            "No direct connection: the tunnel stays on the relay (expected for a symmetric NAT)."
        ),
    }
    let expected = if scenario.expect_direct(transport) {
        PathTaken::Direct
    } else {
        PathTaken::Relayed
    };
    println!(
        "Expected {expected}: {}. Logs: {}",
        if result.met() { "met" } else { "NOT met" },
        result.log_dir.display()
    );
    cell.stop();
    Ok(result.met())
}

async fn matrix(
    bin: &Path,
    runs: usize,
    delay_ms: u64,
    jobs: usize,
    only: Option<String>,
    out: Option<PathBuf>,
    logs: &Path,
) -> Result<bool> {
    use futures::StreamExt as _;
    let mut specs = Vec::new();
    for scenario in Scenario::matrix() {
        for transport in Transport::ALL {
            let mut spec = CellSpec::new(scenario, transport);
            spec.one_way_delay = Duration::from_millis(delay_ms);
            let name = format!("{scenario} {transport}").to_lowercase();
            if only
                .as_ref()
                .is_none_or(|o| name.contains(&o.to_lowercase()))
            {
                for run in 0..runs {
                    specs.push((spec, run));
                }
            }
        }
    }
    let total = specs.len();
    eprintln!("{total} runs, {jobs} at a time, {delay_ms} ms one-way delay per site");
    let results: Vec<_> = futures::stream::iter(specs)
        .map(|(spec, run)| async move {
            let dir = logs.join(format!("run-{run}"));
            let result = cell::run(spec, bin, &dir)
                .await
                .map_err(|e| format!("{e:#}"));
            match &result {
                Ok(r) => eprintln!(
                    "{} {} run {run}: {} (first {}, final {}, to direct {} ms, {} s)",
                    spec.scenario,
                    spec.transport,
                    if r.met() { "met" } else { "NOT MET" },
                    r.first_path,
                    r.final_path,
                    r.time_to_direct_ms.map_or("–".into(), |t| t.to_string()),
                    r.duration_ms / 1000
                ),
                Err(e) => eprintln!("{} {} run {run}: ERROR {e}", spec.scenario, spec.transport),
            }
            (spec.scenario, spec.transport, result)
        })
        .buffer_unordered(jobs.max(1))
        .collect()
        .await;
    let mut rows = report::rows(&results);
    let order = |r: &report::Row| {
        let s = Scenario::matrix()
            .iter()
            .position(|s| *s == r.scenario)
            .unwrap_or(0);
        (s, r.transport == Transport::Quic)
    };
    rows.sort_by_key(order);
    let table = report::markdown(&rows);
    println!("{table}");
    if let Some(out) = out {
        let header = format!(
            "# NAT matrix\n\n{runs} runs per cell, {delay_ms} ms one-way delay at each site (round trip {} ms), \
             `cargo run --release -p punchgate-lab -- matrix --runs {runs} --delay-ms {delay_ms}`.\n\n",
            2 * delay_ms
        );
        std::fs::write(out.with_extension("md"), format!("{header}{table}"))?;
        std::fs::write(
            out.with_extension("json"),
            serde_json::to_string_pretty(&serde_json::json!({
                "runs_per_cell": runs,
                "one_way_delay_ms": delay_ms,
                "rows": rows,
                "results": results.iter().map(|(s, t, r)| serde_json::json!({
                    "scenario": s, "transport": t,
                    "result": r.as_ref().ok(), "error": r.as_ref().err(),
                })).collect::<Vec<_>>(),
            }))?,
        )?;
    }
    Ok(rows.iter().all(|r| r.met == r.runs))
}
