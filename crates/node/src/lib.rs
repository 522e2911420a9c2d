//! Punchgate: a peer-to-peer NAT-traversing tunnel mesh on libp2p.
//!
//! One binary, no roles: every node relays for others once public, reserves a relay slot when
//! private, punches holes with DCUtR (TCP and QUIC), discovers peers and services (Kademlia,
//! mDNS), and exposes or consumes TCP tunnels.
//!
//! # Layout
//! - [`config`]: typed, validated settings (`--expose`, `--tunnel`, relay limits, timeouts).
//! - [`cli`]: command-line flags → [`config::NodeConfig`].
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

pub mod cli;
pub mod config;
pub mod frame;
pub mod identity;
pub mod net;
pub mod node;
pub mod protocol;
pub mod tunnel;

pub use config::NodeConfig;
pub use node::{Node, NodeEvent, NodeHandle};
