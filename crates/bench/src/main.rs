//! `punchgate-bench`: how fast a Punchgate tunnel is, against raw TCP in the same run.
//!
//! One run on loopback measures, for raw TCP, a plain two-process TCP forwarder (the tunnel's
//! shape without cipher or multiplexing: the limit for a tunnel of that shape here), a tunnel
//! over a direct TCP connection (TLS + yamux) and a tunnel over QUIC (two real `punchgate`
//! processes: this executable run as `node`): bulk throughput (1 and 8 streams), small round
//! trips, connection setup, 1,000 concurrent tunnelled connections with the processes' RSS
//! growth, and CPU per GiB; then the same tonic service over plain TCP, over tonic's TLS and
//! over Punchgate. Every figure is also a ratio to raw TCP of the same run: the
//! machines are shared and noisy, and ratios from one run are what compare.

// The nodes this benchmark runs (as `node`) must allocate as `punchgate` does.
#[global_allocator]
static ALLOCATOR: punchgate::Allocator = punchgate::Allocator;

mod crypto;
mod flood;
mod forward;
mod grpc;
mod handshakes;
mod nodes;
mod services;
mod tcp;
mod udp;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::{
    grpc::{GrpcResult, GrpcSizes},
    nodes::Transport,
    tcp::percentile_us,
};

#[derive(Debug, Parser)]
#[command(name = "punchgate-bench", version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Tiny sizes: checks every measurement runs (CI), numbers mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Write `<OUT>.md`, `<OUT>.json` and `<OUT>.svg` (a chart).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where the nodes' logs and keys go.
    #[arg(long, default_value = "target/bench")]
    work: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run as a Punchgate node (the `punchgate` binary); used by the benchmark.
    Node {
        /// `punchgate` flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Forward one new 127.0.0.1 port to each target until stdin closes; used by the benchmark.
    Forward {
        /// What the hop between the two forwarders of a chain carries.
        #[arg(long, value_enum, default_value = "plain")]
        hop: forward::Hop,
        /// Which end of that hop this forwarder is.
        #[arg(long, value_enum, default_value = "client")]
        side: forward::Side,
        /// Where each port's connections go.
        targets: Vec<std::net::SocketAddr>,
    },
    /// Only the one-stream transfer, through the plain forwarder and the tunnel over TCP in
    /// turn, `--rounds` times; with `--against`, also through a tunnel between nodes of another
    /// build, in the same rounds: a quick, interleaved comparison of two builds (CPU per GiB
    /// relative to the forwarder is the figure that holds still on a shared machine). With
    /// `--layers`, also through forwarders whose middle hop is the node's TLS, then its TLS and
    /// yamux: what each layer of the tunnel costs.
    Bulk {
        /// How many times each path carries the transfer.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// MiB per transfer.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Another build of this benchmark: its nodes make a second tunnel.
        #[arg(long)]
        against: Option<PathBuf>,
        /// Also measure the TLS forwarder and the TLS + yamux forwarder.
        #[arg(long)]
        layers: bool,
    },
    /// Only gRPC streaming and unary latency, over plain TCP, tonic's TLS and Punchgate in
    /// turn, `--rounds` times on the same connections: throughput, CPU per GiB of both
    /// processes, unary p50, and each as a ratio to plain TCP's in the same round.
    Grpc {
        /// How many times each path carries the transfer (a multiple of 3 gives each path the
        /// first turn equally often).
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// MiB per transfer (in 256 KiB messages).
        #[arg(long, default_value_t = 1024)]
        mib: usize,
        /// Unary calls timed per path and round (after a tenth as many to warm up).
        #[arg(long, default_value_t = 2000)]
        unary: usize,
    },
    /// Only connection setup, for each way a node and a peer agree on security: node to node
    /// over TCP (TLS) and QUIC, a node to stock rust-libp2p peers (Noise only, the first dial
    /// and once known; TLS only) and stock peers to a node; p50 and p95 over `--rounds` dials,
    /// with the round trips each costs on a real path.
    Handshakes {
        /// Dials per case.
        #[arg(long, default_value_t = 200)]
        rounds: usize,
    },
    /// One hostile peer (200 connections, 5,000 silent tunnel streams) against a node, and what
    /// an honest peer's tunnel feels before, during and after: the node's memory against its
    /// ceiling, round trips, new connections, throughput, and the WARN lines the flood caused.
    Flood,
    /// UDP tunnels against raw UDP on loopback: datagrams per second and loss at rising
    /// offered rates, p50 and p99 round trips of small datagrams, and a WireGuard-shaped load
    /// (1,420-byte datagrams both ways), over TCP and over QUIC.
    Udp {
        /// Seconds each offered rate runs.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Round trips timed for the latency figures.
        #[arg(long, default_value_t = 5000)]
        pings: usize,
    },
    /// Serve the gRPC echo service until stdin closes; used by the benchmark.
    GrpcServer {
        /// How clients reach it.
        #[arg(long, value_enum)]
        over: grpc::Over,
        /// Where the TLS certificate and key are (`--over tls`).
        #[arg(long)]
        work: PathBuf,
    },
}

/// How much each measurement does.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sizes {
    bulk_bytes: u64,
    /// Rounds of the one-stream transfer over every path (the median is reported).
    bulk_rounds: usize,
    parallel_streams: usize,
    parallel_bytes_each: u64,
    round_trips: usize,
    setups: usize,
    concurrent: usize,
    grpc_unary: usize,
    grpc_messages: usize,
    grpc_message_bytes: usize,
    /// Rounds over the three gRPC paths (the unary calls split among them, a transfer in each).
    grpc_rounds: usize,
}

impl Sizes {
    fn full() -> Self {
        Self {
            bulk_bytes: 1 << 30,
            bulk_rounds: 3,
            parallel_streams: 8,
            parallel_bytes_each: 256 << 20,
            round_trips: 10_000,
            setups: 1_000,
            concurrent: 1_000,
            grpc_unary: 10_000,
            grpc_messages: 4_096,
            grpc_message_bytes: 256 << 10,
            grpc_rounds: 3,
        }
    }

    fn smoke() -> Self {
        Self {
            bulk_bytes: 4 << 20,
            bulk_rounds: 3,
            parallel_streams: 8,
            parallel_bytes_each: 512 << 10,
            round_trips: 50,
            setups: 20,
            concurrent: 100,
            grpc_unary: 50,
            grpc_messages: 32,
            grpc_message_bytes: 64 << 10,
            grpc_rounds: 3,
        }
    }
}

/// One path's figures.
#[derive(Debug, Clone, Serialize)]
struct PathResult {
    name: &'static str,
    throughput_gbps: f64,
    parallel_gbps: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    setup_p50_us: f64,
    setup_p99_us: f64,
    /// RSS growth per concurrent tunnelled connection, KiB: (tunnel side, service side).
    rss_per_connection_kib: Option<(f64, f64)>,
    /// CPU time both processes in the path used per GiB of the one-stream transfer, ms: the
    /// cost per byte, steadier than throughput on a shared machine.
    cpu_ms_per_gib: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    smoke: bool,
    sizes: Sizes,
    cpus: usize,
    /// The TLS suites' ciphers alone on one core, the one the tunnel uses here first.
    ciphers_one_core: Vec<crypto::CipherSpeed>,
    paths: Vec<PathResult>,
    grpc_tcp: GrpcResult,
    grpc_tls: GrpcResult,
    grpc_punchgate: GrpcResult,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Some(Command::Node { args }) => {
            let cli = <punchgate::cli::Cli as Parser>::parse_from(
                std::iter::once("punchgate".to_owned()).chain(args),
            );
            return punchgate::cli::run_main(cli);
        }
        Some(Command::Forward { hop, side, targets }) => tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(forward::serve(hop, side, targets))),
        Some(Command::Grpc { rounds, mib, unary }) => tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(grpc_rounds(&args.work, rounds, mib, unary))),
        Some(Command::Handshakes { rounds }) => tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(handshakes::run(rounds))),
        Some(Command::Flood) => tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(flood::run(&args.work))),
        Some(Command::Udp { seconds, pings }) => udp::run(&args.work, seconds, pings),
        Some(Command::GrpcServer { over, work }) => tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(grpc::serve(over, &work))),
        Some(Command::Bulk {
            rounds,
            mib,
            against,
            layers,
        }) => tokio::runtime::Runtime::new()
            .context("cannot start the async runtime")
            .and_then(|rt| {
                rt.block_on(bulk_rounds(
                    &args.work,
                    rounds,
                    mib << 20,
                    against.as_deref(),
                    layers,
                ))
            }),
        None => {
            punchgate::cli::raise_fd_limit();
            tokio::runtime::Runtime::new()
                .context("cannot start the async runtime")
                .and_then(|rt| rt.block_on(run(&args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<()> {
    let sizes = if args.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    let bin = std::env::current_exe()?;
    std::fs::create_dir_all(&args.work)?;
    let echo = services::echo().await?;
    let sink = services::sink().await?;

    // Each path's processes start just before its measurements (its RSS baseline is taken
    // fresh) and stay up for the one-stream rounds below.
    eprintln!("{RAW}...");
    let raw = Target {
        name: RAW,
        echo,
        sink,
        processes: None,
    };
    let mut paths = vec![measure(&raw, sizes).await?];
    eprintln!("{FORWARDER}...");
    let chain = forward::start(&bin, &args.work, forward::Hop::Plain, echo, sink)?;
    let forwarder = Target::chain(FORWARDER, &chain);
    paths.push(measure(&forwarder, sizes).await?);
    eprintln!("{TLS_FORWARDER}...");
    let tls_chain = forward::start(&bin, &args.work, forward::Hop::Tls, echo, sink)?;
    let tls_forwarder = Target::chain(TLS_FORWARDER, &tls_chain);
    paths.push(measure(&tls_forwarder, sizes).await?);
    eprintln!("{TUNNEL_TCP}...");
    let tcp_pair = nodes::start(&bin, &args.work, Transport::Tcp, echo, sink)?;
    let tunnel_tcp = Target::tunnel(TUNNEL_TCP, &tcp_pair);
    paths.push(measure(&tunnel_tcp, sizes).await?);
    eprintln!("{TUNNEL_QUIC}...");
    let quic_pair = nodes::start(&bin, &args.work, Transport::Quic, echo, sink)?;
    let tunnel_quic = Target::tunnel(TUNNEL_QUIC, &quic_pair);
    paths.push(measure(&tunnel_quic, sizes).await?);
    let targets = [raw, forwarder, tls_forwarder, tunnel_tcp, tunnel_quic];
    // The one-stream transfer, the figure the throughput target is set on, in rounds with the
    // order rotating every round and reversed every other one (so that no path always follows
    // the same one): measured once each, a slow moment of the machine could land on one path
    // alone and move every ratio.
    eprintln!(
        "one stream through each path, {} rounds...",
        sizes.bulk_rounds
    );
    let mut transfers = vec![Vec::with_capacity(sizes.bulk_rounds); targets.len()];
    for round in 0..sizes.bulk_rounds {
        for k in 0..targets.len() {
            let k = if round % 2 == 1 {
                targets.len() - 1 - k
            } else {
                k
            };
            let i = (round + k) % targets.len();
            let target = &targets[i];
            transfers[i].push(bulk(target.sink, sizes.bulk_bytes, target.processes).await?);
        }
    }
    for (path, transfers) in paths.iter_mut().zip(transfers) {
        let (mut gbps, mut cpu): (Vec<f64>, Vec<f64>) = transfers
            .into_iter()
            .map(|(gbps, cpu)| (gbps, cpu.unwrap_or(f64::NAN)))
            .unzip();
        path.throughput_gbps = median(&mut gbps);
        path.cpu_ms_per_gib = path.cpu_ms_per_gib.and(Some(median(&mut cpu)));
    }
    drop((chain, tls_chain, tcp_pair, quic_pair));

    let config = punchgate_grpc::BridgeConfig::default();
    let grpc_sizes = GrpcSizes {
        unary: sizes.grpc_unary,
        messages: sizes.grpc_messages,
        message_bytes: sizes.grpc_message_bytes,
    };
    eprintln!(
        "gRPC over TCP, TLS and Punchgate, {} rounds...",
        sizes.grpc_rounds
    );
    let [grpc_tcp, grpc_tls, grpc_punchgate] =
        grpc::compare(&bin, &args.work, &config, grpc_sizes, sizes.grpc_rounds).await?;

    eprintln!("ciphers on one core...");
    let ciphers_one_core = crypto::ciphers(if args.smoke { 16 << 20 } else { 1 << 30 });
    let report = Report {
        smoke: args.smoke,
        sizes,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ciphers_one_core,
        paths,
        grpc_tcp,
        grpc_tls,
        grpc_punchgate,
    };
    let markdown = markdown(&report);
    println!("{markdown}");
    if let Some(out) = &args.out {
        write(out, &markdown, &report)?;
    }
    Ok(())
}

/// One path to measure: where its echo service and sink are reached, and the two processes
/// in it (none for raw TCP).
struct Target<'p> {
    name: &'static str,
    echo: std::net::SocketAddr,
    sink: std::net::SocketAddr,
    processes: Option<(&'p nodes::Process, &'p nodes::Process)>,
}

impl<'p> Target<'p> {
    /// The forwarder `chain`'s two processes.
    fn chain(name: &'static str, chain: &'p forward::Chain) -> Self {
        Self {
            name,
            echo: chain.echo,
            sink: chain.sink,
            processes: Some((&chain.client, &chain.service)),
        }
    }

    /// The tunnel through `pair`'s two nodes.
    fn tunnel(name: &'static str, pair: &'p nodes::Pair) -> Self {
        Self {
            name,
            echo: pair.echo,
            sink: pair.sink,
            processes: Some((&pair.tunnel, &pair.service)),
        }
    }
}

/// Everything but the one-stream transfer (measured in rounds over all paths, see [`run`]):
/// its throughput is left NaN and its CPU per GiB `Some(NaN)` where there are processes.
async fn measure(target: &Target<'_>, sizes: Sizes) -> Result<PathResult> {
    let Target {
        name,
        echo,
        sink,
        processes,
    } = *target;
    // Warm up: the tunnel's libp2p connection is dialled by the first connection.
    tcp::setups(echo, 5).await?;
    // Memory first, while the processes are lean: RSS before, and with every connection open.
    let rss_per_connection_kib = match processes {
        Some((client, service)) => {
            let before = (client.rss_kib()?, service.rss_kib()?);
            let during = tcp::concurrent(echo, sizes.concurrent, 100, || async {
                (client.rss_kib(), service.rss_kib())
            })
            .await?;
            let n = sizes.concurrent as f64;
            Some((
                (during.0? as f64 - before.0 as f64) / n,
                (during.1? as f64 - before.1 as f64) / n,
            ))
        }
        None => {
            tcp::concurrent(echo, sizes.concurrent, 100, || async {}).await?;
            None
        }
    };
    let setups = tcp::setups(echo, sizes.setups).await?;
    let rtts = tcp::round_trips(echo, sizes.round_trips).await?;
    let parallel_gbps =
        tcp::parallel_throughput(sink, sizes.parallel_streams, sizes.parallel_bytes_each).await?;
    Ok(PathResult {
        name,
        throughput_gbps: f64::NAN,
        parallel_gbps,
        rtt_p50_us: percentile_us(&rtts, 50.0),
        rtt_p99_us: percentile_us(&rtts, 99.0),
        setup_p50_us: percentile_us(&setups, 50.0),
        setup_p99_us: percentile_us(&setups, 99.0),
        rss_per_connection_kib,
        cpu_ms_per_gib: processes.map(|_| f64::NAN),
    })
}

/// One stream of `bytes` to `sink`: Gbit/s, and the CPU both `processes` used per GiB.
async fn bulk(
    sink: std::net::SocketAddr,
    bytes: u64,
    processes: Option<(&nodes::Process, &nodes::Process)>,
) -> Result<(f64, Option<f64>)> {
    let cpu = || -> Result<Option<f64>> {
        processes
            .map(|(client, service)| Ok(client.cpu_seconds()? + service.cpu_seconds()?))
            .transpose()
    };
    let before = cpu()?;
    let gbps = tcp::throughput(sink, bytes).await?;
    let ms_per_gib = cpu()?
        .zip(before)
        .map(|(after, before)| 1000.0 * (after - before) / (bytes as f64 / f64::from(1u32 << 30)));
    Ok((gbps, ms_per_gib))
}

/// The `bulk` subcommand: the plain forwarder, then (with `layers`) the TLS and TLS + yamux
/// forwarders, this build's tunnel and `against`'s tunnel in turn, one line per round, then the
/// medians.
async fn bulk_rounds(
    work: &Path,
    rounds: usize,
    bytes: u64,
    against: Option<&Path>,
    layers: bool,
) -> Result<()> {
    anyhow::ensure!(
        rounds > 0 && bytes > 0,
        "--rounds and --mib must be at least 1"
    );
    let bin = std::env::current_exe()?;
    std::fs::create_dir_all(work)?;
    let echo = services::echo().await?;
    let sink = services::sink().await?;
    let chain = forward::start(&bin, work, forward::Hop::Plain, echo, sink)?;
    let mut paths: Vec<BulkPath> = Vec::new();
    if layers {
        for hop in [forward::Hop::Tls, forward::Hop::TlsYamux] {
            let chain = forward::start(&bin, work, hop, echo, sink)?;
            paths.push(BulkPath {
                name: hop.name().to_owned(),
                echo: chain.echo,
                sink: chain.sink,
                processes: (chain.client, chain.service),
            });
        }
    }
    let mut tunnels = vec![(
        "tunnel (this build)",
        nodes::start(&bin, work, Transport::Tcp, echo, sink)?,
    )];
    if let Some(other) = against {
        let dir = work.join("against");
        std::fs::create_dir_all(&dir)?;
        tunnels.push((
            "tunnel (--against)",
            nodes::start(other, &dir, Transport::Tcp, echo, sink)?,
        ));
    }
    for (name, pair) in tunnels {
        // The tunnel's libp2p connection is dialled by its first connection.
        tcp::setups(pair.echo, 5).await?;
        paths.push(BulkPath {
            name: name.to_owned(),
            echo: pair.echo,
            sink: pair.sink,
            processes: (pair.tunnel, pair.service),
        });
    }
    // Every byte echoed back is checked: the forwarders carry both directions correctly.
    tcp::round_trips(chain.echo, 20).await?;
    for path in &paths {
        tcp::round_trips(path.echo, 20).await?;
    }
    let mut header = format!(
        "| round | {} Gbit/s | CPU ms/GiB |",
        forward::Hop::Plain.name()
    );
    for path in &paths {
        let _ = write!(
            header,
            " {} Gbit/s | CPU ms/GiB | CPU ÷ forwarder |",
            path.name
        );
    }
    println!(
        "{header}\n|---|---|---|{}",
        "---|---|---|".repeat(paths.len())
    );
    let mut rows: Vec<Vec<f64>> = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let sides = (&chain.client, &chain.service);
        let (gbps, cpu) = bulk(chain.sink, bytes, Some(sides)).await?;
        let forwarder_cpu = cpu.unwrap_or(f64::NAN);
        // The other paths take turns going first: whichever runs right after another transfer
        // may find the machine in a different state.
        let mut measured = Vec::with_capacity(paths.len());
        let order: Vec<usize> = if round % 2 == 1 {
            (0..paths.len()).collect()
        } else {
            (0..paths.len()).rev().collect()
        };
        for i in order {
            let path = &paths[i];
            let (client, service) = &path.processes;
            measured.push((i, bulk(path.sink, bytes, Some((client, service))).await?));
        }
        measured.sort_by_key(|(i, _)| *i);
        let mut row = vec![gbps, forwarder_cpu];
        for (_, (gbps, cpu)) in measured {
            let cpu = cpu.unwrap_or(f64::NAN);
            row.extend([gbps, cpu, cpu / forwarder_cpu]);
        }
        println!("| {round} | {} |", bulk_cells(&row));
        rows.push(row);
    }
    let medians = medians(&rows);
    println!("| median | {} |", bulk_cells(&medians));
    Ok(())
}

/// A path of the `bulk` table after the plain forwarder: a layered forwarder or a tunnel.
#[derive(Debug)]
struct BulkPath {
    name: String,
    echo: std::net::SocketAddr,
    sink: std::net::SocketAddr,
    /// Its client-side and service-side processes, whose CPU is counted.
    processes: (nodes::Process, nodes::Process),
}

/// The `grpc` subcommand: over each path in turn (the order rotating every round), streaming
/// then `unary` calls, one line per round, then the medians.
async fn grpc_rounds(work: &Path, rounds: usize, mib: usize, unary: usize) -> Result<()> {
    const MESSAGE: usize = 256 << 10;
    anyhow::ensure!(
        rounds > 0 && mib > 0 && unary > 0,
        "--rounds, --mib and --unary must be at least 1"
    );
    let bin = std::env::current_exe()?;
    std::fs::create_dir_all(work)?;
    let config = punchgate_grpc::BridgeConfig::default();
    let sizes = GrpcSizes {
        unary,
        messages: (mib << 20).div_ceil(MESSAGE),
        message_bytes: MESSAGE,
    };
    let over = [grpc::Over::Tcp, grpc::Over::Tls, grpc::Over::Punchgate];
    let mut connections = Vec::with_capacity(over.len());
    for path in over {
        connections.push(grpc::Connection::open(&bin, work, path, &config).await?);
    }
    println!(
        "| round | TCP Gbit/s | CPU ms/GiB | TLS Gbit/s | CPU ms/GiB | ÷ TCP | ÷ TCP CPU \
         | Punchgate Gbit/s | CPU ms/GiB | ÷ TCP | ÷ TCP CPU \
         | unary p50 µs: TCP | TLS | ÷ TCP | Punchgate | ÷ TCP |\n|{}",
        "---|".repeat(16)
    );
    let mut rows: Vec<Vec<f64>> = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut measured = vec![(0.0, 0.0, 0.0); over.len()];
        for k in 0..over.len() {
            let i = (round + k) % over.len();
            let (gbps, cpu) = connections[i].stream_with_cpu(sizes).await?;
            let p50 = connections[i].unary_p50(unary).await?;
            measured[i] = (gbps, cpu, p50);
        }
        let (tcp_gbps, tcp_cpu, tcp_p50) = measured[0];
        let mut row = vec![tcp_gbps, tcp_cpu];
        for &(gbps, cpu, _) in &measured[1..] {
            row.extend([gbps, cpu, gbps / tcp_gbps, cpu / tcp_cpu]);
        }
        row.push(tcp_p50);
        for &(_, _, p50) in &measured[1..] {
            row.extend([p50, p50 / tcp_p50]);
        }
        println!("| {} | {} |", round + 1, grpc_cells(&row));
        rows.push(row);
    }
    println!("| median | {} |", grpc_cells(&medians(&rows)));
    for connection in connections {
        connection.close().await;
    }
    Ok(())
}

/// A `bulk` row's cells: the plain forwarder's Gbit/s and CPU, then per other path Gbit/s, CPU
/// and CPU ÷ the plain forwarder's.
fn bulk_cells(row: &[f64]) -> String {
    cells(row, |i| i == 1 || (i >= 2 && (i - 2) % 3 == 1))
}

/// A `grpc` row's cells: TCP's Gbit/s and CPU, four per other path (Gbit/s, CPU, both ÷
/// TCP's), then unary p50: TCP's, and per other path the p50 and its ratio.
fn grpc_cells(row: &[f64]) -> String {
    const STREAMING: usize = 2 + 2 * 4;
    let whole = |i: usize| match i.checked_sub(STREAMING) {
        None => i == 1 || (i >= 2 && (i - 2) % 4 == 1),
        Some(j) => j == 0 || j % 2 == 1,
    };
    cells(row, whole)
}

/// Each column's median.
fn medians(rows: &[Vec<f64>]) -> Vec<f64> {
    (0..rows[0].len())
        .map(|i| median(&mut rows.iter().map(|row| row[i]).collect::<Vec<_>>()))
        .collect()
}

/// The median of `values` (of an even count, the mean of the middle two); NaN if empty.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (values[middle - 1] + values[middle]) / 2.0,
        _ => values[middle],
    }
}

/// A row's cells for the `bulk` and `grpc` tables: those `whole(i)` picks (CPU ms/GiB, µs)
/// as whole numbers, the rest (Gbit/s, ratios) with two decimals.
fn cells(row: &[f64], whole: impl Fn(usize) -> bool) -> String {
    row.iter()
        .enumerate()
        .map(|(i, v)| {
            if whole(i) {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The paths, in the order they are measured and shown.
const RAW: &str = "raw TCP";
const FORWARDER: &str = "plain forwarder (2 processes, no cipher)";
const TLS_FORWARDER: &str = "TLS forwarder (2 processes, the node's TLS, no multiplexer)";
const TUNNEL_TCP: &str = "tunnel over TCP (TLS + yamux)";
const TUNNEL_QUIC: &str = "tunnel over QUIC";

/// The path named `name` (every run measures them all).
fn path<'r>(r: &'r Report, name: &str) -> &'r PathResult {
    r.paths
        .iter()
        .find(|p| p.name == name)
        .expect("every path is measured")
}

/// `value (ratio×)` against the raw-TCP figure.
fn with_ratio(value: f64, raw: f64, digits: usize) -> String {
    format!("{value:.digits$} ({:.2}×)", value / raw)
}

fn markdown(r: &Report) -> String {
    let raw = path(r, RAW);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| metric | {} |",
        r.paths
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|---{}|", "|---".repeat(r.paths.len()));
    type Cell = fn(&PathResult) -> f64;
    let one_stream = format!(
        "throughput, 1 stream, median of {} rounds (Gbit/s)",
        r.sizes.bulk_rounds
    );
    let rows: [(&str, Cell, usize); 6] = [
        (&one_stream, |p| p.throughput_gbps, 2),
        ("throughput, 8 streams (Gbit/s)", |p| p.parallel_gbps, 2),
        ("round trip 64 B, p50 (µs)", |p| p.rtt_p50_us, 0),
        ("round trip 64 B, p99 (µs)", |p| p.rtt_p99_us, 0),
        ("connection setup, p50 (µs)", |p| p.setup_p50_us, 0),
        ("connection setup, p99 (µs)", |p| p.setup_p99_us, 0),
    ];
    for (label, cell, digits) in rows {
        let cells: Vec<String> = r
            .paths
            .iter()
            .map(|p| with_ratio(cell(p), cell(raw), digits))
            .collect();
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    let memory: Vec<String> = r
        .paths
        .iter()
        .map(|p| match p.rss_per_connection_kib {
            Some((a, b)) => format!("{a:.1} + {b:.1}"),
            None => "–".into(),
        })
        .collect();
    let _ = writeln!(
        out,
        "| RSS per concurrent connection, client side + service side (KiB), {} connections | {} |",
        r.sizes.concurrent,
        memory.join(" | ")
    );
    let cpu: Vec<String> = r
        .paths
        .iter()
        .map(|p| p.cpu_ms_per_gib.map_or("–".into(), |ms| format!("{ms:.0}")))
        .collect();
    let _ = writeln!(
        out,
        "| CPU per GiB, 1 stream, both processes in the path, median of {} rounds (ms) | {} |",
        r.sizes.bulk_rounds,
        cpu.join(" | ")
    );
    let (t, tls, p) = (&r.grpc_tcp, &r.grpc_tls, &r.grpc_punchgate);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| gRPC (same tonic echo service) | plain TCP | TLS over TCP (tonic) | Punchgate | \
         Punchgate ÷ TLS |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    type GrpcCell = fn(&GrpcResult) -> f64;
    let stream_label = format!(
        "streaming {} KiB messages, median of {} rounds (Gbit/s)",
        r.sizes.grpc_message_bytes >> 10,
        r.sizes.grpc_rounds
    );
    let grpc_rows: [(&str, GrpcCell, usize); 3] = [
        (
            "unary 64 B, p50 of all rounds' calls (µs)",
            |g| g.unary_p50_us,
            0,
        ),
        (
            "unary 64 B, p99 of all rounds' calls (µs)",
            |g| g.unary_p99_us,
            0,
        ),
        (&stream_label, |g| g.stream_gbps, 2),
    ];
    for (label, cell, digits) in grpc_rows {
        let _ = writeln!(
            out,
            "| {label} | {:.digits$} | {} | {} | {:.2}× |",
            cell(t),
            with_ratio(cell(tls), cell(t), digits),
            with_ratio(cell(p), cell(t), digits),
            cell(p) / cell(tls)
        );
    }

    // The limit for a tunnel here, estimated from two measurements: the plain forwarder moves
    // bytes across the same three loopback hops with the same copy buffers and nothing else
    // (taken to keep every core busy); a tunnel also seals and opens every byte once. Adding that
    // cipher's core-seconds per Gbit to the forwarder's gives the most an encrypted tunnel of
    // this shape could reach on these cores.
    let _ = writeln!(out);
    let speeds: Vec<String> = r
        .ciphers_one_core
        .iter()
        .map(|c| {
            format!(
                "{} seal {:.1} Gbit/s, open {:.1} Gbit/s",
                c.name, c.seal_gbps, c.open_gbps
            )
        })
        .collect();
    let forwarder = path(r, FORWARDER).throughput_gbps;
    let tunnel = path(r, TUNNEL_TCP);
    if let Some(used) = r.ciphers_one_core.first() {
        let cpus = r.cpus as f64;
        let cipher = 1.0 / used.seal_gbps + 1.0 / used.open_gbps;
        let bound = cpus / (cpus / forwarder + cipher);
        let _ = writeln!(
            out,
            "Ciphers alone on one core (aws-lc, 16 KiB records): {}. The tunnel over TCP uses {} \
             on this CPU. The plain forwarder (the tunnel's three loopback hops and copy buffers, \
             nothing else) moved {forwarder:.1} Gbit/s ({:.2}× raw TCP); with sealing and opening \
             added on these {} cores, an encrypted tunnel of this shape could reach at most \
             {bound:.1} Gbit/s ({:.2}× raw TCP). The tunnel over TCP reached {:.0}% of that.",
            speeds.join("; "),
            used.name,
            forwarder / raw.throughput_gbps,
            r.cpus,
            bound / raw.throughput_gbps,
            100.0 * tunnel.throughput_gbps / bound
        );

        if let (Some(t), Some(f)) = (tunnel.cpu_ms_per_gib, path(r, FORWARDER).cpu_ms_per_gib) {
            // A GiB is 8.59 Gbit.
            let cipher_ms = 1000.0 * cipher * f64::from(1u32 << 30) * 8.0 / 1e9;
            let _ = writeln!(
                out,
                "\nPer GiB through one stream, the tunnel's two nodes used {t:.0} ms of CPU, the \
                 two forwarders {f:.0} ms ({:.2}×); sealing and opening a GiB costs {cipher_ms:.0} \
                 ms of that difference.",
                t / f
            );
        }
    }
    let tls = path(r, TLS_FORWARDER);
    if let (Some(c), Some(f)) = (tls.cpu_ms_per_gib, path(r, FORWARDER).cpu_ms_per_gib) {
        let _ = writeln!(
            out,
            "\nThe TLS forwarder (the plain forwarder's hops and processes with the node's TLS \
             between them and only the framing a multiplexer needs; no multiplexer, no libp2p) \
             moved {:.2} Gbit/s ({:.3}× raw TCP, {:.2}× the plain forwarder) at {c:.0} ms of CPU \
             per GiB ({:.2}× the plain forwarder's): a reference for what a tunnel on this TLS \
             moves here, with the run-to-run noise of any one figure. The tunnel over TCP moved \
             {:.2}× as much at {:.2}× its CPU per GiB.",
            tls.throughput_gbps,
            tls.throughput_gbps / raw.throughput_gbps,
            tls.throughput_gbps / forwarder,
            c / f,
            tunnel.throughput_gbps / tls.throughput_gbps,
            tunnel.cpu_ms_per_gib.map_or(f64::NAN, |t| t / c),
        );
    }
    let rss = tunnel
        .rss_per_connection_kib
        .map_or(f64::NAN, |(a, b)| a.max(b));
    let _ = writeln!(out);
    let _ = writeln!(out, "| target | measured | met |");
    let _ = writeln!(out, "|---|---|---|");
    let mut target = |name: &str, measured: String, met: bool| {
        let _ = writeln!(
            out,
            "| {name} | {measured} | {} |",
            if met { "yes" } else { "no" }
        );
    };
    let ratio = tunnel.throughput_gbps / raw.throughput_gbps;
    target(
        "encrypted tunnel throughput ≥ 0.30× raw TCP",
        format!(
            "{ratio:.3}× (plain forwarder {:.3}×, TLS forwarder {:.3}×)",
            forwarder / raw.throughput_gbps,
            tls.throughput_gbps / raw.throughput_gbps
        ),
        ratio >= 0.30,
    );
    target(
        "RSS ≤ 32 KiB per concurrent connection (per node)",
        format!("{rss:.1} KiB"),
        rss <= 32.0,
    );
    let unary = p.unary_p50_us / t.unary_p50_us;
    target(
        "gRPC unary p50 ≤ 1.3× TCP",
        format!("{unary:.2}×"),
        unary <= 1.3,
    );
    let stream = p.stream_gbps / t.stream_gbps;
    target(
        "gRPC streaming ≥ 0.7× TCP",
        format!("{stream:.2}×"),
        stream >= 0.7,
    );
    out
}

fn write(out: &Path, markdown: &str, report: &Report) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out.with_extension("md"), markdown)?;
    std::fs::write(
        out.with_extension("json"),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(out.with_extension("svg"), chart(report))?;
    Ok(())
}

/// A bar chart of every figure as a ratio to raw TCP (throughput: higher is better; times:
/// lower is better, so their ratio is inverted to read the same way).
fn chart(r: &Report) -> String {
    let raw = path(r, RAW);
    let others = r.paths.iter().filter(|p| p.name != RAW);
    type Cell = fn(&PathResult) -> f64;
    let metrics: [(&str, Cell, bool); 4] = [
        ("throughput, 1 stream", |p| p.throughput_gbps, true),
        ("throughput, 8 streams", |p| p.parallel_gbps, true),
        ("round trip p50", |p| p.rtt_p50_us, false),
        ("connection setup p50", |p| p.setup_p50_us, false),
    ];
    let (bar_h, gap, left, width) = (18.0, 10.0, 190.0, 420.0);
    let colors = ["#9a9a9a", "#6aa84f", "#4a7fb5", "#d9823b"];
    let mut y = 40.0;
    let mut body = String::new();
    for (label, cell, higher_is_better) in metrics {
        let _ = writeln!(
            body,
            r#"<text x="10" y="{:.0}" font-size="13">{label}</text>"#,
            y + bar_h
        );
        for (i, p) in others.clone().enumerate() {
            let ratio = if higher_is_better {
                cell(p) / cell(raw)
            } else {
                cell(raw) / cell(p)
            };
            let w = (ratio.clamp(0.0, 1.0) * width).max(1.0);
            let _ = writeln!(
                body,
                r#"<rect x="{left}" y="{y:.0}" width="{w:.1}" height="{bar_h}" fill="{}"/><text x="{:.1}" y="{:.0}" font-size="11">{ratio:.2}×</text>"#,
                colors[i % colors.len()],
                left + w + 4.0,
                y + bar_h - 5.0
            );
            y += bar_h + 2.0;
        }
        y += gap;
    }
    let bars_end = y - gap;
    let legend: String = others
        .enumerate()
        .map(|(i, p)| {
            let row = y + i as f64 * 18.0;
            format!(
                r#"<rect x="{left}" y="{row:.0}" width="12" height="12" fill="{}"/><text x="{}" y="{:.0}" font-size="12">{}</text>"#,
                colors[i % colors.len()],
                left + 16.0,
                row + 11.0,
                p.name
            )
        })
        .collect();
    let y = y + (r.paths.len() - 1) as f64 * 18.0;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="15">Punchgate tunnels as a fraction of raw TCP (1.0 = as fast; times inverted)</text>
<line x1="{x1:.0}" y1="32" x2="{x1:.0}" y2="{y2:.0}" stroke="#999" stroke-dasharray="3,3"/>
{body}{legend}
</svg>
"##,
        w = left + width + 80.0,
        h = y + 30.0,
        x1 = left + width,
        y2 = bars_end
    )
}
