//! The NAT lab: real Punchgate nodes behind real NAT routers, in network namespaces built with
//! [patchbay](https://crates.io/crates/patchbay).
//!
//! # Layout
//! - [`nat`]: NAT kinds, the expected outcome of each pair, and the rules that make patchbay's
//!   routers behave like real ones (input drop, TCP full cone).
//! - [`delay`]: one-way delay on a router's WAN in user space (NFQUEUE); this kernel has no netem.
//! - [`topology`]: builds a scenario's network: relay, A's and B's sites.
//! - [`preflight`]: can this machine run the lab (tools on PATH, root or user namespaces)?
//! - [`peer`]: a `punchgate` process in a namespace, its JSON log, stop and kill.
//! - [`cell`]: runs one scenario: start the nodes, tunnel bytes both ways, record path and timings.
//! - [`report`]: repeated runs → Markdown and JSON tables.
//! - [`stock`]: stock rust-libp2p programs (relay server, DCUtR client), from libp2p's own
//!   crates, for the interop tests.
//!
//! The lab binary (`punchgate-lab`) runs the demo and the matrix, and is also the node the lab
//! starts (`punchgate-lab node ...` is the `punchgate` binary).

#![forbid(unsafe_code)]

pub mod cell;
pub mod coldstart;
pub mod delay;
pub mod nat;
pub mod peer;
pub mod preflight;
pub mod report;
pub mod stock;
pub mod topology;
pub mod upnp;
