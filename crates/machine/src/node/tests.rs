use std::time::Duration;

use libp2p_identity::{Keypair, PeerId};
use multiaddr::Multiaddr;
use proptest::prelude::*;

use super::*;

type S = State<u8>;
type E = Event<u8>;

/// A fixed set of peers so proptest can shrink sequences meaningfully.
fn peer(i: u8) -> PeerId {
    Keypair::ed25519_from_bytes([i + 1; 32])
        .expect("32 bytes")
        .public()
        .to_peer_id()
}

/// A global address (a peer's own addresses are dialled only when global, or private ones in a
/// private mesh).
fn addr(i: u8) -> Multiaddr {
    format!("/ip4/81.2.69.{}/tcp/4001", i + 1)
        .parse()
        .expect("valid multiaddr")
}

fn circuit(relay: u8, me: u8) -> Multiaddr {
    format!(
        "/ip4/198.51.100.{}/tcp/4001/p2p/{}/p2p-circuit/p2p/{}",
        relay + 1,
        peer(relay),
        peer(me)
    )
    .parse()
    .expect("valid multiaddr")
}

const BOOTSTRAP: u8 = 0;

fn config() -> Config {
    Config {
        bootstrap: vec![(peer(BOOTSTRAP), addr(BOOTSTRAP))],
        ..Config::default()
    }
}

fn run(mut s: S, events: impl IntoIterator<Item = E>) -> (S, Vec<Command>) {
    let mut all = Vec::new();
    for e in events {
        let (next, cmds) = s.step(e);
        s = next;
        all.extend(cmds);
    }
    (s, all)
}

fn connected(p: u8, c: u8, kind: PathKind) -> E {
    Event::ConnectionEstablished {
        peer: peer(p),
        connection: c,
        kind,
        inbound: false,
    }
}

fn identified_relay(p: u8) -> E {
    Event::PeerIdentified {
        peer: peer(p),
        listen_addrs: vec![addr(p)],
        relay_capable: true,
        kademlia: true,
    }
}

/// Started, connected to the bootstrap peer, which is identified as a relay.
fn discovering() -> S {
    run(
        S::new(config()),
        [
            Event::Started,
            connected(BOOTSTRAP, 1, PathKind::Direct),
            identified_relay(BOOTSTRAP),
        ],
    )
    .0
}

fn participating() -> S {
    run(
        discovering(),
        [
            Event::KademliaBootstrapSucceeded,
            Event::NatStatusChanged {
                status: NatStatus::Public,
            },
        ],
    )
    .0
}

#[test]
fn start_dials_bootstrap_and_arms_discovery_timeout() {
    let cfg = Config {
        external_addresses: vec![addr(9)],
        ..config()
    };
    let (s, cmds) = S::new(cfg).step(Event::Started);
    assert_eq!(s.phase(), Phase::Initializing);
    // A node given its external address is public from the start.
    assert_eq!(s.nat(), NatStatus::Public);
    assert_eq!(
        cmds,
        vec![
            Command::SetPublic { public: true },
            Command::AddExternalAddress { addr: addr(9) },
            Command::KademliaAddAddress {
                peer: peer(BOOTSTRAP),
                addr: addr(BOOTSTRAP)
            },
            Command::Dial {
                peer: peer(BOOTSTRAP),
                addrs: vec![addr(BOOTSTRAP)],
                reason: DialReason::Bootstrap
            },
            Command::StartTimer {
                timer: Timer::DiscoveryTimeout { generation: 1 },
                after: Duration::from_secs(30)
            },
        ]
    );
    // A second `Started` does nothing.
    assert!(s.step(Event::Started).1.is_empty());
}

#[test]
fn bootstrap_connection_starts_discovery_and_kademlia() {
    let (s, _) = S::new(config()).step(Event::Started);
    let (s, cmds) = s.step(connected(BOOTSTRAP, 1, PathKind::Direct));
    assert_eq!(s.phase(), Phase::Discovering);
    assert_eq!(cmds, vec![Command::KademliaBootstrap]);
    // A second connection does not bootstrap again.
    let (_, cmds) = s.step(connected(BOOTSTRAP, 2, PathKind::Direct));
    assert!(cmds.is_empty());
}

#[test]
fn kademlia_is_ready_only_with_a_peer_that_speaks_our_dht() {
    // The only peer is a stock relay: it speaks no Punchgate DHT.
    let (s, _) = run(
        S::new(config()),
        [
            Event::Started,
            connected(BOOTSTRAP, 1, PathKind::Direct),
            Event::PeerIdentified {
                peer: peer(BOOTSTRAP),
                listen_addrs: vec![addr(BOOTSTRAP)],
                relay_capable: true,
                kademlia: false,
            },
        ],
    );
    let (s, cmds) = run(
        s,
        [
            Event::KademliaBootstrapSucceeded,
            Event::NatStatusChanged {
                status: NatStatus::Public,
            },
        ],
    );
    assert!(!s.kademlia_ready());
    assert_eq!(s.phase(), Phase::Discovering, "{cmds:?}");
    // A peer that speaks it: bootstrap again, and this time it counts.
    let (s, cmds) = run(
        s,
        [
            connected(1, 2, PathKind::Direct),
            Event::PeerIdentified {
                peer: peer(1),
                listen_addrs: vec![addr(1)],
                relay_capable: false,
                kademlia: true,
            },
        ],
    );
    assert!(cmds.contains(&Command::KademliaBootstrap), "{cmds:?}");
    let (s, _) = s.step(Event::KademliaBootstrapSucceeded);
    assert!(s.kademlia_ready());
    assert_eq!(s.phase(), Phase::Participating);
}

#[test]
fn an_unknown_node_reserves_at_once_publishes_and_releases_when_autonat_says_public() {
    let (s, cmds) = run(
        S::new(config()),
        [
            Event::Started,
            connected(BOOTSTRAP, 1, PathKind::Direct),
            identified_relay(BOOTSTRAP),
        ],
    );
    assert_eq!(s.nat(), NatStatus::Unknown);
    assert!(!s.assumed_private());
    // Reachable at once: no waiting for AutoNAT.
    assert!(
        cmds.contains(&Command::RequestRelayReservation {
            relay: peer(BOOTSTRAP),
            addrs: vec![addr(BOOTSTRAP)],
        }),
        "{cmds:?}"
    );
    let (s, _) = s.step(Event::KademliaBootstrapSucceeded);
    assert_eq!(s.phase(), Phase::Discovering, "nothing to publish yet");
    let (s, cmds) = s.step(Event::RelayReservationAccepted {
        relay: peer(BOOTSTRAP),
        addr: circuit(BOOTSTRAP, 9),
    });
    assert_eq!(s.phase(), Phase::Participating);
    assert!(cmds.contains(&Command::PublishServices), "{cmds:?}");
    // AutoNAT says public after all: the reservation goes, the record is published again
    // without it, and the node serves.
    let (s, cmds) = s.step(Event::NatStatusChanged {
        status: NatStatus::Public,
    });
    assert!(
        cmds.contains(&Command::SetPublic { public: true }),
        "{cmds:?}"
    );
    assert!(
        cmds.contains(&Command::ReleaseRelayReservation {
            relay: peer(BOOTSTRAP)
        }),
        "{cmds:?}"
    );
    assert!(cmds.contains(&Command::PublishServices), "{cmds:?}");
    assert_eq!(s.relay(), &RelayState::Idle);
}

#[test]
fn unknown_through_a_discovery_timeout_acts_private_until_autonat_decides() {
    let (s, _) = run(
        S::new(config()),
        [
            Event::Started,
            connected(BOOTSTRAP, 1, PathKind::Direct),
            identified_relay(BOOTSTRAP),
        ],
    );
    let (s, _) = s.step(Event::TimerFired(Timer::DiscoveryTimeout { generation: 1 }));
    assert!(s.assumed_private());
    assert!(matches!(s.relay(), RelayState::Requesting { .. }));
    // AutoNAT loses its confidence later: the node stays private.
    let (s, _) = s.step(Event::NatStatusChanged {
        status: NatStatus::Private,
    });
    let (s, _) = s.step(Event::NatStatusChanged {
        status: NatStatus::Unknown,
    });
    assert!(s.acts_private());
}

#[test]
fn unknown_with_an_inbound_direct_connection_is_not_taken_for_private() {
    let (s, cmds) = run(
        S::new(config()),
        [
            Event::Started,
            connected(BOOTSTRAP, 1, PathKind::Direct),
            Event::ConnectionEstablished {
                peer: peer(2),
                connection: 2,
                kind: PathKind::Direct,
                inbound: true,
            },
            identified_relay(BOOTSTRAP),
        ],
    );
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::RequestRelayReservation { .. })),
        "someone reached us directly: no slot while unknown: {cmds:?}"
    );
    let (s, cmds) = s.step(Event::TimerFired(Timer::DiscoveryTimeout { generation: 1 }));
    assert!(!s.assumed_private());
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::RequestRelayReservation { .. })),
        "{cmds:?}"
    );
}

#[test]
fn only_global_addresses_show_reachability_unless_private_ones_count() {
    let reach = |a: &str, private: bool| counts_as_reachability(&a.parse().expect("addr"), private);
    assert!(reach("/ip4/81.2.69.160/tcp/4001", false));
    assert!(reach("/ip6/2a01:4f8::1/udp/4001/quic-v1", false));
    for lan in [
        "/ip4/192.168.1.5/tcp/4001",
        "/ip4/10.0.0.2/tcp/4001",
        "/ip4/100.64.1.1/tcp/4001",
        "/ip4/198.18.0.11/tcp/4001",
        "/ip6/fd00::1/tcp/4001",
    ] {
        assert!(!reach(lan, false), "{lan}");
        assert!(reach(lan, true), "{lan} counts in a lab");
    }
    for never in [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip4/169.254.1.1/tcp/4001",
        "/ip6/::1/tcp/4001",
        "/ip6/fe80::1/tcp/4001",
    ] {
        assert!(!reach(never, true), "{never}");
    }
    let circuit = format!("{}", circuit(1, 2));
    assert!(!reach(&circuit, true));
}

#[test]
fn private_then_unknown_stays_private() {
    let (s, _) = run(
        discovering(),
        [Event::NatStatusChanged {
            status: NatStatus::Private,
        }],
    );
    let (s, _) = s.step(Event::NatStatusChanged {
        status: NatStatus::Unknown,
    });
    assert!(s.acts_private());
}

#[test]
fn a_failed_punch_dials_where_the_peer_listens_once() {
    let (s, _) = run(discovering(), [connected(5, 9, PathKind::Relayed)]);
    // The punch fails before identify said where the peer listens: nothing to dial yet.
    let (s, cmds) = s.step(Event::HolePunchFailed {
        peer: peer(5),
        reason: "no addresses".into(),
    });
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::Dial { .. })),
        "{cmds:?}"
    );
    let identified = Event::PeerIdentified {
        peer: peer(5),
        // A loopback address is the peer's to claim, not ours to dial.
        listen_addrs: vec![
            addr(5),
            circuit(BOOTSTRAP, 5),
            "/ip4/127.0.0.1/tcp/22".parse().expect("addr"),
        ],
        relay_capable: false,
        kademlia: false,
    };
    let (s, cmds) = s.step(identified.clone());
    assert!(
        cmds.contains(&Command::Dial {
            peer: peer(5),
            addrs: vec![addr(5)],
            reason: DialReason::AfterPunch,
        }),
        "{cmds:?}"
    );
    // Once while relayed.
    let (_, cmds) = s.step(identified);
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::Dial { .. })),
        "{cmds:?}"
    );
}

#[test]
fn the_node_serves_as_public_exactly_while_its_nat_status_is_public() {
    let (s, cmds) = S::new(config()).step(Event::Started);
    assert_eq!(cmds[0], Command::SetPublic { public: false });
    let public = Event::NatStatusChanged {
        status: NatStatus::Public,
    };
    let (s, cmds) = s.step(public.clone());
    assert!(cmds.contains(&Command::SetPublic { public: true }));
    let (s, cmds) = s.step(public);
    assert!(cmds.is_empty(), "no change, no command: {cmds:?}");
    let (s, cmds) = s.step(Event::NatStatusChanged {
        status: NatStatus::Unknown,
    });
    assert!(cmds.contains(&Command::SetPublic { public: false }));
    let (_, cmds) = s.step(Event::NatStatusChanged {
        status: NatStatus::Private,
    });
    assert!(
        !cmds.iter().any(|c| matches!(c, Command::SetPublic { .. })),
        "{cmds:?}"
    );
    // An override decides from the start.
    let overridden = Config {
        nat_override: Some(NatStatus::Public),
        ..config()
    };
    let (_, cmds) = S::new(overridden).step(Event::Started);
    assert_eq!(cmds[0], Command::SetPublic { public: true });
}

#[test]
fn participates_after_kademlia_and_autonat_and_publishes() {
    let (s, cmds) = run(
        discovering(),
        [
            Event::KademliaBootstrapSucceeded,
            Event::NatStatusChanged {
                status: NatStatus::Public,
            },
        ],
    );
    assert_eq!(s.phase(), Phase::Participating);
    assert!(cmds.contains(&Command::PublishServices));
    assert!(cmds.contains(&Command::StartTimer {
        timer: Timer::Republish,
        after: Duration::from_secs(300)
    }));
    // The republish timer publishes again and re-arms itself.
    let (_, cmds) = s.step(Event::TimerFired(Timer::Republish));
    assert_eq!(cmds[0], Command::PublishServices);
    assert!(matches!(
        cmds[1],
        Command::StartTimer {
            timer: Timer::Republish,
            ..
        }
    ));
}

#[test]
fn identifying_a_dht_server_bootstraps_kademlia() {
    let cfg = Config::default();
    let (s, _) = run(
        S::new(cfg),
        [Event::Started, connected(5, 1, PathKind::Direct)],
    );
    let (s, cmds) = s.step(Event::PeerIdentified {
        peer: peer(5),
        listen_addrs: vec![addr(5)],
        relay_capable: false,
        kademlia: true,
    });
    assert!(cmds.contains(&Command::KademliaBootstrap));
    // Only once per round.
    let (_, cmds) = s.step(Event::PeerIdentified {
        peer: peer(5),
        listen_addrs: vec![addr(5)],
        relay_capable: false,
        kademlia: true,
    });
    assert!(!cmds.contains(&Command::KademliaBootstrap));
}

#[test]
fn kademlia_failure_is_retried_on_the_next_bootstrap_connection() {
    let (s, _) = discovering().step(Event::KademliaBootstrapFailed);
    let (_, cmds) = s.step(connected(BOOTSTRAP, 2, PathKind::Direct));
    assert_eq!(cmds, vec![Command::KademliaBootstrap]);
}

#[test]
fn private_reserves_on_a_relay_and_public_releases_it() {
    // Unknown, with a relay known: the slot is asked for already.
    let s = discovering();
    assert_eq!(
        s.relay(),
        &RelayState::Requesting {
            relay: peer(BOOTSTRAP)
        }
    );
    // AutoNAT says private: nothing more to ask.
    let (s, cmds) = s.step(Event::NatStatusChanged {
        status: NatStatus::Private,
    });
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::RequestRelayReservation { .. })),
        "{cmds:?}"
    );
    let (s, _) = s.step(Event::RelayReservationAccepted {
        relay: peer(BOOTSTRAP),
        addr: circuit(BOOTSTRAP, 5),
    });
    assert!(matches!(s.relay(), RelayState::Reserved { .. }));
    let (s, cmds) = s.step(Event::NatStatusChanged {
        status: NatStatus::Public,
    });
    assert_eq!(s.relay(), &RelayState::Idle);
    assert!(cmds.contains(&Command::ReleaseRelayReservation {
        relay: peer(BOOTSTRAP)
    }));
}

#[test]
fn an_unknown_node_asks_again_after_a_refused_reservation() {
    let (s, _) = discovering().step(Event::RelayReservationFailed {
        relay: peer(BOOTSTRAP),
        reason: "refused".into(),
    });
    let (_, cmds) = s.step(Event::TimerFired(Timer::RelayRetry));
    assert!(
        cmds.contains(&Command::RequestRelayReservation {
            relay: peer(BOOTSTRAP),
            addrs: vec![addr(BOOTSTRAP)]
        }),
        "{cmds:?}"
    );
}

#[test]
fn any_public_peer_can_be_the_relay_not_only_bootstrap_peers() {
    let cfg = Config {
        bootstrap: vec![],
        nat_override: Some(NatStatus::Private),
        ..Config::default()
    };
    let (_, cmds) = run(
        S::new(cfg),
        [
            Event::Started,
            connected(3, 1, PathKind::Direct),
            identified_relay(3),
        ],
    );
    assert!(cmds.contains(&Command::RequestRelayReservation {
        relay: peer(3),
        addrs: vec![addr(3)]
    }));
}

#[test]
fn a_peer_without_hop_is_never_asked_for_a_reservation() {
    let cfg = Config {
        nat_override: Some(NatStatus::Private),
        ..config()
    };
    let (s, cmds) = run(
        S::new(cfg),
        [
            Event::Started,
            connected(BOOTSTRAP, 1, PathKind::Direct),
            Event::PeerIdentified {
                peer: peer(BOOTSTRAP),
                listen_addrs: vec![addr(BOOTSTRAP)],
                relay_capable: false,
                kademlia: true,
            },
        ],
    );
    assert_eq!(s.relay(), &RelayState::Idle);
    assert!(
        !cmds
            .iter()
            .any(|c| matches!(c, Command::RequestRelayReservation { .. }))
    );
}

#[test]
fn refused_reservation_is_retried_with_backoff_preferring_other_relays() {
    let (s, _) = run(
        discovering(),
        [
            connected(2, 2, PathKind::Direct),
            identified_relay(2),
            Event::NatStatusChanged {
                status: NatStatus::Private,
            },
        ],
    );
    assert_eq!(
        s.relay(),
        &RelayState::Requesting {
            relay: peer(BOOTSTRAP)
        }
    );
    // Refused: peer 2 has never failed, so it is asked at once; a retry timer is armed.
    let (s, cmds) = s.step(Event::RelayReservationFailed {
        relay: peer(BOOTSTRAP),
        reason: "Reservation(Unsupported)".into(),
    });
    assert_eq!(
        cmds,
        vec![
            Command::StartTimer {
                timer: Timer::RelayRetry,
                after: Duration::from_secs(1)
            },
            Command::RequestRelayReservation {
                relay: peer(2),
                addrs: vec![addr(2)]
            },
            Command::StartTimer {
                timer: Timer::ReservationTimeout { generation: 2 },
                after: Duration::from_secs(20)
            },
        ]
    );
    // Refused too: both have failed once; wait for the timer.
    let (s, cmds) = s.step(Event::RelayReservationFailed {
        relay: peer(2),
        reason: "refused".into(),
    });
    assert!(cmds.is_empty(), "{cmds:?}");
    assert_eq!(s.relay(), &RelayState::Idle);
    // The timer retries the bootstrap peer (ties broken in its favour).
    let (s, cmds) = s.step(Event::TimerFired(Timer::RelayRetry));
    assert_eq!(
        cmds[0],
        Command::RequestRelayReservation {
            relay: peer(BOOTSTRAP),
            addrs: vec![addr(BOOTSTRAP)]
        }
    );
    // A third failure doubles the delay again.
    let (_, cmds) = s.step(Event::RelayReservationFailed {
        relay: peer(BOOTSTRAP),
        reason: "refused".into(),
    });
    assert_eq!(
        cmds,
        vec![Command::StartTimer {
            timer: Timer::RelayRetry,
            after: Duration::from_secs(4)
        }]
    );
}

#[test]
fn unanswered_reservation_times_out_and_is_retried() {
    let (s, _) = discovering().step(Event::NatStatusChanged {
        status: NatStatus::Private,
    });
    // A stale timer from an older request does nothing.
    let (s, cmds) = s.step(Event::TimerFired(Timer::ReservationTimeout {
        generation: 0,
    }));
    assert!(cmds.is_empty());
    let (s, cmds) = s.step(Event::TimerFired(Timer::ReservationTimeout {
        generation: 1,
    }));
    assert_eq!(s.relay(), &RelayState::Idle);
    assert_eq!(
        cmds,
        vec![
            Command::ReleaseRelayReservation {
                relay: peer(BOOTSTRAP)
            },
            Command::StartTimer {
                timer: Timer::RelayRetry,
                after: Duration::from_secs(1)
            },
        ]
    );
}

#[test]
fn lost_reservation_is_requested_again_and_republished() {
    let (s, _) = run(
        participating(),
        [Event::NatStatusChanged {
            status: NatStatus::Private,
        }],
    );
    let (s, _) = s.step(Event::RelayReservationAccepted {
        relay: peer(BOOTSTRAP),
        addr: circuit(BOOTSTRAP, 5),
    });
    let (s, cmds) = s.step(Event::RelayReservationLost {
        relay: peer(BOOTSTRAP),
    });
    assert_eq!(s.relay(), &RelayState::Idle);
    assert!(cmds.contains(&Command::PublishServices));
    assert!(cmds.contains(&Command::StartTimer {
        timer: Timer::RelayRetry,
        after: Duration::from_secs(1)
    }));
    let (s, _) = s.step(Event::TimerFired(Timer::RelayRetry));
    assert!(matches!(s.relay(), RelayState::Requesting { .. }));
}

#[test]
fn unwanted_reservation_is_released() {
    let (_, cmds) = participating().step(Event::RelayReservationAccepted {
        relay: peer(BOOTSTRAP),
        addr: circuit(BOOTSTRAP, 5),
    });
    assert_eq!(
        cmds,
        vec![Command::ReleaseRelayReservation {
            relay: peer(BOOTSTRAP)
        }]
    );
}

#[test]
fn nat_override_ignores_autonat() {
    let cfg = Config {
        nat_override: Some(NatStatus::Private),
        ..config()
    };
    let (s, _) = run(
        S::new(cfg),
        [
            Event::Started,
            Event::NatStatusChanged {
                status: NatStatus::Public,
            },
        ],
    );
    assert_eq!(s.nat(), NatStatus::Private);
}

#[test]
fn relayed_connection_to_a_public_peer_is_reversed_once() {
    let (s, cmds) = run(
        discovering(),
        [connected(4, 9, PathKind::Relayed), identified_relay(4)],
    );
    let reversal = Command::Dial {
        peer: peer(4),
        addrs: vec![addr(4)],
        reason: DialReason::Reversal,
    };
    assert_eq!(cmds.iter().filter(|c| **c == reversal).count(), 1);
    // A second identify (e.g. a push) does not dial again.
    let (s, cmds) = s.step(identified_relay(4));
    assert!(!cmds.contains(&reversal));
    // Once direct, nothing to reverse.
    let (s, _) = s.step(connected(4, 10, PathKind::Direct));
    assert_eq!(
        s.select_path(&peer(4), false),
        PathSelection::Use {
            connection: 10,
            kind: PathKind::Direct
        }
    );
}

#[test]
fn relayed_connection_to_a_private_peer_is_not_reversed() {
    let (_, cmds) = run(
        discovering(),
        [
            connected(4, 9, PathKind::Relayed),
            Event::PeerIdentified {
                peer: peer(4),
                listen_addrs: vec![addr(4)],
                relay_capable: false,
                kademlia: false,
            },
        ],
    );
    assert!(!cmds.iter().any(|c| matches!(c, Command::Dial { .. })));
}

#[test]
fn mdns_discovery_dials_and_bootstraps_kademlia() {
    let (s, _) = S::new(Config::default()).step(Event::Started);
    let (s, cmds) = s.step(Event::MdnsDiscovered {
        peers: vec![(peer(6), addr(6)), (peer(6), addr(7))],
    });
    assert!(cmds.contains(&Command::Dial {
        peer: peer(6),
        addrs: vec![addr(6), addr(7)],
        reason: DialReason::Mdns
    }));
    assert!(cmds.contains(&Command::KademliaBootstrap));
    assert_eq!(s.known_addrs(&peer(6)), &[addr(6), addr(7)]);
    let (s, _) = s.step(Event::MdnsExpired {
        peers: vec![(peer(6), addr(6))],
    });
    assert_eq!(s.known_addrs(&peer(6)), &[addr(7)]);
}

#[test]
fn losing_every_connection_redials_bootstrap_with_backoff() {
    let (s, cmds) = participating().step(Event::ConnectionClosed {
        peer: peer(BOOTSTRAP),
        connection: 1,
    });
    assert_eq!(s.phase(), Phase::Discovering);
    assert!(cmds.contains(&Command::StartTimer {
        timer: Timer::Redial,
        after: Duration::from_secs(1)
    }));
    let (s, cmds) = s.step(Event::TimerFired(Timer::Redial));
    assert_eq!(
        cmds,
        vec![
            Command::Dial {
                peer: peer(BOOTSTRAP),
                addrs: vec![addr(BOOTSTRAP)],
                reason: DialReason::Redial
            },
            Command::StartTimer {
                timer: Timer::Redial,
                after: Duration::from_secs(2)
            }
        ]
    );
    // Reconnected: the pending timer does nothing.
    let (s, _) = s.step(connected(BOOTSTRAP, 3, PathKind::Direct));
    let (_, cmds) = s.step(Event::TimerFired(Timer::Redial));
    assert!(cmds.is_empty());
}

#[test]
fn stale_discovery_timeout_is_ignored() {
    // Round 1 participates early; losing the peer starts round 2; round 1's timer is stale.
    let (s, _) = participating().step(Event::ConnectionClosed {
        peer: peer(BOOTSTRAP),
        connection: 1,
    });
    let (s, _) = s.step(Event::TimerFired(Timer::DiscoveryTimeout { generation: 1 }));
    assert_eq!(s.phase(), Phase::Discovering);
    let (s, _) = s.step(Event::TimerFired(Timer::DiscoveryTimeout { generation: 2 }));
    assert_eq!(s.phase(), Phase::Participating);
}

#[test]
fn hole_punch_failure_releases_waiting_streams_to_the_relay() {
    let (s, _) = discovering().step(connected(4, 9, PathKind::Relayed));
    // Our circuit, and the relay grants it a long limit.
    let (s, _) = s.step(Event::CircuitLimit {
        peer: peer(4),
        connection: 9,
        limit: crate::CircuitLimit::NONE,
        outbound: true,
    });
    assert_eq!(s.select_path(&peer(4), false), PathSelection::WaitForDirect);
    let (s, _) = s.step(Event::HolePunchFailed {
        peer: peer(4),
        reason: "AttemptsExceeded(3)".into(),
    });
    assert_eq!(
        s.select_path(&peer(4), false),
        PathSelection::Use {
            connection: 9,
            kind: PathKind::Relayed
        }
    );
}

#[test]
fn hole_punch_failure_refuses_streams_a_short_circuit_would_cut() {
    let (s, _) = discovering().step(connected(4, 9, PathKind::Relayed));
    let (s, _) = s.step(Event::CircuitLimit {
        peer: peer(4),
        connection: 9,
        limit: crate::CircuitLimit {
            duration: Some(std::time::Duration::from_secs(120)),
            bytes: Some(128 << 10),
        },
        outbound: true,
    });
    assert_eq!(s.select_path(&peer(4), true), PathSelection::WaitForDirect);
    let (s, _) = s.step(Event::HolePunchFailed {
        peer: peer(4),
        reason: "AttemptsExceeded(3)".into(),
    });
    assert_eq!(s.select_path(&peer(4), false), PathSelection::WaitForDirect);
    assert_eq!(
        s.select_path(&peer(4), true),
        PathSelection::ShortCircuit { connection: 9 }
    );
    assert_eq!(s.only_short_circuit(&peer(4)), Some(9));
}

// ---------------------------------------------------------------------------------------------
// Properties.

fn nat_status() -> impl Strategy<Value = NatStatus> {
    prop_oneof![
        Just(NatStatus::Unknown),
        Just(NatStatus::Public),
        Just(NatStatus::Private)
    ]
}

fn kind() -> impl Strategy<Value = PathKind> {
    prop_oneof![Just(PathKind::Direct), Just(PathKind::Relayed)]
}

fn timer() -> impl Strategy<Value = Timer> {
    prop_oneof![
        (0u32..4).prop_map(|generation| Timer::DiscoveryTimeout { generation }),
        Just(Timer::RelayRetry),
        (0u32..4).prop_map(|generation| Timer::ReservationTimeout { generation }),
        Just(Timer::Redial),
        Just(Timer::Republish),
    ]
}

/// Any event over 4 peers and 8 connection ids, except `Shutdown`.
fn event() -> impl Strategy<Value = E> {
    let p = 0u8..4;
    prop_oneof![
        Just(Event::Started),
        (0u8..8).prop_map(|i| Event::Listening { addr: addr(i) }),
        (p.clone(), 0u8..8, kind()).prop_map(|(p, c, k)| connected(p, c, k)),
        (p.clone(), 0u8..8).prop_map(|(p, c)| Event::ConnectionClosed {
            peer: peer(p),
            connection: c
        }),
        Just(Event::KademliaBootstrapSucceeded),
        Just(Event::KademliaBootstrapFailed),
        (p.clone(), 0u8..8).prop_map(|(p, a)| Event::MdnsDiscovered {
            peers: vec![(peer(p), addr(a))]
        }),
        (p.clone(), 0u8..8).prop_map(|(p, a)| Event::MdnsExpired {
            peers: vec![(peer(p), addr(a))]
        }),
        (p.clone(), any::<bool>(), any::<bool>()).prop_map(|(p, relay, kad)| {
            Event::PeerIdentified {
                peer: peer(p),
                listen_addrs: vec![addr(p)],
                relay_capable: relay,
                kademlia: kad,
            }
        }),
        nat_status().prop_map(|status| Event::NatStatusChanged { status }),
        (p.clone(), 0u8..4).prop_map(|(r, me)| Event::RelayReservationAccepted {
            relay: peer(r),
            addr: circuit(r, me)
        }),
        p.clone().prop_map(|r| Event::RelayReservationFailed {
            relay: peer(r),
            reason: "refused".into()
        }),
        p.clone()
            .prop_map(|r| Event::RelayReservationLost { relay: peer(r) }),
        p.clone()
            .prop_map(|x| Event::HolePunchSucceeded { peer: peer(x) }),
        p.prop_map(|x| Event::HolePunchFailed {
            peer: peer(x),
            reason: "failed".into()
        }),
        timer().prop_map(Event::TimerFired),
    ]
}

fn events(max: usize) -> impl Strategy<Value = Vec<E>> {
    prop::collection::vec(event(), 0..max)
}

fn start() -> S {
    S::new(config()).step(Event::Started).0
}

fn sorted(cmds: &[Command]) -> Vec<String> {
    let mut v: Vec<String> = cmds.iter().map(|c| format!("{c:?}")).collect();
    v.sort();
    v
}

proptest! {
    #[test]
    fn shutdown_absorbs_everything(prefix in events(40), suffix in events(40)) {
        let (s, _) = run(start(), prefix);
        let (s, cmds) = s.step(Event::Shutdown);
        prop_assert_eq!(s.phase(), Phase::ShuttingDown);
        prop_assert_eq!(cmds, vec![Command::Shutdown]);
        let mut s = s;
        for e in suffix.into_iter().chain([Event::Shutdown]) {
            let before = s.clone();
            let (next, cmds) = s.step(e);
            prop_assert!(cmds.is_empty());
            prop_assert_eq!(&next, &before);
            s = next;
        }
    }

    #[test]
    // AutoNAT "completing" means a verdict: Public or Private. (A flip back to Unknown after
    // Participating is not an ordering question: participation is not withdrawn.)
    fn kademlia_then_autonat_equals_autonat_then_kademlia(
        prefix in events(40),
        status in prop_oneof![Just(NatStatus::Public), Just(NatStatus::Private)],
    ) {
        let (s, _) = run(start(), prefix);
        let nat = Event::NatStatusChanged { status };
        let (a, cmds_a) = run(s.clone(), [Event::KademliaBootstrapSucceeded, nat.clone()]);
        let (b, cmds_b) = run(s, [nat, Event::KademliaBootstrapSucceeded]);
        prop_assert_eq!(&a, &b);
        // Publishing twice (with a relay slot held while unknown, then again without it once
        // public) ends where publishing once does.
        let once = |cmds: &[Command]| {
            let mut v = sorted(cmds);
            v.dedup();
            v
        };
        prop_assert_eq!(once(&cmds_a), once(&cmds_b));
    }

    #[test]
    fn mdns_touches_no_other_dimension(prefix in events(40), p in 0u8..4, a in 0u8..8) {
        let (s, _) = run(start(), prefix);
        for e in [
            Event::MdnsDiscovered { peers: vec![(peer(p), addr(a))] },
            Event::MdnsExpired { peers: vec![(peer(p), addr(a))] },
        ] {
            let (next, _) = s.clone().step(e);
            prop_assert_eq!(next.phase(), s.phase());
            prop_assert_eq!(next.nat(), s.nat());
            prop_assert_eq!(next.relay(), s.relay());
        }
    }

    #[test]
    fn nat_changes_touch_no_discovery_state(prefix in events(40), status in nat_status()) {
        let (s, _) = run(start(), prefix);
        let (next, _) = s.clone().step(Event::NatStatusChanged { status });
        prop_assert_eq!(next.kademlia, s.kademlia);
        prop_assert_eq!(&next.connections, &s.connections);
        prop_assert_eq!(&next.peers, &s.peers);
        // The phase can only move forward to Participating.
        prop_assert!(
            next.phase() == s.phase()
                || (s.phase() == Phase::Discovering && next.phase() == Phase::Participating)
        );
    }

    #[test]
    fn connections_never_change_nat_status(prefix in events(40), p in 0u8..4, c in 0u8..8, k in kind()) {
        let (s, _) = run(start(), prefix);
        let (a, _) = s.clone().step(connected(p, c, k));
        prop_assert_eq!(a.nat(), s.nat());
        let (b, _) = s.clone().step(Event::ConnectionClosed { peer: peer(p), connection: c });
        prop_assert_eq!(b.nat(), s.nat());
    }

    #[test]
    fn losing_the_last_peer_regresses_to_discovering(prefix in events(40)) {
        let (s, _) = run(participating(), prefix);
        prop_assume!(s.phase() == Phase::Participating && s.connected_peers() > 0);
        let open: Vec<(PeerId, u8)> = s
            .connections
            .iter()
            .flat_map(|(p, c)| c.ids().map(move |id| (*p, id)))
            .collect();
        let (s, _) = run(
            s,
            open.into_iter().map(|(peer, connection)| Event::ConnectionClosed { peer, connection }),
        );
        prop_assert_eq!(s.phase(), Phase::Discovering);
        prop_assert_eq!(s.connected_peers(), 0);
    }

    #[test]
    fn discovery_timeout_forces_participating(prefix in events(40)) {
        let (s, _) = run(start(), prefix);
        prop_assume!(matches!(s.phase(), Phase::Initializing | Phase::Discovering));
        let generation = s.discovery_generation;
        let (s, cmds) = s.step(Event::TimerFired(Timer::DiscoveryTimeout { generation }));
        prop_assert_eq!(s.phase(), Phase::Participating);
        prop_assert!(cmds.contains(&Command::PublishServices));
    }

    #[test]
    fn invariants_hold_after_any_sequence(seq in events(80)) {
        let mut s = start();
        for e in seq {
            let (next, cmds) = s.step(e);
            s = next;
            // Never a reservation while public, never an empty dial.
            prop_assert!(s.nat() != NatStatus::Public || *s.relay() == RelayState::Idle);
            for c in &cmds {
                if let Command::Dial { addrs, .. } | Command::RequestRelayReservation { addrs, .. } = c {
                    prop_assert!(!addrs.is_empty());
                    let mdns = matches!(c, Command::Dial { reason: DialReason::Mdns, .. });
                    prop_assert!(mdns || addrs.iter().all(|a| !is_relayed(a)));
                }
            }
            prop_assert!(s.peers.len() <= MAX_KNOWN_PEERS);
            prop_assert!(s.peers.values().all(|p| p.addrs.len() <= MAX_ADDRS_PER_PEER));
        }
    }
}

#[test]
fn a_mapped_port_makes_a_private_node_public_and_republishes() {
    // Private, holding a slot on the bootstrap relay, participating.
    let (s, _) = run(
        discovering(),
        [
            Event::KademliaBootstrapSucceeded,
            Event::NatStatusChanged {
                status: NatStatus::Private,
            },
            Event::RelayReservationAccepted {
                relay: peer(BOOTSTRAP),
                addr: circuit(BOOTSTRAP, 7),
            },
        ],
    );
    assert_eq!(s.phase(), Phase::Participating);
    let (s, cmds) = s.step(Event::PortMapped { addr: addr(7) });
    assert_eq!(s.nat(), NatStatus::Public);
    assert!(cmds.contains(&Command::SetPublic { public: true }));
    assert!(cmds.contains(&Command::ReleaseRelayReservation {
        relay: peer(BOOTSTRAP)
    }));
    assert_eq!(
        cmds.iter()
            .filter(|c| **c == Command::PublishServices)
            .count(),
        1
    );
    // A second mapping (the QUIC port) republishes with both addresses, and AutoNAT can still
    // overrule the router.
    let (s, cmds) = s.step(Event::PortMapped { addr: addr(8) });
    assert_eq!(cmds, vec![Command::PublishServices]);
    let (s, _) = s.step(Event::NatStatusChanged {
        status: NatStatus::Private,
    });
    assert_eq!(s.nat(), NatStatus::Private);
}

#[test]
fn a_mapped_port_does_not_overrule_the_operator() {
    let s = S::new(Config {
        nat_override: Some(NatStatus::Private),
        ..config()
    });
    let (s, _) = s.step(Event::Started);
    let (s, cmds) = s.step(Event::PortMapped { addr: addr(7) });
    assert_eq!(s.nat(), NatStatus::Private);
    assert!(!cmds.contains(&Command::SetPublic { public: true }));
}
