//! Which of a peer's connections a new stream should use.
//!
//! A peer behind NAT is first reached through a relay; DCUtR then tries to punch a direct
//! connection. A new stream should ride the direct connection when there is one, wait a bounded
//! time for the punch while it may still succeed, and fall back to the relayed connection when the
//! punch failed or the wait ran out. Streams never migrate: one opened on the relay stays there.

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
}

impl<C> Default for PeerConnections<C> {
    fn default() -> Self {
        Self {
            open: Vec::new(),
            punch_failed: false,
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
        self.open.is_empty()
    }

    pub(crate) fn on_hole_punch_failed(&mut self) {
        self.punch_failed = true;
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
        match first(PathKind::Relayed) {
            Some(connection) if waited_enough || self.punch_failed => PathSelection::Use {
                connection,
                kind: PathKind::Relayed,
            },
            Some(_) => PathSelection::WaitForDirect,
            None => PathSelection::NotConnected,
        }
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

    #[test]
    fn no_connection_means_dial() {
        let mut p: PeerConnections<u32> = PeerConnections::default();
        assert_eq!(p.select(true), PathSelection::NotConnected);
        p.on_established(1, PathKind::Direct);
        assert!(p.on_closed(1));
        assert_eq!(p.select(true), PathSelection::NotConnected);
    }
}
