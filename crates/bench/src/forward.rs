//! Forwarders of the tunnel's shape: two processes (this executable run as `forward`) between
//! the client and the service, each copying bytes both ways. client → A → B → service crosses
//! the same three loopback hops as client → tunnel node → service node → service.
//!
//! What the middle hop (A → B) carries is chosen per chain ([`Hop`]), one layer of the tunnel's
//! stack at a time, so that the cost of each layer can be measured on its own:
//! - [`Hop::Plain`]: plain TCP, no cipher, no multiplexing, copied as the tunnel copies
//!   (`punchgate::tunnel::splice`, with its buffers): the measured limit for a tunnel of this
//!   shape on this machine.
//! - [`Hop::Tls`]: the node's TLS (`punchgate::net::tls`, with its read buffer and write
//!   coalescing), one TLS connection per forwarded connection, carrying frames as the least
//!   any multiplexer would ([`framed`]): a reference for what a tunnel on that TLS costs with
//!   the cheapest multiplexer possible (its figures have the noise of any one measurement).
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

use crate::{nodes::Process, tcp};

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
    for target in targets {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        println!("forwarding on {}", listener.local_addr()?);
        match (hop, side) {
            (Hop::Plain, _) => {
                tokio::spawn(accept(listener, move |incoming| async move {
                    forward(incoming, tcp::connect(target).await?).await
                }));
            }
            (Hop::Tls, Side::Client) => {
                let tls = tls_config()?;
                tokio::spawn(accept(listener, move |incoming| {
                    let tls = tls.clone();
                    async move {
                        let b = socket(tcp::connect(target).await?);
                        let (_, secure) = tls.upgrade_outbound(b, "").await?;
                        framed(incoming, secure).await
                    }
                }));
            }
            (Hop::Tls, Side::Service) => {
                let tls = tls_config()?;
                tokio::spawn(accept(listener, move |incoming| {
                    let tls = tls.clone();
                    async move {
                        let (_, secure) = tls.upgrade_inbound(socket(incoming), "").await?;
                        framed(tcp::connect(target).await?, secure).await
                    }
                }));
            }
            (Hop::TlsYamux, Side::Client) => {
                let muxer = yamux_client(target, tls_config()?).await?;
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
                let tls = tls_config()?;
                tokio::spawn(accept(listener, move |connection| {
                    yamux_service(connection, target, tls.clone())
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
    punchgate::tunnel::splice::splice(&mut a, &mut b, None).await?;
    Ok(())
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

/// The node's TLS, with a key of its own.
fn tls_config() -> Result<tls::Config> {
    tls::Config::new(&libp2p::identity::Keypair::generate_ed25519()).context("cannot set up TLS")
}

/// The frame header of [`Hop::Tls`]: the body's length (big-endian), then padding to yamux's
/// 12 bytes, so that TLS records are laid out as the tunnel's are.
const HEADER: usize = 12;

// A frame's length is a u32.
const _: () = assert!(punchgate::tunnel::COPY_BUFFER <= u32::MAX as usize);

/// Carries one forwarded connection over a TLS stream of its own, framed as the least any
/// multiplexer does it: every read from `plain` (up to the tunnel's copy buffer) goes as one
/// frame, a header then the body, which [`punchgate::net::coalesce`] joins into one write as it
/// does yamux's; the far side reads a header, then the body straight into its copy buffer. A
/// frame of length 0 ends the direction. No stream table, windows, or hand-offs between tasks:
/// what a TLS tunnel costs with the cheapest possible multiplexer. Its buffers have the copy
/// buffer's largest size from the start (the tunnel's grow to it while reads fill them).
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
            // `n` fits: at most the copy buffer (checked at compile time above).
            header[..4].copy_from_slice(&(n as u32).to_be_bytes());
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
    // Both directions ended on a frame of length 0; the remote may already be gone, so a
    // failed close_notify is no error.
    let _ = secure_write.close().await;
    Ok(())
}

/// A's yamux connection to B, for one target.
async fn yamux_client(
    b: SocketAddr,
    tls: tls::Config,
) -> Result<Arc<tokio::sync::Mutex<mux::Muxer>>> {
    let (_, secure) = tls
        .upgrade_outbound(socket(tcp::connect(b).await?), "")
        .await?;
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
    // Until the connection ends (A closes it when it exits).
    while let Ok(stream) = poll_fn(|cx| Pin::new(&mut muxer).poll_inbound(cx)).await {
        tokio::spawn(async move {
            let result =
                async { forward(stream.compat(), tcp::connect(target).await?).await }.await;
            if let Err(e) = result {
                eprintln!("forwarding failed: {e:#}");
            }
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::compat::TokioAsyncReadCompatExt as _;

    use super::*;

    /// Pseudo-random bytes (xorshift), so that a lost, repeated or reordered frame shows.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed.to_le_bytes()[0]
            })
            .collect()
    }

    /// Two connected loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (dialled.expect("connect"), accepted.expect("accept").0)
    }

    /// An application's end: sends `out` and half-closes while reading everything that comes.
    async fn exchange(socket: TcpStream, out: Vec<u8>) -> io::Result<Vec<u8>> {
        let (mut read, mut write) = socket.into_split();
        let send = async {
            write.write_all(&out).await?;
            write.shutdown().await
        };
        let receive = async {
            let mut got = Vec::new();
            read.read_to_end(&mut got).await?;
            Ok(got)
        };
        let ((), got) = tokio::try_join!(send, receive)?;
        Ok(got)
    }

    /// A and B as the TLS forwarder runs them: bytes both ways at once, more than a copy
    /// buffer's worth and not a multiple of it, arrive whole and in order, and each side's end
    /// (a half-close) reaches the other.
    #[tokio::test]
    async fn framed_tls_carries_both_directions_and_their_ends() {
        let (client_app, a_plain) = pair().await;
        let (b_plain, service_app) = pair().await;
        let (a_hop, b_hop) = pair().await;
        let a_tls = tls_config().expect("TLS");
        let b_tls = tls_config().expect("TLS");
        let a = async {
            let (_, secure) = a_tls.upgrade_outbound(socket(a_hop), "").await?;
            framed(a_plain, secure).await
        };
        let b = async {
            let (_, secure) = b_tls.upgrade_inbound(socket(b_hop), "").await?;
            framed(b_plain, secure).await
        };
        let up = noise(3 * punchgate::tunnel::COPY_BUFFER + 17, 1);
        let down = noise(2 * punchgate::tunnel::COPY_BUFFER + 5, 2);
        let (a, b, at_client, at_service) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(
                a,
                b,
                exchange(client_app, up.clone()),
                exchange(service_app, down.clone())
            )
        })
        .await
        .expect("the exchange ends");
        a.expect("A forwards");
        b.expect("B forwards");
        assert!(at_service.expect("service side") == up, "bytes up differ");
        assert!(at_client.expect("client side") == down, "bytes down differ");
    }

    /// A frame longer than the copy buffer is refused with an error that says so.
    #[tokio::test]
    async fn an_oversized_frame_is_an_error() {
        let (_app, plain) = pair().await;
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut header = [0; HEADER];
        header[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        theirs.write_all(&header).await.expect("write a header");
        let result = tokio::time::timeout(Duration::from_secs(5), framed(plain, ours.compat()))
            .await
            .expect("refused at once");
        let error = result.expect_err("refused");
        assert!(
            format!("{error:#}").contains("larger than the copy buffer"),
            "{error:#}"
        );
    }
}
