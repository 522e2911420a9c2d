//! Kaspa's P2P handshake between two peers behind NAT, over Punchgate's gRPC bridge: the
//! proof of concept's result (two private Kaspa peers running Version → Verack → Ready over a
//! hole-punched libp2p connection) as a library and a program.
//!
//! # Layout
//! - [`pb`]: the protowire messages and the `P2P` service (generated, wire-compatible with
//!   rusty-kaspa for the messages used here).
//! - [`handshake`]: the handshake steps and Kaspa's timeouts.
//! - [`service`]: the server side (every incoming `MessageStream` runs the handshake) and the
//!   client side (open a stream to a peer and run it).
//! - [`cli`]: the `kaspa-p2p` program, configured like the proof of concept (environment
//!   variables) or with equivalent flags.

#![forbid(unsafe_code)]

pub mod cli;
pub mod handshake;
pub mod service;

/// Generated code.
#[allow(
    clippy::all,
    clippy::pedantic,
    unreachable_pub,
    missing_debug_implementations,
    missing_docs
)]
pub mod pb {
    tonic::include_proto!("protowire");
}
