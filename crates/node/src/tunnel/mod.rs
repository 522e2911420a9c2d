//! TCP tunnels over libp2p streams (`/punchgate/tunnel/1.0.0`).
//!
//! - [`wire`]: the negotiation frames (u32 big-endian length + JSON, at most 64 KiB).
//! - [`server`]: accepts tunnel streams and connects them to `--expose`d local services.
//! - [`client`]: listens on `--tunnel` ports and carries each TCP connection as one stream.
//! - [`splice`]: copies both ways, with buffers that grow for connections that fill them.
//!
//! After negotiation both sides copy bytes in both directions until each side has closed; a
//! half-close (EOF one way) is passed on, so request/response protocols that shut down their
//! write side keep working.

pub mod client;
pub mod server;
pub mod splice;
pub mod wire;

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use crate::config::NodeConfig;

/// The largest copy buffer per direction per tunnel (64 KiB: 2.6 → 3.7 Gbit/s against 8 KiB,
/// docs/benchmarks.md); a connection's buffers start smaller and grow to this when it fills
/// them ([`splice`]). A full read leaves as one yamux frame ([`crate::net::mux`]).
pub const COPY_BUFFER: usize = 64 * 1024;

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
}

impl Limits {
    /// Limits from a node's config.
    pub fn new(config: &NodeConfig) -> Self {
        Self {
            negotiation_timeout: config.timing.negotiation_timeout,
            service_connect_timeout: config.timing.service_connect_timeout,
            serving: Arc::new(Semaphore::new(config.max_tunnels)),
            carrying: Arc::new(Semaphore::new(config.max_tunnels)),
        }
    }
}
