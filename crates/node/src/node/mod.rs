//! A running Punchgate node: the driver task around the swarm, and the handle applications use.
//!
//! [`Node::start`] builds the swarm, opens its listeners, binds the `--tunnel` ports and spawns
//! the tasks (driver, tunnel server, tunnel clients). [`NodeHandle`] is what tunnels, the gRPC
//! bridge and tests use: open a stream to a peer on the best path, accept streams of a protocol,
//! watch [`NodeEvent`]s. [`Node::shutdown`] stops everything and returns once every task ended.

mod circuits;
mod driver;
pub(crate) mod introduce;
pub(crate) mod records;
mod relay_gate;

use std::{collections::HashMap, str::FromStr as _, sync::Arc, time::Duration};

use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use punchgate_machine::{NatStatus, PathKind, Phase, RelayState};
use tokio::{
    net::TcpListener,
    sync::{broadcast, mpsc, oneshot},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::{NodeConfig, TunnelSpec},
    net::{
        self,
        stream::{AlreadyRegistered, ConnectionInfo, Control, IncomingStreams, OpenStreamError},
    },
    protocol, tunnel,
};

/// Requests queued from handles to the driver before callers wait.
const REQUEST_QUEUE: usize = 256;
/// [`NodeEvent`]s buffered per subscriber; a slower subscriber skips ahead (and is told so).
const EVENT_BUFFER: usize = 1024;
/// Inbound tunnel streams waiting for the tunnel server.
const TUNNEL_ACCEPT_QUEUE: usize = 128;
/// Introduction streams waiting to be handled.
const INTRODUCE_ACCEPT_QUEUE: usize = 32;
/// Birthday punch requests waiting to be served.
const BIRTHDAY_ACCEPT_QUEUE: usize = 8;
/// How long [`Node::start`] waits for its listeners to report an address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Node::shutdown`] waits for tunnels to wind down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What happened on the node, for applications, tests and the lab.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A listener is up.
    Listening {
        /// The address.
        addr: Multiaddr,
    },
    /// A connection opened.
    ConnectionEstablished {
        /// The connection.
        info: ConnectionInfo,
    },
    /// A connection closed.
    ConnectionClosed {
        /// The connection.
        info: ConnectionInfo,
    },
    /// The lifecycle phase changed.
    PhaseChanged {
        /// The new phase.
        phase: Phase,
    },
    /// The NAT status the node acts on changed.
    NatStatusChanged {
        /// The new status.
        status: NatStatus,
    },
    /// A relay accepted our reservation: peers can reach us at `addr`.
    RelayReservationAccepted {
        /// The relay.
        relay: PeerId,
        /// Our circuit address.
        addr: Multiaddr,
    },
    /// A relay refused our reservation, or the request failed; it will be retried with backoff.
    RelayReservationFailed {
        /// The relay.
        relay: PeerId,
        /// Why.
        reason: String,
    },
    /// The first direct connection to a peer opened (dialled, accepted, hole-punched or
    /// reversed).
    DirectConnection {
        /// The peer.
        peer: PeerId,
        /// From our first dial of the peer (or its first connection to us) to now.
        since_first_contact: Duration,
        /// From the first relayed connection to now, if the peer was reached through a relay
        /// first.
        since_relayed: Option<Duration>,
        /// Direct dial attempts made (at least 1).
        attempts: u32,
        /// The direct connection's remote address.
        remote_addr: Multiaddr,
    },
    /// DCUtR gave up: streams to `peer` use the relay.
    HolePunchFailed {
        /// The peer.
        peer: PeerId,
        /// What DCUtR said.
        reason: String,
    },
}

/// A snapshot of the node's state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Lifecycle phase.
    pub phase: Phase,
    /// NAT status acted on.
    pub nat: NatStatus,
    /// Own relay reservation.
    pub relay: RelayState,
    /// Peers with an open connection.
    pub connected_peers: usize,
    /// Current listen addresses (circuit addresses included).
    pub listen_addrs: Vec<Multiaddr>,
    /// Confirmed external addresses.
    pub external_addrs: Vec<Multiaddr>,
    /// Open connections, with their last round trip.
    pub connections: Vec<ConnectionStatus>,
    /// Our NAT's mapping of the QUIC listen port, from what observers report.
    pub mapping_quic: punchgate_machine::mapping::Mapping,
    /// Our NAT's mapping of the TCP listen port.
    pub mapping_tcp: punchgate_machine::mapping::Mapping,
}

/// An open connection, as [`NodeStatus`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStatus {
    /// The connection.
    pub info: ConnectionInfo,
    /// Its last ping round trip, once there was one.
    pub rtt: Option<Duration>,
}

/// Starting a node failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The swarm could not be built.
    #[error(transparent)]
    Build(#[from] net::swarm::BuildError),
    /// A `--listen` address could not be listened on.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A `--tunnel` port could not be bound.
    #[error("cannot bind tunnel port {bind} (for service '{service}' of {peer}): {source}")]
    TunnelBind {
        /// The local address.
        bind: std::net::SocketAddr,
        /// The remote service.
        service: String,
        /// The remote peer.
        peer: PeerId,
        /// Why.
        source: std::io::Error,
    },
    /// The allow rules do not fit the exposed services (deny by default).
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
    /// The `--metrics` address could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    MetricsBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Reaching a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The node is shutting down or has stopped.
    #[error("the node is shutting down")]
    Stopped,
    /// Too many requests are waiting for a path already.
    #[error("too many streams are waiting for a connection; try again")]
    Busy,
    /// No address is known and the DHT has none.
    #[error("peer {0} not found: no known address and no DHT record")]
    NotFound(PeerId),
    /// Every known address failed.
    #[error("cannot reach peer {peer}: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// The last dial error.
        reason: String,
    },
    /// Reaching the peer took longer than the connect timeout.
    #[error("timed out reaching peer {peer} after {after:?}")]
    Timeout {
        /// The peer.
        peer: PeerId,
        /// The timeout.
        after: Duration,
    },
    /// A peer cannot be dialled by itself.
    #[error("cannot open a stream to ourselves")]
    SelfDial,
    /// The only path to the peer is a relay circuit too short to carry a stream (the relay
    /// does not trust both ends), and no direct connection could be punched.
    #[error("peer {peer} is reachable only through a short relay circuit: {advice}")]
    ShortCircuit {
        /// The peer.
        peer: PeerId,
        /// What the relay allows and which flag on which node would allow more.
        advice: String,
    },
}

/// Opening a stream to a peer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No connection could be had.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection was there but the stream could not be opened.
    #[error(transparent)]
    Stream(#[from] OpenStreamError),
}

/// Requests from handles to the driver.
#[derive(Debug)]
enum Request {
    /// Find (dial, look up, wait for a punch) the connection a new stream to `peer` should use.
    Path {
        peer: PeerId,
        reply: oneshot::Sender<Result<ConnectionInfo, ConnectError>>,
    },
    /// Remember addresses where `peer` may be reached.
    AddAddresses { peer: PeerId, addrs: Vec<Multiaddr> },
    /// Dial `peer` at exactly `addr` and report how that dial ended.
    DialExact {
        peer: PeerId,
        addr: Multiaddr,
        reply: oneshot::Sender<Result<ConnectionInfo, ConnectError>>,
    },
    /// Bind QUIC to a port a birthday punch claimed.
    ListenPunched {
        port: u16,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Report the state machine's view.
    Status { reply: oneshot::Sender<NodeStatus> },
    /// The peers the relay server trusts with long circuits changed (a reload).
    SetTrusted {
        trusted: std::collections::HashSet<PeerId>,
    },
    /// Peer `from` (our relay, if we are to act on it) says `peer` wants a direct connection
    /// and is observed at `addrs`: dial it now.
    Introduced {
        from: PeerId,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    },
    /// An introduction we asked `via` for finished.
    IntroduceResult {
        peer: PeerId,
        via: PeerId,
        result: Result<Vec<Multiaddr>, String>,
    },
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    peer_id: PeerId,
    /// To the driver.
    requests: mpsc::Sender<Request>,
    /// Opens and accepts streams without going through the driver.
    control: Control,
    /// Source of [`NodeEvent`] subscriptions.
    events: broadcast::Sender<NodeEvent>,
    /// Cancelled when the node stops.
    shutdown: CancellationToken,
}

impl NodeHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Subscribe to [`NodeEvent`]s from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Open a `protocol` stream to `peer` on the best path: a direct connection if there is one;
    /// else, while only a relayed connection exists, wait a bounded time for a hole punch, then
    /// use the relay. Dials (known addresses, then the DHT) when not connected.
    ///
    /// Cancel-safe.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<(Stream, ConnectionInfo), OpenError> {
        let info = self.connect(peer).await?;
        let stream = self.control.open_stream(info.connection, protocol).await?;
        Ok((stream, info))
    }

    /// Open a `protocol` stream on a connection chosen by the caller (for example one returned
    /// by [`Self::connect`]). Cancel-safe.
    pub async fn open_stream_on(
        &self,
        connection: &ConnectionInfo,
        protocol: StreamProtocol,
    ) -> Result<Stream, OpenStreamError> {
        self.control
            .open_stream(connection.connection, protocol)
            .await
    }

    /// Reach `peer` and return the connection a new stream should use (see
    /// [`Self::open_stream`]). Cancel-safe.
    pub async fn connect(&self, peer: PeerId) -> Result<ConnectionInfo, ConnectError> {
        if peer == self.peer_id {
            return Err(ConnectError::SelfDial);
        }
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::Path { peer, reply })
            .await
            .map_err(|_| ConnectError::Stopped)?;
        response.await.map_err(|_| ConnectError::Stopped)?
    }

    /// Accept inbound `protocol` streams; at most `capacity` wait before peers are slowed down.
    pub fn accept(
        &self,
        protocol: StreamProtocol,
        capacity: usize,
    ) -> Result<IncomingStreams, AlreadyRegistered> {
        self.control.accept(protocol, capacity)
    }

    /// Dial `peer` at exactly `addr` (a relay circuit address may leave out the peer's id) and
    /// wait for that dial's outcome, for callers that try addresses in order. Cancel-safe.
    pub async fn dial_addr(
        &self,
        peer: PeerId,
        addr: Multiaddr,
    ) -> Result<ConnectionInfo, ConnectError> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::DialExact { peer, addr, reply })
            .await
            .map_err(|_| ConnectError::Stopped)?;
        response.await.map_err(|_| ConnectError::Stopped)?
    }

    /// Binds QUIC to `port`, which a birthday punch claimed ([`crate::net::punched::Claims`]).
    pub(crate) async fn listen_punched(&self, port: u16) -> Result<(), String> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::ListenPunched { port, reply })
            .await
            .map_err(|_| "the node stopped".to_owned())?;
        response.await.map_err(|_| "the node stopped".to_owned())?
    }

    /// Opens and accepts streams.
    pub(crate) fn control(&self) -> &Control {
        &self.control
    }

    /// Tell the node where `peer` may be reached (for example a relay circuit address).
    pub async fn add_addresses(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), ConnectError> {
        self.requests
            .send(Request::AddAddresses { peer, addrs })
            .await
            .map_err(|_| ConnectError::Stopped)
    }

    /// Hands an introduction to the driver.
    pub(crate) async fn introduced(&self, from: PeerId, peer: PeerId, addrs: Vec<Multiaddr>) {
        let _ = self
            .requests
            .send(Request::Introduced { from, peer, addrs })
            .await;
    }

    /// Lend long relay circuits to `trusted` (and, as before, by `--relay`), for connections
    /// from now on.
    pub(crate) async fn set_trusted(&self, trusted: std::collections::HashSet<PeerId>) {
        let _ = self.requests.send(Request::SetTrusted { trusted }).await;
    }

    /// A snapshot of the node's state.
    pub async fn status(&self) -> Result<NodeStatus, ConnectError> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::Status { reply })
            .await
            .map_err(|_| ConnectError::Stopped)?;
        response.await.map_err(|_| ConnectError::Stopped)
    }

    /// Inbound streams of `protocol` waiting for the application (see
    /// [`Control::waiting`]).
    pub fn waiting(&self, protocol: &StreamProtocol) -> usize {
        self.control.waiting(protocol)
    }

    /// What is known about an open connection.
    pub fn connection_info(
        &self,
        connection: libp2p::swarm::ConnectionId,
    ) -> Option<ConnectionInfo> {
        self.control.connection_info(connection)
    }

    /// Ask the node to stop. [`Node::shutdown`] also waits for it.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Resolves once the node has started stopping.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }
}

/// A running node. Dropping it without [`Node::shutdown`] stops it too, without waiting.
#[derive(Debug)]
pub struct Node {
    handle: NodeHandle,
    /// Every task the node spawned, to wait for at shutdown.
    tasks: TaskTracker,
    /// Listen addresses reported at start.
    listen_addrs: Vec<Multiaddr>,
    /// Where `/metrics` and `/status` are served.
    metrics_addr: Option<std::net::SocketAddr>,
    /// The services and their rules (replaced by [`Node::reload`]).
    exposed: Arc<tunnel::server::Exposed>,
    /// The tunnel tasks' limits.
    limits: tunnel::Limits,
    /// The metrics and the open tunnels.
    books: tunnel::Books,
    /// The `--tunnel` ports, in the order given (then in the order reloads added them).
    tunnel_ports: Vec<TunnelPort>,
}

/// A `--tunnel` port's listener, or a `--tunnel-udp` port's socket.
#[derive(Debug)]
enum TunnelListener {
    Tcp(TcpListener),
    Udp(tokio::net::UdpSocket),
}

impl TunnelListener {
    async fn bind(spec: &TunnelSpec) -> std::io::Result<Self> {
        Ok(match spec.protocol {
            crate::config::ServiceProtocol::Tcp => Self::Tcp(TcpListener::bind(spec.bind).await?),
            crate::config::ServiceProtocol::Udp => {
                Self::Udp(tokio::net::UdpSocket::bind(spec.bind).await?)
            }
        })
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match self {
            Self::Tcp(listener) => listener.local_addr(),
            Self::Udp(socket) => socket.local_addr(),
        }
    }
}

/// A `--tunnel` port and the task accepting on it.
#[derive(Debug)]
struct TunnelPort {
    spec: TunnelSpec,
    /// Where it listens (port 0 resolved).
    addr: std::net::SocketAddr,
    /// Closes the port (a TCP port's connections carry on; a UDP port's sessions end with it).
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`Node::reload`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Services now exposed, and before.
    pub services: (usize, usize),
    /// `--tunnel` ports opened.
    pub tunnels_added: Vec<std::net::SocketAddr>,
    /// `--tunnel` ports closed (their connections carry on), and `--tunnel-udp` ports (their
    /// sessions ended with them).
    pub tunnels_removed: Vec<std::net::SocketAddr>,
    /// Served tunnels closed because the new rules no longer admit their peer: (service,
    /// peer).
    pub tunnels_closed: Vec<(String, PeerId)>,
    /// New `--tunnel` ports that could not be opened, with why.
    pub tunnel_errors: Vec<(std::net::SocketAddr, String)>,
}

impl Node {
    /// Builds the swarm, listens, binds tunnel ports and starts every task. Returns once each
    /// listener has reported its address.
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        let rules = rules(&config)?;
        let metrics_listener = match config.metrics {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::MetricsBind { addr, source })?,
            ),
            None => None,
        };
        let mut tunnel_listeners = Vec::with_capacity(config.tunnels.len());
        for spec in &config.tunnels {
            let listener = TunnelListener::bind(spec)
                .await
                .map_err(|source| tunnel_bind_error(spec, source))?;
            tunnel_listeners.push((spec.clone(), listener));
        }

        let mut registry = prometheus_client::registry::Registry::default();
        let claims = net::punched::Claims::default();
        let swarm = net::swarm::build(&config, &mut registry, claims.clone())?;
        let libp2p_metrics = libp2p::metrics::Metrics::new(&mut registry);
        let metrics = crate::metrics::Metrics::new(&mut registry);
        let books = tunnel::Books::new(metrics.clone());
        let control = swarm.behaviour().streams.new_control();
        let peer_id = *swarm.local_peer_id();
        tracing::info!(%peer_id, "local peer id");

        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (request_tx, request_rx) = mpsc::channel(REQUEST_QUEUE);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let handle = NodeHandle {
            peer_id,
            requests: request_tx,
            control: control.clone(),
            events: events.clone(),
            shutdown: shutdown.clone(),
        };

        let (mapping_tx, mapping_rx) =
            tokio::sync::watch::channel(crate::punch::MappingView::default());
        let punches = crate::punch::Punches::new(
            handle.clone(),
            claims.clone(),
            mapping_rx,
            config.punch,
            config.trusted_peers(),
            config.autonat_private_ips,
        );
        let birthday = driver::Birthday::new(
            Some(punches.clone()),
            claims,
            mapping_tx,
            config.tunnels.iter().map(|t| t.peer).collect(),
            config.autonat_private_ips,
        );
        let mut driver = driver::Driver::new(
            swarm,
            &config,
            request_rx,
            handle.requests.clone(),
            shutdown.clone(),
            tasks.clone(),
            driver::Outputs {
                events,
                metrics: metrics.clone(),
                libp2p_metrics,
                birthday,
            },
        );
        let listen_addrs = driver.listen(&config.listen, LISTEN_TIMEOUT).await?;

        // Accept streams before the driver runs, so none arrives unaccepted.
        let accept = |protocol, capacity| {
            control
                .accept(protocol, capacity)
                .expect("a fresh node accepts each protocol once")
        };
        // TCP and UDP tunnel streams, served by one task under one set of limits.
        let incoming = futures::stream::select(
            accept(protocol::TUNNEL, TUNNEL_ACCEPT_QUEUE),
            accept(protocol::UDP_TUNNEL, TUNNEL_ACCEPT_QUEUE),
        );
        let introduce_requests = accept(introduce::INTRODUCE, INTRODUCE_ACCEPT_QUEUE);
        let introductions = accept(introduce::INTRODUCTION, INTRODUCE_ACCEPT_QUEUE);
        let birthday_requests = accept(crate::punch::BIRTHDAY, BIRTHDAY_ACCEPT_QUEUE);
        let limits = tunnel::Limits::new(&config);
        tasks.spawn(driver.run());
        tasks.spawn(introduce::serve(
            introduce_requests,
            control.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        tasks.spawn(introduce::receive(
            introductions,
            handle.clone(),
            tasks.clone(),
        ));
        let exposed = Arc::new(tunnel::server::Exposed::new(
            rules.services,
            rules.access,
            peer_id,
            control.clone(),
        ));
        let named = exposed.clone();
        tasks.spawn(crate::punch::serve(
            birthday_requests,
            punches,
            move |peer| named.rules().access.names_explicitly(peer),
            tasks.clone(),
        ));
        tasks.spawn(tunnel::server::run(
            incoming,
            exposed.clone(),
            limits.clone(),
            books.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        let metrics_addr = match metrics_listener {
            Some(listener) => {
                let addr = listener.local_addr().ok();
                if let Some(addr) = addr {
                    tracing::info!(%addr, "serving metrics on http://{addr}/metrics and status on http://{addr}/status");
                }
                tasks.spawn(crate::metrics::server::run(
                    listener,
                    crate::metrics::server::Sources {
                        registry: Arc::new(registry),
                        node: handle.clone(),
                        exposed: exposed.clone(),
                        tunnels: books.active.clone(),
                        metrics,
                    },
                    shutdown.clone(),
                    tasks.clone(),
                ));
                addr
            }
            None => None,
        };
        tasks.close();

        let mut node = Node {
            handle,
            tasks,
            listen_addrs,
            metrics_addr,
            exposed,
            limits,
            books,
            tunnel_ports: Vec::new(),
        };
        for (spec, listener) in tunnel_listeners {
            node.open_tunnel_port(spec.clone(), listener)
                .map_err(|source| tunnel_bind_error(&spec, source))?;
        }
        Ok(node)
    }

    /// Starts accepting on a `--tunnel` port (receiving on a `--tunnel-udp` one), and says
    /// when the tunnel is ready and over which path ([`tunnel::client::announce`]).
    fn open_tunnel_port(
        &mut self,
        spec: TunnelSpec,
        listener: TunnelListener,
    ) -> std::io::Result<std::net::SocketAddr> {
        let addr = listener.local_addr()?;
        tracing::info!(
            bind = %addr,
            peer = %spec.peer,
            service = %spec.service,
            protocol = %spec.protocol,
            "tunnel listening"
        );
        let stop = self.handle.shutdown.child_token();
        self.tasks.spawn(tunnel::client::announce(
            spec.clone(),
            addr,
            self.handle.clone(),
            stop.clone(),
        ));
        let port = tunnel::PortTask {
            spec: spec.clone(),
            node: self.handle.clone(),
            limits: self.limits.clone(),
            books: self.books.clone(),
            stop: stop.clone(),
            tasks: self.tasks.clone(),
        };
        let task = match listener {
            TunnelListener::Tcp(listener) => self.tasks.spawn(tunnel::client::run(listener, port)),
            TunnelListener::Udp(socket) => self.tasks.spawn(tunnel::udp::run(socket, port)),
        };
        self.tunnel_ports.push(TunnelPort {
            spec,
            addr,
            stop,
            task,
        });
        Ok(addr)
    }

    /// Applies a new configuration's services, `--allow` rules (and the relay trust they
    /// give) and `--tunnel` ports (SIGHUP), without dropping established tunnel connections,
    /// with one exception: a served tunnel whose peer the new rules no longer admit to its
    /// service is closed (access taken away is taken away now, not when the peer next
    /// reconnects). Tunnels carried from a removed `--tunnel` port carry on until they end; the
    /// port itself closes. A removed `--tunnel-udp` port's sessions end with it (they answer
    /// from its socket). Every other setting takes effect at the next start.
    ///
    /// Rules that do not fit together are an error, and nothing changes. Otherwise the rules
    /// apply first; then removed ports close and new ones open, and a port that cannot be bound
    /// is reported in [`ReloadReport::tunnel_errors`] (the rest still applies).
    pub async fn reload(&mut self, config: &NodeConfig) -> Result<ReloadReport, StartError> {
        let rules = rules(config)?;
        let mut report = ReloadReport {
            services: (rules.services.len(), self.exposed.rules().services.len()),
            ..ReloadReport::default()
        };

        // The rules, and the tunnels they no longer admit.
        self.exposed.replace(rules);
        let now = self.exposed.rules();
        report.tunnels_closed = self.books.active.close_served_unless(|service, peer| {
            crate::config::ServiceName::from_str(service).is_ok_and(|name| now.admits(&name, peer))
        });
        for (service, peer) in &report.tunnels_closed {
            tracing::info!(%service, peer_id = %peer, "closing a tunnel: the reloaded --allow rules no longer admit this peer to the service");
        }
        // Whom the relay lends long circuits (peers named in --allow are trusted): for
        // connections from now on.
        self.handle.set_trusted(config.trusted_peers()).await;

        // Ports: the removed ones close first (a new one may take the same address), all at
        // once (a UDP port waits a moment for its sessions).
        let (kept, removed): (Vec<TunnelPort>, Vec<TunnelPort>) =
            std::mem::take(&mut self.tunnel_ports)
                .into_iter()
                .partition(|port| config.tunnels.contains(&port.spec));
        self.tunnel_ports = kept;
        for port in &removed {
            port.stop.cancel();
        }
        for port in removed {
            let _ = port.task.await;
            match port.spec.protocol {
                crate::config::ServiceProtocol::Tcp => {
                    tracing::info!(bind = %port.addr, peer = %port.spec.peer, service = %port.spec.service, "tunnel port closed by a reload (its connections carry on)")
                }
                crate::config::ServiceProtocol::Udp => {
                    tracing::info!(bind = %port.addr, peer = %port.spec.peer, service = %port.spec.service, "udp tunnel port closed by a reload, and its sessions with it")
                }
            }
            report.tunnels_removed.push(port.addr);
        }
        for spec in &config.tunnels {
            if self.tunnel_ports.iter().any(|p| p.spec == *spec) {
                continue;
            }
            let opened = match TunnelListener::bind(spec).await {
                Ok(listener) => self.open_tunnel_port(spec.clone(), listener),
                Err(error) => Err(error),
            };
            match opened {
                Ok(addr) => report.tunnels_added.push(addr),
                Err(source) => {
                    let error = tunnel_bind_error(spec, source);
                    tracing::warn!(%error, "reload: a new --tunnel port could not be opened (the rest of the configuration applies)");
                    report.tunnel_errors.push((spec.bind, error.to_string()));
                }
            }
        }
        Ok(report)
    }

    /// Where `/metrics` and `/status` are served (`--metrics`, port 0 resolved).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_addr
    }

    /// The tunnels open now.
    pub fn tunnels(&self) -> Vec<tunnel::active::TunnelStatus> {
        self.books.active.snapshot()
    }

    /// A handle to the node.
    pub fn handle(&self) -> &NodeHandle {
        &self.handle
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.handle.peer_id
    }

    /// The listen addresses reported at start.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Where each `--tunnel` and `--tunnel-udp` listens (port 0 resolved), in the order of
    /// [`NodeConfig::tunnels`] (then in the order reloads added them).
    pub fn tunnel_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.tunnel_ports.iter().map(|p| p.addr).collect()
    }

    /// Each tunnel port and where it listens, as [`Self::tunnel_addrs`].
    pub fn tunnel_listeners(&self) -> Vec<(TunnelSpec, std::net::SocketAddr)> {
        self.tunnel_ports
            .iter()
            .map(|p| (p.spec.clone(), p.addr))
            .collect()
    }

    /// Stop: close tunnels, listeners and connections; returns once every task has ended (or
    /// after a grace period, leaving stragglers to be dropped with the runtime).
    pub async fn shutdown(self) {
        self.handle.shutdown();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "some tasks did not stop in time");
        }
    }

    /// Runs until the node stops (a [`NodeHandle::shutdown`] from anywhere), then waits for
    /// every task like [`Self::shutdown`].
    pub async fn run_until_stopped(self) {
        self.handle.stopped().await;
        self.shutdown().await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// The services of `config` and who may use each.
#[expect(clippy::result_large_err, reason = "once per start or reload")]
fn rules(config: &NodeConfig) -> Result<tunnel::server::Rules, StartError> {
    let access = config.access()?;
    let mut services = HashMap::new();
    // `access` has checked that no name is exposed twice.
    for expose in &config.expose {
        services.insert(expose.name.clone(), expose.clone());
    }
    Ok(tunnel::server::Rules { services, access })
}

fn tunnel_bind_error(spec: &TunnelSpec, source: std::io::Error) -> StartError {
    StartError::TunnelBind {
        bind: spec.bind,
        service: spec.service.to_string(),
        peer: spec.peer,
        source,
    }
}

/// Which kind of path a connection is.
pub(crate) fn path_kind(info: &ConnectionInfo) -> PathKind {
    if info.relayed {
        PathKind::Relayed
    } else {
        PathKind::Direct
    }
}
