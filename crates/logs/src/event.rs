//! What an [`Entry`] means: the node's own log lines, recognised by their message (and, for a
//! few, its first words: several refusals share a prefix), with the fields each report needs.
//! The messages and field names are those in `crates/node/src` (`node/driver.rs`,
//! `node/mod.rs`, `tunnel/server.rs`, `tunnel/client.rs`, `tunnel/udp/`, `cli.rs`); anything else is
//! [`Event::Other`],
//! which reports count but do not interpret, so a new log line never breaks a report.

use crate::parse::Entry;

/// The direct or relayed path a connection or tunnel took (`path = direct|relayed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// A direct connection (hole punched, or plainly reachable).
    Direct,
    /// Through a relay's circuit.
    Relayed,
}

impl Path {
    fn parse(text: Option<&str>) -> Option<Self> {
        match text? {
            "direct" => Some(Self::Direct),
            "relayed" => Some(Self::Relayed),
            _ => None,
        }
    }

    /// `direct` or `relayed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
        }
    }
}

/// A recognised log line.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// `local peer id`: who wrote this log.
    LocalPeerId {
        /// The node's peer id.
        peer: &'a str,
    },
    /// `listening on`: a listen address (a relay circuit address included).
    Listening {
        /// The address.
        addr: &'a str,
    },
    /// `external address confirmed`: an address others can reach the node at.
    ExternalConfirmed {
        /// The address.
        addr: &'a str,
    },
    /// `phase transition`: the node's lifecycle phase changed.
    PhaseTransition {
        /// The phase left (`Initializing`, …).
        from: &'a str,
        /// The phase entered.
        to: &'a str,
        /// The machine event that caused it (`BootstrapConnected`, …).
        cause: &'a str,
    },
    /// `event processed` (DEBUG): a machine event that changed no phase.
    EventProcessed {
        /// The machine event.
        event: &'a str,
    },
    /// `nat status changed`: the machine's NAT status (`Unknown`, `Private`, `Public`).
    NatStatus {
        /// The status before.
        from: &'a str,
        /// The status after.
        to: &'a str,
    },
    /// `autonat status changed`: what AutoNAT concluded (`Public(<addr>)`, `Private`, …).
    Autonat {
        /// The new status, as logged.
        new: &'a str,
    },
    /// `relay reservation accepted`, `… lost`, `… failed`, `requesting …`, `released …`.
    Reservation {
        /// The relay.
        relay: &'a str,
        /// What happened to the reservation.
        what: ReservationChange,
    },
    /// `connection opened`.
    ConnectionOpened {
        /// The remote peer.
        peer: &'a str,
        /// The remote address (`endpoint`).
        addr: Option<&'a str>,
        /// Direct or relayed.
        path: Option<Path>,
    },
    /// `connection closed`.
    ConnectionClosed {
        /// The remote peer.
        peer: &'a str,
        /// The connections to that peer still open (`remaining`).
        remaining: Option<u64>,
        /// The remote address (`endpoint`).
        addr: Option<&'a str>,
    },
    /// `direct connection established`: the first direct connection to a peer.
    DirectEstablished {
        /// The remote peer.
        peer: &'a str,
        /// Since the first dial of (or first contact with) the peer, in ms.
        since_first_contact_ms: Option<f64>,
        /// Since the relayed connection, in ms, when there was one.
        since_relayed_ms: Option<f64>,
        /// Direct dial attempts it took.
        attempts: Option<u64>,
    },
    /// `hole punch succeeded` / `hole punch failed…`.
    HolePunch {
        /// The remote peer (`remote_peer`).
        peer: &'a str,
        /// Whether it succeeded.
        ok: bool,
    },
    /// `ping` with `rtt_ms`: one round trip (INFO for a connection's first, DEBUG for the rest).
    Ping {
        /// The remote peer.
        peer: &'a str,
        /// The round trip in ms.
        rtt_ms: f64,
    },
    /// `ping failed` (DEBUG).
    PingFailed {
        /// The remote peer.
        peer: &'a str,
    },
    /// `tunnel listening`: a local port forwarded to a peer's service.
    TunnelListening {
        /// The service.
        service: &'a str,
    },
    /// Client side, `tunnel path`: a local connection got a stream to the peer.
    ClientOpened {
        /// The service.
        service: &'a str,
        /// The peer exposing it.
        peer: Option<&'a str>,
        /// Direct or relayed.
        path: Option<Path>,
    },
    /// Client side, `client tunnel closed`: bytes when it ended cleanly, none after an idle
    /// timeout (which gives a `reason` instead).
    ClientClosed {
        /// The service.
        service: &'a str,
        /// The peer exposing it.
        peer: Option<&'a str>,
        /// Bytes sent to the remote service.
        bytes_to_remote: Option<u64>,
        /// Bytes received from it.
        bytes_from_remote: Option<u64>,
    },
    /// Client side, `client tunnel rejected…`: the peer refused the tunnel.
    ClientRejected {
        /// The service.
        service: &'a str,
        /// The peer's reason.
        reason: &'a str,
    },
    /// Client side, `client tunnel error`.
    ClientError {
        /// The service.
        service: &'a str,
        /// The error.
        reason: &'a str,
    },
    /// Server side, `tunnel request admitted`: a peer allowed to use the service asked for it.
    ServerAdmitted {
        /// The service.
        service: &'a str,
        /// Direct or relayed.
        path: Option<Path>,
    },
    /// Server side, `tunnel accepted`: connected to the service; bytes flow.
    ServerAccepted {
        /// The service.
        service: &'a str,
        /// The remote peer (`peer_id`).
        peer: Option<&'a str>,
        /// Direct or relayed (newer nodes log it here too).
        path: Option<Path>,
    },
    /// Server side, `tunnel closed`: bytes when it ended cleanly.
    ServerClosed {
        /// The service.
        service: &'a str,
        /// The remote peer (`peer_id`).
        peer: Option<&'a str>,
        /// Bytes written to the local service.
        bytes_to_service: Option<u64>,
        /// Bytes read from it.
        bytes_from_service: Option<u64>,
    },
    /// Server side, `tunnel rejected…`: refused (no such service, a short circuit, a
    /// malformed request, an unreachable service).
    ServerRejected {
        /// The service, `None` when the request named none.
        service: Option<&'a str>,
        /// The reason given (the message when the line has no `reason`).
        reason: &'a str,
    },
    /// Server side, `tunnel denied…`: the peer is not in the service's `--allow` rule.
    ServerDenied {
        /// The service.
        service: Option<&'a str>,
        /// The reason given (the message when the line has no `reason`).
        reason: &'a str,
    },
    /// Server side, `tunnel error`.
    ServerError {
        /// The service.
        service: Option<&'a str>,
        /// The error.
        reason: &'a str,
    },
    /// Where peers can reach the node: `reachable directly at addrs; …` (or `reachable
    /// directly (public); …`), `behind NAT: not reachable directly; …`, `reachable through a
    /// relay: …`.
    Reachable(Reach<'a>),
    /// Client side, `tunnel ready over a direct connection` / `tunnel ready through a relay;
    /// …`: a `--tunnel` reached its peer.
    TunnelReady {
        /// The tunnel.
        tunnel: TunnelId<'a>,
        /// Direct or relayed.
        path: Option<Path>,
        /// The relay, when relayed.
        relay: Option<&'a str>,
        /// The peer's address, when direct.
        remote_addr: Option<&'a str>,
    },
    /// Client side, `tunnel now direct`: a relayed `--tunnel` got its direct connection.
    TunnelNowDirect {
        /// The tunnel.
        tunnel: TunnelId<'a>,
        /// Since the relayed connection, in ms (`after_ms`).
        after_ms: Option<f64>,
        /// The peer's direct address.
        remote_addr: Option<&'a str>,
    },
    /// Client side, `tunnel stays relayed: …`: the hole punch failed.
    TunnelStaysRelayed {
        /// The tunnel.
        tunnel: TunnelId<'a>,
        /// Why (`reason`).
        reason: Option<&'a str>,
    },
    /// Client side, `tunnel not ready yet: …` (WARN): the peer could not be reached; tried
    /// again after `retry_in`.
    TunnelNotReady {
        /// The tunnel.
        tunnel: TunnelId<'a>,
        /// Why.
        error: &'a str,
        /// The wait before the next attempt, as logged (`1s`, `2s`, …).
        retry_in: Option<&'a str>,
    },
    /// Client side, `tunnel port closed by a reload …`: a `--tunnel` the reloaded
    /// configuration no longer has.
    TunnelPortClosed {
        /// The tunnel.
        tunnel: TunnelId<'a>,
    },
    /// `SIGHUP: reloading the configuration`.
    ReloadStarted,
    /// `configuration reloaded: …`.
    Reloaded {
        /// Services exposed now (`services`).
        services: Option<u64>,
        /// `--tunnel` ports opened.
        tunnels_added: Option<u64>,
        /// `--tunnel` ports closed.
        tunnels_removed: Option<u64>,
        /// Served tunnels closed because the new `--allow` rules no longer admit their peer.
        tunnels_closed: Option<u64>,
    },
    /// `reload failed, the configuration in use is unchanged`.
    ReloadFailed {
        /// Why.
        error: &'a str,
    },
    /// Server side, `closing a tunnel: the reloaded --allow rules no longer admit …`.
    ServerClosedByReload {
        /// The service.
        service: &'a str,
        /// The remote peer (`peer_id`).
        peer: Option<&'a str>,
    },
    /// `serving metrics on http://{addr}/metrics …`.
    MetricsServing {
        /// The metrics server's address (`addr`).
        addr: &'a str,
    },
    /// A line the reports do not interpret.
    Other,
}

/// Which `--tunnel` a client-side line is about: its service, peer and local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelId<'a> {
    /// The service.
    pub service: &'a str,
    /// The peer exposing it.
    pub peer: Option<&'a str>,
    /// The local address (`bind`).
    pub bind: Option<&'a str>,
}

impl<'a> TunnelId<'a> {
    fn of(e: &'a Entry) -> Option<Self> {
        Some(Self {
            service: e.str("service")?,
            peer: e.str("peer"),
            bind: e.str("bind"),
        })
    }
}

/// How peers can reach the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach<'a> {
    /// Directly: public, at these addresses (space-separated; `None` when it logged none).
    Direct {
        /// `addrs`.
        addrs: Option<&'a str>,
    },
    /// Not yet: behind NAT, reserving a relay slot.
    BehindNat,
    /// Through a relay's circuit.
    Relay {
        /// The relay.
        relay: &'a str,
        /// The circuit address peers dial.
        addr: Option<&'a str>,
    },
}

/// What happened to a relay reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReservationChange {
    /// `requesting relay reservation`.
    Requested,
    /// `relay reservation accepted`.
    Accepted,
    /// `relay reservation lost`.
    Lost,
    /// `relay reservation failed`.
    Failed,
    /// `released relay reservation`.
    Released,
}

/// The service a server-side line names; the node logs `service = ""` when the request was
/// unreadable.
fn service_of(entry: &Entry) -> Option<&str> {
    entry.str("service").filter(|s| !s.is_empty())
}

/// Why a tunnel was refused or failed: `reason`, `error`, or else the message itself (which
/// for some refusals is the reason: `tunnel rejected: no such service`).
fn reason_of(entry: &Entry) -> &str {
    entry
        .first_str(&["reason", "error"])
        .unwrap_or(entry.message.as_str())
}

/// The remote peer of a line: `peer`, or the names some lines use instead.
fn peer_of(entry: &Entry) -> Option<&str> {
    entry.first_str(&["peer", "peer_id", "remote_peer"])
}

impl<'a> Event<'a> {
    /// What `entry` means.
    pub fn of(entry: &'a Entry) -> Self {
        Self::classify(entry).unwrap_or(Self::Other)
    }

    fn classify(e: &'a Entry) -> Option<Self> {
        let message = e.message.as_str();
        let event = match message {
            "local peer id" => Self::LocalPeerId {
                peer: e.first_str(&["peer_id", "peer"])?,
            },
            "listening on" => Self::Listening {
                addr: e.first_str(&["address", "addr"])?,
            },
            "external address confirmed" => Self::ExternalConfirmed {
                addr: e.first_str(&["address", "addr"])?,
            },
            "phase transition" => Self::PhaseTransition {
                from: e.str("from")?,
                to: e.str("to")?,
                cause: e.str("event").unwrap_or("?"),
            },
            "event processed" => Self::EventProcessed {
                event: e.str("event")?,
            },
            "nat status changed" => Self::NatStatus {
                from: e.str("from")?,
                to: e.str("to")?,
            },
            "autonat status changed" => Self::Autonat { new: e.str("new")? },
            "requesting relay reservation" => reservation(e, ReservationChange::Requested)?,
            "relay reservation accepted" => reservation(e, ReservationChange::Accepted)?,
            "relay reservation lost" => reservation(e, ReservationChange::Lost)?,
            "relay reservation failed" => reservation(e, ReservationChange::Failed)?,
            "released relay reservation" => reservation(e, ReservationChange::Released)?,
            "connection opened" => Self::ConnectionOpened {
                peer: peer_of(e)?,
                addr: e.first_str(&["endpoint", "addr"]),
                path: Path::parse(e.str("path")),
            },
            "connection closed" => Self::ConnectionClosed {
                peer: peer_of(e)?,
                remaining: e.u64("remaining"),
                addr: e.first_str(&["endpoint", "addr"]),
            },
            "direct connection established" => Self::DirectEstablished {
                peer: peer_of(e)?,
                since_first_contact_ms: e.f64("since_first_contact_ms"),
                since_relayed_ms: e
                    .f64("since_relayed_ms")
                    .filter(|_| e.bool("relayed_before") != Some(false)),
                attempts: e.u64("attempts"),
            },
            "hole punch succeeded" => Self::HolePunch {
                peer: peer_of(e)?,
                ok: true,
            },
            _ if message.starts_with("hole punch failed") => Self::HolePunch {
                peer: peer_of(e)?,
                ok: false,
            },
            "ping" => Self::Ping {
                peer: peer_of(e)?,
                rtt_ms: e.f64("rtt_ms").or_else(|| e.f64("rtt"))?,
            },
            "ping failed" => Self::PingFailed { peer: peer_of(e)? },
            "tunnel listening" => Self::TunnelListening {
                service: e.str("service")?,
            },
            "tunnel path" => Self::ClientOpened {
                service: e.str("service")?,
                peer: e.str("peer"),
                path: Path::parse(e.str("path")),
            },
            "client tunnel closed" => Self::ClientClosed {
                service: e.str("service")?,
                peer: e.str("peer"),
                bytes_to_remote: e.u64("bytes_to_remote"),
                bytes_from_remote: e.u64("bytes_from_remote"),
            },
            // A UDP session's stream: it ends, or moves to a direct connection (the next
            // `tunnel path` opens its new stream).
            "client udp session closed" | "udp session moving to the direct connection" => {
                Self::ClientClosed {
                    service: e.str("service")?,
                    peer: e.str("peer"),
                    bytes_to_remote: e.u64("bytes_to_service"),
                    bytes_from_remote: e.u64("bytes_from_service"),
                }
            }
            _ if message.starts_with("client udp session rejected") => Self::ClientRejected {
                service: e.str("service")?,
                reason: reason_of(e),
            },
            _ if message.starts_with("client udp session failed") => Self::ClientError {
                service: e.str("service")?,
                reason: reason_of(e),
            },
            _ if message.starts_with("client tunnel rejected") => Self::ClientRejected {
                service: e.str("service")?,
                reason: reason_of(e),
            },
            "client tunnel error" => Self::ClientError {
                service: e.str("service")?,
                reason: reason_of(e),
            },
            "tunnel request admitted" => Self::ServerAdmitted {
                service: e.str("service")?,
                path: Path::parse(e.str("path")),
            },
            "tunnel accepted" | "udp session accepted" => Self::ServerAccepted {
                service: e.str("service")?,
                peer: peer_of(e),
                path: Path::parse(e.str("path")),
            },
            "tunnel closed" | "udp session closed" => Self::ServerClosed {
                service: e.str("service")?,
                peer: peer_of(e),
                bytes_to_service: e.u64("bytes_to_service"),
                bytes_from_service: e.u64("bytes_from_service"),
            },
            _ if message.starts_with("tunnel rejected") => Self::ServerRejected {
                service: service_of(e),
                reason: reason_of(e),
            },
            _ if message.starts_with("tunnel denied") => Self::ServerDenied {
                service: service_of(e),
                reason: reason_of(e),
            },
            "tunnel error" => Self::ServerError {
                service: service_of(e),
                reason: reason_of(e),
            },
            _ if message.starts_with("reachable directly") => Self::Reachable(Reach::Direct {
                addrs: e.str("addrs").filter(|a| !a.trim().is_empty()),
            }),
            _ if message.starts_with("behind NAT") => Self::Reachable(Reach::BehindNat),
            _ if message.starts_with("reachable through a relay") => {
                Self::Reachable(Reach::Relay {
                    relay: e.str("relay")?,
                    addr: e.first_str(&["addr", "address"]),
                })
            }
            _ if message.starts_with("tunnel ready") => Self::TunnelReady {
                tunnel: TunnelId::of(e)?,
                path: Path::parse(e.str("path")).or_else(|| {
                    if message.contains("direct connection") {
                        Some(Path::Direct)
                    } else if message.contains("relay") {
                        Some(Path::Relayed)
                    } else {
                        None
                    }
                }),
                relay: e.str("relay"),
                remote_addr: e.str("remote_addr"),
            },
            "tunnel now direct" => Self::TunnelNowDirect {
                tunnel: TunnelId::of(e)?,
                after_ms: e.f64("after_ms"),
                remote_addr: e.str("remote_addr"),
            },
            _ if message.starts_with("tunnel stays relayed") => Self::TunnelStaysRelayed {
                tunnel: TunnelId::of(e)?,
                reason: e.first_str(&["reason", "error"]),
            },
            _ if message.starts_with("tunnel not ready yet") => Self::TunnelNotReady {
                tunnel: TunnelId::of(e)?,
                error: reason_of(e),
                retry_in: e.str("retry_in"),
            },
            _ if message.starts_with("tunnel port closed by a reload") => Self::TunnelPortClosed {
                tunnel: TunnelId::of(e)?,
            },
            _ if message.starts_with("SIGHUP: reloading") => Self::ReloadStarted,
            _ if message.starts_with("configuration reloaded") => Self::Reloaded {
                services: e.u64("services"),
                tunnels_added: e.u64("tunnels_added"),
                tunnels_removed: e.u64("tunnels_removed"),
                tunnels_closed: e.u64("tunnels_closed"),
            },
            _ if message.starts_with("reload failed") => Self::ReloadFailed {
                error: reason_of(e),
            },
            _ if message.starts_with("closing a tunnel: the reloaded") => {
                Self::ServerClosedByReload {
                    service: e.str("service")?,
                    peer: peer_of(e),
                }
            }
            _ if message.starts_with("serving metrics on ") => Self::MetricsServing {
                addr: e.first_str(&["addr", "address"])?,
            },
            _ => return None,
        };
        Some(event)
    }
}

fn reservation(e: &Entry, what: ReservationChange) -> Option<Event<'_>> {
    Some(Event::Reservation {
        relay: e.str("relay")?,
        what,
    })
}

/// The transport of a multiaddr: `quic` for `/quic-v1`, `tcp` for `/tcp`, `other` otherwise.
/// A relayed address names the relay's transport (the circuit rides it).
pub fn transport_of(addr: &str) -> &'static str {
    let before_circuit = addr.split("/p2p-circuit").next().unwrap_or(addr);
    if before_circuit.contains("/quic") {
        "quic"
    } else if before_circuit.contains("/tcp/") {
        "tcp"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(line: &str) -> Event<'static> {
        let entry = Box::leak(Box::new(Entry::parse(line).expect("an event")));
        Event::of(entry)
    }

    #[test]
    fn recognises_connection_lines() {
        assert_eq!(
            event(
                r#"{"message":"connection opened","peer":"P","endpoint":"/ip4/1.2.3.4/udp/9/quic-v1","path":"direct","connection":"4"}"#
            ),
            Event::ConnectionOpened {
                peer: "P",
                addr: Some("/ip4/1.2.3.4/udp/9/quic-v1"),
                path: Some(Path::Direct)
            }
        );
        assert_eq!(
            event(
                r#"{"message":"hole punch failed, tunnels to this peer use the relay","remote_peer":"P","reason":"x"}"#
            ),
            Event::HolePunch {
                peer: "P",
                ok: false
            }
        );
    }

    #[test]
    fn tells_the_tunnel_refusals_apart() {
        assert_eq!(
            event(
                r#"{"message":"tunnel rejected: no such service","peer_id":"P","service":"ssh"}"#
            ),
            Event::ServerRejected {
                service: Some("ssh"),
                reason: "tunnel rejected: no such service"
            }
        );
        assert_eq!(
            event(r#"{"message":"tunnel rejected","peer_id":"P","service":"","reason":"r"}"#),
            Event::ServerRejected {
                service: None,
                reason: "r"
            }
        );
        assert_eq!(
            event(
                r#"{"message":"tunnel denied: the peer is not in the service's --allow rule","peer_id":"P","service":"ssh"}"#
            ),
            Event::ServerDenied {
                service: Some("ssh"),
                reason: "tunnel denied: the peer is not in the service's --allow rule"
            }
        );
        assert_eq!(
            event(
                r#"{"message":"client tunnel rejected: the peer does not expose 'ssh'","service":"ssh","peer":"P"}"#
            ),
            Event::ClientRejected {
                service: "ssh",
                reason: "client tunnel rejected: the peer does not expose 'ssh'"
            }
        );
    }

    #[test]
    fn reads_udp_sessions_as_tunnels() {
        assert_eq!(
            event(
                r#"{"message":"client udp session closed","service":"wg","peer":"P","datagrams_to_service":3,"bytes_to_service":300,"bytes_from_service":200}"#
            ),
            Event::ClientClosed {
                service: "wg",
                peer: Some("P"),
                bytes_to_remote: Some(300),
                bytes_from_remote: Some(200)
            }
        );
        assert_eq!(
            event(
                r#"{"message":"udp session closed","service":"wg","peer_id":"A","bytes_to_service":300,"bytes_from_service":200}"#
            ),
            Event::ServerClosed {
                service: "wg",
                peer: Some("A"),
                bytes_to_service: Some(300),
                bytes_from_service: Some(200)
            }
        );
        assert_eq!(
            event(
                r#"{"message":"client udp session rejected","service":"wg","peer":"P","reason":"unknown service 'wg'"}"#
            ),
            Event::ClientRejected {
                service: "wg",
                reason: "unknown service 'wg'"
            }
        );
    }

    #[test]
    fn recognises_where_the_node_is_reachable() {
        assert_eq!(
            event(
                r#"{"message":"reachable directly at addrs; relaying for peers behind NAT","addrs":"/ip4/1.2.3.4/tcp/4001 /ip4/1.2.3.4/udp/4001/quic-v1"}"#
            ),
            Event::Reachable(Reach::Direct {
                addrs: Some("/ip4/1.2.3.4/tcp/4001 /ip4/1.2.3.4/udp/4001/quic-v1")
            })
        );
        assert_eq!(
            event(r#"{"message":"reachable directly (public); relaying for peers behind NAT"}"#),
            Event::Reachable(Reach::Direct { addrs: None })
        );
        assert_eq!(
            event(
                r#"{"message":"behind NAT: not reachable directly; reserving a relay slot so peers can reach this node"}"#
            ),
            Event::Reachable(Reach::BehindNat)
        );
        assert_eq!(
            event(
                r#"{"message":"reachable through a relay: peers can reach this node at addr","relay":"R","addr":"/ip4/1.2.3.4/tcp/4001/p2p/R/p2p-circuit/p2p/P"}"#
            ),
            Event::Reachable(Reach::Relay {
                relay: "R",
                addr: Some("/ip4/1.2.3.4/tcp/4001/p2p/R/p2p-circuit/p2p/P")
            })
        );
    }

    #[test]
    fn recognises_tunnel_readiness() {
        let id = TunnelId {
            service: "echo",
            peer: Some("B"),
            bind: Some("127.0.0.1:7000"),
        };
        assert_eq!(
            event(
                r#"{"message":"tunnel ready over a direct connection","service":"echo","peer":"B","bind":"127.0.0.1:7000","path":"direct","remote_addr":"/ip4/1.2.3.4/tcp/9"}"#
            ),
            Event::TunnelReady {
                tunnel: id,
                path: Some(Path::Direct),
                relay: None,
                remote_addr: Some("/ip4/1.2.3.4/tcp/9")
            }
        );
        assert_eq!(
            event(
                r#"{"message":"tunnel ready through a relay; trying for a direct connection","service":"echo","peer":"B","bind":"127.0.0.1:7000","path":"relayed","relay":"R"}"#
            ),
            Event::TunnelReady {
                tunnel: id,
                path: Some(Path::Relayed),
                relay: Some("R"),
                remote_addr: None
            }
        );
        assert_eq!(
            event(
                r#"{"message":"tunnel now direct","service":"echo","peer":"B","bind":"127.0.0.1:7000","path":"direct","remote_addr":"/x","after_ms":412}"#
            ),
            Event::TunnelNowDirect {
                tunnel: id,
                after_ms: Some(412.0),
                remote_addr: Some("/x")
            }
        );
        assert_eq!(
            event(
                r#"{"message":"tunnel stays relayed: no direct connection could be made","service":"echo","peer":"B","bind":"127.0.0.1:7000","path":"relayed","reason":"punch failed"}"#
            ),
            Event::TunnelStaysRelayed {
                tunnel: id,
                reason: Some("punch failed")
            }
        );
        assert_eq!(
            event(
                r#"{"level":"WARN","message":"tunnel not ready yet: cannot reach the peer; trying again","service":"echo","peer":"B","bind":"127.0.0.1:7000","error":"no route","retry_in":"2s"}"#
            ),
            Event::TunnelNotReady {
                tunnel: id,
                error: "no route",
                retry_in: Some("2s")
            }
        );
        assert_eq!(
            event(
                r#"{"message":"tunnel port closed by a reload (its connections carry on)","bind":"127.0.0.1:7000","peer":"B","service":"echo"}"#
            ),
            Event::TunnelPortClosed { tunnel: id }
        );
        assert_eq!(
            event(
                r#"{"message":"tunnel accepted","peer_id":"A","service":"echo","local_addr":"127.0.0.1:7","path":"relayed"}"#
            ),
            Event::ServerAccepted {
                service: "echo",
                peer: Some("A"),
                path: Some(Path::Relayed)
            }
        );
    }

    #[test]
    fn recognises_reloads_and_the_metrics_server() {
        assert_eq!(
            event(r#"{"message":"SIGHUP: reloading the configuration"}"#),
            Event::ReloadStarted
        );
        assert_eq!(
            event(
                r#"{"message":"configuration reloaded: services, --allow rules and --tunnel ports (other settings take effect at the next start)","services":2,"tunnels_added":1,"tunnels_removed":0,"tunnels_closed":3}"#
            ),
            Event::Reloaded {
                services: Some(2),
                tunnels_added: Some(1),
                tunnels_removed: Some(0),
                tunnels_closed: Some(3)
            }
        );
        assert_eq!(
            event(
                r#"{"level":"WARN","message":"reload failed, the configuration in use is unchanged","error":"bad --allow"}"#
            ),
            Event::ReloadFailed {
                error: "bad --allow"
            }
        );
        assert_eq!(
            event(
                r#"{"message":"closing a tunnel: the reloaded --allow rules no longer admit this peer to the service","service":"ssh","peer_id":"C"}"#
            ),
            Event::ServerClosedByReload {
                service: "ssh",
                peer: Some("C")
            }
        );
        assert_eq!(
            event(
                r#"{"message":"serving metrics on http://127.0.0.1:9090/metrics and status on http://127.0.0.1:9090/status","addr":"127.0.0.1:9090"}"#
            ),
            Event::MetricsServing {
                addr: "127.0.0.1:9090"
            }
        );
    }

    #[test]
    fn unknown_or_incomplete_lines_are_other() {
        assert_eq!(event(r#"{"message":"reachable","peer":"P"}"#), Event::Other);
        // A known message without the field a report needs.
        assert_eq!(event(r#"{"message":"ping","peer":"P"}"#), Event::Other);
    }

    #[test]
    fn reads_transports_from_addresses() {
        assert_eq!(transport_of("/ip4/1.2.3.4/tcp/4001"), "tcp");
        assert_eq!(transport_of("/ip4/1.2.3.4/udp/4001/quic-v1/p2p/X"), "quic");
        assert_eq!(
            transport_of("/ip4/1.2.3.4/udp/4001/quic-v1/p2p/R/p2p-circuit/p2p/X"),
            "quic"
        );
        assert_eq!(transport_of("/memory/4"), "other");
    }
}
