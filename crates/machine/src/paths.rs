//! Which of a peer's connections a new stream should use.
//!
//! A peer behind NAT is first reached through a relay; DCUtR then tries to punch a direct
//! connection. A new stream should ride the direct connection when there is one, wait a bounded
//! time for the punch while it may still succeed, and fall back to the relayed connection when the
//! punch failed or the wait ran out. Streams never migrate: one opened on the relay stays there.
//!
//! A relay may grant a circuit only a few minutes or kilobytes ([`CircuitLimit::is_short`]:
//! libp2p's default, which Punchgate relays give circuits whose ends they do not trust). Such a
//! circuit is good for coordinating a hole punch and nothing else: a stream on it would be cut
//! off by the relay mid-transfer. So a relayed connection carries new streams only when its
//! limit is known to be long, and known from a source that tells the truth: the relay's answer
//! to *our* circuit request (an outbound circuit). The limit a relay announces to the
//! destination of a circuit need not be the one it enforces (libp2p-relay 0.22 announces the
//! destination's own allowance and enforces the source's), so an inbound circuit, or one whose
//! limit is not known yet, is never a fallback for streams we open. While no fallback exists new
//! streams wait for the punch, and when the punch fails they are refused with
//! [`PathSelection::ShortCircuit`], which the caller turns into an error that says which relay
//! would have to trust whom.

use std::time::Duration;

/// What a relay said it allows on one circuit: it closes the circuit after `duration`, or after
/// `bytes` bytes (libp2p's relay counts both directions together). `None` (or 0 bytes, which
/// libp2p's relay reads as no limit) means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CircuitLimit {
    /// The circuit is closed this long after it opened.
    pub duration: Option<Duration>,
    /// The circuit is closed after this many bytes.
    pub bytes: Option<u64>,
}

/// A circuit that lasts less than this is too short to carry a stream.
pub const MIN_STREAM_CIRCUIT_DURATION: Duration = Duration::from_secs(10 * 60);
/// A circuit that carries fewer bytes than this is too small to carry a stream.
pub const MIN_STREAM_CIRCUIT_BYTES: u64 = 16 << 20;

impl CircuitLimit {
    /// No limit at all.
    pub const NONE: CircuitLimit = CircuitLimit {
        duration: None,
        bytes: None,
    };

    /// Whether the relay would cut a stream off soon: under [`MIN_STREAM_CIRCUIT_DURATION`] or
    /// [`MIN_STREAM_CIRCUIT_BYTES`]. Enough to coordinate a hole punch, not to carry a tunnel.
    pub fn is_short(&self) -> bool {
        self.duration
            .is_some_and(|d| d < MIN_STREAM_CIRCUIT_DURATION)
            || self
                .bytes
                .is_some_and(|b| b > 0 && b < MIN_STREAM_CIRCUIT_BYTES)
    }
}

impl std::fmt::Display for CircuitLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.duration {
            Some(d) => write!(f, "{} s", d.as_secs())?,
            None => f.write_str("no time limit")?,
        }
        match self.bytes {
            Some(b) if b > 0 && b % 1024 == 0 => write!(f, " / {} KiB", b / 1024),
            Some(b) if b > 0 => write!(f, " / {b} bytes"),
            _ => f.write_str(" / no byte limit"),
        }
    }
}

/// How a connection reaches the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathKind {
    /// A connection straight to the peer (dialled, accepted, or hole-punched).
    Direct,
    /// A circuit through a relay (`/p2p-circuit`).
    Relayed,
}

impl PathKind {
    /// `"direct"` or `"relayed"`, as the logs print it.
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Relayed => "relayed",
        }
    }
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to "where should a new stream to this peer go?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSelection<C> {
    /// Open the stream on this connection.
    Use {
        /// The connection to open the stream on.
        connection: C,
        /// Whether it is direct or relayed.
        kind: PathKind,
    },
    /// Only relayed connections exist and the hole punch may still succeed: ask again when a
    /// connection opens, the punch fails, or the caller's wait runs out.
    WaitForDirect,
    /// No open connection: dial the peer first.
    NotConnected,
    /// The only connections are short relay circuits ([`CircuitLimit::is_short`]) and the hole
    /// punch failed: a stream would be cut off by the relay. Refuse it.
    ShortCircuit {
        /// The short circuit (to name its relay in the error).
        connection: C,
    },
}

/// The open connections to one peer and what DCUtR said about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerConnections<C> {
    /// Open connections, oldest first. The oldest direct connection carries new streams, so that
    /// a second punched connection does not split a peer's streams.
    open: Vec<(C, PathKind)>,
    /// DCUtR gave up since the last relayed connection opened: waiting for a direct path is
    /// pointless until something changes.
    punch_failed: bool,
    /// Open relayed connections that may carry new streams: outbound circuits whose relay
    /// told us a long limit.
    long: Vec<C>,
}

impl<C> Default for PeerConnections<C> {
    fn default() -> Self {
        Self {
            open: Vec::new(),
            punch_failed: false,
            long: Vec::new(),
        }
    }
}

impl<C: Copy + Eq> PeerConnections<C> {
    pub(crate) fn on_established(&mut self, connection: C, kind: PathKind) {
        if kind == PathKind::Relayed {
            // A new relayed connection starts a new DCUtR attempt.
            self.punch_failed = false;
        }
        if !self.open.iter().any(|(c, _)| *c == connection) {
            self.open.push((connection, kind));
        }
    }

    /// Forgets `connection`; `true` when no connection to the peer remains.
    pub(crate) fn on_closed(&mut self, connection: C) -> bool {
        self.open.retain(|(c, _)| *c != connection);
        self.long.retain(|c| *c != connection);
        self.open.is_empty()
    }

    /// The relay of `connection` told us its circuit's limit; `outbound`: we asked for the
    /// circuit (only then is the limit the one the relay enforces).
    pub(crate) fn on_circuit_limit(&mut self, connection: C, limit: CircuitLimit, outbound: bool) {
        let relayed = self
            .open
            .iter()
            .any(|(c, k)| *c == connection && *k == PathKind::Relayed);
        self.long.retain(|c| *c != connection);
        if relayed && outbound && !limit.is_short() {
            self.long.push(connection);
        }
    }

    pub(crate) fn on_hole_punch_failed(&mut self) {
        self.punch_failed = true;
    }

    /// Whether the last hole punch failed (since the last new relayed connection).
    pub(crate) fn punch_failed(&self) -> bool {
        self.punch_failed
    }

    pub(crate) fn count(&self, kind: PathKind) -> usize {
        self.open.iter().filter(|(_, k)| *k == kind).count()
    }

    /// The ids of the open connections, oldest first.
    #[cfg(test)]
    pub(crate) fn ids(&self) -> impl Iterator<Item = C> + '_ {
        self.open.iter().map(|(c, _)| *c)
    }

    /// `waited_enough`: the caller's bounded wait for a direct connection has run out.
    pub(crate) fn select(&self, waited_enough: bool) -> PathSelection<C> {
        let first = |kind| self.open.iter().find(|(_, k)| *k == kind).map(|(c, _)| *c);
        if let Some(connection) = first(PathKind::Direct) {
            return PathSelection::Use {
                connection,
                kind: PathKind::Direct,
            };
        }
        let long_relayed = self
            .open
            .iter()
            .find(|(c, k)| *k == PathKind::Relayed && self.long.contains(c))
            .map(|(c, _)| *c);
        match (long_relayed, first(PathKind::Relayed)) {
            (Some(connection), _) if waited_enough || self.punch_failed => PathSelection::Use {
                connection,
                kind: PathKind::Relayed,
            },
            // No relayed connection known to be long: wait for the punch however long the
            // caller waits, since the relay is no fallback. A failed DCUtR is not the end
            // before the caller's wait is: plain dials of the addresses identify brings over
            // the circuit, a reversal or an introduction may still connect (a DCUtR right
            // after start fails for want of observed addresses).
            (None, Some(connection)) if self.punch_failed && waited_enough => {
                PathSelection::ShortCircuit { connection }
            }
            (_, Some(_)) => PathSelection::WaitForDirect,
            (_, None) => PathSelection::NotConnected,
        }
    }

    /// A relayed connection, when the only connections are relayed ones that may not carry
    /// streams (for the error of a request that ran out of time waiting for a punch).
    pub(crate) fn only_short_circuit(&self) -> Option<C> {
        let direct = self.open.iter().any(|(_, k)| *k == PathKind::Direct);
        if direct || !self.long.is_empty() {
            return None;
        }
        self.open
            .iter()
            .find(|(_, k)| *k == PathKind::Relayed)
            .map(|(c, _)| *c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_oldest_direct_connection() {
        let mut p = PeerConnections::default();
        p.on_established(1, PathKind::Relayed);
        p.on_established(2, PathKind::Direct);
        p.on_established(3, PathKind::Direct);
        assert_eq!(
            p.select(false),
            PathSelection::Use {
                connection: 2,
                kind: PathKind::Direct
            }
        );
        p.on_closed(2);
        assert_eq!(
            p.select(false),
            PathSelection::Use {
                connection: 3,
                kind: PathKind::Direct
            }
        );
    }

    #[test]
    fn relayed_only_waits_then_falls_back() {
        let mut p = PeerConnections::default();
        p.on_established(7, PathKind::Relayed);
        p.on_circuit_limit(7, CircuitLimit::NONE, true);
        assert_eq!(p.select(false), PathSelection::WaitForDirect);
        assert_eq!(
            p.select(true),
            PathSelection::Use {
                connection: 7,
                kind: PathKind::Relayed
            }
        );
    }

    #[test]
    fn failed_punch_uses_relay_at_once_until_a_new_relayed_connection() {
        let mut p = PeerConnections::default();
        p.on_established(7, PathKind::Relayed);
        p.on_circuit_limit(7, CircuitLimit::NONE, true);
        p.on_hole_punch_failed();
        assert!(matches!(
            p.select(false),
            PathSelection::Use {
                kind: PathKind::Relayed,
                ..
            }
        ));
        p.on_established(8, PathKind::Relayed);
        assert_eq!(p.select(false), PathSelection::WaitForDirect);
    }

    const SHORT: CircuitLimit = CircuitLimit {
        duration: Some(Duration::from_secs(120)),
        bytes: Some(128 << 10),
    };

    #[test]
    fn short_limits_are_the_ones_that_would_cut_a_stream() {
        assert!(SHORT.is_short());
        assert!(!CircuitLimit::NONE.is_short());
        let long = CircuitLimit {
            duration: Some(Duration::from_secs(3600)),
            bytes: Some(1 << 30),
        };
        assert!(!long.is_short());
        // 0 bytes is no byte limit to libp2p's relay.
        let zero = CircuitLimit {
            duration: None,
            bytes: Some(0),
        };
        assert!(!zero.is_short());
        let brief = CircuitLimit {
            duration: Some(Duration::from_secs(60)),
            bytes: None,
        };
        assert!(brief.is_short());
        assert_eq!(SHORT.to_string(), "120 s / 128 KiB");
    }

    #[test]
    fn a_short_circuit_is_never_a_fallback() {
        let mut p = PeerConnections::default();
        p.on_established(7, PathKind::Relayed);
        p.on_circuit_limit(7, SHORT, true);
        // The wait for a direct path does not end with the caller's wait: the relay is no
        // fallback.
        assert_eq!(p.select(true), PathSelection::WaitForDirect);
        assert_eq!(p.only_short_circuit(), Some(7));
        p.on_hole_punch_failed();
        // A failed punch ends the wait only once the caller's wait for a direct path is over:
        // other ways to a direct connection may still be under way.
        assert_eq!(p.select(false), PathSelection::WaitForDirect);
        assert_eq!(
            p.select(true),
            PathSelection::ShortCircuit { connection: 7 }
        );
        // A long circuit through another relay is a fallback again.
        p.on_established(8, PathKind::Relayed);
        p.on_circuit_limit(8, CircuitLimit::NONE, true);
        assert_eq!(p.only_short_circuit(), None);
        assert_eq!(
            p.select(true),
            PathSelection::Use {
                connection: 8,
                kind: PathKind::Relayed
            }
        );
        // A punched connection is used whatever the circuits are.
        p.on_established(9, PathKind::Direct);
        assert_eq!(
            p.select(false),
            PathSelection::Use {
                connection: 9,
                kind: PathKind::Direct
            }
        );
        p.on_closed(9);
        p.on_closed(8);
        p.on_hole_punch_failed();
        assert_eq!(
            p.select(true),
            PathSelection::ShortCircuit { connection: 7 }
        );
    }

    #[test]
    fn only_an_outbound_circuit_known_to_be_long_is_a_fallback() {
        let mut p = PeerConnections::default();
        // Not known yet.
        p.on_established(1, PathKind::Relayed);
        p.on_hole_punch_failed();
        assert_eq!(
            p.select(true),
            PathSelection::ShortCircuit { connection: 1 }
        );
        // Inbound, announced long: the announcement need not be what the relay enforces.
        p.on_circuit_limit(1, CircuitLimit::NONE, false);
        assert_eq!(
            p.select(true),
            PathSelection::ShortCircuit { connection: 1 }
        );
        assert_eq!(p.only_short_circuit(), Some(1));
        // Outbound and long: a fallback.
        p.on_circuit_limit(1, CircuitLimit::NONE, true);
        assert_eq!(
            p.select(true),
            PathSelection::Use {
                connection: 1,
                kind: PathKind::Relayed
            }
        );
        assert_eq!(p.only_short_circuit(), None);
        // Told short later: no longer one.
        p.on_circuit_limit(1, SHORT, true);
        assert_eq!(
            p.select(true),
            PathSelection::ShortCircuit { connection: 1 }
        );
    }

    #[test]
    fn no_connection_means_dial() {
        let mut p: PeerConnections<u32> = PeerConnections::default();
        assert_eq!(p.select(true), PathSelection::NotConnected);
        p.on_established(1, PathKind::Direct);
        assert!(p.on_closed(1));
        assert_eq!(p.select(true), PathSelection::NotConnected);
    }
}
