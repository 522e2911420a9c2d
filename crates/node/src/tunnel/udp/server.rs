//! Served UDP sessions: each with its own socket, connected to the service.

use std::{io, net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::UdpSocket,
    time::timeout,
};
use tokio_util::sync::CancellationToken;

use super::{
    End, FrameReader, Local, MAX_DATAGRAM, PushError, QUEUE_BYTES, Queue, Tally, close, deliver,
    log_end, receive, widen, write_frames,
};
use crate::{
    config::HostPort,
    metrics::{DropReason, Side},
    node::path_kind,
    tunnel::{
        Books, Limits,
        wire::{self, TunnelResponse},
    },
};

/// An admitted session to serve: what [`super::server`] learnt of it.
#[derive(Debug)]
pub(in crate::tunnel) struct Served<'a> {
    /// The service's name (for logs).
    pub service: &'a str,
    /// Its metrics label.
    pub label: &'a str,
    /// Where it listens.
    pub target: &'a HostPort,
    /// Who asked.
    pub peer: libp2p::PeerId,
    /// The connection the stream came on.
    pub info: &'a crate::net::stream::ConnectionInfo,
    /// The session's bytes, as `/status` shows them.
    pub live: Arc<crate::metrics::LiveBytes>,
}

/// Why a served session was not accepted.
#[derive(Debug)]
pub(in crate::tunnel) enum NotServed {
    /// The service's address could not be resolved or bound: the refusal's words.
    Unreachable(String),
    /// `close_token` fired first (a reload took the peer's access away, or the node is
    /// stopping).
    Closed,
}

/// Serves one admitted session on a stream whose request was read: opens a socket connected to
/// the service, answers, then carries datagrams both ways until the session ends or
/// `close_token` (a reload, or the node stopping). `Err`: not accepted, and the caller refuses.
pub(in crate::tunnel) async fn serve<S>(
    mut stream: S,
    session: Served<'_>,
    limits: &Limits,
    books: &Books,
    close_token: &CancellationToken,
) -> Result<(), NotServed>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Served {
        service,
        label,
        target,
        peer,
        info,
        live,
    } = session;
    let connected = tokio::select! {
        connected = timeout(limits.service_connect_timeout, connect(target)) => connected,
        () = close_token.cancelled() => return Err(NotServed::Closed),
    };
    let socket = match connected {
        Ok(Ok(socket)) => Arc::new(socket),
        Ok(Err(error)) => {
            return Err(NotServed::Unreachable(format!(
                "service '{service}' is unreachable: {error}"
            )));
        }
        Err(_) => {
            return Err(NotServed::Unreachable(format!(
                "service '{service}' could not be resolved within {:?}",
                limits.service_connect_timeout
            )));
        }
    };
    if let Err(error) = wire::write(&mut stream, &TunnelResponse::accept()).await {
        tracing::warn!(peer_id = %peer, %service, %error, "udp session error");
        return Ok(());
    }
    let local_addr = socket
        .peer_addr()
        .map_or_else(|_| target.to_string(), |a| a.to_string());
    tracing::info!(peer_id = %peer, %service, %local_addr, path = %path_kind(info), "udp session accepted");

    let mut meter = books.metrics.udp_meter(label, Side::served);
    meter.live = live;
    let tally = Tally::new(meter, Side::served, limits.udp.clone(), true);
    let _meter = books
        .metrics
        .tunnel_opened(label, Side::served, tally.meter.live.clone());
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = FrameReader::new(reader);
    let (queue, mut outbound) = Queue::new(&limits.udp, peer, Side::served);
    let local = Local::Service {
        socket: socket.clone(),
    };
    let idle = limits.udp_idle_timeout;
    // The service's datagrams: into the queue, or dropped when it is full.
    let ingress = async {
        let mut refused_logged = false;
        loop {
            let datagram = match receive(&socket).await {
                Ok((datagram, _)) => datagram,
                // The service's host said port unreachable to an earlier datagram (delivered to
                // the socket, and counted so; lost on the way in).
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                    if !refused_logged {
                        refused_logged = true;
                        tracing::warn!(peer_id = %peer, %service, %local_addr, "udp service is not listening: its host answered port unreachable (datagrams to it are dropped until it listens)");
                    }
                    continue;
                }
                Err(error) => return End::Failed(format!("the service's socket: {error}")),
            };
            if datagram.len() > MAX_DATAGRAM {
                if let Some(dropped) = tally.drop_one(DropReason::too_large) {
                    tracing::warn!(peer_id = %peer, %service, dropped, max = MAX_DATAGRAM, "udp tunnel: dropped a datagram from the service too large to carry");
                }
                continue;
            }
            match queue.push(datagram) {
                Ok(()) => {}
                Err(PushError::Full) => {
                    if let Some(dropped) = tally.drop_one(DropReason::queue_full) {
                        tracing::warn!(peer_id = %peer, %service, dropped, queue_bytes = QUEUE_BYTES, "udp tunnel dropping datagrams: the path to the peer does not keep up with the service");
                    }
                }
                Err(PushError::Budget) => {
                    if let Some(dropped) = tally.drop_one(DropReason::budget) {
                        tracing::warn!(peer_id = %peer, %service, dropped, "udp tunnel dropping datagrams: the node's budget for queued datagrams (or this peer's part of it) is spent: many sessions' streams do not keep up");
                    }
                }
                // The receiving end lives in this function until it returns.
                Err(PushError::Closed(_)) => return End::Closed,
            }
        }
    };
    let end = tokio::select! {
        read = deliver(&mut reader, &local, &tally, service) => End::of(read),
        written = write_frames(&mut writer, &mut outbound, &tally) => End::of(written),
        end = ingress => end,
        () = tally.idle(idle) => End::Idle(idle),
        () = close_token.cancelled() => End::Stopped("closed: the node is stopping, or a reload took the peer's access away"),
    };
    tally.ended(&mut outbound);
    close(&mut writer).await;
    log_end(&tally, &end, service, &peer);
    Ok(())
}

/// A socket connected to `target` (its first address), from an ephemeral port of the same
/// family: it hears only the service, so its replies belong to this session.
async fn connect(target: &HostPort) -> io::Result<UdpSocket> {
    let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the name has no address"))?;
    let unspecified: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(unspecified).await?;
    widen(&socket);
    socket.connect(addr).await?;
    Ok(socket)
}
