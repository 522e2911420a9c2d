//! Router port mapping (UPnP IGD): ask the router in front of us to forward our TCP and QUIC
//! listen ports, so that peers dial us directly, even peers behind a symmetric NAT that no
//! hole punch gets through.
//!
//! A task finds the gateway (SSDP), asks for its external address, maps each listen port
//! (the same port outside if it is free, any port otherwise), renews the mappings at half
//! their lease, and removes them when the node stops ([`Behaviour::release`]). A mapping
//! confirms its external address to the swarm and is reported as [`Event::Mapped`]; the
//! machine then has AutoNAT check it, so a router that maps but is itself behind another NAT
//! does not make us claim to be public.
//!
//! Why not libp2p-upnp (0.7), which is also built on igd-next: it refuses every gateway whose
//! external address is not globally routable, with no way to say otherwise (our NAT lab's
//! internet is 198.18.0.0/15, as `--autonat-private-ips` allows for AutoNAT); it maps every
//! address a wildcard listener expands to, loopback included; it insists on the same port
//! outside, so two nodes behind one router collide; and it cannot remove its mappings at
//! shutdown and say when it is done.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    task::{Context, Poll},
    time::Duration,
};

use igd_next::{PortMappingProtocol, SearchOptions};
use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, multiaddr::Protocol, transport::PortUse},
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NewListenAddr, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
    },
};
use tokio::sync::{mpsc, oneshot};

/// How long the router keeps a mapping we do not renew: an hour, renewed every half hour. A
/// node that dies without removing its mappings leaves them for at most this long.
pub const LEASE: Duration = Duration::from_secs(3600);

/// How long the gateway search waits for an answer to its SSDP multicast.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one request to the router (a SOAP call over HTTP) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Behaviour::release`] waits for the router to remove our mappings.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Requests waiting for the task: one per listen port, and the release.
const REQUEST_QUEUE: usize = 16;

/// What the mapping task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The router forwards `external` to `internal`: peers can dial `address`.
    Mapped {
        /// TCP or UDP.
        protocol: &'static str,
        /// Our listen socket.
        internal: SocketAddrV4,
        /// The router's address and port outside.
        external: SocketAddr,
        /// The multiaddr peers dial (confirmed to the swarm as an external address).
        address: Multiaddr,
    },
    /// A mapping the router held could not be renewed: `address` no longer reaches us.
    Expired {
        /// The multiaddr that was confirmed.
        address: Multiaddr,
        /// The router's answer.
        error: String,
    },
    /// The router refused to map a port, or did not answer.
    Failed {
        /// TCP or UDP.
        protocol: &'static str,
        /// Our listen port.
        port: u16,
        /// The router's answer.
        error: String,
    },
    /// No router answered the search, or it answered but is not an IGD that works.
    NoGateway {
        /// What happened.
        reason: String,
    },
    /// The router maps ports, but its own external address is not public (it sits behind
    /// another NAT, such as a carrier's): a mapping would not make us reachable.
    NotPublic {
        /// The router's external address.
        external_ip: IpAddr,
    },
}

struct Request {
    protocol: PortMappingProtocol,
    port: u16,
}

/// Asks the task to remove every mapping and stop; answered with the number removed.
type Release = oneshot::Sender<usize>;

/// Maps our listen ports on the router, when enabled.
pub struct Behaviour {
    /// Punched ports are the punch's own, not ours to map.
    punched: super::punched::Claims,
    requests: Option<mpsc::Sender<Request>>,
    release: Option<oneshot::Sender<Release>>,
    events: Option<mpsc::Receiver<Event>>,
    asked: HashSet<(&'static str, u16)>,
    pending: VecDeque<ToSwarm<Event, std::convert::Infallible>>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortMap")
            .field("enabled", &self.requests.is_some())
            .field("asked", &self.asked)
            .finish_non_exhaustive()
    }
}

impl Behaviour {
    /// Maps ports when `enabled`, starting the gateway search at once. `private_ok` accepts a
    /// router whose external address is not globally routable (labs, as for AutoNAT).
    pub fn new(enabled: bool, private_ok: bool, punched: super::punched::Claims) -> Self {
        if !enabled {
            return Self {
                punched,
                requests: None,
                release: None,
                events: None,
                asked: HashSet::new(),
                pending: VecDeque::new(),
            };
        }
        let (requests, request_rx) = mpsc::channel(REQUEST_QUEUE);
        let (event_tx, events) = mpsc::channel(REQUEST_QUEUE);
        let (release, release_rx) = oneshot::channel();
        tokio::spawn(run(request_rx, release_rx, event_tx, private_ok));
        Self {
            punched,
            requests: Some(requests),
            release: Some(release),
            events: Some(events),
            asked: HashSet::new(),
            pending: VecDeque::new(),
        }
    }

    /// Removes every mapping from the router. The future ends when the router has answered
    /// (with the number removed) or after [`RELEASE_TIMEOUT`]; it need not be polled with the
    /// swarm.
    pub fn release(&mut self) -> impl Future<Output = Option<usize>> + use<> {
        let (done, removed) = oneshot::channel();
        self.requests = None;
        let sent = self.release.take().is_some_and(|r| r.send(done).is_ok());
        async move {
            if !sent {
                return None;
            }
            tokio::time::timeout(RELEASE_TIMEOUT, removed)
                .await
                .ok()
                .and_then(Result::ok)
        }
    }

    fn on_new_listen_addr(&mut self, addr: &Multiaddr) {
        let Some(requests) = &self.requests else {
            return;
        };
        let Some((ip, protocol, port)) = mappable(addr) else {
            return;
        };
        if ip.is_loopback()
            || self.punched.is_punched_port(port)
            || !self.asked.insert((protocol_name(protocol), port))
        {
            return;
        }
        if requests.try_send(Request { protocol, port }).is_err() {
            tracing::debug!(%addr, "port mapping queue full: not mapping this listen address");
        }
    }
}

/// The IPv4 address, protocol and port of a TCP or QUIC listen address.
fn mappable(addr: &Multiaddr) -> Option<(Ipv4Addr, PortMappingProtocol, u16)> {
    let mut parts = addr.iter();
    let Some(Protocol::Ip4(ip)) = parts.next() else {
        return None;
    };
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Protocol::Tcp(port)), None, _) => Some((ip, PortMappingProtocol::TCP, port)),
        (Some(Protocol::Udp(port)), Some(Protocol::QuicV1), None) => {
            Some((ip, PortMappingProtocol::UDP, port))
        }
        _ => None,
    }
}

fn protocol_name(protocol: PortMappingProtocol) -> &'static str {
    match protocol {
        PortMappingProtocol::TCP => "TCP",
        PortMappingProtocol::UDP => "UDP",
    }
}

/// The multiaddr peers dial to reach a mapping.
fn external_multiaddr(protocol: PortMappingProtocol, external: SocketAddr) -> Multiaddr {
    let addr = Multiaddr::from(external.ip());
    match protocol {
        PortMappingProtocol::TCP => addr.with(Protocol::Tcp(external.port())),
        PortMappingProtocol::UDP => addr
            .with(Protocol::Udp(external.port()))
            .with(Protocol::QuicV1),
    }
}

/// Our address on the interface that reaches the router.
fn local_ip_towards(gateway: SocketAddr) -> std::io::Result<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(gateway)?;
    match socket.local_addr()?.ip() {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(ip) => Err(std::io::Error::other(format!(
            "the router is reached over IPv6 ({ip}): IGD maps IPv4 ports"
        ))),
    }
}

/// Runs `request` against the router with [`REQUEST_TIMEOUT`].
async fn ask<T, E: std::fmt::Display>(
    request: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the router did not answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        )),
    }
}

/// One mapping the task holds.
struct Held {
    protocol: PortMappingProtocol,
    internal: SocketAddrV4,
    external_port: u16,
    /// The lease the router granted: [`LEASE`], or 0 (permanent) from a router that grants
    /// only those (such a mapping is removed at shutdown, or stays).
    lease_s: u32,
}

/// Maps `external_port` to `internal` for `lease_s`, or permanently if the router grants only
/// permanent leases (IGD error 725); returns the lease granted.
async fn add_port(
    gateway: &igd_next::aio::Gateway<igd_next::aio::tokio::Tokio>,
    protocol: PortMappingProtocol,
    external_port: u16,
    internal: SocketAddrV4,
    lease_s: u32,
) -> Result<u32, String> {
    let add =
        |lease| gateway.add_port(protocol, external_port, internal.into(), lease, DESCRIPTION);
    match tokio::time::timeout(REQUEST_TIMEOUT, add(lease_s)).await {
        Ok(Err(igd_next::AddPortError::OnlyPermanentLeasesSupported)) if lease_s != 0 => {
            ask(add(0)).await.map(|()| 0)
        }
        Ok(Ok(())) => Ok(lease_s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the router did not answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        )),
    }
}

const DESCRIPTION: &str = "punchgate";

/// The mapping task: finds the gateway, then serves requests and renews until released. A
/// release is served first, whatever else is waiting or under way.
async fn run(
    mut requests: mpsc::Receiver<Request>,
    mut release: oneshot::Receiver<Release>,
    events: mpsc::Sender<Event>,
    private_ok: bool,
) {
    let report = |event: Event| {
        // The behaviour polls these; if it is gone, so is the node.
        let _ = events.try_send(event);
    };
    let options = SearchOptions {
        timeout: Some(SEARCH_TIMEOUT),
        single_search_timeout: Some(SEARCH_TIMEOUT),
        ..SearchOptions::default()
    };
    let search = async {
        match igd_next::aio::tokio::search_gateway(options).await {
            Ok(gateway) => match ask(gateway.get_external_ip()).await {
                Ok(ip) => Ok((gateway, ip)),
                Err(e) => Err(format!(
                    "the router at {} answered the search but not for its external address: {e}",
                    gateway.addr
                )),
            },
            Err(e) => Err(e.to_string()),
        }
    };
    let found = tokio::select! {
        biased;
        done = &mut release => {
            if let Ok(done) = done {
                let _ = done.send(0);
            }
            return;
        }
        found = search => found,
    };
    let (gateway, external_ip, local_ip) = match found {
        Ok((gateway, ip)) if punchgate_machine::mapping::is_global(ip) || private_ok => {
            match local_ip_towards(gateway.addr) {
                Ok(local) => (gateway, ip, local),
                Err(e) => {
                    report(Event::NoGateway {
                        reason: format!("cannot find our address towards the router: {e}"),
                    });
                    return answer_release(release).await;
                }
            }
        }
        Ok((_, ip)) => {
            report(Event::NotPublic { external_ip: ip });
            return answer_release(release).await;
        }
        Err(reason) => {
            report(Event::NoGateway { reason });
            return answer_release(release).await;
        }
    };
    tracing::debug!(router = %gateway.addr, %external_ip, %local_ip, "found a router that maps ports (UPnP IGD)");

    let mut held: HashMap<(PortMappingProtocol, u16), Held> = HashMap::new();
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + LEASE / 2, LEASE / 2);
    let lease_s = u32::try_from(LEASE.as_secs()).unwrap_or(u32::MAX);
    let remove_all = |held: HashMap<(PortMappingProtocol, u16), Held>, done: Release| {
        let gateway = gateway.clone();
        async move {
            let mut removed = 0;
            for h in held.values() {
                match ask(gateway.remove_port(h.protocol, h.external_port)).await {
                    Ok(()) => removed += 1,
                    Err(error) => tracing::warn!(
                        protocol = protocol_name(h.protocol),
                        external_port = h.external_port,
                        %error,
                        lease_s = LEASE.as_secs(),
                        "cannot remove a port mapping from the router: it stays until its lease runs out"
                    ),
                }
            }
            let _ = done.send(removed);
        }
    };
    loop {
        tokio::select! {
            biased;
            done = &mut release => {
                if let Ok(done) = done {
                    remove_all(held, done).await;
                }
                return;
            }
            request = requests.recv() => {
                let Some(Request { protocol, port }) = request else {
                    return;
                };
                let internal = SocketAddrV4::new(local_ip, port);
                let map = async {
                    match add_port(&gateway, protocol, port, internal, lease_s).await {
                        Ok(granted) => Ok((port, granted)),
                        // Taken (another host behind the router holds it): any port will do.
                        Err(first) => ask(gateway.add_any_port(protocol, internal.into(), lease_s, DESCRIPTION))
                            .await
                            .map(|p| (p, lease_s))
                            .map_err(|e| format!("{first}; and for any other port: {e}")),
                    }
                };
                let mapped = tokio::select! {
                    biased;
                    done = &mut release => {
                        // What the router may have mapped meanwhile is in `held` only if it
                        // answered: the lease bounds the rest.
                        if let Ok(done) = done {
                            remove_all(held, done).await;
                        }
                        return;
                    }
                    mapped = map => mapped,
                };
                match mapped {
                    Ok((external_port, granted)) => {
                        let external = SocketAddr::new(external_ip, external_port);
                        held.insert((protocol, port), Held { protocol, internal, external_port, lease_s: granted });
                        report(Event::Mapped {
                            protocol: protocol_name(protocol),
                            internal,
                            external,
                            address: external_multiaddr(protocol, external),
                        });
                    }
                    Err(error) => report(Event::Failed { protocol: protocol_name(protocol), port, error }),
                }
            }
            _ = renew.tick() => {
                let mut lost = Vec::new();
                for (key, h) in &held {
                    if h.lease_s == 0 {
                        continue;
                    }
                    let renewed = add_port(&gateway, h.protocol, h.external_port, h.internal, h.lease_s).await;
                    if let Err(error) = renewed {
                        lost.push(*key);
                        report(Event::Expired {
                            address: external_multiaddr(h.protocol, SocketAddr::new(external_ip, h.external_port)),
                            error,
                        });
                    }
                }
                for key in lost {
                    held.remove(&key);
                }
            }
        }
    }
}

/// Without a router to talk to, answers the release at once.
async fn answer_release(release: oneshot::Receiver<Release>) {
    if let Ok(done) = release.await {
        let _ = done.send(0);
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::NewListenAddr(NewListenAddr { addr, .. }) = event {
            self.on_new_listen_addr(addr);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        if let Some(next) = self.pending.pop_front() {
            return Poll::Ready(next.map_in(|never| match never {}));
        }
        let Some(events) = &mut self.events else {
            return Poll::Pending;
        };
        match events.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                match &event {
                    Event::Mapped { address, .. } => {
                        self.pending
                            .push_back(ToSwarm::ExternalAddrConfirmed(address.clone()));
                    }
                    Event::Expired { address, .. } => {
                        self.pending
                            .push_back(ToSwarm::ExternalAddrExpired(address.clone()));
                    }
                    _ => {}
                }
                Poll::Ready(ToSwarm::GenerateEvent(event))
            }
            Poll::Ready(None) => {
                self.events = None;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_tcp_and_quic_listen_addresses_only() {
        let tcp: Multiaddr = "/ip4/10.0.0.2/tcp/4001".parse().expect("valid");
        let quic: Multiaddr = "/ip4/10.0.0.2/udp/4001/quic-v1".parse().expect("valid");
        let circuit: Multiaddr = "/ip4/1.2.3.4/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit".parse().expect("valid");
        let v6: Multiaddr = "/ip6/::1/tcp/4001".parse().expect("valid");
        assert_eq!(
            mappable(&tcp),
            Some(([10, 0, 0, 2].into(), PortMappingProtocol::TCP, 4001))
        );
        assert_eq!(
            mappable(&quic),
            Some(([10, 0, 0, 2].into(), PortMappingProtocol::UDP, 4001))
        );
        assert_eq!(mappable(&circuit), None);
        assert_eq!(mappable(&v6), None);
        assert_eq!(
            external_multiaddr(
                PortMappingProtocol::UDP,
                "203.0.113.9:7".parse().expect("valid")
            ),
            "/ip4/203.0.113.9/udp/7/quic-v1"
                .parse::<Multiaddr>()
                .expect("valid")
        );
    }

    #[test]
    fn only_global_router_addresses_count() {
        for private in [
            "10.1.1.1",
            "192.168.1.1",
            "100.64.0.1",
            "198.18.0.5",
            "127.0.0.1",
        ] {
            assert!(
                !punchgate_machine::mapping::is_global(private.parse().expect("valid")),
                "{private}"
            );
        }
        assert!(punchgate_machine::mapping::is_global(
            "93.184.216.34".parse().expect("valid")
        ));
    }

    #[tokio::test]
    async fn a_disabled_mapper_releases_at_once() {
        let mut behaviour = Behaviour::new(false, false, Default::default());
        assert_eq!(behaviour.release().await, None);
    }
}
