//! Tunnels over libp2p streams: TCP (`/punchgate/tunnel/1.0.0`) and UDP
//! (`/punchgate/udp/1.0.0`).
//!
//! - [`wire`]: the negotiation frames (u32 big-endian length + JSON, at most 64 KiB).
//! - [`server`]: accepts tunnel streams of both protocols, admits them, and connects them to
//!   `--expose`d (TCP) or `--expose-udp` (UDP) local services.
//! - [`client`]: listens on `--tunnel` ports and carries each TCP connection as one stream.
//! - [`udp`]: `--tunnel-udp` ports (one stream per client address) and served UDP sessions,
//!   with length-prefixed datagrams.
//! - [`splice`]: copies both ways, with buffers that grow for connections that fill them.
//! - [`active`]: the tunnels open now (for `/status`, and for a reload that takes access away).
//!
//! After negotiation both sides of a TCP tunnel copy bytes in both directions until each side has closed; a
//! half-close (EOF one way) is passed on, so request/response protocols that shut down their
//! write side keep working.

pub mod active;
pub mod client;
pub mod server;
pub mod splice;
pub mod udp;
pub mod wire;

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use crate::config::NodeConfig;

/// The largest copy buffer per direction per tunnel (64 KiB: 2.6 → 3.7 Gbit/s against 8 KiB,
/// docs/benchmarks.md); a connection's buffers start smaller and grow to this when it fills
/// them ([`splice`]). A full read leaves as one yamux frame ([`crate::net::mux`]).
pub const COPY_BUFFER: usize = 64 * 1024;

/// What a node's tunnel tasks count and record: the metrics, and the table of open tunnels.
#[derive(Debug, Clone)]
pub struct Books {
    /// Counts for `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// The open tunnels.
    pub active: active::ActiveTunnels,
}

impl Books {
    /// Books that count into `metrics`.
    pub fn new(metrics: crate::metrics::Metrics) -> Self {
        Self {
            metrics,
            active: active::ActiveTunnels::default(),
        }
    }
}

/// What a `--tunnel` or `--tunnel-udp` port's task works with, besides its socket.
#[derive(Debug, Clone)]
pub struct PortTask {
    /// The port's flag.
    pub spec: crate::config::TunnelSpec,
    /// The node that carries its connections and sessions.
    pub node: crate::node::NodeHandle,
    /// The node's tunnel limits.
    pub limits: Limits,
    /// The node's metrics and open tunnels.
    pub books: Books,
    /// Cancelled to close the port (a reload that removed it, or the node stopping).
    pub stop: tokio_util::sync::CancellationToken,
    /// Where its connections and sessions run.
    pub tasks: tokio_util::task::TaskTracker,
}

/// The service label of a name a peer asked for that the node does not have (metrics labels
/// are bounded: see [`crate::metrics`]).
pub const OTHER_SERVICE: &str = "other";

/// Limits shared by a node's tunnel tasks.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request/response exchange deadline.
    pub negotiation_timeout: Duration,
    /// Deadline for connecting to the exposed local service.
    pub service_connect_timeout: Duration,
    /// Permits for tunnels served at once (inbound).
    pub serving: Arc<Semaphore>,
    /// Permits for tunnels carried at once (outbound, across all `--tunnel` ports).
    pub carrying: Arc<Semaphore>,
    /// Tunnels served at once per peer.
    pub per_peer: PeerShares,
    /// Streams being refused at once: those of peers no `--allow` rule names, and those past
    /// their peer's share. They never wait for (or hold) a `serving` permit; when these run
    /// out, more such streams are reset at once.
    pub refusing: Arc<Semaphore>,
    /// Refusals in progress per peer, so one peer cannot take every `refusing` permit.
    pub refusing_per_peer: PeerShares,
    /// Closes a tunnel that moved no byte for this long (`--tunnel-idle-timeout`).
    pub idle_timeout: Option<Duration>,
    /// Ends a UDP session that carried no datagram for this long (`--udp-idle-timeout`).
    pub udp_idle_timeout: Duration,
    /// UDP sessions one `--tunnel-udp` port carries at once (`--max-udp-sessions`).
    pub max_udp_sessions: usize,
    /// What all UDP sessions share: the bytes queued, the drop log's lines.
    pub udp: Arc<udp::Shared>,
}

/// Streams a node refuses at once ([`Limits::refusing`]): each waits at most the negotiation
/// timeout for its request, then its refusal is written within 2 s.
pub const REFUSING_STREAMS: usize = 128;

/// Refusals in progress for one peer: an eighth of [`REFUSING_STREAMS`].
pub const REFUSING_STREAMS_PER_PEER: usize = REFUSING_STREAMS / 8;

/// How many tunnels each peer has served at once, against a cap per peer: one peer can hold at
/// most its share of the node's permits, so it can never starve the others.
#[derive(Debug, Clone)]
pub struct PeerShares {
    max: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<libp2p::PeerId, usize>>>,
}

/// One tunnel counted against its peer's share, until dropped.
#[derive(Debug)]
pub struct Share {
    peer: libp2p::PeerId,
    open: Arc<std::sync::Mutex<std::collections::HashMap<libp2p::PeerId, usize>>>,
}

impl PeerShares {
    /// At most `max` tunnels per peer.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A share for one more tunnel of `peer`, or `Err(n)` with the `n` it already has. The map
    /// holds only peers with a tunnel open, so it is bounded by the node's permits.
    pub fn take(&self, peer: libp2p::PeerId) -> Result<Share, usize> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(peer).or_insert(0);
        if *count >= self.max {
            return Err(*count);
        }
        *count += 1;
        Ok(Share {
            peer,
            open: self.open.clone(),
        })
    }

    /// The cap per peer.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

impl Limits {
    /// Limits from a node's config.
    pub fn new(config: &NodeConfig) -> Self {
        Self {
            negotiation_timeout: config.timing.negotiation_timeout,
            service_connect_timeout: config.timing.service_connect_timeout,
            serving: Arc::new(Semaphore::new(config.max_tunnels)),
            carrying: Arc::new(Semaphore::new(config.max_tunnels)),
            per_peer: PeerShares::new(config.max_tunnels_per_peer.max(1)),
            refusing: Arc::new(Semaphore::new(REFUSING_STREAMS)),
            refusing_per_peer: PeerShares::new(REFUSING_STREAMS_PER_PEER),
            idle_timeout: config.timing.tunnel_idle_timeout,
            udp_idle_timeout: config.timing.udp_idle_timeout,
            max_udp_sessions: config.max_udp_sessions.max(1),
            udp: Arc::default(),
        }
    }
}
