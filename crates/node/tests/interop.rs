//! Stock rust-libp2p peers, built from libp2p's own crates with their default configurations
//! (not with Punchgate's transport code), against Punchgate nodes over TCP: whatever security
//! protocol the stock peer speaks (Noise only, TLS only, or both), it connects, pings and
//! identifies a node; a node reaches a Noise-only peer (TLS refused, then Noise); and a node
//! reserves on a stock Noise-only relay, through which another node reaches it.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, identify, noise, ping, relay,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, tls, yamux,
};
use punchgate::Node;

#[derive(NetworkBehaviour)]
struct Stock {
    ping: ping::Behaviour,
    identify: identify::Behaviour,
}

fn stock_behaviour(key: &libp2p::identity::Keypair) -> Stock {
    Stock {
        ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_millis(200))),
        identify: identify::Behaviour::new(identify::Config::new(
            "/ipfs/id/1.0.0".to_owned(),
            key.public(),
        )),
    }
}

/// Which security protocols the stock peer offers.
#[derive(Debug, Clone, Copy)]
enum Security {
    Noise,
    Tls,
    Both,
}

fn stock_peer(security: Security) -> Swarm<Stock> {
    // The builder's type changes with the security upgrade: one expansion per kind.
    macro_rules! stock {
        ($security:expr) => {
            SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(tcp::Config::default(), $security, yamux::Config::default)
                .expect("tcp")
                .with_behaviour(stock_behaviour)
                .expect("behaviour")
                .build()
        };
    }
    match security {
        Security::Noise => stock!(noise::Config::new),
        Security::Tls => stock!(tls::Config::new),
        Security::Both => stock!((tls::Config::new, noise::Config::new)),
    }
}

/// The stock peer dials `addr`; returns once it has pinged `node` and identified it as
/// Punchgate.
async fn stock_dials(security: Security, node: PeerId, addr: Multiaddr) {
    let mut stock = stock_peer(security);
    stock.dial(addr).expect("dial");
    let (mut pinged, mut identified) = (false, false);
    tokio::time::timeout(Duration::from_secs(20), async {
        while !(pinged && identified) {
            match stock.select_next_some().await {
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    panic!("{security:?}: the stock peer cannot connect: {error}")
                }
                SwarmEvent::Behaviour(StockEvent::Ping(ping::Event {
                    peer,
                    result: Ok(_),
                    ..
                })) if peer == node => pinged = true,
                SwarmEvent::Behaviour(StockEvent::Identify(identify::Event::Received {
                    peer_id,
                    info,
                    ..
                })) if peer_id == node => {
                    assert!(
                        info.agent_version.starts_with("punchgate/"),
                        "{}",
                        info.agent_version
                    );
                    identified = true;
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{security:?}: no ping and identify within 20 s"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_peers_with_noise_tls_or_both_connect_ping_and_identify() {
    let node = Node::start(config(&[TCP])).await.expect("start");
    let addr = node.listen_addrs()[0].clone();
    for security in [Security::Noise, Security::Tls, Security::Both] {
        stock_dials(security, node.peer_id(), addr.clone()).await;
    }
    node.shutdown().await;
}

/// A Punchgate node dialling a stock peer that speaks only Noise: TLS is refused, the node dials
/// again with Noise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_a_stock_noise_only_peer() {
    let mut stock = stock_peer(Security::Noise);
    stock
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = stock.select_next_some().await {
            break address;
        }
    };
    let stock_id = *stock.local_peer_id();
    tokio::spawn(async move {
        loop {
            stock.select_next_some().await;
        }
    });
    let node = Node::start(config(&[TCP])).await.expect("start");
    node.handle()
        .dial_addr(stock_id, addr)
        .await
        .expect("a node reaches a Noise-only peer");
    node.shutdown().await;
}

/// A bootstrap peer the node cannot reach is a WARN naming the peer, its role, the reason and
/// what to do: the real binary, at the default log level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_peer_that_cannot_be_reached_is_a_warning_that_says_why() {
    use std::io::BufRead as _;

    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let missing = PeerId::random();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_punchgate"))
        .args([
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
        ])
        .arg(format!(
            "/ip4/127.0.0.1/tcp/{}/p2p/{missing}",
            closed.port()
        ))
        .arg("--identity")
        .arg(dir.path().join("id.key"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let found = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|line| line.contains("dial failed"))
    });
    let line = tokio::time::timeout(Duration::from_secs(20), found)
        .await
        .expect("a warning within 20 s")
        .expect("reader")
        .expect("a 'dial failed' line");
    let _ = child.kill();
    let _ = child.wait();
    for wanted in [
        "WARN",
        &missing.to_string(),
        "bootstrap peer",
        "Connection refused",
        "check the address",
    ] {
        assert!(line.contains(wanted), "'{wanted}' not in: {line}");
    }
}

#[derive(NetworkBehaviour)]
struct StockRelay {
    relay: relay::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// rust-libp2p's relay server as its example program runs it: Noise over TCP, libp2p's default
/// relay limits (2 min, 128 KiB per circuit), serving once it has a confirmed external address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reserves_on_a_stock_relay_and_another_reaches_it_through_the_relay() {
    let mut stock = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|key| StockRelay {
            relay: relay::Behaviour::new(key.public().to_peer_id(), relay::Config::default()),
            identify: identify::Behaviour::new(identify::Config::new(
                "/ipfs/id/1.0.0".to_owned(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
        })
        .expect("behaviour")
        .build();
    stock
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = stock.select_next_some().await {
            break address;
        }
    };
    stock.add_external_address(addr.clone());
    let relay_id = *stock.local_peer_id();
    let serve = tokio::spawn(async move {
        loop {
            stock.select_next_some().await;
        }
    });
    let relay_addr: Multiaddr = format!("{addr}/p2p/{relay_id}").parse().expect("addr");

    let mut b_config = config(&[TCP]);
    b_config.bootstrap = vec![relay_addr.to_string().parse().expect("bootstrap")];
    b_config.nat_override = Some(punchgate::config::NatStatus::Private);
    let b = Node::start(b_config).await.expect("start B");
    let circuit = reserved(b.handle(), Duration::from_secs(30)).await;

    let a = Node::start(config(&[TCP])).await.expect("start A");
    let info = a
        .handle()
        .dial_addr(b.peer_id(), circuit)
        .await
        .expect("A reaches B through the stock relay");
    assert!(info.relayed, "{info:?}");
    assert_eq!(info.relay, Some(relay_id));

    a.shutdown().await;
    b.shutdown().await;
    serve.abort();
}
