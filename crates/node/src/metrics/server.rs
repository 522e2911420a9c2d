//! `--metrics ADDR`: a small HTTP/1.1 server with two pages.
//!
//! - `GET /metrics`: the Prometheus text exposition (OpenMetrics) of every metric the node
//!   keeps ([`super`]).
//! - `GET /status`: JSON: the peer id, the NAT status, the relay reservation, the connected
//!   peers with their path and round trip, the exposed services and the open tunnels.
//!
//! It is for the operator: bind it to loopback (or a management network), since the status
//! names the services and the peers; a bind elsewhere is a WARN. On loopback it answers only
//! requests whose `Host` is an IP address or `localhost`, so a web page in the operator's
//! browser cannot read it through a DNS name rebound to 127.0.0.1. It is bounded like the rest
//! of the node: at most [`MAX_CONNECTIONS`] clients at once, each with [`HEADER_TIMEOUT`] to
//! send a request and [`CONNECTION_LIFETIME`] in all.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use punchgate_machine::{NatStatus, RelayState};
use serde::Serialize;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    node::{ConnectionStatus, NodeHandle},
    tunnel::{
        active::{ActiveTunnels, TunnelStatus},
        server::Exposed,
    },
};

/// Clients served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one client connection may last (a client that does not read its answer lets go
/// of its slot then).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The OpenMetrics content type prometheus-client's text encoder writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the pages are made of.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Every metric.
    pub registry: Arc<Registry>,
    /// The node, for its state.
    pub node: NodeHandle,
    /// The services and their rules.
    pub exposed: Arc<Exposed>,
    /// The open tunnels.
    pub tunnels: ActiveTunnels,
    /// Punchgate's metrics (for the relay counts).
    pub metrics: super::Metrics,
}

/// Serves the pages on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    sources: Sources,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    if !loopback {
        tracing::warn!(
            addr = ?listener.local_addr().ok(),
            "--metrics is not on a loopback address: anyone who can reach it can read the status (services, allow rules, peers); keep it on 127.0.0.1 or a management network"
        );
    }
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    tracing::warn!(%error, "metrics: cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let sources = sources.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let sources = sources.clone();
                async move { Ok::<_, Infallible>(respond(request, &sources, loopback).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                result = tokio::time::timeout(CONNECTION_LIFETIME, connection) => match result {
                    Ok(Err(error)) => tracing::debug!(%error, "metrics: connection ended"),
                    Err(_) => tracing::debug!("metrics: connection closed after its lifetime"),
                    Ok(Ok(())) => {}
                },
                () = shutdown.cancelled() => {}
            }
            drop(permit);
        });
    }
}

async fn respond(
    request: Request<Incoming>,
    sources: &Sources,
    loopback: bool,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    if loopback && !local_host(&request) {
        return plain(
            StatusCode::FORBIDDEN,
            "forbidden: on loopback, the Host header must be an IP address or localhost\n",
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &sources.registry) {
                Ok(()) => response(StatusCode::OK, OPENMETRICS, text),
                Err(error) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode the metrics: {error}\n"),
                ),
            }
        }
        "/status" => match status(sources).await {
            Some(status) => match serde_json::to_string_pretty(&status) {
                Ok(json) => response(StatusCode::OK, "application/json", json + "\n"),
                Err(error) => plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("cannot encode the status: {error}\n"),
                ),
            },
            None => plain(StatusCode::SERVICE_UNAVAILABLE, "the node is stopping\n"),
        },
        "/" => plain(
            StatusCode::OK,
            "punchgate: /metrics (Prometheus), /status (JSON)\n",
        ),
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /status\n",
        ),
    }
}

/// Whether the request's `Host` names this machine without DNS: an IP address or `localhost`
/// (with or without a port).
fn local_host(request: &Request<Incoming>) -> bool {
    let Some(host) = request
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // [v6]:port or [v6]
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", text.to_owned())
}

/// `/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// This node.
    pub peer_id: String,
    /// The lifecycle phase (for example `Participating`).
    pub phase: String,
    /// `public`, `private` or `unknown`.
    pub nat: &'static str,
    /// How our NAT maps our listen ports, from what peers observe: `quic` and `tcp`, each
    /// `unknown`, `port-preserving (one observer)`, `endpoint-independent, port-preserving`,
    /// `endpoint-independent`, `endpoint-dependent (symmetric), random ports` (or `sequential
    /// ports`), or `port changes (...)`.
    pub nat_mapping: NatMapping,
    /// Where the node listens (circuit addresses included).
    pub listen_addrs: Vec<String>,
    /// Confirmed external addresses.
    pub external_addrs: Vec<String>,
    /// Our own relay reservation.
    pub reservation: Reservation,
    /// Reservations this node serves for others, as a relay.
    pub reservations_served: i64,
    /// Circuits this node relays now.
    pub circuits: i64,
    /// Open connections.
    pub connections: Vec<Connection>,
    /// Exposed services.
    pub services: Vec<Service>,
    /// Open tunnels.
    pub tunnels: Vec<TunnelStatus>,
}

/// How our NAT maps our listen ports.
#[derive(Debug, Serialize)]
pub struct NatMapping {
    /// The QUIC (UDP) listen port's.
    pub quic: &'static str,
    /// The TCP listen port's.
    pub tcp: &'static str,
}

/// Our relay reservation.
#[derive(Debug, Serialize)]
pub struct Reservation {
    /// `none`, `requesting` or `reserved`.
    pub state: &'static str,
    /// The relay.
    pub relay: Option<String>,
    /// Our circuit address on it.
    pub addr: Option<String>,
}

/// An open connection.
#[derive(Debug, Serialize)]
pub struct Connection {
    /// The peer.
    pub peer: String,
    /// `direct` or `relayed`.
    pub path: &'static str,
    /// `quic`, `tcp` or `other`.
    pub transport: &'static str,
    /// `outbound` (we dialled) or `inbound`.
    pub direction: &'static str,
    /// The remote address.
    pub remote_addr: String,
    /// The relay, for a relayed connection.
    pub relay: Option<String>,
    /// The last ping round trip in milliseconds, once there was one.
    pub rtt_ms: Option<f64>,
}

/// An exposed service.
#[derive(Debug, Serialize)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// The local address it forwards to.
    pub target: String,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// Who may use it (the `--allow` rule).
    pub allow: String,
}

async fn status(sources: &Sources) -> Option<Status> {
    let node = sources.node.status().await.ok()?;
    let (state, relay, addr) = match &node.relay {
        RelayState::Idle => ("none", None, None),
        RelayState::Requesting { relay } => ("requesting", Some(relay.to_string()), None),
        RelayState::Reserved { relay, addr } => {
            ("reserved", Some(relay.to_string()), Some(addr.to_string()))
        }
    };
    let rules = sources.exposed.rules();
    let mut services: Vec<Service> = rules
        .services
        .iter()
        .map(|(name, service)| Service {
            name: name.to_string(),
            target: service.target.to_string(),
            protocol: service.protocol.as_str(),
            allow: rules
                .access
                .rule(name)
                .map_or_else(|| "nobody".to_owned(), ToString::to_string),
        })
        .collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let metrics = &sources.metrics;
    Some(Status {
        peer_id: sources.node.peer_id().to_string(),
        phase: format!("{:?}", node.phase),
        nat: match node.nat {
            NatStatus::Public => "public",
            NatStatus::Private => "private",
            NatStatus::Unknown => "unknown",
        },
        nat_mapping: NatMapping {
            quic: node.mapping_quic.as_str(),
            tcp: node.mapping_tcp.as_str(),
        },
        listen_addrs: node.listen_addrs.iter().map(ToString::to_string).collect(),
        external_addrs: node
            .external_addrs
            .iter()
            .map(ToString::to_string)
            .collect(),
        reservation: Reservation { state, relay, addr },
        reservations_served: metrics.reservations_served.get(),
        circuits: metrics.circuits.get(),
        connections: node.connections.iter().map(connection).collect(),
        services,
        tunnels: sources.tunnels.snapshot(),
    })
}

fn connection(c: &ConnectionStatus) -> Connection {
    let info = &c.info;
    Connection {
        peer: info.peer.to_string(),
        path: if info.relayed { "relayed" } else { "direct" },
        transport: match super::Transport::of(&info.remote_addr) {
            super::Transport::quic => "quic",
            super::Transport::tcp => "tcp",
            super::Transport::other => "other",
        },
        direction: if info.outbound { "outbound" } else { "inbound" },
        remote_addr: info.remote_addr.to_string(),
        relay: info.relay.map(|r| r.to_string()),
        rtt_ms: c.rtt.map(|d| d.as_secs_f64() * 1000.0),
    }
}
