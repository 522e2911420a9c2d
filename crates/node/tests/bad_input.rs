//! Bad input gets a clear refusal, closes only the offending stream or connection, and the node
//! goes on serving everyone else.

mod common;

use std::time::Duration;

use common::*;
use punchgate::{
    Node,
    node::{ConnectError, OpenError},
    protocol::{self, MAX_FRAME_LEN},
    tunnel::{
        client::{NegotiateError, negotiate},
        wire::{self, TunnelResponse},
    },
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

/// B exposes `echo` (a live echo server) and `dead` (a port nobody listens on); A is connected
/// to B. Returns (A, B, A's tunnel port to B's `echo`).
async fn pair() -> (Node, Node) {
    let echo = echo_server().await;
    let dead = {
        // Bind and drop: the port is then closed.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut a_config = config(&[TCP]);
    let a_only = punchgate::config::Allow::Peers([a_config.peer_id()].into());
    let mut b_config = config(&[TCP]);
    b_config.expose_to(
        format!("echo={echo}").parse().expect("expose"),
        a_only.clone(),
    );
    b_config.expose_to(format!("dead={dead}").parse().expect("expose"), a_only);
    b_config.timing.negotiation_timeout = Duration::from_millis(500);
    let b = Node::start(b_config).await.expect("start B");

    a_config.bootstrap = vec![bootstrap(&b, "tcp")];
    a_config.tunnels = vec![
        format!("{}:echo@0", b.peer_id()).parse().expect("tunnel"),
        format!("{}:nope@0", b.peer_id()).parse().expect("tunnel"),
    ];
    a_config.timing.connect_timeout = Duration::from_secs(3);
    let a = Node::start(a_config).await.expect("start A");
    (a, b)
}

/// Opens a raw tunnel stream from A to B.
async fn raw_stream(a: &Node, b: &Node) -> tokio_util::compat::Compat<libp2p::Stream> {
    let (stream, _) = a
        .handle()
        .open_stream(b.peer_id(), protocol::TUNNEL)
        .await
        .expect("stream");
    stream.compat()
}

async fn refusal<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let response: TunnelResponse = tokio::time::timeout(Duration::from_secs(5), wire::read(stream))
        .await
        .expect("answer in time")
        .expect("a response frame");
    assert!(!response.accepted);
    response.reason.expect("a reason")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_is_refused_with_a_reason_and_the_node_keeps_serving() {
    let (a, b) = pair().await;
    let within = Duration::from_secs(5);

    // Unknown service.
    let mut s = raw_stream(&a, &b).await;
    match negotiate(&mut s, "nope", within).await {
        Err(NegotiateError::Refused(reason)) => assert_eq!(reason, "unknown service 'nope'"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Exposed, but nothing listens there.
    let mut s = raw_stream(&a, &b).await;
    match negotiate(&mut s, "dead", within).await {
        Err(NegotiateError::Refused(reason)) => {
            assert!(
                reason.starts_with("service 'dead' is unreachable"),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A length prefix over the limit: refused before the body is read.
    let mut s = raw_stream(&a, &b).await;
    s.write_all(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes())
        .await
        .expect("write");
    s.flush().await.expect("flush");
    let reason = refusal(&mut s).await;
    assert!(reason.contains("exceeds the 65536-byte limit"), "{reason}");

    // Not JSON.
    let mut s = raw_stream(&a, &b).await;
    s.write_all(&[0, 0, 0, 3, b'{', b'x', b'}'])
        .await
        .expect("write");
    s.flush().await.expect("flush");
    let reason = refusal(&mut s).await;
    assert!(
        reason.starts_with("bad tunnel request: malformed frame"),
        "{reason}"
    );

    // A frame cut short by the client closing its side.
    let mut s = raw_stream(&a, &b).await;
    s.write_all(&[0, 0, 0, 10, b'{']).await.expect("write");
    s.shutdown().await.expect("half-close");
    let reason = refusal(&mut s).await;
    assert!(
        reason.contains("closed in the middle of a frame"),
        "{reason}"
    );

    // Silence: the request never comes.
    let mut s = raw_stream(&a, &b).await;
    let reason = refusal(&mut s).await;
    assert!(reason.starts_with("no tunnel request within"), "{reason}");

    // After all that, a real tunnel connection works.
    echo_round_trip(a.tunnel_addrs()[0], &payload(300_000, 3)).await;

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tunnel_closes_the_client_connection_and_others_still_work() {
    let (a, b) = pair().await;
    // `nope` is not exposed by B: the TCP connection is closed without a byte.
    let mut socket = tokio::net::TcpStream::connect(a.tunnel_addrs()[1])
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "no bytes from a refused tunnel");
    // The other tunnel port is unaffected, also concurrently with more refusals.
    let refused = async {
        for _ in 0..5 {
            let mut s = tokio::net::TcpStream::connect(a.tunnel_addrs()[1])
                .await
                .expect("connect");
            let _ = s.read(&mut buf).await;
        }
    };
    let data = payload(50_000, 9);
    let good = echo_round_trip(a.tunnel_addrs()[0], &data);
    tokio::join!(refused, good);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_peer_is_reported_not_found_within_the_connect_timeout() {
    let mut config = config(&[TCP]);
    config.timing.connect_timeout = Duration::from_secs(2);
    let a = Node::start(config).await.expect("start A");
    let stranger = libp2p::identity::Keypair::generate_ed25519()
        .public()
        .to_peer_id();
    let started = std::time::Instant::now();
    let err = a
        .handle()
        .open_stream(stranger, protocol::TUNNEL)
        .await
        .expect_err("nobody to reach");
    assert!(
        matches!(err, OpenError::Connect(ConnectError::NotFound(p)) if p == stranger),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    a.shutdown().await;
}
