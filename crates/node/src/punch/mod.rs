//! Birthday punching over QUIC: a direct connection between an easy NAT (its public port is
//! its local one) and a hard one (a symmetric NAT, a new port per destination), where no plain
//! hole punch can line the ports up.
//!
//! The tunnel client asks over the relayed connection (`/punchgate/birthday/1.0.0`, one
//! [frame](crate::frame) per message) and the two sides take their roles from their mappings
//! ([`punchgate_machine::mapping::birthday_role`]):
//!
//! ```text
//! client → server  Hello { mapping, public_ip, probe_port? }   (probe_port if the client is easy)
//! server → client  Plan { role, public_ip, probe_port? } | Refused { reason }
//! hard → easy      Opened { token }   after one packet from each of N sockets to the easy port
//! hard → easy      Hit { port } | Missed   a probe carrying the token reached socket `port`
//! easy → hard      Listening          the easy side's QUIC endpoint is on its probe port
//! ```
//!
//! The easy side probes random ports of the hard side's address from its probe socket, paced
//! ([`probe::Budget`]); one that lands on a port the hard side's sockets opened gets through
//! both NATs. Then both sides close their probe sockets and bind QUIC to the same ports
//! ([`crate::net::punched`]), and the hard side dials: the connection rides the 5-tuple the
//! probe found, inside the NATs' mapping lifetime (30 s for an unanswered UDP flow on Linux),
//! and QUIC's keep-alives hold it from then on.
//!
//! Bounds: a server punches only with peers its rules name (or it trusts), each peer at most
//! `--punch-attempts` ([`ATTEMPTS_PER_PEER`]) times a minute, [`MAX_CONCURRENT`] punches at
//! once; a punch sends at
//! most `sockets + probes` packets of 14 bytes, at `rate` packets a second (defaults 256 +
//! 2,048 at 1,000/s: about 2.3 s and 32 KiB of UDP payload at most).

pub mod probe;

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use libp2p::{Multiaddr, PeerId, multiaddr::Protocol};
use punchgate_machine::{
    limit::{Admit, PerKey},
    mapping::{Mapping, Role, birthday_role},
};
use serde::{Deserialize, Serialize};
use tokio::{net::UdpSocket, sync::Semaphore, time::timeout};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

use crate::{
    frame,
    net::{
        punched::Claims,
        stream::{IncomingStream, IncomingStreams},
    },
    node::NodeHandle,
};

pub(crate) use crate::protocol::BIRTHDAY;

/// Punches run at once, both roles together.
pub const MAX_CONCURRENT: usize = 2;
/// Punches one peer may start (or we start with it) per minute, by default.
pub const ATTEMPTS_PER_PEER: u32 = 2;
/// Peers counted for [`ATTEMPTS_PER_PEER`].
const MAX_COUNTED_PEERS: usize = 256;
/// Each stream message's deadline (besides the probing itself).
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client waits for its own mapping to be known before it asks.
const MAPPING_WAIT: Duration = Duration::from_secs(3);

/// How hard a birthday punch tries (`--punch-sockets`, `--punch-probes`, `--punch-rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PunchConfig {
    /// Sockets the hard side opens; 0 turns birthday punching off.
    pub sockets: u16,
    /// Probes the easy side sends at most.
    pub probes: u32,
    /// Packets per second, on either side.
    pub rate: u32,
    /// Punches per peer per minute, either side (`--punch-attempts`).
    pub attempts_per_minute: u32,
}

impl Default for PunchConfig {
    fn default() -> Self {
        Self {
            sockets: 256,
            probes: 2048,
            rate: 1000,
            attempts_per_minute: ATTEMPTS_PER_PEER,
        }
    }
}

impl PunchConfig {
    fn budget(self) -> probe::Budget {
        probe::Budget {
            sockets: self.sockets,
            probes: self.probes,
            rate: self.rate.max(1),
        }
    }
}

/// Our QUIC mapping and public address, as the driver learns them from identify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingView {
    /// The mapping of our QUIC listen port.
    pub quic: Mapping,
    /// Our public address, as an observer saw it.
    pub public_ip: Option<IpAddr>,
}

impl Default for MappingView {
    fn default() -> Self {
        Self {
            quic: Mapping::Unknown,
            public_ip: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Msg {
    Hello {
        mapping: String,
        public_ip: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probe_port: Option<u16>,
        budget: probe::Budget,
    },
    Plan {
        role: String,
        public_ip: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        probe_port: Option<u16>,
        budget: probe::Budget,
    },
    Refused {
        reason: String,
    },
    Opened {
        token: u64,
    },
    Hit {
        port: u16,
    },
    Missed,
    Listening,
}

/// A punch that did not end in a direct connection.
#[derive(Debug, thiserror::Error)]
pub enum PunchError {
    /// The punch does not fit our mappings, or the peer would not punch.
    #[error("no birthday punch: {0}")]
    NotApplicable(String),
    /// The probes found no open port.
    #[error("no probe got through ({probes} sent)")]
    Missed {
        /// Probes sent (as the easy side), or 0 (as the hard side).
        probes: u32,
    },
    /// A socket could not be opened or bound.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The exchange with the peer failed.
    #[error("exchange: {0}")]
    Frame(#[from] frame::FrameError),
    /// The peer broke the protocol, or did not answer in time.
    #[error("the peer {0}")]
    Protocol(String),
    /// The punched port could not be used for QUIC.
    #[error("QUIC on the punched port: {0}")]
    Quic(String),
}

/// A punch that went direct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Punched {
    /// Our side.
    pub role: Role,
    /// Probes sent (by the easy side; the hard side learns only that one arrived).
    pub probes: u32,
    /// From the first message to the direct connection (hard side) or to listening (easy).
    pub elapsed: Duration,
    /// The other side's public address and port the connection runs to.
    pub remote: SocketAddr,
}

/// What both roles need.
pub(crate) struct Punches {
    node: NodeHandle,
    claims: Claims,
    mapping: tokio::sync::watch::Receiver<MappingView>,
    config: PunchConfig,
    permits: Arc<Semaphore>,
    peers: std::sync::Mutex<PerKey<PeerId>>,
    trusted: HashSet<PeerId>,
    /// Private addresses may be probed (`--autonat-private-ips`: a lab, a LAN-only mesh).
    private_ok: bool,
    /// "Our mapping is unknown" was said (once per run is enough).
    said_unknown: std::sync::atomic::AtomicBool,
}

impl Punches {
    pub(crate) fn new(
        node: NodeHandle,
        claims: Claims,
        mapping: tokio::sync::watch::Receiver<MappingView>,
        config: PunchConfig,
        trusted: HashSet<PeerId>,
        private_ok: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            node,
            claims,
            mapping,
            config,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT)),
            peers: std::sync::Mutex::new(PerKey::new(
                config.attempts_per_minute.max(1),
                Duration::from_secs(60),
                MAX_COUNTED_PEERS,
            )),
            trusted,
            private_ok,
            said_unknown: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A peer's claimed public address, if we may send packets to it: IPv4 (the probe sockets
    /// are), unicast, not ours to reach locally, and not private unless the mesh is.
    fn usable(&self, text: &str) -> Result<IpAddr, PunchError> {
        let ip = parse_ip(text)?;
        if !punchgate_machine::mapping::probe_target_ok(ip, self.private_ok) {
            return Err(PunchError::Protocol(format!(
                "named {ip} as its address, which we do not send probes to"
            )));
        }
        Ok(ip)
    }

    fn enabled(&self) -> bool {
        self.config.sockets > 0 && self.config.probes > 0 && self.config.attempts_per_minute > 0
    }

    fn admit(&self, peer: PeerId) -> Result<(), String> {
        match self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(&peer, Instant::now())
        {
            Admit::Yes => Ok(()),
            Admit::OverLimit => Err(format!(
                "at most {} birthday punches a minute per peer",
                self.config.attempts_per_minute
            )),
            Admit::TooManyKeys => {
                Err("counting too many peers' punches: try again within a minute".into())
            }
        }
    }

    /// Whether a direct connection to `peer` is open (a plain punch won: no birthday needed).
    fn direct(&self, peer: PeerId) -> bool {
        self.node
            .control()
            .connections_of(peer)
            .iter()
            .any(|c| !c.relayed)
    }

    /// Our mapping, waiting up to `wait` for a first observation.
    async fn our_mapping(&self, wait: Duration) -> MappingView {
        let mut rx = self.mapping.clone();
        let known = |v: &MappingView| v.quic != Mapping::Unknown && v.public_ip.is_some();
        let _ = timeout(wait, rx.wait_for(known)).await;
        *rx.borrow()
    }
}

/// The client side: asks `peer` (reached only through a relay) for a birthday punch, if our
/// mapping may fit one. Logs the outcome.
pub(crate) async fn initiate(punches: Arc<Punches>, peer: PeerId) {
    if !punches.enabled() {
        return;
    }
    let Ok(_permit) = punches.permits.clone().try_acquire_owned() else {
        tracing::debug!(%peer, "birthday punch skipped: {MAX_CONCURRENT} are running");
        return;
    };
    let started = Instant::now();
    log_outcome(peer, run_client(&punches, peer).await, started);
}

/// One line for every punch that ran: went direct, or failed and why. A punch that did not
/// fit (or was refused) is DEBUG: nothing was sent.
fn log_outcome(peer: PeerId, outcome: Result<Punched, PunchError>, started: Instant) {
    match outcome {
        Ok(p) => tracing::info!(
            %peer,
            role = ?p.role,
            probes = p.probes,
            elapsed_ms = p.elapsed.as_millis() as u64,
            remote = %p.remote,
            "birthday punch went direct: QUIC through the ports the probes found"
        ),
        Err(PunchError::NotApplicable(reason)) => {
            tracing::debug!(%peer, %reason, "no birthday punch")
        }
        Err(error) => tracing::info!(
            %peer,
            %error,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "birthday punch failed: the peer stays reached through the relay"
        ),
    }
}

async fn run_client(punches: &Punches, peer: PeerId) -> Result<Punched, PunchError> {
    let ours = punches.our_mapping(MAPPING_WAIT).await;
    let Some(public_ip) = ours.public_ip else {
        if !punches
            .said_unknown
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::info!(
                %peer,
                hint = "listen on QUIC and bootstrap from a public node: its identify tells us our address",
                "no birthday punch: our NAT mapping is unknown (no public peer we dialled over QUIC has reported the address it sees us at)"
            );
        }
        return Err(PunchError::NotApplicable(
            "our public address is not known yet".into(),
        ));
    };
    if !ours.quic.preserves_ports() && !ours.quic.moves_ports() {
        return Err(PunchError::NotApplicable(format!(
            "our QUIC mapping is {}",
            ours.quic.as_str()
        )));
    }
    if punches.direct(peer) {
        return Err(PunchError::NotApplicable(
            "already directly connected".into(),
        ));
    }
    let relayed = punches
        .node
        .control()
        .connections_of(peer)
        .into_iter()
        .find(|c| c.relayed)
        .ok_or_else(|| PunchError::NotApplicable("no relayed connection to the peer".into()))?;
    // Counted only now that a punch can happen.
    punches.admit(peer).map_err(PunchError::NotApplicable)?;
    // An easy side binds its probe socket first: its port goes in the hello.
    let socket = if ours.quic.preserves_ports() {
        Some(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?)
    } else {
        None
    };
    let probe_port = match &socket {
        Some(s) => Some(s.local_addr()?.port()),
        None => None,
    };
    let mut stream = punches
        .node
        .control()
        .open_stream(relayed.connection, BIRTHDAY)
        .await
        .map_err(|e| PunchError::Protocol(format!("stream: {e}")))?
        .compat();
    let started = Instant::now();
    frame::write(
        &mut stream,
        &Msg::Hello {
            mapping: mapping_code(ours.quic).into(),
            public_ip: public_ip.to_string(),
            probe_port,
            budget: punches.config.budget(),
        },
    )
    .await?;
    let (role, their_ip, their_port, theirs) = match step(&mut stream).await? {
        Msg::Plan {
            role,
            public_ip,
            probe_port,
            budget,
        } => (role, punches.usable(&public_ip)?, probe_port, budget),
        Msg::Refused { reason } => {
            return Err(PunchError::NotApplicable(format!(
                "the peer refused: {}",
                frame::loggable(&reason)
            )));
        }
        other => return Err(unexpected(&other)),
    };
    match (role.as_str(), socket, their_port) {
        // The server is hard: we probe.
        ("hard", Some(socket), _) => {
            let hard = Remote {
                peer,
                ip: their_ip,
                budget: theirs,
            };
            run_easy(punches, &mut stream, socket, hard, started).await
        }
        // The server is easy: we open sockets towards its probe port.
        ("easy", None, Some(port)) => {
            let easy = Remote {
                peer,
                ip: their_ip,
                budget: theirs,
            };
            run_hard(punches, &mut stream, easy, port, started).await
        }
        _ => Err(PunchError::Protocol(format!(
            "proposed role '{}' that does not fit ours",
            frame::loggable(&role)
        ))),
    }
}

/// Serves birthday punch requests until the node stops.
pub(crate) async fn serve(
    mut incoming: IncomingStreams,
    punches: Arc<Punches>,
    admits: impl Fn(&PeerId) -> bool + Send + Sync + 'static,
    tasks: tokio_util::task::TaskTracker,
) {
    let admits = Arc::new(admits);
    // Requests read at once (each may hold its stream 5 s before it is refused).
    let reading = Arc::new(Semaphore::new(2 * MAX_CONCURRENT));
    loop {
        let permit = tokio::select! {
            p = reading.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = punches.node.stopped() => break,
        };
        let stream = tokio::select! {
            s = incoming.next() => match s {
                Some(s) => s,
                None => break,
            },
            () = punches.node.stopped() => break,
        };
        let punches = punches.clone();
        let admits = admits.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let peer = stream.info.peer;
            let started = Instant::now();
            log_outcome(
                peer,
                serve_one(&punches, stream, admits.as_ref()).await,
                started,
            );
        });
    }
}

async fn serve_one(
    punches: &Punches,
    incoming: IncomingStream,
    admits: &(impl Fn(&PeerId) -> bool + ?Sized),
) -> Result<Punched, PunchError> {
    let peer = incoming.info.peer;
    let _slot = incoming.slot;
    let mut stream = incoming.stream.compat();
    let hello = step(&mut stream).await?;
    let Msg::Hello {
        mapping,
        public_ip,
        probe_port,
        budget: theirs_budget,
    } = hello
    else {
        return Err(unexpected(&hello));
    };
    let started = Instant::now();
    let refuse = |reason: String| Msg::Refused { reason };
    // Strangers learn only that there is no punch.
    let permit = if !punches.enabled() {
        Err("birthday punching is off".to_owned())
    } else if !admits(&peer) && !punches.trusted.contains(&peer) {
        Err("no birthday punch".to_owned())
    } else {
        punches.admit(peer).and_then(|()| {
            punches
                .permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| "busy: try again later".to_owned())
        })
    };
    let _permit = match permit {
        Ok(p) => p,
        Err(reason) => {
            frame::write(&mut stream, &refuse(reason.clone())).await?;
            return Err(PunchError::NotApplicable(reason));
        }
    };
    let ours = punches.our_mapping(Duration::ZERO).await;
    let theirs = parse_mapping(&mapping);
    let (role, our_ip) = match (birthday_role(ours.quic, theirs), ours.public_ip) {
        (Some(role), Some(ip)) => (role, ip),
        _ => {
            let reason = format!(
                "mappings do not fit (ours {}, theirs {})",
                ours.quic.as_str(),
                theirs.as_str()
            );
            frame::write(&mut stream, &refuse(reason.clone())).await?;
            return Err(PunchError::NotApplicable(reason));
        }
    };
    let their_ip = match punches.usable(&public_ip) {
        Ok(ip) => ip,
        Err(e) => {
            frame::write(&mut stream, &refuse("no birthday punch".into())).await?;
            return Err(e);
        }
    };
    let them = Remote {
        peer,
        ip: their_ip,
        budget: theirs_budget,
    };
    let budget = punches.config.budget();
    match role {
        Role::Easy => {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
            let port = socket.local_addr()?.port();
            frame::write(
                &mut stream,
                &Msg::Plan {
                    role: "easy".into(),
                    public_ip: our_ip.to_string(),
                    probe_port: Some(port),
                    budget,
                },
            )
            .await?;
            run_easy(punches, &mut stream, socket, them, started).await
        }
        Role::Hard => {
            let Some(port) = probe_port else {
                return Err(PunchError::Protocol("sent no probe port".into()));
            };
            frame::write(
                &mut stream,
                &Msg::Plan {
                    role: "hard".into(),
                    public_ip: our_ip.to_string(),
                    probe_port: None,
                    budget,
                },
            )
            .await?;
            run_hard(punches, &mut stream, them, port, started).await
        }
    }
}

type Stream = tokio_util::compat::Compat<libp2p::Stream>;

/// The other side of a punch.
struct Remote {
    peer: PeerId,
    /// Its public address (checked with [`Punches::usable`]).
    ip: IpAddr,
    /// Its pace, for our waits.
    budget: probe::Budget,
}

/// The easy side: probes the hard side's address from `socket` until the hard side reports a
/// hit, then listens for QUIC on the probe port and waits for the hard side's dial.
async fn run_easy(
    punches: &Punches,
    stream: &mut Stream,
    socket: UdpSocket,
    hard: Remote,
    started: Instant,
) -> Result<Punched, PunchError> {
    let hard_ip = hard.ip;
    let port = socket.local_addr()?.port();
    let opened = timeout(
        hard.budget.opening_time() + STEP_TIMEOUT,
        frame::read::<Msg, _>(stream),
    )
    .await
    .map_err(|_| PunchError::Protocol("did not open its sockets in time".into()))??;
    let token = match opened {
        Msg::Opened { token } => token,
        Msg::Missed => return Err(PunchError::Missed { probes: 0 }),
        other => return Err(unexpected(&other)),
    };
    let budget = punches.config.budget();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = Box::pin(async move {
        let _ = stop_rx.await;
    });
    let answer = {
        let probing = probe::probe_ports(&socket, hard_ip, token, budget, stop);
        tokio::pin!(probing);
        let read = frame::read::<Msg, _>(stream);
        tokio::pin!(read);
        let mut sent = None;
        let mut stop_tx = Some(stop_tx);
        loop {
            tokio::select! {
                n = &mut probing, if sent.is_none() => {
                    sent = Some(n);
                }
                msg = &mut read => {
                    if let Some(tx) = stop_tx.take() {
                        let _ = tx.send(());
                    }
                    let sent = match sent {
                        Some(n) => n,
                        None => (&mut probing).await,
                    };
                    break (msg, sent);
                }
                () = tokio::time::sleep(STEP_TIMEOUT), if sent.is_some() => {
                    return Err(PunchError::Protocol("did not answer after the probes".into()));
                }
            }
        }
    };
    let (msg, sent) = answer;
    let remote = match msg? {
        Msg::Hit { port } => SocketAddr::new(hard_ip, port),
        Msg::Missed => return Err(PunchError::Missed { probes: sent }),
        other => return Err(unexpected(&other)),
    };
    drop(socket);
    listen_punched(punches, port, None).await?;
    frame::write(stream, &Msg::Listening).await?;
    // The hard side dials us now.
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !punches.direct(hard.peer) {
        if Instant::now() > deadline {
            return Err(PunchError::Quic(format!(
                "no connection came within {STEP_TIMEOUT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Punched {
        role: Role::Easy,
        probes: sent,
        elapsed: started.elapsed(),
        remote,
    })
}

/// The hard side: opens sockets towards `easy`, waits for a probe, then binds QUIC to the
/// winning port and dials `peer` from it.
async fn run_hard(
    punches: &Punches,
    stream: &mut Stream,
    easy_side: Remote,
    probe_port: u16,
    started: Instant,
) -> Result<Punched, PunchError> {
    let peer = easy_side.peer;
    let easy = SocketAddr::new(easy_side.ip, probe_port);
    let budget = punches.config.budget();
    if punches.direct(peer) {
        let _ = frame::write(stream, &Msg::Missed).await;
        return Err(PunchError::NotApplicable(
            "already directly connected".into(),
        ));
    }
    let token: u64 = rand::random();
    let sockets = probe::HardSockets::open(easy, budget, token).await?;
    frame::write(stream, &Msg::Opened { token }).await?;
    // The easy side probes at its own pace; a little more for the relay's latency.
    let hit = sockets
        .first_hit(easy_side.budget.probing_time() + Duration::from_secs(2))
        .await;
    let Some(hit) = hit else {
        let _ = frame::write(stream, &Msg::Missed).await;
        return Err(PunchError::Missed { probes: 0 });
    };
    frame::write(
        stream,
        &Msg::Hit {
            port: hit.public_port,
        },
    )
    .await?;
    // The easy side's probes came from its public probe port: dial that.
    let easy = hit.from;
    listen_punched(punches, hit.local_port, Some(easy)).await?;
    match step(stream).await? {
        Msg::Listening => {}
        other => return Err(unexpected(&other)),
    }
    let addr = Multiaddr::from(easy.ip())
        .with(Protocol::Udp(easy.port()))
        .with(Protocol::QuicV1)
        .with(Protocol::P2p(peer));
    punches
        .node
        .dial_addr(peer, addr)
        .await
        .map_err(|e| PunchError::Quic(e.to_string()))?;
    Ok(Punched {
        role: Role::Hard,
        probes: 0,
        elapsed: started.elapsed(),
        remote: easy,
    })
}

/// Binds QUIC to `port` (its probe socket is closed), to be dialled or to dial `remote`.
async fn listen_punched(
    punches: &Punches,
    port: u16,
    remote: Option<SocketAddr>,
) -> Result<(), PunchError> {
    punches
        .claims
        .claim(port, remote)
        .map_err(|e| PunchError::Quic(e.to_string()))?;
    if let Err(e) = punches.node.listen_punched(port).await {
        punches.claims.unclaim(port);
        return Err(PunchError::Quic(e));
    }
    Ok(())
}

async fn step(stream: &mut Stream) -> Result<Msg, PunchError> {
    timeout(STEP_TIMEOUT, frame::read(stream))
        .await
        .map_err(|_| PunchError::Protocol(format!("did not answer within {STEP_TIMEOUT:?}")))?
        .map_err(PunchError::from)
}

fn unexpected(msg: &Msg) -> PunchError {
    let name = match msg {
        Msg::Hello { .. } => "hello",
        Msg::Plan { .. } => "plan",
        Msg::Refused { .. } => "refused",
        Msg::Opened { .. } => "opened",
        Msg::Hit { .. } => "hit",
        Msg::Missed => "missed",
        Msg::Listening => "listening",
    };
    PunchError::Protocol(format!("sent '{name}' out of turn"))
}

/// Decodes `data` as a punch message and as a probe, and checks what decodes as the node does:
/// the fuzz target's entry (`fuzz/`, feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_frames(data: &[u8]) {
    if let Ok(Some((msg, _))) = frame::decode::<Msg>(data) {
        let _ = unexpected(&msg);
        if let Msg::Hello {
            mapping,
            public_ip,
            budget,
            ..
        }
        | Msg::Plan {
            role: mapping,
            public_ip,
            budget,
            ..
        } = msg
        {
            let _ = parse_mapping(&mapping);
            if let Ok(ip) = parse_ip(&public_ip) {
                let _ = punchgate_machine::mapping::probe_target_ok(ip, false);
            }
            assert!(
                budget.opening_time() <= probe::MAX_WAIT
                    && budget.probing_time() <= probe::MAX_WAIT
            );
        }
    }
    let _ = probe::parse_probe(data, 0);
}

fn parse_ip(text: &str) -> Result<IpAddr, PunchError> {
    text.parse().map_err(|_| {
        PunchError::Protocol(format!("sent a bad address '{}'", frame::loggable(text)))
    })
}

/// The mapping as the wire names it: what the other side needs to pick roles.
fn mapping_code(m: Mapping) -> &'static str {
    if m.preserves_ports() {
        "preserving"
    } else if m.moves_ports() {
        "moves"
    } else {
        "unknown"
    }
}

fn parse_mapping(code: &str) -> Mapping {
    match code {
        "preserving" => Mapping::Preserving { confirmed: false },
        "moves" => Mapping::PortChanges,
        _ => Mapping::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_names_round_trip_the_roles() {
        for m in [
            Mapping::Preserving { confirmed: true },
            Mapping::EndpointDependent { sequential: false },
            Mapping::Unknown,
        ] {
            let back = parse_mapping(mapping_code(m));
            assert_eq!(back.preserves_ports(), m.preserves_ports());
            assert_eq!(back.moves_ports(), m.moves_ports());
        }
        let hello = Msg::Hello {
            mapping: "moves".into(),
            public_ip: "198.51.100.7".into(),
            probe_port: None,
            budget: PunchConfig::default().budget(),
        };
        let text = serde_json::to_string(&hello).expect("json");
        assert_eq!(
            text,
            r#"{"msg":"hello","mapping":"moves","public_ip":"198.51.100.7","budget":{"sockets":256,"probes":2048,"rate":1000}}"#
        );
        // The waits follow the other side's pace, within bounds.
        let slow = probe::Budget {
            sockets: 1024,
            probes: 16384,
            rate: 1,
        };
        assert_eq!(slow.opening_time(), probe::MAX_WAIT);
        assert_eq!(slow.probing_time(), probe::MAX_WAIT);
        let usual = PunchConfig::default().budget();
        assert_eq!(usual.opening_time(), Duration::from_millis(256));
        assert_eq!(usual.probing_time(), Duration::from_millis(2048));
    }
}
