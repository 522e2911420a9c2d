//! The bridge between real nodes on loopback: calls both ways, connect info, 8 MiB messages,
//! 100 connections opened at once, admission (the allow list, duplicate refusal), byte counters,
//! and a tunnel on the same node at the same time.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use libp2p::identity::Keypair;
use punchgate::{
    Node,
    config::{BootstrapAddr, NodeConfig},
};
use punchgate_grpc::{
    Allow, BridgeConfig, ConnectOptions, Incoming, P2pConnectInfo, Target, connect, connect_with,
    echo::{self, Echo, EchoServer, EchoService, Payload},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::{Request, Response, Status, Streaming};

fn config() -> NodeConfig {
    config_with(Keypair::generate_ed25519())
}

fn config_with(keypair: Keypair) -> NodeConfig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = NodeConfig::new(keypair);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
    config.mdns = false;
    config.upnp = false;
    config.autonat_private_ips = true;
    config
}

fn bootstrap(node: &Node) -> BootstrapAddr {
    format!("{}/p2p/{}", node.listen_addrs()[0], node.peer_id())
        .parse()
        .expect("bootstrap")
}

/// Echo that also records the connect info of every call.
#[derive(Clone, Default)]
struct Recording {
    seen: Arc<Mutex<Vec<P2pConnectInfo>>>,
}

#[tonic::async_trait]
impl Echo for Recording {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        if let Some(info) = request.extensions().get::<P2pConnectInfo>() {
            self.seen.lock().expect("lock").push(info.clone());
        }
        EchoService.unary(request).await
    }

    type StreamStream = <EchoService as Echo>::StreamStream;

    async fn stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        EchoService.stream(request).await
    }
}

struct Pair {
    server: Node,
    client: Node,
    bridge: BridgeConfig,
    seen: Arc<Mutex<Vec<P2pConnectInfo>>>,
}

/// Whom the test server allows.
#[derive(Clone, Copy)]
enum Allowed {
    /// The pair's client only.
    Client,
    /// Every peer.
    Any,
}

/// A server that allows only its client.
async fn pair(refuse_duplicates: bool, expose: Option<std::net::SocketAddr>) -> Pair {
    gated_pair(refuse_duplicates, expose, None, Allowed::Client).await
}

/// Like `pair`, but the server allows `allowed` and only starts taking connections once `gate`
/// fires.
async fn gated_pair(
    refuse_duplicates: bool,
    expose: Option<std::net::SocketAddr>,
    gate: Option<tokio::sync::oneshot::Receiver<()>>,
    allowed: Allowed,
) -> Pair {
    let client_key = Keypair::generate_ed25519();
    let allow = match allowed {
        Allowed::Client => Allow::Peers([client_key.public().to_peer_id()].into()),
        Allowed::Any => Allow::Any,
    };
    let mut server_config = config();
    if let Some(echo) = expose {
        // The tunnel admits whom the gRPC server admits.
        server_config.expose_to(
            format!("echo={echo}").parse().expect("expose"),
            allow.clone(),
        );
    }
    let server = Node::start(server_config).await.expect("server node");
    let mut client_config = config_with(client_key);
    client_config.bootstrap = vec![bootstrap(&server)];
    if expose.is_some() {
        client_config.tunnels = vec![
            format!("{}:echo@0", server.peer_id())
                .parse()
                .expect("tunnel"),
        ];
    }
    let client = Node::start(client_config).await.expect("client node");

    let bridge = BridgeConfig::default();
    let recording = Recording::default();
    let seen = recording.seen.clone();
    let mut incoming = Incoming::new(server.handle(), &bridge, allow).expect("accept gRPC");
    if refuse_duplicates {
        incoming = incoming.refuse_duplicate_peers();
    }
    let service = EchoServer::new(recording)
        .max_decoding_message_size(bridge.max_message_size)
        .max_encoding_message_size(bridge.max_message_size);
    let server_future = bridge
        .server()
        .add_service(service)
        .serve_with_incoming(incoming);
    tokio::spawn(async move {
        if let Some(gate) = gate {
            let _ = gate.await;
        }
        server_future.await
    });
    Pair {
        server,
        client,
        bridge,
        seen,
    }
}

fn target(node: &Node) -> Target {
    format!("punchgate://{}", node.peer_id())
        .parse()
        .expect("target")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_with_connect_info() {
    let p = pair(false, None).await;
    let channel = connect(p.client.handle(), &target(&p.server), &p.bridge)
        .await
        .expect("channel");
    let mut client = echo::client(channel, &p.bridge);
    let reply = client
        .unary(Payload {
            data: b"hello".to_vec(),
            reply_size: 0,
        })
        .await
        .expect("unary");
    assert_eq!(reply.into_inner().data, b"hello");

    let requests = futures::stream::iter((0..20u8).map(|i| Payload {
        data: vec![i; 1000],
        reply_size: 0,
    }));
    let mut replies = client.stream(requests).await.expect("stream").into_inner();
    let mut n = 0u8;
    while let Some(reply) = replies.message().await.expect("reply") {
        assert_eq!(reply.data, vec![n; 1000]);
        n += 1;
    }
    assert_eq!(n, 20);

    let seen = p.seen.lock().expect("lock").clone();
    let info = seen.first().expect("connect info recorded");
    assert_eq!(info.peer, p.client.peer_id());
    assert!(!info.relayed);
    assert_eq!(
        info.socket_addr,
        punchgate_grpc::stream::synthetic_socket_addr(&p.client.peer_id())
    );
    assert!(
        info.remote_addr
            .to_string()
            .starts_with("/ip4/127.0.0.1/tcp/")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_messages_pass_both_ways() {
    let p = pair(false, None).await;
    let channel = connect(p.client.handle(), &target(&p.server), &p.bridge)
        .await
        .expect("channel");
    let mut client = echo::client(channel, &p.bridge);
    let big = vec![7u8; 8 << 20];
    let reply = client
        .unary(Payload {
            data: big.clone(),
            reply_size: 0,
        })
        .await
        .expect("8 MiB unary");
    assert!(reply.into_inner().data == big);
    let reply = client
        .unary(Payload {
            data: Vec::new(),
            reply_size: 12 << 20,
        })
        .await
        .expect("12 MiB reply");
    assert_eq!(reply.into_inner().data.len(), 12 << 20);
}

/// 100 connections (libp2p streams) arrive while the server is not taking any: more than its
/// accept queue holds. They wait (backpressure) instead of being dropped, and every one is
/// served once the server starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_connections_opened_at_once_are_all_served() {
    const N: usize = 100;
    let (open_gate, gate) = tokio::sync::oneshot::channel();
    let p = gated_pair(false, None, Some(gate), Allowed::Client).await;
    assert!(N > p.bridge.accept_queue);
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (all_opened_tx, all_opened) = tokio::sync::watch::channel(0usize);
    let observer: punchgate_grpc::Observer = {
        let opened = opened.clone();
        Arc::new(move |_: &P2pConnectInfo| {
            let n = opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let _ = all_opened_tx.send(n);
        })
    };
    let calls = (0..N as u32).map(|i| {
        let (node, target, bridge, observer) = (
            p.client.handle().clone(),
            target(&p.server),
            p.bridge.clone(),
            observer.clone(),
        );
        async move {
            let options = ConnectOptions {
                relays: None,
                observer: Some(observer),
            };
            let channel = connect_with(&node, &target, &bridge, options)
                .await
                .expect("channel");
            let reply = echo::client(channel, &bridge)
                .unary(Payload {
                    data: i.to_be_bytes().to_vec(),
                    reply_size: 0,
                })
                .await
                .expect("served");
            assert_eq!(reply.into_inner().data, i.to_be_bytes());
        }
    });
    let calls = tokio::spawn(futures::future::join_all(calls));
    let mut all_opened = all_opened;
    tokio::time::timeout(Duration::from_secs(30), all_opened.wait_for(|n| *n == N))
        .await
        .expect("all streams opened in time")
        .expect("watch");
    // Every stream has reached the server and waits there, beyond its accept queue.
    let server = p.server.handle().clone();
    tokio::time::timeout(Duration::from_secs(30), async {
        while server.waiting(&p.bridge.protocol) < N {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("all streams waiting at the server");
    open_gate.send(()).expect("server waiting");
    tokio::time::timeout(Duration::from_secs(60), calls)
        .await
        .expect("all served in time")
        .expect("calls task");
    assert_eq!(p.seen.lock().expect("lock").len(), N);
}

/// A third node, a stranger to the pair's server, connected to it.
async fn stranger(server: &Node) -> Node {
    let mut config = config();
    config.bootstrap = vec![bootstrap(server)];
    Node::start(config).await.expect("stranger node")
}

/// Whether one echo call from `node` to `server` is served.
async fn served(node: &Node, server: &Node, bridge: &BridgeConfig) -> bool {
    // The libp2p stream may open (and tonic connect) before the server closes it.
    let Ok(channel) = connect(node.handle(), &target(server), bridge).await else {
        return false;
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        echo::client(channel, bridge).unary(Payload {
            data: b"who".to_vec(),
            reply_size: 0,
        }),
    )
    .await
    .expect("the call ends in time, served or refused")
    .is_ok_and(|reply| reply.into_inner().data == b"who")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_peer_is_served_and_a_stranger_refused() {
    let p = pair(false, None).await;
    assert!(served(&p.client, &p.server, &p.bridge).await, "allowed");
    let stranger = stranger(&p.server).await;
    for _ in 0..3 {
        assert!(
            !served(&stranger, &p.server, &p.bridge).await,
            "a peer not on the list must be refused"
        );
    }
    // The server goes on serving the peer it allows, on its existing and on new connections.
    let channel = connect(p.client.handle(), &target(&p.server), &p.bridge)
        .await
        .expect("channel");
    echo::client(channel, &p.bridge)
        .unary(Payload::default())
        .await
        .expect("allowed peer still served");
    assert!(
        served(&p.client, &p.server, &p.bridge).await,
        "still allowed"
    );
    // The refused calls never reached the service.
    let seen = p.seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|info| info.peer == p.client.peer_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_any_serves_every_peer() {
    let p = gated_pair(false, None, None, Allowed::Any).await;
    let stranger = stranger(&p.server).await;
    assert!(served(&stranger, &p.server, &p.bridge).await, "any peer");
    assert!(
        served(&p.client, &p.server, &p.bridge).await,
        "and the client"
    );
    let seen = p.seen.lock().expect("lock").clone();
    assert_eq!(seen[0].peer, stranger.peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_connection_can_be_refused() {
    let p = pair(true, None).await;
    let first = connect(p.client.handle(), &target(&p.server), &p.bridge)
        .await
        .expect("first channel");
    let mut first = echo::client(first, &p.bridge);
    first
        .unary(Payload::default())
        .await
        .expect("first connection works");
    // A second connection from the same peer while the first lives is refused.
    let second = connect(p.client.handle(), &target(&p.server), &p.bridge)
        .await
        .expect("the libp2p stream opens");
    let refused = echo::client(second, &p.bridge)
        .unary(Payload::default())
        .await;
    assert!(refused.is_err(), "duplicate must be refused");
    // The first keeps working; once it is gone a new one is admitted.
    first
        .unary(Payload::default())
        .await
        .expect("first unaffected");
    drop(first);
    let admitted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let channel = connect(p.client.handle(), &target(&p.server), &p.bridge)
                .await
                .expect("channel");
            if echo::client(channel, &p.bridge)
                .unary(Payload::default())
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        admitted.is_ok(),
        "a new connection is admitted after the first closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_counters_see_the_traffic_on_both_sides() {
    let p = pair(false, None).await;
    let client_side: Arc<Mutex<Vec<P2pConnectInfo>>> = Arc::default();
    let observer = {
        let client_side = client_side.clone();
        Arc::new(move |info: &P2pConnectInfo| client_side.lock().expect("lock").push(info.clone()))
    };
    let channel = connect_with(
        p.client.handle(),
        &target(&p.server),
        &p.bridge,
        ConnectOptions {
            relays: None,
            observer: Some(observer),
        },
    )
    .await
    .expect("channel");
    echo::client(channel, &p.bridge)
        .unary(Payload {
            data: vec![1; 300_000],
            reply_size: 200_000,
        })
        .await
        .expect("call");
    let client = client_side.lock().expect("lock")[0].counters.clone();
    let server = p.seen.lock().expect("lock")[0].counters.clone();
    assert!(
        client.tx() >= 300_000 && client.rx() >= 200_000,
        "client {client:?}"
    );
    // The server's counters see at least what the client sent (the reply may still be in flight
    // when it recorded the info, but not the request).
    assert!(server.rx() >= 300_000, "server {server:?}");
    assert!(
        client.tx() < 400_000,
        "HTTP/2 overhead stays small: {client:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_a_tunnel_share_one_node() {
    let echo_addr = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    };
    let p = pair(false, Some(echo_addr)).await;
    let channel = connect(p.client.handle(), &target(&p.server), &p.bridge)
        .await
        .expect("channel");
    let mut grpc_client = echo::client(channel, &p.bridge);
    let grpc = grpc_client.unary(Payload {
        data: b"grpc".to_vec(),
        reply_size: 0,
    });
    let tunnel = async {
        let mut s = tokio::net::TcpStream::connect(p.client.tunnel_addrs()[0])
            .await
            .expect("tunnel");
        s.write_all(b"tunnel").await.expect("write");
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).await.expect("read");
        buf
    };
    let (grpc, tunnel) = tokio::join!(grpc, tunnel);
    assert_eq!(grpc.expect("grpc").into_inner().data, b"grpc");
    assert_eq!(&tunnel, b"tunnel");
    // One connection between the two nodes carries both.
    let status = p.client.handle().status().await.expect("status");
    assert_eq!(status.connected_peers, 1);
}

/// hyper offers every read its buffer's whole spare capacity as uninitialised memory (a fresh
/// `ReadBuf` each call); a libp2p stream can only fill initialised memory. A read must zero
/// only the chunk it offers the stream (starting small, at most doubling from one read to the
/// next, capped), not the whole spare capacity, and every byte must still arrive in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_zeroes_only_the_chunk_it_offers_and_loses_nothing() {
    use std::mem::MaybeUninit;

    use futures::AsyncWriteExt as _;
    use punchgate_grpc::stream::{READ_CHUNK_MAX, READ_CHUNK_MIN};
    use tokio::io::{AsyncRead, ReadBuf};

    const TOTAL: usize = 1 << 20;
    let protocol = libp2p::StreamProtocol::new("/punchgate/test-read/1");
    let server = Node::start(config()).await.expect("server node");
    let mut client_config = config();
    client_config.bootstrap = vec![bootstrap(&server)];
    let client = Node::start(client_config).await.expect("client node");
    let mut accepted = server.handle().accept(protocol.clone(), 4).expect("accept");
    let writer = tokio::spawn(async move {
        let mut incoming = accepted.next().await.expect("a stream");
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        incoming.stream.write_all(&data).await.expect("write");
        incoming.stream.close().await.expect("close");
    });
    let (stream, info) = client
        .handle()
        .open_stream(server.peer_id(), protocol)
        .await
        .expect("open");
    let mut stream = punchgate_grpc::P2pStream::new(stream, &info);

    // Room for everything, as h2 reserves a whole frame; each read gets a fresh `ReadBuf` over
    // what is left, as hyper's adapter makes one.
    let mut memory = vec![MaybeUninit::<u8>::uninit(); TOTAL + 1];
    let mut received = Vec::with_capacity(TOTAL);
    let mut previous_zeroed = 0;
    loop {
        let mut buf = ReadBuf::uninit(&mut memory[received.len()..]);
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_read(cx, &mut buf))
            .await
            .expect("read");
        // What the read zeroed (or filled): all a fresh `ReadBuf` knows to be initialised.
        let zeroed = buf.initialized().len();
        let bound = if previous_zeroed == 0 {
            READ_CHUNK_MIN
        } else {
            (2 * previous_zeroed).min(READ_CHUNK_MAX)
        };
        assert!(
            zeroed <= bound,
            "read {} zeroed {zeroed} bytes, more than {bound}",
            received.len()
        );
        if buf.filled().is_empty() {
            break;
        }
        received.extend_from_slice(buf.filled());
        previous_zeroed = zeroed;
    }
    assert_eq!(received.len(), TOTAL, "every byte arrived");
    assert!(
        received
            .iter()
            .enumerate()
            .all(|(i, b)| *b == (i % 251) as u8),
        "in order"
    );
    writer.await.expect("writer");
}
