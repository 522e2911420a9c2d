//! The composed `NetworkBehaviour`: every node runs all of it.

use std::time::Duration;

use libp2p::{
    autonat, connection_limits, dcutr, identify,
    identity::Keypair,
    kad::{self, store::MemoryStore},
    memory_connection_limits, ping, relay,
    swarm::NetworkBehaviour,
};

use super::{port_map, relay_server::RelayServer, stream};
use crate::{
    config::{MAX_DURATION, NodeConfig},
    protocol,
};

/// mDNS when the `mdns` feature is on (and enabled in the config), otherwise nothing.
#[cfg(feature = "mdns")]
pub type Mdns = libp2p::swarm::behaviour::toggle::Toggle<libp2p::mdns::tokio::Behaviour>;
/// mDNS when the `mdns` feature is on (and enabled in the config), otherwise nothing.
#[cfg(not(feature = "mdns"))]
pub type Mdns = libp2p::swarm::dummy::Behaviour;

/// Everything a node does on the network, one sub-behaviour per job.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Connections in total, per peer and pending: first, so a connection over a limit is
    /// refused before any other behaviour builds state for it.
    pub limits: connection_limits::Behaviour,
    /// No new connection, in or out, while the process uses more memory than `--max-memory`:
    /// the connections open keep working, and new ones are refused until memory is back under.
    pub memory: memory_connection_limits::Behaviour,
    /// Reserve slots on relays and dial through them when we are private.
    pub relay_client: relay::client::Behaviour,
    /// Relay for others once we have a confirmed public address (long circuits for trusted
    /// peers only, nothing with `--relay off`).
    pub relay: RelayServer,
    /// Upgrade relayed connections to direct ones (hole punching).
    pub dcutr: dcutr::Behaviour,
    /// Exchange listen addresses, observed addresses and protocols.
    pub identify: identify::Behaviour,
    /// Learn whether we are reachable (public) or not (private); confirms external addresses.
    pub autonat: autonat::Behaviour,
    /// Punchgate's DHT: signed peer records (addresses only) and peer routing.
    pub kademlia: kad::Behaviour<MemoryStore>,
    /// Zero-configuration discovery on the local network.
    pub mdns: Mdns,
    /// Ask the router to forward our listen ports (UPnP IGD; `--no-upnp` turns it off).
    pub port_map: port_map::Behaviour,
    /// Liveness and round-trip times.
    pub ping: ping::Behaviour,
    /// Tunnel and gRPC streams on the connection we choose.
    pub streams: stream::Behaviour,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour").finish_non_exhaustive()
    }
}

/// Building the behaviour failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BehaviourError {
    /// mDNS could not bind its multicast socket.
    #[error("cannot start mDNS: {0}")]
    Mdns(#[source] std::io::Error),
}

impl Behaviour {
    /// Builds every sub-behaviour from the node's config.
    pub fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        config: &NodeConfig,
        punched: super::punched::Claims,
    ) -> Result<Self, BehaviourError> {
        let peer_id = key.public().to_peer_id();

        let relay = RelayServer::new(
            peer_id,
            relay::Config {
                max_reservations: config.relay.max_reservations,
                max_circuits: config.relay.max_circuits,
                max_circuits_per_peer: config.relay.max_circuits_per_peer,
                // Past u32 seconds libp2p-relay panics (config::MAX_DURATION).
                max_circuit_duration: config.relay.circuit_duration.min(MAX_DURATION),
                max_circuit_bytes: config.relay.circuit_bytes,
                ..relay::Config::default()
            },
            config.relay_mode,
            config.trusted_peers(),
        );

        let identify = identify::Behaviour::new(
            identify::Config::new(protocol::IDENTIFY_PROTOCOL_VERSION.to_owned(), key.public())
                .with_agent_version(protocol::agent_version())
                .with_push_listen_addr_updates(true),
        );

        // libp2p's AutoNAT defaults are tuned for the IPFS network (first probe after 15 s, retry
        // after 90 s). A tunnel user waits on this verdict, so probe sooner and retry faster.
        let autonat = autonat::Behaviour::new(
            peer_id,
            autonat::Config {
                boot_delay: config.timing.autonat_boot_delay,
                retry_interval: Duration::from_secs(15),
                refresh_interval: Duration::from_secs(5 * 60),
                throttle_server_period: Duration::from_secs(10),
                only_global_ips: !config.autonat_private_ips,
                ..autonat::Config::default()
            },
        );

        let mut kad_config = kad::Config::new(protocol::KADEMLIA);
        kad_config.set_query_timeout(Duration::from_secs(30));
        // What others PUT is checked first (node/records.rs `admit_put`): only valid peer
        // records, never an older one over a newer. Provider records are not used, never stored.
        kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
        let kademlia = kad::Behaviour::with_config(peer_id, MemoryStore::new(peer_id), kad_config);

        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(config.max_connections))
                .with_max_established_per_peer(Some(config.max_connections_per_peer))
                .with_max_pending_incoming(Some(config.max_pending_incoming)),
        );

        Ok(Self {
            limits,
            memory: memory_connection_limits::Behaviour::with_max_bytes(
                usize::try_from(config.max_memory).unwrap_or(usize::MAX),
            ),
            relay_client,
            relay,
            dcutr: dcutr::Behaviour::new(peer_id),
            identify,
            autonat,
            kademlia,
            mdns: mdns(peer_id, config.mdns)?,
            port_map: port_map::Behaviour::new(config.upnp, config.autonat_private_ips, punched),
            ping: ping::Behaviour::default(),
            streams: stream::Behaviour::with_max_inbound_streams(config.max_streams_per_connection),
        })
    }
}

#[cfg(feature = "mdns")]
fn mdns(peer_id: libp2p::PeerId, enabled: bool) -> Result<Mdns, BehaviourError> {
    let inner = if enabled {
        Some(
            libp2p::mdns::tokio::Behaviour::new(libp2p::mdns::Config::default(), peer_id)
                .map_err(BehaviourError::Mdns)?,
        )
    } else {
        None
    };
    Ok(inner.into())
}

#[cfg(not(feature = "mdns"))]
fn mdns(_: libp2p::PeerId, enabled: bool) -> Result<Mdns, BehaviourError> {
    if enabled {
        tracing::warn!(
            "mDNS requested, but this build has no `mdns` feature: LAN discovery is off"
        );
    }
    Ok(libp2p::swarm::dummy::Behaviour)
}
