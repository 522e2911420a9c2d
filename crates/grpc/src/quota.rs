//! The relay quota book: how many gRPC connections run through each relay.
//!
//! A relay lends its bandwidth, so an application limits what it asks of each one (and of all
//! relays together). A slot is taken when a relayed dial starts (pending), kept while the
//! connection lives (confirmed: the [`RelayTicket`] moves into the stream), and released the
//! moment the dial fails or the connection goes: a failed dial never leaks a slot. Direct
//! connections never count.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use libp2p::PeerId;

/// Limits on relayed gRPC connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Through any one relay.
    pub per_relay: usize,
    /// Through all relays together.
    pub total: usize,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            per_relay: 32,
            total: 128,
        }
    }
}

/// The quota is used up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// This relay already carries its share.
    #[error("relay {relay} already carries {limit} gRPC connections (the per-relay limit)")]
    PerRelay {
        /// The relay.
        relay: PeerId,
        /// The limit.
        limit: usize,
    },
    /// All relays together carry the total limit.
    #[error("relays already carry {limit} gRPC connections (the total limit)")]
    Total {
        /// The limit.
        limit: usize,
    },
}

/// Shared book of relay slots. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RelayBook {
    inner: Arc<Mutex<Book>>,
}

#[derive(Debug)]
struct Book {
    limits: RelayLimits,
    per_relay: HashMap<PeerId, usize>,
    total: usize,
}

/// One slot on one relay; released when dropped.
#[derive(Debug)]
pub struct RelayTicket {
    book: RelayBook,
    relay: PeerId,
}

impl RelayTicket {
    /// The relay this slot is on.
    pub fn relay(&self) -> PeerId {
        self.relay
    }
}

impl Drop for RelayTicket {
    fn drop(&mut self) {
        let mut book = self.book.lock();
        if let Some(n) = book.per_relay.get_mut(&self.relay) {
            *n -= 1;
            if *n == 0 {
                book.per_relay.remove(&self.relay);
            }
        }
        book.total = book.total.saturating_sub(1);
    }
}

impl RelayBook {
    /// An empty book with these limits.
    pub fn new(limits: RelayLimits) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Book {
                limits,
                per_relay: HashMap::new(),
                total: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot on `relay`, or says which limit is reached.
    pub fn try_acquire(&self, relay: PeerId) -> Result<RelayTicket, QuotaError> {
        let mut book = self.lock();
        let limits = book.limits;
        let on_relay = book.per_relay.get(&relay).copied().unwrap_or(0);
        if on_relay >= limits.per_relay {
            return Err(QuotaError::PerRelay {
                relay,
                limit: limits.per_relay,
            });
        }
        if book.total >= limits.total {
            return Err(QuotaError::Total {
                limit: limits.total,
            });
        }
        *book.per_relay.entry(relay).or_default() += 1;
        book.total += 1;
        Ok(RelayTicket {
            book: self.clone(),
            relay,
        })
    }

    /// Slots in use on `relay`.
    pub fn in_use(&self, relay: &PeerId) -> usize {
        self.lock().per_relay.get(relay).copied().unwrap_or(0)
    }

    /// Slots in use on all relays.
    pub fn total_in_use(&self) -> usize {
        self.lock().total
    }
}

impl Default for RelayBook {
    fn default() -> Self {
        Self::new(RelayLimits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn relay_limits_are_enforced() {
        let book = RelayBook::new(RelayLimits {
            per_relay: 2,
            total: 3,
        });
        let (r1, r2) = (peer(), peer());
        let a = book.try_acquire(r1).expect("1st on r1");
        let _b = book.try_acquire(r1).expect("2nd on r1");
        assert_eq!(
            book.try_acquire(r1).expect_err("3rd on r1"),
            QuotaError::PerRelay {
                relay: r1,
                limit: 2
            }
        );
        let _c = book.try_acquire(r2).expect("1st on r2");
        assert_eq!(
            book.try_acquire(r2).expect_err("over total"),
            QuotaError::Total { limit: 3 }
        );
        drop(a);
        assert_eq!(book.in_use(&r1), 1);
        assert_eq!(book.total_in_use(), 2);
        assert!(book.try_acquire(r1).is_ok());
    }

    #[test]
    fn relay_limit_recovers_after_failed_dial() {
        let book = RelayBook::new(RelayLimits {
            per_relay: 1,
            total: 1,
        });
        let relay = peer();
        for _ in 0..5 {
            // A dial takes the slot, fails, and drops the ticket: the next dial may proceed.
            let ticket = book.try_acquire(relay).expect("slot free again");
            drop(ticket);
        }
        assert_eq!(book.total_in_use(), 0);
        assert!(book.lock().per_relay.is_empty(), "no entry left behind");
    }
}
