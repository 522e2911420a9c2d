//! What kind of IP address a multiaddr carries: global, private (a LAN, carrier-grade NAT, a
//! lab's benchmarking range), or one no peer should ever be dialled at or count as reaching us
//! from (loopback, unspecified, link-local, multicast, broadcast).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use multiaddr::{Multiaddr, Protocol};

/// An IP address's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Reachable across the internet.
    Global,
    /// Not global, but a real network: private ranges, carrier-grade NAT, unique local,
    /// benchmarking and documentation ranges.
    Private,
    /// This host, or not a unicast address.
    Never,
}

/// The first IP address in `addr`.
pub(crate) fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// What kind of address `ip` is.
pub(crate) fn class(ip: IpAddr) -> Class {
    if never(ip) {
        Class::Never
    } else if private(ip) {
        Class::Private
    } else {
        Class::Global
    }
}

/// This host, or not one unicast address: no honest peer is there.
fn never(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_link_local()
                || ip.is_multicast()
                || ip.is_broadcast()
                || ip.octets()[0] == 0
        }
        IpAddr::V6(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip.to_ipv4_mapped().is_some_and(|v4| never(IpAddr::V4(v4)))
        }
    }
}

/// Addresses that are not global: private ranges, carrier-grade NAT, benchmarking, unique local.
fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => private_v4(ip),
        IpAddr::V6(ip) => {
            (ip.segments()[0] & 0xfe00) == 0xfc00
                || ip.to_ipv4_mapped().is_some_and(private_v4)
                || is_documentation_v6(ip)
        }
    }
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private()
        || ip.is_documentation()
        || (a == 100 && (64..128).contains(&b))
        || (a == 198 && (b == 18 || b == 19))
}

fn is_documentation_v6(ip: Ipv6Addr) -> bool {
    ip.segments()[0] == 0x2001 && ip.segments()[1] == 0x0db8
}

/// Whether `own` and `other` share a network: the same /24 (IPv4) or /64 (IPv6).
pub(crate) fn same_network(own: IpAddr, other: IpAddr) -> bool {
    match (own, other) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..3] == b.octets()[..3],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.segments()[..4] == b.segments()[..4],
        _ => false,
    }
}

/// Whether a peer-supplied `ip` may be used: global unicast always; private when `private_ok`
/// (or `neighbours_ok` and one of `ours` is on its network); loopback only when `private_ok` and
/// we listen on loopback ourselves (a mesh on one host); never the rest.
pub(crate) fn admissible(
    ip: IpAddr,
    private_ok: bool,
    neighbours_ok: bool,
    ours: &[Multiaddr],
) -> bool {
    match class(ip) {
        Class::Global => true,
        Class::Private => {
            private_ok
                || (neighbours_ok
                    && ours
                        .iter()
                        .filter_map(ip_of)
                        .any(|own| same_network(own, ip)))
        }
        Class::Never => {
            private_ok
                && ip.is_loopback()
                && ours.iter().filter_map(ip_of).any(|own| own.is_loopback())
        }
    }
}
