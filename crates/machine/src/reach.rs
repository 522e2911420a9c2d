//! How to reach a peer we are not connected to.
//!
//! A peer's signed record lists its listen addresses (circuit addresses included) and the
//! addresses others observe it at (its NAT's mapping of its listen port). When the peer sits
//! behind a relay we are directly connected to, we can do better than dial the circuit and wait
//! for DCUtR: we dial its observed address now (opening our NAT towards it) and ask the relay to
//! introduce us, so the peer dials our observed address straight away. The two dials cross in
//! the network, which is what a hole punch needs, about one round trip after our first dial
//! instead of after the relayed connection and DCUtR's exchange.

use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol};

use crate::node::is_relayed;

/// How long to wait before looking a peer up again after `failed` lookups found no usable
/// address, while something waits for the peer (a connection to a `--tunnel` port, a stream,
/// or a `--tunnel`'s reach at start-up): at most until the connect timeout.
///
/// Short and bounded, not exponential: a peer that is not in the DHT yet is usually one that
/// started a moment ago and is about to publish (its relay slot and record take a few round
/// trips), and a lookup that backs off to seconds finds it seconds late. Every 200 ms for the
/// first two seconds, then every second: at most ten lookups (two DHT queries each) in the
/// first two seconds per peer being reached, one a second after that.
pub fn lookup_retry_delay(failed: u32) -> std::time::Duration {
    let ms = if failed <= FAST_LOOKUPS { 200 } else { 1000 };
    std::time::Duration::from_millis(ms)
}

/// Lookups retried at the fast cadence of [`lookup_retry_delay`].
const FAST_LOOKUPS: u32 = 10;

/// One step of reaching a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReachStep {
    /// Dial these addresses (one dial; the first to connect wins).
    Dial {
        /// Where.
        addrs: Vec<Multiaddr>,
    },
    /// Dial the peer's observed addresses on their own (so a connected circuit does not cancel
    /// them), and ask `via` to introduce us.
    Punch {
        /// A relay of the peer's that we are directly connected to.
        via: PeerId,
        /// The peer's observed addresses.
        addrs: Vec<Multiaddr>,
    },
    /// No address known: look the peer up in the DHT.
    Lookup,
}

/// The relay a `/p2p-circuit` address goes through, if any.
pub fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => relay = Some(id),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

/// Plans how to reach a peer at `addrs` (listen and circuit addresses) and `observed`
/// (addresses others see it at). `directly_connected(r)` says whether we have a direct
/// connection to peer `r`.
pub fn plan(
    addrs: &[Multiaddr],
    observed: &[Multiaddr],
    directly_connected: impl Fn(&PeerId) -> bool,
) -> Vec<ReachStep> {
    let via = addrs
        .iter()
        .filter_map(relay_of)
        .find(|relay| directly_connected(relay));
    let observed: Vec<Multiaddr> = observed
        .iter()
        .filter(|a| !is_relayed(a))
        .cloned()
        .collect();
    // The plain dial comes first: a punch dial started before it would make the swarm see the
    // peer as "being dialled" and skip it.
    let (rest, punch) = match via {
        Some(via) if !observed.is_empty() => {
            let rest: Vec<Multiaddr> = addrs
                .iter()
                .filter(|a| !observed.contains(a))
                .cloned()
                .collect();
            let punch = ReachStep::Punch {
                via,
                addrs: observed,
            };
            (rest, Some(punch))
        }
        _ => {
            let mut all = addrs.to_vec();
            all.extend(observed.into_iter().filter(|a| !addrs.contains(a)));
            (all, None)
        }
    };
    let mut steps = vec![if rest.is_empty() {
        ReachStep::Lookup
    } else {
        ReachStep::Dial { addrs: rest }
    }];
    steps.extend(punch);
    steps
}

#[cfg(test)]
mod tests {
    use libp2p_identity::Keypair;

    use super::*;

    #[test]
    fn lookups_retry_soon_and_never_less_often_than_every_second() {
        let ms = |n| lookup_retry_delay(n).as_millis();
        assert_eq!((ms(1), ms(10), ms(11), ms(100)), (200, 200, 1000, 1000));
    }

    fn peer(i: u8) -> PeerId {
        Keypair::ed25519_from_bytes([i + 1; 32])
            .expect("key")
            .public()
            .to_peer_id()
    }

    fn a(s: &str) -> Multiaddr {
        s.parse().expect("multiaddr")
    }

    fn circuit(relay: u8, target: u8) -> Multiaddr {
        a(&format!(
            "/ip4/198.51.100.1/tcp/4001/p2p/{}/p2p-circuit/p2p/{}",
            peer(relay),
            peer(target)
        ))
    }

    #[test]
    fn relay_of_finds_the_peer_before_the_circuit() {
        assert_eq!(relay_of(&circuit(1, 2)), Some(peer(1)));
        assert_eq!(relay_of(&a("/ip4/1.2.3.4/tcp/1")), None);
        assert_eq!(
            relay_of(&a(&format!("/ip4/1.2.3.4/tcp/1/p2p/{}", peer(1)))),
            None
        );
    }

    #[test]
    fn punches_through_a_connected_relay() {
        let observed = a("/ip4/203.0.113.5/tcp/40000");
        let lan = a("/ip4/10.0.0.2/tcp/40000");
        let steps = plan(
            &[lan.clone(), circuit(1, 2)],
            std::slice::from_ref(&observed),
            |p| *p == peer(1),
        );
        assert_eq!(
            steps,
            vec![
                ReachStep::Dial {
                    addrs: vec![lan, circuit(1, 2)]
                },
                ReachStep::Punch {
                    via: peer(1),
                    addrs: vec![observed]
                },
            ]
        );
    }

    #[test]
    fn without_a_connected_relay_everything_is_one_dial() {
        let observed = a("/ip4/203.0.113.5/tcp/40000");
        let steps = plan(&[circuit(1, 2)], std::slice::from_ref(&observed), |_| false);
        assert_eq!(
            steps,
            vec![ReachStep::Dial {
                addrs: vec![circuit(1, 2), observed]
            }]
        );
    }

    #[test]
    fn nothing_known_means_lookup() {
        assert_eq!(plan(&[], &[], |_| true), vec![ReachStep::Lookup]);
        // Only observed addresses and a connected relay is impossible (the relay comes from a
        // circuit address), so observed alone is a plain dial.
        let observed = a("/ip4/203.0.113.5/tcp/40000");
        assert_eq!(
            plan(&[], std::slice::from_ref(&observed), |_| true),
            vec![ReachStep::Dial {
                addrs: vec![observed]
            }]
        );
    }
}
