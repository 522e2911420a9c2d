//! libp2p's relay server (`relay::Behaviour`), with long circuits for trusted peers only, and
//! one upstream bug kept from crashing relayed connections.
//!
//! # Whom it relays for, and how long
//! The operator chooses ([`RelayMode`]): `off` relays for nobody (every connection gets libp2p's
//! `dummy` handler, which speaks no relay protocol); `any` gives every circuit the long limits
//! (`--relay-circuit-duration`, `--relay-circuit-bytes`); `trusted`, the default, gives them
//! only to circuits between two trusted peers and libp2p's default limits (2 min, 128 KiB) to
//! every other, enough to coordinate a hole punch.
//!
//! libp2p-relay 0.22 has one circuit limit for the whole server. But it fixes a circuit's limits
//! in the *connection handler*, from the config the handler was built with: the source's
//! handler drives the circuit (and enforces its limits), the destination's tells the destination
//! what they are. So [`RelayServer`] keeps a second `relay::Behaviour` with the short limits
//! that only builds handlers: a connection from a trusted peer gets a handler from the main
//! (long) server, every other one from the short one, and all their events go to the main
//! server, which alone keeps reservations and circuits.
//!
//! What that gives, exactly: the relay *enforces* the source's limits and *announces* the
//! destination's to the destination. Trusted → trusted: long, announced long. Untrusted →
//! anyone: short, enforced and announced to the source as short (so a Punchgate source opens no
//! stream on it); a trusted destination hears "long", which is why a node never opens its own
//! streams on an inbound circuit (`punchgate_machine::paths`). Trusted → untrusted: driven long,
//! announced short to the destination, whose tunnel server then refuses tunnels on it. So for
//! tunnels both ends must be trusted; a trusted source may still use a long circuit for other
//! protocols a stranger destination accepts (the operator trusted that source). Upstream change
//! that would let us delete this: a per-circuit limit callback in `relay::Config` (rust-libp2p
//! has none as of libp2p-relay 0.22).
//!
//! # When it advertises the relay protocol
//!
//! Upstream turns the HOP advertisement on when the swarm has a confirmed external address,
//! and libp2p's relay client confirms our own circuit address as one: a private node would
//! then tell its peers it is a public relay. The node's machine decides instead, from the NAT
//! status it acts on ([`RelayServer::set_public`], `Command::SetPublic`), with upstream's
//! `set_status`.
//!
//! # The upstream bug
//!
//! libp2p-relay 0.22 gives every relayed connection a `dummy` handler, but when it turns its
//! HOP advertisement on or off it sends a `SetStatus` event to *every* connection it knows,
//! relayed ones included. libp2p-swarm's `Either` handler then hits `unreachable!()` and the
//! connection's task panics: a tunnel carried over that relayed connection dies. (Seen in CI,
//! when the status followed external addresses.) [`RelayServer`] remembers which connections
//! are relayed and drops events addressed to them; everything else passes through unchanged.
//! The test `upstream_still_addresses_the_dummy_handlers_of_relayed_connections` runs plain
//! upstream: when it fails, upstream has fixed the bug, and the `dummies` filter goes (the
//! wrapper stays only as long as it also splits long and short circuits).

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
        THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
    },
};
use punchgate_machine::node::is_relayed;

use crate::{
    access::RelayMode,
    config::{SHORT_CIRCUIT_BYTES, SHORT_CIRCUIT_DURATION},
};

/// `relay::Behaviour` with long circuits for trusted peers only, that never addresses a
/// `dummy` handler (module docs).
pub struct RelayServer {
    /// The server: reservations, circuits, and the handlers of trusted peers (long limits).
    inner: relay::Behaviour,
    /// Builds the handlers of everyone else (short limits); keeps no state that matters.
    short: relay::Behaviour,
    /// Whom long circuits are for.
    mode: RelayMode,
    /// Peers trusted with long circuits (`--trust`, and the peers named in `--allow`).
    trusted: HashSet<PeerId>,
    /// Open connections with a `dummy` handler (relayed ones, or all when relaying is off):
    /// their handler takes no events.
    dummies: HashSet<ConnectionId>,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("mode", &self.mode)
            .field("trusted", &self.trusted.len())
            .field("dummies", &self.dummies)
            .finish_non_exhaustive()
    }
}

impl RelayServer {
    /// A relay server for `local`: `config`'s circuit limits for long circuits, libp2p's
    /// default ones for short circuits; `mode` and `trusted` say which is which.
    pub fn new(
        local: PeerId,
        config: relay::Config,
        mode: RelayMode,
        trusted: HashSet<PeerId>,
    ) -> Self {
        let short = relay::Config {
            reservation_duration: config.reservation_duration,
            max_circuit_duration: SHORT_CIRCUIT_DURATION,
            max_circuit_bytes: SHORT_CIRCUIT_BYTES,
            ..relay::Config::default()
        };
        Self {
            inner: relay::Behaviour::new(local, config),
            short: relay::Behaviour::new(local, short),
            mode,
            trusted,
            dummies: HashSet::new(),
        }
    }

    /// Advertise the relay protocol (and serve reservations) on every connection, or on none:
    /// the machine's call, from the NAT status (module docs).
    pub fn set_public(&mut self, public: bool) {
        let status = if public {
            relay::Status::Enable
        } else {
            relay::Status::Disable
        };
        // Both servers build handlers, which start with their server's status.
        self.inner.set_status(Some(status));
        self.short.set_status(Some(status));
    }

    /// Peers trusted with long circuits from now on (a reload): a connection's handler keeps
    /// the limits it was built with, so this applies to connections opened after it.
    pub fn set_trusted(&mut self, trusted: HashSet<PeerId>) {
        self.trusted = trusted;
    }

    /// Whether circuits from (or to) `peer` get the long limits.
    pub fn trusts(&self, peer: &PeerId) -> bool {
        match self.mode {
            RelayMode::Any => true,
            RelayMode::Trusted => self.trusted.contains(peer),
            RelayMode::Off => false,
        }
    }

    /// Whether a circuit from `src` to `dst` is long.
    pub fn is_long(&self, src: &PeerId, dst: &PeerId) -> bool {
        self.trusts(src) && self.trusts(dst)
    }

    /// The handler for a new connection to `peer` (`relayed`: it runs over a circuit itself).
    fn handler(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        relayed: bool,
        build: impl FnOnce(&mut relay::Behaviour) -> Result<THandler<Self>, ConnectionDenied>,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if self.mode == RelayMode::Off {
            self.dummies.insert(connection);
            return Ok(either::Either::Right(dummy::ConnectionHandler));
        }
        let handler = if self.trusts(&peer) {
            build(&mut self.inner)?
        } else {
            build(&mut self.short)?
        };
        if relayed {
            self.dummies.insert(connection);
        }
        Ok(handler)
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
        self.handler(connection_id, peer, is_relayed(local_addr), |server| {
            server.handle_established_inbound_connection(
                connection_id,
                peer,
                local_addr,
                remote_addr,
            )
        })
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
        self.handler(connection_id, peer, is_relayed(addr), |server| {
            server.handle_established_outbound_connection(
                connection_id,
                peer,
                addr,
                role_override,
                port_use,
            )
        })
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = &event {
            self.dummies.remove(&closed.connection_id);
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
        // The short server knows no connection: all it says is that its status changed.
        while self.short.poll(cx).is_ready() {}
        loop {
            let action = ready!(self.inner.poll(cx));
            if let ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(connection),
                ..
            } = &action
            {
                if self.dummies.contains(connection) {
                    tracing::debug!(
                        %peer_id,
                        ?connection,
                        "relay server event for a connection without a relay handler dropped"
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

    /// The `SetStatus` events a status change sends, by connection.
    fn notified<B>(actions: Vec<ToSwarm<relay::Event, B>>) -> Vec<ConnectionId> {
        actions
            .into_iter()
            .filter_map(|action| match action {
                ToSwarm::NotifyHandler {
                    handler: NotifyHandler::One(id),
                    ..
                } => Some(id),
                _ => None,
            })
            .collect()
    }

    /// The upstream bug in plain libp2p-relay: a status change addresses the `dummy` handler
    /// of a relayed connection, which panics that connection's task in libp2p-swarm. When
    /// this fails, upstream fixed it: delete `RelayServer::dummies` and its filter.
    #[test]
    fn upstream_still_addresses_the_dummy_handlers_of_relayed_connections() {
        let local = Keypair::generate_ed25519().public().to_peer_id();
        let mut upstream = relay::Behaviour::new(local, relay::Config::default());
        let relayed = ConnectionId::new_unchecked(1);
        let (peer, circuit) = (
            PeerId::random(),
            CIRCUIT.parse::<Multiaddr>().expect("addr"),
        );
        let remote: Multiaddr = "/ip4/198.51.100.7/tcp/4001".parse().expect("address");
        let handler = upstream
            .handle_established_inbound_connection(relayed, peer, &circuit, &remote)
            .expect("accepted");
        assert!(
            matches!(handler, either::Either::Right(_)),
            "a relayed connection gets the dummy handler"
        );
        upstream.on_swarm_event(FromSwarm::ConnectionEstablished(ConnectionEstablished {
            peer_id: peer,
            connection_id: relayed,
            endpoint: &ConnectedPoint::Listener {
                local_addr: circuit,
                send_back_addr: remote,
            },
            failed_addresses: &[],
            other_established: 0,
        }));
        upstream.set_status(Some(relay::Status::Enable));
        let mut cx = Context::from_waker(Waker::noop());
        let mut actions = Vec::new();
        while let Poll::Ready(action) = upstream.poll(&mut cx) {
            actions.push(action);
        }
        assert_eq!(
            notified(actions),
            [relayed],
            "upstream no longer sends SetStatus to a dummy handler: delete RelayServer's filter"
        );
    }

    /// The wrapper spares the relayed connection: the machine turns the server public, the
    /// direct connection's handler hears of it, the relayed one's does not.
    #[test]
    fn a_status_change_reaches_direct_connections_only() {
        let local = Keypair::generate_ed25519().public().to_peer_id();
        let mut server = RelayServer::new(
            local,
            relay::Config::default(),
            RelayMode::Any,
            HashSet::new(),
        );
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

        server.set_public(true);
        assert_eq!(notified(drain(&mut server)), [direct]);
        // A confirmed external address (a circuit's, say) changes nothing: the machine decides.
        server.set_public(false);
        drain(&mut server);
        let external: Multiaddr = "/ip4/203.0.113.5/tcp/4001".parse().expect("address");
        server.on_swarm_event(FromSwarm::ExternalAddrConfirmed(ExternalAddrConfirmed {
            addr: &external,
        }));
        assert!(notified(drain(&mut server)).is_empty());
    }

    /// `off`: every connection gets the dummy handler (no relay protocol), and no event ever
    /// reaches one (a `SetStatus` would panic its connection task).
    #[test]
    fn relaying_off_gives_every_connection_a_dummy_and_never_addresses_it() {
        let local = Keypair::generate_ed25519().public().to_peer_id();
        let mut server = RelayServer::new(
            local,
            relay::Config::default(),
            RelayMode::Off,
            HashSet::new(),
        );
        let direct = ConnectionId::new_unchecked(1);
        establish(
            &mut server,
            direct,
            &"/ip4/203.0.113.5/tcp/4001".parse().expect("address"),
        );
        assert!(server.dummies.contains(&direct));
        server.set_public(true);
        let notified = drain(&mut server)
            .into_iter()
            .filter(|a| matches!(a, ToSwarm::NotifyHandler { .. }))
            .count();
        assert_eq!(notified, 0);
        assert!(!server.trusts(&PeerId::random()));
    }

    /// `trusted`: long circuits only between two trusted peers; `any`: between any.
    #[test]
    fn long_circuits_need_both_ends_trusted() {
        let local = Keypair::generate_ed25519().public().to_peer_id();
        let (a, b, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
        let server = RelayServer::new(
            local,
            relay::Config::default(),
            RelayMode::Trusted,
            HashSet::from([a, b]),
        );
        assert!(server.is_long(&a, &b));
        assert!(!server.is_long(&a, &stranger));
        assert!(!server.is_long(&stranger, &b));
        let any = RelayServer::new(
            local,
            relay::Config::default(),
            RelayMode::Any,
            HashSet::new(),
        );
        assert!(any.is_long(&stranger, &PeerId::random()));
    }

    #[test]
    fn a_closed_relayed_connection_is_forgotten() {
        let local = Keypair::generate_ed25519().public().to_peer_id();
        let mut server = RelayServer::new(
            local,
            relay::Config::default(),
            RelayMode::Any,
            HashSet::new(),
        );
        let id = ConnectionId::new_unchecked(7);
        let circuit: Multiaddr = CIRCUIT.parse().expect("address");
        establish(&mut server, id, &circuit);
        assert!(server.dummies.contains(&id));
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
        assert!(server.dummies.is_empty());
    }
}
