//! The decisions of a Punchgate node, as pure functions.
//!
//! Nothing in this crate opens a socket, reads a clock or spawns a task: the compiler keeps it
//! that way, because the crate depends on no runtime and no `Swarm`. A driver (the `punchgate`
//! crate's `node::driver`) turns what the network does into [`Event`]s, feeds them to
//! [`State::step`], and carries out the [`Command`]s that come back. Time enters as
//! [`Event::TimerFired`], for timers the machine asked for with [`Command::StartTimer`].
//!
//! # Layout
//! - [`node`]: the node's lifecycle: `(State, Event) -> (State, Vec<Command>)`.
//! - [`paths`]: which of a peer's connections a new stream should use: direct, relayed, or wait
//!   for a hole punch.
//! - [`reach`]: how to reach a peer we are not connected to: dial, punch through an
//!   introduction by its relay, or look it up.
//! - [`backoff`]: retry delays for relay reservations and reconnects.
//! - [`introductions`]: which introductions a node acts on, and which addresses it dials.
//! - [`records`]: which addresses go into the DHT (global only, unless the mesh is private).
//! - [`mapping`]: what kind of NAT mapping we sit behind, from what observers report, and
//!   which side of a birthday punch we take.
//! - [`limit`]: rate limits (per period, per interval, per key) with the time passed in.

#![forbid(unsafe_code)]

mod addr;
pub mod backoff;
pub mod introductions;
pub mod limit;
pub mod mapping;
pub mod node;
pub mod paths;
pub mod reach;
pub mod records;

pub use backoff::Backoff;
pub use node::{Command, Config, DialReason, Event, NatStatus, Phase, RelayState, State, Timer};
pub use paths::{CircuitLimit, PathKind, PathSelection};
