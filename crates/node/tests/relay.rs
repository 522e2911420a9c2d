//! Relaying on loopback: reservations, a tunnel through a circuit, and the switch to a direct
//! connection for later tunnel connections.

mod common;

use std::time::Duration;

use common::*;
use libp2p::Multiaddr;
use punchgate::{Node, NodeEvent, config::NatStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_through_a_relay_circuit_then_direct_for_new_connections() {
    let echo = echo_server().await;
    let mut a_config = config(&[TCP]);
    // R trusts both ends: their circuits are long.
    let (relay, b, circuit) =
        relay_and_private_b(&a_config, format!("echo={echo}").parse().expect("expose")).await;

    // A knows nothing but B's circuit address, and takes the relay at once.
    a_config.timing.direct_wait = Duration::ZERO;
    a_config.tunnels = vec![format!("{}:echo@0", b.peer_id()).parse().expect("tunnel")];
    let a = Node::start(a_config).await.expect("start A");
    a.handle()
        .add_addresses(b.peer_id(), vec![circuit])
        .await
        .expect("add address");
    let first = a.handle().connect(b.peer_id()).await.expect("reach B");
    assert!(
        first.relayed,
        "the first path to B is the circuit: {first:?}"
    );

    // A tunnel stream pinned to the circuit carries 2 MiB both ways: far beyond libp2p's default
    // 128 KiB circuit limit. It stays on the relay even once a direct connection exists.
    let stream = a
        .handle()
        .open_stream_on(&first, punchgate::protocol::TUNNEL)
        .await
        .expect("stream on the circuit");
    let mut stream = tokio_util::compat::FuturesAsyncReadCompatExt::compat(stream);
    punchgate::tunnel::client::negotiate(&mut stream, "echo", Duration::from_secs(10))
        .await
        .expect("echo accepted over the relay");
    let data = payload(2 << 20, 1);
    tokio::time::timeout(Duration::from_secs(60), echo_over(&mut stream, &data))
        .await
        .expect("relayed echo in time");

    let tunnel = a.tunnel_addrs()[0];
    // On loopback B is reachable, so the hole punch or the connection reversal gets a direct
    // connection; new tunnel connections must then use it.
    let direct = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let info = a.handle().connect(b.peer_id()).await.expect("path");
            if !info.relayed {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a direct connection in time");
    assert_ne!(direct.connection, first.connection);
    echo_round_trip(tunnel, &payload(100_000, 2)).await;

    a.shutdown().await;
    b.shutdown().await;
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reservation_is_retried() {
    // A relay that grants no reservations at all.
    let mut r_config = config(&[TCP]);
    r_config.relay.max_reservations = 0;
    let relay = Node::start(r_config).await.expect("start R");

    let mut b_config = config(&[TCP]);
    b_config.bootstrap = vec![bootstrap(&relay, "tcp")];
    b_config.nat_override = Some(NatStatus::Private);
    let b = Node::start(b_config).await.expect("start B");
    let mut events = b.handle().subscribe();
    let mut refusals = 0;
    wait_for(&mut events, Duration::from_secs(30), |e| match e {
        NodeEvent::RelayReservationFailed { relay: r, .. } if *r == relay.peer_id() => {
            refusals += 1;
            (refusals == 2).then_some(())
        }
        _ => None,
    })
    .await;
    b.shutdown().await;
    relay.shutdown().await;
}

/// A circuit dial started at the same moment as the dial of its relay (a `--bootstrap` dial,
/// or an explicit one) waits for that connection instead of failing at once; so does reaching
/// a peer whose only known address is a circuit. Fresh client nodes each time, so every round
/// races.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_dial_racing_its_relay_connection_waits_for_it() {
    // libp2p's relay admits 60 circuits a minute from one IP address: a relay (and a B behind
    // it) per part keeps every part under that.
    async fn relay_and_b() -> (Node, Node, Multiaddr) {
        let relay = Node::start(config(&[TCP])).await.expect("start R");
        let mut b_config = config(&[TCP]);
        b_config.bootstrap = vec![bootstrap(&relay, "tcp")];
        b_config.nat_override = Some(NatStatus::Private);
        let b = Node::start(b_config).await.expect("start B");
        let circuit = reserved(b.handle(), Duration::from_secs(20)).await;
        (relay, b, circuit)
    }
    let (relay, b, circuit) = relay_and_b().await;
    let relay_addr = bootstrap(&relay, "tcp").addr;

    for round in 0..50 {
        // The explicit race: the relay and the circuit through it, dialled together.
        let a = Node::start(config(&[TCP])).await.expect("start A");
        let (to_relay, to_b) = tokio::join!(
            a.handle().dial_addr(relay.peer_id(), relay_addr.clone()),
            a.handle().dial_addr(b.peer_id(), circuit.clone()),
        );
        to_relay.unwrap_or_else(|e| panic!("round {round}: relay dial: {e}"));
        let info = to_b.unwrap_or_else(|e| panic!("round {round}: circuit dial: {e}"));
        assert!(info.relayed, "round {round}: {info:?}");
        a.shutdown().await;
    }
    b.shutdown().await;
    relay.shutdown().await;

    let (relay, b, circuit) = relay_and_b().await;
    for round in 0..10 {
        // The bootstrap dial against an exact circuit dial (kaspa-p2p client, gRPC addresses).
        let mut a_config = config(&[TCP]);
        a_config.bootstrap = vec![bootstrap(&relay, "tcp")];
        let a = Node::start(a_config).await.expect("start A");
        a.handle()
            .dial_addr(b.peer_id(), circuit.clone())
            .await
            .unwrap_or_else(|e| panic!("bootstrap round {round}: circuit dial: {e}"));
        a.shutdown().await;
        // The bootstrap dial against reaching a peer known only by its circuit (--tunnel).
        let mut a_config = config(&[TCP]);
        a_config.bootstrap = vec![bootstrap(&relay, "tcp")];
        a_config.timing.connect_timeout = Duration::from_secs(10);
        let a = Node::start(a_config).await.expect("start A");
        a.handle()
            .add_addresses(b.peer_id(), vec![circuit.clone()])
            .await
            .expect("add address");
        a.handle()
            .connect(b.peer_id())
            .await
            .unwrap_or_else(|e| panic!("reach round {round}: {e}"));
        a.shutdown().await;
    }
    b.shutdown().await;
    relay.shutdown().await;
}
