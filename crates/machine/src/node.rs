//! The node's lifecycle: a Mealy machine `(State, Event) -> (State, Vec<Command>)`.
//!
//! The state is a product of independent dimensions, each a small enum:
//!
//! | Dimension    | Values                                                            |
//! | ------------ | ----------------------------------------------------------------- |
//! | [`Phase`]    | `Initializing` → `Discovering` → `Participating` → `ShuttingDown` |
//! | [`NatStatus`]| `Unknown` \| `Public` \| `Private`                                |
//! | [`RelayState`]| `Idle` \| `Requesting` \| `Reserved`                             |
//!
//! plus the bookkeeping they need (open connections, known peers, armed timers).
//!
//! # How a driver uses it
//! 1. Build it with [`State::new`] and feed [`Event::Started`].
//! 2. For every observation, call [`State::step`] and execute every returned [`Command`], in order.
//! 3. For [`Command::StartTimer`], feed [`Event::TimerFired`] with the same [`Timer`] once the
//!    delay has passed. Stale timers are recognised and ignored, so the driver never cancels one.
//! 4. To place a new stream, ask [`State::select_path`].
//!
//! # Rules
//! - `Initializing → Discovering` on the first connection to any peer.
//! - Kademlia bootstraps on the first connection to a bootstrap peer, an mDNS discovery, or the
//!   identification of a peer that serves the DHT, whichever comes first (and again after a
//!   failure, on the next of these).
//! - `Discovering → Participating` once Kademlia has bootstrapped *and* the NAT status is known,
//!   in either order, or when the discovery timeout fires (a LAN without a public peer may
//!   never learn its NAT status).
//! - `Participating → Discovering` when the last connection closes; bootstrap peers are then
//!   redialled with backoff.
//! - Any phase → `ShuttingDown` on [`Event::Shutdown`]; that phase absorbs every later event.
//! - `Private` → reserve a slot on a relay-capable peer (one that advertises the relay HOP
//!   protocol, which libp2p only does once it has a confirmed public address). A refused or lost
//!   reservation is retried with backoff, preferring relays that have not failed. `Public` →
//!   release the reservation.
//! - Connection reversal: when a peer is reachable only through a relay but is itself public
//!   (relay-capable), dial it directly. DCUtR alone cannot connect an endpoint-dependent
//!   (symmetric) NAT to a full-cone one; a plain dial to the public side can.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    time::Duration,
};

use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol};

use crate::{
    backoff::Backoff,
    introductions::dialable,
    paths::{PathKind, PathSelection, PeerConnections},
};

/// At most this many addresses are kept per known peer.
const MAX_ADDRS_PER_PEER: usize = 16;
/// At most this many peers are remembered when not connected.
const MAX_KNOWN_PEERS: usize = 1024;

/// The fixed inputs of a node's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Peers dialled at start (`--bootstrap`), with their addresses.
    pub bootstrap: Vec<(PeerId, Multiaddr)>,
    /// Addresses the operator says we are reachable at (`--external-address`).
    pub external_addresses: Vec<Multiaddr>,
    /// `--nat-status`: when set, AutoNAT's reports are ignored.
    pub nat_override: Option<NatStatus>,
    /// How long `Discovering` may last before the node participates anyway.
    pub discovery_timeout: Duration,
    /// How often services and the peer record are published again.
    pub republish_interval: Duration,
    /// How long a reservation request may stay unanswered before it counts as failed.
    pub reservation_timeout: Duration,
    /// Delays between relay reservation attempts after a refusal or loss.
    pub relay_backoff: Backoff,
    /// Delays between redials of bootstrap peers after losing every connection.
    pub redial_backoff: Backoff,
    /// Private addresses count as reachable and may be dialled when a peer supplies them
    /// (`--autonat-private-ips`: a lab, a LAN-only mesh); see [`crate::introductions::dialable`].
    pub private_addrs_ok: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bootstrap: Vec::new(),
            external_addresses: Vec::new(),
            nat_override: None,
            discovery_timeout: Duration::from_secs(30),
            republish_interval: Duration::from_secs(5 * 60),
            reservation_timeout: Duration::from_secs(20),
            relay_backoff: Backoff::default(),
            redial_backoff: Backoff::default(),
            private_addrs_ok: false,
        }
    }
}

/// Where the node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Started, not yet connected to anyone.
    Initializing,
    /// Connected; learning the network (Kademlia) and its own reachability (AutoNAT).
    Discovering,
    /// Operational: services are published.
    Participating,
    /// Stopping; absorbs every event.
    ShuttingDown,
}

/// Whether others can dial this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatStatus {
    /// Not determined yet.
    Unknown,
    /// Reachable from the internet at a confirmed address.
    Public,
    /// Behind NAT or a firewall: needs a relay to be reached.
    Private,
}

/// The node's own relay reservation (as a client).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RelayState {
    /// No reservation and none asked for.
    Idle,
    /// A reservation was asked of `relay`.
    Requesting {
        /// The relay asked.
        relay: PeerId,
    },
    /// `relay` holds a slot; others reach us at `addr` (a `/p2p-circuit` address).
    Reserved {
        /// The relay holding our slot.
        relay: PeerId,
        /// Our circuit address on it.
        addr: Multiaddr,
    },
}

/// Why the machine asks for a dial, so the driver can choose the dial condition and log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialReason {
    /// A `--bootstrap` peer at start.
    Bootstrap,
    /// A bootstrap peer again, after every connection was lost.
    Redial,
    /// A peer found by mDNS on the local network.
    Mdns,
    /// A public peer we only reach through a relay: dial it directly (connection reversal).
    Reversal,
    /// A peer we only reach through a relay, whose hole punch failed: dial the addresses it
    /// listens on (a DCUtR right after start fails for want of observed addresses; the peer
    /// may be on our network, or reachable after all).
    AfterPunch,
}

/// Timers the machine arms with [`Command::StartTimer`] and receives back as
/// [`Event::TimerFired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Force `Participating` if still discovering. The generation tells stale timers apart.
    DiscoveryTimeout {
        /// Which discovery round armed it.
        generation: u32,
    },
    /// Try a relay reservation again.
    RelayRetry,
    /// Give up on a reservation request that got no answer. The generation tells stale timers
    /// apart.
    ReservationTimeout {
        /// Which request armed it.
        generation: u32,
    },
    /// Redial bootstrap peers after losing every connection.
    Redial,
    /// Publish services and the peer record again.
    Republish,
}

/// What the driver observed. `C` identifies a connection (the driver's `ConnectionId`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<C> {
    /// The node started; feed once, first.
    Started,
    /// A listener is up on `addr`.
    Listening {
        /// The new listen address.
        addr: Multiaddr,
    },
    /// A connection to `peer` opened. A connection to a bootstrap peer is the seed's
    /// "bootstrap connected".
    ConnectionEstablished {
        /// The remote peer.
        peer: PeerId,
        /// The driver's id for the connection.
        connection: C,
        /// Direct or through a relay.
        kind: PathKind,
        /// The peer dialled us from an address that says we are reachable (a global one, or any
        /// when private addresses count: see [`counts_as_reachability`]). A hole punch's
        /// connection counts as what its socket was.
        inbound: bool,
    },
    /// A connection to `peer` closed (the seed's "connection lost").
    ConnectionClosed {
        /// The remote peer.
        peer: PeerId,
        /// The driver's id for the connection.
        connection: C,
    },
    /// Kademlia's bootstrap query succeeded.
    KademliaBootstrapSucceeded,
    /// Kademlia's bootstrap query failed (for example, no known peers answered).
    KademliaBootstrapFailed,
    /// mDNS found peers on the local network.
    MdnsDiscovered {
        /// Peers and one address each (a peer may appear several times).
        peers: Vec<(PeerId, Multiaddr)>,
    },
    /// mDNS records expired.
    MdnsExpired {
        /// Peers and the expired address.
        peers: Vec<(PeerId, Multiaddr)>,
    },
    /// Identify told us about `peer`.
    PeerIdentified {
        /// The identified peer.
        peer: PeerId,
        /// Its listen addresses (may include `/p2p-circuit` ones).
        listen_addrs: Vec<Multiaddr>,
        /// It advertises the relay HOP protocol: it is public and serves reservations.
        relay_capable: bool,
        /// It serves Kademlia.
        kademlia: bool,
    },
    /// AutoNAT changed its verdict.
    NatStatusChanged {
        /// The new verdict.
        status: NatStatus,
    },
    /// The router in front of us forwards one of our listen ports (UPnP IGD): peers can dial
    /// us at `addr` from behind any NAT. Taken as a verdict of `Public` (AutoNAT may still
    /// find otherwise, and then wins).
    PortMapped {
        /// The mapped address (the router's public address and port).
        addr: Multiaddr,
    },
    /// A relay accepted (or renewed) our reservation.
    RelayReservationAccepted {
        /// The relay.
        relay: PeerId,
        /// Our `/p2p-circuit` address on it.
        addr: Multiaddr,
    },
    /// A relay refused our reservation or the request failed.
    RelayReservationFailed {
        /// The relay asked.
        relay: PeerId,
        /// Why, as the driver saw it.
        reason: String,
    },
    /// An accepted reservation ended (relay gone, connection closed, not renewed).
    RelayReservationLost {
        /// The relay that held it.
        relay: PeerId,
    },
    /// The relay of a relayed connection to `peer` told us the circuit's limit.
    CircuitLimit {
        /// The remote peer.
        peer: PeerId,
        /// The driver's id for the relayed connection.
        connection: C,
        /// What the relay allows.
        limit: crate::paths::CircuitLimit,
        /// We asked for the circuit (the limit is the one the relay enforces); `false` for a
        /// circuit another peer opened to us (the limit is only what the relay announced).
        outbound: bool,
    },
    /// DCUtR opened a direct connection to `peer`.
    HolePunchSucceeded {
        /// The peer.
        peer: PeerId,
    },
    /// DCUtR gave up on `peer`.
    HolePunchFailed {
        /// The peer.
        peer: PeerId,
        /// Why, as DCUtR said it.
        reason: String,
    },
    /// A timer armed by [`Command::StartTimer`] ran out.
    TimerFired(Timer),
    /// Ctrl-C, SIGTERM or an application asked the node to stop.
    Shutdown,
}

impl<C> Event<C> {
    /// The variant's name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Started => "Started",
            Event::Listening { .. } => "Listening",
            Event::ConnectionEstablished { .. } => "ConnectionEstablished",
            Event::ConnectionClosed { .. } => "ConnectionClosed",
            Event::KademliaBootstrapSucceeded => "KademliaBootstrapSucceeded",
            Event::KademliaBootstrapFailed => "KademliaBootstrapFailed",
            Event::MdnsDiscovered { .. } => "MdnsDiscovered",
            Event::MdnsExpired { .. } => "MdnsExpired",
            Event::PeerIdentified { .. } => "PeerIdentified",
            Event::NatStatusChanged { .. } => "NatStatusChanged",
            Event::PortMapped { .. } => "PortMapped",
            Event::RelayReservationAccepted { .. } => "RelayReservationAccepted",
            Event::RelayReservationFailed { .. } => "RelayReservationFailed",
            Event::RelayReservationLost { .. } => "RelayReservationLost",
            Event::CircuitLimit { .. } => "CircuitLimit",
            Event::HolePunchSucceeded { .. } => "HolePunchSucceeded",
            Event::HolePunchFailed { .. } => "HolePunchFailed",
            Event::TimerFired(_) => "TimerFired",
            Event::Shutdown => "Shutdown",
        }
    }
}

/// Side effects the driver must carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Dial `peer` at `addrs`.
    Dial {
        /// The peer to dial.
        peer: PeerId,
        /// Where to dial it.
        addrs: Vec<Multiaddr>,
        /// Why; a `Reversal` dial must go ahead even though a (relayed) connection exists.
        reason: DialReason,
    },
    /// Add `addr` for `peer` to Kademlia's routing table.
    KademliaAddAddress {
        /// The peer.
        peer: PeerId,
        /// One of its addresses.
        addr: Multiaddr,
    },
    /// Start Kademlia's bootstrap query.
    KademliaBootstrap,
    /// Ask `relay` for a reservation (listen on `<addr>/p2p/<relay>/p2p-circuit`).
    RequestRelayReservation {
        /// The relay.
        relay: PeerId,
        /// Its addresses.
        addrs: Vec<Multiaddr>,
    },
    /// Give up the reservation on (or request to) `relay`.
    ReleaseRelayReservation {
        /// The relay.
        relay: PeerId,
    },
    /// Serve as a public node, or stop: advertise the relay HOP protocol and answer Kademlia
    /// requests (server mode), or neither. Follows the NAT status the machine acts on, so
    /// libp2p's own guesses from confirmed external addresses (a relay circuit's among them)
    /// never decide it.
    SetPublic {
        /// Public (from AutoNAT or the override) or not.
        public: bool,
    },
    /// Tell the swarm `addr` is a confirmed external address.
    AddExternalAddress {
        /// The address.
        addr: Multiaddr,
    },
    /// Publish service provider records and the peer record (with current addresses) to the DHT.
    PublishServices,
    /// Feed [`Event::TimerFired`]`(timer)` after `after`.
    StartTimer {
        /// Which timer.
        timer: Timer,
        /// After how long.
        after: Duration,
    },
    /// Stop: close tunnels, listeners and the swarm.
    Shutdown,
}

/// What the node knows of a peer from identify and mDNS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KnownPeer {
    /// Addresses it listens on, newest last, at most [`MAX_ADDRS_PER_PEER`].
    addrs: Vec<Multiaddr>,
    /// It advertises the relay HOP protocol.
    relay_capable: bool,
    /// It answers our Kademlia protocol (a DHT server).
    kademlia: bool,
}

/// Kademlia's progress in the current discovery round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kademlia {
    /// No bootstrap query asked for yet (or the last one failed).
    Idle,
    /// A bootstrap query is running.
    Bootstrapping,
    /// The bootstrap query succeeded.
    Ready,
}

/// The node's state. `C` identifies a connection (the driver's `ConnectionId`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State<C> {
    /// The fixed inputs.
    config: Config,
    /// Lifecycle dimension.
    phase: Phase,
    /// Reachability dimension.
    nat: NatStatus,
    /// Own-reservation dimension.
    relay: RelayState,
    /// `Started` was seen; a second one is ignored.
    started: bool,
    /// Kademlia's bootstrap progress, reset when every connection is lost.
    kademlia: Kademlia,
    /// Our own listen addresses (the networks we are on), at most [`MAX_ADDRS_PER_PEER`].
    listening: Vec<Multiaddr>,
    /// A direct connection was dialled to us: someone can reach us, so an unknown NAT status
    /// is not taken for private.
    inbound_direct: bool,
    /// The NAT status stayed unknown through a discovery timeout without an inbound direct
    /// connection: the node reserves a relay slot as if private, until AutoNAT decides.
    assumed_private: bool,
    /// Open connections per peer; the source of truth for path selection.
    connections: BTreeMap<PeerId, PeerConnections<C>>,
    /// Peers learned from identify and mDNS.
    peers: BTreeMap<PeerId, KnownPeer>,
    /// Refusals and losses per relay since its last accepted reservation.
    relay_failures: BTreeMap<PeerId, u32>,
    /// Consecutive reservation failures, for the backoff delay.
    relay_attempt: u32,
    /// A [`Timer::RelayRetry`] is pending.
    relay_retry_armed: bool,
    /// Peers a direct dial (a connection reversal, or after a failed punch) was already tried
    /// for while relayed.
    reversal_tried: BTreeSet<PeerId>,
    /// Consecutive bootstrap redial rounds without any connection.
    redial_attempt: u32,
    /// A [`Timer::Redial`] is pending.
    redial_armed: bool,
    /// A [`Timer::Republish`] is pending.
    republish_armed: bool,
    /// Generation of the current discovery round, to ignore stale discovery timeouts.
    discovery_generation: u32,
    /// Generation of the current reservation request, to ignore stale request timeouts.
    reservation_generation: u32,
}

impl<C: Copy + Eq + Debug> State<C> {
    /// A machine that has not started: feed [`Event::Started`] next.
    pub fn new(config: Config) -> Self {
        // An operator who names the node's external address says it is reachable: public from
        // the start (AutoNAT may still say otherwise later), as libp2p's own automatic modes were.
        let nat = config
            .nat_override
            .unwrap_or(if config.external_addresses.is_empty() {
                NatStatus::Unknown
            } else {
                NatStatus::Public
            });
        Self {
            config,
            phase: Phase::Initializing,
            nat,
            relay: RelayState::Idle,
            started: false,
            kademlia: Kademlia::Idle,
            listening: Vec::new(),
            inbound_direct: false,
            assumed_private: false,
            connections: BTreeMap::new(),
            peers: BTreeMap::new(),
            relay_failures: BTreeMap::new(),
            relay_attempt: 0,
            relay_retry_armed: false,
            reversal_tried: BTreeSet::new(),
            redial_attempt: 0,
            redial_armed: false,
            republish_armed: false,
            discovery_generation: 0,
            reservation_generation: 0,
        }
    }

    /// The lifecycle phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The NAT status the machine acts on (the override, if any).
    pub fn nat(&self) -> NatStatus {
        self.nat
    }

    /// Whether the node acts as private although its NAT status is unknown (no inbound direct
    /// connection through a whole discovery timeout): it reserves a relay slot.
    pub fn assumed_private(&self) -> bool {
        self.assumed_private
    }

    /// Whether Kademlia's bootstrap succeeded with a peer that speaks our DHT.
    pub fn kademlia_ready(&self) -> bool {
        self.kademlia == Kademlia::Ready
    }

    /// Whether a Kademlia bootstrap query of the current round is running.
    pub fn kademlia_bootstrapping(&self) -> bool {
        self.kademlia == Kademlia::Bootstrapping
    }

    /// Whether `peer` told us (identify) what it speaks, or mDNS found it.
    pub fn knows(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Whether a connected peer has not told us (identify) which protocols it speaks yet: until
    /// it has, "no peer serves our DHT" may only mean "not yet".
    pub fn awaits_identify(&self) -> bool {
        self.connections.keys().any(|p| !self.peers.contains_key(p))
    }

    /// The node's own relay reservation.
    pub fn relay(&self) -> &RelayState {
        &self.relay
    }

    /// The fixed inputs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of peers with at least one open connection.
    pub fn connected_peers(&self) -> usize {
        self.connections.len()
    }

    /// Whether `peer` has at least one open connection.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.connections.contains_key(peer)
    }

    /// Open connections to `peer` of the given kind.
    pub fn connection_count(&self, peer: &PeerId, kind: PathKind) -> usize {
        self.connections.get(peer).map_or(0, |c| c.count(kind))
    }

    /// Addresses identify or mDNS reported for `peer`.
    pub fn known_addrs(&self, peer: &PeerId) -> &[Multiaddr] {
        self.peers.get(peer).map_or(&[], |p| &p.addrs)
    }

    /// Where a new stream to `peer` should go. `waited_enough` is true once the caller's bounded
    /// wait for a direct connection has run out.
    pub fn select_path(&self, peer: &PeerId, waited_enough: bool) -> PathSelection<C> {
        self.connections
            .get(peer)
            .map_or(PathSelection::NotConnected, |c| c.select(waited_enough))
    }

    /// A short relay circuit to `peer`, when such circuits are its only connections.
    pub fn only_short_circuit(&self, peer: &PeerId) -> Option<C> {
        self.connections
            .get(peer)
            .and_then(|c| c.only_short_circuit())
    }

    /// The transition function: consume the state and an event, return the next state and the
    /// commands to execute, in order.
    pub fn step(mut self, event: Event<C>) -> (Self, Vec<Command>) {
        let mut out = Vec::new();
        self.apply(event, &mut out);
        (self, out)
    }

    fn apply(&mut self, event: Event<C>, out: &mut Vec<Command>) {
        if self.phase == Phase::ShuttingDown {
            return;
        }
        match event {
            Event::Started => self.on_started(out),
            Event::Listening { addr } => {
                if self.listening.len() < MAX_ADDRS_PER_PEER && !self.listening.contains(&addr) {
                    self.listening.push(addr);
                }
                if self.phase == Phase::Participating {
                    out.push(Command::PublishServices);
                }
            }
            Event::ConnectionEstablished {
                peer,
                connection,
                kind,
                inbound,
            } => self.on_connection_established(peer, connection, kind, inbound, out),
            Event::ConnectionClosed { peer, connection } => {
                self.on_connection_closed(peer, connection, out)
            }
            Event::KademliaBootstrapSucceeded => {
                // Only a query of the current round counts: a late answer to one started before
                // every connection was lost says nothing about the network now.
                if self.kademlia == Kademlia::Bootstrapping {
                    // Kademlia calls a query that no peer answered a success. Only a connected
                    // peer that speaks our DHT makes it one; when such a peer is identified,
                    // bootstrap runs again (`on_peer_identified`).
                    if self.dht_peer_connected() {
                        self.kademlia = Kademlia::Ready;
                        self.maybe_participate(out);
                    } else {
                        self.kademlia = Kademlia::Idle;
                    }
                }
            }
            Event::KademliaBootstrapFailed => {
                if self.kademlia == Kademlia::Bootstrapping {
                    // The next connection to a bootstrap or mDNS peer asks again.
                    self.kademlia = Kademlia::Idle;
                }
            }
            Event::MdnsDiscovered { peers } => self.on_mdns_discovered(peers, out),
            Event::MdnsExpired { peers } => {
                for (peer, addr) in peers {
                    if let Some(known) = self.peers.get_mut(&peer) {
                        known.addrs.retain(|a| *a != addr);
                    }
                }
            }
            Event::PeerIdentified {
                peer,
                listen_addrs,
                relay_capable,
                kademlia,
            } => self.on_peer_identified(peer, listen_addrs, relay_capable, kademlia, out),
            Event::NatStatusChanged { status } => self.on_nat_status(status, out),
            Event::PortMapped { .. } => {
                self.on_nat_status(NatStatus::Public, out);
                let publishes = out.contains(&Command::PublishServices);
                if self.nat == NatStatus::Public && self.phase == Phase::Participating && !publishes
                {
                    // The record should name the mapped address (and no circuit any more).
                    out.push(Command::PublishServices);
                }
            }
            Event::RelayReservationAccepted { relay, addr } => {
                self.on_reservation_accepted(relay, addr, out)
            }
            Event::RelayReservationFailed { relay, .. } => {
                if self.relay_matches(&relay) {
                    self.relay_failed(relay, out);
                }
            }
            Event::RelayReservationLost { relay } => {
                if self.relay_matches(&relay) {
                    self.relay_failed(relay, out);
                    if self.phase == Phase::Participating {
                        out.push(Command::PublishServices);
                    }
                }
            }
            Event::HolePunchSucceeded { .. } => {
                // The direct connection arrives as its own `ConnectionEstablished`.
            }
            Event::CircuitLimit {
                peer,
                connection,
                limit,
                outbound,
            } => {
                if let Some(conns) = self.connections.get_mut(&peer) {
                    conns.on_circuit_limit(connection, limit, outbound);
                }
            }
            Event::HolePunchFailed { peer, .. } => {
                if let Some(conns) = self.connections.get_mut(&peer) {
                    conns.on_hole_punch_failed();
                }
                self.maybe_dial_direct(peer, DialReason::AfterPunch, out);
            }
            Event::TimerFired(timer) => self.on_timer(timer, out),
            Event::Shutdown => {
                self.phase = Phase::ShuttingDown;
                out.push(Command::Shutdown);
            }
        }
    }

    fn on_started(&mut self, out: &mut Vec<Command>) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        out.push(Command::SetPublic {
            public: self.nat == NatStatus::Public,
        });
        for addr in &self.config.external_addresses {
            out.push(Command::AddExternalAddress { addr: addr.clone() });
        }
        for (peer, addr) in &self.config.bootstrap {
            out.push(Command::KademliaAddAddress {
                peer: *peer,
                addr: addr.clone(),
            });
        }
        self.dial_bootstrap(DialReason::Bootstrap, out);
        self.arm_discovery_timeout(out);
        self.try_reserve(out);
    }

    fn on_connection_established(
        &mut self,
        peer: PeerId,
        connection: C,
        kind: PathKind,
        inbound: bool,
        out: &mut Vec<Command>,
    ) {
        self.connections
            .entry(peer)
            .or_default()
            .on_established(connection, kind);
        if inbound && kind == PathKind::Direct {
            self.inbound_direct = true;
        }
        self.redial_attempt = 0;
        if self.phase == Phase::Initializing {
            self.phase = Phase::Discovering;
        }
        if self.is_bootstrap(&peer) {
            self.start_kademlia_bootstrap(out);
        }
        if kind == PathKind::Relayed {
            self.maybe_dial_direct(peer, DialReason::Reversal, out);
        }
    }

    fn on_connection_closed(&mut self, peer: PeerId, connection: C, out: &mut Vec<Command>) {
        let Some(conns) = self.connections.get_mut(&peer) else {
            return;
        };
        if conns.on_closed(connection) {
            self.connections.remove(&peer);
            self.reversal_tried.remove(&peer);
            self.forget_if_over_capacity();
        } else if conns.count(PathKind::Direct) == 0 {
            // Back to relayed only: a reversal dial may be worth another try.
            self.reversal_tried.remove(&peer);
        }
        if !self.connections.is_empty() {
            return;
        }
        if self.phase == Phase::Participating {
            self.phase = Phase::Discovering;
            self.kademlia = Kademlia::Idle;
            self.arm_discovery_timeout(out);
        }
        self.arm_redial(out);
    }

    fn on_mdns_discovered(&mut self, peers: Vec<(PeerId, Multiaddr)>, out: &mut Vec<Command>) {
        let mut to_dial: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
        for (peer, addr) in peers {
            self.remember_addr(peer, addr.clone());
            out.push(Command::KademliaAddAddress {
                peer,
                addr: addr.clone(),
            });
            if !self.connections.contains_key(&peer) {
                to_dial.entry(peer).or_default().push(addr);
            }
        }
        for (peer, addrs) in to_dial {
            out.push(Command::Dial {
                peer,
                addrs,
                reason: DialReason::Mdns,
            });
        }
        self.start_kademlia_bootstrap(out);
    }

    fn on_peer_identified(
        &mut self,
        peer: PeerId,
        listen_addrs: Vec<Multiaddr>,
        relay_capable: bool,
        kademlia: bool,
        out: &mut Vec<Command>,
    ) {
        if !self.connections.contains_key(&peer) && !self.peers.contains_key(&peer) {
            // Identify only runs on open connections, but a late event may race a close.
            return;
        }
        let known = self.peers.entry(peer).or_default();
        known.relay_capable = relay_capable;
        known.kademlia = kademlia;
        known.addrs = listen_addrs.into_iter().take(MAX_ADDRS_PER_PEER).collect();
        if kademlia {
            // Kademlia hands these to whoever asks: only what a stranger could use.
            for addr in known.addrs.iter().filter(|a| {
                crate::records::shareable(a, self.config.private_addrs_ok, &self.listening)
            }) {
                out.push(Command::KademliaAddAddress {
                    peer,
                    addr: addr.clone(),
                });
            }
            // A DHT server appeared (or a peer turned into one): bootstrap if not done yet.
            self.start_kademlia_bootstrap(out);
        }
        if relay_capable {
            self.try_reserve(out);
            self.maybe_dial_direct(peer, DialReason::Reversal, out);
        }
        // The punch may have failed before we knew where the peer listens.
        self.maybe_dial_direct(peer, DialReason::AfterPunch, out);
    }

    fn on_nat_status(&mut self, status: NatStatus, out: &mut Vec<Command>) {
        if self.config.nat_override.is_some() || status == self.nat {
            return;
        }
        let was_public = self.nat == NatStatus::Public;
        let was_private = self.acts_private();
        self.nat = status;
        if was_public != (status == NatStatus::Public) {
            out.push(Command::SetPublic {
                public: status == NatStatus::Public,
            });
        }
        match status {
            NatStatus::Private => {
                self.assumed_private = false;
                self.try_reserve(out);
            }
            NatStatus::Public => {
                self.assumed_private = false;
                let had_slot = self.relay != RelayState::Idle;
                self.release_reservation(out);
                if had_slot && self.phase == Phase::Participating {
                    // The record named the circuit address: publish the direct ones alone.
                    out.push(Command::PublishServices);
                }
            }
            // AutoNAT lost its confidence: a node that was private stays so (its reservation,
            // if it loses it, is replaced) until AutoNAT decides again.
            NatStatus::Unknown => self.assumed_private = was_private,
        }
        self.maybe_participate(out);
    }

    fn on_reservation_accepted(&mut self, relay: PeerId, addr: Multiaddr, out: &mut Vec<Command>) {
        if !self.relay_matches(&relay) || self.nat == NatStatus::Public {
            // A reservation we no longer want (released, superseded, or we turned public).
            out.push(Command::ReleaseRelayReservation { relay });
            return;
        }
        self.relay = RelayState::Reserved { relay, addr };
        self.relay_attempt = 0;
        self.relay_failures.remove(&relay);
        if self.phase == Phase::Participating {
            out.push(Command::PublishServices);
        } else {
            // Reachable through the relay: publish now, whatever AutoNAT will say.
            self.maybe_participate(out);
        }
    }

    fn on_timer(&mut self, timer: Timer, out: &mut Vec<Command>) {
        match timer {
            Timer::DiscoveryTimeout { generation } => {
                if generation != self.discovery_generation {
                    return;
                }
                if self.nat == NatStatus::Unknown && !self.inbound_direct && !self.assumed_private {
                    // Nobody could tell us, and nobody reached us: behind NAT is the safe guess
                    // (a reservation costs a public node little; without one a private node is
                    // unreachable).
                    self.assumed_private = true;
                    self.try_reserve(out);
                }
                if matches!(self.phase, Phase::Initializing | Phase::Discovering) {
                    self.participate(out);
                }
            }
            Timer::RelayRetry => {
                self.relay_retry_armed = false;
                self.try_reserve(out);
            }
            Timer::ReservationTimeout { generation } => {
                if generation != self.reservation_generation {
                    return;
                }
                if let RelayState::Requesting { relay } = self.relay {
                    out.push(Command::ReleaseRelayReservation { relay });
                    self.relay_failed(relay, out);
                }
            }
            Timer::Redial => {
                self.redial_armed = false;
                if self.connections.is_empty() {
                    self.dial_bootstrap(DialReason::Redial, out);
                    self.arm_redial(out);
                }
            }
            Timer::Republish => {
                self.republish_armed = false;
                if self.phase == Phase::Participating {
                    out.push(Command::PublishServices);
                    self.arm_republish(out);
                }
            }
        }
    }

    /// Participate (publish our record) once the DHT is ready and we know how peers reach us:
    /// AutoNAT decided, or a relay holds a slot for us.
    fn maybe_participate(&mut self, out: &mut Vec<Command>) {
        let reachable =
            self.nat != NatStatus::Unknown || matches!(self.relay, RelayState::Reserved { .. });
        if self.phase == Phase::Discovering && self.kademlia == Kademlia::Ready && reachable {
            self.participate(out);
        }
    }

    fn participate(&mut self, out: &mut Vec<Command>) {
        self.phase = Phase::Participating;
        out.push(Command::PublishServices);
        self.arm_republish(out);
    }

    fn start_kademlia_bootstrap(&mut self, out: &mut Vec<Command>) {
        if self.kademlia == Kademlia::Idle {
            self.kademlia = Kademlia::Bootstrapping;
            out.push(Command::KademliaBootstrap);
        }
    }

    fn dial_bootstrap(&self, reason: DialReason, out: &mut Vec<Command>) {
        let mut by_peer: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
        for (peer, addr) in &self.config.bootstrap {
            by_peer.entry(*peer).or_default().push(addr.clone());
        }
        for (peer, addrs) in by_peer {
            if !self.connections.contains_key(&peer) {
                out.push(Command::Dial {
                    peer,
                    addrs,
                    reason,
                });
            }
        }
    }

    fn arm_discovery_timeout(&mut self, out: &mut Vec<Command>) {
        self.discovery_generation = self.discovery_generation.wrapping_add(1);
        out.push(Command::StartTimer {
            timer: Timer::DiscoveryTimeout {
                generation: self.discovery_generation,
            },
            after: self.config.discovery_timeout,
        });
    }

    fn arm_redial(&mut self, out: &mut Vec<Command>) {
        if self.config.bootstrap.is_empty() || self.redial_armed {
            return;
        }
        self.redial_attempt = self.redial_attempt.saturating_add(1);
        self.redial_armed = true;
        out.push(Command::StartTimer {
            timer: Timer::Redial,
            after: self.config.redial_backoff.delay(self.redial_attempt),
        });
    }

    fn arm_republish(&mut self, out: &mut Vec<Command>) {
        if !std::mem::replace(&mut self.republish_armed, true) {
            out.push(Command::StartTimer {
                timer: Timer::Republish,
                after: self.config.republish_interval,
            });
        }
    }

    fn is_bootstrap(&self, peer: &PeerId) -> bool {
        self.config.bootstrap.iter().any(|(p, _)| p == peer)
    }

    fn relay_matches(&self, relay: &PeerId) -> bool {
        match &self.relay {
            RelayState::Idle => false,
            RelayState::Requesting { relay: r } | RelayState::Reserved { relay: r, .. } => {
                r == relay
            }
        }
    }

    /// Private by AutoNAT or the override, or assumed so ([`State::assumed_private`]).
    pub fn acts_private(&self) -> bool {
        self.nat == NatStatus::Private || (self.nat == NatStatus::Unknown && self.assumed_private)
    }

    /// A connected peer answers our DHT.
    fn dht_peer_connected(&self) -> bool {
        self.connections
            .keys()
            .any(|peer| self.peers.get(peer).is_some_and(|known| known.kademlia))
    }

    /// Whether the node wants a relay slot: when private (or assumed so), and while its NAT
    /// status is still unknown unless a peer dialled it directly. A node that starts does not
    /// wait for AutoNAT (seconds, and a whole discovery timeout when nobody can tell) to be
    /// reachable: it reserves on the first relay it knows, in parallel, and releases the slot
    /// if AutoNAT says public. A reservation costs a public node little; without one a private
    /// node is unreachable.
    pub fn wants_reservation(&self) -> bool {
        self.acts_private() || (self.nat == NatStatus::Unknown && !self.inbound_direct)
    }

    /// Ask the best relay candidate for a reservation, if we need one and may ask now.
    fn try_reserve(&mut self, out: &mut Vec<Command>) {
        if !self.wants_reservation() || self.relay != RelayState::Idle {
            return;
        }
        let retry_armed = self.relay_retry_armed;
        let best = self
            .peers
            .iter()
            .filter(|(_, known)| known.relay_capable && !known.addrs.is_empty())
            .map(|(peer, known)| {
                let failures = self.relay_failures.get(peer).copied().unwrap_or(0);
                let rank = (
                    failures,
                    !self.connections.contains_key(peer),
                    !self.is_bootstrap(peer),
                );
                (rank, *peer, known)
            })
            // While a retry is pending, only relays that never failed may jump the queue.
            .filter(|((failures, _, _), _, _)| !retry_armed || *failures == 0)
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        let Some((_, relay, known)) = best else {
            return;
        };
        let addrs = known
            .addrs
            .iter()
            .filter(|a| !is_relayed(a))
            .cloned()
            .collect::<Vec<_>>();
        if addrs.is_empty() {
            return;
        }
        self.relay = RelayState::Requesting { relay };
        self.reservation_generation = self.reservation_generation.wrapping_add(1);
        out.push(Command::RequestRelayReservation { relay, addrs });
        out.push(Command::StartTimer {
            timer: Timer::ReservationTimeout {
                generation: self.reservation_generation,
            },
            after: self.config.reservation_timeout,
        });
    }

    fn relay_failed(&mut self, relay: PeerId, out: &mut Vec<Command>) {
        self.relay = RelayState::Idle;
        *self.relay_failures.entry(relay).or_default() += 1;
        self.relay_attempt = self.relay_attempt.saturating_add(1);
        if !self.relay_retry_armed {
            self.relay_retry_armed = true;
            out.push(Command::StartTimer {
                timer: Timer::RelayRetry,
                after: self.config.relay_backoff.delay(self.relay_attempt),
            });
        }
        // A relay that never failed may be asked at once.
        self.try_reserve(out);
    }

    fn release_reservation(&mut self, out: &mut Vec<Command>) {
        match std::mem::replace(&mut self.relay, RelayState::Idle) {
            RelayState::Idle => {}
            RelayState::Requesting { relay } | RelayState::Reserved { relay, .. } => {
                out.push(Command::ReleaseRelayReservation { relay });
            }
        }
    }

    /// A peer we reach only through a relay: dial where it listens, once while relayed
    /// (`reversal_tried`). For a public peer (it advertises the relay protocol): a connection
    /// reversal. After a failed hole punch: its listen addresses may work after all (a DCUtR
    /// right after start fails for want of observed addresses; the peer may be on our network).
    fn maybe_dial_direct(&mut self, peer: PeerId, reason: DialReason, out: &mut Vec<Command>) {
        let Some(conns) = self.connections.get(&peer) else {
            return;
        };
        let known = self.peers.get(&peer);
        let wanted = match reason {
            DialReason::Reversal => known.is_some_and(|k| k.relay_capable),
            DialReason::AfterPunch => conns.punch_failed(),
            DialReason::Bootstrap | DialReason::Redial | DialReason::Mdns => false,
        };
        if !wanted
            || conns.count(PathKind::Direct) > 0
            || conns.count(PathKind::Relayed) == 0
            || self.reversal_tried.contains(&peer)
        {
            return;
        }
        // Addresses the peer told us itself: only what an honest peer can have (no loopback,
        // no private network we are not on), so a stranger cannot aim our dials.
        let addrs: Vec<Multiaddr> = known
            .map(|k| {
                k.addrs
                    .iter()
                    .filter(|a| dialable(a, self.config.private_addrs_ok, &self.listening))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if addrs.is_empty() {
            return;
        }
        self.reversal_tried.insert(peer);
        out.push(Command::Dial {
            peer,
            addrs,
            reason,
        });
    }

    fn remember_addr(&mut self, peer: PeerId, addr: Multiaddr) {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_KNOWN_PEERS {
            return;
        }
        let known = self.peers.entry(peer).or_default();
        if !known.addrs.contains(&addr) {
            if known.addrs.len() >= MAX_ADDRS_PER_PEER {
                known.addrs.remove(0);
            }
            known.addrs.push(addr);
        }
    }

    /// Keeps the known-peer table bounded: drops disconnected peers once it is over capacity.
    fn forget_if_over_capacity(&mut self) {
        if self.peers.len() <= MAX_KNOWN_PEERS {
            return;
        }
        let connections = &self.connections;
        let bootstrap = &self.config.bootstrap;
        self.peers.retain(|peer, _| {
            connections.contains_key(peer) || bootstrap.iter().any(|(p, _)| p == peer)
        });
    }
}

/// Whether `addr` goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// Whether a peer that dialled us from `remote` shows that we are reachable from where our NAT
/// status matters: from a global address; from any real network when private ones count too
/// (the driver's `autonat_private_ips`, as in a lab). A process on this host reaches us
/// whatever our NAT does; so does a LAN neighbour, unless private addresses count.
pub fn counts_as_reachability(remote: &Multiaddr, private_ips_count: bool) -> bool {
    if is_relayed(remote) {
        return false;
    }
    match crate::addr::ip_of(remote).map(crate::addr::class) {
        Some(crate::addr::Class::Global) => true,
        Some(crate::addr::Class::Private) => private_ips_count,
        Some(crate::addr::Class::Never) | None => false,
    }
}

#[cfg(test)]
mod tests;
