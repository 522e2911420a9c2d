//! Serving tonic services on a protocol's inbound libp2p streams.
//!
//! [`Incoming`] is the stream of connections `serve_with_incoming` takes. It holds inbound
//! streams in bounded queues (the node's stream behaviour keeps them until taken: backpressure,
//! never drops) and admits each connection or refuses it: the allow list, relay quotas,
//! duplicate peers, or the application's own rule.
//!
//! # Who may call (deny by default)
//! [`Incoming::new`] takes an [`Allow`]: the peers whose connections are served, or
//! [`Allow::Any`] to serve every peer on purpose. There is no default, so a server cannot admit
//! everyone by omission. A peer is its cryptographic identity (the key that authenticated the
//! libp2p connection), so there is no secret to share or leak.
//!
//! The allow list is checked first, before any other rule and before a relay quota slot is
//! taken. A peer that is not allowed gets a closed stream and nothing else: no gRPC status, no
//! reason, the same as any other refusal. The refusal is logged at WARN (`peer not allowed`,
//! with the peer id), at most one line per peer every
//! [`DENIAL_LOG_INTERVAL`](punchgate::access::DENIAL_LOG_INTERVAL); the next line says how many
//! were held back (`suppressed`).

use std::{
    collections::HashMap,
    fmt,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Instant,
};

use futures::Stream;
use libp2p::PeerId;
use punchgate::{
    access::{Allow, DenialLog},
    net::stream::{AlreadyRegistered, IncomingStream, IncomingStreams},
    node::NodeHandle,
};

use crate::{
    config::BridgeConfig,
    quota::RelayBook,
    stream::{P2pConnectInfo, P2pStream},
};

/// Admission rule: `Ok` admits, `Err(reason)` refuses (the stream is closed and the reason
/// logged).
type Admission = Box<dyn Fn(&P2pConnectInfo, &Connections) -> Result<(), String> + Send + Sync>;

/// Live gRPC connections per peer (inbound). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Connections(Arc<Mutex<HashMap<PeerId, usize>>>);

impl Connections {
    fn lock(&self) -> MutexGuard<'_, HashMap<PeerId, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live connections from `peer`.
    pub fn count(&self, peer: &PeerId) -> usize {
        self.lock().get(peer).copied().unwrap_or(0)
    }

    /// Live connections from all peers.
    pub fn total(&self) -> usize {
        self.lock().values().sum()
    }

    fn enter(&self, peer: PeerId) -> LiveGuard {
        *self.lock().entry(peer).or_default() += 1;
        LiveGuard {
            connections: self.clone(),
            peer,
        }
    }
}

/// Counts a connection as live until dropped (with its stream).
#[derive(Debug)]
pub(crate) struct LiveGuard {
    connections: Connections,
    peer: PeerId,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut map = self.connections.lock();
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// Inbound gRPC connections for `Server::serve_with_incoming`, from the peers an [`Allow`]
/// admits.
pub struct Incoming {
    streams: IncomingStreams,
    allow: Allow,
    denials: DenialLog,
    connections: Connections,
    relays: RelayBook,
    admission: Option<Admission>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("allow", &self.allow)
            .field("connections", &self.connections.total())
            .field("relayed", &self.relays.total_in_use())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// Accepts `config.protocol` streams on `node` (at most `config.accept_queue` waiting) from
    /// the peers `allow` admits; every other peer's stream is closed (deny by default: pass
    /// [`Allow::Any`] to serve every peer).
    pub fn new(
        node: &NodeHandle,
        config: &BridgeConfig,
        allow: Allow,
    ) -> Result<Self, AlreadyRegistered> {
        Ok(Self {
            streams: node.accept(config.protocol.clone(), config.accept_queue)?,
            allow,
            denials: DenialLog::default(),
            connections: Connections::default(),
            relays: RelayBook::new(config.relay_limits),
            admission: None,
        })
    }

    /// Refuses a connection from a peer that already has one (Kaspa's `PeerAlreadyExists`).
    pub fn refuse_duplicate_peers(self) -> Self {
        self.admit_with(|info, connections| {
            if connections.count(&info.peer) > 0 {
                Err(format!("peer {} is already connected", info.peer))
            } else {
                Ok(())
            }
        })
    }

    /// Admits connections by the application's rule (replaces any earlier rule). The rule sees
    /// only connections from peers the allow list admits.
    pub fn admit_with(
        mut self,
        rule: impl Fn(&P2pConnectInfo, &Connections) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.admission = Some(Box::new(rule));
        self
    }

    /// Who may call.
    pub fn allow(&self) -> &Allow {
        &self.allow
    }

    /// The live connections, for the application's own bookkeeping.
    pub fn connections(&self) -> Connections {
        self.connections.clone()
    }

    /// The relay quota book inbound relayed connections count against.
    pub fn relay_book(&self) -> RelayBook {
        self.relays.clone()
    }

    fn admit(&mut self, incoming: IncomingStream) -> Option<P2pStream> {
        let peer = incoming.info.peer;
        if !self.allow.admits(&peer) {
            // Dropping the stream closes it: the peer learns nothing more.
            if let Some(suppressed) = self.denials.admit(peer, Instant::now()) {
                tracing::warn!(
                    %peer,
                    suppressed,
                    "gRPC connection refused: peer not allowed"
                );
            }
            return None;
        }
        let stream = P2pStream::new(incoming.stream, &incoming.info).with_slot(incoming.slot);
        let info = stream.info().clone();
        let ticket = match incoming.info.relay {
            Some(relay) => match self.relays.try_acquire(relay) {
                Ok(ticket) => Some(ticket),
                Err(error) => {
                    tracing::warn!(peer = %info.peer, %error, "gRPC connection refused");
                    return None;
                }
            },
            None => None,
        };
        if let Some(rule) = &self.admission
            && let Err(reason) = rule(&info, &self.connections)
        {
            tracing::warn!(peer = %info.peer, %reason, "gRPC connection refused");
            return None;
        }
        tracing::info!(
            peer = %info.peer,
            remote_addr = %info.remote_addr,
            relayed = info.relayed,
            socket_addr = %info.socket_addr,
            "accepting incoming libp2p stream for gRPC"
        );
        let live = self.connections.enter(info.peer);
        Some(stream.with_ticket(ticket).with_live(live))
    }
}

impl Stream for Incoming {
    type Item = Result<P2pStream, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            match Pin::new(&mut self.streams).poll_next(cx) {
                Poll::Ready(Some(incoming)) => {
                    if let Some(stream) = self.admit(incoming) {
                        return Poll::Ready(Some(Ok(stream)));
                    }
                    // Refused: the stream is dropped (closed); take the next one.
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
