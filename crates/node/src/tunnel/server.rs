//! Serves inbound tunnel streams: read the request, connect to the exposed service, answer,
//! then splice. Every failure refuses the stream with a reason the client logs; the node goes on
//! serving everyone else.

use std::{collections::HashMap, str::FromStr as _, sync::Arc, time::Duration};

use tokio::{io::AsyncWriteExt as _, net::TcpStream, time::timeout};
use tokio_util::{
    compat::FuturesAsyncReadCompatExt as _, sync::CancellationToken, task::TaskTracker,
};

use super::{
    Limits,
    splice::splice,
    wire::{self, TunnelRequest, TunnelResponse},
};
use crate::{
    config::{HostPort, ServiceName},
    net::stream::{IncomingStream, IncomingStreams},
    node::path_kind,
};

/// Services a node exposes, by name.
pub type Services = HashMap<ServiceName, HostPort>;

/// How long a refusal may take to write before the stream is dropped anyway.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Accepts tunnel streams until the node stops. When `limits.serving` has no permit left, streams
/// wait in the accept queue (and peers are slowed down) instead of being dropped.
pub async fn run(
    mut incoming: IncomingStreams,
    services: Arc<Services>,
    limits: Limits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let permit = tokio::select! {
            permit = limits.serving.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            stream = incoming.next() => match stream {
                Some(stream) => stream,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        let services = services.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            serve(stream, &services, &limits, &shutdown).await;
            drop(permit);
        });
    }
}

async fn serve(
    incoming: IncomingStream,
    services: &Services,
    limits: &Limits,
    shutdown: &CancellationToken,
) {
    let IncomingStream { stream, info, .. } = incoming;
    let peer = info.peer;
    let mut stream = stream.compat();

    let request = match timeout(
        limits.negotiation_timeout,
        wire::read::<TunnelRequest, _>(&mut stream),
    )
    .await
    {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => {
            let reason = format!("bad tunnel request: {error}");
            tracing::warn!(peer_id = %peer, service = "", %reason, "tunnel rejected");
            refuse(&mut stream, reason).await;
            return;
        }
        Err(_) => {
            let reason = format!("no tunnel request within {:?}", limits.negotiation_timeout);
            tracing::warn!(peer_id = %peer, service = "", %reason, "tunnel rejected");
            refuse(&mut stream, reason).await;
            return;
        }
    };
    let service = request.service;
    tracing::info!(peer_id = %peer, %service, path = %path_kind(&info), "tunnel request");

    let Some(target) = ServiceName::from_str(&service)
        .ok()
        .and_then(|name| services.get(&name))
    else {
        let reason = format!("unknown service '{service}'");
        tracing::warn!(peer_id = %peer, %service, %reason, "tunnel rejected");
        refuse(&mut stream, reason).await;
        return;
    };

    let connect = TcpStream::connect((target.host.as_str(), target.port));
    let mut tcp = match timeout(limits.service_connect_timeout, connect).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(error)) => {
            let reason = format!("service '{service}' is unreachable: {error}");
            tracing::warn!(peer_id = %peer, %service, %reason, target = %target, "tunnel rejected");
            refuse(&mut stream, reason).await;
            return;
        }
        Err(_) => {
            let reason = format!(
                "service '{service}' did not accept a connection within {:?}",
                limits.service_connect_timeout
            );
            tracing::warn!(peer_id = %peer, %service, %reason, target = %target, "tunnel rejected");
            refuse(&mut stream, reason).await;
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let local_addr = tcp
        .peer_addr()
        .map_or_else(|_| target.to_string(), |a| a.to_string());

    if let Err(error) = wire::write(&mut stream, &TunnelResponse::accept()).await {
        tracing::warn!(peer_id = %peer, %service, %error, "tunnel error");
        return;
    }
    tracing::info!(peer_id = %peer, %service, %local_addr, "tunnel accepted");

    let result = tokio::select! {
        result = splice(&mut stream, &mut tcp) => result,
        () = shutdown.cancelled() => Err(std::io::Error::other("node shutting down")),
    };
    match result {
        Ok((to_service, from_service)) => tracing::info!(
            peer_id = %peer,
            %service,
            bytes_to_service = to_service,
            bytes_from_service = from_service,
            "tunnel closed"
        ),
        Err(error) => tracing::warn!(peer_id = %peer, %service, %error, "tunnel error"),
    }
}

/// Sends a refusal (bounded in time) and closes the stream.
async fn refuse<S>(stream: &mut S, reason: String)
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let _ = timeout(REFUSAL_TIMEOUT, async {
        wire::write(stream, &TunnelResponse::refuse(reason)).await?;
        stream.shutdown().await.map_err(wire::FrameError::Io)
    })
    .await;
}
