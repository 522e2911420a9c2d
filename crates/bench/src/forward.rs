//! Forwarders of the tunnel's shape: two processes (this executable run as `forward`) between
//! the client and the service, each copying bytes both ways as the tunnel does
//! (`punchgate::tunnel::splice`, with its buffers). client → A → B → service crosses the same
//! three loopback hops as client → tunnel node → service node → service.
//!
//! What the middle hop (A → B) carries is chosen per chain ([`Hop`]), one layer of the tunnel's
//! stack at a time, so that the cost of each layer can be measured on its own:
//! - [`Hop::Plain`]: plain TCP, no cipher, no multiplexing: the measured limit for a tunnel of
//!   this shape on this machine.
//! - [`Hop::Tls`]: the node's TLS (`punchgate::net::tls`, with its read buffer and write
//!   coalescing), one TLS connection per forwarded connection, carrying frames as the least
//!   any multiplexer would ([`framed`]): the limit for a tunnel built on that TLS stack with
//!   the cheapest multiplexer possible.
//! - [`Hop::TlsYamux`]: that TLS with the node's yamux (`punchgate::net::mux`, its driver task
//!   and frame size) on top, one connection per target and a stream per forwarded connection:
//!   the tunnel without libp2p's swarm, stream negotiation and our protocols.

use std::{io, net::SocketAddr, path::Path, pin::Pin, process::Command, sync::Arc};

use anyhow::{Context as _, Result, bail};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, future::poll_fn};
use libp2p::core::{
    muxing::StreamMuxer,
    upgrade::{InboundConnectionUpgrade as _, OutboundConnectionUpgrade as _},
};
use punchgate::net::{mux, swarm, tls};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

use crate::nodes::Process;

/// What the hop between the two forwarders carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Hop {
    /// Plain TCP.
    Plain,
    /// The node's TLS, a connection per forwarded connection, minimally framed.
    Tls,
    /// The node's TLS and yamux, a stream per forwarded connection.
    TlsYamux,
}

impl Hop {
    /// How the benchmark names a chain with this hop.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Hop::Plain => "plain forwarder",
            Hop::Tls => "TLS forwarder",
            Hop::TlsYamux => "TLS + yamux forwarder",
        }
    }
}

/// Which end of the middle hop a forwarder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Side {
    /// A: takes the client's connections, dials B.
    Client,
    /// B: takes A's connections, dials the service.
    Service,
}

/// Listens on one 127.0.0.1 port per target, prints `forwarding on <addr>` for each (in the
/// targets' order), and forwards every connection until stdin closes.
pub(crate) async fn serve(hop: Hop, side: Side, targets: Vec<SocketAddr>) -> Result<()> {
    let tls = tls::Config::new(&libp2p::identity::Keypair::generate_ed25519())
        .context("cannot set up TLS")?;
    for target in targets {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("forwarding on {}", listener.local_addr()?);
        let tls = tls.clone();
        match (hop, side) {
            (Hop::TlsYamux, Side::Client) => {
                let muxer = yamux_client(target, tls).await?;
                tokio::spawn(accept(listener, move |client| {
                    let muxer = muxer.clone();
                    async move {
                        let stream = {
                            let mut muxer = muxer.lock().await;
                            poll_fn(|cx| Pin::new(&mut *muxer).poll_outbound(cx)).await?
                        };
                        forward(client, stream.compat()).await
                    }
                }));
            }
            (Hop::TlsYamux, Side::Service) => {
                tokio::spawn(accept(listener, move |connection| {
                    yamux_service(connection, target, tls.clone())
                }));
            }
            _ => {
                tokio::spawn(accept(listener, move |incoming| {
                    connection(hop, side, incoming, target, tls.clone())
                }));
            }
        }
    }
    // Until the benchmark closes our stdin (or is gone).
    let mut stdin = tokio::io::stdin();
    let _ = tokio::io::copy(&mut stdin, &mut tokio::io::sink()).await;
    Ok(())
}

/// Runs `handle` on every connection `listener` accepts, each in a task of its own.
async fn accept<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let task = handle(stream);
        tokio::spawn(async move {
            if let Err(e) = task.await {
                eprintln!("forwarding failed: {e:#}");
            }
        });
    }
}

/// Copies both ways between a forwarded connection's two ends until both are done.
async fn forward<A, B>(mut a: A, mut b: B) -> Result<()>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    punchgate::tunnel::splice::splice(&mut a, &mut b).await?;
    Ok(())
}

async fn dial(target: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("cannot connect to {target}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The node's stack under TLS: libp2p's TCP socket (which, unlike tokio-util's adapter, passes
/// vectored writes on: rustls sends a batch of records in one call) behind the node's read
/// buffer.
type Socket = futures::io::BufReader<libp2p::tcp::tokio::TcpStream>;

fn socket(stream: TcpStream) -> Socket {
    futures::io::BufReader::with_capacity(
        swarm::TCP_READ_BUFFER,
        libp2p::tcp::tokio::TcpStream(stream),
    )
}

/// One forwarded connection over a plain or TLS hop.
async fn connection(
    hop: Hop,
    side: Side,
    incoming: TcpStream,
    target: SocketAddr,
    tls: tls::Config,
) -> Result<()> {
    let outgoing = dial(target).await?;
    match (hop, side) {
        (Hop::Tls, Side::Client) => {
            let (_, secure) = tls.upgrade_outbound(socket(outgoing), "").await?;
            framed(incoming, secure).await
        }
        (Hop::Tls, Side::Service) => {
            let (_, secure) = tls.upgrade_inbound(socket(incoming), "").await?;
            framed(outgoing, secure).await
        }
        // Plain (a yamux hop is served by `yamux_client` and `yamux_service`).
        _ => forward(incoming, outgoing).await,
    }
}

/// The frame header of [`Hop::Tls`]: the body's length (big-endian), then padding to yamux's
/// 12 bytes, so that TLS records are laid out as the tunnel's are.
const HEADER: usize = 12;

/// Carries one forwarded connection over a TLS stream of its own, framed as the least any
/// multiplexer does it: every read from `plain` (up to the tunnel's copy buffer) goes as one
/// frame, a header then the body, which [`punchgate::net::coalesce`] joins into one write as it
/// does yamux's; the far side reads a header, then the body straight into its copy buffer. A
/// frame of length 0 ends the direction. No stream table, windows, or hand-offs between tasks:
/// what a TLS tunnel costs with the cheapest possible multiplexer.
async fn framed<S>(plain: TcpStream, secure: S) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut plain_read, mut plain_write) = plain.into_split();
    let (mut secure_read, mut secure_write) = secure.split();
    let outgoing = async {
        let mut buf = vec![0; punchgate::tunnel::COPY_BUFFER];
        loop {
            let n = plain_read.read(&mut buf).await?;
            let mut header = [0; HEADER];
            header[..4].copy_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
            secure_write.write_all(&header).await?;
            secure_write.write_all(&buf[..n]).await?;
            secure_write.flush().await?;
            if n == 0 {
                return io::Result::Ok(());
            }
        }
    };
    let incoming = async {
        let mut buf = vec![0; punchgate::tunnel::COPY_BUFFER];
        loop {
            let mut header = [0; HEADER];
            secure_read.read_exact(&mut header).await?;
            let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if len > buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a {len}-byte frame, larger than the copy buffer"),
                ));
            }
            if len == 0 {
                plain_write.shutdown().await?;
                return Ok(());
            }
            secure_read.read_exact(&mut buf[..len]).await?;
            plain_write.write_all(&buf[..len]).await?;
        }
    };
    futures::try_join!(outgoing, incoming)?;
    secure_write.close().await?;
    Ok(())
}

/// A's yamux connection to B, for one target.
async fn yamux_client(
    b: SocketAddr,
    tls: tls::Config,
) -> Result<Arc<tokio::sync::Mutex<mux::Muxer>>> {
    let (_, secure) = tls.upgrade_outbound(socket(dial(b).await?), "").await?;
    let muxer = mux::Config::new(swarm::MAX_YAMUX_STREAMS_PER_CONNECTION)
        .upgrade_outbound(secure, "")
        .await?;
    Ok(Arc::new(tokio::sync::Mutex::new(muxer)))
}

/// B's side of one yamux connection: every stream A opens is forwarded to `target`.
async fn yamux_service(connection: TcpStream, target: SocketAddr, tls: tls::Config) -> Result<()> {
    let (_, secure) = tls.upgrade_inbound(socket(connection), "").await?;
    let mut muxer = mux::Config::new(swarm::MAX_YAMUX_STREAMS_PER_CONNECTION)
        .upgrade_inbound(secure, "")
        .await?;
    loop {
        let stream = poll_fn(|cx| Pin::new(&mut muxer).poll_inbound(cx)).await?;
        tokio::spawn(async move {
            let result = async { forward(stream.compat(), dial(target).await?).await }.await;
            if let Err(e) = result {
                eprintln!("forwarding failed: {e:#}");
            }
        });
    }
}

/// B forwarding to `echo` and `sink`, A forwarding to B.
#[derive(Debug)]
pub(crate) struct Chain {
    /// Next to the services.
    pub(crate) service: Process,
    /// Next to the client.
    pub(crate) client: Process,
    /// A's port for the echo.
    pub(crate) echo: SocketAddr,
    /// A's port for the sink.
    pub(crate) sink: SocketAddr,
}

/// Starts the two forwarders in front of `echo` and `sink`, with `hop` between them.
pub(crate) fn start(
    bin: &Path,
    dir: &Path,
    hop: Hop,
    echo: SocketAddr,
    sink: SocketAddr,
) -> Result<Chain> {
    let (service, [b_echo, b_sink]) = forwarder(bin, dir, hop, Side::Service, [echo, sink])?;
    let (client, [echo, sink]) = forwarder(bin, dir, hop, Side::Client, [b_echo, b_sink])?;
    Ok(Chain {
        service,
        client,
        echo,
        sink,
    })
}

fn forwarder(
    bin: &Path,
    dir: &Path,
    hop: Hop,
    side: Side,
    targets: [SocketAddr; 2],
) -> Result<(Process, [SocketAddr; 2])> {
    let (hop_arg, side_arg) = (arg(hop), arg(side));
    let name = format!("forward-{hop_arg}-{side_arg}");
    let mut command = Command::new(bin);
    command
        .args(["forward", "--hop", &hop_arg, "--side", &side_arg])
        .args(targets.map(|t| t.to_string()));
    let process = Process::start(command, dir, &name, |lines| {
        lines
            .iter()
            .filter(|l| l.starts_with("forwarding on"))
            .count()
            >= 2
    })?;
    let ports: Vec<SocketAddr> = process
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("forwarding on "))
        .filter_map(|a| a.parse().ok())
        .collect();
    let [echo, sink] = ports[..] else {
        bail!("forwarder {name} printed no two ports");
    };
    Ok((process, [echo, sink]))
}

/// How a value is spelt on the command line.
fn arg(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}
