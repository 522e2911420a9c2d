//! Operating a node: `/metrics` and `/status` scraped with a real HTTP client from running
//! nodes that tunnel real bytes, and reloads that change services, `--allow` rules and
//! `--tunnel` ports while tunnels are open.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{
    http::get,
    metrics::{parse_exposition, value},
    *,
};
use punchgate::{
    Node,
    config::{Allow, ExposeSpec, NodeConfig, TunnelSpec},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

fn metrics_config(listen: &str) -> NodeConfig {
    let mut config = config(&[listen]);
    config.metrics = Some("127.0.0.1:0".parse().expect("addr"));
    config
}

/// B exposes echo to A; A tunnels to it. Returns (echo address, A, B).
async fn pair(listen: &str) -> (Node, Node) {
    let echo = echo_server().await;
    let mut a_config = metrics_config(listen);
    let mut b_config = metrics_config(listen);
    b_config.expose_to(
        format!("echo={echo}")
            .parse::<ExposeSpec>()
            .expect("expose"),
        Allow::Peers([a_config.peer_id()].into()),
    );
    let b = Node::start(b_config).await.expect("start B");
    a_config.bootstrap = vec![bootstrap(&b, "tcp")];
    a_config.tunnels = vec![
        format!("{}:echo@127.0.0.1:0", b.peer_id())
            .parse::<TunnelSpec>()
            .expect("tunnel"),
    ];
    let a = Node::start(a_config).await.expect("start A");
    (a, b)
}

#[tokio::test]
async fn metrics_and_status_show_connections_tunnels_and_bytes() {
    let (a, b) = pair(TCP).await;
    let (a_http, b_http) = (
        a.metrics_addr().expect("A serves metrics"),
        b.metrics_addr().expect("B serves metrics"),
    );

    // Two tunnels' worth of bytes, and one tunnel held open while the status is read.
    echo_round_trip(a.tunnel_addrs()[0], &payload(100_000, 1)).await;
    echo_round_trip(a.tunnel_addrs()[0], &payload(50_000, 2)).await;
    let mut open = TcpStream::connect(a.tunnel_addrs()[0])
        .await
        .expect("connect");
    open.write_all(b"hello").await.expect("write");
    let mut back = [0; 5];
    open.read_exact(&mut back).await.expect("echo");

    let (status, content_type, text) = get(b_http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let samples = parse_exposition(&text);
    let served = [("service", "echo"), ("side", "served")];
    assert_eq!(
        value(&samples, "punchgate_tunnels_opened_total", &served),
        3.0
    );
    assert_eq!(value(&samples, "punchgate_tunnels", &served), 1.0);
    let to_service = value(
        &samples,
        "punchgate_tunnel_bytes_total",
        &[
            ("service", "echo"),
            ("side", "served"),
            ("direction", "to_service"),
        ],
    );
    assert_eq!(
        to_service, 150_005.0,
        "bytes to the service, counted as they move"
    );
    assert!(
        value(
            &samples,
            "punchgate_connections",
            &[("path", "direct"), ("transport", "tcp")]
        ) >= 1.0
    );
    // libp2p's own metrics are there too.
    assert!(value(&samples, "libp2p_swarm_connections_established_total", &[]) >= 1.0);
    assert!(value(&samples, "libp2p_bandwidth_bytes_total", &[]) > 150_000.0);

    // A's side: carried tunnels.
    let (_, _, text) = get(a_http, "/metrics").await;
    let samples = parse_exposition(&text);
    let carried = [("service", "echo"), ("side", "carried")];
    assert_eq!(
        value(&samples, "punchgate_tunnels_opened_total", &carried),
        3.0
    );
    assert_eq!(
        value(
            &samples,
            "punchgate_tunnel_bytes_total",
            &[
                ("service", "echo"),
                ("side", "carried"),
                ("direction", "from_service")
            ]
        ),
        150_005.0
    );
    // Bytes the client sent before the tunnel was accepted (sent with the request) count too.
    assert_eq!(
        value(
            &samples,
            "punchgate_tunnel_bytes_total",
            &[
                ("service", "echo"),
                ("side", "carried"),
                ("direction", "to_service")
            ]
        ),
        150_005.0
    );

    let (status, content_type, json) = get(b_http, "/status").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    let status: serde_json::Value = serde_json::from_str(&json).expect("status is JSON");
    assert_eq!(status["peer_id"], b.peer_id().to_string());
    assert!(["public", "private", "unknown"].contains(&status["nat"].as_str().expect("nat")));
    // B dialled nobody from its listen port: no observer has told it its mapping yet.
    for transport in ["quic", "tcp"] {
        let mapping = status["nat_mapping"][transport]
            .as_str()
            .expect("nat_mapping");
        assert!(!mapping.is_empty(), "{transport}: {mapping}");
    }
    assert_eq!(status["reservation"]["state"], "none");
    assert_eq!(status["services"][0]["name"], "echo");
    assert_eq!(status["services"][0]["allow"], a.peer_id().to_string());
    let connections = status["connections"].as_array().expect("connections");
    let to_a = connections
        .iter()
        .find(|c| c["peer"] == a.peer_id().to_string())
        .expect("a connection to A");
    assert_eq!(to_a["path"], "direct");
    assert_eq!(to_a["transport"], "tcp");
    let tunnels = status["tunnels"].as_array().expect("tunnels");
    assert_eq!(tunnels.len(), 1, "the open tunnel: {json}");
    assert_eq!(tunnels[0]["side"], "served");
    assert_eq!(tunnels[0]["service"], "echo");
    assert_eq!(tunnels[0]["peer"], a.peer_id().to_string());
    assert_eq!(tunnels[0]["path"], "direct");
    assert_eq!(tunnels[0]["bytes_to_service"], 5);
    assert_eq!(tunnels[0]["bytes_from_service"], 5);

    // The round trip shows once the first ping is back.
    let rtt = wait_for_status(a_http, |s| {
        s["connections"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["peer"] == b.peer_id().to_string()))
            .and_then(|c| c["rtt_ms"].as_f64())
    })
    .await;
    assert!((0.0..1000.0).contains(&rtt), "loopback round trip {rtt} ms");

    // Anything else is a clear 404.
    assert_eq!(get(b_http, "/nope").await.0, 404);
    // A DNS name that points at loopback (a rebinding web page) gets nothing.
    let (status, _, body) = common::http::get_as(b_http, "/status", "evil.example:9090").await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains(&b.peer_id().to_string()));
    assert_eq!(
        common::http::get_as(b_http, "/metrics", "localhost:9090")
            .await
            .0,
        200
    );

    drop(open);
    a.shutdown().await;
    b.shutdown().await;
}

/// Polls `/status` until `pick` finds something (at most 30 s).
async fn wait_for_status<T>(addr: SocketAddr, pick: impl Fn(&serde_json::Value) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, _, json) = get(addr, "/status").await;
        let status: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        if let Some(found) = pick(&status) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never showed it: {json}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_refused_tunnel_is_counted_under_its_reason_and_a_made_up_name_under_other() {
    let (a, b) = pair(TCP).await;
    // A asks B for a service B does not have: a refusal, counted under "other".
    let mut stream = a
        .handle()
        .open_stream(b.peer_id(), punchgate::protocol::TUNNEL)
        .await
        .expect("stream")
        .0;
    let mut stream = tokio_util::compat::FuturesAsyncReadCompatExt::compat(&mut stream);
    let refused =
        punchgate::tunnel::client::negotiate(&mut stream, "made-up", Duration::from_secs(10)).await;
    assert!(refused.is_err(), "{refused:?}");
    let (_, _, text) = get(b.metrics_addr().expect("metrics"), "/metrics").await;
    let samples = parse_exposition(&text);
    assert_eq!(
        value(
            &samples,
            "punchgate_tunnels_refused_total",
            &[("service", "other"), ("reason", "unknown_service")]
        ),
        1.0
    );
    assert!(
        !text.contains("made-up"),
        "a name the node does not have never becomes a label"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Reads from `socket` until EOF or an error; true if it ended within `within`.
async fn ends_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0; 1024];
    tokio::time::timeout(within, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_reload_that_removes_a_peer_closes_its_tunnels_and_keeps_the_others() {
    let echo = echo_server().await;
    let mut a_config = config(&[TCP]);
    let mut c_config = config(&[TCP]);
    let mut b_config = config(&[TCP]);
    let allow_both = Allow::Peers([a_config.peer_id(), c_config.peer_id()].into());
    let expose = format!("echo={echo}")
        .parse::<ExposeSpec>()
        .expect("expose");
    b_config.expose_to(expose.clone(), allow_both);
    let mut b = Node::start(b_config.clone()).await.expect("start B");
    let tunnel = format!("{}:echo@127.0.0.1:0", b.peer_id())
        .parse::<TunnelSpec>()
        .expect("tunnel");
    for c in [&mut a_config, &mut c_config] {
        c.bootstrap = vec![bootstrap(&b, "tcp")];
        c.tunnels = vec![tunnel.clone()];
    }
    let a = Node::start(a_config.clone()).await.expect("start A");
    let c = Node::start(c_config.clone()).await.expect("start C");

    // An open tunnel from each.
    let mut from_a = TcpStream::connect(a.tunnel_addrs()[0]).await.expect("A");
    let mut from_c = TcpStream::connect(c.tunnel_addrs()[0]).await.expect("C");
    for s in [&mut from_a, &mut from_c] {
        s.write_all(b"ping").await.expect("write");
        let mut back = [0; 4];
        s.read_exact(&mut back)
            .await
            .expect("echo before the reload");
    }
    assert_eq!(b.tunnels().len(), 2);

    // The operator takes A out of echo's rule.
    let mut reloaded = b_config.clone();
    reloaded.expose.clear();
    reloaded.allow.clear();
    reloaded.expose_to(expose, Allow::Peers([c_config.peer_id()].into()));
    let report = b.reload(&reloaded).await.expect("reload");
    assert_eq!(
        report.tunnels_closed,
        vec![("echo".to_owned(), a.peer_id())]
    );

    // A's open tunnel is closed; C's carries on.
    assert!(
        ends_within(&mut from_a, Duration::from_secs(10)).await,
        "A's tunnel closed by the reload"
    );
    from_c.write_all(b"still").await.expect("write");
    let mut back = [0; 5];
    from_c
        .read_exact(&mut back)
        .await
        .expect("C's tunnel survives the reload");
    assert_eq!(&back, b"still");
    // A new tunnel from A is refused (the port accepts, the tunnel ends at once); C's work.
    let mut again = TcpStream::connect(a.tunnel_addrs()[0])
        .await
        .expect("A again");
    let _ = again.write_all(b"x").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), again.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "A gets nothing through after the reload");
    echo_round_trip(c.tunnel_addrs()[0], &payload(10_000, 3)).await;

    drop((from_a, from_c));
    a.shutdown().await;
    c.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_reload_opens_and_closes_tunnel_ports_and_established_connections_carry_on() {
    let (mut a, b) = pair(TCP).await;
    let old_port = a.tunnel_addrs()[0];
    let mut open = TcpStream::connect(old_port).await.expect("connect");
    open.write_all(b"one").await.expect("write");
    let mut back = [0; 3];
    open.read_exact(&mut back).await.expect("echo");

    // The same service on a new port instead of the old one.
    let mut config = metrics_config(TCP);
    config.tunnels = vec![
        format!("{}:echo@127.0.0.1:0", b.peer_id())
            .parse::<TunnelSpec>()
            .expect("tunnel"),
    ];
    // A different spec (another bind) is a new port: port 0 differs from the old resolved one
    // only in the spec, so give the new one an explicit free port.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    config.tunnels[0].bind = free;
    let report = a.reload(&config).await.expect("reload");
    assert_eq!(report.tunnels_added, vec![free]);
    assert_eq!(report.tunnels_removed, vec![old_port]);
    assert_eq!(a.tunnel_addrs(), vec![free]);

    // The old port is closed, its connection still carries bytes, the new port works.
    assert!(
        TcpStream::connect(old_port).await.is_err(),
        "old port closed"
    );
    open.write_all(b"two").await.expect("write");
    open.read_exact(&mut back)
        .await
        .expect("the established tunnel carries on");
    assert_eq!(&back, b"two");
    echo_round_trip(free, &payload(20_000, 4)).await;

    // A port that cannot be bound is reported; the rest applies and the node goes on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let mut bad = config.clone();
    bad.tunnels.push(
        format!("{}:echo@{taken_addr}", b.peer_id())
            .parse::<TunnelSpec>()
            .expect("tunnel"),
    );
    let report = a.reload(&bad).await.expect("reload");
    assert_eq!(report.tunnel_errors.len(), 1, "{report:?}");
    assert_eq!(report.tunnel_errors[0].0, taken_addr);
    assert!(
        report.tunnel_errors[0]
            .1
            .contains("cannot bind tunnel port")
    );
    assert_eq!(a.tunnel_addrs(), vec![free]);
    echo_round_trip(free, &payload(1_000, 5)).await;

    drop(open);
    a.shutdown().await;
    b.shutdown().await;
}
