//! Tunnels between real nodes on loopback: over TCP, over QUIC, and to a peer known only
//! through the DHT.

mod common;

use std::time::Duration;

use common::*;
use punchgate::{
    Node,
    config::{Allow, ExposeSpec, TunnelSpec},
};

/// Three peers: R (bootstrap), B (exposes an echo service), A (tunnels to B, whose address it
/// is given). Several
/// concurrent connections through the tunnel, each with its own payload, verified both ways.
async fn three_peer_tunnel(transport: &str) {
    let echo = echo_server().await;
    let relay = Node::start(config(&[transport])).await.expect("start R");

    // A knows B's address (as a second bootstrap peer): no DHT lookup needed.
    let mut a_config = config(&[transport]);
    let mut b_config = config(&[transport]);
    b_config.bootstrap = vec![bootstrap(&relay, transport_name(transport))];
    b_config.expose_to(
        format!("echo={echo}")
            .parse::<ExposeSpec>()
            .expect("expose"),
        Allow::Peers([a_config.peer_id()].into()),
    );
    let b = Node::start(b_config).await.expect("start B");

    a_config.bootstrap = vec![
        bootstrap(&relay, transport_name(transport)),
        bootstrap(&b, transport_name(transport)),
    ];
    a_config.tunnels = vec![
        format!("{}:echo@127.0.0.1:0", b.peer_id())
            .parse::<TunnelSpec>()
            .expect("tunnel"),
    ];
    let a = Node::start(a_config).await.expect("start A");
    let tunnel = a.tunnel_addrs()[0];

    let connections = (0..8u64).map(|i| {
        let data = payload(64 * 1024 + i as usize * 1000, i);
        async move { echo_round_trip(tunnel, &data).await }
    });
    tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all(connections),
    )
    .await
    .expect("tunnel round trips in time");

    a.shutdown().await;
    b.shutdown().await;
    relay.shutdown().await;
}

fn transport_name(transport: &str) -> &'static str {
    if transport.contains("quic") {
        "quic"
    } else {
        "tcp"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peer_tunnel_over_tcp() {
    three_peer_tunnel(TCP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peer_tunnel_over_quic() {
    three_peer_tunnel(QUIC).await;
}

/// A knows only the bootstrap node; B's addresses come from its signed DHT record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_to_a_peer_found_only_through_the_dht() {
    let echo = echo_server().await;
    let mut r_config = config(&[TCP]);
    r_config.timing.discovery_timeout = Duration::from_secs(2);
    let relay = Node::start(r_config).await.expect("start R");

    let mut b_config = config(&[TCP]);
    b_config.bootstrap = vec![bootstrap(&relay, "tcp")];
    b_config.expose_to(format!("echo={echo}").parse().expect("expose"), Allow::Any);
    let b = Node::start(b_config).await.expect("start B");
    // B has published its record once it participates.
    let mut b_events = b.handle().subscribe();
    wait_for(&mut b_events, Duration::from_secs(20), |e| match e {
        punchgate::NodeEvent::PhaseChanged { phase }
            if *phase == punchgate_machine::Phase::Participating =>
        {
            Some(())
        }
        _ => None,
    })
    .await;

    let mut a_config = config(&[TCP]);
    a_config.bootstrap = vec![bootstrap(&relay, "tcp")];
    a_config.tunnels = vec![format!("{}:echo@0", b.peer_id()).parse().expect("tunnel")];
    let a = Node::start(a_config).await.expect("start A");
    echo_round_trip(a.tunnel_addrs()[0], &payload(100_000, 7)).await;

    a.shutdown().await;
    b.shutdown().await;
    relay.shutdown().await;
}
