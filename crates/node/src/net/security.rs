//! Security and multiplexing for TCP and relayed connections: TLS or Noise, then yamux.
//!
//! Punchgate's TLS ([`super::tls`]) is the faster handshake and cipher here, so a node proposes
//! it alone when it dials: with multistream-select's lazy mode a dialer that proposes one
//! protocol sends its first handshake bytes at once, while one that proposes two waits a round
//! trip for the answer. A listener pays nothing for supporting two, so it accepts `/tls/1.0.0`
//! and `/noise`: a stock libp2p peer that speaks only Noise (rust-libp2p's example programs,
//! js-libp2p's default) can connect to any Punchgate node, directly or through a relay.
//!
//! A peer that refuses TLS is remembered ([`NoisePeers`]), and so is one that chose Noise when
//! it connected to us: every later dial of it, direct, through a relay or a hole punch's, proposes
//! Noise alone, again without a round trip. The driver dials once more after a refusal
//! ([`refused_tls`]), so a stock peer costs one failed connection attempt, the first time only.
//!
//! libp2p's transport builder (`authenticate`) offers the same protocols in both directions,
//! so the two negotiations (security, then the multiplexer) run here with multistream-select
//! directly, as the builder would run them.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex},
};

use futures::{AsyncRead, AsyncWrite, future::Either};
use libp2p::{
    Multiaddr, PeerId,
    core::{
        ConnectedPoint, Negotiated,
        muxing::StreamMuxerBox,
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

/// How many peers [`NoisePeers`] remembers. A peer forgotten is dialled with TLS again and
/// costs one more refused attempt, nothing else, so a stranger that connects with many
/// identities can push others out but cannot grow the set.
pub const NOISE_PEERS: usize = 4096;

/// Securing or multiplexing a new connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The peers share no security protocol or no multiplexer.
    #[error("{what} negotiation failed (we {} {proposed}): {source}", if *outbound { "proposed" } else { "accept" })]
    Negotiation {
        /// "security" or "multiplexer".
        what: &'static str,
        /// We dialled (and proposed), or listened (and accept).
        outbound: bool,
        /// The protocol we proposed, or the ones we accept.
        proposed: &'static str,
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

/// How an [`UpgradeError`] for a refused TLS proposal begins.
const TLS_REFUSED: &str = "security negotiation failed (we proposed /tls/1.0.0)";

/// Whether `error` (a failed dial's transport error, through whatever layers libp2p wrapped it
/// in) is a peer refusing the TLS we proposed: the driver then dials it again, and
/// [`NoisePeers`] already makes that dial propose Noise.
pub fn refused_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(UpgradeError::Negotiation {
            what: "security",
            outbound: true,
            proposed: TLS,
            ..
        }) = error.downcast_ref::<UpgradeError>()
        {
            return true;
        }
        // `io::Error::source` skips the error it wraps: look at that one too.
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && refused_tls(inner)
        {
            return true;
        }
        // libp2p-dns reports the errors of several dial attempts in its message only, not as
        // sources: there the text is all there is to go by.
        if error.to_string().contains(TLS_REFUSED) {
            return true;
        }
        next = error.source();
    }
    false
}

/// The peers we dial with Noise instead of TLS: those that refused TLS, and those that chose
/// Noise when they connected to us. Bounded ([`NOISE_PEERS`]); the oldest is forgotten first.
#[derive(Clone, Debug)]
pub struct NoisePeers(Arc<Mutex<Remembered>>);

#[derive(Debug, Default)]
struct Remembered {
    capacity: usize,
    set: HashSet<PeerId>,
    order: VecDeque<PeerId>,
}

impl NoisePeers {
    /// Remembers at most `capacity` peers.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(Arc::new(Mutex::new(Remembered {
            capacity,
            ..Remembered::default()
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        // The set holds no invariant a panic elsewhere could break.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Dial `peer` with Noise from now on.
    pub fn insert(&self, peer: PeerId) {
        let mut r = self.lock();
        if r.capacity == 0 || !r.set.insert(peer) {
            return;
        }
        r.order.push_back(peer);
        while r.order.len() > r.capacity {
            if let Some(old) = r.order.pop_front() {
                r.set.remove(&old);
            }
        }
    }

    /// Whether we dial `peer` with Noise.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.lock().set.contains(peer)
    }

    /// How many peers are remembered.
    pub fn len(&self) -> usize {
        self.lock().set.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The peer a dial of `addr` reaches: its last `/p2p/`, unless a relay hop follows it (a dial
/// of `/…/p2p/RELAY/p2p-circuit` reaches whoever listens there, not the relay).
fn dialled_peer(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last()? {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    }
}

/// TLS (ours) and Noise (libp2p's) for one node's identity.
#[derive(Clone)]
pub struct Config {
    tls: tls::Config,
    noise: noise::Config,
    mux: mux::Config,
    noise_peers: NoisePeers,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("security::Config")
            .field("tls", &self.tls)
            .field("noise_peers", &self.noise_peers.len())
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Both security protocols for `keypair`, and `mux` above them; `noise_peers` is shared by
    /// every transport of one node.
    pub fn new(
        keypair: &Keypair,
        tls: tls::Config,
        mux: mux::Config,
        noise_peers: NoisePeers,
    ) -> Result<Self, noise::Error> {
        Ok(Self {
            tls,
            noise: noise::Config::new(keypair)?,
            mux,
            noise_peers,
        })
    }

    /// Secures and multiplexes `socket`: when we dialled it, TLS, or Noise for a peer in
    /// [`NoisePeers`]; when it was dialled to us, TLS or Noise as the remote proposes; then yamux.
    pub async fn upgrade<C>(
        self,
        socket: C,
        endpoint: ConnectedPoint,
    ) -> Result<(PeerId, StreamMuxerBox), UpgradeError>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            tls,
            noise,
            mux,
            noise_peers,
        } = self;
        // The side that acts as the dialer: a hole punch's simultaneous open makes one of the
        // two dialling sides the listener (`role_override`), as libp2p's own upgrade does.
        let (outbound, dialled) = match &endpoint {
            ConnectedPoint::Dialer {
                role_override,
                address,
                ..
            } => (role_override.is_dialer(), dialled_peer(address)),
            ConnectedPoint::Listener { .. } => (false, None),
        };
        let (peer, secured) = if outbound {
            let proposed = match dialled {
                Some(peer) if noise_peers.contains(&peer) => NOISE,
                _ => TLS,
            };
            // With one protocol proposed lazily, a refusal shows up on the handshake's first
            // read, as an I/O error that wraps multistream-select's.
            let refused = |source| {
                if let (Some(peer), TLS) = (dialled, proposed) {
                    noise_peers.insert(peer);
                }
                UpgradeError::Negotiation {
                    what: "security",
                    outbound: true,
                    proposed,
                    source,
                }
            };
            let (protocol, io) = dialer_select_proto(socket, [proposed], Version::V1Lazy)
                .await
                .map_err(refused)?;
            if proposed == NOISE {
                match noise.upgrade_outbound(io, protocol).await {
                    Ok((peer, io)) => (peer, Either::Right(io)),
                    Err(noise::Error::Io(io)) => {
                        return Err(refusal(io)
                            .map_or_else(|io| UpgradeError::Noise(noise::Error::Io(io)), refused));
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                match tls.upgrade_outbound(io, protocol).await {
                    Ok((peer, io)) => (peer, Either::Left(io)),
                    Err(tls::TlsError::Handshake(io)) => {
                        return Err(refusal(io).map_or_else(
                            |io| UpgradeError::Tls(tls::TlsError::Handshake(io)),
                            refused,
                        ));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            let (protocol, io) =
                listener_select_proto(socket, [TLS, NOISE])
                    .await
                    .map_err(|source| UpgradeError::Negotiation {
                        what: "security",
                        outbound: false,
                        proposed: "/tls/1.0.0 or /noise",
                        source,
                    })?;
            if protocol == NOISE {
                let (peer, io) = noise.upgrade_inbound(io, NOISE).await?;
                // It speaks Noise, maybe nothing else: dial it with Noise too.
                noise_peers.insert(peer);
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

/// The refusal inside a handshake's I/O error, if that is what it is: `Ok(refusal)`, or the
/// error back.
fn refusal(io: std::io::Error) -> Result<NegotiationError, std::io::Error> {
    if !io.get_ref().is_some_and(|e| e.is::<NegotiationError>()) {
        return Err(io);
    }
    let kind = io.kind();
    match io.into_inner().map(|e| e.downcast::<NegotiationError>()) {
        Some(Ok(refusal)) => Ok(*refusal),
        // Checked above; kept total rather than panicking.
        Some(Err(other)) => Err(std::io::Error::new(kind, other)),
        None => Err(kind.into()),
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
        outbound,
        proposed: YAMUX,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_peers_are_bounded_and_forget_the_oldest_first() {
        let peers = NoisePeers::with_capacity(3);
        let ids: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        for id in &ids {
            peers.insert(*id);
        }
        // Inserting one already there changes nothing.
        peers.insert(ids[3]);
        assert!(!peers.contains(&ids[0]), "the oldest is forgotten");
        assert!(ids[1..].iter().all(|id| peers.contains(id)));
        assert_eq!(peers.len(), 3);
    }

    #[test]
    fn the_dialled_peer_is_the_last_p2p_of_the_address() {
        let (relay, target) = (PeerId::random(), PeerId::random());
        let direct: Multiaddr = format!("/ip4/198.51.100.1/tcp/4001/p2p/{target}")
            .parse()
            .expect("addr");
        assert_eq!(dialled_peer(&direct), Some(target));
        let circuit: Multiaddr =
            format!("/ip4/198.51.100.1/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{target}")
                .parse()
                .expect("addr");
        assert_eq!(dialled_peer(&circuit), Some(target));
        let to_relay: Multiaddr = format!("/ip4/198.51.100.1/tcp/4001/p2p/{relay}/p2p-circuit")
            .parse()
            .expect("addr");
        assert_eq!(dialled_peer(&to_relay), None);
        let bare: Multiaddr = "/ip4/198.51.100.1/tcp/4001".parse().expect("addr");
        assert_eq!(dialled_peer(&bare), None);
    }

    #[test]
    fn a_tls_refusal_is_found_through_the_layers_libp2p_wraps_it_in() {
        let refusal = |what, outbound, proposed| UpgradeError::Negotiation {
            what,
            outbound,
            proposed,
            source: NegotiationError::Failed,
        };
        let wrapped = std::io::Error::other(
            libp2p::core::transport::timeout::TransportTimeoutError::Other(refusal(
                "security", true, TLS,
            )),
        );
        assert!(refused_tls(&wrapped));
        assert!(TLS_REFUSED.len() > 20 && wrapped.to_string().starts_with(TLS_REFUSED));
        // Not a refusal of our TLS: the multiplexer, our Noise, or a dial to us.
        for other in [
            refusal("multiplexer", true, YAMUX),
            refusal("security", true, NOISE),
            refusal("security", false, TLS),
        ] {
            assert!(!refused_tls(&std::io::Error::other(other)));
        }
    }
}
