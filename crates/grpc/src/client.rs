//! Client side: a tonic `Channel` to a peer.
//!
//! # Target URIs
//! - `punchgate://<PEER_ID>`: reach the peer the node's usual way (connected already, known
//!   addresses, the DHT, its relay circuit).
//! - `punchgate://<PEER_ID>?addr=<MULTIADDR>&addr=<MULTIADDR>`: the same, with addresses to try
//!   (for example a relay circuit, `/ip4/203.0.113.7/tcp/4001/p2p/<RELAY>/p2p-circuit`).
//! - `<MULTIADDR>/p2p/<PEER_ID>`: a multiaddr that names its peer.
//!
//! A URI without a peer id, with an address that is not a multiaddr, or with an address that
//! names another peer is refused, and the error says which.

use std::str::FromStr;

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use punchgate::node::{NodeHandle, OpenError};
use tonic::transport::{Channel, Uri};

use crate::{
    config::BridgeConfig,
    quota::{QuotaError, RelayBook},
    stream::{P2pConnectInfo, P2pStream},
};

const SCHEME: &str = "punchgate://";

/// The peer a channel goes to, and addresses to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The peer.
    pub peer: PeerId,
    /// Addresses to try, in order of preference (may be empty).
    pub addrs: Vec<Multiaddr>,
}

/// A target URI that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// Neither `punchgate://...` nor a multiaddr.
    #[error(
        "'{0}' is not a target: expected punchgate://<PEER_ID>[?addr=<MULTIADDR>...] or <MULTIADDR>/p2p/<PEER_ID>"
    )]
    Unsupported(String),
    /// No peer id in it.
    #[error("'{0}' names no peer: add the peer id (punchgate://<PEER_ID> or .../p2p/<PEER_ID>)")]
    MissingPeerId(String),
    /// The peer id does not parse.
    #[error("'{value}' is not a peer id: {reason}")]
    InvalidPeerId {
        /// The value.
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// An address does not parse.
    #[error("'{value}' is not a multiaddr: {reason}")]
    InvalidMultiaddr {
        /// The value.
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// An address ends in another peer's id.
    #[error("address {addr} is for peer {found}, not for the target {expected}")]
    WrongPeer {
        /// The address.
        addr: String,
        /// The target.
        expected: Box<PeerId>,
        /// The peer the address names.
        found: Box<PeerId>,
    },
    /// A query parameter other than `addr`.
    #[error("unknown parameter '{0}' (only addr=<MULTIADDR> is understood)")]
    UnknownParameter(String),
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, TargetError> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix(SCHEME) {
            let (peer, query) = rest.split_once('?').unwrap_or((rest, ""));
            let peer = peer.trim_end_matches('/');
            if peer.is_empty() {
                return Err(TargetError::MissingPeerId(s.to_owned()));
            }
            let peer = parse_peer(peer)?;
            let mut addrs = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("addr", value)) => addrs.push(parse_addr(value, &peer)?),
                    Some((key, _)) => return Err(TargetError::UnknownParameter(key.to_owned())),
                    None => return Err(TargetError::UnknownParameter(pair.to_owned())),
                }
            }
            return Ok(Self { peer, addrs });
        }
        if s.starts_with('/') {
            let addr: Multiaddr =
                s.parse().map_err(
                    |e: libp2p::multiaddr::Error| TargetError::InvalidMultiaddr {
                        value: s.to_owned(),
                        reason: e.to_string(),
                    },
                )?;
            return match addr.iter().last() {
                Some(Protocol::P2p(peer)) => Ok(Self {
                    peer,
                    addrs: vec![addr],
                }),
                _ => Err(TargetError::MissingPeerId(s.to_owned())),
            };
        }
        Err(TargetError::Unsupported(s.to_owned()))
    }
}

fn parse_peer(value: &str) -> Result<PeerId, TargetError> {
    value.parse().map_err(
        |e: libp2p::identity::ParseError| TargetError::InvalidPeerId {
            value: value.to_owned(),
            reason: e.to_string(),
        },
    )
}

/// Parses one address for `peer`. It may end in `/p2p/<peer>` (or in `/p2p-circuit`, after
/// the relay's id) but not in another peer's id.
fn parse_addr(value: &str, peer: &PeerId) -> Result<Multiaddr, TargetError> {
    let addr: Multiaddr =
        value.parse().map_err(
            |e: libp2p::multiaddr::Error| TargetError::InvalidMultiaddr {
                value: value.to_owned(),
                reason: e.to_string(),
            },
        )?;
    match addr.iter().last() {
        Some(Protocol::P2p(found)) if found != *peer => Err(TargetError::WrongPeer {
            addr: value.to_owned(),
            expected: Box::new(*peer),
            found: Box::new(found),
        }),
        _ => Ok(addr),
    }
}

/// A gRPC connection to a peer could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The peer could not be reached or the stream not opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The relay quota does not allow another relayed connection.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The node stopped.
    #[error("the node is shutting down")]
    Stopped,
}

/// Opens one gRPC connection (one libp2p stream) to `target`. Relayed connections take a slot
/// in `relays`: before the dial when the target is known only through a relay (released if the
/// dial fails), or once the path turns out to be relayed.
pub async fn open(
    node: &NodeHandle,
    target: &Target,
    config: &BridgeConfig,
    relays: &RelayBook,
) -> Result<P2pStream, ConnectError> {
    if !target.addrs.is_empty() {
        node.add_addresses(target.peer, target.addrs.clone())
            .await
            .map_err(|_| ConnectError::Stopped)?;
    }
    let only_relayed = !target.addrs.is_empty()
        && target
            .addrs
            .iter()
            .all(|a| a.iter().any(|p| p == Protocol::P2pCircuit));
    let pending = if only_relayed {
        target
            .addrs
            .iter()
            .find_map(punchgate_machine::reach::relay_of)
            .map(|relay| relays.try_acquire(relay))
            .transpose()?
    } else {
        None
    };
    let (stream, info) = node
        .open_stream(target.peer, config.protocol.clone())
        .await?;
    let ticket = match info.relay {
        Some(relay) => match pending {
            Some(ticket) if ticket.relay() == relay => Some(ticket),
            _ => Some(relays.try_acquire(relay)?),
        },
        None => None,
    };
    tracing::info!(
        peer = %target.peer,
        remote_addr = %info.remote_addr,
        relayed = info.relayed,
        "gRPC connection opened over libp2p"
    );
    Ok(P2pStream::new(stream, &info).with_ticket(ticket))
}

/// Called with every connection a channel opens (for example to keep its byte counters).
pub type Observer = std::sync::Arc<dyn Fn(&P2pConnectInfo) + Send + Sync>;

/// Options of [`connect_with`].
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// Quota book relayed connections count against (a fresh one per channel if `None`).
    pub relays: Option<RelayBook>,
    /// Told about every connection the channel opens.
    pub observer: Option<Observer>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("relays", &self.relays)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

fn connector(
    node: NodeHandle,
    target: Target,
    config: BridgeConfig,
    options: ConnectOptions,
) -> impl tower::Service<
    Uri,
    Response = P2pStream,
    Error = ConnectError,
    Future = impl Future<Output = Result<P2pStream, ConnectError>> + Send,
> + Clone
+ Send
+ 'static {
    let relays = options
        .relays
        .unwrap_or_else(|| RelayBook::new(config.relay_limits));
    let observer = options.observer;
    tower::service_fn(move |_: Uri| {
        let (node, target, config, relays, observer) = (
            node.clone(),
            target.clone(),
            config.clone(),
            relays.clone(),
            observer.clone(),
        );
        async move {
            let stream = open(&node, &target, &config, &relays).await?;
            if let Some(observer) = observer {
                observer(stream.info());
            }
            Ok(stream)
        }
    })
}

/// A tonic `Channel` to `target`, connected now. Reconnects (a new stream) after the
/// connection drops.
pub async fn connect(
    node: &NodeHandle,
    target: &Target,
    config: &BridgeConfig,
) -> Result<Channel, tonic::transport::Error> {
    connect_with(node, target, config, ConnectOptions::default()).await
}

/// Like [`connect`], with a shared relay quota book and/or a connection observer.
pub async fn connect_with(
    node: &NodeHandle,
    target: &Target,
    config: &BridgeConfig,
    options: ConnectOptions,
) -> Result<Channel, tonic::transport::Error> {
    config
        .endpoint()
        .connect_with_connector(connector(
            node.clone(),
            target.clone(),
            config.clone(),
            options,
        ))
        .await
}

/// A tonic `Channel` to `target` that connects on first use.
pub fn connect_lazy(node: &NodeHandle, target: &Target, config: &BridgeConfig) -> Channel {
    config.endpoint().connect_with_connector_lazy(connector(
        node.clone(),
        target.clone(),
        config.clone(),
        ConnectOptions::default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
    const B: &str = "12D3KooWLxjw6N5mmZgXARg4TkVBBzdVETh6G8oX63ntb2bRjSkH";

    #[test]
    fn accepts_the_documented_forms() {
        let t: Target = format!("punchgate://{A}").parse().expect("bare");
        assert_eq!(t.peer.to_string(), A);
        assert!(t.addrs.is_empty());
        let t: Target = format!(
            "punchgate://{A}?addr=/ip4/203.0.113.7/tcp/4001/p2p/{B}/p2p-circuit&addr=/ip4/10.0.0.2/tcp/4001"
        )
        .parse()
        .expect("with addrs");
        assert_eq!(t.addrs.len(), 2);
        let t: Target = format!("/ip4/203.0.113.7/tcp/4001/p2p/{A}")
            .parse()
            .expect("multiaddr");
        assert_eq!(t.peer.to_string(), A);
        let t: Target = format!("/ip4/203.0.113.7/tcp/4001/p2p/{B}/p2p-circuit/p2p/{A}")
            .parse()
            .expect("circuit multiaddr");
        assert_eq!(t.peer.to_string(), A);
    }

    #[test]
    fn refuses_bad_uris_saying_which() {
        let cases = [
            ("punchgate://".to_owned(), "names no peer"),
            ("/ip4/203.0.113.7/tcp/4001".to_owned(), "names no peer"),
            ("punchgate://notapeer".to_owned(), "is not a peer id"),
            (
                format!("punchgate://{A}?addr=/ip4/nope"),
                "is not a multiaddr",
            ),
            (
                format!("punchgate://{A}?addr=/ip4/203.0.113.7/tcp/4001/p2p/{B}"),
                "is for peer",
            ),
            (format!("punchgate://{A}?via=x"), "unknown parameter 'via'"),
            ("http://example.com".to_owned(), "is not a target"),
            ("/ip4/1.2.3.4/tcp/xx".to_owned(), "is not a multiaddr"),
        ];
        for (uri, why) in cases {
            let err = uri.parse::<Target>().expect_err(&uri).to_string();
            assert!(err.contains(why), "{uri}: {err}");
        }
    }
}
