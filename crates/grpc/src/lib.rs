//! gRPC over Punchgate: tonic servers and clients on libp2p streams, so an application talks
//! gRPC between two peers behind NAT over a punched (or relayed) connection, on the same node
//! (one identity, one swarm) that carries tunnels.
//!
//! # Layout
//! - [`stream`]: [`P2pStream`], a libp2p stream as a tonic/hyper connection, and its
//!   [`P2pConnectInfo`] (peer, address, relayed, byte counters, synthetic socket address).
//! - [`config`]: [`BridgeConfig`], HTTP/2 and message settings both ends share.
//! - [`server`]: [`Incoming`], inbound connections for `serve_with_incoming`, with admission:
//!   an [`Allow`] list of peers (deny by default), duplicate peers, relay quotas.
//! - [`client`]: [`Target`] (`punchgate://<peer>?addr=<multiaddr>`) and [`connect`], a tonic
//!   `Channel` to a peer.
//! - [`quota`]: the relay quota book.
//! - [`echo`]: a small echo service for examples, tests and benchmarks.
//!
//! # Example
//! ```no_run
//! # async fn example(server_node: punchgate::Node, client_node: punchgate::Node) -> Result<(), Box<dyn std::error::Error>> {
//! use punchgate_grpc::{Allow, BridgeConfig, Incoming, Target, connect, echo};
//!
//! let config = BridgeConfig::default();
//! // Server: any tonic service, on the inbound gRPC streams of the peers it allows (here the
//! // client only; `Allow::Any` serves every peer).
//! let allow = Allow::Peers([client_node.peer_id()].into());
//! let incoming = Incoming::new(server_node.handle(), &config, allow)?;
//! tokio::spawn(config.server().add_service(echo::server(&config)).serve_with_incoming(incoming));
//!
//! // Client: a Channel to that peer, by peer id (known addresses, the DHT, or a relay).
//! let target: Target = format!("punchgate://{}", server_node.peer_id()).parse()?;
//! let channel = connect(client_node.handle(), &target, &config).await?;
//! let reply = echo::client(channel, &config)
//!     .unary(echo::Payload { data: b"hello".to_vec(), reply_size: 0 })
//!     .await?;
//! assert_eq!(reply.into_inner().data, b"hello");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod echo;
pub mod quota;
pub mod server;
pub mod stream;

pub use punchgate::access::Allow;

pub use client::{
    ConnectError, ConnectOptions, Observer, Target, TargetError, connect, connect_lazy,
    connect_with,
};
pub use config::{BridgeConfig, PROTOCOL};
pub use quota::{QuotaError, RelayBook, RelayLimits};
pub use server::{Connections, Incoming};
pub use stream::{ByteCounters, P2pConnectInfo, P2pStream};
