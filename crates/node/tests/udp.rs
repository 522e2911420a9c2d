//! UDP tunnels between real nodes on loopback, with real UDP sockets on both ends: many
//! clients at once, datagram boundaries from 1 to 65,507 bytes, idle sessions ending on either
//! side, refusals, and a flooding client that must not stall the others.

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
use tokio::net::UdpSocket;

/// The largest datagram a tunnel carries (and IPv4 allows).
const MAX_DATAGRAM: usize = 65_507;

/// B exposes a UDP echo service as `echo` to A (`allow` of it); A has a `--tunnel-udp` to
/// `service` on B. Both serve `/metrics`.
struct Pair {
    a: Node,
    /// A's config, for reloads.
    a_config: NodeConfig,
    b: Node,
    /// A's `--tunnel-udp` port.
    tunnel: SocketAddr,
}

impl Pair {
    async fn start(
        transport: &str,
        service: &str,
        tweak_a: impl FnOnce(&mut NodeConfig),
        tweak_b: impl FnOnce(&mut NodeConfig, &NodeConfig),
    ) -> Pair {
        let echo = udp_echo_server().await;
        let mut a_config = config(&[transport]);
        a_config.metrics = Some("127.0.0.1:0".parse().expect("addr"));
        let mut b_config = config(&[transport]);
        b_config.metrics = Some("127.0.0.1:0".parse().expect("addr"));
        b_config.expose_to(
            ExposeSpec::udp(&format!("echo={echo}")).expect("expose-udp"),
            Allow::Peers([a_config.peer_id()].into()),
        );
        tweak_b(&mut b_config, &a_config);
        let b = Node::start(b_config).await.expect("start B");
        a_config.bootstrap = vec![bootstrap(&b, transport_name(transport))];
        a_config.tunnels = vec![
            TunnelSpec::udp(&format!("{}:{service}@127.0.0.1:0", b.peer_id())).expect("tunnel-udp"),
        ];
        tweak_a(&mut a_config);
        let a = Node::start(a_config.clone()).await.expect("start A");
        let tunnel = a.tunnel_addrs()[0];
        Pair {
            a,
            a_config,
            b,
            tunnel,
        }
    }

    async fn stop(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

fn transport_name(transport: &str) -> &'static str {
    if transport.contains("quic") {
        "quic"
    } else {
        "tcp"
    }
}

/// A client of the tunnel: its own socket, so its own source address and session.
async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("bind client")
}

/// Sends `datagram` to `to` until the same datagram comes back (every 500 ms, for up to
/// `within`): UDP may lose one, a tunnel must not mix them up. A reply that is not one this
/// client sent fails the test.
async fn exchange(socket: &UdpSocket, to: SocketAddr, datagram: &[u8], within: Duration) {
    let mut buf = vec![0; 65_536];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        socket.send_to(datagram, to).await.expect("send");
        let wait = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                received = socket.recv_from(&mut buf) => {
                    let (n, from) = received.expect("receive");
                    assert_eq!(from, to, "a reply from the tunnel port");
                    if &buf[..n] == datagram {
                        return;
                    }
                    // An earlier datagram of ours, answered late: same client, same prefix.
                    assert_eq!(
                        buf[..8.min(n)],
                        datagram[..8.min(datagram.len())],
                        "a reply meant for another client ({n} bytes)"
                    );
                }
                () = &mut wait => break,
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no echo of a {}-byte datagram within {within:?}",
            datagram.len()
        );
    }
}

/// A datagram of `len` bytes (at least 8) that starts with `client` and `seq`.
fn datagram(client: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut d = payload(len.max(8), u64::from(client) << 32 | u64::from(seq));
    d[..4].copy_from_slice(&client.to_be_bytes());
    d[4..8].copy_from_slice(&seq.to_be_bytes());
    d
}

async fn scrape(node: &Node) -> Vec<common::metrics::Sample> {
    let (status, _, text) = get(node.metrics_addr().expect("metrics"), "/metrics").await;
    assert_eq!(status, 200);
    parse_exposition(&text)
}

/// 24 clients at once, each with its own source port, 20 datagrams each of sizes up to 1,400
/// bytes: every reply reaches the client that sent the request, intact.
async fn many_clients(transport: &str) {
    let pair = Pair::start(transport, "echo", |_| {}, |_, _| {}).await;
    let clients = (0..24u32).map(|c| {
        let to = pair.tunnel;
        async move {
            let socket = client().await;
            for seq in 0..20u32 {
                let len = 8 + (c as usize * 97 + seq as usize * 61) % 1_393;
                exchange(&socket, to, &datagram(c, seq, len), Duration::from_secs(20)).await;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(90), futures::future::join_all(clients))
        .await
        .expect("every client done in time");
    // One session per client on each side, listed as UDP.
    let sessions = pair.a.tunnels();
    assert_eq!(sessions.len(), 24, "{sessions:?}");
    assert!(
        sessions
            .iter()
            .all(|t| t.protocol == "udp" && t.side == "carried")
    );
    let samples = scrape(&pair.b).await;
    let to_service = value(
        &samples,
        "punchgate_udp_datagrams_total",
        &[
            ("service", "echo"),
            ("side", "served"),
            ("direction", "to_service"),
        ],
    );
    assert!(
        to_service >= 480.0,
        "B counted {to_service} datagrams to the service"
    );
    pair.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_each_get_their_own_replies_over_tcp() {
    many_clients(TCP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_each_get_their_own_replies_over_quic() {
    many_clients(QUIC).await;
}

/// Every datagram comes back as one datagram of the size sent, for sizes from 1 byte to the
/// IPv4 maximum: one at a time, then a burst of many sizes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagram_boundaries_hold_from_1_to_65507_bytes() {
    let pair = Pair::start(TCP, "echo", |_| {}, |_, _| {}).await;
    let socket = client().await;
    let mut sizes: Vec<usize> = (1..=64).collect();
    let mut len = 65;
    while len < MAX_DATAGRAM {
        sizes.push(len);
        len = len * 5 / 4 + 7;
    }
    sizes.extend([
        255,
        256,
        257,
        1_280,
        1_420,
        1_472,
        1_500,
        8_192,
        9_000,
        16_384,
        32_768,
        65_535 - 28 - 1,
        MAX_DATAGRAM,
    ]);
    for (seq, len) in sizes.iter().enumerate() {
        let mut d = payload(*len, seq as u64);
        if *len >= 8 {
            d[..8].copy_from_slice(&[0, 0, 0, 0, 0, 0, 0, seq as u8]);
        }
        exchange(&socket, pair.tunnel, &d, Duration::from_secs(10)).await;
    }
    // A burst of 100 datagrams up to 1,400 bytes (as a VPN sends them), at once: each that comes
    // back is exactly one that was sent.
    let sent: Vec<Vec<u8>> = (0..100u32)
        .map(|seq| datagram(7, seq, 8 + (seq as usize * 331) % 1_393))
        .collect();
    for d in &sent {
        socket.send_to(d, pair.tunnel).await.expect("send");
    }
    let mut buf = vec![0; 65_536];
    let mut back = 0;
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await
    {
        let seq = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
        assert_eq!(
            &buf[..n],
            &sent[seq][..],
            "datagram {seq} came back changed"
        );
        back += 1;
    }
    assert!(
        back >= 90,
        "only {back} of 100 datagrams of a burst came back"
    );
    pair.stop().await;
}

/// Waits until `node` has `n` tunnels open.
async fn tunnels_become(node: &Node, n: usize, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while node.tunnels().len() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} tunnels open, not {n}, after {within:?}: {:?}",
            node.tunnels().len(),
            node.tunnels()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session idle for the client's `--udp-idle-timeout` ends on both sides; the next
/// datagram from the same client opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_ends_on_both_sides_when_the_client_side_times_out() {
    let pair = Pair::start(
        TCP,
        "echo",
        |a| a.timing.udp_idle_timeout = Duration::from_secs(1),
        |_, _| {},
    )
    .await;
    let socket = client().await;
    exchange(
        &socket,
        pair.tunnel,
        &datagram(1, 1, 100),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(pair.a.tunnels().len(), 1);
    tunnels_become(&pair.b, 1, Duration::from_secs(5)).await;
    // B's own timeout is 60 s: it ends because A closed the stream.
    tunnels_become(&pair.a, 0, Duration::from_secs(5)).await;
    tunnels_become(&pair.b, 0, Duration::from_secs(5)).await;
    exchange(
        &socket,
        pair.tunnel,
        &datagram(1, 2, 100),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(pair.a.tunnels().len(), 1, "a new session");
    pair.stop().await;
}

/// The same when the serving side times out first: the client's session ends with the
/// stream, and the client's next datagram starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_ends_on_both_sides_when_the_serving_side_times_out() {
    let pair = Pair::start(
        TCP,
        "echo",
        |_| {},
        |b, _| b.timing.udp_idle_timeout = Duration::from_secs(1),
    )
    .await;
    let socket = client().await;
    exchange(
        &socket,
        pair.tunnel,
        &datagram(2, 1, 100),
        Duration::from_secs(10),
    )
    .await;
    tunnels_become(&pair.b, 1, Duration::from_secs(5)).await;
    tunnels_become(&pair.b, 0, Duration::from_secs(5)).await;
    tunnels_become(&pair.a, 0, Duration::from_secs(5)).await;
    exchange(
        &socket,
        pair.tunnel,
        &datagram(2, 2, 100),
        Duration::from_secs(10),
    )
    .await;
    tunnels_become(&pair.b, 1, Duration::from_secs(5)).await;
    pair.stop().await;
}

/// Sends a few datagrams to a refused service and checks none comes back.
async fn nothing_comes_back(tunnel: SocketAddr) {
    let socket = client().await;
    for seq in 0..5 {
        socket
            .send_to(&datagram(9, seq, 64), tunnel)
            .await
            .expect("send");
    }
    let mut buf = vec![0; 65_536];
    let back = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await;
    assert!(back.is_err(), "a refused service answered");
}

/// A service B does not have and one whose `--allow` rule does not name A are refused the
/// same way (B counts which was which); a burst from one client asks once, and the datagrams
/// that follow are dropped and counted while new sessions wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_denied_services_are_refused_alike_and_asked_once() {
    // Denied: B's echo admits another peer only.
    let denied = Pair::start(
        TCP,
        "echo",
        |_| {},
        |b, _| {
            b.allow.clear();
            b.allow = vec![
                format!("echo={}", libp2p::PeerId::random())
                    .parse()
                    .expect("rule"),
            ];
        },
    )
    .await;
    nothing_comes_back(denied.tunnel).await;
    let b = scrape(&denied.b).await;
    assert_eq!(
        value(&b, "punchgate_tunnels_denied_total", &[("service", "echo")]),
        1.0,
        "one refusal for a burst of five datagrams"
    );
    let a = scrape(&denied.a).await;
    assert_eq!(
        value(
            &a,
            "punchgate_tunnels_refused_total",
            &[
                ("service", "echo"),
                ("side", "carried"),
                ("reason", "refused_by_peer")
            ]
        ),
        1.0
    );
    let dropped = value(
        &a,
        "punchgate_udp_datagrams_dropped_total",
        &[("service", "echo"), ("reason", "no_session")],
    );
    assert!(
        dropped >= 4.0,
        "A dropped {dropped} datagrams, not the 4 after the first"
    );
    denied.stop().await;

    // Unknown: A asks for a name B does not have.
    let unknown = Pair::start(TCP, "nothing", |_| {}, |_, _| {}).await;
    nothing_comes_back(unknown.tunnel).await;
    let b = scrape(&unknown.b).await;
    assert_eq!(
        value(
            &b,
            "punchgate_tunnels_refused_total",
            &[("service", "other"), ("reason", "unknown_service")]
        ),
        1.0
    );
    unknown.stop().await;
}

/// A `--tunnel-udp` to a TCP service is refused with the reason (the peer is admitted, so it
/// may know what kind of service it is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_tunnel_to_a_tcp_service_is_refused_with_the_reason() {
    let tcp_echo = echo_server().await;
    let pair = Pair::start(
        TCP,
        "web",
        |_| {},
        |b, a| {
            b.expose_to(
                format!("web={tcp_echo}")
                    .parse::<ExposeSpec>()
                    .expect("expose"),
                Allow::Peers([a.peer_id()].into()),
            );
        },
    )
    .await;
    nothing_comes_back(pair.tunnel).await;
    let b = scrape(&pair.b).await;
    assert_eq!(
        value(
            &b,
            "punchgate_tunnels_refused_total",
            &[("service", "web"), ("reason", "wrong_protocol")]
        ),
        1.0
    );
    pair.stop().await;
}

/// One client floods the tunnel far faster than it can carry: its datagrams are dropped (and
/// counted), while another client of the same port keeps getting every answer in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_is_dropped_and_never_stalls_another() {
    let pair = Pair::start(TCP, "echo", |_| {}, |_, _| {}).await;
    let quiet = client().await;
    exchange(
        &quiet,
        pair.tunnel,
        &datagram(1, 0, 100),
        Duration::from_secs(10),
    )
    .await;

    let to = pair.tunnel;
    let flood = tokio::spawn(async move {
        let socket = client().await;
        let big = datagram(2, 0, 32 * 1024);
        let until = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut sent = 0u64;
        while tokio::time::Instant::now() < until {
            for _ in 0..64 {
                if socket.send_to(&big, to).await.is_ok() {
                    sent += 1;
                }
            }
            tokio::task::yield_now().await;
        }
        sent
    });
    // While it floods, the quiet client's requests are answered (retried if the kernel drops
    // one from the full socket buffer), each within a few seconds.
    for seq in 1..=10 {
        exchange(
            &quiet,
            pair.tunnel,
            &datagram(1, seq, 100),
            Duration::from_secs(5),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent = flood.await.expect("flood");
    let a = scrape(&pair.a).await;
    let dropped = value(
        &a,
        "punchgate_udp_datagrams_dropped_total",
        &[
            ("service", "echo"),
            ("side", "carried"),
            ("reason", "queue_full"),
        ],
    );
    let carried = value(
        &a,
        "punchgate_udp_datagrams_total",
        &[
            ("service", "echo"),
            ("side", "carried"),
            ("direction", "to_service"),
        ],
    );
    println!("flood: {sent} sent, {carried} carried, {dropped} dropped at the queue");
    assert!(
        dropped > 0.0,
        "a flood of {sent} datagrams dropped none at the queue"
    );
    pair.stop().await;
}

/// A reload that removes a `--tunnel-udp` port ends its sessions (they answer from its socket)
/// and frees the address: the port added back on the same address works at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_closes_a_udp_port_with_its_sessions_and_it_can_come_back() {
    let mut pair = Pair::start(TCP, "echo", |_| {}, |_, _| {}).await;
    let socket = client().await;
    exchange(
        &socket,
        pair.tunnel,
        &datagram(3, 1, 100),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(pair.a.tunnels().len(), 1);

    let mut without = pair.a_config.clone();
    let spec = without.tunnels.pop().expect("the udp tunnel");
    let report = pair.a.reload(&without).await.expect("reload");
    assert_eq!(report.tunnels_removed, vec![pair.tunnel]);
    assert!(pair.a.tunnels().is_empty(), "{:?}", pair.a.tunnels());

    let mut back = without;
    back.tunnels.push(TunnelSpec {
        bind: pair.tunnel,
        ..spec
    });
    let report = pair.a.reload(&back).await.expect("reload");
    assert!(report.tunnel_errors.is_empty(), "{report:?}");
    assert_eq!(report.tunnels_added, vec![pair.tunnel]);
    exchange(
        &socket,
        pair.tunnel,
        &datagram(3, 2, 100),
        Duration::from_secs(10),
    )
    .await;
    pair.a_config = back;
    pair.stop().await;
}

/// A port carries at most `--max-udp-sessions` clients at once: the next new client's
/// datagrams are dropped and counted (the others go on), until a session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_carries_at_most_max_udp_sessions_clients() {
    let pair = Pair::start(
        TCP,
        "echo",
        |a| {
            a.max_udp_sessions = 2;
            a.timing.udp_idle_timeout = Duration::from_secs(2);
        },
        |_, _| {},
    )
    .await;
    let (one, two, three) = (client().await, client().await, client().await);
    exchange(
        &one,
        pair.tunnel,
        &datagram(1, 0, 64),
        Duration::from_secs(10),
    )
    .await;
    exchange(
        &two,
        pair.tunnel,
        &datagram(2, 0, 64),
        Duration::from_secs(10),
    )
    .await;
    let mut buf = vec![0; 65_536];
    three
        .send_to(&datagram(3, 0, 64), pair.tunnel)
        .await
        .expect("send");
    let back = tokio::time::timeout(Duration::from_secs(1), three.recv_from(&mut buf)).await;
    assert!(back.is_err(), "a third session was opened");
    let a = scrape(&pair.a).await;
    assert_eq!(
        value(
            &a,
            "punchgate_udp_datagrams_dropped_total",
            &[("service", "echo"), ("reason", "session_limit")]
        ),
        1.0
    );
    // The first two still work; once they have been idle for 2 s, the third gets its turn.
    exchange(
        &one,
        pair.tunnel,
        &datagram(1, 1, 64),
        Duration::from_secs(10),
    )
    .await;
    tunnels_become(&pair.a, 0, Duration::from_secs(10)).await;
    exchange(
        &three,
        pair.tunnel,
        &datagram(3, 1, 64),
        Duration::from_secs(10),
    )
    .await;
    pair.stop().await;
}

/// A session that had to start on a relay (A takes the relay at once, `--direct-wait 0`) moves
/// to the direct connection when the punch brings one: its next datagrams go direct, and
/// every exchange still comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_started_on_a_relay_moves_to_the_direct_connection() {
    let echo = udp_echo_server().await;
    let mut a_config = config(&[TCP]);
    let (relay, b, circuit) = relay_and_private_b(
        &a_config,
        ExposeSpec::udp(&format!("echo={echo}")).expect("expose-udp"),
    )
    .await;

    a_config.timing.direct_wait = Duration::ZERO;
    a_config.tunnels =
        vec![TunnelSpec::udp(&format!("{}:echo@127.0.0.1:0", b.peer_id())).expect("tunnel-udp")];
    let a = Node::start(a_config).await.expect("start A");
    let mut events = a.handle().subscribe();
    a.handle()
        .add_addresses(b.peer_id(), vec![circuit])
        .await
        .expect("add address");
    let first = a.handle().connect(b.peer_id()).await.expect("reach B");
    assert!(first.relayed, "the first path to B is the circuit");
    let tunnel = a.tunnel_addrs()[0];
    let socket = client().await;
    exchange(
        &socket,
        tunnel,
        &datagram(5, 0, 200),
        Duration::from_secs(10),
    )
    .await;
    // The punch may already have gone direct (and the session moved, or be moving: then it
    // is briefly not listed); if it is still on the relay, wait for the direct connection.
    let on_relay = a.tunnels();
    if on_relay.first().is_some_and(|t| t.path == "relayed") {
        wait_for(&mut events, Duration::from_secs(30), |e| match e {
            punchgate::NodeEvent::DirectConnection { peer, .. } if *peer == b.peer_id() => Some(()),
            _ => None,
        })
        .await;
    }
    // The session moves: one open session, on the direct path, and it still answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        exchange(
            &socket,
            tunnel,
            &datagram(5, 1, 200),
            Duration::from_secs(10),
        )
        .await;
        let now = a.tunnels();
        if now.len() == 1 && now[0].path == "direct" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session did not move: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for seq in 2..20 {
        exchange(
            &socket,
            tunnel,
            &datagram(5, seq, 1_420),
            Duration::from_secs(10),
        )
        .await;
    }
    a.shutdown().await;
    b.shutdown().await;
    relay.shutdown().await;
}

/// Hostile input on UDP tunnel streams, from the peer B admits: a request that is not JSON is
/// refused with a reason; after acceptance, a frame that claims more than 65,507 bytes ends
/// that session alone (its stream closes), and a real client's session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_end_only_their_own_session() {
    use punchgate::tunnel::{
        client::negotiate,
        udp::{FrameReader, encode},
        wire::{self, TunnelResponse},
    };
    use tokio::io::AsyncWriteExt as _;
    use tokio_util::compat::FuturesAsyncReadCompatExt as _;

    let pair = Pair::start(TCP, "echo", |_| {}, |_, _| {}).await;
    let socket = client().await;
    exchange(
        &socket,
        pair.tunnel,
        &datagram(8, 0, 100),
        Duration::from_secs(10),
    )
    .await;
    let raw = || async {
        let (stream, _) = pair
            .a
            .handle()
            .open_stream(pair.b.peer_id(), punchgate::protocol::UDP_TUNNEL)
            .await
            .expect("a udp tunnel stream");
        stream.compat()
    };

    // Not a request: refused, with the reason.
    let mut stream = raw().await;
    stream
        .write_all(&[0, 0, 0, 8, b'n', b'o', b't', b' ', b'j', b's', b'o', b'n'])
        .await
        .expect("write");
    let response: TunnelResponse =
        tokio::time::timeout(Duration::from_secs(5), wire::read(&mut stream))
            .await
            .expect("an answer in time")
            .expect("a response frame");
    assert!(!response.accepted);
    assert!(
        response
            .reason
            .is_some_and(|r| r.starts_with("bad tunnel request")),
        "the reason says what was wrong"
    );

    // Accepted; a good frame comes back, then a frame over the limit ends the session.
    let mut stream = raw().await;
    negotiate(&mut stream, "echo", Duration::from_secs(5))
        .await
        .expect("accepted");
    let mut frame = Vec::new();
    encode(&mut frame, b"hello");
    stream.write_all(&frame).await.expect("write");
    let (read, mut write) = tokio::io::split(stream);
    let mut frames = FrameReader::new(read);
    let back = tokio::time::timeout(Duration::from_secs(5), frames.next())
        .await
        .expect("the echo in time")
        .expect("a valid frame")
        .expect("a datagram")
        .to_vec();
    assert_eq!(back, b"hello");
    write
        .write_all(&[0xff, 0xff, 1, 2, 3])
        .await
        .expect("write");
    let end = tokio::time::timeout(Duration::from_secs(5), frames.next())
        .await
        .expect("the session ends in time");
    assert!(
        matches!(end, Ok(None) | Err(_)),
        "the stream ends instead of carrying on: {end:?}"
    );

    // The real client's session never noticed.
    for seq in 1..5 {
        exchange(
            &socket,
            pair.tunnel,
            &datagram(8, seq, 300),
            Duration::from_secs(10),
        )
        .await;
    }
    pair.stop().await;
}
