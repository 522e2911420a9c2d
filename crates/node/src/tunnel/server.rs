//! Serves inbound tunnel streams, TCP (`/punchgate/tunnel/1.0.0`) and UDP
//! (`/punchgate/udp/1.0.0`) alike: read the request, admit, connect to the exposed service,
//! answer, then splice (TCP) or carry datagrams ([`super::udp`]). Every failure refuses the
//! stream with a reason the client logs; the node goes on serving everyone else.
//!
//! Admission ([`crate::access`]): a peer that is not allowed to use a service gets exactly the
//! refusal a peer asking for a service that does not exist gets (same words, and both are
//! answered before anything is connected), so a stranger cannot find out which services a node
//! has. Only admitted peers hear about a service's own failures. A stream that arrives on a short
//! relay circuit (one its relay would cut after a few minutes or kilobytes) is refused before
//! the service it names is looked up, so a tunnel is never cut off mid-stream by the relay. A
//! peer past its share of the tunnel permits (`--max-tunnels-per-peer`) is refused before its
//! request is read. A peer that no rule names never takes one of the permits that named peers'
//! tunnels use ([`run`]).

use std::{
    collections::HashMap,
    str::FromStr as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{io::AsyncWriteExt as _, net::TcpStream, time::timeout};
use tokio_util::{
    compat::FuturesAsyncReadCompatExt as _, sync::CancellationToken, task::TaskTracker,
};

use super::{
    Books, Limits, OTHER_SERVICE,
    splice::splice_counted,
    wire::{self, TunnelRequest, TunnelResponse},
};
use crate::{
    access::{Access, DenialLog},
    config::{ExposeSpec, ServiceName, ServiceProtocol},
    metrics::{Path, Refusal, ServiceLabels, Side},
    net::stream::IncomingStream,
    node::path_kind,
};

/// Services a node exposes, by name (TCP and UDP share the names): where each listens, and
/// whether it is TCP or UDP (a stream of the other protocol is refused).
pub type Services = HashMap<ServiceName, ExposeSpec>;

/// The services and who may use each: replaced whole by a reload ([`Exposed::replace`]).
#[derive(Debug)]
pub struct Rules {
    /// The services, by name.
    pub services: Services,
    /// Who may use each.
    pub access: Access,
}

impl Rules {
    /// Whether `peer` may use service `name`, and the node has it.
    pub fn admits(&self, name: &ServiceName, peer: &libp2p::PeerId) -> bool {
        self.services.contains_key(name) && self.access.admits(name, peer)
    }
}

/// What the tunnel server serves, and to whom.
#[derive(Debug)]
pub struct Exposed {
    /// The rules now. A stream is judged by the rules of the moment its request arrives.
    rules: std::sync::RwLock<Arc<Rules>>,
    /// Refusals logged, rate-limited per peer.
    pub denials: Mutex<DenialLog>,
    /// This node's peer id (named in the advice of a short-circuit refusal).
    pub local: libp2p::PeerId,
    /// Looks up what a relay said about a circuit after its stream arrived.
    pub control: crate::net::stream::Control,
}

impl Exposed {
    /// Services and the rules for them, served by `local`.
    pub fn new(
        services: Services,
        access: Access,
        local: libp2p::PeerId,
        control: crate::net::stream::Control,
    ) -> Self {
        Self {
            rules: std::sync::RwLock::new(Arc::new(Rules { services, access })),
            denials: Mutex::new(DenialLog::default()),
            local,
            control,
        }
    }

    /// The rules now.
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves `rules` from now on (a reload); streams being judged finish under the old ones.
    pub fn replace(&self, rules: Rules) {
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
    }

    /// What the relay said about a relayed connection's circuit, waiting a moment for it when
    /// the stream came first.
    async fn circuit_limit(
        &self,
        info: &crate::net::stream::ConnectionInfo,
    ) -> Option<punchgate_machine::CircuitLimit> {
        let deadline = tokio::time::Instant::now() + CIRCUIT_LIMIT_WAIT;
        loop {
            let limit = info.circuit_limit.or_else(|| {
                self.control
                    .connection_info(info.connection)
                    .and_then(|i| i.circuit_limit)
            });
            if limit.is_some() || tokio::time::Instant::now() >= deadline {
                return limit;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether a refusal for `peer` should be logged now; `Some(n)` with the lines held back.
    fn log_denial(&self, peer: libp2p::PeerId) -> Option<u64> {
        self.denials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(peer, std::time::Instant::now())
    }
}

/// Stands for a requested name that is not a valid service name (never logged or echoed).
const INVALID_NAME: &str = "(not a service name)";

/// The refusal for a service that does not exist, and (word for word) for one the peer may not
/// use.
pub fn unknown_service(service: &str) -> String {
    format!("unknown service '{service}'")
}

/// How long a stream on a relayed connection waits for the relay's word on the circuit.
const CIRCUIT_LIMIT_WAIT: Duration = Duration::from_secs(1);

/// How long a refusal may take to write before the stream is dropped anyway.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Accepts tunnel streams until the node stops.
///
/// - A peer that some `--allow` rule names gets a `limits.serving` permit for each stream
///   within its share; when no permit is left, its streams wait in the accept queue (and peers
///   are slowed down) instead of being dropped.
/// - A peer no rule names, and a stream past its peer's share, is refused on a permit of
///   `limits.refusing` instead: strangers cannot hold the permits named peers need. When those
///   run out too, the stream is reset at once.
pub async fn run(
    mut incoming: impl futures::Stream<Item = IncomingStream> + Unpin,
    services: Arc<Exposed>,
    limits: Limits,
    books: Books,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            stream = futures::StreamExt::next(&mut incoming) => match stream {
                Some(stream) => stream,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        let peer = stream.info.peer;
        let share = match limits.per_peer.take(peer) {
            Ok(share) => share,
            Err(open) => {
                // Before the request is read: the refusal says nothing about the services.
                let reason = format!(
                    "too many tunnels from this peer: {open} open, at most {} per peer (--max-tunnels-per-peer on the serving node)",
                    limits.per_peer.max()
                );
                let Some(permit) = refusal_permit(&limits, &services, &books, peer) else {
                    continue;
                };
                books
                    .metrics
                    .tunnel_refused(OTHER_SERVICE, Side::served, Refusal::per_peer_limit);
                if let Some(held_back) = services.log_denial(peer) {
                    tracing::warn!(peer_id = %peer, %reason, held_back, "tunnel rejected");
                }
                // The slot goes with the stream: it counts until the refusal is written.
                let IncomingStream { stream, slot, .. } = stream;
                tasks.spawn(async move {
                    refuse(&mut stream.compat(), reason).await;
                    drop((slot, permit));
                });
                continue;
            }
        };
        let permit = if services.rules().access.names(&peer) {
            tokio::select! {
                permit = limits.serving.clone().acquire_owned() => match permit {
                    Ok(permit) => Permit::Serving(permit),
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            }
        } else {
            // Refused whatever it asks (in serve, with the words a missing service gets).
            match refusal_permit(&limits, &services, &books, peer) {
                Some(refusal) => Permit::Refusing(refusal),
                None => continue,
            }
        };
        let services = services.clone();
        let limits = limits.clone();
        let books = books.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            serve(stream, &services, &limits, &books, &shutdown).await;
            drop((share, permit));
        });
    }
}

/// What a served stream holds until it is done: a serving permit (a named peer), or a refusal
/// permit and the peer's refusal share (a stranger).
#[derive(Debug)]
#[expect(dead_code, reason = "held only to be released when the stream is done")]
enum Permit {
    Serving(tokio::sync::OwnedSemaphorePermit),
    Refusing((super::Share, tokio::sync::OwnedSemaphorePermit)),
}

/// A permit to refuse one more stream of `peer` (one of the node's, and one of the peer's
/// share of them), or `None` (and the stream is reset) when as many refusals as the node, or as
/// that peer, may have are in progress.
fn refusal_permit(
    limits: &Limits,
    services: &Exposed,
    books: &Books,
    peer: libp2p::PeerId,
) -> Option<(super::Share, tokio::sync::OwnedSemaphorePermit)> {
    let refusal = match limits.refusing_per_peer.take(peer) {
        Ok(share) => match limits.refusing.clone().try_acquire_owned() {
            Ok(permit) => return Some((share, permit)),
            Err(_) => (
                super::REFUSING_STREAMS,
                "tunnel stream reset: as many refusals as the node allows are in progress (a flood of streams from peers no --allow rule admits)",
            ),
        },
        Err(_) => (
            super::REFUSING_STREAMS_PER_PEER,
            "tunnel stream reset: this peer already has as many refusals in progress as one peer may (streams no --allow rule admits, or past its share)",
        ),
    };
    books
        .metrics
        .tunnel_refused(OTHER_SERVICE, Side::served, Refusal::reset);
    if let Some(held_back) = services.log_denial(peer) {
        let (limit, message) = refusal;
        tracing::warn!(peer_id = %peer, limit, held_back, "{message}");
    }
    None
}

async fn serve(
    incoming: IncomingStream,
    exposed: &Exposed,
    limits: &Limits,
    books: &Books,
    shutdown: &CancellationToken,
) {
    let refused = |service: &str, reason| {
        books.metrics.tunnel_refused(service, Side::served, reason);
    };
    // The slot counts the stream against its connection's cap until this returns.
    let IncomingStream {
        stream,
        info,
        slot,
        protocol,
    } = incoming;
    let wanted = if protocol == crate::protocol::UDP_TUNNEL {
        ServiceProtocol::Udp
    } else {
        ServiceProtocol::Tcp
    };
    let _slot = slot;
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
            refused(OTHER_SERVICE, Refusal::bad_request);
            let reason = format!("bad tunnel request: {error}");
            if let Some(held_back) = exposed.log_denial(peer) {
                tracing::warn!(peer_id = %peer, service = "", %reason, held_back, "tunnel rejected");
            }
            refuse(&mut stream, reason).await;
            return;
        }
        Err(_) => {
            refused(OTHER_SERVICE, Refusal::bad_request);
            let reason = format!("no tunnel request within {:?}", limits.negotiation_timeout);
            if let Some(held_back) = exposed.log_denial(peer) {
                tracing::warn!(peer_id = %peer, service = "", %reason, held_back, "tunnel rejected");
            }
            refuse(&mut stream, reason).await;
            return;
        }
    };
    // The name is the peer's text: logged and echoed only as a valid service name.
    let name = ServiceName::from_str(&request.service).ok();
    let service = name.as_ref().map_or(INVALID_NAME, ServiceName::as_str);
    tracing::debug!(peer_id = %peer, %service, protocol = %wanted, path = %path_kind(&info), "tunnel request");
    // The rules of this moment: a reload later closes the tunnel if they no longer admit it.
    let rules = exposed.rules();
    // The metrics' label: the name only when the node has such a service.
    let label = name
        .as_ref()
        .filter(|name| rules.services.contains_key(*name))
        .map_or(OTHER_SERVICE, ServiceName::as_str);

    // A relayed connection carries a tunnel only when its relay said the circuit is long; one it
    // said nothing about is not trusted with a tunnel either.
    let short = if info.relayed {
        match exposed.circuit_limit(&info).await {
            Some(limit) if !limit.is_short() => None,
            limit => Some(limit),
        }
    } else {
        None
    };
    if let Some(limit) = short {
        refused(label, Refusal::short_circuit);
        let reason = format!(
            "this connection is a short relay circuit: {}",
            crate::access::short_circuit_advice(info.relay, limit.as_ref(), peer, exposed.local)
        );
        if let Some(held_back) = exposed.log_denial(peer) {
            tracing::warn!(peer_id = %peer, %service, %reason, held_back, "tunnel rejected");
        }
        refuse(&mut stream, reason).await;
        return;
    }

    let target = name.as_ref().and_then(|name| rules.services.get(name));
    let admitted = name
        .as_ref()
        .is_some_and(|name| rules.access.admits(name, &peer));
    let Some(target) = target.filter(|_| admitted) else {
        if target.is_some() {
            books
                .metrics
                .tunnels_denied
                .get_or_create(&ServiceLabels {
                    service: label.to_owned(),
                })
                .inc();
        } else {
            refused(label, Refusal::unknown_service);
        }
        if let Some(held_back) = exposed.log_denial(peer) {
            if target.is_some() {
                tracing::warn!(peer_id = %peer, %service, held_back, "tunnel denied: the peer is not in the service's --allow rule");
            } else {
                tracing::warn!(peer_id = %peer, %service, held_back, "tunnel rejected: no such service");
            }
        }
        refuse(&mut stream, unknown_service(service)).await;
        return;
    };
    tracing::info!(peer_id = %peer, %service, protocol = %wanted, path = %path_kind(&info), "tunnel request admitted");
    // Only a peer the service admits learns what kind of service it is.
    if target.protocol != wanted {
        refused(label, Refusal::wrong_protocol);
        let reason = match target.protocol {
            ServiceProtocol::Udp => format!(
                "service '{service}' is a UDP service: reach it with --tunnel-udp, not --tunnel"
            ),
            ServiceProtocol::Tcp => format!(
                "service '{service}' is a TCP service: reach it with --tunnel, not --tunnel-udp"
            ),
        };
        tracing::warn!(peer_id = %peer, %service, %reason, "tunnel rejected");
        refuse(&mut stream, reason).await;
        return;
    }

    // In the table from here on, so a reload from now on sees it (and can close it). A reload
    // that came between our look at the rules and this did not: look again.
    let live = Arc::<crate::metrics::LiveBytes>::default();
    let registration = books.active.register(
        super::active::Opened {
            side: Side::served,
            protocol: wanted,
            service,
            peer,
            path: Path::of(info.relayed),
        },
        live.clone(),
        shutdown.child_token(),
    );
    let now = exposed.rules();
    let still_admitted =
        Arc::ptr_eq(&now, &rules) || name.as_ref().is_some_and(|name| now.admits(name, &peer));
    if !still_admitted {
        refuse(&mut stream, unknown_service(service)).await;
        return;
    }

    let target = &target.target;
    if wanted == ServiceProtocol::Udp {
        let served = super::udp::serve(
            &mut stream,
            super::udp::Served {
                service,
                label,
                target,
                peer,
                info: &info,
                live,
            },
            limits,
            books,
            &registration.close,
        )
        .await;
        match served {
            Ok(()) => {}
            Err(super::udp::NotServed::Unreachable(reason)) => {
                refused(label, Refusal::service_unreachable);
                tracing::warn!(peer_id = %peer, %service, %reason, %target, "tunnel rejected");
                refuse(&mut stream, reason).await;
            }
            // As a TCP tunnel closed while connecting.
            Err(super::udp::NotServed::Closed) => {
                refuse(&mut stream, unknown_service(service)).await;
            }
        }
        return;
    }
    let connect = async {
        tokio::select! {
            connected = TcpStream::connect((target.host.as_str(), target.port)) => Some(connected),
            () = registration.close.cancelled() => None,
        }
    };
    let mut tcp = match timeout(limits.service_connect_timeout, connect).await {
        // Closed (a reload took the peer's access away, or the node is stopping) while
        // connecting.
        Ok(None) => {
            refuse(&mut stream, unknown_service(service)).await;
            return;
        }
        Ok(Some(Ok(tcp))) => tcp,
        Ok(Some(Err(error))) => {
            refused(label, Refusal::service_unreachable);
            let reason = format!("service '{service}' is unreachable: {error}");
            tracing::warn!(peer_id = %peer, %service, %reason, target = %target, "tunnel rejected");
            refuse(&mut stream, reason).await;
            return;
        }
        Err(_) => {
            refused(label, Refusal::service_unreachable);
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
    tracing::info!(peer_id = %peer, %service, %local_addr, path = %path_kind(&info), "tunnel accepted");

    let meter = books.metrics.tunnel_opened(label, Side::served, live);
    let result = tokio::select! {
        result = splice_counted(&mut stream, &mut tcp, limits.idle_timeout, |to, from| meter.progress(to, from)) => result,
        () = registration.close.cancelled() => Err(std::io::Error::other(if shutdown.is_cancelled() {
            "node shutting down"
        } else {
            "closed by a reload: the service's --allow rule no longer names this peer"
        })),
    };
    match result {
        Ok((to_service, from_service)) => tracing::info!(
            peer_id = %peer,
            %service,
            bytes_to_service = to_service,
            bytes_from_service = from_service,
            "tunnel closed"
        ),
        Err(error) if super::splice::IdleTimeout::is(&error) => {
            tracing::info!(peer_id = %peer, %service, reason = %error, "tunnel closed");
        }
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
