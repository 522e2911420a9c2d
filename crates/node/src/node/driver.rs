//! The driver: the only code that touches the `Swarm`.
//!
//! It translates swarm events into [`punchgate_machine::Event`]s, executes the machine's
//! [`Command`]s, runs the machine's timers, and serves [`Request`]s from handles. The one
//! decision it keeps is bookkeeping the machine need not see: which DHT queries belong to which
//! peer lookup, and which stream requests wait for which peer.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    time::Duration,
};

use futures::StreamExt as _;
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat,
    core::transport::ListenerId,
    dcutr, identify,
    identity::Keypair,
    kad::{
        self, GetClosestPeersError, GetRecordOk, QueryId, QueryResult, Quorum, Record, RecordKey,
    },
    multiaddr::Protocol,
    ping, relay,
    swarm::{
        ConnectionId, SwarmEvent,
        dial_opts::{DialOpts, PeerCondition},
    },
};
use punchgate_machine::{
    Command, Config as MachineConfig, DialReason, Event, NatStatus, PathKind, PathSelection,
    RelayState, State, Timer, introductions,
    reach::{self, ReachStep},
};
use tokio::{
    sync::{broadcast, mpsc, oneshot},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker, time::DelayQueue};

use super::{
    ConnectError, ConnectionStatus, NodeEvent, NodeStatus, Request, StartError, circuits,
    introduce, records,
    relay_gate::{self, Parked, RelayGate},
};
use crate::{
    access::DenialLog,
    config::{NodeConfig, Timing},
    net::{Behaviour, BehaviourEvent, stream::ConnectionInfo},
    protocol,
};

mod birthday;
mod port_map;

pub(super) use birthday::Birthday;

/// Stream requests that may wait for a path at once.
const MAX_WAITING: usize = 4096;
/// Exact dials ([`Request::DialExact`]) in flight at once.
const MAX_EXACT_DIALS: usize = 64;
/// Peers whose addresses we were told (handles, DHT answers) and remember.
const MAX_HINTED_PEERS: usize = 1024;
/// Addresses remembered per hinted peer.
const MAX_HINTS_PER_PEER: usize = 32;
/// Our own observed addresses kept for the peer record.
const MAX_OBSERVED_SELF: usize = 4;
/// Introductions we ask for at once.
const MAX_INTRODUCTIONS_IN_FLIGHT: usize = 32;
/// A peer is punched through an introduction at most this often.
const PUNCH_INTERVAL: Duration = Duration::from_secs(10);

pub(super) struct Driver {
    swarm: Swarm<Behaviour>,
    /// The state machine; `None` only while a step is in progress.
    machine: Option<State<ConnectionId>>,
    /// Signs the peer record.
    keypair: Keypair,
    timing: Timing,
    /// Requests from handles.
    requests: mpsc::Receiver<Request>,
    /// For tasks the driver spawns to report back.
    requests_tx: mpsc::Sender<Request>,
    /// Tasks the driver spawns (introduction requests), waited for at shutdown.
    tasks: TaskTracker,
    /// Where [`NodeEvent`]s go.
    events: broadcast::Sender<NodeEvent>,
    /// Cancelled to stop the node (by anyone); cancelled by us when the machine says stop.
    shutdown: CancellationToken,
    /// The machine's timers.
    timers: DelayQueue<Timer>,
    /// Listeners that are relay reservations.
    relay_listeners: HashMap<ListenerId, RelayListener>,
    /// Addresses handles or DHT records gave us for peers.
    hints: HashMap<PeerId, records::PeerAddrs>,
    /// Addresses others observe us at (identify), newest first, for our peer record.
    observed_self: VecDeque<Multiaddr>,
    /// When each peer was last punched through an introduction.
    punched: HashMap<PeerId, Instant>,
    /// Introduction requests in flight.
    introductions_in_flight: usize,
    /// Sequence number of the last published peer record (milliseconds since the epoch, and
    /// always above the previous one).
    record_seq: u64,
    /// The "no peer speaks our DHT" warning was logged (once per run is enough).
    warned_no_dht: bool,
    /// A bootstrap of ours ended without a DHT server among our peers.
    bootstrapped_without_dht: bool,
    /// Open connections' last round trip (the first one is logged).
    rtts: HashMap<ConnectionId, Duration>,
    /// Punchgate's metrics.
    metrics: crate::metrics::Metrics,
    /// libp2p's metrics, recorded from the swarm's and the behaviours' events.
    libp2p_metrics: libp2p::metrics::Metrics,
    /// What we serve as a relay (for the metrics).
    relay_served: RelayServed,
    /// Birthday punching: our mapping, punched ports, the punch tasks.
    birthday: Birthday,
    /// One line per 10 s about connections refused over a limit, with the count since the last.
    limit_log: punchgate_machine::limit::Every,
    /// Introductions acted on in the current minute.
    introduction_gate: introductions::IntroductionGate,
    /// Rate-limits log lines strangers can cause (relay requests, invalid records), per peer.
    peer_log: DenialLog,
    /// Private addresses show reachability (`autonat_private_ips`: a lab, a LAN-only mesh).
    private_ips_count: bool,
    /// Dials the driver started and that are still in flight; `true` for a redial with Noise
    /// after a TLS refusal (never redialled again).
    own_dials: HashMap<ConnectionId, bool>,
    /// Peer-record puts in flight, with their sequence numbers.
    record_puts: HashMap<QueryId, u64>,
    /// A publication waits for the put in flight: two puts in flight at once can reach a DHT
    /// node in either order, and the older record (no circuit address yet) would win.
    publish_queued: bool,
    /// Stream requests waiting for a connection or a hole punch.
    waiting: Vec<Waiting>,
    /// Peers being reached on behalf of waiting requests.
    reaching: HashMap<PeerId, Reach>,
    /// DHT queries looking a peer up.
    lookups: HashMap<QueryId, PeerId>,
    /// Per-peer timing of relayed → direct upgrades.
    contacts: HashMap<PeerId, Contact>,
    /// Pairs relays' circuit limits with the relayed connections they belong to.
    circuits: circuits::Circuits,
    /// Circuit dials waiting for the connection to their relay.
    relay_gate: RelayGate<oneshot::Sender<Result<ConnectionInfo, ConnectError>>>,
    /// Exact dials waiting for their outcome, by the dial's connection id.
    exact_dials: HashMap<ConnectionId, oneshot::Sender<Result<ConnectionInfo, ConnectError>>>,
    /// The machine said stop.
    stopping: bool,
}

/// Where the driver reports what happened.
pub(super) struct Outputs {
    /// [`NodeEvent`]s for handles.
    pub(super) events: broadcast::Sender<NodeEvent>,
    /// Punchgate's metrics.
    pub(super) metrics: crate::metrics::Metrics,
    /// libp2p's metrics.
    pub(super) libp2p_metrics: libp2p::metrics::Metrics,
    /// Birthday punching: the punch tasks' state, the punched ports, our mapping's channel.
    pub(super) birthday: Birthday,
}

struct RelayListener {
    relay: PeerId,
    /// The relay accepted: a close now means the reservation was lost, not refused.
    accepted: bool,
    /// Released while the request was still unanswered: removed once it is answered.
    /// (libp2p-relay 0.22's client panics, "Relay connection exist", when a reservation is
    /// accepted for a listener removed while its request was in flight.)
    released: bool,
}

struct Waiting {
    peer: PeerId,
    /// After this, a relayed connection is good enough.
    direct_deadline: Instant,
    /// After this, the request fails.
    give_up: Instant,
    reply: oneshot::Sender<Result<ConnectionInfo, ConnectError>>,
}

#[derive(Default)]
struct Reach {
    /// A dial is in progress.
    dialing: bool,
    /// Our dial in progress: only its failure ends `dialing` (other behaviours dial the same
    /// peer with fewer addresses, and their failures say nothing about ours).
    dial: Option<ConnectionId>,
    /// DHT queries in flight for this peer.
    queries: usize,
    /// Lookups that ended without a usable address.
    failed_lookups: u32,
    /// When to dial or look up again after a fruitless lookup.
    retry_at: Option<Instant>,
    /// The last dial error, for the final error message.
    last_error: Option<String>,
    /// When the DHT lookup in flight started (for its metrics).
    lookup_started: Option<Instant>,
}

struct Contact {
    /// Our first dial of the peer, or its first connection to us.
    first: Instant,
    /// When its first relayed connection opened.
    relayed_at: Option<Instant>,
    /// Direct dial attempts started (ours and our behaviours').
    direct_attempts: u32,
    /// Dials still in flight. When the last fails with no connection open, the contact ends: a
    /// later dial starts a new one, so a dial that failed long ago does not start the clock.
    dials: HashSet<ConnectionId>,
}

impl Driver {
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        config: &NodeConfig,
        requests: mpsc::Receiver<Request>,
        requests_tx: mpsc::Sender<Request>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        Outputs {
            events,
            metrics,
            libp2p_metrics,
            birthday,
        }: Outputs,
    ) -> Self {
        let machine_config = MachineConfig {
            bootstrap: config
                .bootstrap
                .iter()
                .map(|b| (b.peer, b.addr.clone()))
                .collect(),
            external_addresses: config.external_addresses.clone(),
            nat_override: config.nat_override,
            discovery_timeout: config.timing.discovery_timeout,
            republish_interval: config.timing.republish_interval,
            private_addrs_ok: config.autonat_private_ips,
            ..MachineConfig::default()
        };
        Self {
            swarm,
            machine: Some(State::new(machine_config)),
            keypair: config.keypair.clone(),
            timing: config.timing.clone(),
            requests,
            requests_tx,
            tasks,
            events,
            shutdown,
            timers: DelayQueue::new(),
            relay_listeners: HashMap::new(),
            hints: HashMap::new(),
            observed_self: VecDeque::new(),
            punched: HashMap::new(),
            introductions_in_flight: 0,
            record_seq: 0,
            warned_no_dht: false,
            bootstrapped_without_dht: false,
            private_ips_count: config.autonat_private_ips,
            peer_log: DenialLog::default(),
            introduction_gate: introductions::IntroductionGate::default(),
            limit_log: punchgate_machine::limit::Every::new(crate::access::DENIAL_LOG_INTERVAL),
            rtts: HashMap::new(),
            relay_served: RelayServed::new(metrics.clone()),
            birthday,
            metrics,
            libp2p_metrics,
            own_dials: HashMap::new(),
            record_puts: HashMap::new(),
            publish_queued: false,
            waiting: Vec::new(),
            reaching: HashMap::new(),
            lookups: HashMap::new(),
            contacts: HashMap::new(),
            circuits: circuits::Circuits::default(),
            relay_gate: RelayGate::default(),
            exact_dials: HashMap::new(),
            stopping: false,
        }
    }

    fn machine(&self) -> &State<ConnectionId> {
        self.machine
            .as_ref()
            .expect("the machine is only absent during a step")
    }

    /// Opens the listeners and waits until each has reported an address. Runs before
    /// [`Self::run`] so that outgoing TCP dials can reuse the listen port (hole punching needs
    /// the port others observe to be the one we listen on).
    pub(super) async fn listen(
        &mut self,
        addrs: &[Multiaddr],
        timeout: Duration,
    ) -> Result<Vec<Multiaddr>, StartError> {
        let mut pending = HashMap::new();
        for addr in addrs {
            let id = self
                .swarm
                .listen_on(addr.clone())
                .map_err(|e| StartError::Listen {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
            pending.insert(id, addr.clone());
        }
        let deadline = Instant::now() + timeout;
        let mut reported = Vec::new();
        while !pending.is_empty() {
            let event = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .map_err(|_| StartError::Listen {
                    addr: pending
                        .values()
                        .next()
                        .cloned()
                        .unwrap_or_else(Multiaddr::empty),
                    reason: format!("no address reported within {timeout:?}"),
                })?;
            match &event {
                SwarmEvent::NewListenAddr {
                    listener_id,
                    address,
                } if pending.remove(listener_id).is_some() => {
                    reported.push(address.clone());
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } => {
                    if let Some(addr) = pending.remove(listener_id) {
                        return Err(StartError::Listen {
                            addr,
                            reason: match reason {
                                Ok(()) => "the listener closed".to_owned(),
                                Err(e) => e.to_string(),
                            },
                        });
                    }
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    if let Some(addr) = pending.remove(listener_id) {
                        return Err(StartError::Listen {
                            addr,
                            reason: error.to_string(),
                        });
                    }
                }
                _ => {}
            }
            self.on_swarm_event(event);
        }
        Ok(reported)
    }

    /// The event loop. Returns when the node stops.
    pub(super) async fn run(mut self) {
        self.step(Event::Started);
        while !self.stopping {
            let deadline = self.next_deadline();
            tokio::select! {
                // Swarm first: its events can answer requests waiting below.
                biased;
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(request) = self.requests.recv() => self.on_request(request),
                Some(expired) = self.timers.next() => {
                    self.step(Event::TimerFired(expired.into_inner()));
                }
                () = sleep_until(deadline) => self.on_deadline(),
                () = self.shutdown.cancelled() => self.step(Event::Shutdown),
            }
        }
        for w in self.waiting.drain(..) {
            let _ = w.reply.send(Err(ConnectError::Stopped));
        }
        self.release_port_mappings().await;
        tracing::info!("node stopped");
    }

    /// Feeds `event` (and any event a command produces at once) to the machine and executes the
    /// commands it returns.
    fn step(&mut self, event: Event<ConnectionId>) {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let machine = self.machine.take().expect("steps do not nest");
            let (phase, nat, assumed) = (machine.phase(), machine.nat(), machine.assumed_private());
            let label = event.name();
            let (machine, commands) = machine.step(event);
            let (new_phase, new_nat) = (machine.phase(), machine.nat());
            if machine.assumed_private() && !assumed {
                tracing::warn!(
                    after_s = machine.config().discovery_timeout.as_secs(),
                    hint = "a public node: pass --nat-status public or --external-address; otherwise check that peers can run AutoNAT against this node",
                    "NAT status still unknown and no peer has dialled us: acting as private, reserving a relay slot on the first relay known"
                );
            }
            self.machine = Some(machine);
            if new_phase != phase {
                tracing::info!(event = %label, from = ?phase, to = ?new_phase, commands = ?commands, "phase transition");
                let _ = self
                    .events
                    .send(NodeEvent::PhaseChanged { phase: new_phase });
            } else {
                tracing::debug!(event = %label, commands = ?commands, "event processed");
            }
            if new_nat != nat {
                tracing::info!(from = ?nat, to = ?new_nat, "nat status changed");
                self.say_where_reachable(new_nat);
                let _ = self
                    .events
                    .send(NodeEvent::NatStatusChanged { status: new_nat });
            }
            for command in commands {
                self.execute(command, &mut queue);
            }
        }
    }

    fn execute(&mut self, command: Command, queue: &mut VecDeque<Event<ConnectionId>>) {
        match command {
            Command::Dial {
                peer,
                addrs,
                reason,
            } => {
                // A reversal dial goes ahead although a (relayed) connection exists.
                let condition = match reason {
                    DialReason::Reversal | DialReason::AfterPunch => PeerCondition::Always,
                    _ => PeerCondition::DisconnectedAndNotDialing,
                };
                tracing::info!(%peer, ?reason, addrs = ?addrs, "dialing");
                let direct = addrs
                    .iter()
                    .any(|a| !punchgate_machine::node::is_relayed(a));
                let opts = DialOpts::peer_id(peer)
                    .condition(condition)
                    .addresses(addrs)
                    .build();
                if let Err(error) = self.dial(peer, opts, direct) {
                    tracing::debug!(%peer, %error, "dial not started");
                }
            }
            Command::KademliaAddAddress { peer, addr } => {
                self.swarm.behaviour_mut().kademlia.add_address(&peer, addr);
            }
            Command::KademliaBootstrap => {
                if let Err(error) = self.swarm.behaviour_mut().kademlia.bootstrap() {
                    tracing::debug!(%error, "kademlia bootstrap not started");
                    queue.push_back(Event::KademliaBootstrapFailed);
                }
            }
            Command::RequestRelayReservation { relay, addrs } => {
                let addr = self.relay_address(relay, &addrs);
                let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
                match self.swarm.listen_on(circuit.clone()) {
                    Ok(id) => {
                        tracing::info!(%relay, addr = %circuit, "requesting relay reservation");
                        self.relay_listeners.insert(
                            id,
                            RelayListener {
                                relay,
                                accepted: false,
                                released: false,
                            },
                        );
                    }
                    Err(error) => queue.push_back(Event::RelayReservationFailed {
                        relay,
                        reason: error.to_string(),
                    }),
                }
            }
            Command::ReleaseRelayReservation { relay } => {
                let ids: Vec<ListenerId> = self
                    .relay_listeners
                    .iter()
                    .filter(|(_, l)| l.relay == relay)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    match self.relay_listeners.get_mut(&id) {
                        // Still waiting for the relay's answer: remove it once answered.
                        Some(listener) if !listener.accepted => listener.released = true,
                        _ => {
                            self.relay_listeners.remove(&id);
                            self.swarm.remove_listener(id);
                        }
                    }
                }
                self.count_reservations();
                tracing::info!(%relay, "released relay reservation");
            }
            Command::SetPublic { public } => {
                let behaviour = self.swarm.behaviour_mut();
                behaviour.relay.set_public(public);
                behaviour.kademlia.set_mode(Some(if public {
                    libp2p::kad::Mode::Server
                } else {
                    libp2p::kad::Mode::Client
                }));
                tracing::debug!(public, "relay advertisement and DHT server mode set");
            }
            Command::AddExternalAddress { addr } => {
                tracing::info!(%addr, "external address added");
                self.swarm.add_external_address(addr);
            }
            Command::PublishServices => self.publish(),
            Command::StartTimer { timer, after } => {
                self.timers.insert(timer, after);
            }
            Command::Shutdown => {
                tracing::info!("shutting down");
                self.stopping = true;
                self.shutdown.cancel();
            }
        }
    }

    /// Starts a dial of `peer` and notes it for the hole-punch timings: the first dial is the
    /// peer's first contact; a dial with a direct address counts as an attempt. (The swarm reports only the
    /// dials behaviours start, as `SwarmEvent::Dialing`.)
    fn dial(
        &mut self,
        peer: PeerId,
        opts: DialOpts,
        direct: bool,
    ) -> Result<(), libp2p::swarm::DialError> {
        let connection = opts.connection_id();
        self.swarm.dial(opts)?;
        self.own_dials.insert(connection, false);
        self.note_dial(peer, connection, direct);
        Ok(())
    }

    fn note_dial(&mut self, peer: PeerId, connection: ConnectionId, direct: bool) {
        let contact = self.contacts.entry(peer).or_insert_with(|| Contact {
            first: Instant::now(),
            relayed_at: None,
            direct_attempts: 0,
            dials: HashSet::new(),
        });
        contact.dials.insert(connection);
        if direct {
            contact.direct_attempts += 1;
        }
    }

    /// A connection was refused over a connection limit: one WARN line per 10 s for the whole
    /// node (a flood must not become a flood of log lines), with the count since the last.
    fn limit_refused(&mut self, from: &Multiaddr, reason: &str) {
        if let Some(held_back) = self.limit_log.admit(std::time::Instant::now()) {
            tracing::warn!(
                %from,
                %reason,
                refused = held_back + 1,
                hint = "raise --max-connections, --max-connections-per-peer, --max-pending-incoming or --max-memory if these are honest peers",
                "connection refused: over a connection limit"
            );
        }
    }

    /// A dial of `peer` failed. Ends the contact when no dial of it is left and no connection is open.
    fn dial_failed(&mut self, peer: PeerId, connection: ConnectionId) {
        if let Some(contact) = self.contacts.get_mut(&peer) {
            contact.dials.remove(&connection);
            let last = contact.dials.is_empty();
            if last && !self.swarm.is_connected(&peer) {
                self.contacts.remove(&peer);
            }
            if last {
                // Streams that waited for this dial (a failed punch, a short circuit) decide now.
                self.answer_waiting(peer);
            }
        }
    }

    fn dial_exact(
        &mut self,
        peer: PeerId,
        addr: Multiaddr,
        reply: oneshot::Sender<Result<ConnectionInfo, ConnectError>>,
    ) {
        if self.stopping {
            let _ = reply.send(Err(ConnectError::Stopped));
            return;
        }
        self.exact_dials.retain(|_, r| !r.is_closed());
        if self.exact_dials.len() >= MAX_EXACT_DIALS {
            let _ = reply.send(Err(ConnectError::Busy));
            return;
        }
        if let Some((relay, relay_addr)) = relay_gate::relay_part(&addr)
            && relay != peer
            && !self.swarm.is_connected(&relay)
        {
            // A circuit dial racing its relay's connection would fail at once (relay_gate.rs).
            tracing::info!(%peer, %addr, %relay, "circuit dial waits for the connection to its relay");
            let parked = Parked::Exact {
                peer,
                addr,
                reply,
                give_up: Instant::now() + self.timing.connect_timeout,
            };
            match self.relay_gate.park(relay, relay_addr, parked) {
                Ok(()) => self.dial_relay(relay),
                Err(parked) => {
                    if let Parked::Exact { reply, .. } = *parked {
                        let _ = reply.send(Err(ConnectError::Busy));
                    }
                }
            }
            return;
        }
        let direct = !punchgate_machine::node::is_relayed(&addr);
        tracing::info!(%peer, %addr, "dialing");
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Always)
            .addresses(vec![addr])
            .build();
        let connection = opts.connection_id();
        match self.dial(peer, opts, direct) {
            Ok(()) => {
                self.exact_dials.insert(connection, reply);
            }
            Err(error) => {
                let _ = reply.send(Err(ConnectError::Unreachable {
                    peer,
                    reason: error_chain(&error),
                }));
            }
        }
    }

    /// A dial failed because the peer refused TLS on some addresses (a stock libp2p peer that
    /// speaks only Noise): dials those addresses again, which the transport now secures with
    /// Noise (`net/security.rs`, `NoisePeers`), and hands the new dial whatever waited for the
    /// old one. `true` when it did.
    fn dial_again_with_noise(
        &mut self,
        peer: PeerId,
        failed: ConnectionId,
        error: &libp2p::swarm::DialError,
    ) -> bool {
        // Only our own dials, once: a behaviour's dial (a hole punch's) is its to retry, and a
        // redial that fails again is a failure.
        if self.own_dials.remove(&failed) != Some(false) {
            return false;
        }
        let libp2p::swarm::DialError::Transport(errors) = error else {
            return false;
        };
        let addrs: Vec<Multiaddr> = errors
            .iter()
            .filter(|(_, e)| crate::net::security::refused_tls(e))
            .map(|(addr, _)| addr.clone())
            .collect();
        if addrs.is_empty() {
            return false;
        }
        let addrs_relayed = addrs.iter().any(punchgate_machine::node::is_relayed);
        tracing::info!(%peer, addrs = ?addrs, "the peer refused TLS: dialing it with Noise");
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Always)
            .addresses(addrs)
            // Not from the port the refused connection used: that 4-tuple may still be closing
            // (TIME_WAIT here, or a NAT's conntrack entry), and a SYN on it goes nowhere.
            .allocate_new_port()
            .build();
        let again = opts.connection_id();
        let direct = !addrs_relayed;
        if let Err(error) = self.dial(peer, opts, direct) {
            tracing::debug!(%peer, %error, "Noise dial not started");
            return false;
        }
        self.own_dials.insert(again, true);
        self.dial_failed(peer, failed);
        if let Some(reply) = self.exact_dials.remove(&failed) {
            self.exact_dials.insert(again, reply);
        }
        if let Some(reach) = self.reaching.get_mut(&peer)
            && reach.dial == Some(failed)
        {
            reach.dial = Some(again);
        }
        self.relay_gate.redialled(failed, again);
        true
    }

    /// Dials `relay` for the circuit dials waiting on it, unless a dial of it is in flight
    /// already (whoever started it: its connection serves them all).
    fn dial_relay(&mut self, relay: PeerId) {
        let Some(addr) = self.relay_gate.relay_addr(&relay) else {
            return;
        };
        let opts = DialOpts::peer_id(relay)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .addresses(vec![addr])
            .extend_addresses_through_behaviour()
            .build();
        let connection = opts.connection_id();
        match self.dial(relay, opts, true) {
            Ok(()) => self.relay_gate.dialing(connection, relay),
            Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                tracing::debug!(%relay, "relay already being dialled; circuit dials wait for it");
            }
            Err(error) => {
                let reason = format!("cannot reach relay {relay}: {}", error_chain(&error));
                let parked = self.relay_gate.connected(&relay);
                self.fail_parked(parked, &reason);
            }
        }
    }

    /// Fails dials that waited for a relay that could not be reached.
    fn fail_parked(
        &mut self,
        parked: Vec<Parked<oneshot::Sender<Result<ConnectionInfo, ConnectError>>>>,
        reason: &str,
    ) {
        for dial in parked {
            match dial {
                Parked::Exact { peer, reply, .. } => {
                    tracing::info!(%peer, %reason, "circuit dial failed: its relay is unreachable");
                    let _ = reply.send(Err(ConnectError::Unreachable {
                        peer,
                        reason: reason.to_owned(),
                    }));
                }
                Parked::Reach { peer } => {
                    if let Some(reach) = self.reaching.get_mut(&peer) {
                        reach.last_error = Some(reason.to_owned());
                        reach.dialing = false;
                        reach.dial = None;
                        // Look again later (not at once: the relay may stay unreachable).
                        reach.failed_lookups += 1;
                        let delay = Duration::from_secs(1 << (reach.failed_lookups - 1).min(3));
                        reach.retry_at = Some(Instant::now() + delay);
                    }
                }
            }
        }
    }

    /// Resumes the dials that waited for `relay`, now connected.
    fn resume_parked(&mut self, relay: PeerId) {
        for dial in self.relay_gate.connected(&relay) {
            match dial {
                Parked::Exact {
                    peer, addr, reply, ..
                } => self.dial_exact(peer, addr, reply),
                Parked::Reach { peer } => {
                    if let Some(reach) = self.reaching.get_mut(&peer) {
                        reach.dialing = false;
                        reach.dial = None;
                        self.reach(peer);
                    }
                }
            }
        }
    }

    /// The address to reach `relay` at for a reservation: the one our direct connection to it
    /// uses if we have one (so no new connection is opened), else the first non-loopback one.
    fn relay_address(&self, relay: PeerId, addrs: &[Multiaddr]) -> Multiaddr {
        let connected = self
            .swarm
            .behaviour()
            .streams
            .new_control()
            .connections_of(relay)
            .into_iter()
            .find(|info| !info.relayed && info.outbound)
            .map(|info| without_p2p(info.remote_addr));
        connected
            .or_else(|| addrs.iter().find(|a| !is_loopback(a)).cloned())
            .or_else(|| addrs.first().cloned())
            .map(without_p2p)
            .unwrap_or_else(Multiaddr::empty)
    }

    /// Puts the signed peer record: addresses only. Service names are never published: a peer
    /// learns them from the operator who allowed it, and a stranger learns nothing.
    fn publish(&mut self) {
        if !self.record_puts.is_empty() {
            tracing::debug!("peer record queued behind the one being stored");
            self.publish_queued = true;
            return;
        }
        let me = *self.swarm.local_peer_id();
        // Circuit addresses first: they work from anywhere; then external addresses, then
        // listen addresses. A circuit address is a listen and an external address at once.
        let mut addrs: Vec<Multiaddr> = Vec::new();
        for addr in self
            .swarm
            .external_addresses()
            .chain(self.swarm.listeners())
        {
            if !addrs.contains(addr) && !self.birthday.is_punched(addr) {
                addrs.push(addr.clone());
            }
        }
        // The DHT is public: only addresses a stranger could use.
        let mut addrs = self.dht_addrs(addrs);
        addrs.sort_by_key(|a| !punchgate_machine::node::is_relayed(a));
        // The sequence number: milliseconds since the epoch, and above the last one, so a
        // record is newer than every record this identity signed before, across restarts.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.record_seq = now_ms.max(self.record_seq + 1);
        let seq = self.record_seq;
        let record = records::PeerAddrs {
            addrs,
            observed: self.dht_addrs(self.observed_self.iter().cloned()),
            seq,
        };
        let count = record.addrs.len();
        let observed = record.observed.len();
        let kademlia = &mut self.swarm.behaviour_mut().kademlia;
        if let Some(value) = records::encode(&self.keypair, &record) {
            let record = Record::new(RecordKey::new(&protocol::peer_record_key(&me)), value);
            match kademlia.put_record(record, Quorum::One) {
                Ok(query) => {
                    self.record_puts.insert(query, seq);
                }
                Err(error) => tracing::warn!(%error, "cannot store the peer record"),
            }
        }
        tracing::info!(addrs = count, observed, seq, "published peer record");
    }

    // --- Requests from handles -----------------------------------------------------------

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Path { peer, reply } => self.on_path_request(peer, reply),
            Request::AddAddresses { peer, addrs } => self.add_hints(
                peer,
                records::PeerAddrs {
                    addrs,
                    ..records::PeerAddrs::default()
                },
            ),
            Request::Introduced { from, peer, addrs } => self.on_introduced(from, peer, addrs),
            Request::DialExact { peer, addr, reply } => self.dial_exact(peer, addr, reply),
            Request::ListenPunched { port, reply } => {
                let _ = reply.send(self.listen_punched(port));
            }
            Request::IntroduceResult { peer, via, result } => {
                self.introductions_in_flight = self.introductions_in_flight.saturating_sub(1);
                self.on_introduce_result(peer, via, result);
            }
            Request::SetTrusted { trusted } => {
                tracing::debug!(trusted = trusted.len(), "relay trust set replaced");
                self.swarm.behaviour_mut().relay.set_trusted(trusted);
            }
            Request::Status { reply } => {
                let machine = self.machine();
                let _ = reply.send(NodeStatus {
                    phase: machine.phase(),
                    nat: machine.nat(),
                    relay: machine.relay().clone(),
                    connected_peers: machine.connected_peers(),
                    listen_addrs: self.swarm.listeners().cloned().collect(),
                    external_addrs: self.swarm.external_addresses().cloned().collect(),
                    connections: self
                        .swarm
                        .behaviour()
                        .streams
                        .new_control()
                        .connections()
                        .into_iter()
                        .map(|info| ConnectionStatus {
                            rtt: self.rtts.get(&info.connection).copied(),
                            info,
                        })
                        .collect(),
                    mapping_quic: self.birthday.mappings().0,
                    mapping_tcp: self.birthday.mappings().1,
                });
            }
        }
    }

    fn on_path_request(
        &mut self,
        peer: PeerId,
        reply: oneshot::Sender<Result<ConnectionInfo, ConnectError>>,
    ) {
        if self.stopping {
            let _ = reply.send(Err(ConnectError::Stopped));
            return;
        }
        if self.waiting.len() >= MAX_WAITING {
            let _ = reply.send(Err(ConnectError::Busy));
            return;
        }
        self.birthday_wanted(peer);
        let now = Instant::now();
        let waiting = Waiting {
            peer,
            direct_deadline: now + self.timing.direct_wait,
            give_up: now + self.timing.connect_timeout,
            reply,
        };
        match self.try_answer(waiting, now) {
            None => {}
            Some(waiting) => {
                self.waiting.push(waiting);
                if self.machine().select_path(&peer, false) == PathSelection::NotConnected {
                    self.reach(peer);
                }
            }
        }
    }

    /// Answers `w` if a path is available now; gives it back otherwise.
    fn try_answer(&self, w: Waiting, now: Instant) -> Option<Waiting> {
        if w.reply.is_closed() {
            return None; // The caller gave up.
        }
        let waited_enough = now >= w.direct_deadline;
        match self.machine().select_path(&w.peer, waited_enough) {
            PathSelection::Use { connection, kind } => {
                match self
                    .swarm
                    .behaviour()
                    .streams
                    .new_control()
                    .connection_info(connection)
                {
                    Some(info) => {
                        tracing::debug!(peer = %w.peer, path = %kind, %connection, "path chosen");
                        let _ = w.reply.send(Ok(info));
                        None
                    }
                    None => Some(w), // Closing as we speak; the close event re-evaluates.
                }
            }
            // The hole punch failed, but a dial of the peer is still in flight (a plain dial
            // of an address it told us, an introduction's): wait for it, the outcome of every
            // dial re-evaluates (`dial_failed`).
            PathSelection::ShortCircuit { .. }
                if self
                    .contacts
                    .get(&w.peer)
                    .is_some_and(|c| !c.dials.is_empty()) =>
            {
                Some(w)
            }
            PathSelection::ShortCircuit { connection } => {
                let _ = w
                    .reply
                    .send(Err(self.short_circuit_error(w.peer, connection)));
                None
            }
            PathSelection::WaitForDirect | PathSelection::NotConnected => Some(w),
        }
    }

    /// The error for a stream to `peer` that only a short relay circuit could carry.
    fn short_circuit_error(&self, peer: PeerId, connection: ConnectionId) -> ConnectError {
        let info = self
            .swarm
            .behaviour()
            .streams
            .new_control()
            .connection_info(connection);
        let relay = info.as_ref().and_then(|i| i.relay);
        let limit = info.and_then(|i| i.circuit_limit);
        let advice = crate::access::short_circuit_advice(
            relay,
            limit.as_ref(),
            *self.swarm.local_peer_id(),
            peer,
        );
        let limit = limit.map_or_else(|| "unknown".to_owned(), |l| l.to_string());
        tracing::warn!(%peer, relay = %relay.map_or_else(|| "unknown".to_owned(), |r| r.to_string()), %limit, %advice, "stream refused: only a short relay circuit reaches the peer");
        ConnectError::ShortCircuit { peer, advice }
    }

    /// Re-evaluates every request waiting for `peer`.
    fn answer_waiting(&mut self, peer: PeerId) {
        let now = Instant::now();
        let waiting = std::mem::take(&mut self.waiting);
        for w in waiting {
            if w.peer != peer {
                self.waiting.push(w);
            } else if let Some(w) = self.try_answer(w, now) {
                self.waiting.push(w);
            }
        }
        let still_waiting = self.waiting.iter().any(|w| w.peer == peer);
        if !still_waiting {
            self.reaching.remove(&peer);
        } else if self.machine().select_path(&peer, false) == PathSelection::NotConnected {
            self.reach(peer);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        let requests = self.waiting.iter().map(|w| {
            if w.direct_deadline > now {
                w.direct_deadline.min(w.give_up)
            } else {
                w.give_up
            }
        });
        let retries = self.reaching.values().filter_map(|r| r.retry_at);
        requests
            .chain(retries)
            .chain(self.relay_gate.next_deadline())
            .min()
    }

    fn on_deadline(&mut self) {
        let now = Instant::now();
        for dial in self.relay_gate.expire(now, |reply| reply.is_closed()) {
            if let Parked::Exact {
                peer, addr, reply, ..
            } = dial
            {
                let _ = reply.send(Err(ConnectError::Unreachable {
                    peer,
                    reason: format!(
                        "{addr}: no connection to its relay within {:?}",
                        self.timing.connect_timeout
                    ),
                }));
            }
        }
        let waiting = std::mem::take(&mut self.waiting);
        for w in waiting {
            if now >= w.give_up {
                let error = self.give_up_error(w.peer);
                let _ = w.reply.send(Err(error));
            } else if let Some(w) = self.try_answer(w, now) {
                self.waiting.push(w);
            }
        }
        let waiting = &self.waiting;
        self.reaching
            .retain(|peer, _| waiting.iter().any(|w| w.peer == *peer));
        let due: Vec<PeerId> = self
            .reaching
            .iter()
            .filter(|(_, r)| r.retry_at.is_some_and(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            if let Some(reach) = self.reaching.get_mut(&peer) {
                reach.retry_at = None;
            }
            self.reach(peer);
        }
    }

    /// The error for a request that ran out of time reaching `peer`.
    fn give_up_error(&self, peer: PeerId) -> ConnectError {
        if let Some(connection) = self.machine().only_short_circuit(&peer) {
            return self.short_circuit_error(peer, connection);
        }
        let reach = self.reaching.get(&peer);
        match reach.and_then(|r| r.last_error.clone()) {
            Some(reason) => ConnectError::Unreachable {
                peer,
                reason: format!("{reason} (gave up after {:?})", self.timing.connect_timeout),
            },
            None if reach.is_some_and(|r| r.failed_lookups > 0) => ConnectError::NotFound(peer),
            None => ConnectError::Timeout {
                peer,
                after: self.timing.connect_timeout,
            },
        }
    }

    /// Reach `peer` as [`reach::plan`] says: dial what we know (punching through an
    /// introduction when its relay is ours too), or look it up in the DHT. Failures are retried
    /// (lookups with backoff) until the waiting requests give up.
    fn reach(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        let reach = self.reaching.entry(peer).or_default();
        if reach.dialing || reach.queries > 0 || reach.retry_at.is_some() {
            return;
        }
        let known = self.hints.get(&peer).cloned().unwrap_or_default();
        let mut addrs = known.addrs;
        for addr in self.machine().known_addrs(&peer) {
            if !addrs.contains(addr) {
                addrs.push(addr.clone());
            }
        }
        let machine = self.machine();
        let steps = reach::plan(&addrs, &known.observed, |relay| {
            machine.connection_count(relay, PathKind::Direct) > 0
        });
        for step in steps {
            match step {
                ReachStep::Punch { via, addrs } => self.punch(peer, via, addrs),
                ReachStep::Dial { addrs } => self.dial_to_reach(peer, addrs),
                // Behaviours (Kademlia's routing table, identify's cache) may still know it.
                ReachStep::Lookup => self.dial_to_reach(peer, Vec::new()),
            }
        }
    }

    fn dial_to_reach(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        // Circuit addresses whose relay is not connected wait for it (relay_gate.rs).
        let (addrs, gated): (Vec<Multiaddr>, Vec<Multiaddr>) = addrs.into_iter().partition(|a| {
            relay_gate::relay_part(a)
                .is_none_or(|(relay, _)| relay == peer || self.swarm.is_connected(&relay))
        });
        let mut parked = false;
        for addr in &gated {
            if let Some((relay, relay_addr)) = relay_gate::relay_part(addr)
                && self
                    .relay_gate
                    .park(relay, relay_addr, Parked::Reach { peer })
                    .is_ok()
            {
                tracing::debug!(%peer, %addr, %relay, "circuit dial waits for the connection to its relay");
                parked = true;
                self.dial_relay(relay);
            }
        }
        if parked && addrs.is_empty() {
            // Nothing to dial until a relay connects: `resume_parked` reaches again.
            if let Some(reach) = self.reaching.get_mut(&peer) {
                reach.dialing = true;
                reach.dial = None;
            }
            return;
        }
        let direct = addrs
            .iter()
            .any(|a| !punchgate_machine::node::is_relayed(a));
        // Not `DisconnectedAndNotDialing`: another behaviour's dial (Kademlia's, with only the
        // peer's unreachable listen addresses) would make the swarm skip ours and its circuit
        // address, and the tunnel would wait out its connect timeout. `reach.dialing` already
        // keeps us from dialling twice.
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Disconnected)
            .addresses(addrs)
            .extend_addresses_through_behaviour()
            .build();
        let id = opts.connection_id();
        match self.dial(peer, opts, direct) {
            Ok(()) => {
                if let Some(reach) = self.reaching.get_mut(&peer) {
                    reach.dialing = true;
                    reach.dial = Some(id);
                }
            }
            Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                if let Some(reach) = self.reaching.get_mut(&peer) {
                    reach.dialing = true;
                    reach.dial = None;
                }
            }
            Err(libp2p::swarm::DialError::NoAddresses) => self.start_lookup(peer),
            Err(error) => {
                if let Some(reach) = self.reaching.get_mut(&peer) {
                    reach.last_error = Some(error_chain(&error));
                }
                self.start_lookup(peer);
            }
        }
    }

    /// Dials `peer`'s observed addresses (on their own, so a circuit connecting first does not
    /// cancel them: the open NAT mapping is the point) and asks `via` to introduce us, so
    /// `peer` dials us at the same time.
    fn punch(&mut self, peer: PeerId, via: PeerId, addrs: Vec<Multiaddr>) {
        let now = Instant::now();
        if self
            .punched
            .get(&peer)
            .is_some_and(|t| now - *t < PUNCH_INTERVAL)
            || self.introductions_in_flight >= MAX_INTRODUCTIONS_IN_FLIGHT
        {
            return;
        }
        let control = self.swarm.behaviour().streams.new_control();
        let Some(relay) = control.connections_of(via).into_iter().find(|c| !c.relayed) else {
            return;
        };
        if self.punched.len() >= MAX_HINTED_PEERS {
            self.punched.retain(|_, t| now - *t < PUNCH_INTERVAL);
        }
        self.punched.insert(peer, now);
        tracing::info!(%peer, %via, addrs = ?addrs, "punching through an introduction");
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Always)
            .addresses(addrs)
            .build();
        if let Err(error) = self.dial(peer, opts, true) {
            tracing::debug!(%peer, %error, "punch dial not started");
        }
        self.introductions_in_flight += 1;
        let report = self.requests_tx.clone();
        let listen_ports: Vec<u16> = self
            .swarm
            .listeners()
            .filter(|a| !punchgate_machine::node::is_relayed(a))
            .filter_map(introduce::port_of)
            .collect();
        self.tasks.spawn(async move {
            let result = introduce::request(control, relay, peer, listen_ports)
                .await
                .map_err(|e| e.to_string());
            let _ = report
                .send(Request::IntroduceResult { peer, via, result })
                .await;
        });
    }

    fn on_introduce_result(
        &mut self,
        peer: PeerId,
        via: PeerId,
        result: Result<Vec<Multiaddr>, String>,
    ) {
        match result {
            Ok(addrs) => {
                tracing::debug!(%peer, %via, addrs = ?addrs, "introduction made");
                // The relay sees the peer somewhere its record did not say: dial that too
                // (later than the peer's dial, so this one relies on a retransmission).
                let known = self
                    .hints
                    .get(&peer)
                    .map(|h| h.observed.clone())
                    .unwrap_or_default();
                let ours: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
                let new: Vec<Multiaddr> = introductions::to_dial(
                    addrs.into_iter().filter(|a| !known.contains(a)).collect(),
                    self.private_ips_count,
                    &ours,
                );
                if !new.is_empty() && self.machine().connection_count(&peer, PathKind::Direct) == 0
                {
                    let opts = DialOpts::peer_id(peer)
                        .condition(PeerCondition::Always)
                        .addresses(new)
                        .build();
                    let _ = self.dial(peer, opts, true);
                }
            }
            Err(reason) => tracing::debug!(%peer, %via, %reason, "introduction failed"),
        }
    }

    /// Our relay says `peer` wants a direct connection: dial its observed addresses now, so the
    /// dials cross. TCP dials act as the listener in the upgrade (both sides dial: a TCP
    /// simultaneous open), QUIC dials as a plain client (the peer's endpoint accepts it).
    fn on_introduced(&mut self, from: PeerId, peer: PeerId, addrs: Vec<Multiaddr>) {
        // Only the relay that holds our reservation, within its rate, and only addresses an
        // honest introduction can contain (punchgate_machine::introductions).
        let ours = match self.machine().relay() {
            RelayState::Reserved { relay, .. } => *relay == from,
            RelayState::Requesting { .. } | RelayState::Idle => false,
        };
        if !ours {
            tracing::debug!(%from, %peer, "ignoring an introduction from a peer that is not our relay");
            return;
        }
        if !self.introduction_gate.admit(std::time::Instant::now()) {
            tracing::debug!(%from, %peer, per_minute = introductions::INTRODUCTIONS_PER_MINUTE, "ignoring an introduction: our relay sends too many");
            return;
        }
        let given = addrs.len();
        let ours: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        let addrs = introductions::to_dial(addrs, self.private_ips_count, &ours);
        if addrs.len() < given {
            tracing::debug!(%from, %peer, given, dialled = addrs.len(), "introduction addresses left out: not global, or too many");
        }
        if self.machine().connection_count(&peer, PathKind::Direct) > 0 || addrs.is_empty() {
            return;
        }
        tracing::info!(%peer, via = %from, addrs = ?addrs, "introduced: dialing");
        let (quic, tcp): (Vec<Multiaddr>, Vec<Multiaddr>) = addrs
            .into_iter()
            .partition(|a| a.iter().any(|p| p == Protocol::QuicV1));
        if !tcp.is_empty() {
            // Two dials. From our listening port, as the listener of the upgrade: the requester
            // dials us at the same moment, the SYNs cross and TCP's simultaneous open gives both
            // sides a connection that both call outbound, so one must take the other role. But
            // where the requester's NAT lets our SYN through to its listening socket (an open
            // NAT, a public node that does not know it yet), it accepts as the listener too,
            // and that connection hangs until the upgrade times out. So also from a new port,
            // as the dialer: that one reaches a requester whose NAT lets it in; behind any
            // other NAT its SYN is dropped, costing one packet.
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::Always)
                .addresses(tcp.clone())
                .override_role()
                .build();
            let _ = self.dial(peer, opts, true);
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::Always)
                .addresses(tcp)
                .allocate_new_port()
                .build();
            // One attempt with the dial above, for the hole-punch timings.
            let _ = self.dial(peer, opts, false);
        }
        if !quic.is_empty() {
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::Always)
                .addresses(quic)
                .build();
            let _ = self.dial(peer, opts, true);
        }
    }

    fn start_lookup(&mut self, peer: PeerId) {
        let Some(reach) = self.reaching.get_mut(&peer) else {
            return;
        };
        if reach.queries > 0 || reach.retry_at.is_some() {
            return;
        }
        reach.queries = 2;
        reach.lookup_started = Some(Instant::now());
        // Lookups repeat every second while the peer cannot be found: one INFO line per ten.
        let attempt = reach.failed_lookups + 1;
        if attempt % 10 == 1 {
            tracing::info!(target_peer = %peer, attempt, "starting DHT lookup for tunnel target");
        } else {
            tracing::debug!(target_peer = %peer, attempt, "starting DHT lookup for tunnel target");
        }
        let kademlia = &mut self.swarm.behaviour_mut().kademlia;
        let by_record = kademlia.get_record(RecordKey::new(&protocol::peer_record_key(&peer)));
        let by_routing = kademlia.get_closest_peers(peer);
        self.lookups.insert(by_record, peer);
        self.lookups.insert(by_routing, peer);
    }

    fn add_hints(&mut self, peer: PeerId, found: records::PeerAddrs) {
        if !self.hints.contains_key(&peer) && self.hints.len() >= MAX_HINTED_PEERS {
            // Forget a peer we are not trying to reach.
            let victim = self
                .hints
                .keys()
                .find(|p| !self.reaching.contains_key(p))
                .copied();
            match victim {
                Some(victim) => {
                    self.hints.remove(&victim);
                }
                None => return,
            }
        }
        let known = self.hints.entry(peer).or_default();
        let merge = |list: &mut Vec<Multiaddr>, new: Vec<Multiaddr>| {
            for addr in new {
                let addr = without_p2p_of(addr, &peer);
                if !list.contains(&addr) {
                    if list.len() >= MAX_HINTS_PER_PEER {
                        list.remove(0);
                    }
                    list.push(addr);
                }
            }
        };
        merge(&mut known.addrs, found.addrs);
        merge(&mut known.observed, found.observed);
        known.seq = known.seq.max(found.seq);
    }

    // --- Swarm events ----------------------------------------------------------------------

    /// Progress in plain words when the NAT status changes: where peers can reach us.
    fn say_where_reachable(&self, nat: NatStatus) {
        match nat {
            NatStatus::Public => {
                let addrs: Vec<String> = self
                    .swarm
                    .external_addresses()
                    .map(ToString::to_string)
                    .collect();
                if addrs.is_empty() {
                    tracing::info!("reachable directly (public); relaying for peers behind NAT");
                } else {
                    tracing::info!(addrs = %addrs.join(" "), "reachable directly at addrs; relaying for peers behind NAT");
                }
            }
            NatStatus::Private => {
                tracing::info!(
                    "behind NAT: not reachable directly; peers reach this node through its relay slot"
                );
            }
            NatStatus::Unknown => {}
        }
    }

    /// Says (once) that no connected peer serves our DHT, when a bootstrap found none and each
    /// connected peer has told us what it speaks: a peer still to be identified may yet be a
    /// DHT server (the machine bootstraps again when it is).
    fn warn_if_no_dht(&mut self) {
        let machine = self.machine();
        if self.bootstrapped_without_dht
            && !machine.kademlia_ready()
            && !machine.kademlia_bootstrapping()
            && !machine.awaits_identify()
            && !std::mem::replace(&mut self.warned_no_dht, true)
        {
            tracing::warn!(
                protocol = %protocol::KADEMLIA,
                hint = "add a --bootstrap peer that runs Punchgate and is public; the node bootstraps again when one connects",
                "no connected peer serves Punchgate's DHT (a stock libp2p peer, or a node that is not public yet): this node can neither publish its record nor look others up until one does"
            );
        }
    }

    /// Our reservations that relays accepted, for the metrics.
    fn count_reservations(&self) {
        let held = self.relay_listeners.values().filter(|l| l.accepted).count();
        self.metrics.reservations_held.set(held as i64);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder as _;
        self.libp2p_metrics.record(&event);
        if let SwarmEvent::Behaviour(event) = &event {
            match event {
                BehaviourEvent::Identify(e) => self.libp2p_metrics.record(e),
                BehaviourEvent::Kademlia(e) => self.libp2p_metrics.record(e),
                BehaviourEvent::Relay(e) => self.libp2p_metrics.record(e),
                BehaviourEvent::Dcutr(e) => self.libp2p_metrics.record(e),
                BehaviourEvent::Ping(e) => self.libp2p_metrics.record(e),
                _ => {}
            }
        }
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                if self
                    .relay_listeners
                    .get(&listener_id)
                    .is_some_and(|l| l.released)
                {
                    // A reservation released while it was requested: now that the relay has
                    // answered, let it go.
                    tracing::debug!(addr = %address, "released relay reservation answered; removing it");
                    self.relay_listeners.remove(&listener_id);
                    self.swarm.remove_listener(listener_id);
                } else if let Some(listener) = self.relay_listeners.get_mut(&listener_id) {
                    let first = !std::mem::replace(&mut listener.accepted, true);
                    let relay = listener.relay;
                    tracing::info!(%relay, addr = %address, "relay reservation accepted");
                    if first {
                        // Progress in plain words: where peers can reach us now.
                        tracing::info!(%relay, addr = %address, "reachable through a relay: peers can reach this node at addr");
                    }
                    self.count_reservations();
                    let _ = self.events.send(NodeEvent::RelayReservationAccepted {
                        relay,
                        addr: address.clone(),
                    });
                    self.step(Event::RelayReservationAccepted {
                        relay,
                        addr: address,
                    });
                } else if self.birthday.listeners.contains(&listener_id) {
                    tracing::debug!(%address, "QUIC listening on a punched port");
                } else {
                    tracing::info!(%address, "listening on");
                    self.birthday_listening(&address);
                    let _ = self.events.send(NodeEvent::Listening {
                        addr: address.clone(),
                    });
                    self.step(Event::Listening { addr: address });
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                self.birthday.listeners.remove(&listener_id);
                if let Some(listener) = self.relay_listeners.remove(&listener_id) {
                    self.count_reservations();
                    let relay = listener.relay;
                    if listener.released {
                        tracing::debug!(%relay, "released relay reservation closed");
                    } else if listener.accepted {
                        tracing::warn!(%relay, "relay reservation lost");
                        self.step(Event::RelayReservationLost { relay });
                    } else {
                        let reason = match reason {
                            Ok(()) => "closed".to_owned(),
                            Err(e) => error_chain(&e),
                        };
                        tracing::warn!(%relay, %reason, "relay reservation failed");
                        let _ = self.events.send(NodeEvent::RelayReservationFailed {
                            relay,
                            reason: reason.clone(),
                        });
                        self.step(Event::RelayReservationFailed { relay, reason });
                    }
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                tracing::warn!(?listener_id, error = %error_chain(&error), "listener error");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connection_established(peer_id, connection_id, endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                cause,
            } => {
                tracing::info!(peer = %peer_id, remaining = num_established, endpoint = %endpoint.get_remote_address(), cause = ?cause.map(|c| c.to_string()), "connection closed");
                self.birthday_on_closed(connection_id);
                let _ = self.events.send(NodeEvent::ConnectionClosed {
                    info: ConnectionInfo {
                        peer: peer_id,
                        connection: connection_id,
                        remote_addr: endpoint.get_remote_address().clone(),
                        relayed: endpoint.is_relayed(),
                        relay: relay_of_endpoint(&endpoint),
                        outbound: endpoint.is_dialer(),
                        circuit_limit: None,
                    },
                });
                self.circuits.closed(connection_id);
                self.rtts.remove(&connection_id);
                self.metrics
                    .connection_closed(endpoint.is_relayed(), endpoint.get_remote_address());
                self.step(Event::ConnectionClosed {
                    peer: peer_id,
                    connection: connection_id,
                });
                if num_established == 0 {
                    self.contacts.remove(&peer_id);
                    self.relay_served.disconnected(&peer_id);
                }
                self.answer_waiting(peer_id);
            }
            SwarmEvent::Dialing {
                peer_id: Some(peer),
                connection_id,
            } => {
                // A behaviour's dial (DCUtR's hole punch, Kademlia, AutoNAT's dial-back).
                self.note_dial(peer, connection_id, true);
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                connection_id,
            } => {
                if self.dial_again_with_noise(peer, connection_id, &error) {
                    return;
                }
                self.own_dials.remove(&connection_id);
                let reason = error_chain(&error);
                if let Some(reply) = self.exact_dials.remove(&connection_id) {
                    let _ = reply.send(Err(ConnectError::Unreachable {
                        peer,
                        reason: reason.clone(),
                    }));
                }
                let bootstrap = self
                    .machine()
                    .config()
                    .bootstrap
                    .iter()
                    .any(|(p, _)| *p == peer);
                let relay = self.relay_gate.waits_for(&peer)
                    || self.relay_listeners.values().any(|l| l.relay == peer);
                if bootstrap || relay {
                    // A peer the node depends on: never fail in silence.
                    let role = if relay { "relay" } else { "bootstrap peer" };
                    let hint = if reason.to_lowercase().contains("negotiation failed") {
                        "the peer speaks neither TLS nor Noise over TCP: try its QUIC address"
                    } else {
                        "check the address and that the peer is running; the node retries with backoff"
                    };
                    tracing::warn!(%peer, role, %reason, hint, "dial failed");
                } else {
                    tracing::debug!(%peer, %reason, "dial failed");
                }
                self.dial_failed(peer, connection_id);
                if self.relay_gate.waits_for(&peer) && !self.swarm.is_connected(&peer) {
                    match self.relay_gate.dial_failed(&peer, connection_id) {
                        Some(parked) => self
                            .fail_parked(parked, &format!("cannot reach relay {peer}: {reason}")),
                        // Someone else's dial of the relay failed: try ours.
                        None => self.dial_relay(peer),
                    }
                }
                if let Some(reach) = self.reaching.get_mut(&peer) {
                    reach.last_error = Some(reason);
                    if reach.dial.is_none_or(|ours| ours == connection_id) {
                        reach.dialing = false;
                        reach.dial = None;
                        if !self.swarm.is_connected(&peer) {
                            self.start_lookup(peer);
                        }
                    }
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                let reason = error_chain(&error);
                if matches!(error, libp2p::swarm::ListenError::Denied { .. })
                    && reason.contains("limit")
                {
                    self.limit_refused(&send_back_addr, &reason);
                } else {
                    tracing::debug!(%send_back_addr, error = %reason, "incoming connection failed");
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                // libp2p's relay client confirms our circuit address too: identify then tells
                // peers about it. Whether we serve as a relay or a DHT server does not follow
                // confirmed addresses but the machine (`Command::SetPublic`).
                tracing::info!(%address, "external address confirmed");
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
            }
            SwarmEvent::NewExternalAddrCandidate { address } => {
                tracing::debug!(%address, "external address candidate");
                // A punched port's address is the punch's, not one to publish.
                if !punchgate_machine::node::is_relayed(&address)
                    && !self.birthday.is_punched(&address)
                {
                    let address = without_p2p(address);
                    self.observed_self.retain(|a| *a != address);
                    self.observed_self.push_front(address);
                    self.observed_self.truncate(MAX_OBSERVED_SELF);
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_connection_established(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: libp2p::core::ConnectedPoint,
    ) {
        let kind = if endpoint.is_relayed() {
            PathKind::Relayed
        } else {
            PathKind::Direct
        };
        let remote_addr = endpoint.get_remote_address().clone();
        tracing::info!(%peer, endpoint = %remote_addr, path = %kind, %connection, "connection opened");
        self.metrics
            .connection_opened(kind == PathKind::Relayed, &remote_addr);
        let now = Instant::now();
        let had_direct = self.machine().connection_count(&peer, PathKind::Direct) > 0;
        let had_relayed = self.machine().connection_count(&peer, PathKind::Relayed) > 0;
        self.birthday_on_connection(peer, connection, &endpoint, had_direct);
        let contact = self.contacts.entry(peer).or_insert_with(|| Contact {
            first: now,
            relayed_at: None,
            direct_attempts: 0,
            dials: HashSet::new(),
        });
        contact.dials.remove(&connection);
        match kind {
            PathKind::Relayed => {
                contact.relayed_at.get_or_insert(now);
                tracing::info!(peer_id = %peer, "connected via relay");
            }
            PathKind::Direct if !had_direct => {
                let since_first_contact = now - contact.first;
                let since_relayed = contact.relayed_at.filter(|_| had_relayed).map(|t| now - t);
                let attempts = contact.direct_attempts.max(1);
                tracing::info!(
                    %peer,
                    since_first_contact_ms = since_first_contact.as_millis() as u64,
                    relayed_before = since_relayed.is_some(),
                    outbound = endpoint.is_dialer(),
                    since_relayed_ms = since_relayed.map_or(0, |d| d.as_millis() as u64),
                    attempts,
                    addr = %remote_addr,
                    %connection,
                    "direct connection established"
                );
                if let Some(since_relayed) = since_relayed {
                    self.metrics
                        .time_to_direct
                        .observe(since_relayed.as_secs_f64());
                }
                let _ = self.events.send(NodeEvent::DirectConnection {
                    peer,
                    since_first_contact,
                    since_relayed,
                    attempts,
                    remote_addr: remote_addr.clone(),
                });
            }
            PathKind::Direct => {}
        }
        let info = ConnectionInfo {
            peer,
            connection,
            remote_addr,
            relayed: kind == PathKind::Relayed,
            relay: relay_of_endpoint(&endpoint),
            outbound: endpoint.is_dialer(),
            circuit_limit: None,
        };
        let circuit_limit = if kind == PathKind::Relayed {
            self.circuits
                .connection(peer, connection, info.relay, info.outbound, Instant::now())
        } else {
            None
        };
        if let Some(reply) = self.exact_dials.remove(&connection) {
            let _ = reply.send(Ok(info.clone()));
        }
        let _ = self.events.send(NodeEvent::ConnectionEstablished { info });
        if let Some(reach) = self.reaching.get_mut(&peer) {
            reach.dialing = false;
        }
        self.own_dials.remove(&connection);
        self.step(Event::ConnectionEstablished {
            peer,
            connection,
            kind,
            inbound: endpoint.is_listener()
                && punchgate_machine::node::counts_as_reachability(
                    endpoint.get_remote_address(),
                    self.private_ips_count,
                ),
        });
        if kind == PathKind::Direct && self.relay_gate.waits_for(&peer) {
            self.resume_parked(peer);
        }
        if let Some(limit) = circuit_limit {
            self.circuit_limit(circuits::Paired {
                peer,
                connection,
                limit,
            });
        }
        self.answer_waiting(peer);
    }

    /// A relayed connection's circuit limit is known: tell the machine (which keeps streams off
    /// short circuits) and the stream table (which tells the tunnel server).
    fn circuit_limit(&mut self, paired: circuits::Paired) {
        let circuits::Paired {
            peer,
            connection,
            limit,
        } = paired;
        let control = self.swarm.behaviour().streams.new_control();
        control.set_circuit_limit(connection, limit);
        let info = control.connection_info(connection);
        let relay = info
            .as_ref()
            .and_then(|i| i.relay)
            .map_or_else(|| "unknown".to_owned(), |r| r.to_string());
        // Inbound circuits are opened by others, strangers included: debug, so they cannot
        // fill the log.
        let ours = info.is_some_and(|i| i.outbound);
        match (ours, limit.is_short()) {
            (true, true) => {
                tracing::info!(%peer, %relay, %limit, %connection, "relayed connection is a short circuit: for hole punching, not for tunnels")
            }
            (true, false) => {
                tracing::info!(%peer, %relay, %limit, %connection, "relayed connection can carry tunnels")
            }
            (false, _) => {
                tracing::debug!(%peer, %relay, %limit, %connection, "inbound relayed connection's limit")
            }
        }
        let outbound = control
            .connection_info(connection)
            .is_some_and(|i| i.outbound);
        self.step(Event::CircuitLimit {
            peer,
            connection,
            limit,
            outbound,
        });
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                connection_id,
            }) => {
                self.birthday_observed(connection_id, &info.observed_addr);
                let relay_capable = info.protocols.contains(&protocol::RELAY_HOP);
                let kademlia = info.protocols.contains(&protocol::KADEMLIA);
                tracing::debug!(peer = %peer_id, agent = %crate::frame::loggable(&info.agent_version), relay_capable, kademlia, addrs = ?info.listen_addrs, "peer identified");
                self.step(Event::PeerIdentified {
                    peer: peer_id,
                    listen_addrs: info.listen_addrs,
                    relay_capable,
                    kademlia,
                });
                self.warn_if_no_dht();
            }
            BehaviourEvent::Identify(identify::Event::Error { peer_id, error, .. }) => {
                tracing::debug!(peer = %peer_id, %error, "identify failed");
                if !self.machine().knows(&peer_id) {
                    // A peer that cannot tell us what it speaks is taken to speak nothing we
                    // need (no relay, no DHT), so "no peer serves our DHT" is not held back
                    // waiting for it.
                    self.step(Event::PeerIdentified {
                        peer: peer_id,
                        listen_addrs: Vec::new(),
                        relay_capable: false,
                        kademlia: false,
                    });
                    self.warn_if_no_dht();
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                tracing::info!(old = ?old, new = ?new, "autonat status changed");
                let status = match new {
                    autonat::NatStatus::Public(_) => NatStatus::Public,
                    autonat::NatStatus::Private => NatStatus::Private,
                    autonat::NatStatus::Unknown => NatStatus::Unknown,
                };
                self.step(Event::NatStatusChanged { status });
            }
            BehaviourEvent::Autonat(event) => tracing::debug!(?event, "autonat"),
            BehaviourEvent::Kademlia(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            }) => self.on_kademlia_query(id, result, step.last),
            BehaviourEvent::Kademlia(kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            }) => self.on_put_record(source, record),
            BehaviourEvent::Kademlia(_) => {}
            #[cfg(feature = "mdns")]
            BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(peers)) => {
                tracing::info!(peers = ?peers.iter().map(|(p, _)| p.to_string()).collect::<Vec<_>>(), "mdns discovered");
                self.step(Event::MdnsDiscovered { peers });
            }
            #[cfg(feature = "mdns")]
            BehaviourEvent::Mdns(libp2p::mdns::Event::Expired(peers)) => {
                self.step(Event::MdnsExpired { peers });
            }
            #[cfg(not(feature = "mdns"))]
            BehaviourEvent::Mdns(never) => match never {},
            BehaviourEvent::PortMap(event) => self.on_port_map_event(event),
            BehaviourEvent::RelayClient(event) => self.on_relay_client_event(event),
            BehaviourEvent::Relay(event) => on_relay_server_event(
                &self.swarm.behaviour().relay,
                event,
                &mut self.peer_log,
                &mut self.relay_served,
            ),
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(connection) => {
                    self.metrics.hole_punch(crate::metrics::Outcome::succeeded);
                    tracing::info!(remote_peer = %remote_peer_id, %connection, "hole punch succeeded");
                    self.step(Event::HolePunchSucceeded {
                        peer: remote_peer_id,
                    });
                }
                Err(error) => {
                    self.metrics.hole_punch(crate::metrics::Outcome::failed);
                    let reason = error_chain(&error);
                    tracing::warn!(remote_peer = %remote_peer_id, %reason, "hole punch failed, tunnels to this peer use the relay");
                    let _ = self.events.send(NodeEvent::HolePunchFailed {
                        peer: remote_peer_id,
                        reason: reason.clone(),
                    });
                    self.step(Event::HolePunchFailed {
                        peer: remote_peer_id,
                        reason,
                    });
                    self.answer_waiting(remote_peer_id);
                }
            },
            // Every connection pings every 15 s: only its first round trip is an INFO line (one
            // per connection, as "connection opened" is), the rest DEBUG, or a busy node's log
            // would be all pings. A failed ping closes its connection, which is logged.
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => match result {
                Ok(rtt) if self.rtts.insert(connection, rtt).is_none() => {
                    tracing::info!(%peer, rtt_ms = rtt.as_secs_f64() * 1000.0, %connection, "ping")
                }
                Ok(rtt) => {
                    self.rtts.insert(connection, rtt);
                    tracing::debug!(%peer, rtt_ms = rtt.as_secs_f64() * 1000.0, "ping");
                }
                Err(error) => tracing::debug!(%peer, %error, "ping failed"),
            },
            BehaviourEvent::Streams(never) => match never {},
        }
    }

    fn on_relay_client_event(&mut self, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => tracing::debug!(relay = %relay_peer_id, renewal, "reservation request accepted"),
            relay::client::Event::OutboundCircuitEstablished {
                relay_peer_id,
                limit,
            } => {
                let limit =
                    circuit_limit_of(limit.as_ref().map(|l| (l.duration(), l.data_in_bytes())));
                tracing::debug!(relay = %relay_peer_id, %limit, "outbound circuit established");
                if let Some(paired) =
                    self.circuits
                        .outbound_limit(relay_peer_id, limit, Instant::now())
                {
                    self.circuit_limit(paired);
                    self.answer_waiting(paired.peer);
                }
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, limit } => {
                let limit =
                    circuit_limit_of(limit.as_ref().map(|l| (l.duration(), l.data_in_bytes())));
                tracing::debug!(src = %src_peer_id, %limit, "inbound circuit established");
                if let Some(paired) =
                    self.circuits
                        .inbound_limit(src_peer_id, limit, Instant::now())
                {
                    self.circuit_limit(paired);
                    self.answer_waiting(paired.peer);
                }
            }
        }
    }

    /// A peer asks us (a DHT server) to store a record: only a valid peer record of the key's
    /// peer, and never an older one over the one we hold (records.rs `admit_put`).
    fn on_put_record(&mut self, source: PeerId, record: Record) {
        use libp2p::kad::store::RecordStore as _;
        let store = self.swarm.behaviour_mut().kademlia.store_mut();
        let stored = store.get(&record.key).map(|r| r.value.clone());
        match records::admit_put(record.key.as_ref(), &record.value, stored.as_deref()) {
            Ok(()) => {
                if let Err(error) = store.put(record) {
                    tracing::debug!(%source, %error, "record not stored");
                }
            }
            Err(error) => {
                if let Some(held_back) = self.peer_log.admit(source, std::time::Instant::now()) {
                    tracing::warn!(%source, %error, held_back, "refused to store a DHT record");
                }
            }
        }
    }

    fn on_kademlia_query(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::Bootstrap(Ok(_)) if last => {
                let ours = self.machine().kademlia_bootstrapping();
                self.step(Event::KademliaBootstrapSucceeded);
                if self.machine().kademlia_ready() {
                    tracing::debug!("kademlia bootstrap succeeded");
                } else if ours {
                    // Our bootstrap query found no DHT server among the peers we are connected
                    // to (Kademlia's own periodic bootstraps do not count).
                    self.bootstrapped_without_dht = true;
                    self.warn_if_no_dht();
                }
            }
            QueryResult::Bootstrap(Err(error)) => {
                tracing::debug!(%error, "kademlia bootstrap failed");
                self.step(Event::KademliaBootstrapFailed);
            }
            QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(found))) => {
                if let Some(peer) = self.lookups.get(&id).copied() {
                    let newest = self.hints.get(&peer).map_or(0, |h| h.seq);
                    match records::decode(&peer, &found.record.value) {
                        Ok(record) if record.seq < newest => {
                            // A record older than one we have seen: a stale copy, or a replay.
                            tracing::debug!(%peer, seq = record.seq, newest, "older peer record ignored");
                        }
                        Ok(record) if !record.addrs.is_empty() => {
                            if let Some(mut query) =
                                self.swarm.behaviour_mut().kademlia.query_mut(&id)
                            {
                                query.finish();
                            }
                            self.found_addresses(peer, record);
                        }
                        Ok(_) => {}
                        Err(error) => {
                            // A DHT peer can send these at will: one line per sender per 10 s.
                            let from = found.peer.unwrap_or(peer);
                            if let Some(held_back) =
                                self.peer_log.admit(from, std::time::Instant::now())
                            {
                                tracing::warn!(%peer, from = ?found.peer, %error, held_back, "ignoring invalid peer record");
                            }
                        }
                    }
                }
            }
            QueryResult::GetRecord(_) => {}
            QueryResult::GetClosestPeers(result) => {
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                if let Some(peer) = self.lookups.get(&id).copied()
                    && let Some(info) = peers.into_iter().find(|p| p.peer_id == peer)
                    && !info.addrs.is_empty()
                {
                    self.found_addresses(
                        peer,
                        records::PeerAddrs {
                            addrs: info.addrs,
                            ..records::PeerAddrs::default()
                        },
                    );
                }
            }
            QueryResult::PutRecord(result) => {
                let seq = self.record_puts.remove(&id);
                match result {
                    Ok(_) => tracing::info!(seq, "peer record stored"),
                    Err(error) => tracing::debug!(seq, %error, "peer record not replicated"),
                }
                if self.record_puts.is_empty() && std::mem::take(&mut self.publish_queued) {
                    self.publish();
                }
            }
            _ => {}
        }
        if last && let Some(peer) = self.lookups.remove(&id) {
            self.lookup_part_done(peer);
        }
    }

    /// What of `addrs` belongs in a public DHT (the machine decides: global addresses and DNS
    /// names, private ones only in a mesh where they count).
    fn dht_addrs(&self, addrs: impl IntoIterator<Item = Multiaddr>) -> Vec<Multiaddr> {
        self.filter_addrs(addrs, punchgate_machine::records::shareable)
    }

    /// The addresses of `addrs` that `keep(addr, private_ok, our listen addresses)` keeps.
    fn filter_addrs(
        &self,
        addrs: impl IntoIterator<Item = Multiaddr>,
        keep: fn(&Multiaddr, bool, &[Multiaddr]) -> bool,
    ) -> Vec<Multiaddr> {
        let ours: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        addrs
            .into_iter()
            .filter(|a| keep(a, self.private_ips_count, &ours))
            .collect()
    }

    fn found_addresses(&mut self, peer: PeerId, found: records::PeerAddrs) {
        // A record or a DHT answer is a stranger's text: only what an honest one can contain.
        let take = punchgate_machine::records::takeable;
        let found = records::PeerAddrs {
            addrs: self.filter_addrs(found.addrs, take),
            observed: self.filter_addrs(found.observed, take),
            seq: found.seq,
        };
        let Some(reach) = self.reaching.get_mut(&peer) else {
            return;
        };
        if reach.dialing {
            return;
        }
        if let Some(started) = reach.lookup_started.take() {
            self.metrics.dht_lookup(true, started.elapsed());
        }
        tracing::info!(target_peer = %peer, addrs = ?found.addrs, observed = ?found.observed, "dialing tunnel target after DHT lookup");
        // Let `reach` dial although the other query may still be running.
        let queries = std::mem::take(&mut reach.queries);
        self.add_hints(peer, found);
        self.reach(peer);
        if let Some(reach) = self.reaching.get_mut(&peer) {
            reach.queries = queries;
        }
    }

    fn lookup_part_done(&mut self, peer: PeerId) {
        let connected = self.swarm.is_connected(&peer);
        let Some(reach) = self.reaching.get_mut(&peer) else {
            return;
        };
        reach.queries = reach.queries.saturating_sub(1);
        if reach.queries == 0
            && let Some(started) = reach.lookup_started.take()
        {
            self.metrics.dht_lookup(connected, started.elapsed());
        }
        if reach.queries == 0 && !reach.dialing && !connected {
            reach.failed_lookups += 1;
            let delay = reach::lookup_retry_delay(reach.failed_lookups);
            reach.retry_at = Some(Instant::now() + delay);
            tracing::debug!(target_peer = %peer, ?delay, "peer not found yet; looking up again later");
        }
    }
}

/// Logs what the relay server did for others. Denials are lines a stranger can cause at will,
/// so they go through `log` (per peer, and in total; `held_back` counts what it held back).
fn on_relay_server_event(
    server: &crate::net::relay_server::RelayServer,
    event: relay::Event,
    log: &mut DenialLog,
    served: &mut RelayServed,
) {
    let now = std::time::Instant::now();
    served.count(&event);
    match event {
        // libp2p's relay rate-limits what it accepts (per peer and per IP address): those
        // lines are bounded already. What it denies is not.
        relay::Event::ReservationReqAccepted {
            src_peer_id,
            renewed,
        } => tracing::info!(peer = %src_peer_id, renewed, "serving relay reservation"),
        relay::Event::ReservationReqDenied { src_peer_id, .. } => {
            if let Some(held_back) = log.admit(src_peer_id, now) {
                tracing::warn!(peer = %src_peer_id, held_back, "relay reservation denied");
            }
        }
        relay::Event::CircuitReqAccepted {
            src_peer_id,
            dst_peer_id,
        } => {
            // The relay enforces the source's limits (relay_server.rs).
            let enforced = if server.trusts(&src_peer_id) {
                "long"
            } else {
                "short"
            };
            if server.is_long(&src_peer_id, &dst_peer_id) {
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, enforced, "relaying circuit (long: both ends trusted)");
            } else {
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, enforced, "relaying circuit (short: enough to punch a hole; --trust both ends for tunnels)");
            }
        }
        relay::Event::CircuitReqDenied {
            src_peer_id,
            dst_peer_id,
            ..
        } => {
            if let Some(held_back) = log.admit(src_peer_id, now) {
                tracing::warn!(src = %src_peer_id, dst = %dst_peer_id, held_back, "relay circuit denied");
            }
        }
        relay::Event::CircuitClosed {
            src_peer_id,
            dst_peer_id,
            error,
        } => {
            tracing::info!(src = %src_peer_id, dst = %dst_peer_id, error = ?error.map(|e| e.to_string()), "relay circuit closed")
        }
        event => tracing::debug!(?event, "relay server"),
    }
}

/// What this node serves as a relay, for the metrics and `/status`. libp2p-relay 0.22's events
/// do not pair up: it reports `ReservationClosed` for every connection that closes (reserved or
/// not) and `CircuitClosed` twice when a circuit's destination goes first. So the gauges are
/// set from sets kept here, bounded by the relay's own limits (`--relay-max-reservations`,
/// `--relay-max-circuits`).
struct RelayServed {
    /// Peers we hold a reservation for.
    reservations: HashSet<PeerId>,
    /// Circuits open, per (source, destination).
    circuits: HashMap<(PeerId, PeerId), usize>,
    metrics: crate::metrics::Metrics,
}

impl RelayServed {
    fn new(metrics: crate::metrics::Metrics) -> Self {
        Self {
            reservations: HashSet::new(),
            circuits: HashMap::new(),
            metrics,
        }
    }

    fn count(&mut self, event: &relay::Event) {
        let metrics = &self.metrics;
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                self.reservations.insert(*src_peer_id);
            }
            relay::Event::ReservationTimedOut { src_peer_id } => {
                self.reservations.remove(src_peer_id);
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                *self
                    .circuits
                    .entry((*src_peer_id, *dst_peer_id))
                    .or_default() += 1;
                metrics.circuits_relayed.inc();
            }
            relay::Event::CircuitReqDenied { .. } => {
                metrics.circuits_denied.inc();
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                ..
            } => {
                let key = (*src_peer_id, *dst_peer_id);
                if let Some(open) = self.circuits.get_mut(&key) {
                    *open -= 1;
                    if *open == 0 {
                        self.circuits.remove(&key);
                    }
                }
            }
            _ => {}
        }
        self.update();
    }

    /// `peer`'s last connection closed: its reservation (and its circuits) went with it.
    fn disconnected(&mut self, peer: &PeerId) {
        self.reservations.remove(peer);
        self.circuits
            .retain(|(src, dst), _| src != peer && dst != peer);
        self.update();
    }

    fn update(&self) {
        let metrics = &self.metrics;
        metrics
            .reservations_served
            .set(self.reservations.len() as i64);
        metrics
            .circuits
            .set(self.circuits.values().sum::<usize>() as i64);
    }
}

/// The relay a connection goes through: in the dialled address, or (inbound) in our own
/// circuit listen address.
fn relay_of_endpoint(endpoint: &libp2p::core::ConnectedPoint) -> Option<PeerId> {
    match endpoint {
        libp2p::core::ConnectedPoint::Dialer { address, .. } => reach::relay_of(address),
        libp2p::core::ConnectedPoint::Listener { local_addr, .. } => reach::relay_of(local_addr),
    }
}

/// A relay's limit as the machine takes it (no limit when the relay gave none).
fn circuit_limit_of(
    limit: Option<(Option<Duration>, Option<u64>)>,
) -> punchgate_machine::CircuitLimit {
    match limit {
        Some((duration, bytes)) => punchgate_machine::CircuitLimit { duration, bytes },
        None => punchgate_machine::CircuitLimit::NONE,
    }
}

/// `sleep_until` that never fires for `None`.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

fn without_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

/// Strips a trailing `/p2p/<peer>` naming `peer` itself (kept on circuit addresses' relay part).
fn without_p2p_of(mut addr: Multiaddr, peer: &PeerId) -> Multiaddr {
    if addr.iter().last() == Some(Protocol::P2p(*peer)) {
        addr.pop();
    }
    addr
}

/// An error and its sources, joined: libp2p's top-level messages ("Failed to negotiate
/// transport protocol(s)") hide the useful part in the chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        // libp2p's errors often print their source as part of their own message.
        let text = e.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = e.source();
    }
    // One log line per event: libp2p lists several dial errors on lines of their own.
    message.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libp2p-relay reports `ReservationClosed` for every connection that closes and
    /// `CircuitClosed` twice when the destination goes first: the gauges stay true.
    #[test]
    fn relay_gauges_follow_what_is_served_not_how_often_upstream_says_so() {
        let metrics = crate::metrics::Metrics::unregistered();
        let mut served = RelayServed::new(metrics.clone());
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        served.count(&relay::Event::ReservationReqAccepted {
            src_peer_id: a,
            renewed: false,
        });
        served.count(&relay::Event::ReservationReqAccepted {
            src_peer_id: a,
            renewed: true,
        });
        // A connection of a peer without a reservation closes.
        served.count(&relay::Event::ReservationClosed { src_peer_id: c });
        assert_eq!(metrics.reservations_served.get(), 1);
        served.count(&relay::Event::CircuitReqAccepted {
            src_peer_id: c,
            dst_peer_id: a,
        });
        assert_eq!(metrics.circuits.get(), 1);
        // The destination's connection closes: upstream says so twice.
        for _ in 0..2 {
            served.count(&relay::Event::CircuitClosed {
                src_peer_id: c,
                dst_peer_id: a,
                error: None,
            });
        }
        assert_eq!(metrics.circuits.get(), 0);
        assert_eq!(metrics.circuits_relayed.get(), 1);
        served.count(&relay::Event::CircuitReqAccepted {
            src_peer_id: b,
            dst_peer_id: a,
        });
        // A's last connection closes: its reservation and circuits go with it.
        served.disconnected(&a);
        assert_eq!(metrics.reservations_served.get(), 0);
        assert_eq!(metrics.circuits.get(), 0);
    }
}
