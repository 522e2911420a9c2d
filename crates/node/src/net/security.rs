//! Security and multiplexing for TCP connections: TLS for every connection we dial, TLS or
//! Noise for every connection dialled to us.
//!
//! Punchgate's TLS ([`super::tls`]) is the faster handshake and cipher here, so a node proposes
//! it alone when it dials: with multistream-select's lazy mode a dialer that proposes one
//! protocol sends its first handshake bytes at once, while one that proposes two waits a round
//! trip for the answer. A listener pays nothing for supporting two, so it accepts `/tls/1.0.0`
//! and `/noise`: a stock libp2p peer that speaks only Noise (rust-libp2p's example programs,
//! js-libp2p's default) can connect to any Punchgate node.
//!
//! libp2p's transport builder (`authenticate`) offers the same protocols in both directions,
//! so the two negotiations (security, then the multiplexer) run here with multistream-select
//! directly, as the builder would run them.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::{AsyncRead, AsyncWrite, future::Either};
use libp2p::{
    Multiaddr, PeerId, Transport,
    core::{
        ConnectedPoint, Negotiated,
        muxing::StreamMuxerBox,
        transport::{
            Boxed, DialOpts as TransportDialOpts, ListenerId, PortUse, TransportError,
            TransportEvent,
        },
        upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, Version},
    },
    identity::Keypair,
    multiaddr::Protocol,
    noise,
};
use multistream_select::{NegotiationError, dialer_select_proto, listener_select_proto};

use super::{mux, tls};

/// Libp2p's protocol name for TLS.
const TLS: &str = "/tls/1.0.0";
/// Libp2p's protocol name for Noise.
const NOISE: &str = "/noise";
/// Libp2p's protocol name for yamux.
const YAMUX: &str = "/yamux/1.0.0";

/// Securing or multiplexing a new connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The peers share no security protocol (we dial with TLS only) or no multiplexer.
    #[error("{what} negotiation failed: {source}")]
    Negotiation {
        /// "security" or "multiplexer".
        what: &'static str,
        /// What multistream-select said.
        source: NegotiationError,
    },
    /// The TLS handshake failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The Noise handshake failed.
    #[error("Noise handshake failed: {0}")]
    Noise(#[from] noise::Error),
    /// The multiplexer could not start.
    #[error("multiplexer failed: {0}")]
    Mux(#[source] mux::MuxError),
}

/// TLS (ours) and Noise (libp2p's) for one node's identity.
#[derive(Clone)]
pub struct Config {
    tls: tls::Config,
    noise: noise::Config,
    mux: mux::Config,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("security::Config")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Both security protocols for `keypair`, and `mux` above them.
    pub fn new(
        keypair: &Keypair,
        tls: tls::Config,
        mux: mux::Config,
    ) -> Result<Self, noise::Error> {
        Ok(Self {
            tls,
            noise: noise::Config::new(keypair)?,
            mux,
        })
    }

    /// Secures and multiplexes `socket`: TLS when we dialled it, TLS or Noise (as the remote
    /// proposes) when it was dialled to us; then yamux.
    pub async fn upgrade<C>(
        self,
        socket: C,
        endpoint: ConnectedPoint,
    ) -> Result<(PeerId, StreamMuxerBox), UpgradeError>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let negotiation = |what| move |source| UpgradeError::Negotiation { what, source };
        let Self { tls, noise, mux } = self;
        // The side that acts as the dialer: a hole punch's simultaneous open makes one of the
        // two dialling sides the listener (`role_override`), as libp2p's own upgrade does.
        let outbound = matches!(
            endpoint,
            ConnectedPoint::Dialer { role_override, .. } if role_override.is_dialer()
        );
        let (peer, secured) = if outbound {
            let (protocol, io) = dialer_select_proto(socket, [TLS], Version::V1Lazy)
                .await
                .map_err(negotiation("security"))?;
            let (peer, io) = tls.upgrade_outbound(io, protocol).await?;
            (peer, Either::Left(io))
        } else {
            let (protocol, io) = listener_select_proto(socket, [TLS, NOISE])
                .await
                .map_err(negotiation("security"))?;
            if protocol == NOISE {
                let (peer, io) = noise.upgrade_inbound(io, NOISE).await?;
                (peer, Either::Right(io))
            } else {
                let (peer, io) = tls.upgrade_inbound(io, TLS).await?;
                (peer, Either::Left(io))
            }
        };
        let muxer = multiplex(mux, secured, outbound).await?;
        Ok((peer, muxer))
    }
}

/// Negotiates yamux on a secured connection and starts it.
async fn multiplex<C>(
    mux: mux::Config,
    secured: C,
    outbound: bool,
) -> Result<StreamMuxerBox, UpgradeError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let negotiation = |source| UpgradeError::Negotiation {
        what: "multiplexer",
        source,
    };
    let muxer = if outbound {
        let (protocol, io): (_, Negotiated<C>) =
            dialer_select_proto(secured, [YAMUX], Version::V1Lazy)
                .await
                .map_err(negotiation)?;
        mux.upgrade_outbound(io, protocol).await
    } else {
        let (protocol, io) = listener_select_proto(secured, [YAMUX])
            .await
            .map_err(negotiation)?;
        mux.upgrade_inbound(io, protocol).await
    }
    .map_err(UpgradeError::Mux)?;
    Ok(StreamMuxerBox::new(muxer))
}

/// A dial with Noise instead of TLS: the same TCP address with `/noise` after the port. The
/// driver dials that after a peer refused TLS ([`with_noise`]); the node's own TCP transport does
/// not take such an address, this one takes nothing else.
pub fn with_noise(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut out = Multiaddr::empty();
    let mut tcp = false;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Noise | Protocol::P2pCircuit => return None,
            Protocol::Tcp(_) => {
                tcp = true;
                out.push(protocol);
                out.push(Protocol::Noise);
            }
            other => out.push(other),
        }
    }
    tcp.then_some(out)
}

/// `addr` without its `/noise`, when it has one after a TCP port.
fn without_noise(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut out = Multiaddr::empty();
    let mut found = false;
    let mut after_tcp = false;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Noise if after_tcp => found = true,
            Protocol::Tcp(_) => {
                after_tcp = true;
                out.push(protocol);
            }
            other => {
                after_tcp = false;
                out.push(other);
            }
        }
    }
    found.then_some(out)
}

/// The transport for `/noise` addresses ([`with_noise`]): TCP, Noise, yamux, outbound only.
pub fn noise_dial_transport(
    keypair: &Keypair,
    mux: mux::Config,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let noise = noise::Config::new(keypair)?;
    let inner = libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default().nodelay(true))
        .and_then(move |socket, _endpoint| {
            let (noise, mux) = (noise.clone(), mux.clone());
            async move {
                let (protocol, io) = dialer_select_proto(socket, [NOISE], Version::V1Lazy)
                    .await
                    .map_err(|source| UpgradeError::Negotiation {
                        what: "security",
                        source,
                    })?;
                let (peer, io) = noise.upgrade_outbound(io, protocol).await?;
                Ok::<_, UpgradeError>((peer, multiplex(mux, io, true).await?))
            }
        });
    Ok(NoiseDial(inner).boxed())
}

/// Takes only `/noise` addresses, strips the marker and dials with the inner transport.
struct NoiseDial<T>(T);

impl<T> Transport for NoiseDial<T>
where
    T: Transport + Unpin,
{
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        _: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _: ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: TransportDialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        match without_noise(&addr) {
            Some(tcp) => self.0.dial(
                tcp,
                TransportDialOpts {
                    port_use: PortUse::New,
                    ..opts
                },
            ),
            None => Err(TransportError::MultiaddrNotSupported(addr)),
        }
    }

    fn poll(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        // Never listens: nothing to report.
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_addresses_round_trip_and_only_tcp_gets_one() {
        let peer = PeerId::random();
        let tcp: Multiaddr = format!("/ip4/198.51.100.1/tcp/4001/p2p/{peer}")
            .parse()
            .expect("addr");
        let noise = with_noise(&tcp).expect("a TCP address");
        assert_eq!(
            noise.to_string(),
            format!("/ip4/198.51.100.1/tcp/4001/noise/p2p/{peer}")
        );
        assert_eq!(without_noise(&noise), Some(tcp.clone()));
        assert_eq!(without_noise(&tcp), None);
        assert_eq!(with_noise(&noise), None);
        let quic: Multiaddr = "/ip4/198.51.100.1/udp/4001/quic-v1".parse().expect("addr");
        assert_eq!(with_noise(&quic), None);
        let circuit: Multiaddr = format!("/ip4/198.51.100.1/tcp/4001/p2p/{peer}/p2p-circuit")
            .parse()
            .expect("addr");
        assert_eq!(with_noise(&circuit), None);
    }
}
