//! What a node is told to do: typed, validated values. [`crate::cli`] parses flags into these;
//! library users build them directly.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use libp2p::{Multiaddr, PeerId, identity::Keypair, multiaddr::Protocol};

pub use punchgate_machine::NatStatus;

pub use crate::access::{Allow, AllowSpec, RelayMode};

/// A service name: 1–64 characters from `A–Z a–z 0–9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);

impl ServiceName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ServiceName {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let valid = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(SpecError::new(
                s,
                "a service name of 1-64 characters from A-Z a-z 0-9 . _ -",
            ))
        }
    }
}

/// A host name or IP address and a port, resolved when a tunnel connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The port (TCP or UDP, as the service is).
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for HostPort {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let expected = "HOST:PORT, e.g. 127.0.0.1:22 or [::1]:22";
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| SpecError::new(s, expected))?;
        let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        let valid = match bracketed {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            // An IPv6 address without brackets is ambiguous (`::1:22` is itself an address).
            None => !host.is_empty() && !host.contains(':'),
        };
        if !valid {
            return Err(SpecError::new(s, expected));
        }
        let host = bracketed.unwrap_or(host);
        let port = parse_port(port).ok_or_else(|| SpecError::new(s, expected))?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

fn parse_port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Whether a service speaks TCP (`--expose`, `--tunnel`) or UDP (`--expose-udp`,
/// `--tunnel-udp`). TCP and UDP services share one set of names, and one set of `--allow` rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ServiceProtocol {
    /// A byte stream: each TCP connection is one tunnel stream.
    #[default]
    Tcp,
    /// Datagrams: each client address is one session, carried as one tunnel stream
    /// ([`crate::tunnel::udp`]).
    Udp,
}

impl ServiceProtocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceProtocol::Tcp => "tcp",
            ServiceProtocol::Udp => "udp",
        }
    }
}

impl fmt::Display for ServiceProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--expose NAME=HOST:PORT` (TCP) or `--expose-udp NAME=HOST:PORT`: offer a local service to
/// the mesh under `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposeSpec {
    /// The name peers ask for.
    pub name: ServiceName,
    /// Where the service listens.
    pub target: HostPort,
    /// TCP or UDP.
    pub protocol: ServiceProtocol,
}

impl ExposeSpec {
    /// Parses `--expose-udp NAME=HOST:PORT`.
    pub fn udp(s: &str) -> Result<Self, SpecError> {
        Self::parse(s, ServiceProtocol::Udp)
    }

    fn parse(s: &str, protocol: ServiceProtocol) -> Result<Self, SpecError> {
        let expected = match protocol {
            ServiceProtocol::Tcp => "NAME=HOST:PORT, e.g. ssh=127.0.0.1:22",
            ServiceProtocol::Udp => "NAME=HOST:PORT, e.g. wireguard=127.0.0.1:51820",
        };
        let (name, target) = s
            .split_once('=')
            .ok_or_else(|| SpecError::new(s, expected))?;
        Ok(Self {
            name: name.parse().map_err(|e: SpecError| {
                SpecError::new(s, &format!("{expected} ({})", e.expected))
            })?,
            target: target.parse().map_err(|e: SpecError| {
                SpecError::new(s, &format!("{expected} ({})", e.expected))
            })?,
            protocol,
        })
    }
}

impl FromStr for ExposeSpec {
    type Err = SpecError;

    /// Parses `--expose NAME=HOST:PORT` (a TCP service).
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Self::parse(s, ServiceProtocol::Tcp)
    }
}

/// `--tunnel PEER:SVC@BIND` (TCP) or `--tunnel-udp PEER:SVC@BIND`: listen on `bind` and carry
/// each TCP connection (each UDP client address) to service `service` of `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    /// The peer exposing the service.
    pub peer: PeerId,
    /// The service's name on that peer.
    pub service: ServiceName,
    /// Local address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    /// TCP or UDP.
    pub protocol: ServiceProtocol,
}

impl TunnelSpec {
    /// Parses `--tunnel-udp PEER:SVC@BIND`.
    pub fn udp(s: &str) -> Result<Self, SpecError> {
        Self::parse(s, ServiceProtocol::Udp)
    }

    fn parse(s: &str, protocol: ServiceProtocol) -> Result<Self, SpecError> {
        let expected = match protocol {
            ServiceProtocol::Tcp => {
                "PEER_ID:SERVICE@BIND, e.g. 12D3KooW...:ssh@127.0.0.1:2222 (BIND may be a bare port, meaning 127.0.0.1)"
            }
            ServiceProtocol::Udp => {
                "PEER_ID:SERVICE@BIND, e.g. 12D3KooW...:wireguard@127.0.0.1:51820 (BIND may be a bare port, meaning 127.0.0.1)"
            }
        };
        let fail = |why: &str| SpecError::new(s, &format!("{expected}; {why}"));
        let (target, bind) = s.rsplit_once('@').ok_or_else(|| fail("no '@'"))?;
        let (peer, service) = target
            .split_once(':')
            .ok_or_else(|| fail("no ':' between peer id and service"))?;
        let peer = peer
            .parse::<PeerId>()
            .map_err(|e| fail(&format!("'{peer}' is not a peer id: {e}")))?;
        let service = service
            .parse::<ServiceName>()
            .map_err(|e| fail(&format!("'{service}' is not {}", e.expected)))?;
        let bind = match bind.parse::<u16>() {
            Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
            Err(_) => bind
                .parse::<SocketAddr>()
                .map_err(|_| fail(&format!("'{bind}' is not an IP:PORT or a port")))?,
        };
        Ok(Self {
            peer,
            service,
            bind,
            protocol,
        })
    }
}

impl FromStr for TunnelSpec {
    type Err = SpecError;

    /// Parses `--tunnel PEER:SVC@BIND` (a TCP tunnel).
    fn from_str(s: &str) -> Result<Self, SpecError> {
        Self::parse(s, ServiceProtocol::Tcp)
    }
}

/// A `--bootstrap` address: a multiaddr that names its peer (`.../p2p/<PEER_ID>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapAddr {
    /// The peer.
    pub peer: PeerId,
    /// Its full address, `/p2p/` included.
    pub addr: Multiaddr,
}

impl FromStr for BootstrapAddr {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let expected =
            "a multiaddr ending in /p2p/<PEER_ID>, e.g. /ip4/203.0.113.7/tcp/4001/p2p/12D3KooW...";
        let addr: Multiaddr = s
            .parse()
            .map_err(|e| SpecError::new(s, &format!("{expected}; {e}")))?;
        match addr.iter().last() {
            Some(Protocol::P2p(peer)) => Ok(Self { peer, addr }),
            _ => Err(SpecError::new(s, &format!("{expected}; no /p2p/ part"))),
        }
    }
}

/// A value that does not have the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not valid: expected {expected}")]
pub struct SpecError {
    /// The value as given.
    pub value: String,
    /// The form it should have.
    pub expected: String,
}

impl SpecError {
    pub(crate) fn new(value: &str, expected: &str) -> Self {
        Self {
            value: value.to_owned(),
            expected: expected.to_owned(),
        }
    }
}

/// Limits this node grants others' relay reservations and circuits. Every node is a relay once
/// it is public, so these are what its operator lends to the mesh. `circuit_duration` and
/// `circuit_bytes` are what a *long* circuit gets (both ends trusted, or `--relay any`); every
/// other circuit gets [`SHORT_CIRCUIT_DURATION`] and [`SHORT_CIRCUIT_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// Reservations held at once, across all peers.
    pub max_reservations: usize,
    /// Circuits open at once, across all peers.
    pub max_circuits: usize,
    /// Circuits open at once per peer.
    pub max_circuits_per_peer: usize,
    /// A long circuit is closed after this long.
    pub circuit_duration: Duration,
    /// A long circuit is closed after this many bytes (both directions together).
    pub circuit_bytes: u64,
}

/// The longest duration any setting takes (a year): libp2p-relay keeps a circuit's duration in
/// u32 seconds and panics past it, and a deadline far enough out overflows `Instant`. The CLI
/// refuses longer values for every duration flag; the library clamps the relay circuit
/// duration.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long a short circuit (one end not trusted) lasts: libp2p's default, enough to coordinate
/// a hole punch.
pub const SHORT_CIRCUIT_DURATION: Duration = Duration::from_secs(2 * 60);
/// How many bytes a short circuit carries: libp2p's default (128 KiB), enough to coordinate a
/// hole punch.
pub const SHORT_CIRCUIT_BYTES: u64 = 128 << 10;

impl Default for RelayLimits {
    /// Defaults for a tunnel mesh. libp2p's own (2 minutes, 128 KiB per circuit) suit hole-punch
    /// coordination only, and are what untrusted circuits get; a trusted tunnel that falls back
    /// to the relay needs room: one hour and 1 GiB per long circuit, 64 circuits (8 per peer),
    /// 128 reservations.
    fn default() -> Self {
        Self {
            max_reservations: 128,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            circuit_duration: Duration::from_secs(60 * 60),
            circuit_bytes: 1 << 30,
        }
    }
}

/// How long a UDP session may carry nothing before it ends ([`Timing::udp_idle_timeout`]):
/// longer than the keep-alives of the protocols people tunnel (WireGuard's persistent
/// keep-alive is 25 s), as NATs' UDP timeouts are.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Timeouts and waits that shape a node's behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// `Discovering` lasts at most this long before the node participates anyway.
    pub discovery_timeout: Duration,
    /// How long a new stream to a peer reached only through a relay waits for a hole punch
    /// before it uses the relay.
    pub direct_wait: Duration,
    /// How long reaching a peer (dial, DHT lookup, relay) may take before a stream open fails.
    pub connect_timeout: Duration,
    /// How long the tunnel request/response exchange may take.
    pub negotiation_timeout: Duration,
    /// How long connecting to an exposed local service may take.
    pub service_connect_timeout: Duration,
    /// How often services and the peer record are published again.
    pub republish_interval: Duration,
    /// A tunnel connection that moves no byte either way for this long is closed (both the
    /// tunnels this node serves and those it carries). `None`: never (the default).
    pub tunnel_idle_timeout: Option<Duration>,
    /// A UDP session that carries no datagram either way for this long ends, on the side whose
    /// setting it is (each side has its own; the first to expire closes the stream).
    pub udp_idle_timeout: Duration,
    /// Delay before AutoNAT's first probe.
    pub autonat_boot_delay: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            discovery_timeout: Duration::from_secs(30),
            direct_wait: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(30),
            negotiation_timeout: Duration::from_secs(10),
            service_connect_timeout: Duration::from_secs(5),
            republish_interval: Duration::from_secs(5 * 60),
            tunnel_idle_timeout: None,
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            autonat_boot_delay: Duration::from_secs(1),
        }
    }
}

/// Everything a node needs to start.
#[derive(Clone)]
pub struct NodeConfig {
    /// The node's identity; its peer id is derived from it.
    pub keypair: Keypair,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start.
    pub bootstrap: Vec<BootstrapAddr>,
    /// Local services offered to the mesh, TCP and UDP (names are shared: one name, one
    /// service).
    pub expose: Vec<ExposeSpec>,
    /// Who may use each exposed service. Every exposed service needs a rule
    /// ([`crate::access::Access::new`] checks), so a node denies by default.
    pub allow: Vec<AllowSpec>,
    /// Peers trusted with long relay circuits (besides those named in `allow`).
    pub trust: Vec<PeerId>,
    /// Who may use this node as a relay for long circuits.
    pub relay_mode: RelayMode,
    /// Remote services made available on local ports, TCP and UDP.
    pub tunnels: Vec<TunnelSpec>,
    /// Forces the NAT status instead of waiting for AutoNAT.
    pub nat_override: Option<NatStatus>,
    /// Addresses this node is known to be reachable at (confirmed without AutoNAT).
    pub external_addresses: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS (needs the `mdns` feature).
    pub mdns: bool,
    /// Ask the router to forward our listen ports (UPnP IGD), so peers behind any NAT can dial
    /// us; the mappings are removed when the node stops.
    pub upnp: bool,
    /// Birthday punching towards a symmetric NAT (`--punch-sockets`, `--punch-probes`,
    /// `--punch-rate`).
    pub punch: crate::punch::PunchConfig,
    /// Let AutoNAT probe and serve peers seen at private or otherwise non-global addresses.
    /// Needed on private networks and in labs; off on the internet.
    pub autonat_private_ips: bool,
    /// Limits granted to others' relay circuits.
    pub relay: RelayLimits,
    /// Timeouts and waits.
    pub timing: Timing,
    /// Tunnel connections served or carried at once; more wait. The default stays below
    /// [`MAX_YAMUX_STREAMS_PER_CONNECTION`](crate::net::swarm::MAX_YAMUX_STREAMS_PER_CONNECTION),
    /// so tunnels to one peer over TCP wait rather than fail.
    pub max_tunnels: usize,
    /// Tunnel connections one peer may have served at once (a share of `max_tunnels`, so one
    /// peer cannot starve the others); more from that peer are refused.
    pub max_tunnels_per_peer: usize,
    /// UDP sessions (client addresses) one `--tunnel-udp` port carries at once, each also a
    /// tunnel of `max_tunnels`; a new client past it has its datagrams dropped. Anyone who can
    /// send to the port can make up addresses: this keeps them to a port's share.
    pub max_udp_sessions: usize,
    /// Connections open at once, in total (direct and relayed, both directions); more are
    /// refused.
    pub max_connections: u32,
    /// Connections open at once to one peer; more are refused.
    pub max_connections_per_peer: u32,
    /// Connections dialled to us that are still in their handshakes; more are refused.
    pub max_pending_incoming: u32,
    /// Inbound tunnel and gRPC streams one connection may have open at once; more are
    /// refused one by one (the connection stays).
    pub max_streams_per_connection: usize,
    /// Bytes of memory (resident) above which the node accepts and makes no new connection.
    pub max_memory: u64,
    /// Where to serve `/metrics` and `/status` over HTTP (`--metrics`); `None`: nowhere.
    pub metrics: Option<std::net::SocketAddr>,
}

/// UDP sessions one `--tunnel-udp` port carries at once by default
/// ([`NodeConfig::max_udp_sessions`]): half of the share of tunnels a serving node gives one peer
/// by default (`--max-tunnels-per-peer`, 256), so one port's clients leave room for the rest.
pub const DEFAULT_MAX_UDP_SESSIONS: usize = 128;

/// The default memory ceiling ([`NodeConfig::max_memory`]): 1 GiB. An idle node uses about
/// 20 MiB; 2000 busy tunnels about 300 MiB (64 KiB buffers each way, and the muxers' windows).
pub const DEFAULT_MAX_MEMORY: u64 = 1 << 30;

impl NodeConfig {
    /// A node with `keypair` that listens on TCP and QUIC on every interface, ephemeral ports.
    pub fn new(keypair: Keypair) -> Self {
        Self {
            keypair,
            listen: default_listen_addrs(),
            bootstrap: Vec::new(),
            expose: Vec::new(),
            allow: Vec::new(),
            trust: Vec::new(),
            relay_mode: RelayMode::default(),
            tunnels: Vec::new(),
            nat_override: None,
            external_addresses: Vec::new(),
            mdns: cfg!(feature = "mdns"),
            upnp: true,
            punch: crate::punch::PunchConfig::default(),
            autonat_private_ips: false,
            relay: RelayLimits::default(),
            timing: Timing::default(),
            max_tunnels: 2000,
            max_tunnels_per_peer: 256,
            max_udp_sessions: DEFAULT_MAX_UDP_SESSIONS,
            max_connections: 1024,
            max_connections_per_peer: 8,
            max_pending_incoming: 128,
            max_streams_per_connection: crate::net::stream::DEFAULT_MAX_INBOUND_STREAMS,
            max_memory: DEFAULT_MAX_MEMORY,
            metrics: None,
        }
    }

    /// The peer id derived from the keypair.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// Exposes `expose` to the peers `allow` admits (a convenience for library users and tests:
    /// the same as an `--expose` and an `--allow` flag).
    pub fn expose_to(&mut self, expose: ExposeSpec, allow: Allow) {
        self.allow.push(AllowSpec {
            service: expose.name.clone(),
            allow,
        });
        self.expose.push(expose);
    }

    /// The per-service rules, checked against the exposed services.
    pub fn access(&self) -> Result<crate::access::Access, crate::access::AccessError> {
        crate::access::Access::new(&self.expose, &self.allow)
    }

    /// Peers trusted with long relay circuits: `trust` and every peer named in `allow`.
    pub fn trusted_peers(&self) -> std::collections::HashSet<PeerId> {
        let mut trusted: std::collections::HashSet<PeerId> = self.trust.iter().copied().collect();
        for spec in &self.allow {
            trusted.extend(spec.allow.peers().copied());
        }
        trusted
    }
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keypair is a secret: show only the peer id it yields.
        f.debug_struct("NodeConfig")
            .field("peer_id", &self.peer_id())
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("expose", &self.expose)
            .field("allow", &self.allow)
            .field("trust", &self.trust)
            .field("relay_mode", &self.relay_mode)
            .field("tunnels", &self.tunnels)
            .field("nat_override", &self.nat_override)
            .field("external_addresses", &self.external_addresses)
            .field("mdns", &self.mdns)
            .field("upnp", &self.upnp)
            .field("punch", &self.punch)
            .field("autonat_private_ips", &self.autonat_private_ips)
            .field("relay", &self.relay)
            .field("timing", &self.timing)
            .field("max_tunnels", &self.max_tunnels)
            .field("max_tunnels_per_peer", &self.max_tunnels_per_peer)
            .field("max_udp_sessions", &self.max_udp_sessions)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_peer", &self.max_connections_per_peer)
            .field("max_pending_incoming", &self.max_pending_incoming)
            .field(
                "max_streams_per_connection",
                &self.max_streams_per_connection,
            )
            .finish()
    }
}

/// `/ip4/0.0.0.0/tcp/0` and `/ip4/0.0.0.0/udp/0/quic-v1`.
pub fn default_listen_addrs() -> Vec<Multiaddr> {
    vec![
        Multiaddr::empty()
            .with(Protocol::Ip4([0, 0, 0, 0].into()))
            .with(Protocol::Tcp(0)),
        Multiaddr::empty()
            .with(Protocol::Ip4([0, 0, 0, 0].into()))
            .with(Protocol::Udp(0))
            .with(Protocol::QuicV1),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";

    #[test]
    fn expose_parses_names_hosts_and_ipv6() {
        let e: ExposeSpec = "ssh=127.0.0.1:22".parse().expect("valid");
        assert_eq!(e.name.as_str(), "ssh");
        assert_eq!(e.target.to_string(), "127.0.0.1:22");
        let e: ExposeSpec = "db.main=[::1]:5432".parse().expect("valid");
        assert_eq!(e.target.host, "::1");
        assert_eq!(e.target.to_string(), "[::1]:5432");
        let e: ExposeSpec = "web=localhost:8080".parse().expect("valid");
        assert_eq!(e.target.host, "localhost");
    }

    #[test]
    fn expose_errors_name_the_value_and_the_form() {
        for bad in [
            "ssh",
            "ssh=",
            "=1.2.3.4:22",
            "s s=1.2.3.4:22",
            "ssh=host",
            "ssh=host:0",
            "ssh=host:99999",
            "ssh=::1:22",
        ] {
            let err = bad.parse::<ExposeSpec>().expect_err(bad).to_string();
            assert!(err.contains(bad), "{err}");
            assert!(err.contains("NAME=HOST:PORT"), "{err}");
        }
    }

    #[test]
    fn tunnel_parses_addresses_and_bare_ports() {
        let t: TunnelSpec = format!("{PEER}:echo@127.0.0.1:9000")
            .parse()
            .expect("valid");
        assert_eq!(t.peer.to_string(), PEER);
        assert_eq!(t.service.as_str(), "echo");
        assert_eq!(t.bind, "127.0.0.1:9000".parse().expect("addr"));
        let t: TunnelSpec = format!("{PEER}:ssh@2222").parse().expect("valid");
        assert_eq!(t.bind, "127.0.0.1:2222".parse().expect("addr"));
        let t: TunnelSpec = format!("{PEER}:ssh@[::1]:2222").parse().expect("valid");
        assert_eq!(t.bind, "[::1]:2222".parse().expect("addr"));
    }

    #[test]
    fn tunnel_errors_say_what_is_wrong() {
        let cases = [
            (format!("{PEER}:echo"), "no '@'"),
            (format!("{PEER}@9000"), "no ':'"),
            ("notapeer:echo@9000".to_owned(), "not a peer id"),
            (format!("{PEER}:e cho@9000"), "service name"),
            (format!("{PEER}:echo@nowhere"), "not an IP:PORT"),
        ];
        for (bad, why) in cases {
            let err = bad.parse::<TunnelSpec>().expect_err(&bad).to_string();
            assert!(err.contains(&bad), "{err}");
            assert!(err.contains("PEER_ID:SERVICE@BIND"), "{err}");
            assert!(err.contains(why), "{err} should contain {why}");
        }
    }

    #[test]
    fn udp_specs_parse_like_tcp_ones_and_say_udp() {
        let e = ExposeSpec::udp("wg=127.0.0.1:51820").expect("valid");
        assert_eq!(e.protocol, ServiceProtocol::Udp);
        assert_eq!(e.target.to_string(), "127.0.0.1:51820");
        assert_eq!(
            "wg=127.0.0.1:51820"
                .parse::<ExposeSpec>()
                .expect("valid")
                .protocol,
            ServiceProtocol::Tcp
        );
        let err = ExposeSpec::udp("wg=127.0.0.1")
            .expect_err("no port")
            .to_string();
        assert!(err.contains("wg=127.0.0.1"), "{err}");
        assert!(err.contains("NAME=HOST:PORT, e.g. wireguard="), "{err}");

        let t = TunnelSpec::udp(&format!("{PEER}:wg@51820")).expect("valid");
        assert_eq!(t.protocol, ServiceProtocol::Udp);
        assert_eq!(t.bind, "127.0.0.1:51820".parse().expect("addr"));
        let bad = format!("{PEER}:wg");
        let err = TunnelSpec::udp(&bad).expect_err("no bind").to_string();
        assert!(err.contains(&bad), "{err}");
        assert!(
            err.contains("PEER_ID:SERVICE@BIND, e.g. 12D3KooW...:wireguard@"),
            "{err}"
        );
        assert!(err.contains("no '@'"), "{err}");
    }

    #[test]
    fn bootstrap_needs_a_peer_id() {
        let b: BootstrapAddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{PEER}")
            .parse()
            .expect("valid");
        assert_eq!(b.peer.to_string(), PEER);
        let err = "/ip4/127.0.0.1/tcp/4001"
            .parse::<BootstrapAddr>()
            .expect_err("no peer");
        assert!(err.to_string().contains("no /p2p/ part"), "{err}");
        let err = "127.0.0.1:4001"
            .parse::<BootstrapAddr>()
            .expect_err("not a multiaddr");
        assert!(err.to_string().contains("/p2p/<PEER_ID>"), "{err}");
    }

    #[test]
    fn debug_does_not_print_the_secret_key() {
        let keypair = Keypair::generate_ed25519();
        let secret = format!(
            "{:?}",
            keypair
                .clone()
                .try_into_ed25519()
                .expect("ed25519")
                .secret()
                .as_ref()
        );
        let shown = format!("{:?}", NodeConfig::new(keypair));
        assert!(shown.contains("peer_id"));
        assert!(!shown.contains(&secret));
    }
}
