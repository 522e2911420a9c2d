//! Helpers for in-process tests: nodes on loopback with ephemeral ports, an echo server, and
//! waiting on node events instead of sleeping.
#![allow(dead_code, unreachable_pub)]

pub mod http;
pub mod metrics;

use std::{net::SocketAddr, time::Duration};

use libp2p::{Multiaddr, PeerId, identity::Keypair};
use punchgate::{
    Node, NodeEvent,
    config::{BootstrapAddr, NodeConfig},
    node::NodeHandle,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::broadcast,
};

pub const TCP: &str = "/ip4/127.0.0.1/tcp/0";
pub const QUIC: &str = "/ip4/127.0.0.1/udp/0/quic-v1";

/// Logs go to the test output when `RUST_LOG` is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A config for a loopback node: no mDNS (it would multicast on the host's network), AutoNAT
/// allowed to probe loopback peers, short discovery timeout.
pub fn config(listen: &[&str]) -> NodeConfig {
    init_logs();
    let mut config = NodeConfig::new(Keypair::generate_ed25519());
    config.listen = listen
        .iter()
        .map(|a| a.parse().expect("multiaddr"))
        .collect();
    config.mdns = false;
    config.upnp = false;
    config.autonat_private_ips = true;
    config.timing.discovery_timeout = Duration::from_secs(5);
    config
}

/// A config for a public loopback node as its operator would run it: a known TCP port, given
/// as its external address, so it relays and serves the DHT from the start (and a stock relay
/// client gets an address in its reservation). Returns the config and that address.
pub fn public_config() -> (NodeConfig, Multiaddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut config = config(&[&listen]);
    let addr: Multiaddr = listen.parse().expect("addr");
    config.external_addresses = vec![addr.clone()];
    (config, addr)
}

/// `addr/p2p/<peer>` as a bootstrap address.
pub fn bootstrap(node: &Node, transport: &str) -> BootstrapAddr {
    let addr = node
        .listen_addrs()
        .iter()
        .find(|a| a.to_string().contains(transport))
        .expect("listening on the transport")
        .clone();
    format!("{addr}/p2p/{}", node.peer_id())
        .parse()
        .expect("bootstrap addr")
}

/// Waits (bounded) for the first event matching `pred`.
pub async fn wait_for<T>(
    events: &mut broadcast::Receiver<NodeEvent>,
    within: Duration,
    mut pred: impl FnMut(&NodeEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(event) => {
                    if let Some(t) = pred(&event) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("node stopped"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching event within {within:?}"))
}

/// Waits (bounded) until `b` holds a relay reservation; returns its circuit address.
pub async fn reserved(b: &NodeHandle, within: Duration) -> Multiaddr {
    let mut events = b.subscribe();
    if let Some(addr) = b.status().await.ok().and_then(|s| {
        s.listen_addrs
            .into_iter()
            .find(|a| a.to_string().contains("p2p-circuit"))
    }) {
        return addr;
    }
    wait_for(&mut events, within, |e| match e {
        NodeEvent::RelayReservationAccepted { addr, .. } => Some(addr.clone()),
        _ => None,
    })
    .await
}

/// A relay R that trusts `a` and B (their circuits are long), and B behind "NAT" (private,
/// holding a reservation on R) exposing `expose` to `a` alone. Returns R, B and B's circuit
/// address on R.
pub async fn relay_and_private_b(
    a: &NodeConfig,
    expose: punchgate::config::ExposeSpec,
) -> (Node, Node, Multiaddr) {
    let mut b_config = config(&[TCP]);
    let mut r_config = config(&[TCP]);
    r_config.trust = vec![a.peer_id(), b_config.peer_id()];
    let relay = Node::start(r_config).await.expect("start R");
    b_config.bootstrap = vec![bootstrap(&relay, "tcp")];
    b_config.nat_override = Some(punchgate::config::NatStatus::Private);
    b_config.expose_to(
        expose,
        punchgate::config::Allow::Peers([a.peer_id()].into()),
    );
    let b = Node::start(b_config).await.expect("start B");
    let circuit = reserved(b.handle(), Duration::from_secs(20)).await;
    assert!(circuit.to_string().contains(&relay.peer_id().to_string()));
    (relay, b, circuit)
}

/// A TCP echo server on loopback; returns its address.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A UDP echo server on loopback: each datagram goes back to its sender as it came. Returns
/// its address.
pub async fn udp_echo_server() -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind udp echo");
    let addr = socket.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut buf = vec![0; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// Sends `payload` through `addr`, half-closes, and checks every byte comes back.
pub async fn echo_round_trip(addr: SocketAddr, payload: &[u8]) {
    let mut socket = TcpStream::connect(addr).await.expect("connect to tunnel");
    let (mut r, mut w) = socket.split();
    let send = async {
        w.write_all(payload).await.expect("write");
        w.shutdown().await.expect("half-close");
    };
    let receive = async {
        let mut back = Vec::with_capacity(payload.len());
        r.read_to_end(&mut back).await.expect("read echo");
        back
    };
    let ((), back) = tokio::join!(send, receive);
    assert_eq!(back.len(), payload.len(), "echoed length");
    assert!(back == payload, "echoed bytes differ");
}

/// Writes `payload` to `stream`, half-closes, and checks every byte comes back.
pub async fn echo_over<S>(stream: &mut S, payload: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let send = async {
        w.write_all(payload).await.expect("write");
        w.shutdown().await.expect("half-close");
    };
    let receive = async {
        let mut back = Vec::with_capacity(payload.len());
        r.read_to_end(&mut back).await.expect("read echo");
        back
    };
    let ((), back) = tokio::join!(send, receive);
    assert_eq!(back.len(), payload.len(), "echoed length");
    assert!(back == payload, "echoed bytes differ");
}

/// A deterministic pseudo-random payload (so a byte mix-up cannot go unnoticed).
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn multiaddr(s: &str) -> Multiaddr {
    s.parse().expect("multiaddr")
}

pub fn peer_of(node: &Node) -> PeerId {
    node.peer_id()
}
