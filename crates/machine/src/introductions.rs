//! Which introductions a node acts on, and which of an introduction's addresses it dials.
//!
//! An introduction (`/punchgate/introduction/1.0.0`) makes a node dial at once, so whoever can
//! send one aims our dials. Only the relay we hold a reservation with may send them (the
//! driver checks that), at most [`INTRODUCTIONS_PER_MINUTE`] a minute, and we dial only what an
//! honest introduction can contain: where the relay saw the requester, a global unicast
//! address, at most [`MAX_DIALS_PER_INTRODUCTION`] of them. Private addresses only when private
//! addresses count (`--autonat-private-ips`: a lab, a LAN-only mesh) or when the address is on
//! a network we are on ourselves (the same /24 or /64: a neighbour the relay saw from there).
//! Never loopback, unspecified, multicast, broadcast or link-local: a relay must not turn a node
//! into a scanner of its own host or of private networks it is not on, nor a fast reflector
//! towards arbitrary hosts.

use std::time::{Duration, Instant};

use multiaddr::Multiaddr;

use crate::{
    addr::{admissible, ip_of},
    limit::{PerKey, Window},
};

/// Addresses dialled per introduction (a relay observes a requester at one address per
/// transport; a few more leave room for IPv4 and IPv6).
pub const MAX_DIALS_PER_INTRODUCTION: usize = 4;

/// Introductions acted on per minute, from our relay. An honest relay sends one per peer that
/// wants to reach us and has no direct connection yet (at most one per peer every 10 s).
pub const INTRODUCTIONS_PER_MINUTE: u32 = 30;

/// Introductions one requester may ask a relay for per minute. An honest node asks once per
/// peer it wants to reach and has no direct connection to, at most once every 10 s per peer.
pub const INTRODUCTION_REQUESTS_PER_MINUTE: u32 = 20;

/// Requesters a relay keeps count of at once (more are refused until a minute has passed).
pub const MAX_COUNTED_REQUESTERS: usize = 1024;

/// Counts introductions from our relay in a one-minute window.
#[derive(Debug, Clone)]
pub struct IntroductionGate(Window);

impl Default for IntroductionGate {
    fn default() -> Self {
        Self(Window::new(
            INTRODUCTIONS_PER_MINUTE,
            Duration::from_secs(60),
        ))
    }
}

impl IntroductionGate {
    /// Whether an introduction arriving at `now` may be acted on.
    pub fn admit(&mut self, now: Instant) -> bool {
        self.0.admit(now)
    }
}

/// What a relay allows each requester: [`INTRODUCTION_REQUESTS_PER_MINUTE`] introductions a
/// minute, for up to [`MAX_COUNTED_REQUESTERS`] requesters at once.
pub fn requester_limits<K: std::hash::Hash + Eq + Clone>() -> PerKey<K> {
    PerKey::new(
        INTRODUCTION_REQUESTS_PER_MINUTE,
        Duration::from_secs(60),
        MAX_COUNTED_REQUESTERS,
    )
}

/// The addresses of an introduction we dial: those [`dialable`], at most
/// [`MAX_DIALS_PER_INTRODUCTION`], in the order given.
pub fn to_dial(addrs: Vec<Multiaddr>, private_ok: bool, ours: &[Multiaddr]) -> Vec<Multiaddr> {
    addrs
        .into_iter()
        .filter(|a| dialable(a, private_ok, ours))
        .take(MAX_DIALS_PER_INTRODUCTION)
        .collect()
}

/// Whether an address a peer supplied (in an introduction, or about itself) may be dialled: a
/// direct (not relayed) IP address that is global unicast; private too when `private_ok`, or
/// when one of our own addresses (`ours`) is on the same network (the same /24 for IPv4, the
/// same /64 for IPv6). Loopback only in a mesh on one host: `private_ok` and we listen on
/// loopback ourselves.
pub fn dialable(addr: &Multiaddr, private_ok: bool, ours: &[Multiaddr]) -> bool {
    if crate::node::is_relayed(addr) {
        return false;
    }
    ip_of(addr).is_some_and(|ip| admissible(ip, private_ok, true, ours))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    #[test]
    fn only_what_an_honest_introduction_can_contain_is_dialled() {
        let none: &[Multiaddr] = &[];
        // A documentation range is no one's address.
        assert!(!dialable(&addr("/ip4/203.0.113.9/tcp/4001"), false, none));
        assert!(dialable(&addr("/ip4/81.2.69.160/tcp/4001"), false, none));
        assert!(dialable(
            &addr("/ip6/2a01:4f8::1/udp/4001/quic-v1"),
            false,
            none
        ));
        for never in [
            "/ip4/127.0.0.1/tcp/22",
            "/ip4/0.0.0.0/tcp/4001",
            "/ip4/169.254.169.254/tcp/80",
            "/ip4/224.0.0.1/udp/5353/quic-v1",
            "/ip4/255.255.255.255/tcp/4001",
            "/ip6/::1/tcp/22",
            "/ip6/fe80::1/tcp/4001",
            "/ip6/ff02::1/tcp/4001",
            "/ip6/::ffff:127.0.0.1/tcp/22",
            "/dns4/example.com/tcp/4001",
        ] {
            assert!(!dialable(&addr(never), true, none), "{never}");
        }
        let relayed = "/ip4/81.2.69.160/tcp/4001/p2p/12D3KooWRAyrXFngvk4k2tkiYpYR1LwxzPxeib9cASozbPLuRtbB/p2p-circuit";
        assert!(!dialable(&addr(relayed), true, none));
        // Loopback only in a mesh on one host: private addresses count, and we listen there.
        let loopback = addr("/ip4/127.0.0.1/tcp/4001");
        let here = [addr("/ip4/127.0.0.1/tcp/5001")];
        assert!(dialable(&loopback, true, &here));
        assert!(!dialable(&loopback, false, &here));
        assert!(!dialable(
            &loopback,
            true,
            &[addr("/ip4/192.168.1.7/tcp/4001")]
        ));
    }

    #[test]
    fn private_addresses_only_when_they_count_or_on_our_own_network() {
        let lan = addr("/ip4/192.168.1.20/tcp/4001");
        let cgnat = addr("/ip4/100.64.3.4/tcp/4001");
        let lab = addr("/ip4/198.18.0.11/tcp/4001");
        for private in [&lan, &cgnat, &lab] {
            assert!(!dialable(private, false, &[]), "{private}");
            assert!(dialable(private, true, &[]), "{private}");
        }
        let ours = [addr("/ip4/192.168.1.7/tcp/4001")];
        assert!(dialable(&lan, false, &ours));
        assert!(!dialable(&addr("/ip4/192.168.2.20/tcp/4001"), false, &ours));
    }

    #[test]
    fn at_most_a_few_addresses_per_introduction() {
        let many: Vec<Multiaddr> = (1..=32)
            .map(|i| addr(&format!("/ip4/81.2.69.{i}/tcp/4001")))
            .collect();
        let dialled = to_dial(many, false, &[]);
        assert_eq!(dialled.len(), MAX_DIALS_PER_INTRODUCTION);
        assert_eq!(dialled[0], addr("/ip4/81.2.69.1/tcp/4001"));
    }

    #[test]
    fn introductions_are_rate_limited_per_minute() {
        let mut gate = IntroductionGate::default();
        let start = Instant::now();
        for _ in 0..INTRODUCTIONS_PER_MINUTE {
            assert!(gate.admit(start));
        }
        assert!(!gate.admit(start + Duration::from_secs(30)));
        assert!(gate.admit(start + Duration::from_secs(61)));
    }
}
