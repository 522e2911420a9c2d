//! libp2p's relay server (`relay::Behaviour`), with one upstream bug kept from crashing
//! relayed connections.
//!
//! libp2p-relay 0.22 gives every relayed connection a `dummy` handler, but when it turns its
//! HOP advertisement on or off (automatically, as our confirmed external addresses come and
//! go) it sends a `SetStatus` event to *every* connection it knows, relayed ones included.
//! libp2p-swarm's `Either` handler then hits `unreachable!()` and the connection's task
//! panics: a tunnel carried over that relayed connection dies. (Seen in CI: a private peer's
//! circuit address is confirmed, then taken back by the driver, while a peer is connected to
//! it through the relay.) [`RelayServer`] remembers which connections are relayed and drops
//! events addressed to them; everything else passes through unchanged.

use std::{
    collections::HashSet,
    task::{Context, Poll, ready},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    relay,
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
        THandlerInEvent, THandlerOutEvent, ToSwarm,
    },
};
use punchgate_machine::node::is_relayed;

/// `relay::Behaviour` that never addresses a relayed connection's handler (module docs).
pub struct RelayServer {
    inner: relay::Behaviour,
    /// Open connections that run over a relay circuit (their handler takes no events).
    relayed: HashSet<ConnectionId>,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("relayed", &self.relayed)
            .finish_non_exhaustive()
    }
}

impl RelayServer {
    /// Wraps a relay server.
    pub fn new(inner: relay::Behaviour) -> Self {
        Self {
            inner,
            relayed: HashSet::new(),
        }
    }
}

impl NetworkBehaviour for RelayServer {
    type ConnectionHandler = <relay::Behaviour as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = relay::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let handler = self.inner.handle_established_inbound_connection(
            connection_id,
            peer,
            local_addr,
            remote_addr,
        )?;
        if is_relayed(local_addr) {
            self.relayed.insert(connection_id);
        }
        Ok(handler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let handler = self.inner.handle_established_outbound_connection(
            connection_id,
            peer,
            addr,
            role_override,
            port_use,
        )?;
        if is_relayed(addr) {
            self.relayed.insert(connection_id);
        }
        Ok(handler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = &event {
            self.relayed.remove(&closed.connection_id);
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<relay::Event, THandlerInEvent<Self>>> {
        loop {
            let action = ready!(self.inner.poll(cx));
            if let ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(connection),
                ..
            } = &action
            {
                if self.relayed.contains(connection) {
                    tracing::debug!(
                        %peer_id,
                        ?connection,
                        "relay server event for a relayed connection dropped"
                    );
                    continue;
                }
            }
            return Poll::Ready(action);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use libp2p::{
        core::ConnectedPoint,
        identity::Keypair,
        swarm::behaviour::{ConnectionEstablished, ExternalAddrConfirmed},
    };

    use super::*;

    /// A local address of a connection that came in through a relay.
    const CIRCUIT: &str = "/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWRAyrXFngvk4k2tkiYpYR1LwxzPxeib9cASozbPLuRtbB/p2p-circuit";

    /// Everything the server wants the swarm to do now.
    fn drain(server: &mut RelayServer) -> Vec<ToSwarm<relay::Event, THandlerInEvent<RelayServer>>> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut actions = Vec::new();
        while let Poll::Ready(action) = server.poll(&mut cx) {
            actions.push(action);
        }
        actions
    }

    fn establish(server: &mut RelayServer, id: ConnectionId, local: &Multiaddr) {
        let peer = PeerId::random();
        let remote: Multiaddr = "/ip4/198.51.100.7/tcp/4001".parse().expect("address");
        server
            .handle_established_inbound_connection(id, peer, local, &remote)
            .expect("accepted");
        let endpoint = ConnectedPoint::Listener {
            local_addr: local.clone(),
            send_back_addr: remote,
        };
        server.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: id,
            endpoint: &endpoint,
            failed_addresses: &[],
            other_established: 0,
        }));
    }

    /// The upstream bug, and that only the relayed connection is spared: once an external
    /// address is confirmed the relay server turns its advertisement on and tells each
    /// connection's handler. Without the filter the relayed connection would get `SetStatus`
    /// too, which panics its connection task in libp2p-swarm.
    #[test]
    fn a_status_change_reaches_direct_connections_only() {
        let local = Keypair::generate_ed25519().public().to_peer_id();
        let mut server = RelayServer::new(relay::Behaviour::new(local, relay::Config::default()));
        let (direct, relayed) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        establish(
            &mut server,
            direct,
            &"/ip4/203.0.113.5/tcp/4001".parse().expect("address"),
        );
        let circuit: Multiaddr = CIRCUIT.parse().expect("address");
        establish(&mut server, relayed, &circuit);
        drain(&mut server);

        let external: Multiaddr = "/ip4/203.0.113.5/tcp/4001".parse().expect("address");
        server.on_swarm_event(FromSwarm::ExternalAddrConfirmed(ExternalAddrConfirmed {
            addr: &external,
        }));
        let notified: Vec<ConnectionId> = drain(&mut server)
            .into_iter()
            .filter_map(|action| match action {
                ToSwarm::NotifyHandler {
                    handler: NotifyHandler::One(id),
                    ..
                } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(notified, [direct]);
    }

    #[test]
    fn a_closed_relayed_connection_is_forgotten() {
        let local = Keypair::generate_ed25519().public().to_peer_id();
        let mut server = RelayServer::new(relay::Behaviour::new(local, relay::Config::default()));
        let id = ConnectionId::new_unchecked(7);
        let circuit: Multiaddr = CIRCUIT.parse().expect("address");
        establish(&mut server, id, &circuit);
        assert!(server.relayed.contains(&id));
        let endpoint = ConnectedPoint::Listener {
            local_addr: circuit,
            send_back_addr: "/ip4/198.51.100.7/tcp/4001".parse().expect("address"),
        };
        server.on_swarm_event(FromSwarm::ConnectionClosed(
            libp2p::swarm::behaviour::ConnectionClosed {
                peer_id: PeerId::random(),
                connection_id: id,
                endpoint: &endpoint,
                cause: None,
                remaining_established: 0,
            },
        ));
        assert!(server.relayed.is_empty());
    }
}
