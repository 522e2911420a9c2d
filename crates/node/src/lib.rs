//! Punchgate: a peer-to-peer NAT-traversing tunnel mesh on libp2p.
//!
//! One binary, no roles: every node relays for others once public, reserves a relay slot when
//! private, punches holes with DCUtR (TCP and QUIC), discovers peers (Kademlia,
//! mDNS), and exposes or consumes TCP tunnels.
//!
//! # Layout
//! - [`access`]: who may reach what: per-service allow lists (deny by default), relay trust,
//!   rate-limited denial logs.
//! - [`config`]: typed, validated settings (`--expose`, `--tunnel`, relay limits, timeouts).
//! - [`cli`]: command-line flags → [`config::NodeConfig`].
//! - [`config_file`]: the TOML config file under the flags (`--config`).
//! - [`identity`]: the persistent Ed25519 key file.
//! - [`protocol`]: protocol ids and wire constants.
//! - [`frame`]: length-prefixed JSON frames (tunnel negotiation, introductions).
//! - [`net`]: the libp2p side: swarm construction, the composed behaviour, and our stream
//!   behaviour (streams on the connection we choose, with backpressure).
//! - [`node`]: the running node: the driver that feeds the pure state machine
//!   (`punchgate-machine`) and executes its commands, and the [`node::NodeHandle`] API.
//! - [`tunnel`]: tunnel framing, server (exposed services) and client (`--tunnel` ports).
//!
//! Decisions live in `punchgate-machine`, which cannot reach tokio or the swarm; this crate
//! only observes and executes.

#![forbid(unsafe_code)]

pub mod access;
pub mod cli;
pub mod config;
pub mod config_file;
pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod identity;
pub mod metrics;
pub mod net;
pub mod node;
pub mod protocol;
pub mod punch;
pub mod tunnel;

pub use config::NodeConfig;
pub use node::{Node, NodeEvent, NodeHandle};

/// The memory allocator for every program that runs a node (`punchgate`, and the lab, bench and
/// Kaspa programs that run one as a subcommand): `#[global_allocator] static ALLOCATOR:
/// punchgate::Allocator = punchgate::Allocator;`.
///
/// A tunnel allocates and frees a buffer for every yamux frame and TLS record (16–64 KiB,
/// inside yamux and rustls), often freeing on another thread than the one that allocated.
/// glibc's allocator hands the free top of a heap back to the kernel once more than 128 KiB of
/// it is free, and takes it back at the next allocation: page faults and zeroed pages for every
/// few frames. On the benchmark's one-stream transfer that cost about a quarter of the tunnel's
/// CPU (docs/benchmarks.md); mimalloc keeps freed pages for reuse.
pub use mimalloc::MiMalloc as Allocator;
