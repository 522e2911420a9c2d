//! `punchgate-bench handshakes`: how long a libp2p connection takes to set up, for each way a
//! node and a peer can agree on security (TLS, Noise, QUIC), on loopback: from the dial to the
//! connection being usable (secured and multiplexed, both peer ids checked).
//!
//! The stock peers are built from libp2p's own crates with their default settings. Every dial
//! starts from a node (or stock peer) that has no connection to the target, so each sample is
//! one whole setup: TCP (or QUIC) handshake, multistream-select, security handshake, yamux.
//! Loopback has no propagation delay, so these figures are CPU and scheduling; the round trips
//! each case costs on a real path are counted in the table's last column.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, identity::Keypair, noise, ping, swarm::SwarmEvent, tcp,
    tls, yamux,
};
use punchgate::{Node, NodeConfig};

/// One way of setting up a connection, and its samples.
struct Case {
    name: &'static str,
    /// Round trips on a real path before the dialler can send application data, counted from
    /// the protocols: TCP 1; multistream-select in lazy mode 0 (the proposal travels with the
    /// first handshake message), or 1 for a refusal; TLS 1.3 1 and Noise XX 1 (the dialler's
    /// last handshake message carries data); yamux 0; QUIC 1.
    round_trips: &'static str,
    samples: Vec<Duration>,
}

/// Which security protocols a stock peer offers.
#[derive(Clone, Copy)]
enum Stock {
    Noise,
    Tls,
}

fn stock_peer(key: Keypair, security: Stock) -> Result<Swarm<ping::Behaviour>> {
    let builder = SwarmBuilder::with_existing_identity(key).with_tokio();
    let ping = |_: &Keypair| ping::Behaviour::default();
    let swarm = match security {
        Stock::Noise => builder
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(ping)?
            .build(),
        Stock::Tls => builder
            .with_tcp(
                tcp::Config::default(),
                tls::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(ping)?
            .build(),
    };
    Ok(swarm)
}

/// A stock peer listening on loopback in a task of its own; dropping the task closes it.
async fn listening_stock(
    key: Keypair,
    security: Stock,
) -> Result<(Multiaddr, tokio::task::JoinHandle<()>)> {
    let mut swarm = stock_peer(key, security)?;
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    Ok((addr, task))
}

fn node_config(listen: &str) -> Result<NodeConfig> {
    let mut config = NodeConfig::new(Keypair::generate_ed25519());
    config.listen = vec![listen.parse()?];
    config.mdns = false;
    config.upnp = false;
    Ok(config)
}

/// A node that dials `addr` once; the time `dial_addr` took.
async fn node_dials(dialer: &Node, peer: PeerId, addr: Multiaddr) -> Result<Duration> {
    let start = Instant::now();
    dialer
        .handle()
        .dial_addr(peer, addr)
        .await
        .context("dial")?;
    Ok(start.elapsed())
}

/// Runs every case `rounds` times and prints the table.
pub(crate) async fn run(rounds: usize) -> Result<()> {
    let mut cases = vec![
        Case {
            name: "node → node, TCP (TLS)",
            round_trips: "2: TCP, TLS",
            samples: Vec::new(),
        },
        Case {
            name: "node → node, QUIC",
            round_trips: "1",
            samples: Vec::new(),
        },
        Case {
            name: "node → stock Noise-only peer, first dial (TLS refused, Noise from a new port)",
            round_trips: "4: TCP, refusal; TCP, Noise",
            samples: Vec::new(),
        },
        Case {
            name: "node → stock Noise-only peer it knows (Noise at once)",
            round_trips: "2: TCP, Noise",
            samples: Vec::new(),
        },
        Case {
            name: "node → stock TLS-only peer",
            round_trips: "2: TCP, TLS",
            samples: Vec::new(),
        },
        Case {
            name: "stock Noise-only peer → node",
            round_trips: "2: TCP, Noise",
            samples: Vec::new(),
        },
        Case {
            name: "stock TLS-only peer → node",
            round_trips: "2: TCP, TLS",
            samples: Vec::new(),
        },
    ];

    // The targets that stay up: a node on TCP and QUIC.
    let target = Node::start(node_config("/ip4/127.0.0.1/tcp/0")?).await?;
    let quic_target = Node::start(node_config("/ip4/127.0.0.1/udp/0/quic-v1")?).await?;
    let tcp_addr = target.listen_addrs()[0].clone();
    let quic_addr = quic_target.listen_addrs()[0].clone();

    for _ in 0..rounds {
        // A fresh dialling node per round: no connection, no memory of any peer.
        let dialer = Node::start(node_config("/ip4/127.0.0.1/tcp/0")?).await?;
        cases[0]
            .samples
            .push(node_dials(&dialer, target.peer_id(), tcp_addr.clone()).await?);
        cases[1]
            .samples
            .push(node_dials(&dialer, quic_target.peer_id(), quic_addr.clone()).await?);

        // A Noise-only stock peer: refused TLS first, then (same identity, new process and
        // port) dialled with Noise at once.
        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let (addr, task) = listening_stock(key.clone(), Stock::Noise).await?;
        cases[2]
            .samples
            .push(node_dials(&dialer, peer, addr).await?);
        task.abort();
        let _ = task.await;
        let (addr, task) = listening_stock(key, Stock::Noise).await?;
        // The dialler's connections to the node targets stay: wait for the stock one only.
        let others = 2;
        let deadline = Instant::now() + Duration::from_secs(10);
        while dialer.handle().status().await?.connected_peers > others {
            if Instant::now() > deadline {
                bail!("the old stock connection stayed for 10 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        cases[3]
            .samples
            .push(node_dials(&dialer, peer, addr).await?);
        task.abort();

        let key = Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let (addr, task) = listening_stock(key, Stock::Tls).await?;
        cases[4]
            .samples
            .push(node_dials(&dialer, peer, addr).await?);
        task.abort();
        dialer.shutdown().await;

        for (case, security) in [(5, Stock::Noise), (6, Stock::Tls)] {
            let mut stock = stock_peer(Keypair::generate_ed25519(), security)?;
            let start = Instant::now();
            stock.dial(tcp_addr.clone())?;
            loop {
                match stock.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { .. } => break,
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        bail!("{}: {error}", cases[case].name)
                    }
                    _ => {}
                }
            }
            cases[case].samples.push(start.elapsed());
        }
    }
    target.shutdown().await;
    quic_target.shutdown().await;

    println!("Connection setup on loopback, {rounds} dials per case (ms):");
    println!();
    println!("| case | p50 (ms) | p95 (ms) | round trips on a real path |");
    println!("| --- | --- | --- | --- |");
    for case in &mut cases {
        case.samples.sort();
        let at = |q: f64| {
            let i = ((case.samples.len() as f64 - 1.0) * q).round() as usize;
            case.samples[i].as_secs_f64() * 1e3
        };
        println!(
            "| {} | {:.2} | {:.2} | {} |",
            case.name,
            at(0.5),
            at(0.95),
            case.round_trips
        );
    }
    Ok(())
}
