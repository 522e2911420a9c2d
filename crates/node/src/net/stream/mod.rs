//! Raw byte-stream protocols (tunnels, gRPC) on the connection the caller chooses.
//!
//! Modelled on `libp2p-stream` (same [`Control`] / [`IncomingStreams`] shape), with three
//! differences Punchgate needs and `libp2p-stream` 0.5 does not offer:
//!
//! - **Connection choice.** [`Control::open_stream`] opens on a given [`ConnectionId`], so a
//!   tunnel rides the hole-punched connection rather than a random one of the peer's connections
//!   (`libp2p-stream` picks at random, which puts new tunnels on the relay after a punch).
//! - **Backpressure, not drops.** An inbound stream waits in its connection's bounded queue until
//!   the application takes it; `libp2p-stream` drops a stream when its consumer lags.
//! - **Metadata.** Every inbound stream carries its connection's id, remote address and whether
//!   it is relayed, which gRPC's connect info and the tunnel logs need.
//!
//! Everything is bounded: the per-protocol queue (chosen by the caller of [`Control::accept`]),
//! each connection's inbound backlog ([`MAX_INBOUND_BACKLOG`]), each connection's outbound
//! request queue and its in-flight stream negotiations.

mod handler;
mod upgrade;

use std::{
    collections::HashMap,
    fmt,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures::{
    SinkExt as _, StreamExt as _,
    channel::{mpsc, oneshot},
};
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
};

use handler::Handler;
pub use handler::MAX_INBOUND_BACKLOG;

/// Outbound stream requests a connection queues before [`Control::open_stream`] waits.
const OUTBOUND_REQUEST_QUEUE: usize = 32;

/// What is known about the connection a stream runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The remote peer.
    pub peer: PeerId,
    /// The swarm's id for the connection.
    pub connection: ConnectionId,
    /// The remote's address as this side sees it (a `/p2p-circuit` address when relayed).
    pub remote_addr: Multiaddr,
    /// Whether the connection goes through a relay.
    pub relayed: bool,
    /// The relay, when it does.
    pub relay: Option<PeerId>,
    /// Whether this side dialled it.
    pub outbound: bool,
    /// What the relay allows on the circuit, once it said so (relayed connections only).
    pub circuit_limit: Option<punchgate_machine::CircuitLimit>,
}

/// An inbound stream with the connection it arrived on.
#[derive(Debug)]
pub struct IncomingStream {
    /// The stream, ready for the protocol's bytes.
    pub stream: Stream,
    /// The protocol it was negotiated for.
    pub protocol: StreamProtocol,
    /// The connection it arrived on.
    pub info: ConnectionInfo,
    /// The stream's place in its connection's count of open inbound streams: keep it as long
    /// as the stream ([`Behaviour::with_max_inbound_streams`]).
    pub slot: StreamSlot,
}

/// Counts one inbound stream against its connection's cap until dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    /// Takes a place in `open` unless `max` are taken already.
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Self(open.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Inbound streams (of the protocols accepted here) one connection may have open at once, by
/// default: half of yamux's limit ([`MAX_YAMUX_STREAMS_PER_CONNECTION`]), so that a peer that
/// opens more has its extra streams refused, one by one, instead of reaching the muxer's limit,
/// where yamux closes the whole connection and every tunnel on it.
///
/// [`MAX_YAMUX_STREAMS_PER_CONNECTION`]: crate::net::swarm::MAX_YAMUX_STREAMS_PER_CONNECTION
pub const DEFAULT_MAX_INBOUND_STREAMS: usize = 1024;

/// The protocol already has an [`IncomingStreams`].
#[derive(Debug, thiserror::Error)]
#[error("protocol {0} is already being accepted")]
pub struct AlreadyRegistered(pub StreamProtocol);

/// Opening an outbound stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStreamError {
    /// The connection is not (or no longer) open.
    #[error("connection {0} is not open")]
    ConnectionClosed(ConnectionId),
    /// The remote does not speak the protocol.
    #[error("the remote peer does not support {0}")]
    UnsupportedProtocol(StreamProtocol),
    /// Negotiating the stream did not finish in time.
    #[error("stream negotiation timed out")]
    Timeout,
    /// The muxer or connection failed while opening the stream.
    #[error("stream could not be opened: {0}")]
    Io(#[source] std::io::Error),
}

/// Opens and accepts streams. Cheap to clone; every clone shares the same behaviour.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Mutex<Shared>>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

impl Control {
    /// Open a `protocol` stream on `connection`.
    ///
    /// Waits while the connection's request queue is full (backpressure). Cancel-safe: dropping
    /// the future abandons the request; a stream negotiated afterwards is dropped.
    pub async fn open_stream(
        &self,
        connection: ConnectionId,
        protocol: StreamProtocol,
    ) -> Result<Stream, OpenStreamError> {
        let mut sender = Shared::lock(&self.shared)
            .connections
            .get(&connection)
            .map(|c| c.requests.clone())
            .ok_or(OpenStreamError::ConnectionClosed(connection))?;
        let (reply, response) = oneshot::channel();
        sender
            .send(handler::OutboundRequest { protocol, reply })
            .await
            .map_err(|_| OpenStreamError::ConnectionClosed(connection))?;
        response
            .await
            .map_err(|_| OpenStreamError::ConnectionClosed(connection))?
    }

    /// Accept inbound streams of `protocol`; at most `capacity` wait in the returned queue
    /// (plus each connection's backlog) before remote peers are slowed down.
    ///
    /// Dropping the [`IncomingStreams`] stops accepting: new streams are then refused during
    /// negotiation.
    pub fn accept(
        &self,
        protocol: StreamProtocol,
        capacity: usize,
    ) -> Result<IncomingStreams, AlreadyRegistered> {
        let mut shared = Shared::lock(&self.shared);
        shared.inbound.retain(|_, q| !q.sender.is_closed());
        if shared.inbound.contains_key(&protocol) {
            return Err(AlreadyRegistered(protocol));
        }
        let (sender, receiver) = mpsc::channel(capacity);
        let waiting = Arc::new(AtomicUsize::new(0));
        shared.inbound.insert(
            protocol,
            InboundQueue {
                sender,
                waiting: waiting.clone(),
            },
        );
        shared.protocols_changed();
        Ok(IncomingStreams {
            receiver,
            waiting,
            shared: self.shared.clone(),
        })
    }

    /// Inbound streams of `protocol` that arrived and wait for the application: the measure of
    /// backpressure (held in connection backlogs and the accept queue, never dropped).
    pub fn waiting(&self, protocol: &StreamProtocol) -> usize {
        Shared::lock(&self.shared)
            .inbound
            .get(protocol)
            .map_or(0, |q| q.waiting.load(Ordering::Relaxed))
    }

    /// The open connections to `peer`.
    pub fn connections_of(&self, peer: PeerId) -> Vec<ConnectionInfo> {
        Shared::lock(&self.shared)
            .connections
            .values()
            .filter(|c| c.info.peer == peer)
            .map(|c| c.info.clone())
            .collect()
    }

    /// Every open connection.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        Shared::lock(&self.shared)
            .connections
            .values()
            .map(|c| c.info.clone())
            .collect()
    }

    /// Records what the relay of a relayed `connection` allows on its circuit; streams that
    /// arrive on it from now on carry it in their [`ConnectionInfo`].
    pub fn set_circuit_limit(
        &self,
        connection: ConnectionId,
        limit: punchgate_machine::CircuitLimit,
    ) {
        if let Some(entry) = Shared::lock(&self.shared).connections.get_mut(&connection) {
            entry.info.circuit_limit = Some(limit);
        }
    }

    /// What is known about an open connection.
    pub fn connection_info(&self, connection: ConnectionId) -> Option<ConnectionInfo> {
        Shared::lock(&self.shared)
            .connections
            .get(&connection)
            .map(|c| c.info.clone())
    }
}

/// Inbound streams of one protocol. Dropping it stops accepting the protocol.
#[must_use = "streams wait (and slow their peers down) until taken"]
pub struct IncomingStreams {
    receiver: mpsc::Receiver<IncomingStream>,
    /// Shared with the handlers: streams arrived and not yet taken.
    waiting: Arc<AtomicUsize>,
    /// To withdraw the protocol from the list connections offer when dropped.
    shared: Arc<Mutex<Shared>>,
}

impl fmt::Debug for IncomingStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingStreams")
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl Drop for IncomingStreams {
    fn drop(&mut self) {
        // Closed first, so the list no longer offers the protocol; a stream negotiated in the
        // meantime finds the queue closed and is dropped by its handler.
        self.receiver.close();
        Shared::lock(&self.shared).protocols_changed();
    }
}

impl futures::Stream for IncomingStreams {
    type Item = IncomingStream;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.receiver.poll_next_unpin(cx);
        if let Poll::Ready(Some(_)) = &next {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        next
    }
}

impl IncomingStreams {
    /// The next inbound stream; `None` once the node has stopped. Cancel-safe.
    pub async fn next(&mut self) -> Option<IncomingStream> {
        futures::StreamExt::next(self).await
    }
}

/// State shared by the behaviour, its handlers and every [`Control`].
struct Shared {
    /// Accepted protocols and the queue their streams go to.
    inbound: HashMap<StreamProtocol, InboundQueue>,
    /// Open connections: their metadata and the queue their handler reads requests from.
    connections: HashMap<ConnectionId, ConnectionEntry>,
    /// The accepted protocols, as every connection offers them. The swarm asks each handler for
    /// its protocols every time it polls the connection (each read or write on any stream), so
    /// the list is built once per change, not once per poll.
    protocols: Arc<[StreamProtocol]>,
    /// Bumped on every change of `protocols`; handlers read it without taking the lock.
    generation: Arc<AtomicU64>,
}

/// Where one protocol's inbound streams go.
struct InboundQueue {
    sender: mpsc::Sender<IncomingStream>,
    /// Streams arrived and not yet taken by the application.
    waiting: Arc<AtomicUsize>,
}

struct ConnectionEntry {
    info: ConnectionInfo,
    requests: mpsc::Sender<handler::OutboundRequest>,
}

impl Shared {
    fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves plain maps behind: still consistent.
        shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds the offered list after a protocol was accepted or its queue dropped.
    fn protocols_changed(&mut self) {
        self.inbound.retain(|_, q| !q.sender.is_closed());
        self.protocols = self.inbound.keys().cloned().collect();
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn queue_for(
        &self,
        protocol: &StreamProtocol,
    ) -> Option<(mpsc::Sender<IncomingStream>, Arc<AtomicUsize>)> {
        self.inbound
            .get(protocol)
            .map(|q| (q.sender.clone(), q.waiting.clone()))
    }
}

/// The [`NetworkBehaviour`]: creates one handler per connection and keeps [`Shared`] current.
pub struct Behaviour {
    shared: Arc<Mutex<Shared>>,
    /// Inbound streams one connection may have open at once.
    max_inbound_streams: usize,
}

impl fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("stream::Behaviour").finish_non_exhaustive()
    }
}

impl Default for Behaviour {
    fn default() -> Self {
        Self::new()
    }
}

impl Behaviour {
    /// A behaviour with no accepted protocols, and at most [`DEFAULT_MAX_INBOUND_STREAMS`]
    /// inbound streams open per connection.
    pub fn new() -> Self {
        Self::with_max_inbound_streams(DEFAULT_MAX_INBOUND_STREAMS)
    }

    /// A behaviour with no accepted protocols, and at most `max` inbound streams open per
    /// connection (from arrival until the application drops the stream and its
    /// [`StreamSlot`]). Beyond that a new inbound stream is dropped, which resets it: the peer
    /// sees that one stream fail, and the connection stays.
    pub fn with_max_inbound_streams(max: usize) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                inbound: HashMap::new(),
                connections: HashMap::new(),
                protocols: Arc::new([]),
                generation: Arc::new(AtomicU64::new(0)),
            })),
            max_inbound_streams: max.max(1),
        }
    }

    /// A new [`Control`] for this behaviour.
    pub fn new_control(&self) -> Control {
        Control {
            shared: self.shared.clone(),
        }
    }

    fn new_handler(&self, info: ConnectionInfo) -> Handler {
        let (requests, receiver) = mpsc::channel(OUTBOUND_REQUEST_QUEUE);
        let connection = info.connection;
        Shared::lock(&self.shared).connections.insert(
            connection,
            ConnectionEntry {
                info: info.clone(),
                requests,
            },
        );
        Handler::new(
            info,
            self.shared.clone(),
            receiver,
            self.max_inbound_streams,
        )
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.new_handler(ConnectionInfo {
            peer,
            connection,
            remote_addr: remote_addr.clone(),
            relayed: punchgate_machine::node::is_relayed(local_addr),
            // Inbound circuits: our listen address names the relay.
            relay: punchgate_machine::reach::relay_of(local_addr),
            outbound: false,
            circuit_limit: None,
        }))
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.new_handler(ConnectionInfo {
            peer,
            connection,
            remote_addr: addr.clone(),
            relayed: punchgate_machine::node::is_relayed(addr),
            relay: punchgate_machine::reach::relay_of(addr),
            outbound: true,
            circuit_limit: None,
        }))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) = event {
            Shared::lock(&self.shared)
                .connections
                .remove(&connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
