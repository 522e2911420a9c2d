//! Circuit dials that wait for the connection to their relay.
//!
//! Dialling `<RELAY>/p2p-circuit/p2p/<PEER>` while not connected to the relay makes libp2p's
//! relay client dial the relay itself, with the default peer condition
//! (`DisconnectedAndNotDialing`). If the relay is being dialled already (a `--bootstrap` dial,
//! or another behaviour's, started a moment before), the swarm refuses that dial, the relay
//! client drops the circuit request, and the circuit dial fails at once with "Response from
//! behaviour was canceled: oneshot canceled" (libp2p-relay 0.22, `priv_client.rs`). So the
//! driver never hands the swarm a circuit address whose relay it is not connected to: it dials
//! the relay (or lets the dial in flight finish), parks the circuit dial here, and resumes it
//! when the relay connection opens, or fails it with the relay's own error.
//!
//! Bounded: at most [`MAX_PARKED`] dials wait at once; each waits at most until its caller's
//! deadline.

use std::collections::HashMap;

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol, swarm::ConnectionId};
use tokio::time::Instant;

/// Dials parked at once, across all relays.
pub(super) const MAX_PARKED: usize = 256;

/// What waits for a relay connection.
#[derive(Debug)]
pub(super) enum Parked<R> {
    /// An exact dial of `peer` at the circuit address `addr` ([`super::NodeHandle::dial_addr`]).
    Exact {
        peer: PeerId,
        addr: Multiaddr,
        reply: R,
        give_up: Instant,
    },
    /// Reaching `peer` (tunnels, gRPC): try again once the relay is connected.
    Reach { peer: PeerId },
}

/// Dials waiting for their relay's connection, by relay.
#[derive(Debug)]
pub(super) struct RelayGate<R> {
    parked: HashMap<PeerId, Waiting<R>>,
    /// Our own dials of relays, so that their failure fails what waits for them.
    relay_dials: HashMap<ConnectionId, PeerId>,
}

#[derive(Debug)]
struct Waiting<R> {
    /// The relay's address (the circuit address up to `/p2p-circuit`).
    addr: Multiaddr,
    dials: Vec<Parked<R>>,
}

impl<R> Default for RelayGate<R> {
    fn default() -> Self {
        Self {
            parked: HashMap::new(),
            relay_dials: HashMap::new(),
        }
    }
}

impl<R> RelayGate<R> {
    /// Parks `dial` until `relay` (reached at `relay_addr`) is connected. Gives it back when
    /// too many wait already. A `Reach` for a peer already waiting on this relay is merged.
    pub(super) fn park(
        &mut self,
        relay: PeerId,
        relay_addr: Multiaddr,
        dial: Parked<R>,
    ) -> Result<(), Box<Parked<R>>> {
        if self.len() >= MAX_PARKED {
            return Err(Box::new(dial));
        }
        let waiting = self.parked.entry(relay).or_insert_with(|| Waiting {
            addr: relay_addr,
            dials: Vec::new(),
        });
        if let Parked::Reach { peer } = &dial
            && waiting
                .dials
                .iter()
                .any(|d| matches!(d, Parked::Reach { peer: p } if p == peer))
        {
            return Ok(());
        }
        waiting.dials.push(dial);
        Ok(())
    }

    /// Dials waiting at once.
    pub(super) fn len(&self) -> usize {
        self.parked.values().map(|w| w.dials.len()).sum()
    }

    /// Whether anything waits for `relay`.
    pub(super) fn waits_for(&self, relay: &PeerId) -> bool {
        self.parked.contains_key(relay)
    }

    /// The address to dial `relay` at, while something waits for it.
    pub(super) fn relay_addr(&self, relay: &PeerId) -> Option<Multiaddr> {
        self.parked.get(relay).map(|w| w.addr.clone())
    }

    /// Notes our own dial of `relay`.
    pub(super) fn dialing(&mut self, connection: ConnectionId, relay: PeerId) {
        self.relay_dials.insert(connection, relay);
    }

    /// Our dial `failed` of a relay goes on as dial `again` (with another security protocol).
    pub(super) fn redialled(&mut self, failed: ConnectionId, again: ConnectionId) {
        if let Some(relay) = self.relay_dials.remove(&failed) {
            self.relay_dials.insert(again, relay);
        }
    }

    /// `relay` is connected: what waited for it, to resume.
    pub(super) fn connected(&mut self, relay: &PeerId) -> Vec<Parked<R>> {
        self.relay_dials.retain(|_, r| r != relay);
        self.parked
            .remove(relay)
            .map(|w| w.dials)
            .unwrap_or_default()
    }

    /// A dial of `relay` failed. `Some` (what waited, to fail) when it was our dial; `None`
    /// when it was someone else's (ours may still come: dial again).
    pub(super) fn dial_failed(
        &mut self,
        relay: &PeerId,
        connection: ConnectionId,
    ) -> Option<Vec<Parked<R>>> {
        self.relay_dials.remove(&connection)?;
        Some(
            self.parked
                .remove(relay)
                .map(|w| w.dials)
                .unwrap_or_default(),
        )
    }

    /// Takes every relay's waiting dials that `expired` says are due, and forgets callers that
    /// went away.
    pub(super) fn expire(
        &mut self,
        now: Instant,
        mut gone: impl FnMut(&R) -> bool,
    ) -> Vec<Parked<R>> {
        let mut due = Vec::new();
        for waiting in self.parked.values_mut() {
            let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut waiting.dials)
                .into_iter()
                .partition(|d| match d {
                    Parked::Exact { give_up, reply, .. } => *give_up <= now || gone(reply),
                    Parked::Reach { .. } => false,
                });
            waiting.dials = kept;
            due.extend(expired);
        }
        self.parked.retain(|_, w| !w.dials.is_empty());
        due
    }

    /// The earliest deadline of a parked exact dial.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.parked
            .values()
            .flat_map(|w| &w.dials)
            .filter_map(|d| match d {
                Parked::Exact { give_up, .. } => Some(*give_up),
                Parked::Reach { .. } => None,
            })
            .min()
    }
}

/// The relay of a circuit address and the address to dial it at (everything before
/// `/p2p-circuit`); `None` for a direct address.
pub(super) fn relay_part(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut relay_addr = Multiaddr::empty();
    let mut relay = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::P2pCircuit => return relay.map(|r| (r, relay_addr)),
            Protocol::P2p(peer) => {
                relay = Some(peer);
                relay_addr.push(protocol);
            }
            other => relay_addr.push(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_part_of_a_circuit_address() {
        let relay = PeerId::random();
        let target = PeerId::random();
        let addr: Multiaddr =
            format!("/ip4/198.51.100.1/tcp/4011/p2p/{relay}/p2p-circuit/p2p/{target}")
                .parse()
                .expect("addr");
        let (r, a) = relay_part(&addr).expect("a circuit");
        assert_eq!(r, relay);
        assert_eq!(
            a.to_string(),
            format!("/ip4/198.51.100.1/tcp/4011/p2p/{relay}")
        );
        let direct: Multiaddr = format!("/ip4/198.51.100.1/tcp/4011/p2p/{target}")
            .parse()
            .expect("addr");
        assert_eq!(relay_part(&direct), None);
    }

    #[test]
    fn parks_until_connected_or_our_dial_fails_and_is_bounded() {
        let mut gate: RelayGate<u32> = RelayGate::default();
        let (relay, peer) = (PeerId::random(), PeerId::random());
        let addr: Multiaddr = "/ip4/198.51.100.1/tcp/4011".parse().expect("addr");
        let give_up = Instant::now() + std::time::Duration::from_secs(30);
        gate.park(
            relay,
            addr.clone(),
            Parked::Exact {
                peer,
                addr: addr.clone(),
                reply: 1,
                give_up,
            },
        )
        .expect("room");
        gate.park(relay, addr.clone(), Parked::Reach { peer })
            .expect("room");
        gate.park(relay, addr.clone(), Parked::Reach { peer })
            .expect("merged");
        assert_eq!(gate.len(), 2);
        // Someone else's dial of the relay failed: ours may still come.
        assert!(
            gate.dial_failed(&relay, ConnectionId::new_unchecked(9))
                .is_none()
        );
        assert!(gate.waits_for(&relay));
        gate.dialing(ConnectionId::new_unchecked(10), relay);
        assert_eq!(gate.connected(&relay).len(), 2);
        assert!(!gate.waits_for(&relay));

        gate.park(relay, addr.clone(), Parked::Reach { peer })
            .expect("room");
        gate.dialing(ConnectionId::new_unchecked(11), relay);
        let failed = gate
            .dial_failed(&relay, ConnectionId::new_unchecked(11))
            .expect("our dial");
        assert_eq!(failed.len(), 1);

        for n in 0..MAX_PARKED {
            gate.park(
                PeerId::random(),
                addr.clone(),
                Parked::Exact {
                    peer,
                    addr: addr.clone(),
                    reply: n as u32,
                    give_up,
                },
            )
            .expect("room");
        }
        assert!(gate.park(relay, addr, Parked::Reach { peer }).is_err());
        assert_eq!(gate.expire(give_up, |_| false).len(), MAX_PARKED);
        assert_eq!(gate.len(), 0);
    }
}
