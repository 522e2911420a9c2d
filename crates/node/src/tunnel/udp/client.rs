//! `--tunnel-udp` ports: one socket, and one session (one stream) per client address.

use super::*;

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
    fn hold(&self, why: String) {
        *self.retry_at.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now() + RETRY_AFTER, why));
    }

    /// Why new sessions wait, while they do.
    fn held(&self) -> Option<String> {
        let mut held = self.retry_at.lock().unwrap_or_else(|e| e.into_inner());
        match &*held {
            Some((until, why)) if Instant::now() < *until => Some(why.clone()),
            Some(_) => {
                *held = None;
                None
            }
            None => None,
        }
    }
}

/// Receives on a `--tunnel-udp` socket until the node stops (or `stop`: a reload that removed
/// the port), carrying each client address's datagrams as one session.
///
/// New sessions take a `limits.carrying` permit (shared with TCP tunnels); when none is left,
/// the datagrams of new clients are dropped and counted, and sessions already open go on.
/// Sessions answer their clients from the port's socket, so they end with the port (unlike a
/// TCP port's connections): this returns once they have (at most [`PORT_CLOSE_WAIT`] later),
/// and the address is free to bind again.
pub async fn run(
    socket: UdpSocket,
    spec: TunnelSpec,
    node: NodeHandle,
    limits: Limits,
    books: Books,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    widen(&socket);
    let socket = Arc::new(socket);
    let service = spec.service.to_string();
    let port = Arc::new(Port {
        tally: Tally::new(
            books.metrics.udp_meter(&service, Side::carried),
            Side::carried,
            true,
        ),
        retry_at: Mutex::new(None),
    });
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let open = TaskTracker::new();
    loop {
        let (mut datagram, from) = tokio::select! {
            received = receive(&socket) => match received {
                Ok(received) => received,
                // An ICMP error for a datagram we sent to a client that has gone: nothing to do.
                Err(error) if matches!(error.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset) => continue,
                Err(error) => {
                    tracing::warn!(%service, %error, "cannot receive on a udp tunnel port");
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
                // That session ended (idle, or closed by the peer): this datagram starts the
                // next one.
                Err(PushError::Closed(back)) => {
                    sessions.remove(&from);
                    datagram = back;
                }
            }
        }
        if let Some(why) = port.held() {
            if let Some(dropped) = port.tally.drop_one(DropReason::no_session) {
                tracing::warn!(%service, peer = %spec.peer, client = %from, dropped, retry_in = ?RETRY_AFTER, %why, "udp tunnel dropping datagrams: the last session failed, new ones wait");
            }
            continue;
        }
        let Ok(permit) = limits.carrying.clone().try_acquire_owned() else {
            if let Some(dropped) = port.tally.drop_one(DropReason::session_limit) {
                tracing::warn!(%service, client = %from, dropped, "udp tunnel dropping a new client's datagrams: as many tunnels as --max-tunnels allows are open");
            }
            continue;
        };
        sessions.retain(|_, s| !s.queue.is_closed());
        let (queue, outbound) = Queue::new();
        let tally = Arc::new(Tally::new(
            books.metrics.udp_meter(&service, Side::carried),
            Side::carried,
            false,
        ));
        let _ = queue.push(datagram);
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
            drop(permit);
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
        let refused = |reason| {
            books.metrics.tunnel_refused(service, Side::carried, reason);
        };
        // Whatever waited for a session that never came is dropped.
        let drop_waiting = |outbound: &mut mpsc::Receiver<Queued>| {
            outbound.close();
            while outbound.try_recv().is_ok() {
                self.tally.drop_one(DropReason::no_session);
            }
        };
        let opened = tokio::select! {
            opened = said_while_waiting(node.open_stream(peer, protocol::UDP_TUNNEL), |waited| {
                tracing::info!(%service, %peer, %client, waited = ?waited, "udp session waiting for a path to the peer");
            }) => opened,
            () = self.closed.cancelled() => return,
        };
        let (stream, info) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                refused(Refusal::unreachable);
                drop_waiting(&mut outbound);
                self.port.hold(format!("cannot reach the peer: {error}"));
                tracing::warn!(%service, %peer, %client, %error, retry_in = ?RETRY_AFTER, "client udp session failed: cannot reach the peer");
                return;
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
            refused(Refusal::negotiation_failed);
            drop_waiting(&mut outbound);
            tracing::warn!(%service, %peer, %client, %error, "client udp session failed");
            return;
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
            Ok(End::of_reading(
                deliver(&mut reader, &local, &self.tally, service).await,
            ))
        };
        let end = tokio::select! {
            end = reading => end,
            // The queue ends only with the port.
            written = write_frames(&mut writer, &mut outbound, &self.tally) => Ok(match written {
                Ok(()) => End::Stopped(PORT_CLOSED),
                Err(error) => End::Failed(error.to_string()),
            }),
            () = self.tally.idle(idle) => Ok(End::Idle(idle)),
            () = self.closed.cancelled() => Ok(End::Stopped(PORT_CLOSED)),
        };
        drop(registration);
        drop(meter);
        let end = match end {
            Ok(end) => end,
            Err(error) => {
                self.tally.refuse();
                drop_waiting(&mut outbound);
                self.refused(error, node, books);
                return;
            }
        };
        outbound.close();
        close(&mut writer).await;
        log_end(&self.tally, &end, Side::carried, service, &peer);
    }

    /// Logs why the peer did not take the session, and holds new sessions back a while.
    fn refused(&self, error: NegotiateError, node: &NodeHandle, books: &Books) {
        let service = self.spec.service.as_str();
        let peer = self.spec.peer;
        let client = self.client;
        let reason = match error {
            NegotiateError::Refused(reason) => {
                books
                    .metrics
                    .tunnel_refused(service, Side::carried, Refusal::refused_by_peer);
                let unknown = reason == crate::tunnel::server::unknown_service(service);
                let reason = crate::frame::loggable(&reason);
                if unknown {
                    let me = node.peer_id();
                    tracing::warn!(%service, %peer, %client, %reason, retry_in = ?RETRY_AFTER, "client udp session rejected: the peer does not expose '{service}', or its --allow rule does not name this node; ask its operator for --allow {service}={me}");
                } else {
                    tracing::warn!(%service, %peer, %client, %reason, retry_in = ?RETRY_AFTER, "client udp session rejected");
                }
                reason
            }
            error => {
                books
                    .metrics
                    .tunnel_refused(service, Side::carried, Refusal::negotiation_failed);
                tracing::warn!(%service, %peer, %client, %error, retry_in = ?RETRY_AFTER, "client udp session failed");
                error.to_string()
            }
        };
        self.port.hold(reason);
    }
}
