//! Stock rust-libp2p peers, built from libp2p's own crates with their default configurations
//! (not with Punchgate's transport code), against Punchgate nodes on loopback: whatever a stock
//! peer speaks (TCP with Noise only, TLS only or both, or QUIC), it connects, pings and
//! identifies a node, and a node reaches it (a Noise-only peer refuses TLS, then gets Noise); a
//! node reserves on a stock Noise-only relay, through which another node reaches it; and stock
//! relay clients reserve on a node, reach each other and nodes through it, and are reached by
//! nodes through it (Noise on the relayed connections).

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, identify,
    multiaddr::Protocol,
    noise, ping, relay,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, tls, yamux,
};
use punchgate::{Node, config::NatStatus};
use tokio::sync::mpsc;

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

/// What the stock peer speaks: TCP with one or both security protocols, or QUIC.
#[derive(Debug, Clone, Copy)]
enum Security {
    Noise,
    Tls,
    Both,
    Quic,
}

impl Security {
    const ALL: [Security; 4] = [Self::Noise, Self::Tls, Self::Both, Self::Quic];

    /// Where a stock peer of this kind listens, and which of a node's addresses it dials.
    fn transport(self) -> &'static str {
        match self {
            Self::Quic => QUIC,
            _ => TCP,
        }
    }
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
        Security::Quic => SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_quic()
            .with_behaviour(stock_behaviour)
            .expect("behaviour")
            .build(),
    }
}

/// A stock peer listening on loopback, served by a task of its own (abort it to stop the peer).
async fn listening_stock(security: Security) -> (PeerId, Multiaddr, tokio::task::JoinHandle<()>) {
    let mut stock = stock_peer(security);
    stock
        .listen_on(security.transport().parse().expect("addr"))
        .expect("listen");
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = stock.select_next_some().await {
            break address;
        }
    };
    let id = *stock.local_peer_id();
    let serve = tokio::spawn(async move {
        loop {
            stock.select_next_some().await;
        }
    });
    (id, addr, serve)
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
async fn stock_peers_over_tcp_with_noise_tls_or_both_or_over_quic_connect_ping_and_identify() {
    let node = Node::start(config(&[TCP, QUIC])).await.expect("start");
    for security in Security::ALL {
        let addr = node
            .listen_addrs()
            .iter()
            .find(|a| listens_on(a, security.transport()))
            .expect("an address")
            .clone();
        stock_dials(security, node.peer_id(), addr).await;
    }
    node.shutdown().await;
}

/// Whether `addr` is of the kind `listen` (`TCP` or `QUIC`) asks for.
fn listens_on(addr: &Multiaddr, listen: &str) -> bool {
    let quic = addr.iter().any(|p| matches!(p, Protocol::QuicV1));
    quic == (listen == QUIC)
}

/// A Punchgate node dialling stock peers: TLS and both-protocol peers take TLS at once, a
/// Noise-only peer refuses it and the node dials again with Noise, QUIC just works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_stock_peers_of_every_kind() {
    let node = Node::start(config(&[TCP])).await.expect("start");
    for security in Security::ALL {
        let (stock_id, addr, serve) = listening_stock(security).await;
        node.handle()
            .dial_addr(stock_id, addr)
            .await
            .unwrap_or_else(|e| panic!("{security:?}: a node cannot reach the stock peer: {e}"));
        serve.abort();
    }
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
            "--no-upnp",
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
/// A node reserves on it, another reaches that node through it, then tunnels 512 KiB to it.
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

    let echo = echo_server().await;
    let a_config = config(&[TCP]);
    let mut b_config = config(&[TCP]);
    b_config.bootstrap = vec![relay_addr.to_string().parse().expect("bootstrap")];
    b_config.nat_override = Some(NatStatus::Private);
    b_config.expose_to(
        format!("echo={echo}").parse().expect("expose"),
        punchgate::config::Allow::Peers([a_config.peer_id()].into()),
    );
    let b = Node::start(b_config).await.expect("start B");
    let circuit = reserved(b.handle(), Duration::from_secs(30)).await;

    let a = Node::start(a_config).await.expect("start A");
    let info = a
        .handle()
        .dial_addr(b.peer_id(), circuit)
        .await
        .expect("A reaches B through the stock relay");
    assert!(info.relayed, "{info:?}");
    assert_eq!(info.relay, Some(relay_id));

    // A tunnel: the stock relay's circuits are short (2 min, 128 KiB), so it waits for the
    // direct connection the nodes punch through it, and carries more than a circuit could.
    let (stream, path) = a
        .handle()
        .open_stream(b.peer_id(), punchgate::protocol::TUNNEL)
        .await
        .expect("a tunnel stream to B");
    assert!(
        !path.relayed,
        "a tunnel never rides a short circuit: {path:?}"
    );
    let mut stream = tokio_util::compat::FuturesAsyncReadCompatExt::compat(stream);
    punchgate::tunnel::client::negotiate(&mut stream, "echo", Duration::from_secs(10))
        .await
        .expect("echo accepted");
    let data = payload(512 << 10, 3);
    tokio::time::timeout(Duration::from_secs(30), echo_over(&mut stream, &data))
        .await
        .expect("echoed within 30 s");

    a.shutdown().await;
    b.shutdown().await;
    serve.abort();
}

#[derive(NetworkBehaviour)]
struct StockClient {
    relay: relay::client::Behaviour,
    ping: ping::Behaviour,
    identify: identify::Behaviour,
}

/// A stock relay client as rust-libp2p's examples build one: Noise over TCP and over circuits.
fn stock_relay_client() -> Swarm<StockClient> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .expect("relay client")
        .with_behaviour(|key, relay| StockClient {
            relay,
            ping: ping::Behaviour::new(
                ping::Config::new().with_interval(Duration::from_millis(200)),
            ),
            identify: identify::Behaviour::new(identify::Config::new(
                "/ipfs/id/1.0.0".to_owned(),
                key.public(),
            )),
        })
        .expect("behaviour")
        .build()
}

/// Work for a stock swarm's task.
type Job = Box<dyn FnOnce(&mut Swarm<StockClient>) + Send>;

/// A stock swarm running in a task of its own: the test sends it work and reads its events.
struct Driven {
    peer: PeerId,
    work: mpsc::UnboundedSender<Job>,
    events: mpsc::UnboundedReceiver<SwarmEvent<StockClientEvent>>,
}

impl Driven {
    fn spawn(mut swarm: Swarm<StockClient>) -> Self {
        let peer = *swarm.local_peer_id();
        let (work, mut todo) = mpsc::unbounded_channel::<Job>();
        let (tell, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    job = todo.recv() => match job {
                        Some(job) => job(&mut swarm),
                        None => break,
                    },
                    event = swarm.select_next_some() => {
                        if tell.send(event).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Self { peer, work, events }
    }

    fn run(&self, job: impl FnOnce(&mut Swarm<StockClient>) + Send + 'static) {
        self.work.send(Box::new(job)).expect("the stock peer runs");
    }

    /// Waits up to 20 s for an event `pick` takes; panics naming `what` otherwise.
    async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&SwarmEvent<StockClientEvent>) -> Option<T>,
    ) -> T {
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(event) = self.events.recv().await {
                if let Some(found) = pick(&event) {
                    return Some(found);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(found)) => found,
            _ => panic!("stock peer {}: no {what} within 20 s", self.peer),
        }
    }

    /// Waits for a successful ping of `peer`.
    async fn pinged(&mut self, peer: PeerId, what: &str) {
        self.expect(what, |event| match event {
            SwarmEvent::Behaviour(StockClientEvent::Ping(ping::Event {
                peer: p,
                result: Ok(_),
                ..
            })) if *p == peer => Some(()),
            _ => None,
        })
        .await
    }
}

/// A public Punchgate node relays for stock relay clients that speak only Noise: one reserves a
/// slot on it, another stock peer reaches it through the node, a Punchgate node reaches it through
/// the node (it refuses TLS on the circuit; Noise follows), and it reaches a Punchgate node that
/// holds a reservation on the same relay (the node accepts Noise on a relayed connection). The
/// relay trusts nobody: all of it rides short circuits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_relay_clients_reserve_on_a_node_and_reach_nodes_and_each_other_through_it() {
    // A public node as its operator would run it: a known address, said to be external.
    let (mut r_config, _) = public_config();
    // Public whatever AutoNAT makes of loopback.
    r_config.nat_override = Some(NatStatus::Public);
    let relay = Node::start(r_config).await.expect("start R");
    let relay_addr = bootstrap(&relay, "tcp").addr.to_string();
    let via = |peer: PeerId| -> Multiaddr {
        format!("{relay_addr}/p2p-circuit/p2p/{peer}")
            .parse()
            .expect("circuit")
    };

    // C reserves a slot on the node.
    let mut c = Driven::spawn(stock_relay_client());
    let listen: Multiaddr = format!("{relay_addr}/p2p-circuit").parse().expect("addr");
    c.run(move |swarm| {
        swarm.listen_on(listen).expect("listen on the relay");
    });
    c.expect("reservation accepted by the node", |event| {
        matches!(
            event,
            SwarmEvent::Behaviour(StockClientEvent::Relay(
                relay::client::Event::ReservationReqAccepted { .. }
            ))
        )
        .then_some(())
    })
    .await;

    // Another stock peer reaches C through the node.
    let mut d = Driven::spawn(stock_relay_client());
    let to_c = via(c.peer);
    d.run(move |swarm| swarm.dial(to_c).expect("dial C"));
    d.pinged(c.peer, "ping of C through the node").await;

    // A Punchgate node reaches C through the node: TLS refused on the circuit, then Noise.
    let a = Node::start(config(&[TCP])).await.expect("start A");
    let info = a
        .handle()
        .dial_addr(c.peer, via(c.peer))
        .await
        .expect("A reaches the stock client through the node");
    assert!(info.relayed, "{info:?}");

    // C reaches a Punchgate node that holds a reservation on the same relay.
    let mut b_config = config(&[TCP]);
    b_config.bootstrap = vec![bootstrap(&relay, "tcp")];
    b_config.nat_override = Some(NatStatus::Private);
    let b = Node::start(b_config).await.expect("start B");
    let circuit = reserved(b.handle(), Duration::from_secs(20)).await;
    c.run(move |swarm| swarm.dial(circuit).expect("dial B"));
    c.pinged(b.peer_id(), "ping of B through the node").await;

    a.shutdown().await;
    b.shutdown().await;
    relay.shutdown().await;
}

/// A tunnel asked of a stock peer (which speaks no Punchgate protocol) fails as a refusal of the
/// protocol, not as a broken stream: outbound streams propose lazily, and the refusal that
/// arrives on the first read is recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_to_a_stock_peer_is_refused_as_an_unsupported_protocol() {
    use tokio_util::compat::FuturesAsyncReadCompatExt as _;

    let node = Node::start(config(&[TCP])).await.expect("start");
    let (stock_id, addr, serve) = listening_stock(Security::Tls).await;
    node.handle()
        .dial_addr(stock_id, addr)
        .await
        .expect("reach the stock peer");
    let (stream, _) = node
        .handle()
        .open_stream(stock_id, punchgate::protocol::TUNNEL)
        .await
        .expect("a lazily proposed stream opens at once");
    let mut stream = stream.compat();
    let result =
        punchgate::tunnel::client::negotiate(&mut stream, "echo", Duration::from_secs(10)).await;
    assert!(
        matches!(
            result,
            Err(punchgate::tunnel::client::NegotiateError::Unsupported)
        ),
        "{result:?}"
    );
    serve.abort();
    node.shutdown().await;
}
