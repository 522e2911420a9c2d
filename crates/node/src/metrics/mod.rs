//! What the node counts, for `--metrics ADDR` ([`server`]): Prometheus text from
//! prometheus-client, libp2p's own metrics (libp2p-metrics: swarm, identify, Kademlia, ping,
//! relay, DCUtR, bytes per transport) under `libp2p_`, and Punchgate's under `punchgate_`.
//!
//! Every node counts, whether or not anyone scrapes: an update is an atomic add. Label values
//! are bounded: a service label is one of the node's own services (exposed or tunnelled), or
//! `other` for any name a peer sent that the node does not have, so a peer cannot grow the
//! exposition by asking for made-up names.

pub mod server;

use std::{sync::Arc, time::Duration};

use libp2p::Multiaddr;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Which kind of path a connection or tunnel takes.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lowercase")]
pub enum Path {
    /// A direct connection (dialled, accepted or hole-punched).
    direct,
    /// A circuit through a relay.
    relayed,
}

impl Path {
    /// The path of a connection.
    pub fn of(relayed: bool) -> Self {
        if relayed { Path::relayed } else { Path::direct }
    }
}

/// The transport under a connection, from its remote address: QUIC or TCP. A relayed
/// connection we dialled has its relay's transport; one dialled to us through a relay has no
/// transport in its address (`/p2p/<peer>`) and counts as `other`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lowercase")]
pub enum Transport {
    /// QUIC (v1).
    quic,
    /// TCP.
    tcp,
    /// Anything else (memory, websocket).
    other,
}

impl Transport {
    /// The transport of a connection's remote address.
    pub fn of(addr: &Multiaddr) -> Self {
        use libp2p::multiaddr::Protocol;
        for protocol in addr.iter() {
            match protocol {
                Protocol::QuicV1 | Protocol::Quic => return Transport::quic,
                Protocol::Tcp(_) => return Transport::tcp,
                _ => {}
            }
        }
        Transport::other
    }
}

/// Labels of a connection count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// Direct or relayed.
    pub path: Path,
    /// QUIC or TCP.
    pub transport: Transport,
}

/// Which end of a tunnel this node is.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lowercase")]
pub enum Side {
    /// We expose the service and serve the tunnel.
    served,
    /// We carry a `--tunnel` port's connection to the peer.
    carried,
}

/// Labels of a tunnel count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabels {
    /// The service's name, or `other`.
    pub service: String,
    /// Served or carried.
    pub side: Side,
}

/// Which way a tunnel's bytes went.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lowercase")]
pub enum Direction {
    /// Towards the service (from the client side to the serving side).
    to_service,
    /// From the service back to the client.
    from_service,
}

/// Labels of a tunnel byte count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabels {
    /// The service's name.
    pub service: String,
    /// Served or carried.
    pub side: Side,
    /// Which way.
    pub direction: Direction,
}

/// Why a tunnel was refused.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lowercase")]
pub enum Refusal {
    /// The peer is past its share of tunnels (`--max-tunnels-per-peer`).
    per_peer_limit,
    /// Too many refusals in progress: the stream was reset.
    reset,
    /// No request, or a malformed one, within the negotiation timeout.
    bad_request,
    /// The stream arrived on a short relay circuit.
    short_circuit,
    /// No such service (refused with the words a denial gets).
    unknown_service,
    /// The service did not accept a connection (TCP), or its address could not be resolved
    /// (UDP).
    service_unreachable,
    /// A TCP tunnel asked for a UDP service, or the other way round (told only to peers the
    /// service admits).
    wrong_protocol,
    /// Carried: the peer could not be reached.
    unreachable,
    /// Carried: the peer refused (any reason).
    refused_by_peer,
    /// Carried: no answer to the request in time, a malformed one, or a peer without tunnels.
    negotiation_failed,
}

/// Labels of a refused tunnel.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The service's name, or `other`.
    pub service: String,
    /// Served or carried.
    pub side: Side,
    /// Why.
    pub reason: Refusal,
}

/// Why a UDP tunnel dropped a datagram.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lowercase")]
pub enum DropReason {
    /// The session's queue was full: its stream does not keep up.
    queue_full,
    /// The node's budget for datagrams waiting in all sessions' queues (or the peer's part of
    /// it) was spent.
    budget,
    /// A new client, and no tunnel permit left (`--max-tunnels`).
    session_limit,
    /// No session to carry it: the peer refused or could not be reached (new sessions wait a
    /// few seconds), or the session ended before its stream opened.
    no_session,
    /// Longer than a tunnel carries (65,507 bytes).
    too_large,
    /// The local socket refused it.
    send_failed,
}

impl DropReason {
    /// How many reasons there are (`reason as usize` indexes arrays of this length).
    pub const COUNT: usize = 6;
    /// Every reason, in `reason as usize` order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::queue_full,
        DropReason::budget,
        DropReason::session_limit,
        DropReason::no_session,
        DropReason::too_large,
        DropReason::send_failed,
    ];
}

/// Labels of a dropped datagram count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// The service's name, or `other`.
    pub service: String,
    /// Served or carried.
    pub side: Side,
    /// Why.
    pub reason: DropReason,
}

/// Labels of a denied tunnel: the service exists, and its `--allow` rule does not name the peer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The service's name.
    pub service: String,
}

/// How a hole punch or a lookup ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are lowercase")]
pub enum Outcome {
    /// A direct connection (a punch) or an address (a lookup) came of it.
    succeeded,
    /// It failed.
    failed,
}

/// Labels of a count by outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// How it ended.
    pub outcome: Outcome,
}

/// Punchgate's own metrics. Cheap to clone: every clone updates the same values.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Open connections, by path and transport.
    pub connections: Family<ConnectionLabels, Gauge>,
    /// Connections opened, by path and transport.
    pub connections_opened: Family<ConnectionLabels, Counter>,
    /// DCUtR hole punches: succeeded, failed.
    pub hole_punches: Family<OutcomeLabels, Counter>,
    /// From a peer's first relayed connection to its first direct one, in seconds.
    pub time_to_direct: Histogram,
    /// Our own relay reservations held (0 or 1 per relay).
    pub reservations_held: Gauge,
    /// Reservations we serve for others as a relay.
    pub reservations_served: Gauge,
    /// Circuits we relay now.
    pub circuits: Gauge,
    /// Circuits we relayed, in total. (libp2p-relay 0.22 does not report a circuit's bytes:
    /// `libp2p_bandwidth_bytes_total` counts them with every other byte on the connections.)
    pub circuits_relayed: Counter,
    /// Circuit requests we denied.
    pub circuits_denied: Counter,
    /// Tunnels open now.
    pub tunnels: Family<TunnelLabels, Gauge>,
    /// Tunnels opened, in total.
    pub tunnels_opened: Family<TunnelLabels, Counter>,
    /// Tunnels refused, by reason.
    pub tunnels_refused: Family<RefusalLabels, Counter>,
    /// Tunnels denied: the peer is not in the service's `--allow` rule.
    pub tunnels_denied: Family<ServiceLabels, Counter>,
    /// Tunnel bytes, by service and direction.
    pub tunnel_bytes: Family<BytesLabels, Counter>,
    /// Datagrams UDP tunnels carried, by service and direction.
    pub udp_datagrams: Family<BytesLabels, Counter>,
    /// Datagrams UDP tunnels dropped, by service and reason.
    pub udp_dropped: Family<DropLabels, Counter>,
    /// DHT lookups of a peer's addresses, by outcome.
    pub dht_lookups: Family<OutcomeLabels, Counter>,
    /// How long DHT lookups took, in seconds.
    pub dht_lookup_duration: Histogram,
}

impl Metrics {
    /// Registers every metric under `registry` (prefix `punchgate`).
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            connections: Family::default(),
            connections_opened: Family::default(),
            hole_punches: Family::default(),
            // 10 ms .. ~40 s.
            time_to_direct: Histogram::new(exponential_buckets(0.01, 2.0, 13)),
            reservations_held: Gauge::default(),
            reservations_served: Gauge::default(),
            circuits: Gauge::default(),
            circuits_relayed: Counter::default(),
            circuits_denied: Counter::default(),
            tunnels: Family::default(),
            tunnels_opened: Family::default(),
            tunnels_refused: Family::default(),
            tunnels_denied: Family::default(),
            tunnel_bytes: Family::default(),
            udp_datagrams: Family::default(),
            udp_dropped: Family::default(),
            dht_lookups: Family::default(),
            dht_lookup_duration: Histogram::new(exponential_buckets(0.01, 2.0, 13)),
        };
        let r = registry.sub_registry_with_prefix("punchgate");
        let m = metrics.clone();
        r.register(
            "connections",
            "Open connections, by path and transport",
            m.connections,
        );
        r.register(
            "connections_opened",
            "Connections opened, by path and transport",
            m.connections_opened,
        );
        r.register(
            "hole_punches",
            "DCUtR hole punches, by outcome",
            m.hole_punches,
        );
        r.register(
            "time_to_direct_seconds",
            "From a peer's first relayed connection to its first direct one",
            m.time_to_direct,
        );
        r.register(
            "relay_reservations_held",
            "Our relay reservations (a private node reserves a slot on a relay)",
            m.reservations_held,
        );
        r.register(
            "relay_reservations_served",
            "Reservations this node serves as a relay",
            m.reservations_served,
        );
        r.register("relay_circuits", "Circuits relayed now", m.circuits);
        r.register(
            "relay_circuits_relayed",
            "Circuits relayed, in total",
            m.circuits_relayed,
        );
        r.register(
            "relay_circuits_denied",
            "Circuit requests denied",
            m.circuits_denied,
        );
        r.register("tunnels", "Tunnels open now, by service", m.tunnels);
        r.register(
            "tunnels_opened",
            "Tunnels opened, by service",
            m.tunnels_opened,
        );
        r.register(
            "tunnels_refused",
            "Tunnels refused, by service and reason",
            m.tunnels_refused,
        );
        r.register(
            "tunnels_denied",
            "Tunnels denied: the peer is not in the service's --allow rule",
            m.tunnels_denied,
        );
        r.register(
            "tunnel_bytes",
            "Tunnel bytes, by service and direction",
            m.tunnel_bytes,
        );
        r.register(
            "udp_datagrams",
            "Datagrams UDP tunnels carried, by service and direction (bytes are in tunnel_bytes)",
            m.udp_datagrams,
        );
        r.register(
            "udp_datagrams_dropped",
            "Datagrams UDP tunnels dropped instead of queueing them without bound, by service and reason",
            m.udp_dropped,
        );
        r.register(
            "dht_lookups",
            "DHT lookups of peer addresses, by outcome",
            m.dht_lookups,
        );
        r.register(
            "dht_lookup_duration_seconds",
            "How long DHT lookups of peer addresses took",
            m.dht_lookup_duration,
        );
        metrics
    }

    /// A metrics set registered nowhere (for tests and tools that build parts of a node).
    pub fn unregistered() -> Self {
        Self::new(&mut Registry::default())
    }

    /// A connection opened.
    pub fn connection_opened(&self, relayed: bool, addr: &Multiaddr) {
        let labels = ConnectionLabels {
            path: Path::of(relayed),
            transport: Transport::of(addr),
        };
        self.connections.get_or_create(&labels).inc();
        self.connections_opened.get_or_create(&labels).inc();
    }

    /// A connection closed.
    pub fn connection_closed(&self, relayed: bool, addr: &Multiaddr) {
        let labels = ConnectionLabels {
            path: Path::of(relayed),
            transport: Transport::of(addr),
        };
        self.connections.get_or_create(&labels).dec();
    }

    /// A hole punch ended, or started.
    pub fn hole_punch(&self, outcome: Outcome) {
        self.hole_punches
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A DHT lookup ended.
    pub fn dht_lookup(&self, found: bool, took: Duration) {
        let outcome = if found {
            Outcome::succeeded
        } else {
            Outcome::failed
        };
        self.dht_lookups
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        self.dht_lookup_duration.observe(took.as_secs_f64());
    }

    /// A tunnel was refused.
    pub fn tunnel_refused(&self, service: &str, side: Side, reason: Refusal) {
        self.tunnels_refused
            .get_or_create(&RefusalLabels {
                service: service.to_owned(),
                side,
                reason,
            })
            .inc();
    }

    /// Counters for one tunnel of `service` on `side`: opened now, closed when the returned
    /// [`TunnelMeter`] drops; its bytes so far go to `live` too.
    pub fn tunnel_opened(&self, service: &str, side: Side, live: Arc<LiveBytes>) -> TunnelMeter {
        let labels = TunnelLabels {
            service: service.to_owned(),
            side,
        };
        self.tunnels_opened.get_or_create(&labels).inc();
        let open = self.tunnels.get_or_create(&labels).clone();
        open.inc();
        let bytes = |direction| {
            self.tunnel_bytes
                .get_or_create(&BytesLabels {
                    service: service.to_owned(),
                    side,
                    direction,
                })
                .clone()
        };
        TunnelMeter {
            open,
            to_service: bytes(Direction::to_service),
            from_service: bytes(Direction::from_service),
            live,
        }
    }
}

/// One UDP session's counters: datagrams and bytes each way, and drops.
#[derive(Debug)]
pub struct UdpMeter {
    /// The session's bytes so far (for `/status`).
    pub live: Arc<LiveBytes>,
    datagrams: [Counter; 2],
    bytes: [Counter; 2],
    /// By reason, in `reason as usize` order.
    dropped: [Counter; DropReason::COUNT],
}

impl UdpMeter {
    /// `datagrams` of `bytes` in all went towards the service.
    pub fn to_service(&self, datagrams: u64, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.datagrams[0].inc_by(datagrams);
        self.bytes[0].inc_by(bytes);
        self.live.to_service.fetch_add(bytes, Relaxed);
    }

    /// `datagrams` of `bytes` in all came from the service.
    pub fn from_service(&self, datagrams: u64, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.datagrams[1].inc_by(datagrams);
        self.bytes[1].inc_by(bytes);
        self.live.from_service.fetch_add(bytes, Relaxed);
    }

    /// `n` datagrams were dropped.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.dropped[reason as usize].inc_by(n);
    }
}

impl Metrics {
    /// Counters for one UDP session (or one `--tunnel-udp` port's drops) of `service` on
    /// `side`.
    pub fn udp_meter(&self, service: &str, side: Side) -> UdpMeter {
        let labels = |direction| BytesLabels {
            service: service.to_owned(),
            side,
            direction,
        };
        let pair = |family: &Family<BytesLabels, Counter>| {
            [Direction::to_service, Direction::from_service]
                .map(|d| family.get_or_create(&labels(d)).clone())
        };
        UdpMeter {
            live: Arc::default(),
            datagrams: pair(&self.udp_datagrams),
            bytes: pair(&self.tunnel_bytes),
            dropped: DropReason::ALL.map(|reason| {
                self.udp_dropped
                    .get_or_create(&DropLabels {
                        service: service.to_owned(),
                        side,
                        reason,
                    })
                    .clone()
            }),
        }
    }
}

/// One open tunnel's counters: bytes each way as they move (for `/metrics` and `/status`).
/// Dropping it counts the tunnel closed.
#[derive(Debug)]
pub struct TunnelMeter {
    open: Gauge,
    to_service: Counter,
    from_service: Counter,
    /// This tunnel's bytes so far: (to the service, from the service).
    pub live: Arc<LiveBytes>,
}

/// A tunnel's bytes so far, readable while it runs.
#[derive(Debug, Default)]
pub struct LiveBytes {
    /// Towards the service.
    pub to_service: std::sync::atomic::AtomicU64,
    /// From the service.
    pub from_service: std::sync::atomic::AtomicU64,
}

impl TunnelMeter {
    /// The tunnel's byte counts are now `to_service` and `from_service` in total: counts what
    /// moved since the last call.
    pub fn progress(&self, to_service: u64, from_service: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.live.to_service.swap(to_service, Relaxed);
        self.to_service.inc_by(to_service.saturating_sub(before));
        let before = self.live.from_service.swap(from_service, Relaxed);
        self.from_service
            .inc_by(from_service.saturating_sub(before));
    }
}

impl Drop for TunnelMeter {
    fn drop(&mut self) {
        self.open.dec();
    }
}
