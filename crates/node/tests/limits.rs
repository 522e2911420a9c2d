//! Limits that keep one peer from taking what every peer shares, against real nodes on loopback.

mod common;

use std::time::Duration;

use common::*;
use punchgate::{
    Node,
    config::Allow,
    protocol::TUNNEL,
    tunnel::client::{NegotiateError, negotiate},
};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

/// One peer holds its share of B's tunnels (`max_tunnels_per_peer`, 2 here); its next tunnel is
/// refused with a reason that names the flag, while another peer is still served, and the first
/// peer is served again once one of its tunnels closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_peer_cannot_take_every_tunnel() {
    let echo = echo_server().await;
    let (a_config, c_config) = (config(&[TCP]), config(&[TCP]));
    let mut b_config = config(&[TCP]);
    b_config.max_tunnels_per_peer = 2;
    b_config.expose_to(
        format!("echo={echo}").parse().expect("expose"),
        Allow::Peers([a_config.peer_id(), c_config.peer_id()].into()),
    );
    let b = Node::start(b_config).await.expect("start B");
    let (a, c) = (
        Node::start(a_config).await.expect("start A"),
        Node::start(c_config).await.expect("start C"),
    );
    for node in [&a, &c] {
        node.handle()
            .dial_addr(b.peer_id(), b.listen_addrs()[0].clone())
            .await
            .expect("reach B");
    }
    let tunnel = |node: &Node| {
        let handle = node.handle().clone();
        let b = b.peer_id();
        async move {
            let (stream, _) = handle.open_stream(b, TUNNEL).await.expect("stream");
            let mut stream = stream.compat();
            negotiate(&mut stream, "echo", Duration::from_secs(10))
                .await
                .map(|()| stream)
        }
    };

    // Two tunnels, accepted and kept open (an echo would half-close them, and they would end).
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(tunnel(&a).await.expect("A's share"));
    }
    match tunnel(&a).await {
        Err(NegotiateError::Refused(reason)) => {
            assert!(reason.contains("--max-tunnels-per-peer"), "{reason}")
        }
        other => panic!("A's third tunnel: {:?}", other.map(|_| ())),
    }
    let mut other = tunnel(&c).await.expect("C is still served");
    echo_over(&mut other, b"another peer").await;

    drop(held.pop());
    // The share comes back when the serving side sees the tunnel close.
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(stream) = tunnel(&a).await {
                return stream;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(again.is_ok(), "A is served again after closing a tunnel");

    for node in [a, b, c] {
        node.shutdown().await;
    }
}
