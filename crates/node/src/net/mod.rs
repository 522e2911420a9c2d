//! The libp2p side: transports, the composed behaviour, and our stream protocol behaviour.
//!
//! - [`swarm`]: builds the `Swarm` (TCP + TLS + yamux, QUIC, DNS, relay client transport with
//!   TLS + yamux).
//! - [`security`]: TLS for the TCP connections we dial, TLS or Noise for those dialled to us,
//!   then yamux.
//! - [`tls`]: libp2p's TLS 1.3 handshake with the cipher order this CPU runs fastest.
//! - [`mux`]: yamux, sending each of a tunnel's reads (up to 64 KiB) as one frame, each
//!   connection driven by a task of its own.
//! - [`coalesce`]: joins yamux's small writes (frame headers) to the next one above TLS.
//! - [`relay_server`]: libp2p's relay server, with long circuits for trusted peers only, kept
//!   from addressing relayed connections' handlers (an upstream bug that panics their
//!   connection tasks).
//! - [`punched`]: QUIC on the ports a birthday punch opened, ahead of libp2p-quic.
//! - [`port_map`]: asks the router to forward our listen ports (UPnP IGD), and removes the
//!   mappings at shutdown.
//! - [`behaviour`]: the composed `NetworkBehaviour` every node runs.
//! - [`stream`]: raw byte-stream protocols on a chosen connection, with backpressure.

pub mod behaviour;
pub mod coalesce;
pub mod mux;
pub mod port_map;
pub mod punched;
pub mod relay_server;
pub mod security;
pub mod stream;
pub mod swarm;
pub mod tls;

pub use behaviour::{Behaviour, BehaviourEvent};
