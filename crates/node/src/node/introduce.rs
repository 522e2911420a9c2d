//! Introductions: a relay tells a peer to dial us now, so that both dials cross in the network
//! (see `punchgate_machine::reach` for when this is used).
//!
//! Two protocols, one [frame](crate::frame) each way:
//! - `/punchgate/introduce/1.0.0`, requester A → relay R: `{"target": B}`; R answers
//!   `{"ok": true, "target_addrs": [...]}` with B's address as R observes it, or
//!   `{"ok": false, "reason": "..."}`.
//! - `/punchgate/introduction/1.0.0`, R → target B: `{"peer": A, "addrs": [...]}` with A's
//!   address as R observes it. B dials it at once.
//!
//! R only passes on addresses it observed itself, never addresses a requester claims, so an
//! introduction cannot make B dial a third party; B only acts on introductions from its own
//! relay (checked by the driver). Both sides bound how many introductions run at once.

use std::{sync::Arc, time::Duration};

use libp2p::{Multiaddr, PeerId};
use punchgate_machine::{
    introductions,
    limit::{Admit, PerKey},
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::Semaphore,
    time::timeout,
};
use tokio_util::{
    compat::FuturesAsyncReadCompatExt as _, sync::CancellationToken, task::TaskTracker,
};

use super::NodeHandle;
use crate::{
    frame,
    net::stream::{ConnectionInfo, Control, IncomingStream, IncomingStreams},
};

pub(crate) use crate::protocol::{INTRODUCE, INTRODUCTION};
/// Introductions served (as relay) or received (as target) at once.
const MAX_CONCURRENT: usize = 64;
/// Each exchange's deadline.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
struct IntroduceRequest {
    target: String,
    /// Ports the requester listens on: among the relay's connections from the requester, the
    /// one whose observed port is one of these is the NAT mapping to pass on (a connection
    /// dialled from another port, such as an AutoNAT dial-back, maps elsewhere).
    #[serde(default)]
    listen_ports: Vec<u16>,
}

#[derive(Debug, Serialize, Deserialize)]
struct IntroduceResponse {
    ok: bool,
    #[serde(default)]
    target_addrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Introduction {
    peer: String,
    addrs: Vec<String>,
}

/// An introduction request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IntroduceError {
    /// The relay could not introduce us.
    #[error("refused: {0}")]
    Refused(String),
    /// The stream could not be opened.
    #[error(transparent)]
    Stream(#[from] crate::net::stream::OpenStreamError),
    /// The exchange failed.
    #[error(transparent)]
    Frame(#[from] frame::FrameError),
    /// No answer in time.
    #[error("no answer within {EXCHANGE_TIMEOUT:?}")]
    Timeout,
}

/// Asks the relay at the other end of `relay` to introduce us to `target`; returns the target's
/// addresses as the relay observes them. `listen_ports` are our listen ports.
pub(crate) async fn request(
    control: Control,
    relay: ConnectionInfo,
    target: PeerId,
    listen_ports: Vec<u16>,
) -> Result<Vec<Multiaddr>, IntroduceError> {
    let exchange = async {
        let mut stream = control
            .open_stream(relay.connection, INTRODUCE)
            .await?
            .compat();
        frame::write(
            &mut stream,
            &IntroduceRequest {
                target: target.to_string(),
                listen_ports,
            },
        )
        .await?;
        let response: IntroduceResponse = frame::read(&mut stream).await?;
        answer_addrs(response)
    };
    timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| IntroduceError::Timeout)?
}

/// Serves introduction requests (every node, as a potential relay) until the node stops.
pub(crate) async fn serve(
    mut incoming: IncomingStreams,
    control: Control,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
    let requesters = Arc::new(std::sync::Mutex::new(introductions::requester_limits()));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            s = incoming.next() => match s {
                Some(s) => s,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        let control = control.clone();
        let requesters = requesters.clone();
        tasks.spawn(async move {
            if timeout(EXCHANGE_TIMEOUT, introduce(stream, &control, &requesters))
                .await
                .is_err()
            {
                tracing::debug!("introduction request timed out");
            }
            drop(permit);
        });
    }
}

async fn introduce(
    incoming: IncomingStream,
    control: &Control,
    requesters: &std::sync::Mutex<PerKey<PeerId>>,
) {
    let requester = incoming.info.clone();
    // Counted against the connection's stream cap until the introduction is done.
    let _slot = incoming.slot;
    let mut stream = incoming.stream.compat();
    let request: IntroduceRequest = match frame::read(&mut stream).await {
        Ok(r) => r,
        Err(error) => {
            tracing::debug!(peer = %requester.peer, %error, "bad introduction request");
            return;
        }
    };
    let mut to_target = None;
    let admitted = requesters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(&requester.peer, std::time::Instant::now());
    let introduced = match admitted {
        Admit::Yes => relay_introduction(control, &requester, &request).await,
        Admit::OverLimit => Err(format!(
            "too many introduction requests from this peer: at most {} a minute",
            introductions::INTRODUCTION_REQUESTS_PER_MINUTE
        )),
        Admit::TooManyKeys => Err(format!(
            "this relay is counting introductions for {} other peers already: try again within a minute",
            introductions::MAX_COUNTED_REQUESTERS
        )),
    };
    let answer = match introduced {
        Ok((target_addrs, stream)) => {
            to_target = Some(stream);
            tracing::info!(requester = %requester.peer, target = %request.target, "introduced peers");
            IntroduceResponse {
                ok: true,
                target_addrs: target_addrs.iter().map(ToString::to_string).collect(),
                reason: None,
            }
        }
        Err(reason) => {
            tracing::debug!(requester = %requester.peer, target = %request.target, %reason, "introduction refused");
            IntroduceResponse {
                ok: false,
                target_addrs: Vec::new(),
                reason: Some(reason),
            }
        }
    };
    let _ = frame::write(&mut stream, &answer).await;
    let _ = stream.shutdown().await;
    // Keep the target's stream until the target closes it: with lazy protocol negotiation the
    // target still has to write its confirmation, which fails (QUIC: STOP_SENDING) if we have
    // already dropped the stream. The target sends nothing else.
    if let Some(mut stream) = to_target {
        let mut rest = [0u8; 64];
        let _ = timeout(EXCHANGE_TIMEOUT, async {
            while matches!(stream.read(&mut rest).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}

/// A stream to the target, kept open until the target closes it.
type TargetStream = tokio_util::compat::Compat<libp2p::Stream>;

/// Sends the target the requester's observed address; returns the target's observed addresses
/// and the (write-closed) stream to the target.
async fn relay_introduction(
    control: &Control,
    requester: &ConnectionInfo,
    request: &IntroduceRequest,
) -> Result<(Vec<Multiaddr>, TargetStream), String> {
    if requester.relayed {
        return Err("introductions are only made over direct connections".into());
    }
    let target = target_of(request)?;
    let to_target: Vec<ConnectionInfo> = control
        .connections_of(target)
        .into_iter()
        .filter(|c| !c.relayed)
        .collect();
    let Some(first) = to_target.first() else {
        return Err(format!("not directly connected to {target}"));
    };
    // The requester's NAT mapping of its listen port, if one of our connections shows it.
    let requester_addr = control
        .connections_of(requester.peer)
        .into_iter()
        .filter(|c| !c.relayed)
        .map(|c| strip_p2p(c.remote_addr))
        .find(|a| port_of(a).is_some_and(|p| request.listen_ports.contains(&p)))
        .unwrap_or_else(|| strip_p2p(requester.remote_addr.clone()));
    let mut stream = control
        .open_stream(first.connection, INTRODUCTION)
        .await
        .map_err(|e| e.to_string())?
        .compat();
    let introduction = Introduction {
        peer: requester.peer.to_string(),
        addrs: vec![requester_addr.to_string()],
    };
    frame::write(&mut stream, &introduction)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.shutdown().await;
    let mut target_addrs: Vec<Multiaddr> = Vec::new();
    for c in to_target {
        let addr = strip_p2p(c.remote_addr);
        if !target_addrs.contains(&addr) {
            target_addrs.push(addr);
        }
    }
    Ok((target_addrs, stream))
}

/// The TCP or UDP port of an address.
pub(crate) fn port_of(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Tcp(port) | libp2p::multiaddr::Protocol::Udp(port) => {
            Some(port)
        }
        _ => None,
    })
}

/// Receives introductions (every node, as a potential target) and hands them to the driver,
/// which checks they come from our relay and dials.
pub(crate) async fn receive(mut incoming: IncomingStreams, node: NodeHandle, tasks: TaskTracker) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = node.stopped() => break,
        };
        let stream = tokio::select! {
            s = incoming.next() => match s {
                Some(s) => s,
                None => break,
            },
            () = node.stopped() => break,
        };
        let node = node.clone();
        tasks.spawn(async move {
            let from = stream.info.peer;
            // The slot counts against the connection's stream cap until this is done.
            let IncomingStream { stream, slot, .. } = stream;
            let _slot = slot;
            let mut stream = stream.compat();
            match timeout(
                EXCHANGE_TIMEOUT,
                frame::read::<Introduction, _>(&mut stream),
            )
            .await
            {
                Ok(Ok(introduction)) => match introduced(&introduction) {
                    Some((peer, addrs)) => node.introduced(from, peer, addrs).await,
                    None => tracing::debug!(%from, "introduction names no valid peer"),
                },
                Ok(Err(error)) => tracing::debug!(%from, %error, "bad introduction"),
                Err(_) => tracing::debug!(%from, "introduction timed out"),
            }
            drop(permit);
        });
    }
}

/// The peer a requester asks to be introduced to.
fn target_of(request: &IntroduceRequest) -> Result<PeerId, String> {
    request
        .target
        .parse()
        .map_err(|_| format!("'{}' is not a peer id", frame::loggable(&request.target)))
}

/// The target's addresses in a relay's answer, or its refusal.
fn answer_addrs(response: IntroduceResponse) -> Result<Vec<Multiaddr>, IntroduceError> {
    if !response.ok {
        return Err(IntroduceError::Refused(frame::loggable(
            &response.reason.unwrap_or_else(|| "no reason given".into()),
        )));
    }
    Ok(parse_addrs(&response.target_addrs))
}

/// Who an introduction introduces, and at which addresses (the state machine filters them).
fn introduced(introduction: &Introduction) -> Option<(PeerId, Vec<Multiaddr>)> {
    let peer = introduction.peer.parse().ok()?;
    Some((peer, parse_addrs(&introduction.addrs)))
}

/// Decodes `data` as each of the three introduction messages, and checks what decodes as the
/// node does: the fuzz target's entry (`fuzz/`, feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_frames(data: &[u8], ours: &[Multiaddr]) {
    use introductions::to_dial;
    if let Ok(Some((request, _))) = frame::decode::<IntroduceRequest>(data) {
        let _ = target_of(&request);
    }
    if let Ok(Some((response, _))) = frame::decode::<IntroduceResponse>(data)
        && let Ok(addrs) = answer_addrs(response)
    {
        let _ = to_dial(addrs, false, ours);
    }
    if let Ok(Some((introduction, _))) = frame::decode::<Introduction>(data)
        && let Some((_, addrs)) = introduced(&introduction)
    {
        let _ = to_dial(addrs.clone(), true, ours);
        let _ = to_dial(addrs, false, ours);
    }
}

fn parse_addrs(list: &[String]) -> Vec<Multiaddr> {
    list.iter()
        .filter_map(|a| a.parse().ok())
        .take(crate::node::records::MAX_RECORD_ADDRS)
        .collect()
}

fn strip_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(
        addr.iter().last(),
        Some(libp2p::multiaddr::Protocol::P2p(_))
    ) {
        addr.pop();
    }
    addr
}
