//! Carries the TCP connections accepted on a `--tunnel` port: one libp2p stream each, on the
//! best path to the peer (direct if there is one, the relay otherwise).

use std::net::SocketAddr;

use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    time::timeout,
};
use tokio_util::{compat::FuturesAsyncReadCompatExt as _, sync::CancellationToken};

use super::{
    Books, Limits,
    splice::splice_counted,
    wire::{self, TunnelRequest, TunnelResponse},
};
use crate::{
    config::TunnelSpec,
    metrics::{Path, Refusal, Side},
    node::{NodeHandle, path_kind},
    protocol,
};

/// The most of a local client's first bytes sent with the tunnel request
/// ([`negotiate_with`]).
const EARLY_DATA: usize = 16 * 1024;

/// Accepts connections on `listener` until the node stops.
///
/// Cancelling `stop` (a reload that removed this `--tunnel`) closes the port; the connections
/// it accepted carry on until they end.
pub async fn run(listener: TcpListener, port: super::PortTask) {
    let super::PortTask {
        spec,
        node,
        limits,
        books,
        stop,
        tasks,
    } = port;
    loop {
        let permit = tokio::select! {
            permit = limits.carrying.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let (tcp, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(service = %spec.service, %error, "cannot accept a tunnel connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let spec = spec.clone();
        let node = node.clone();
        let limits = limits.clone();
        let books = books.clone();
        tasks.spawn(async move {
            carry(tcp, from, &spec, &node, &limits, &books).await;
            drop(permit);
        });
    }
}

/// The tunnel request was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiateError {
    /// The server refused, with its reason.
    #[error("refused: {0}")]
    Refused(String),
    /// The exchange failed.
    #[error(transparent)]
    Frame(#[from] wire::FrameError),
    /// No answer in time.
    #[error("no answer to the tunnel request within {0:?}")]
    Timeout(std::time::Duration),
    /// The peer refused the tunnel protocol itself: it is not a Punchgate node (or one without
    /// tunnels, or without UDP tunnels).
    #[error(
        "the peer does not speak the tunnel protocol ({} for TCP, {} for UDP): not a Punchgate node, or (UDP) one from before UDP tunnels?",
        crate::protocol::TUNNEL,
        crate::protocol::UDP_TUNNEL
    )]
    Unsupported,
}

/// Whether `error` is multistream-select's refusal of the protocol a stream proposed. Outbound
/// streams propose lazily (the request travels with the proposal, saving a round trip), so a
/// refusal arrives as an I/O error on the stream's first read.
fn refused_protocol(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<multistream_select::NegotiationError>())
        .is_some_and(|e| matches!(e, multistream_select::NegotiationError::Failed))
}

/// Asks for `service` on a fresh tunnel stream and waits (bounded) for the answer; on `Ok` the
/// stream carries the service's bytes.
pub async fn negotiate<S>(
    stream: &mut S,
    service: &str,
    within: std::time::Duration,
) -> Result<(), NegotiateError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    negotiate_with(stream, service, &[], within).await
}

/// [`negotiate`], sending `early` (the service's first bytes, already read from the local
/// connection) right behind the request, in the same write: a protocol whose client speaks
/// first (HTTP, TLS, an echo) gets its first answer a round trip sooner. The server reads
/// exactly the request frame, so the bytes wait in the stream and reach the service once it is
/// connected; on a refusal they are dropped with the stream.
pub async fn negotiate_with<S>(
    stream: &mut S,
    service: &str,
    early: &[u8],
    within: std::time::Duration,
) -> Result<(), NegotiateError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let exchange = async {
        let mut request = wire::encode(&TunnelRequest {
            service: service.to_owned(),
        })?;
        request.extend_from_slice(early);
        stream
            .write_all(&request)
            .await
            .map_err(wire::FrameError::Io)?;
        stream.flush().await.map_err(wire::FrameError::Io)?;
        wire::read::<TunnelResponse, _>(stream).await
    };
    answer(timeout(within, exchange).await, within)
}

/// Waits (bounded) for the answer to a tunnel request already sent; on `Ok` the stream
/// carries the service's bytes (or datagrams).
pub(super) async fn read_answer<S>(
    stream: &mut S,
    within: std::time::Duration,
) -> Result<(), NegotiateError>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let read = timeout(within, wire::read::<TunnelResponse, _>(stream)).await;
    answer(read, within)
}

/// What a server's answer (or its absence within `within`) means.
fn answer(
    read: Result<Result<TunnelResponse, wire::FrameError>, tokio::time::error::Elapsed>,
    within: std::time::Duration,
) -> Result<(), NegotiateError> {
    match read {
        Ok(Ok(response)) if response.accepted => Ok(()),
        Ok(Ok(response)) => Err(NegotiateError::Refused(
            response
                .reason
                .unwrap_or_else(|| "no reason given".to_owned()),
        )),
        Ok(Err(wire::FrameError::Io(error))) if refused_protocol(&error) => {
            Err(NegotiateError::Unsupported)
        }
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err(NegotiateError::Timeout(within)),
    }
}

async fn carry(
    mut tcp: TcpStream,
    from: SocketAddr,
    spec: &TunnelSpec,
    node: &NodeHandle,
    limits: &Limits,
    books: &Books,
) {
    let _ = tcp.set_nodelay(true);
    let service = spec.service.as_str();
    let refused = |reason| {
        books.metrics.tunnel_refused(service, Side::carried, reason);
    };
    let opened = tokio::select! {
        opened = said_while_waiting(node.open_stream(spec.peer, protocol::TUNNEL), |waited| {
            tracing::info!(%service, peer = %spec.peer, client = %from, waited = ?waited, "tunnel connection waiting for a path to the peer");
        }) => opened,
        () = node.stopped() => return,
    };
    let (stream, info) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            refused(Refusal::unreachable);
            tracing::warn!(%service, peer = %spec.peer, %error, "client tunnel error");
            return;
        }
    };
    tracing::info!(
        peer = %spec.peer,
        %service,
        path = %path_kind(&info),
        remote_addr = %info.remote_addr,
        connection = %info.connection,
        client = %from,
        "tunnel path"
    );
    let mut stream = stream.compat();

    // What the local client sent already (a client-first protocol's request) travels with the
    // tunnel request: one round trip less to the first answer.
    let mut early = vec![0; EARLY_DATA];
    let early_len = match tcp.try_read(&mut early) {
        Ok(n) => n,
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(error) => {
            tracing::debug!(%service, %error, "the local connection failed before the tunnel opened");
            return;
        }
    };
    early.truncate(early_len);

    match negotiate_with(&mut stream, service, &early, limits.negotiation_timeout).await {
        Ok(()) => {}
        Err(NegotiateError::Refused(reason)) => {
            refused(Refusal::refused_by_peer);
            let hint = refusal_hint(service, &reason, node.peer_id());
            // The server's words: cut to a log line's size.
            let reason = crate::frame::loggable(&reason);
            match hint {
                Some(hint) => {
                    tracing::warn!(%service, peer = %spec.peer, %reason, "client tunnel rejected: {hint}");
                }
                None => {
                    tracing::warn!(%service, peer = %spec.peer, %reason, "client tunnel rejected")
                }
            }
            return;
        }
        Err(error) => {
            refused(Refusal::negotiation_failed);
            tracing::warn!(%service, peer = %spec.peer, %error, "client tunnel error");
            return;
        }
    }

    let meter = books
        .metrics
        .tunnel_opened(service, Side::carried, Default::default());
    let _registration = books.active.register(
        super::active::Opened {
            side: Side::carried,
            protocol: crate::config::ServiceProtocol::Tcp,
            service,
            peer: spec.peer,
            path: Path::of(info.relayed),
        },
        meter.live.clone(),
        CancellationToken::new(),
    );
    let sent = early_len as u64;
    meter.progress(sent, 0);
    let result = tokio::select! {
        result = splice_counted(&mut tcp, &mut stream, limits.idle_timeout, |to, from| meter.progress(sent + to, from)) => result.map(|(to, from)| (sent + to, from)),
        () = node.stopped() => Err(std::io::Error::other("node shutting down")),
    };
    match result {
        Ok((to_remote, from_remote)) => tracing::info!(
            %service,
            peer = %spec.peer,
            bytes_to_remote = to_remote,
            bytes_from_remote = from_remote,
            "client tunnel closed"
        ),
        Err(error) if super::splice::IdleTimeout::is(&error) => {
            tracing::info!(%service, peer = %spec.peer, reason = %error, "client tunnel closed");
        }
        Err(error) => tracing::warn!(%service, peer = %spec.peer, %error, "client tunnel error"),
    }
}

/// What to tell the operator about a refusal of `service` whose words are `reason`, besides the
/// words: the server says `unknown service` to a peer it does not allow too (so strangers
/// cannot probe), so say both possibilities here, where only we can read it, and what to ask
/// for (`me` is this node). `None` for any other refusal.
pub(super) fn refusal_hint(service: &str, reason: &str, me: libp2p::PeerId) -> Option<String> {
    (reason == super::server::unknown_service(service)).then(|| {
        format!(
            "the peer does not expose '{service}', or its --allow rule does not name this node; ask its operator for --allow {service}={me}"
        )
    })
}

/// How often a wait for a path to a peer is said to be still going on.
const STILL_WAITING: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `work`, calling `say(waited)` every [`STILL_WAITING`] while it is not done: nobody
/// waits in silence.
pub(super) async fn said_while_waiting<T>(
    work: impl std::future::Future<Output = T>,
    mut say: impl FnMut(std::time::Duration),
) -> T {
    tokio::pin!(work);
    let started = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval_at(started + STILL_WAITING, STILL_WAITING);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = ticks.tick() => say(started.elapsed()),
        }
    }
}

/// How long [`announce`] waits after a failed attempt to reach a tunnel's peer, at first and
/// at most: an offline peer costs its bootstrap nodes a burst of lookups (one attempt, up to
/// the connect timeout) every ten minutes, not a steady stream.
const ANNOUNCE_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(5);
const ANNOUNCE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(600);
/// How long [`announce`] watches for the direct connection after a relayed one.
const ANNOUNCE_DIRECT_WATCH: std::time::Duration = std::time::Duration::from_secs(120);

/// Progress people can see for a `--tunnel`: reaches its peer at once (so the first connection
/// to the port does not wait for the dial), then says in plain words when the tunnel is ready
/// and over which path, and again when a relayed one turns direct. A peer that cannot be
/// reached yet is a WARN with the reason, and is tried again (5 s, 10 s, ... up to ten minutes
/// apart) until it is reached or `stop`. (A connection to the port does not wait for these:
/// it reaches the peer itself.)
pub async fn announce(
    spec: TunnelSpec,
    bind: SocketAddr,
    node: NodeHandle,
    stop: CancellationToken,
) {
    let service = spec.service.as_str();
    let peer = spec.peer;
    let mut events = node.subscribe();
    let mut delay = ANNOUNCE_RETRY_FIRST;
    let info = loop {
        let result = tokio::select! {
            result = said_while_waiting(node.connect(peer), |waited| {
                tracing::info!(%service, %peer, %bind, waited = ?waited, "tunnel not ready yet: still reaching the peer");
            }) => result,
            () = stop.cancelled() => return,
        };
        match result {
            Ok(info) => break info,
            Err(crate::node::ConnectError::Stopped) => return,
            Err(error) => {
                tracing::warn!(%service, %peer, %bind, %error, retry_in = ?delay, "tunnel not ready yet: cannot reach the peer; trying again");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return,
                }
                delay = (delay * 2).min(ANNOUNCE_RETRY_MAX);
            }
        }
    };
    if !info.relayed {
        tracing::info!(%service, %peer, %bind, path = "direct", remote_addr = %info.remote_addr, "tunnel ready over a direct connection");
        return;
    }
    let relay = info
        .relay
        .map_or_else(|| "a relay".to_owned(), |r| r.to_string());
    tracing::info!(%service, %peer, %bind, path = "relayed", %relay, "tunnel ready through a relay; trying for a direct connection");
    let watch = tokio::time::sleep(ANNOUNCE_DIRECT_WATCH);
    tokio::pin!(watch);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(crate::node::NodeEvent::DirectConnection { peer: p, remote_addr, since_relayed, .. }) if p == peer => {
                    let after_ms = since_relayed.map_or(0, |d| d.as_millis() as u64);
                    tracing::info!(%service, %peer, %bind, path = "direct", %remote_addr, after_ms, "tunnel now direct");
                    return;
                }
                Ok(crate::node::NodeEvent::HolePunchFailed { peer: p, reason }) if p == peer => {
                    tracing::info!(%service, %peer, %bind, path = "relayed", %reason, "tunnel stays relayed: no direct connection could be made");
                    return;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            () = &mut watch => return,
            () = stop.cancelled() => return,
        }
    }
}
