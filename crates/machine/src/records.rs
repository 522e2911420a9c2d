//! What a node shares about addresses on the DHT: in its own peer record, and in Kademlia's
//! routing table (which other peers are handed in answers).
//!
//! The DHT is public: whatever goes in is read by strangers anywhere, and dialled by them. A
//! private address there points them at whoever holds that address on *their* network, and a
//! loopback one at their own host. So only global unicast addresses go in (and DNS names an
//! operator gave); private ones only in a mesh that says private addresses count
//! (`--autonat-private-ips`: a lab, a LAN-only mesh), loopback only in a mesh on one host. LAN
//! discovery is mDNS's job. A circuit address is judged by its relay's address.

use multiaddr::{Multiaddr, Protocol};

use crate::addr::{admissible, ip_of};

/// Whether `addr` may go into the DHT. `private_ok`: private addresses count in this mesh;
/// `ours`: our own listen addresses (loopback only when we listen on loopback ourselves).
pub fn shareable(addr: &Multiaddr, private_ok: bool, ours: &[Multiaddr]) -> bool {
    // A circuit address: the relay's part decides.
    let direct: Multiaddr = addr
        .iter()
        .take_while(|p| *p != Protocol::P2pCircuit)
        .collect();
    let Some(ip) = ip_of(&direct) else {
        // A DNS name (an operator's --external-address), or no address at all.
        return direct
            .iter()
            .any(|p| matches!(p, Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)));
    };
    admissible(ip, private_ok, false, ours)
}

/// Whether `addr`, read from a record or a DHT answer (a stranger's text), may be dialled:
/// [`shareable`], except DNS names (which could resolve to anything, loopback included) unless
/// private addresses count in this mesh.
pub fn takeable(addr: &Multiaddr, private_ok: bool, ours: &[Multiaddr]) -> bool {
    shareable(addr, private_ok, ours) && (private_ok || ip_of(addr).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    #[test]
    fn only_global_addresses_go_into_a_public_dht() {
        let ours = [addr("/ip4/192.168.1.20/tcp/4001")];
        for shared in [
            "/ip4/81.2.69.160/tcp/4001",
            "/ip6/2a01:4f8::1/udp/4001/quic-v1",
            "/dns4/node.example.com/tcp/4001",
            "/ip4/81.2.69.160/tcp/4001/p2p/12D3KooWRAyrXFngvk4k2tkiYpYR1LwxzPxeib9cASozbPLuRtbB/p2p-circuit",
        ] {
            assert!(shareable(&addr(shared), false, &ours), "{shared}");
        }
        for kept in [
            "/ip4/192.168.1.30/tcp/4001",
            "/ip4/10.0.0.2/udp/4001/quic-v1",
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/0.0.0.0/tcp/4001",
            "/ip6/fe80::1/tcp/4001",
            "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWRAyrXFngvk4k2tkiYpYR1LwxzPxeib9cASozbPLuRtbB/p2p-circuit",
            "/p2p-circuit",
        ] {
            assert!(!shareable(&addr(kept), false, &ours), "{kept}");
        }
    }

    #[test]
    fn dns_names_are_published_but_not_taken_from_strangers() {
        let dns = addr("/dns4/localhost/tcp/22");
        assert!(shareable(&dns, false, &[]));
        assert!(!takeable(&dns, false, &[]));
        assert!(takeable(&addr("/ip4/81.2.69.160/tcp/4001"), false, &[]));
        assert!(!takeable(&addr("/ip4/10.0.0.1/tcp/4001"), false, &[]));
    }

    #[test]
    fn private_addresses_count_only_when_the_mesh_says_so() {
        let lan = [addr("/ip4/10.0.0.2/tcp/4001")];
        assert!(shareable(&addr("/ip4/10.0.0.9/tcp/1"), true, &lan));
        assert!(!shareable(&addr("/ip4/127.0.0.1/tcp/1"), true, &lan));
        let one_host = [addr("/ip4/127.0.0.1/tcp/4001")];
        assert!(shareable(&addr("/ip4/127.0.0.1/tcp/1"), true, &one_host));
        assert!(!shareable(&addr("/ip4/127.0.0.1/tcp/1"), false, &one_host));
        assert!(!shareable(&addr("/ip4/169.254.1.1/tcp/1"), true, &lan));
    }
}
