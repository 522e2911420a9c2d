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

/// `max_connections` and `max_connections_per_peer`: a connection over either is refused, the
/// connections already open keep working, and a peer within the limits gets in once room is
/// made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limits_are_refused_and_the_rest_keep_working() {
    use futures::StreamExt as _;
    use libp2p::{
        SwarmBuilder, ping,
        swarm::{
            SwarmEvent,
            dial_opts::{DialOpts, PeerCondition},
        },
        tcp, tls, yamux,
    };

    let mut b_config = config(&[TCP]);
    b_config.max_connections = 2;
    b_config.max_connections_per_peer = 1;
    let b = Node::start(b_config).await.expect("start B");
    let b_addr = b.listen_addrs()[0].clone();

    // Per peer: a second connection from the same (stock) peer is refused.
    let mut stock = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            tls::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|_| ping::Behaviour::default())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    for _ in 0..2 {
        stock
            .dial(
                DialOpts::peer_id(b.peer_id())
                    .addresses(vec![b_addr.clone()])
                    .condition(PeerCondition::Always)
                    .build(),
            )
            .expect("dial");
    }
    let (mut opened, mut closed) = (0, 0);
    tokio::time::timeout(Duration::from_secs(10), async {
        while opened < 1 || closed < 1 {
            match stock.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => opened += 1,
                SwarmEvent::ConnectionClosed { .. }
                | SwarmEvent::OutgoingConnectionError { .. } => closed += 1,
                _ => {}
            }
        }
    })
    .await
    .expect("one connection kept, one refused");
    let stock_task = tokio::spawn(async move {
        loop {
            stock.select_next_some().await;
        }
    });

    let connected = |node: &Node| {
        let handle = node.handle().clone();
        async move { handle.status().await.expect("status").connected_peers }
    };
    // In total: B has one connection (the stock peer's); one more node fits, the next does not.
    let a = Node::start(config(&[TCP])).await.expect("start A");
    a.handle()
        .dial_addr(b.peer_id(), b_addr.clone())
        .await
        .expect("A fits");
    let c = Node::start(config(&[TCP])).await.expect("start C");
    // C's handshake completes, then B refuses the connection and closes it: C sees both.
    let mut c_events = c.handle().subscribe();
    let _ = c.handle().dial_addr(b.peer_id(), b_addr.clone()).await;
    let (mut opened, mut closed) = (false, false);
    tokio::time::timeout(Duration::from_secs(10), async {
        while !(opened && closed) {
            match c_events.recv().await {
                Ok(punchgate::NodeEvent::ConnectionEstablished { info })
                    if info.peer == b.peer_id() =>
                {
                    opened = true
                }
                Ok(punchgate::NodeEvent::ConnectionClosed { info }) if info.peer == b.peer_id() => {
                    closed = true
                }
                Ok(_) => {}
                Err(e) => panic!("C's events: {e}"),
            }
        }
    })
    .await
    .expect("C connected to B and B closed the connection");
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        while connected(&c).await > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "C is over B's limit and gets closed");
    assert_eq!(connected(&b).await, 2, "the stock peer and A stay");

    // Room made: the stock peer leaves, and C gets in and stays.
    stock_task.abort();
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let _ = c.handle().dial_addr(b.peer_id(), b_addr.clone()).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            if connected(&c).await == 1 {
                return;
            }
        }
    })
    .await;
    assert!(again.is_ok(), "C gets in once a connection closed");
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// B exposes an echo to A only, with `tweak` applied to B's config first; A is connected to B.
async fn echo_for_a(tweak: impl FnOnce(&mut punchgate::NodeConfig)) -> (Node, Node) {
    let echo = echo_server().await;
    let a_config = config(&[TCP]);
    let mut b_config = config(&[TCP]);
    tweak(&mut b_config);
    b_config.expose_to(
        format!("echo={echo}").parse().expect("expose"),
        Allow::Peers([a_config.peer_id()].into()),
    );
    let b = Node::start(b_config).await.expect("start B");
    let a = Node::start(a_config).await.expect("start A");
    a.handle()
        .dial_addr(b.peer_id(), b.listen_addrs()[0].clone())
        .await
        .expect("reach B");
    (a, b)
}

/// Opens a tunnel stream to `b` and negotiates `service` on it.
async fn tunnel_to(
    node: &Node,
    b: libp2p::PeerId,
    service: &str,
) -> Result<tokio_util::compat::Compat<libp2p::Stream>, NegotiateError> {
    let (stream, _) = node.handle().open_stream(b, TUNNEL).await.expect("stream");
    let mut stream = stream.compat();
    negotiate(&mut stream, service, Duration::from_secs(10))
        .await
        .map(|()| stream)
}

/// Writes one byte and echoes it back through an open tunnel, without closing it.
async fn ping_over(stream: &mut tokio_util::compat::Compat<libp2p::Stream>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(b"!").await.expect("write");
    let mut byte = [0; 1];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut byte))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&byte, b"!");
}

/// A peer that no `--allow` rule names holds streams that never finish their request. Before,
/// each of them held one of B's tunnel permits for the negotiation timeout (10 s), so a
/// stranger with `max_tunnels` streams locked every named peer out; now strangers are refused on
/// permits of their own, and the named peer's tunnel is served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_never_hold_the_permits_named_peers_use() {
    use tokio::io::AsyncWriteExt as _;

    let (a, b) = echo_for_a(|b| b.max_tunnels = 2).await;
    let stranger = Node::start(config(&[TCP]))
        .await
        .expect("start the stranger");
    stranger
        .handle()
        .dial_addr(b.peer_id(), b.listen_addrs()[0].clone())
        .await
        .expect("reach B");

    // Ten streams, each with the first byte of a request's length and nothing more.
    let mut silent = Vec::new();
    for _ in 0..10 {
        let (stream, _) = stranger
            .handle()
            .open_stream(b.peer_id(), TUNNEL)
            .await
            .expect("stream");
        let mut stream = stream.compat();
        stream.write_all(&[0]).await.expect("write");
        stream.flush().await.expect("flush");
        silent.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let served = tokio::time::timeout(Duration::from_secs(3), tunnel_to(&a, b.peer_id(), "echo"))
        .await
        .expect("A is served while the stranger's streams wait")
        .expect("A's tunnel");
    let mut served = served;
    ping_over(&mut served).await;

    // What the stranger hears when it does ask: the words a missing service gets.
    match tunnel_to(&stranger, b.peer_id(), "echo").await {
        Err(NegotiateError::Refused(reason)) => {
            assert_eq!(reason, punchgate::tunnel::server::unknown_service("echo"))
        }
        other => panic!("the stranger's request: {:?}", other.map(|_| ())),
    }
    drop(silent);
    for node in [a, b, stranger] {
        node.shutdown().await;
    }
}

/// `max_streams_per_connection`: a stream past the cap is refused on its own (reset), the
/// streams already open keep working on the same connection, and a new stream is taken once one
/// closes. (Past yamux's own limit, the whole connection would close.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_the_cap_is_refused_and_the_connection_stays() {
    let (a, b) = echo_for_a(|b| b.max_streams_per_connection = 4).await;
    let connection = || async {
        a.handle()
            .connect(b.peer_id())
            .await
            .expect("connected")
            .connection
    };
    let before = connection().await;
    let mut events = a.handle().subscribe();

    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(
            tunnel_to(&a, b.peer_id(), "echo")
                .await
                .expect("within the cap"),
        );
    }
    match tokio::time::timeout(Duration::from_secs(10), tunnel_to(&a, b.peer_id(), "echo")).await {
        Ok(Err(NegotiateError::Refused(reason))) => panic!("refused in words: {reason}"),
        Ok(Err(_)) => {}
        Ok(Ok(_)) => panic!("a fifth stream was served past the cap of 4"),
        Err(_) => panic!("the fifth stream hung instead of being reset"),
    }
    for stream in &mut held {
        ping_over(stream).await;
    }
    assert_eq!(connection().await, before, "the same connection stays");
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, punchgate::NodeEvent::ConnectionClosed { .. }),
            "no connection closed: {event:?}"
        );
    }

    drop(held.pop());
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(stream) = tunnel_to(&a, b.peer_id(), "echo").await {
                return stream;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(again.is_ok(), "a stream is taken again once one closed");
    for node in [a, b] {
        node.shutdown().await;
    }
}

/// `tunnel_idle_timeout`: a tunnel that moves no byte for that long is closed by the serving
/// node; one that keeps moving bytes is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_and_a_busy_one_is_not() {
    use tokio::io::AsyncReadExt as _;

    let (a, b) = echo_for_a(|b| b.timing.tunnel_idle_timeout = Some(Duration::from_secs(1))).await;

    let mut idle = tunnel_to(&a, b.peer_id(), "echo").await.expect("tunnel");
    let mut busy = tunnel_to(&a, b.peer_id(), "echo").await.expect("tunnel");
    ping_over(&mut idle).await;
    let started = std::time::Instant::now();
    // The busy one moves a byte every 300 ms for 2.5 s, past the idle one's end.
    while started.elapsed() < Duration::from_millis(2500) {
        ping_over(&mut busy).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(1), idle.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the idle tunnel was closed by the serving node"
    );
    ping_over(&mut busy).await;
    for node in [a, b] {
        node.shutdown().await;
    }
}

/// `max_memory`: above the ceiling a node accepts no new connection and makes none, and the
/// dialler's error says why; a node under its ceiling connects as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_memory_ceiling_no_new_connection_is_made() {
    let mut b_config = config(&[TCP]);
    // Any process is over one byte.
    b_config.max_memory = 1;
    let b = Node::start(b_config).await.expect("start B");
    let a = Node::start(config(&[TCP])).await.expect("start A");

    let inbound = a
        .handle()
        .dial_addr(b.peer_id(), b.listen_addrs()[0].clone())
        .await;
    assert!(inbound.is_err(), "B accepted a connection over its ceiling");
    let outbound = b
        .handle()
        .dial_addr(a.peer_id(), a.listen_addrs()[0].clone())
        .await
        .expect_err("B dialled over its ceiling");
    assert!(
        outbound.to_string().contains("memory"),
        "the error names the memory limit: {outbound}"
    );

    let c = Node::start(config(&[TCP])).await.expect("start C");
    c.handle()
        .dial_addr(a.peer_id(), a.listen_addrs()[0].clone())
        .await
        .expect("C and A are under the default ceiling");
    for node in [a, b, c] {
        node.shutdown().await;
    }
}

/// Introductions a relay makes per requester: the 21st request within a minute is refused with
/// a reason that says so (the first 20 get the relay's ordinary answer, here "not connected").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_gets_at_most_twenty_introductions_a_minute() {
    let relay = Node::start(config(&[TCP])).await.expect("start the relay");
    let a = Node::start(config(&[TCP])).await.expect("start A");
    a.handle()
        .dial_addr(relay.peer_id(), relay.listen_addrs()[0].clone())
        .await
        .expect("reach the relay");
    let target = libp2p::PeerId::random().to_string();
    let mut reasons = Vec::new();
    for _ in 0..21 {
        let (stream, _) = a
            .handle()
            .open_stream(relay.peer_id(), punchgate::protocol::INTRODUCE)
            .await
            .expect("stream");
        let mut stream = stream.compat();
        punchgate::frame::write(
            &mut stream,
            &serde_json::json!({ "target": target, "listen_ports": [] }),
        )
        .await
        .expect("request");
        let answer: serde_json::Value = punchgate::frame::read(&mut stream).await.expect("answer");
        assert_eq!(answer["ok"], false, "{answer}");
        reasons.push(answer["reason"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        reasons[..20]
            .iter()
            .all(|r| r.contains("not directly connected")),
        "{reasons:?}"
    );
    assert!(
        reasons[20].contains("too many introduction requests"),
        "{reasons:?}"
    );
    for node in [a, relay] {
        node.shutdown().await;
    }
}
