//! The same tonic echo service over plain TCP, over TLS on TCP (tonic's own, rustls) and over
//! Punchgate, with the same HTTP/2 settings, the server in its own process as in a real
//! deployment: unary latency and streaming throughput. Punchgate's channel is encrypted, so
//! TLS is the like-for-like baseline; plain TCP is what the targets are set against.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use libp2p::identity::Keypair;
use punchgate::{Node, config::NodeConfig};
use punchgate_grpc::{
    BridgeConfig, Incoming, Target,
    echo::{self, EchoClient, Payload},
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig, server::TcpIncoming,
};

use crate::tcp::percentile_us;

/// Bytes per unary request and reply.
const UNARY_BYTES: usize = 64;

/// What one path measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GrpcResult {
    /// Unary round trip, median, µs.
    pub unary_p50_us: f64,
    /// Unary round trip, 99th percentile, µs.
    pub unary_p99_us: f64,
    /// Client-to-server payload over one bidirectional stream, Gbit/s.
    pub(crate) stream_gbps: f64,
}

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrpcSizes {
    /// Unary calls timed.
    pub(crate) unary: usize,
    /// Streamed messages.
    pub(crate) messages: usize,
    /// Bytes per streamed message.
    pub(crate) message_bytes: usize,
}

/// How the benchmark's gRPC server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Over {
    /// Plain TCP (h2c).
    Tcp,
    /// TLS on TCP: tonic's own, with rustls and the certificate in the work directory.
    Tls,
    /// A Punchgate node.
    Punchgate,
}

/// The TLS baseline's certificate and key (PEM), made by the benchmark for `localhost`.
fn tls_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (dir.join("grpc-tls-cert.pem"), dir.join("grpc-tls-key.pem"))
}

/// Serves the echo service in this process until stdin closes: over TCP or TLS on 127.0.0.1,
/// or on a Punchgate node listening on 127.0.0.1. Prints `grpc listening on <address>` (for
/// Punchgate, the node's `/ip4/../p2p/<peer>` address).
pub(crate) async fn serve(over: Over, dir: &std::path::Path) -> Result<()> {
    let config = BridgeConfig::default();
    let stdin_closed = async {
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
    };
    if over == Over::Punchgate {
        let node = Node::start(node_config()).await?;
        // The client node runs in another process with a key of its own: the benchmark's
        // server serves any peer on loopback.
        let incoming = Incoming::new(node.handle(), &config, punchgate::access::Allow::Any)?;
        println!(
            "grpc listening on {}/p2p/{}",
            node.listen_addrs()[0],
            node.peer_id()
        );
        tokio::select! {
            result = config.server().add_service(echo::server(&config)).serve_with_incoming(incoming) => result?,
            () = stdin_closed => {}
        }
        node.shutdown().await;
    } else {
        // `Server::tcp_nodelay` is ignored by `serve_with_incoming`: set it on the incoming
        // sockets, as libp2p's TCP transport does on Punchgate's side.
        let incoming = TcpIncoming::bind("127.0.0.1:0".parse()?)?.with_nodelay(Some(true));
        let mut server = config.server();
        if over == Over::Tls {
            // rustls is built with more than one crypto provider here; pick aws-lc, as the
            // client side (tonic) and Punchgate's TLS do.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let (cert, key) = tls_files(dir);
            let identity = Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?);
            server = server.tls_config(ServerTlsConfig::new().identity(identity))?;
        }
        println!("grpc listening on {}", incoming.local_addr()?);
        tokio::select! {
            result = server
                .add_service(echo::server(&config))
                .serve_with_incoming(incoming) => result?,
            () = stdin_closed => {}
        }
    }
    Ok(())
}

fn node_config() -> NodeConfig {
    let mut c = NodeConfig::new(Keypair::generate_ed25519());
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")];
    c.mdns = false;
    c.upnp = false;
    c
}

/// A server process (this executable, `grpc-server`); killed when dropped.
struct ServerProcess {
    process: crate::nodes::Process,
    addr: String,
}

impl ServerProcess {
    fn start(bin: &std::path::Path, dir: &std::path::Path, over: Over) -> Result<Self> {
        let mut command = std::process::Command::new(bin);
        command
            .args(["grpc-server", "--over", over.name(), "--work"])
            .arg(dir);
        let name = format!("grpc-server-{}", over.name());
        let process = crate::nodes::Process::start(command, dir, &name, |l| !l.is_empty())?;
        let addr = process.lines[0]
            .strip_prefix("grpc listening on ")
            .context("unexpected server output")?
            .to_owned();
        Ok(Self { process, addr })
    }
}

impl Over {
    fn name(self) -> &'static str {
        match self {
            Over::Tcp => "tcp",
            Over::Tls => "tls",
            Over::Punchgate => "punchgate",
        }
    }
}

/// A client connected to the echo service in its own process, over one of the paths.
pub(crate) struct Connection {
    server: ServerProcess,
    client: EchoClient<Channel>,
    /// The client's node, over Punchgate.
    node: Option<Node>,
}

impl Connection {
    /// Starts a server process reached `over` this path and connects to it. Over TLS, with a
    /// certificate for `localhost` made here and tonic's TLS (rustls, its default cipher
    /// order); over Punchgate, through a client node in this process (TCP, TLS, yamux).
    pub(crate) async fn open(
        bin: &std::path::Path,
        dir: &std::path::Path,
        over: Over,
        config: &BridgeConfig,
    ) -> Result<Self> {
        let mut node = None;
        let (server, channel) = match over {
            Over::Tcp => {
                let server = ServerProcess::start(bin, dir, over)?;
                let endpoint = Endpoint::from_shared(format!("http://{}", server.addr))?;
                let channel = config.apply(endpoint.tcp_nodelay(true)).connect().await?;
                (server, channel)
            }
            Over::Tls => {
                let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
                let (cert_file, key_file) = tls_files(dir);
                std::fs::write(&cert_file, certified.cert.pem())?;
                std::fs::write(&key_file, certified.key_pair.serialize_pem())?;
                let server = ServerProcess::start(bin, dir, over)?;
                let tls = ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(certified.cert.pem()))
                    .domain_name("localhost");
                let endpoint = Endpoint::from_shared(format!("https://{}", server.addr))?
                    .tcp_nodelay(true)
                    .tls_config(tls)?;
                let channel = config.apply(endpoint).connect().await?;
                (server, channel)
            }
            Over::Punchgate => {
                let server = ServerProcess::start(bin, dir, over)?;
                let mut client_config = node_config();
                client_config.bootstrap = vec![server.addr.parse()?];
                let peer = client_config.bootstrap[0].peer;
                let client = node.insert(Node::start(client_config).await?);
                let target: Target = format!("punchgate://{peer}").parse()?;
                let channel = punchgate_grpc::connect(client.handle(), &target, config).await?;
                (server, channel)
            }
        };
        Ok(Self {
            server,
            client: echo::client(channel, config),
            node,
        })
    }

    /// CPU time this process and the server process used so far, seconds.
    fn cpu_seconds(&self) -> Result<f64> {
        Ok(crate::nodes::cpu_seconds("self")? + self.server.process.cpu_seconds()?)
    }

    /// Shuts the client node down (the server process is killed when dropped).
    pub(crate) async fn close(self) {
        if let Some(node) = self.node {
            node.shutdown().await;
        }
    }

    /// `calls` unary round trips: p50, µs.
    pub(crate) async fn unary_p50(&mut self, calls: usize) -> Result<f64> {
        Ok(percentile_us(&unary(&mut self.client, calls).await?, 50.0))
    }

    /// One streaming transfer: Gbit/s, and CPU ms per GiB of both processes (this one holds
    /// the client and, over Punchgate, the client's node).
    pub(crate) async fn stream_with_cpu(&mut self, sizes: GrpcSizes) -> Result<(f64, f64)> {
        let before = self.cpu_seconds()?;
        let gbps = stream(&mut self.client, sizes).await?;
        let gib = (sizes.messages * sizes.message_bytes) as f64 / f64::from(1u32 << 30);
        Ok((gbps, 1000.0 * (self.cpu_seconds()? - before) / gib))
    }
}

/// The paths, in the order [`compare`] reports them.
pub(crate) const PATHS: [Over; 3] = [Over::Tcp, Over::Tls, Over::Punchgate];

/// The echo service over each of [`PATHS`], each server in its own process, `rounds` times on
/// the same connections, the paths taking turns going first: per round and path, a share of
/// `sizes.unary` unary calls (split over the rounds, rounded up), then one streaming transfer.
/// Per path: unary p50 and p99 over all rounds' calls, and the median round's streaming
/// throughput. Measured once each, one path could catch a slow moment of a shared machine
/// alone and skew the ratios.
pub(crate) async fn compare(
    bin: &std::path::Path,
    dir: &std::path::Path,
    config: &BridgeConfig,
    sizes: GrpcSizes,
    rounds: usize,
) -> Result<[GrpcResult; PATHS.len()]> {
    ensure!(rounds > 0, "at least one round");
    let mut connections = Vec::with_capacity(PATHS.len());
    for over in PATHS {
        connections.push(Connection::open(bin, dir, over, config).await?);
    }
    let calls = sizes.unary.div_ceil(rounds);
    let mut times = vec![Vec::with_capacity(calls * rounds); PATHS.len()];
    let mut gbps = vec![Vec::with_capacity(rounds); PATHS.len()];
    let measured: Result<()> = async {
        for round in 0..rounds {
            for k in 0..PATHS.len() {
                let i = (round + k) % PATHS.len();
                times[i].extend(unary(&mut connections[i].client, calls).await?);
                gbps[i].push(stream(&mut connections[i].client, sizes).await?);
            }
        }
        Ok(())
    }
    .await;
    for connection in connections {
        connection.close().await;
    }
    measured?;
    Ok(std::array::from_fn(|i| GrpcResult {
        unary_p50_us: percentile_us(&times[i], 50.0),
        unary_p99_us: percentile_us(&times[i], 99.0),
        stream_gbps: crate::median(&mut gbps[i]),
    }))
}

/// `calls` unary round trips of [`UNARY_BYTES`] each way, after a tenth as many (and 10) to
/// warm up: each one's time.
async fn unary(client: &mut EchoClient<Channel>, calls: usize) -> Result<Vec<Duration>> {
    let request = || Payload {
        data: vec![0x33; UNARY_BYTES],
        reply_size: 0,
    };
    for _ in 0..calls / 10 + 10 {
        client.unary(request()).await?;
    }
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let reply = client.unary(request()).await?;
        times.push(started.elapsed());
        ensure!(
            reply.into_inner().data.len() == UNARY_BYTES,
            "short unary reply"
        );
    }
    Ok(times)
}

/// Streams `messages` of `message_bytes` to the server (each answered with 1 byte) and times
/// it until the last answer.
async fn stream(client: &mut EchoClient<Channel>, sizes: GrpcSizes) -> Result<f64> {
    let (tx, rx) = mpsc::channel(32);
    let data = vec![0x77u8; sizes.message_bytes];
    let started = Instant::now();
    let mut replies = client.stream(ReceiverStream::new(rx)).await?.into_inner();
    let sender = tokio::spawn(async move {
        for _ in 0..sizes.messages {
            if tx
                .send(Payload {
                    data: data.clone(),
                    reply_size: 1,
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut received = 0;
    while received < sizes.messages {
        tokio::time::timeout(Duration::from_secs(60), replies.message())
            .await
            .context("stream stalled")??
            .context("stream ended early")?;
        received += 1;
    }
    let elapsed = started.elapsed();
    sender.await?;
    Ok((sizes.messages * sizes.message_bytes) as f64 * 8.0 / elapsed.as_secs_f64() / 1e9)
}
