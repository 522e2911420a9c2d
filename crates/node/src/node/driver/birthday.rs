//! The driver's part in birthday punching ([`crate::punch`]): learns our NAT mapping from what
//! identify's observers report, says it in the log and shares it with the punch tasks, starts a
//! punch when a tunnel's peer is reachable only through a relay, and binds QUIC to a punched
//! port when a punch asks.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use libp2p::{
    Multiaddr, PeerId,
    core::{ConnectedPoint, transport::ListenerId},
    multiaddr::Protocol,
    swarm::ConnectionId,
};
use punchgate_machine::{
    PathKind,
    mapping::{Mapping, Observation, Observations},
};
use tokio::sync::watch;

use super::Driver;
use crate::{
    net::punched::{Claims, quic_socket_addr},
    punch::{MappingView, Punches},
};

/// Peers remembered as ones we open streams to (the peers a punch is started for).
const MAX_WANTED_PEERS: usize = 1024;

/// What the driver keeps for birthday punching.
pub(in crate::node) struct Birthday {
    /// The punch tasks' shared state; `None` in a driver built without one.
    pub(in crate::node) punches: Option<Arc<Punches>>,
    pub(in crate::node) claims: Claims,
    pub(in crate::node) mapping: watch::Sender<MappingView>,
    /// Peers we open streams to (`--tunnel`s from the start, then every path asked for): the
    /// ones a punch is started for.
    pub(in crate::node) wanted: HashSet<PeerId>,
    quic: Observations,
    tcp: Observations,
    /// Direct connections we dialled from a listen port: the observer's address and whether
    /// it is QUIC.
    dialled: HashMap<ConnectionId, (IpAddr, bool)>,
    /// Listeners on punched ports (not our addresses to publish).
    pub(in crate::node) listeners: HashSet<ListenerId>,
    /// Our main listen ports, QUIC and TCP.
    quic_port: Option<u16>,
    tcp_port: Option<u16>,
    /// Private addresses count as outside a NAT (`--autonat-private-ips`).
    private_ok: bool,
}

impl Birthday {
    pub(in crate::node) fn new(
        punches: Option<Arc<Punches>>,
        claims: Claims,
        mapping: watch::Sender<MappingView>,
        wanted: HashSet<PeerId>,
        private_ok: bool,
    ) -> Self {
        Self {
            punches,
            claims,
            mapping,
            wanted,
            quic: Observations::default(),
            tcp: Observations::default(),
            dialled: HashMap::new(),
            listeners: HashSet::new(),
            quic_port: None,
            tcp_port: None,
            private_ok,
        }
    }

    /// Whether `addr` is a punched port's listen address (not one to publish).
    pub(in crate::node) fn is_punched(&self, addr: &Multiaddr) -> bool {
        quic_socket_addr(addr).is_some_and(|a| self.claims.is_punched_port(a.port()))
    }

    /// Our QUIC and TCP mappings, for status.
    pub(in crate::node) fn mappings(&self) -> (Mapping, Mapping) {
        (self.quic.mapping(), self.tcp.mapping())
    }
}

/// The port and transport (QUIC or not) of a TCP or QUIC address.
fn port_of(addr: &Multiaddr) -> Option<(u16, bool)> {
    let mut quic = false;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Tcp(p) => port = Some(p),
            Protocol::Udp(p) => port = Some(p),
            Protocol::QuicV1 => quic = true,
            Protocol::P2pCircuit => return None,
            _ => {}
        }
    }
    port.map(|p| (p, quic))
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

impl Driver {
    /// A listen address of ours (not a relay's, not a punched port's).
    pub(super) fn birthday_listening(&mut self, addr: &Multiaddr) {
        if let Some((port, quic)) = port_of(addr) {
            let slot = if quic {
                &mut self.birthday.quic_port
            } else {
                &mut self.birthday.tcp_port
            };
            slot.get_or_insert(port);
        }
    }

    /// A stream to `peer` is wanted (a tunnel connection, a gRPC call): a punch is started for
    /// it whenever only a relay reaches it (at most twice a minute, `punch::ATTEMPTS_PER_PEER`).
    pub(super) fn birthday_wanted(&mut self, peer: PeerId) {
        if self.birthday.wanted.len() < MAX_WANTED_PEERS {
            self.birthday.wanted.insert(peer);
        }
        let relayed_only = self.machine().connection_count(&peer, PathKind::Relayed) > 0
            && self.machine().connection_count(&peer, PathKind::Direct) == 0;
        if relayed_only && let Some(punches) = self.birthday.punches.clone() {
            self.tasks.spawn(crate::punch::initiate(punches, peer));
        }
    }

    /// Notes a connection for the mapping observations, and starts a birthday punch when a
    /// tunnel's peer is reached through a relay only.
    pub(super) fn birthday_on_connection(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: &ConnectedPoint,
        had_direct: bool,
    ) {
        if let ConnectedPoint::Dialer {
            address, port_use, ..
        } = endpoint
        {
            let punched_port =
                quic_socket_addr(address).is_some_and(|a| self.birthday.claims.is_dial_target(&a));
            // Only a dial from our listen port shows its mapping.
            if !endpoint.is_relayed()
                && *port_use == libp2p::core::transport::PortUse::Reuse
                && !punched_port
                && let (Some(ip), Some((_, quic))) = (ip_of(address), port_of(address))
            {
                self.birthday.dialled.insert(connection, (ip, quic));
            }
            if endpoint.is_relayed()
                && !had_direct
                && self.birthday.wanted.contains(&peer)
                && let Some(punches) = self.birthday.punches.clone()
            {
                self.tasks.spawn(crate::punch::initiate(punches, peer));
            }
        }
    }

    pub(super) fn birthday_on_closed(&mut self, connection: ConnectionId) {
        self.birthday.dialled.remove(&connection);
    }

    /// What identify's observer on `connection` saw of us.
    pub(super) fn birthday_observed(&mut self, connection: ConnectionId, observed: &Multiaddr) {
        let Some(&(observer, quic)) = self.birthday.dialled.get(&connection) else {
            return;
        };
        let (Some(observed_ip), Some((observed_port, observed_quic))) =
            (ip_of(observed), port_of(observed))
        else {
            return;
        };
        let local_port = if quic {
            self.birthday.quic_port
        } else {
            self.birthday.tcp_port
        };
        let Some(local_port) = local_port.filter(|_| observed_quic == quic) else {
            return;
        };
        if !punchgate_machine::mapping::counts(observer, observed_ip, self.birthday.private_ok) {
            return;
        }
        let observation = Observation {
            observer,
            local_port,
            observed: observed_ip,
            observed_port,
        };
        let (transport, observations) = if quic {
            ("QUIC", &mut self.birthday.quic)
        } else {
            ("TCP", &mut self.birthday.tcp)
        };
        if let Some(mapping) = observations.observe(observation) {
            tracing::info!(
                transport,
                mapping = mapping.as_str(),
                public_ip = %observed_ip,
                local_port,
                observed_port,
                "NAT mapping learned from what peers observe"
            );
        }
        if quic {
            let view = MappingView {
                quic: self.birthday.quic.mapping(),
                public_ip: self.birthday.quic.public_ip(),
            };
            self.birthday.mapping.send_if_modified(|v| {
                let changed = *v != view;
                *v = view;
                changed
            });
        }
    }

    /// Binds QUIC to a punched `port` (claimed already).
    pub(super) fn listen_punched(&mut self, port: u16) -> Result<(), String> {
        let addr = Multiaddr::from(std::net::Ipv4Addr::UNSPECIFIED)
            .with(Protocol::Udp(port))
            .with(Protocol::QuicV1);
        match self.swarm.listen_on(addr) {
            Ok(id) => {
                self.birthday.listeners.insert(id);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}
