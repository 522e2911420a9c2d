//! What kind of NAT mapping a node sits behind, learned from the addresses identify's observers
//! report for connections we dialled from our listen port; and which hole punch fits a pair of
//! mappings.
//!
//! - Observers at two or more addresses that see the same port: **endpoint-independent**
//!   mapping (EIM), *port-preserving* if that port is our own. A hole punch lines the ports up.
//! - Observers that see different ports: **endpoint-dependent** mapping (EDM, a symmetric NAT),
//!   *sequential* if the ports differ by little (a NAT that hands out ports in order).
//! - One observer: the port it sees is our own (**preserving**, as nearly every home router and
//!   Linux masquerade do), or another (**port changes**: EDM, or EIM that does not preserve
//!   ports; one observer cannot tell which).
//!
//! A **birthday punch** ([`birthday_role`]) fits an easy side whose public port is its local
//! one (so the port its probe socket gets outside is known) and a hard side whose ports move:
//! the hard side opens many sockets towards the easy side's port, the easy side probes random
//! ports of the hard side's address, and by the birthday paradox one probe soon lands on one of
//! the hard side's mappings. Two hard sides would need about 170,000 probes: left to the relay.

use std::{collections::VecDeque, net::IpAddr};

/// Observations kept per transport (the newest).
pub const MAX_OBSERVATIONS: usize = 8;

/// Ports within this distance of each other, seen by different observers, count as handed out
/// in order.
pub const SEQUENTIAL_SPREAD: u16 = 16;

/// One observer's view of our listen port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// The observer's address (the remote address of the connection).
    pub observer: IpAddr,
    /// Our local (listen) port the connection left from.
    pub local_port: u16,
    /// The public address the observer saw.
    pub observed: IpAddr,
    /// The port the observer saw.
    pub observed_port: u16,
}

/// The kind of mapping, as far as the observations tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mapping {
    /// Nothing observed yet.
    Unknown,
    /// No NAT, or one that keeps our port: the port outside is the local one. `confirmed`:
    /// two or more observers agree (otherwise one saw it).
    Preserving {
        /// Seen by observers at two or more addresses.
        confirmed: bool,
    },
    /// Endpoint-independent: observers at different addresses see one port, not ours.
    EndpointIndependent,
    /// Endpoint-dependent (symmetric): observers at different addresses see different ports.
    EndpointDependent {
        /// The ports are close together (handed out in order).
        sequential: bool,
    },
    /// One observer saw a port other than ours (EDM, or EIM that moves ports).
    PortChanges,
}

impl Mapping {
    /// A short name for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Mapping::Unknown => "unknown",
            Mapping::Preserving { confirmed: true } => "endpoint-independent, port-preserving",
            Mapping::Preserving { confirmed: false } => "port-preserving (one observer)",
            Mapping::EndpointIndependent => "endpoint-independent",
            Mapping::EndpointDependent { sequential: true } => {
                "endpoint-dependent (symmetric), sequential ports"
            }
            Mapping::EndpointDependent { sequential: false } => {
                "endpoint-dependent (symmetric), random ports"
            }
            Mapping::PortChanges => "port changes (one observer: symmetric, or not preserving)",
        }
    }

    /// The port outside is the local one: a fresh socket's public port is known without
    /// asking anyone.
    pub fn preserves_ports(self) -> bool {
        matches!(self, Mapping::Preserving { .. })
    }

    /// Ports move (or may): a plain hole punch cannot line them up.
    pub fn moves_ports(self) -> bool {
        matches!(
            self,
            Mapping::EndpointDependent { .. } | Mapping::PortChanges | Mapping::EndpointIndependent
        )
    }
}

/// The newest observations of one transport's listen port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observations {
    recent: VecDeque<Observation>,
}

impl Observations {
    /// Records `o`; returns the new mapping if it changed.
    pub fn observe(&mut self, o: Observation) -> Option<Mapping> {
        let before = self.mapping();
        // The latest view per observer counts; a new local port starts over.
        self.recent
            .retain(|r| r.observer != o.observer && r.local_port == o.local_port);
        self.recent.push_front(o);
        self.recent.truncate(MAX_OBSERVATIONS);
        let after = self.mapping();
        (after != before).then_some(after)
    }

    /// The mapping the observations show.
    pub fn mapping(&self) -> Mapping {
        let Some(first) = self.recent.front() else {
            return Mapping::Unknown;
        };
        let local = first.local_port;
        let ports: Vec<u16> = self.recent.iter().map(|o| o.observed_port).collect();
        if self.recent.len() == 1 {
            return if first.observed_port == local {
                Mapping::Preserving { confirmed: false }
            } else {
                Mapping::PortChanges
            };
        }
        if ports.iter().all(|p| *p == ports[0]) {
            return if ports[0] == local {
                Mapping::Preserving { confirmed: true }
            } else {
                Mapping::EndpointIndependent
            };
        }
        let (min, max) = (
            ports.iter().min().copied().unwrap_or(0),
            ports.iter().max().copied().unwrap_or(0),
        );
        Mapping::EndpointDependent {
            sequential: max - min <= SEQUENTIAL_SPREAD * ports.len() as u16,
        }
    }

    /// Our public address, as the newest observer saw it.
    pub fn public_ip(&self) -> Option<IpAddr> {
        self.recent.front().map(|o| o.observed)
    }
}

/// Whether `ip` is reachable across the internet: not private, shared (carrier-grade NAT),
/// benchmarking, documentation, unique local, nor this host or a non-unicast address.
pub fn is_global(ip: IpAddr) -> bool {
    crate::addr::class(ip) == crate::addr::Class::Global
}

/// Whether a punch may send packets to `ip`, which a peer named as its public address: IPv4
/// (probe sockets are), unicast and not this host, and private only in a private mesh
/// (`private_ok`).
pub fn probe_target_ok(ip: IpAddr, private_ok: bool) -> bool {
    ip.is_ipv4()
        && match crate::addr::class(ip) {
            crate::addr::Class::Global => true,
            crate::addr::Class::Private => private_ok,
            crate::addr::Class::Never => false,
        }
}

/// Whether an observation counts: an IPv4 observer and observed address (the punch is IPv4)
/// that are where a NAT's outside is (global, or private in a private mesh). An observer on our
/// LAN sees our local port, which says nothing of the NAT.
pub fn counts(observer: IpAddr, observed: IpAddr, private_ok: bool) -> bool {
    probe_target_ok(observer, private_ok) && probe_target_ok(observed, private_ok)
}

/// A side of a birthday punch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Probes random ports of the other side's address from one socket whose public port is
    /// known.
    Easy,
    /// Opens many sockets towards the easy side's port and waits for a probe to land.
    Hard,
}

/// Our role in a birthday punch between `ours` and `theirs`, or `None` where it does not fit:
/// a plain hole punch works (both keep their ports), neither side's public port is known, or
/// one side is unknown.
pub fn birthday_role(ours: Mapping, theirs: Mapping) -> Option<Role> {
    if ours.preserves_ports() && theirs.moves_ports() {
        Some(Role::Easy)
    } else if ours.moves_ports() && theirs.preserves_ports() {
        Some(Role::Hard)
    } else {
        None
    }
}

/// The chance that a birthday punch finds a mapping: `sockets` open on the hard side, `probes`
/// sent to random ports among `ports` (64,512 above 1023).
pub fn success_chance(sockets: u32, probes: u32, ports: u32) -> f64 {
    let miss = 1.0 - f64::from(sockets) / f64::from(ports.max(1));
    1.0 - miss.powi(i32::try_from(probes).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(observer: u8, local: u16, port: u16) -> Observation {
        Observation {
            observer: IpAddr::from([203, 0, 113, observer]),
            local_port: local,
            observed: IpAddr::from([198, 51, 100, 1]),
            observed_port: port,
        }
    }

    #[test]
    fn classifies_from_the_observers() {
        let mut o = Observations::default();
        assert_eq!(o.mapping(), Mapping::Unknown);
        assert_eq!(
            o.observe(seen(1, 4001, 4001)),
            Some(Mapping::Preserving { confirmed: false })
        );
        assert_eq!(
            o.observe(seen(2, 4001, 4001)),
            Some(Mapping::Preserving { confirmed: true })
        );
        // The same observer again changes nothing.
        assert_eq!(o.observe(seen(2, 4001, 4001)), None);

        let mut o = Observations::default();
        assert_eq!(o.observe(seen(1, 4001, 51234)), Some(Mapping::PortChanges));
        assert_eq!(
            o.observe(seen(2, 4001, 51234)),
            Some(Mapping::EndpointIndependent)
        );
        assert_eq!(
            o.observe(seen(3, 4001, 13)),
            Some(Mapping::EndpointDependent { sequential: false })
        );

        let mut o = Observations::default();
        o.observe(seen(1, 4001, 30000));
        assert_eq!(
            o.observe(seen(2, 4001, 30001)),
            Some(Mapping::EndpointDependent { sequential: true })
        );
        // A new listen port starts over.
        assert_eq!(
            o.observe(seen(1, 5000, 5000)),
            Some(Mapping::Preserving { confirmed: false })
        );
    }

    #[test]
    fn a_birthday_punch_needs_one_known_port_and_one_that_moves() {
        let easy = Mapping::Preserving { confirmed: false };
        let hard = Mapping::PortChanges;
        assert_eq!(birthday_role(easy, hard), Some(Role::Easy));
        assert_eq!(birthday_role(hard, easy), Some(Role::Hard));
        assert_eq!(
            birthday_role(
                Mapping::EndpointDependent { sequential: false },
                Mapping::Preserving { confirmed: true }
            ),
            Some(Role::Hard)
        );
        // Both keep their ports: a plain punch works. Both move: 170,000 probes.
        assert_eq!(birthday_role(easy, easy), None);
        assert_eq!(birthday_role(hard, hard), None);
        assert_eq!(birthday_role(Mapping::Unknown, hard), None);
    }

    #[test]
    fn only_addresses_outside_a_nat_count() {
        let global: IpAddr = "81.2.69.1".parse().expect("ip");
        let lab: IpAddr = "198.18.0.11".parse().expect("ip");
        assert!(probe_target_ok(global, false));
        assert!(!probe_target_ok(lab, false));
        assert!(probe_target_ok(lab, true));
        for never in [
            "127.0.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "169.254.1.1",
        ] {
            assert!(
                !probe_target_ok(never.parse().expect("ip"), true),
                "{never}"
            );
        }
        assert!(!probe_target_ok("2001:db8::1".parse().expect("ip"), true));
        assert!(counts(global, global, false));
        assert!(!counts("192.168.1.1".parse().expect("ip"), global, false));
    }

    #[test]
    fn the_field_figures_follow() {
        // Tailscale's: 256 sockets, 1,024 probes about 98%, 2,048 about 99.9%.
        let p1024 = success_chance(256, 1024, 64512);
        let p2048 = success_chance(256, 2048, 64512);
        assert!((0.98..0.99).contains(&p1024), "{p1024}");
        assert!(p2048 > 0.999, "{p2048}");
    }
}
