//! One handler per connection: negotiates outbound streams on request and hands inbound streams
//! to their protocol's queue, holding them (bounded) while that queue is full.

use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    convert::Infallible,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures::{
    StreamExt as _,
    channel::{mpsc, oneshot},
};
use libp2p::{
    StreamProtocol,
    swarm::{
        ConnectionHandler, ConnectionHandlerEvent, StreamUpgradeError, SubstreamProtocol,
        handler::{
            ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
        },
    },
};

use super::{
    ConnectionInfo, IncomingStream, OpenStreamError, Shared, StreamSlot, upgrade::Upgrade,
};

/// Inbound streams one connection holds while their protocol's queue is full. yamux lets a
/// well-behaved remote open at most 256 streams we have not acknowledged, so this is never
/// reached by a libp2p peer that plays by the rules; beyond it, new streams are dropped.
pub const MAX_INBOUND_BACKLOG: usize = 256;

/// At most one "inbound stream dropped" line per connection this often.
const DROP_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Outbound streams one connection negotiates at a time.
const MAX_OUTBOUND_IN_FLIGHT: usize = 64;

/// A request from [`super::Control::open_stream`].
#[derive(Debug)]
pub(super) struct OutboundRequest {
    pub(super) protocol: StreamProtocol,
    pub(super) reply: oneshot::Sender<Result<libp2p::Stream, OpenStreamError>>,
}

pub struct Handler {
    /// The connection this handler serves, copied into every inbound stream.
    info: ConnectionInfo,
    /// Accepted protocols and their queues.
    shared: Arc<Mutex<Shared>>,
    /// Requests for outbound streams on this connection.
    requests: mpsc::Receiver<OutboundRequest>,
    /// Outbound negotiations in flight, by the id passed as open info.
    in_flight: HashMap<
        u64,
        (
            StreamProtocol,
            oneshot::Sender<Result<libp2p::Stream, OpenStreamError>>,
        ),
    >,
    /// Id for the next outbound negotiation.
    next_id: u64,
    /// This connection's sender into each protocol's queue, and the queue's count of waiting
    /// streams. One sender per protocol: every clone of an mpsc sender adds a guaranteed slot,
    /// so a clone per stream would make the queue unbounded.
    queues: HashMap<StreamProtocol, (mpsc::Sender<IncomingStream>, Arc<AtomicUsize>)>,
    /// Inbound streams waiting for room in their protocol's queue, oldest first.
    backlog: VecDeque<IncomingStream>,
    /// [`Shared`]'s change counter for the accepted protocols.
    generation: Arc<AtomicU64>,
    /// The accepted protocols as of a generation: `listen_protocol` runs on every poll of the
    /// connection and takes the shared lock only when the list changed.
    listen: RefCell<(u64, Arc<[StreamProtocol]>)>,
    /// Inbound streams open on this connection (backlogged, queued or held by the
    /// application), and the most it may have.
    open: Arc<AtomicUsize>,
    max_open: usize,
    /// One line per [`DROP_LOG_INTERVAL`] about inbound streams dropped (backlog full, or too
    /// many open), with the count since the last.
    drop_log: punchgate_machine::limit::Every,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("stream::Handler")
            .field("info", &self.info)
            .field("in_flight", &self.in_flight.len())
            .field("backlog", &self.backlog.len())
            .finish_non_exhaustive()
    }
}

impl Handler {
    pub(super) fn new(
        info: ConnectionInfo,
        shared: Arc<Mutex<Shared>>,
        requests: mpsc::Receiver<OutboundRequest>,
        max_open: usize,
    ) -> Self {
        // The generation is read under the lock with the list, so the pair is consistent.
        let (generation, current, protocols) = {
            let shared = Shared::lock(&shared);
            let current = shared.generation.load(Ordering::Acquire);
            (shared.generation.clone(), current, shared.protocols.clone())
        };
        Self {
            generation,
            listen: RefCell::new((current, protocols)),
            info,
            shared,
            requests,
            in_flight: HashMap::new(),
            next_id: 0,
            queues: HashMap::new(),
            backlog: VecDeque::new(),
            open: Arc::new(AtomicUsize::new(0)),
            max_open,
            drop_log: punchgate_machine::limit::Every::new(DROP_LOG_INTERVAL),
        }
    }

    fn on_inbound(&mut self, stream: libp2p::Stream, protocol: StreamProtocol) {
        let queue = match self.queues.get(&protocol) {
            Some((sender, _)) if !sender.is_closed() => self.queues.get(&protocol),
            _ => {
                let Some(queue) = Shared::lock(&self.shared).queue_for(&protocol) else {
                    tracing::debug!(%protocol, "inbound stream for a protocol no longer accepted");
                    return;
                };
                self.queues.insert(protocol.clone(), queue);
                self.queues.get(&protocol)
            }
        };
        let Some((_, waiting)) = queue else {
            return;
        };
        if self.backlog.len() >= MAX_INBOUND_BACKLOG {
            self.log_drop(
                &protocol,
                "inbound stream dropped: the peer opened more streams than the backlog holds",
            );
            return;
        }
        // Dropping the stream resets it: the peer sees this one stream refused, and the
        // connection (with every tunnel on it) stays.
        let Some(slot) = StreamSlot::take(&self.open, self.max_open) else {
            self.log_drop(
                &protocol,
                "inbound stream refused: the peer has as many streams open on this connection as it may (--max-streams-per-connection)",
            );
            return;
        };
        if self.info.relayed && self.info.circuit_limit.is_none() {
            // The relay's word on the circuit comes after the connection (the driver records
            // it in the shared table): pick it up for this stream and the ones after it.
            if let Some(entry) = Shared::lock(&self.shared)
                .connections
                .get(&self.info.connection)
            {
                self.info.circuit_limit = entry.info.circuit_limit;
            }
        }
        waiting.fetch_add(1, Ordering::Relaxed);
        self.backlog.push_back(IncomingStream {
            stream,
            protocol,
            info: self.info.clone(),
            slot,
        });
    }

    /// A peer decides how often streams are dropped: one line per connection per 10 s, with
    /// the count of drops since the last one.
    fn log_drop(&mut self, protocol: &StreamProtocol, message: &'static str) {
        if let Some(held_back) = self.drop_log.admit(std::time::Instant::now()) {
            tracing::warn!(
                peer = %self.info.peer,
                %protocol,
                backlog = MAX_INBOUND_BACKLOG,
                open = self.open.load(Ordering::Relaxed),
                max_open = self.max_open,
                dropped = held_back + 1,
                "{message}"
            );
        }
    }

    /// Moves backlogged streams into their queues while there is room. Registers for a wake-up
    /// when the front one's queue is full (order is kept, per connection).
    fn flush_backlog(&mut self, cx: &mut Context<'_>) {
        while let Some(front) = self.backlog.front() {
            let Some((sender, waiting)) = self.queues.get_mut(&front.protocol) else {
                // Cannot happen: a stream is backlogged only with its queue known.
                self.backlog.pop_front();
                continue;
            };
            match sender.poll_ready(cx) {
                Poll::Pending => return,
                Poll::Ready(Err(_)) => {
                    // The application stopped accepting this protocol.
                    waiting.fetch_sub(1, Ordering::Relaxed);
                    self.backlog.pop_front();
                }
                Poll::Ready(Ok(())) => {
                    let Some(stream) = self.backlog.pop_front() else {
                        return;
                    };
                    // Room was just confirmed; a failure means the receiver went away.
                    if sender.start_send(stream).is_err() {
                        waiting.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        // The connection closed: its backlogged streams are gone.
        for stream in self.backlog.drain(..) {
            if let Some((_, waiting)) = self.queues.get(&stream.protocol) {
                waiting.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = u64;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        let current = self.generation.load(Ordering::Acquire);
        let mut listen = self.listen.borrow_mut();
        if listen.0 != current {
            // Read under the lock: at least as new as `current`; a later change bumps it again.
            *listen = (current, Shared::lock(&self.shared).protocols.clone());
        }
        SubstreamProtocol::new(
            Upgrade {
                protocols: listen.1.clone(),
            },
            (),
        )
    }

    fn connection_keep_alive(&self) -> bool {
        // Streams handed out keep the connection alive themselves; work in progress must too.
        !self.in_flight.is_empty() || !self.backlog.is_empty()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, u64, Self::ToBehaviour>> {
        self.flush_backlog(cx);
        // Forget requests whose caller gave up.
        self.in_flight.retain(|_, (_, reply)| !reply.is_canceled());
        if self.in_flight.len() >= MAX_OUTBOUND_IN_FLIGHT {
            return Poll::Pending;
        }
        match self.requests.poll_next_unpin(cx) {
            Poll::Ready(Some(OutboundRequest { protocol, reply })) => {
                let id = self.next_id;
                self.next_id = self.next_id.wrapping_add(1);
                self.in_flight.insert(id, (protocol.clone(), reply));
                Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                    protocol: SubstreamProtocol::new(
                        Upgrade {
                            protocols: Arc::new([protocol]),
                        },
                        id,
                    ),
                })
            }
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {}
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol, (), u64>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => self.on_inbound(stream, protocol),
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, _),
                info: id,
            }) => {
                if let Some((_, reply)) = self.in_flight.remove(&id) {
                    let _ = reply.send(Ok(stream));
                }
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: id, error }) => {
                let Some((protocol, reply)) = self.in_flight.remove(&id) else {
                    return;
                };
                let error = match error {
                    StreamUpgradeError::Timeout => OpenStreamError::Timeout,
                    StreamUpgradeError::NegotiationFailed => {
                        OpenStreamError::UnsupportedProtocol(protocol)
                    }
                    StreamUpgradeError::Io(e) => OpenStreamError::Io(e),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                let _ = reply.send(Err(error));
            }
            _ => {}
        }
    }
}

impl From<io::Error> for OpenStreamError {
    fn from(e: io::Error) -> Self {
        OpenStreamError::Io(e)
    }
}
