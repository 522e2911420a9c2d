//! `--tunnel-udp` ports: one socket, and one session (one stream) per client address.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::Duration,
};

use tokio::{
    net::UdpSocket,
    sync::{Semaphore, mpsc},
    time::Instant,
};
use tokio_util::{
    compat::FuturesAsyncReadCompatExt as _, sync::CancellationToken, task::TaskTracker,
};

use super::{
    DROP_LOG_INTERVAL, End, FrameReader, Local, MAX_DATAGRAM, PushError, QUEUE_BYTES, Queue,
    Queued, RETRY_AFTER, Tally, close, deliver, log_end, receive, widen, write_frames,
};
use crate::{
    config::TunnelSpec,
    metrics::{DropReason, Path, Refusal, Side},
    node::{NodeHandle, path_kind},
    protocol,
    tunnel::{
        Books, Limits,
        client::{NegotiateError, said_while_waiting},
        wire::{self, TunnelRequest},
    },
};

/// One session of a `--tunnel-udp` port.
#[derive(Debug)]
struct Session {
    queue: Queue,
    tally: Arc<Tally>,
}

/// The port's own counts: datagrams dropped before any session took them.
#[derive(Debug)]
struct Port {
    tally: Tally,
    /// No new session before this (after a refusal, or a peer that could not be reached).
    retry_at: Mutex<Option<(Instant, String)>>,
}

impl Port {
    /// New sessions wait [`RETRY_AFTER`] from now, because of `why`. Whether they were not
    /// waiting already: sessions that started before the first failure fail alike, and only
    /// the first says so at WARN.
    fn hold(&self, why: String) -> bool {
        let mut held = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let new = held.as_ref().is_none_or(|(until, _)| *until <= now);
        *held = Some((now + RETRY_AFTER, why));
        new
    }

    /// Whether new sessions wait now.
    fn held(&self) -> bool {
        let held = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref()
            .is_some_and(|(until, _)| Instant::now() < *until)
    }

    /// Why new sessions wait (or last waited).
    fn why(&self) -> String {
        let held = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref()
            .map_or_else(String::new, |(_, why)| why.clone())
    }
}

/// Receives on a `--tunnel-udp` socket until the node stops (or `stop`: a reload that removed
/// the port), carrying each client address's datagrams as one session.
///
/// A new session takes one of the port's `limits.max_udp_sessions` slots and a
/// `limits.carrying` permit (shared with TCP tunnels); when either is gone, the datagrams of new
/// clients are dropped and counted, and sessions already open go on. (Anyone who can send to
/// the port can make up source addresses: the slots keep that to the port's share.)
/// Sessions answer their clients from the port's socket, so they end with the port (unlike a
/// TCP port's connections): this returns once they have (at most [`PORT_CLOSE_WAIT`] later),
/// and the address is free to bind again.
pub async fn run(socket: UdpSocket, port: crate::tunnel::PortTask) {
    let crate::tunnel::PortTask {
        spec,
        node,
        limits,
        books,
        stop,
        tasks,
    } = port;
    widen(&socket);
    let socket = Arc::new(socket);
    let service = spec.service.to_string();
    let port = Arc::new(Port {
        tally: Tally::new(
            books.metrics.udp_meter(&service, Side::carried),
            Side::carried,
            limits.udp.clone(),
            true,
        ),
        retry_at: Mutex::new(None),
    });
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let slots = Arc::new(Semaphore::new(limits.max_udp_sessions));
    let open = TaskTracker::new();
    let mut last_error: Option<Instant> = None;
    loop {
        let (mut datagram, from) = tokio::select! {
            received = receive(&socket) => match received {
                Ok(received) => received,
                // An ICMP error for a datagram we sent to a client that has gone: nothing to do.
                Err(error) if matches!(error.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) => continue,
                Err(error) => {
                    if last_error.is_none_or(|t| t.elapsed() >= DROP_LOG_INTERVAL) {
                        last_error = Some(Instant::now());
                        tracing::warn!(%service, %error, "cannot receive on a udp tunnel port (said once per 10 s while it lasts)");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        if datagram.len() > MAX_DATAGRAM {
            if let Some(dropped) = port.tally.drop_one(DropReason::too_large) {
                tracing::warn!(%service, client = %from, dropped, max = MAX_DATAGRAM, "udp tunnel: dropped a datagram too large to carry");
            }
            continue;
        }
        if let Some(session) = sessions.get(&from) {
            match session.queue.push(datagram) {
                Ok(()) => continue,
                Err(PushError::Full) => {
                    if let Some(dropped) = session.tally.drop_one(DropReason::queue_full) {
                        tracing::warn!(%service, peer = %spec.peer, client = %from, dropped, queue_bytes = QUEUE_BYTES, "udp tunnel dropping datagrams: the path to the peer does not keep up with this client");
                    }
                    continue;
                }
                Err(PushError::Budget) => {
                    if let Some(dropped) = session.tally.drop_one(DropReason::budget) {
                        tracing::warn!(%service, peer = %spec.peer, client = %from, dropped, "udp tunnel dropping datagrams: the node's budget for queued datagrams (or this peer's part of it) is spent: many sessions' streams do not keep up");
                    }
                    continue;
                }
                // That session ended (idle, or closed by the peer): this datagram starts the
                // next one.
                Err(PushError::Closed(back)) => {
                    sessions.remove(&from);
                    datagram = back;
                }
            }
        }
        if port.held() {
            if let Some(dropped) = port.tally.drop_one(DropReason::no_session) {
                let why = port.why();
                tracing::warn!(%service, peer = %spec.peer, client = %from, dropped, retry_in = ?RETRY_AFTER, %why, "udp tunnel dropping datagrams: the last session failed, new ones wait");
            }
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(dropped) = port.tally.drop_one(DropReason::session_limit) {
                tracing::warn!(%service, client = %from, dropped, max = limits.max_udp_sessions, "udp tunnel dropping a new client's datagrams: the port has as many sessions as --max-udp-sessions allows");
            }
            continue;
        };
        let Ok(permit) = limits.carrying.clone().try_acquire_owned() else {
            if let Some(dropped) = port.tally.drop_one(DropReason::session_limit) {
                tracing::warn!(%service, client = %from, dropped, "udp tunnel dropping a new client's datagrams: as many tunnels as --max-tunnels allows are open");
            }
            continue;
        };
        sessions.retain(|_, s| !s.queue.is_closed());
        let (queue, outbound) = Queue::new(&limits.udp, spec.peer, Side::carried);
        let tally = Arc::new(Tally::new(
            books.metrics.udp_meter(&service, Side::carried),
            Side::carried,
            limits.udp.clone(),
            false,
        ));
        if let Err(PushError::Budget | PushError::Full) = queue.push(datagram) {
            // The node's budget is spent: the session opens all the same, for the next ones.
            tally.count_drops(DropReason::budget, 1);
        }
        sessions.insert(
            from,
            Session {
                queue,
                tally: tally.clone(),
            },
        );
        let session = Carried {
            socket: socket.clone(),
            client: from,
            spec: spec.clone(),
            port: port.clone(),
            tally,
            closed: stop.clone(),
        };
        let node = node.clone();
        let limits = limits.clone();
        let books = books.clone();
        tasks.spawn(open.track_future(async move {
            session.run(outbound, &node, &limits, &books).await;
            drop((slot, permit));
        }));
    }
    // The sessions see the port close (and their queues end); wait for them to let the
    // socket go.
    drop(sessions);
    open.close();
    let _ = tokio::time::timeout(PORT_CLOSE_WAIT, open.wait()).await;
}

/// How long a closing `--tunnel-udp` port waits for its sessions to end.
const PORT_CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Why a session ended when its port closed.
const PORT_CLOSED: &str =
    "its --tunnel-udp port closed (a reload removed it, or the node is stopping)";

/// A session of a `--tunnel-udp` port, carried to the peer.
#[derive(Debug)]
struct Carried {
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    spec: TunnelSpec,
    port: Arc<Port>,
    tally: Arc<Tally>,
    /// The port closed (a reload removed it, or the node is stopping).
    closed: CancellationToken,
}

impl Carried {
    /// Carries the session until it ends: on a stream to the peer, and, if that stream rides a
    /// relay and a direct connection comes up, on a new stream over it (the serving node sees
    /// a new session, and the service a new source port: WireGuard roams, and a session's
    /// datagrams stop paying for the relay).
    async fn run(
        self,
        mut outbound: mpsc::Receiver<Queued>,
        node: &NodeHandle,
        limits: &Limits,
        books: &Books,
    ) {
        let service = self.spec.service.as_str();
        let peer = self.spec.peer;
        let client = self.client;
        // From before the first stream opens: a direct connection that comes up while it does
        // is not missed.
        let mut events = node.subscribe();
        loop {
            let end = self
                .carry_once(&mut outbound, &mut events, node, limits, books)
                .await;
            match end {
                Some(End::Moved) => {
                    self.tally.reopen();
                    tracing::info!(%service, %peer, %client, "udp session moving to the direct connection");
                }
                Some(end) => {
                    self.tally.ended(&mut outbound);
                    log_end(&self.tally, &end, service, &peer);
                    return;
                }
                // Refused, or the peer could not be reached: logged.
                None => {
                    self.tally.ended(&mut outbound);
                    return;
                }
            }
        }
    }

    /// One stream of the session: opens it, asks for the service, and carries datagrams until
    /// the session ends or moves (`Some`), or the stream is refused or cannot be opened
    /// (`None`, logged).
    async fn carry_once(
        &self,
        outbound: &mut mpsc::Receiver<Queued>,
        events: &mut tokio::sync::broadcast::Receiver<crate::node::NodeEvent>,
        node: &NodeHandle,
        limits: &Limits,
        books: &Books,
    ) -> Option<End> {
        let service = self.spec.service.as_str();
        let peer = self.spec.peer;
        let client = self.client;
        // The port's readiness lines say when its peer cannot be reached yet
        // (`client::announce`): one line per port, not one per session.
        let opened = tokio::select! {
            opened = said_while_waiting(node.open_stream(peer, protocol::UDP_TUNNEL), |waited| {
                tracing::debug!(%service, %peer, %client, waited = ?waited, "udp session waiting for a path to the peer");
            }) => opened,
            () = self.closed.cancelled() => return Some(End::Stopped(PORT_CLOSED)),
        };
        let (stream, info) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                books
                    .metrics
                    .tunnel_refused(service, Side::carried, Refusal::unreachable);
                let dropped = self.tally.ended(outbound);
                if self.port.hold(format!("cannot reach the peer: {error}")) {
                    tracing::warn!(%service, %peer, %client, %error, dropped, retry_in = ?RETRY_AFTER, "client udp session failed: cannot reach the peer");
                } else {
                    tracing::debug!(%service, %peer, %client, %error, dropped, "client udp session failed: cannot reach the peer");
                }
                return None;
            }
        };
        tracing::info!(
            %peer,
            %service,
            protocol = "udp",
            path = %path_kind(&info),
            remote_addr = %info.remote_addr,
            connection = %info.connection,
            %client,
            "tunnel path"
        );
        let (mut reader, mut writer) = tokio::io::split(stream.compat());
        let request = TunnelRequest {
            service: service.to_owned(),
        };
        if let Err(error) = wire::write(&mut writer, &request).await {
            self.tally.ended(outbound);
            self.refused(NegotiateError::Frame(error), node, books);
            return None;
        }
        let local = Local::Client {
            socket: self.socket.clone(),
            addr: client,
        };
        let mut registration = None;
        let mut meter = None;
        let idle = limits.udp_idle_timeout;
        // The answer comes while the first datagrams are already on their way.
        let reading = async {
            crate::tunnel::client::read_answer(&mut reader, limits.negotiation_timeout).await?;
            self.tally.accept();
            let mut reader = FrameReader::new(reader);
            meter = Some(books.metrics.tunnel_opened(
                service,
                Side::carried,
                self.tally.meter.live.clone(),
            ));
            registration = Some(books.active.register(
                crate::tunnel::active::Opened {
                    side: Side::carried,
                    protocol: crate::config::ServiceProtocol::Udp,
                    service,
                    peer,
                    path: Path::of(info.relayed),
                },
                self.tally.meter.live.clone(),
                CancellationToken::new(),
            ));
            tracing::info!(%service, %peer, %client, path = %path_kind(&info), "client udp session open");
            Ok(End::of(
                deliver(&mut reader, &local, &self.tally, service).await,
            ))
        };
        let writing = async {
            match write_frames(&mut writer, outbound, &self.tally).await {
                // The queue ends only with the port.
                Ok(()) => End::Stopped(PORT_CLOSED),
                // A refusing server resets the stream, so writes fail before its answer is
                // read: the answer says why, and `reading` waits for it (or times out).
                Err(_) if !self.tally.is_accepted() => std::future::pending().await,
                Err(error) => End::Failed(error.to_string()),
            }
        };
        // A relayed session moves once the peer is reached directly: once this stream was
        // accepted (so its early datagrams' replies come back on it), and between two writes
        // (so the peer never sees a frame cut short).
        let direct = async {
            if !info.relayed {
                return std::future::pending().await;
            }
            loop {
                match events.recv().await {
                    Ok(crate::node::NodeEvent::DirectConnection { peer: p, .. }) if p == peer => {
                        break;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        return std::future::pending().await;
                    }
                    _ => {}
                }
            }
            while !self.tally.is_accepted() || self.tally.in_flight.load(Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let end = tokio::select! {
            biased;
            end = reading => end,
            end = writing => Ok(end),
            () = self.tally.idle(idle) => Ok(End::Idle(idle)),
            () = self.closed.cancelled() => Ok(End::Stopped(PORT_CLOSED)),
            () = direct => Ok(End::Moved),
        };
        drop(registration);
        drop(meter);
        match end {
            Ok(end) => {
                close(&mut writer).await;
                Some(end)
            }
            Err(error) => {
                self.tally.ended(outbound);
                self.refused(error, node, books);
                None
            }
        }
    }

    /// Logs why the peer did not take the session, and holds new sessions back a while.
    fn refused(&self, error: NegotiateError, node: &NodeHandle, books: &Books) {
        let service = self.spec.service.as_str();
        let peer = self.spec.peer;
        let client = self.client;
        let dropped = self.tally.dropped.load(Relaxed);
        match error {
            NegotiateError::Refused(reason) => {
                books
                    .metrics
                    .tunnel_refused(service, Side::carried, Refusal::refused_by_peer);
                let hint = crate::tunnel::client::refusal_hint(service, &reason, node.peer_id());
                let reason = crate::frame::loggable(&reason);
                if !self.port.hold(reason.clone()) {
                    tracing::debug!(%service, %peer, %client, %reason, dropped, "client udp session rejected");
                    return;
                }
                match hint {
                    Some(hint) => {
                        tracing::warn!(%service, %peer, %client, %reason, dropped, retry_in = ?RETRY_AFTER, "client udp session rejected: {hint}");
                    }
                    None => {
                        tracing::warn!(%service, %peer, %client, %reason, dropped, retry_in = ?RETRY_AFTER, "client udp session rejected");
                    }
                }
            }
            error => {
                books
                    .metrics
                    .tunnel_refused(service, Side::carried, Refusal::negotiation_failed);
                if self.port.hold(error.to_string()) {
                    tracing::warn!(%service, %peer, %client, %error, dropped, retry_in = ?RETRY_AFTER, "client udp session failed");
                } else {
                    tracing::debug!(%service, %peer, %client, %error, dropped, "client udp session failed");
                }
            }
        }
    }
}
