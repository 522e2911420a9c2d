//! Builds the `Swarm`: transports, security, multiplexing, and the behaviour.

use std::time::Duration;

use libp2p::{
    PeerId, Swarm, SwarmBuilder, Transport as _,
    core::{
        muxing::StreamMuxerBox,
        transport::{Boxed, timeout::TransportTimeout},
    },
    relay, tcp,
};

use super::{
    behaviour::{Behaviour, BehaviourError},
    mux, punched, security, tls,
};
use crate::config::NodeConfig;

/// Streams one QUIC connection may carry at once: every tunnelled TCP connection is a stream,
/// and a busy tunnel port can have thousands.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 4096;

/// Streams one yamux (TCP or relayed) connection may carry at once. yamux guarantees every
/// stream 256 KiB of its 1 GiB connection receive window and grows a busy stream's window
/// (towards the bandwidth-delay product) only out of what is left: at 4096 streams nothing is
/// left and every stream is stuck at 256 KiB per round trip (about 50 Mbit/s at 40 ms).
/// 2048 streams leave 512 MiB to grow into.
pub const MAX_YAMUX_STREAMS_PER_CONNECTION: usize = 2048;

/// The read buffer under TLS on TCP connections: rustls reads its socket at most 4 KiB at a
/// time, so a 64 KiB burst would cost 16 `read` calls; through this buffer it costs one.
pub const TCP_READ_BUFFER: usize = 128 << 10;

/// How long a connection dialled to us may take to negotiate security and multiplexing.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long an idle connection (no streams, nothing kept alive) stays open.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Building the swarm failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A transport could not be set up (TLS certificate, DNS configuration).
    #[error("cannot set up the {transport} transport: {reason}")]
    Transport {
        /// Which transport.
        transport: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A behaviour could not be built.
    #[error(transparent)]
    Behaviour(#[from] BehaviourError),
}

fn yamux_config() -> mux::Config {
    mux::Config::new(MAX_YAMUX_STREAMS_PER_CONNECTION)
}

/// TCP with TLS 1.3 ([`tls::Config`]: libp2p's `/tls/1.0.0`, AES-GCM where the CPU has AES
/// instructions) or Noise ([`security`]: stock peers that speak only Noise), and yamux
/// ([`mux::Config`]: 64 KiB frames), plus [`TCP_READ_BUFFER`] under the security layer. We dial
/// with one protocol (TLS, or Noise to a peer known to want it): a second proposal would cost
/// every new connection a round trip, because multistream-select sends data without waiting
/// for the answer only for the last protocol it proposes.
fn tcp_transport(security: security::Config) -> Boxed<(PeerId, StreamMuxerBox)> {
    let upgraded = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .map(|stream, _| futures::io::BufReader::with_capacity(TCP_READ_BUFFER, stream))
        .and_then(move |stream, endpoint| security.clone().upgrade(stream, endpoint));
    // A peer that connects must finish its handshakes in time (it holds a socket until then).
    TransportTimeout::with_ingoing_timeout(upgraded, UPGRADE_TIMEOUT).boxed()
}

/// Relayed connections (circuits through a relay), secured and multiplexed as TCP connections
/// are ([`security`]). libp2p's builder (`with_relay_client`) would offer one list of security
/// protocols both ways; this accepts TLS and Noise from a stock peer behind a relay and dials
/// with one.
fn relay_transport(
    transport: relay::client::Transport,
    security: security::Config,
) -> Boxed<(PeerId, StreamMuxerBox)> {
    let upgraded =
        transport.and_then(move |stream, endpoint| security.clone().upgrade(stream, endpoint));
    TransportTimeout::with_ingoing_timeout(upgraded, UPGRADE_TIMEOUT).boxed()
}

/// QUIC: the ports a birthday punch [claimed](punched::Claims) first, then libp2p-quic for
/// everything else, with room for [`MAX_STREAMS_PER_CONNECTION`] streams.
fn quic_transport(
    keypair: &libp2p::identity::Keypair,
    claims: punched::Claims,
) -> Boxed<(PeerId, StreamMuxerBox)> {
    let mut config = libp2p::quic::Config::new(keypair);
    config.max_concurrent_stream_limit = MAX_STREAMS_PER_CONNECTION;
    let main = libp2p::quic::tokio::Transport::new(config.clone())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    punched::Transport::new(config, claims)
        .or_transport(main)
        .map(|either, _| either.into_inner())
        .boxed()
}

/// Builds the node's swarm, counting every connection's bytes into `registry`
/// (`libp2p_bandwidth_bytes_total`). Listening is left to the caller; `claims` hands punched
/// ports to the QUIC transport.
pub fn build(
    config: &NodeConfig,
    registry: &mut libp2p::metrics::Registry,
    claims: punched::Claims,
) -> Result<Swarm<Behaviour>, BuildError> {
    let transport_err = |transport| {
        move |e: &dyn std::fmt::Display| BuildError::Transport {
            transport,
            reason: e.to_string(),
        }
    };
    // One certificate for TCP and relayed connections alike, and one memory of the peers that
    // want Noise.
    let tls = tls::Config::new(&config.keypair).map_err(|e| transport_err("TLS")(&e))?;
    let security = security::Config::new(
        &config.keypair,
        tls,
        yamux_config(),
        security::NoisePeers::with_capacity(security::NOISE_PEERS),
    )
    .map_err(|e| transport_err("Noise")(&e))?;
    let (relayed, relay_client) = relay::client::new(config.keypair.public().to_peer_id());
    let relay_security = security.clone();
    let mut behaviour_error = None;
    let swarm = SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_other_transport(|key| quic_transport(key, claims.clone()))
        .map_err(|e| transport_err("QUIC")(&e))?
        .with_other_transport(|_| tcp_transport(security))
        .map_err(|e| transport_err("TCP")(&e))?
        .with_other_transport(|_| relay_transport(relayed, relay_security))
        .map_err(|e| transport_err("relay")(&e))?
        .with_dns()
        .map_err(|e| transport_err("DNS")(&e))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(
            |key| match Behaviour::new(key, relay_client, config, claims) {
                Ok(b) => Ok(b),
                Err(e) => {
                    let message = e.to_string();
                    behaviour_error = Some(e);
                    Err(message.into())
                }
            },
        );
    let swarm = match swarm {
        Ok(builder) => builder,
        Err(e) => {
            return Err(match behaviour_error {
                Some(b) => BuildError::Behaviour(b),
                None => transport_err("behaviour")(&e),
            });
        }
    };
    Ok(swarm
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                // Outbound streams propose one protocol and send data at once instead of waiting
                // a round trip for the confirmation (multistream-select V1 "lazy"). Every
                // tunnel connection, relay circuit, hole punch and introduction opens one.
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        })
        .build())
}
