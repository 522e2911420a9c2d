//! Carries the TCP connections accepted on a `--tunnel` port: one libp2p stream each, on the
//! best path to the peer (direct if there is one, the relay otherwise).

use std::net::SocketAddr;

use tokio::{
    net::{TcpListener, TcpStream},
    time::timeout,
};
use tokio_util::{compat::FuturesAsyncReadCompatExt as _, task::TaskTracker};

use super::{
    Limits,
    splice::splice,
    wire::{self, TunnelRequest, TunnelResponse},
};
use crate::{
    config::TunnelSpec,
    node::{NodeHandle, path_kind},
    protocol,
};

/// Accepts connections on `listener` until the node stops.
pub async fn run(
    listener: TcpListener,
    spec: TunnelSpec,
    node: NodeHandle,
    limits: Limits,
    tasks: TaskTracker,
) {
    loop {
        let permit = tokio::select! {
            permit = limits.carrying.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = node.stopped() => break,
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
            () = node.stopped() => break,
        };
        let spec = spec.clone();
        let node = node.clone();
        let limits = limits.clone();
        tasks.spawn(async move {
            carry(tcp, from, &spec, &node, &limits).await;
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
    /// tunnels).
    #[error(
        "the peer does not speak {} (not a Punchgate node?)",
        crate::protocol::TUNNEL
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
    let exchange = async {
        wire::write(
            stream,
            &TunnelRequest {
                service: service.to_owned(),
            },
        )
        .await?;
        wire::read::<TunnelResponse, _>(stream).await
    };
    match timeout(within, exchange).await {
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
) {
    let _ = tcp.set_nodelay(true);
    let service = spec.service.as_str();
    let opened = tokio::select! {
        opened = node.open_stream(spec.peer, protocol::TUNNEL) => opened,
        () = node.stopped() => return,
    };
    let (stream, info) = match opened {
        Ok(opened) => opened,
        Err(error) => {
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

    match negotiate(&mut stream, service, limits.negotiation_timeout).await {
        Ok(()) => {}
        Err(NegotiateError::Refused(reason)) => {
            let unknown = reason == crate::tunnel::server::unknown_service(service);
            // The server's words: cut to a log line's size.
            let reason = crate::frame::loggable(&reason);
            if unknown {
                // The server says the same to a peer it does not allow (so strangers cannot
                // probe); say both possibilities here, where only we can read it.
                let me = node.peer_id();
                tracing::warn!(%service, peer = %spec.peer, %reason, "client tunnel rejected: the peer does not expose '{service}', or its --allow rule does not name this node; ask its operator for --allow {service}={me}");
            } else {
                tracing::warn!(%service, peer = %spec.peer, %reason, "client tunnel rejected");
            }
            return;
        }
        Err(error) => {
            tracing::warn!(%service, peer = %spec.peer, %error, "client tunnel error");
            return;
        }
    }

    let result = tokio::select! {
        result = splice(&mut tcp, &mut stream, limits.idle_timeout) => result,
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
