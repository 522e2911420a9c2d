//! `punchgate-bench flood`: one hostile peer against a node, and what an honest peer feels.
//!
//! B is a real `punchgate` process exposing an echo and a sink to A only (A tunnels to them).
//! The attacker is one identity, a stock libp2p swarm (TCP, Noise, yamux) with Punchgate's
//! stream behaviour: it dials B 200 times, then opens 5,000 tunnel streams over the connections
//! B kept, each stopped after the first byte of its request, and holds everything open.
//!
//! Printed, before, during and after the flood: B's resident memory against its `--max-memory`
//! ceiling, A's round trip over an open tunnel (p50, p99), A's time to a new tunnel connection's
//! first echoed byte (p50), A's tunnel throughput, and the WARN lines B wrote.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, SwarmBuilder,
    swarm::{
        SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use punchgate::net::stream;
use tokio::io::AsyncWriteExt as _;
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

use crate::{
    nodes::{self, Transport},
    services,
    tcp::{self, percentile_us},
};

/// Connections the attacker dials.
const CONNECTIONS: usize = 200;
/// Streams it opens.
const STREAMS: usize = 5000;
/// B's memory ceiling (the default).
const CEILING: u64 = punchgate::config::DEFAULT_MAX_MEMORY;

/// What A measured in one phase.
struct Phase {
    name: &'static str,
    rss_mib: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    setup_p50_ms: f64,
    gbits: f64,
    warns: usize,
}

async fn measure(
    name: &'static str,
    pair: &nodes::Pair,
    log: &Path,
    warns_before: usize,
) -> Result<Phase> {
    let rtts = tcp::round_trips(pair.echo, 300).await?;
    let setups = tcp::setups(pair.echo, 20).await?;
    let gbits = tcp::throughput(pair.sink, 64 << 20).await?;
    Ok(Phase {
        name,
        rss_mib: pair.service.rss_kib()? as f64 / 1024.0,
        rtt_p50_us: percentile_us(&rtts, 50.0),
        rtt_p99_us: percentile_us(&rtts, 99.0),
        setup_p50_ms: percentile_us(&setups, 50.0) / 1000.0,
        gbits,
        warns: warn_lines(log).saturating_sub(warns_before),
    })
}

fn warn_lines(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .map(|s| s.lines().filter(|l| l.contains("\"WARN\"")).count())
        .unwrap_or(0)
}

/// The attacker: what it got from B.
struct Flood {
    kept: usize,
    refused: usize,
    streams_opened: usize,
    /// Streams B still held a second after the last was opened (it reset the rest).
    streams_held: usize,
    /// Streams that could not be opened, by error.
    open_failures: std::collections::BTreeMap<String, usize>,
    /// Its swarm, still running, and the streams it holds: dropped to end the flood.
    _held: (
        tokio::task::JoinHandle<()>,
        Vec<tokio_util::compat::Compat<libp2p::Stream>>,
    ),
}

async fn flood(b: PeerId, addr: Multiaddr) -> Result<Flood> {
    let behaviour = stream::Behaviour::new();
    let control = behaviour.new_control();
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )?
        .with_behaviour(|_| behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    for _ in 0..CONNECTIONS {
        swarm.dial(
            DialOpts::peer_id(b)
                .addresses(vec![addr.clone()])
                .condition(PeerCondition::Always)
                .build(),
        )?;
    }
    // Every dial's outcome (within 10 s), then a second for B to close those over its limits.
    let (mut open, mut outcomes) = (std::collections::HashSet::new(), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut grace: Option<tokio::time::Instant> = None;
    loop {
        let until = grace.unwrap_or(deadline);
        let event = tokio::select! {
            event = swarm.select_next_some() => event,
            () = tokio::time::sleep_until(until) => break,
        };
        match event {
            SwarmEvent::ConnectionEstablished { connection_id, .. } => {
                open.insert(connection_id);
                outcomes += 1;
            }
            SwarmEvent::OutgoingConnectionError { .. } => outcomes += 1,
            SwarmEvent::ConnectionClosed { connection_id, .. } => {
                open.remove(&connection_id);
            }
            _ => {}
        }
        if outcomes >= CONNECTIONS && grace.is_none() {
            grace = Some(tokio::time::Instant::now() + Duration::from_secs(1));
        }
    }
    let kept: Vec<_> = open.into_iter().collect();
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let mut held = Vec::new();
    let mut failures = std::collections::BTreeMap::<String, usize>::new();
    let mut opened = 0;
    for i in 0..STREAMS {
        let Some(connection) = kept.get(i % kept.len().max(1)) else {
            break;
        };
        let stream = match tokio::time::timeout(
            Duration::from_secs(2),
            control.open_stream(*connection, punchgate::protocol::TUNNEL),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                *failures.entry(error.to_string()).or_insert(0) += 1;
                continue;
            }
            Err(_) => {
                *failures.entry("timed out".to_owned()).or_insert(0) += 1;
                continue;
            }
        };
        opened += 1;
        let mut stream = stream.compat();
        // The first byte of a request's length, and nothing more.
        if stream.write_all(&[0]).await.is_ok() && stream.flush().await.is_ok() {
            held.push(stream);
        }
    }
    // A second for B's resets to arrive; then a stream that reads neither data, EOF nor an
    // error is one B still holds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut byte = [0u8; 1];
    held.retain_mut(|stream| {
        use futures::FutureExt as _;
        tokio::io::AsyncReadExt::read(stream, &mut byte)
            .now_or_never()
            .is_none()
    });
    Ok(Flood {
        kept: kept.len(),
        refused: CONNECTIONS - kept.len(),
        streams_opened: opened,
        streams_held: held.len(),
        open_failures: failures,
        _held: (task, held),
    })
}

/// Runs the flood and prints the table.
pub(crate) async fn run(work: &Path) -> Result<()> {
    let dir = work.join("flood");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bin = std::env::current_exe()?;
    let (echo, sink) = (services::echo().await?, services::sink().await?);
    let pair = nodes::start(&bin, &dir, Transport::Tcp, echo, sink)?;
    let log = dir.join("service-tcp.log");
    let addr: Multiaddr = pair.service.listen_addr().context("B's address")?.parse()?;
    let b = match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => peer,
        _ => anyhow::bail!("B's address names no peer"),
    };

    let before = measure("before", &pair, &log, 0).await?;
    let warns = warn_lines(&log);
    let started = Instant::now();
    let mut attack = flood(b, addr).await?;
    let flood_secs = started.elapsed().as_secs_f64();
    let mut peak = pair.service.rss_kib()?;
    let during = measure("during", &pair, &log, warns).await?;
    peak = peak.max(pair.service.rss_kib()?);
    let warns = warn_lines(&log);
    let (kept, refused, streams_opened, streams_held) = (
        attack.kept,
        attack.refused,
        attack.streams_opened,
        attack.streams_held,
    );
    let failures = std::mem::take(&mut attack.open_failures);
    drop(attack);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = measure("after", &pair, &log, warns).await?;

    println!(
        "One attacker identity: {CONNECTIONS} connections dialled ({kept} kept, {refused} refused by B); {streams_opened} of {STREAMS} tunnel streams opened over them, each stopped after one byte; a second later B still held {streams_held} (it reset the rest); {flood_secs:.1} s."
    );
    if !failures.is_empty() {
        println!("Streams the attacker could not open: {failures:?}");
    }
    println!(
        "B's memory ceiling (--max-memory): {} MiB; peak resident during the flood: {:.0} MiB.",
        CEILING >> 20,
        peak as f64 / 1024.0
    );
    println!();
    println!(
        "| phase | B resident (MiB) | A round trip p50 / p99 (µs) | A new tunnel connection p50 (ms) | A throughput (Gbit/s) | WARN lines B wrote |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for p in [before, during, after] {
        println!(
            "| {} | {:.0} | {:.0} / {:.0} | {:.2} | {:.2} | {} |",
            p.name, p.rss_mib, p.rtt_p50_us, p.rtt_p99_us, p.setup_p50_ms, p.gbits, p.warns
        );
    }
    Ok(())
}
