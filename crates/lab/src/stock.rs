//! Stock rust-libp2p programs for the lab, built from libp2p's own crates with their default
//! settings and none of Punchgate's transport code: the relay server and the DCUtR client of
//! rust-libp2p's examples (`relay-server`, `dcutr`). They run in the lab's namespaces, as
//! `punchgate-lab stock relay|dcutr`, to prove that Punchgate nodes work with them.
//!
//! Both speak what the examples speak: TCP with Noise and yamux, and QUIC. Like the lab's
//! other programs they print `peer id: ...` and `listening on ...` on stdout and log JSON lines
//! to stderr.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, SwarmBuilder, dcutr, identify,
    multiaddr::Protocol,
    noise, ping, relay,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux,
};

/// `punchgate-lab stock ...`.
#[derive(Debug, Parser)]
pub struct Args {
    /// The identity key file (Punchgate's format: a protobuf-encoded libp2p key).
    #[arg(long, global = true, default_value = "stock.key")]
    identity: PathBuf,
    /// text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    program: Program,
}

#[derive(Debug, Subcommand)]
enum Program {
    /// rust-libp2p's relay server example: relay (default limits), identify, ping.
    Relay {
        /// TCP and QUIC listen port on every interface.
        #[arg(long)]
        port: u16,
        /// The address others reach it at (the example's "public" address), confirmed as
        /// external so the relay serves.
        #[arg(long)]
        external_ip: std::net::Ipv4Addr,
    },
    /// rust-libp2p's DCUtR example: dial a peer through a relay (or listen on the relay) and
    /// upgrade to a direct connection.
    Dcutr {
        /// listen (reserve on the relay) or dial (the remote peer through the relay).
        #[arg(long)]
        mode: Mode,
        /// The relay, `/.../p2p/<id>`.
        #[arg(long)]
        relay: Multiaddr,
        /// The peer to dial, in dial mode.
        #[arg(long)]
        remote: Option<PeerId>,
        /// Dial the relay (and the remote) over TCP or QUIC.
        #[arg(long, default_value = "tcp")]
        transport: String,
    },
}

/// The DCUtR example's modes.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Listen,
    Dial,
}

#[derive(NetworkBehaviour)]
struct RelayServer {
    relay: relay::Behaviour,
    ping: ping::Behaviour,
    identify: identify::Behaviour,
}

#[derive(NetworkBehaviour)]
struct DcutrClient {
    relay_client: relay::client::Behaviour,
    ping: ping::Behaviour,
    identify: identify::Behaviour,
    dcutr: dcutr::Behaviour,
}

/// Runs a stock program until it is stopped.
pub fn run_main(args: Args) -> std::process::ExitCode {
    punchgate::cli::init_tracing(if args.log_format == "json" {
        punchgate::cli::LogFormat::Json
    } else {
        punchgate::cli::LogFormat::Text
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "stock program failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let (key, _) = punchgate::identity::load_or_create(&args.identity)
        .with_context(|| format!("identity {}", args.identity.display()))?;
    println!("peer id: {}", key.public().to_peer_id());
    match args.program {
        Program::Relay { port, external_ip } => relay_server(key, port, external_ip).await,
        Program::Dcutr {
            mode,
            relay,
            remote,
            transport,
        } => dcutr_client(key, mode, relay, remote, &transport).await,
    }
}

fn identify(key: &libp2p::identity::Keypair) -> identify::Behaviour {
    identify::Behaviour::new(identify::Config::new(
        // What rust-libp2p's examples send.
        "/TODO/0.0.1".to_owned(),
        key.public(),
    ))
}

async fn relay_server(
    key: libp2p::identity::Keypair,
    port: u16,
    external_ip: std::net::Ipv4Addr,
) -> Result<()> {
    let mut swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_behaviour(|key| RelayServer {
            relay: relay::Behaviour::new(key.public().to_peer_id(), relay::Config::default()),
            ping: ping::Behaviour::new(ping::Config::new()),
            identify: identify(key),
        })?
        .build();
    let me = *swarm.local_peer_id();
    for listen in [
        format!("/ip4/0.0.0.0/tcp/{port}"),
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
    ] {
        swarm.listen_on(listen.parse()?)?;
    }
    // The example learns its public address from identify; the lab knows it.
    for external in [
        format!("/ip4/{external_ip}/tcp/{port}"),
        format!("/ip4/{external_ip}/udp/{port}/quic-v1"),
    ] {
        swarm.add_external_address(external.parse()?);
    }
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                println!("listening on {address}/p2p/{me}");
            }
            SwarmEvent::Behaviour(RelayServerEvent::Relay(event)) => {
                tracing::info!(event = ?event, "relay");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::info!(peer = %peer_id, endpoint = %endpoint.get_remote_address(), "connection established");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::info!(error = %error, "incoming connection failed");
            }
            _ => {}
        }
    }
}

async fn dcutr_client(
    key: libp2p::identity::Keypair,
    mode: Mode,
    relay: Multiaddr,
    remote: Option<PeerId>,
    transport: &str,
) -> Result<()> {
    let mut swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_quic()
        .with_dns()?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| DcutrClient {
            relay_client,
            ping: ping::Behaviour::new(ping::Config::new()),
            identify: identify(key),
            dcutr: dcutr::Behaviour::new(key.public().to_peer_id()),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let me = *swarm.local_peer_id();
    let quic = transport == "quic";
    swarm.listen_on("/ip4/0.0.0.0/tcp/0".parse()?)?;
    swarm.listen_on("/ip4/0.0.0.0/udp/0/quic-v1".parse()?)?;

    // As the example does: connect to the relay first and learn our observed address from it,
    // so DCUtR has a candidate to offer.
    let relay_peer = match relay.iter().last() {
        Some(Protocol::P2p(peer)) => peer,
        _ => anyhow::bail!("the relay address must end with /p2p/<id>"),
    };
    swarm.dial(relay.clone())?;
    let mut learned = false;
    let mut sent_identify = false;
    while !(learned && sent_identify) {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                let tcp = address.iter().any(|p| matches!(p, Protocol::Tcp(_)));
                if tcp != quic {
                    println!("listening on {address}/p2p/{me}");
                }
            }
            SwarmEvent::Behaviour(DcutrClientEvent::Identify(identify::Event::Sent {
                peer_id,
                ..
            })) if peer_id == relay_peer => sent_identify = true,
            SwarmEvent::Behaviour(DcutrClientEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if peer_id == relay_peer => {
                // As the example does, only log it: identify reports it to DCUtR as a
                // candidate. Confirming it here as well would race that report (the swarm
                // drops candidates that are already confirmed), and DCUtR would offer no
                // address whenever port reuse kept the listening port.
                tracing::info!(observed = %info.observed_addr, "the relay observes us");
                learned = true;
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                anyhow::bail!("cannot reach the relay: {error}")
            }
            SwarmEvent::NewExternalAddrCandidate { address } => {
                tracing::info!(%address, "address candidate");
            }
            _ => {}
        }
    }

    match mode {
        Mode::Listen => {
            swarm.listen_on(relay.with(Protocol::P2pCircuit))?;
        }
        Mode::Dial => {
            let remote = remote.context("--remote is needed in dial mode")?;
            swarm.dial(relay.with(Protocol::P2pCircuit).with(Protocol::P2p(remote)))?;
        }
    }
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                println!("listening on {address}/p2p/{me}");
            }
            SwarmEvent::Behaviour(DcutrClientEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted { .. },
            )) => tracing::info!("relay reservation accepted"),
            SwarmEvent::Behaviour(DcutrClientEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(connection) => {
                    tracing::info!(peer = %remote_peer_id, ?connection, "hole punch succeeded")
                }
                Err(error) => {
                    tracing::info!(peer = %remote_peer_id, %error, "hole punch failed")
                }
            },
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let path = if endpoint.is_relayed() {
                    "relayed"
                } else {
                    "direct"
                };
                tracing::info!(
                    peer = %peer_id,
                    path,
                    endpoint = %endpoint.get_remote_address(),
                    "connection established"
                );
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::info!(peer = ?peer_id, error = %error, "dial failed");
            }
            SwarmEvent::NewExternalAddrCandidate { address } => {
                tracing::info!(%address, "address candidate");
            }
            SwarmEvent::Behaviour(DcutrClientEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                tracing::info!(peer = %peer, rtt_ms = rtt.as_millis() as u64, "ping");
            }
            _ => {}
        }
    }
}
