//! The libp2p side: transports, the composed behaviour, and our stream protocol behaviour.
//!
//! - [`swarm`]: builds the `Swarm` (TCP + Noise + yamux, QUIC, DNS, relay client transport).
//! - [`behaviour`]: the composed `NetworkBehaviour` every node runs.
//! - [`stream`]: raw byte-stream protocols on a chosen connection, with backpressure.

pub mod behaviour;
pub mod stream;
pub mod swarm;

pub use behaviour::{Behaviour, BehaviourEvent};
