//! The tunnels open now: what `/status` lists, and what a reload that removes an `--allow` rule
//! closes.
//!
//! Each open tunnel holds a [`Registration`] until it ends; the table holds one entry per
//! registration, so it is bounded by the tunnel permits (`--max-tunnels`, each side).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use libp2p::PeerId;
use tokio_util::sync::CancellationToken;

use crate::{
    config::ServiceProtocol,
    metrics::{LiveBytes, Path, Side},
};

/// Every open tunnel of a node. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ActiveTunnels {
    table: Arc<Mutex<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    open: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    side: Side,
    protocol: ServiceProtocol,
    service: String,
    peer: PeerId,
    path: Path,
    opened: Instant,
    bytes: Arc<LiveBytes>,
    /// Cancelled to close the tunnel (a reload that took its peer's access away).
    close: CancellationToken,
}

/// One open tunnel, as `/status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TunnelStatus {
    /// `served` (we expose the service) or `carried` (a `--tunnel` port of ours).
    pub side: &'static str,
    /// `tcp` (a connection) or `udp` (a session: one client address).
    pub protocol: &'static str,
    /// The service.
    pub service: String,
    /// The peer at the other end.
    pub peer: String,
    /// `direct` or `relayed`.
    pub path: &'static str,
    /// Seconds since the tunnel opened.
    pub open_seconds: f64,
    /// Bytes towards the service so far.
    pub bytes_to_service: u64,
    /// Bytes from the service so far.
    pub bytes_from_service: u64,
}

/// What a tunnel that just opened is ([`ActiveTunnels::register`]).
#[derive(Debug, Clone, Copy)]
pub struct Opened<'a> {
    /// Served or carried.
    pub side: Side,
    /// A TCP connection or a UDP session.
    pub protocol: ServiceProtocol,
    /// The service.
    pub service: &'a str,
    /// The peer at the other end.
    pub peer: PeerId,
    /// Direct or relayed.
    pub path: Path,
}

/// An open tunnel's entry; dropping it removes the entry.
#[derive(Debug)]
pub struct Registration {
    id: u64,
    table: Arc<Mutex<Table>>,
    /// Cancelled when the tunnel is to close.
    pub close: CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.table).open.remove(&self.id);
    }
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

impl ActiveTunnels {
    /// Enters a tunnel that just opened; `close` (a child of the node's shutdown token) closes
    /// it.
    pub fn register(
        &self,
        tunnel: Opened<'_>,
        bytes: Arc<LiveBytes>,
        close: CancellationToken,
    ) -> Registration {
        let Opened {
            side,
            protocol,
            service,
            peer,
            path,
        } = tunnel;
        let mut table = lock(&self.table);
        table.next += 1;
        let id = table.next;
        table.open.insert(
            id,
            Entry {
                side,
                protocol,
                service: service.to_owned(),
                peer,
                path,
                opened: Instant::now(),
                bytes,
                close: close.clone(),
            },
        );
        Registration {
            id,
            table: self.table.clone(),
            close,
        }
    }

    /// The open tunnels, oldest first.
    pub fn snapshot(&self) -> Vec<TunnelStatus> {
        use std::sync::atomic::Ordering::Relaxed;
        let table = lock(&self.table);
        let mut entries: Vec<(&u64, &Entry)> = table.open.iter().collect();
        entries.sort_by_key(|(id, _)| **id);
        entries
            .into_iter()
            .map(|(_, e)| TunnelStatus {
                side: match e.side {
                    Side::served => "served",
                    Side::carried => "carried",
                },
                protocol: e.protocol.as_str(),
                service: e.service.clone(),
                peer: e.peer.to_string(),
                path: match e.path {
                    Path::direct => "direct",
                    Path::relayed => "relayed",
                },
                open_seconds: round_ms(e.opened.elapsed()),
                bytes_to_service: e.bytes.to_service.load(Relaxed),
                bytes_from_service: e.bytes.from_service.load(Relaxed),
            })
            .collect()
    }

    /// Closes every served tunnel that `admitted(service, peer)` no longer admits; returns how
    /// many it closed, by (service, peer).
    pub fn close_served_unless(
        &self,
        admitted: impl Fn(&str, &PeerId) -> bool,
    ) -> Vec<(String, PeerId)> {
        let table = lock(&self.table);
        let mut closed = Vec::new();
        for entry in table.open.values() {
            if entry.side == Side::served && !admitted(&entry.service, &entry.peer) {
                entry.close.cancel();
                closed.push((entry.service.clone(), entry.peer));
            }
        }
        closed
    }
}

fn round_ms(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}
