//! Which relayed connection a relay's word on circuit limits belongs to.
//!
//! libp2p's relay client reports a circuit's limit when the circuit opens
//! (`OutboundCircuitEstablished { relay_peer_id, limit }` when we dialled through a relay,
//! `InboundCircuitEstablished { src_peer_id, limit }` when a peer reached us through ours), but
//! not the id of the connection that then runs over the circuit: the transport upgrades the
//! circuit (TLS, yamux) and the swarm reports that connection separately, usually a round trip
//! later. This module pairs the two, in whichever order they come: an outbound report with the
//! oldest unpaired outbound connection through the same relay, an inbound report with the
//! oldest unpaired inbound relayed connection from the same peer.
//!
//! Everything is bounded: reports wait at most [`REPORT_TTL`], at most [`MAX_PER_KEY`] per relay
//! or peer, for at most [`MAX_KEYS`] relays or peers.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use libp2p::{PeerId, swarm::ConnectionId};
use punchgate_machine::CircuitLimit;
use tokio::time::Instant;

/// A report or connection left unpaired this long is dropped.
const REPORT_TTL: Duration = Duration::from_secs(30);
/// Unpaired reports (or connections) kept per relay or peer.
const MAX_PER_KEY: usize = 8;
/// Relays or peers with unpaired reports (or connections) kept at once.
const MAX_KEYS: usize = 1024;

/// Pairs circuit limits with relayed connections (module docs).
#[derive(Debug, Default)]
pub(super) struct Circuits {
    /// Limits of outbound circuits not yet paired, by relay.
    outbound_limits: Pending<CircuitLimit>,
    /// Limits of inbound circuits not yet paired, by the peer that opened them.
    inbound_limits: Pending<CircuitLimit>,
    /// Outbound relayed connections whose limit is not known yet, by relay: (connection, peer).
    outbound_conns: Pending<(ConnectionId, PeerId)>,
    /// Inbound relayed connections whose limit is not known yet, by peer.
    inbound_conns: Pending<(ConnectionId, PeerId)>,
}

/// A paired circuit: this connection to this peer has this limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Paired {
    pub(super) peer: PeerId,
    pub(super) connection: ConnectionId,
    pub(super) limit: CircuitLimit,
}

impl Circuits {
    /// We opened a circuit through `relay`, limited by `limit`.
    pub(super) fn outbound_limit(
        &mut self,
        relay: PeerId,
        limit: CircuitLimit,
        now: Instant,
    ) -> Option<Paired> {
        match self.outbound_conns.take(&relay, now) {
            Some((connection, peer)) => Some(Paired {
                peer,
                connection,
                limit,
            }),
            None => {
                self.outbound_limits.push(relay, limit, now);
                None
            }
        }
    }

    /// `src` reached us through a circuit limited by `limit`.
    pub(super) fn inbound_limit(
        &mut self,
        src: PeerId,
        limit: CircuitLimit,
        now: Instant,
    ) -> Option<Paired> {
        match self.inbound_conns.take(&src, now) {
            Some((connection, peer)) => Some(Paired {
                peer,
                connection,
                limit,
            }),
            None => {
                self.inbound_limits.push(src, limit, now);
                None
            }
        }
    }

    /// A relayed connection to `peer` opened (through `relay`, when its address names it).
    /// Returns its limit when the relay's report came first.
    pub(super) fn connection(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        relay: Option<PeerId>,
        outbound: bool,
        now: Instant,
    ) -> Option<CircuitLimit> {
        if outbound {
            let relay = relay?;
            let limit = self.outbound_limits.take(&relay, now);
            if limit.is_none() {
                self.outbound_conns.push(relay, (connection, peer), now);
            }
            limit
        } else {
            let limit = self.inbound_limits.take(&peer, now);
            if limit.is_none() {
                self.inbound_conns.push(peer, (connection, peer), now);
            }
            limit
        }
    }

    /// A connection closed: it will never be paired.
    pub(super) fn closed(&mut self, connection: ConnectionId) {
        self.outbound_conns.remove_where(|(c, _)| *c == connection);
        self.inbound_conns.remove_where(|(c, _)| *c == connection);
    }
}

/// Items waiting to be paired, oldest first, by key.
#[derive(Debug)]
struct Pending<T> {
    by_key: HashMap<PeerId, VecDeque<(Instant, T)>>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
        }
    }
}

impl<T> Pending<T> {
    fn push(&mut self, key: PeerId, item: T, now: Instant) {
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_KEYS {
            self.expire(now);
            if self.by_key.len() >= MAX_KEYS {
                return;
            }
        }
        let queue = self.by_key.entry(key).or_default();
        if queue.len() >= MAX_PER_KEY {
            queue.pop_front();
        }
        queue.push_back((now, item));
    }

    /// The oldest item for `key` that has not expired.
    fn take(&mut self, key: &PeerId, now: Instant) -> Option<T> {
        let queue = self.by_key.get_mut(key)?;
        let mut found = None;
        while let Some((at, item)) = queue.pop_front() {
            if now.duration_since(at) < REPORT_TTL {
                found = Some(item);
                break;
            }
        }
        if queue.is_empty() {
            self.by_key.remove(key);
        }
        found
    }

    fn remove_where(&mut self, mut matches: impl FnMut(&T) -> bool) {
        self.by_key.retain(|_, queue| {
            queue.retain(|(_, item)| !matches(item));
            !queue.is_empty()
        });
    }

    fn expire(&mut self, now: Instant) {
        self.by_key.retain(|_, queue| {
            queue.retain(|(at, _)| now.duration_since(*at) < REPORT_TTL);
            !queue.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: CircuitLimit = CircuitLimit {
        duration: Some(Duration::from_secs(120)),
        bytes: Some(128 << 10),
    };

    #[test]
    fn pairs_in_either_order() {
        let mut circuits = Circuits::default();
        let (relay, peer) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let c1 = ConnectionId::new_unchecked(1);
        // Report first, then the connection.
        assert_eq!(circuits.outbound_limit(relay, SHORT, now), None);
        assert_eq!(
            circuits.connection(peer, c1, Some(relay), true, now),
            Some(SHORT)
        );
        // Connection first, then the report.
        let c2 = ConnectionId::new_unchecked(2);
        assert_eq!(circuits.connection(peer, c2, None, false, now), None);
        assert_eq!(
            circuits.inbound_limit(peer, CircuitLimit::NONE, now),
            Some(Paired {
                peer,
                connection: c2,
                limit: CircuitLimit::NONE
            })
        );
    }

    #[test]
    fn stale_reports_and_closed_connections_are_not_paired() {
        let mut circuits = Circuits::default();
        let (relay, peer) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        circuits.outbound_limit(relay, SHORT, now);
        let later = now + REPORT_TTL + Duration::from_secs(1);
        let c = ConnectionId::new_unchecked(3);
        assert_eq!(circuits.connection(peer, c, Some(relay), true, later), None);
        circuits.closed(c);
        assert_eq!(circuits.outbound_limit(relay, SHORT, later), None);
    }

    #[test]
    fn bounded() {
        let mut circuits = Circuits::default();
        let now = Instant::now();
        for _ in 0..(MAX_KEYS * 2) {
            circuits.inbound_limit(PeerId::random(), SHORT, now);
        }
        assert!(circuits.inbound_limits.by_key.len() <= MAX_KEYS);
        let relay = PeerId::random();
        for _ in 0..(MAX_PER_KEY * 2) {
            circuits.outbound_limit(relay, SHORT, now);
        }
        assert_eq!(circuits.outbound_limits.by_key[&relay].len(), MAX_PER_KEY);
    }
}
