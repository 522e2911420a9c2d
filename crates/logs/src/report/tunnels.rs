//! `tunnels`: per service, what the node did as a client (a local port forwarded to a peer's
//! service: `tunnel path`, `client tunnel closed`, `client tunnel rejected…`, `client tunnel
//! error`) and as a server (a service it exposes: `tunnel request admitted`, `tunnel
//! accepted`, `tunnel closed`, `tunnel rejected…`, `tunnel denied…`, `tunnel error`).
//!
//! Bytes are counted the same way on both sides: `to_service` flows from the client towards
//! the service (the client's `bytes_to_remote`, the server's `bytes_to_service`),
//! `from_service` back. A tunnel closed by its idle timeout logs a reason and no byte counts.
//! Durations pair each tunnel's start (`tunnel path`, `tunnel accepted`) with the next close
//! for the same peer and service.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

use super::{
    Collector, Counted, Meta, Names, Render, Stats, TopCounts, bytes, cell, heading, ms_between,
};
use crate::{
    event::{Event, Path},
    parse::Entry,
    time::{Timestamp, human_ms},
};

/// How many open tunnels per (side, peer, service) are remembered for durations.
const MAX_PENDING: usize = 10_000;
/// The service name for refusals whose request named none.
const NO_SERVICE: &str = "(none)";

/// Collects tunnel events per service and side.
#[derive(Debug, Default)]
pub struct Tunnels {
    sides: BTreeMap<(String, Side), Builder>,
    /// Start times of open tunnels, oldest first, by side, peer and service.
    pending: HashMap<(Side, String, String), VecDeque<Option<Timestamp>>>,
}

#[derive(Debug, Default)]
struct Builder {
    row: SideTunnels,
    durations: Stats,
    reasons: TopCounts,
}

/// Which end of the tunnel this node was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// It forwarded a local port to a peer's service (`--tunnel`).
    Client,
    /// It exposed the service (`--expose`).
    Server,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// Tunnels per service and side.
#[derive(Debug, Clone, Serialize)]
pub struct TunnelsReport {
    /// One row per service and side.
    pub services: Vec<SideTunnels>,
}

/// One service's tunnels on one side.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SideTunnels {
    /// The service.
    pub service: String,
    /// Client or server.
    pub side: Option<Side>,
    /// Tunnels started: client `tunnel path`, server `tunnel accepted`.
    pub opened: u64,
    /// Of those started (client) or admitted (server), over a direct path.
    pub direct: u64,
    /// Of those started (client) or admitted (server), over a relayed path.
    pub relayed: u64,
    /// Tunnels that ended (cleanly or by idle timeout).
    pub closed: u64,
    /// Refused: by the peer (client), or no such service, a short circuit, a bad request,
    /// an unreachable service (server).
    pub rejected: u64,
    /// Server: the peer is not in the service's `--allow` rule.
    pub denied: u64,
    /// Tunnels that failed part way.
    pub errors: u64,
    /// Bytes from the client towards the service.
    pub bytes_to_service: u64,
    /// Bytes from the service back to the client.
    pub bytes_from_service: u64,
    /// Tunnel durations, ms (start paired with close).
    pub duration_ms: Stats,
    /// The most frequent refusal and error reasons.
    pub reasons: Vec<Counted>,
}

impl Tunnels {
    fn side(&mut self, service: &str, side: Side) -> &mut Builder {
        let b = self.sides.entry((service.to_owned(), side)).or_default();
        b.row.service = service.to_owned();
        b.row.side = Some(side);
        b
    }

    fn start(&mut self, side: Side, peer: Option<&str>, service: &str, at: Option<Timestamp>) {
        let key = (
            side,
            peer.unwrap_or_default().to_owned(),
            service.to_owned(),
        );
        let queue = self.pending.entry(key).or_default();
        if queue.len() == MAX_PENDING {
            queue.pop_front();
        }
        queue.push_back(at);
    }

    fn close(&mut self, side: Side, peer: Option<&str>, service: &str, at: Option<Timestamp>) {
        let key = (
            side,
            peer.unwrap_or_default().to_owned(),
            service.to_owned(),
        );
        let start = self.pending.get_mut(&key).and_then(VecDeque::pop_front);
        if let (Some(Some(start)), Some(end)) = (start, at) {
            self.side(service, side)
                .durations
                .add(ms_between(start, end));
        }
    }
}

impl Collector for Tunnels {
    type Report = TunnelsReport;

    fn observe(&mut self, entry: &Entry, event: &Event<'_>) {
        let at = entry.timestamp;
        let count_path = |row: &mut SideTunnels, path| match path {
            Some(Path::Direct) => row.direct += 1,
            Some(Path::Relayed) => row.relayed += 1,
            None => {}
        };
        match *event {
            Event::ClientOpened {
                service,
                peer,
                path,
            } => {
                let row = &mut self.side(service, Side::Client).row;
                row.opened += 1;
                count_path(row, path);
                self.start(Side::Client, peer, service, at);
            }
            Event::ClientClosed {
                service,
                peer,
                bytes_to_remote,
                bytes_from_remote,
            } => {
                let row = &mut self.side(service, Side::Client).row;
                row.closed += 1;
                row.bytes_to_service += bytes_to_remote.unwrap_or(0);
                row.bytes_from_service += bytes_from_remote.unwrap_or(0);
                self.close(Side::Client, peer, service, at);
            }
            Event::ClientRejected { service, reason } => {
                let b = self.side(service, Side::Client);
                b.row.rejected += 1;
                b.reasons.add(reason);
            }
            Event::ClientError { service, reason } => {
                let b = self.side(service, Side::Client);
                b.row.errors += 1;
                b.reasons.add(reason);
                // A tunnel that failed after its path was chosen ends here.
                if let Some(peer) = entry.str("peer") {
                    let key = (Side::Client, peer.to_owned(), service.to_owned());
                    if let Some(queue) = self.pending.get_mut(&key) {
                        queue.pop_front();
                    }
                }
            }
            Event::ServerAdmitted { service, path } => {
                count_path(&mut self.side(service, Side::Server).row, path);
            }
            Event::ServerAccepted { service, peer } => {
                self.side(service, Side::Server).row.opened += 1;
                self.start(Side::Server, peer, service, at);
            }
            Event::ServerClosed {
                service,
                peer,
                bytes_to_service,
                bytes_from_service,
            } => {
                let row = &mut self.side(service, Side::Server).row;
                row.closed += 1;
                row.bytes_to_service += bytes_to_service.unwrap_or(0);
                row.bytes_from_service += bytes_from_service.unwrap_or(0);
                self.close(Side::Server, peer, service, at);
            }
            Event::ServerRejected { service, reason } => {
                let b = self.side(service.unwrap_or(NO_SERVICE), Side::Server);
                b.row.rejected += 1;
                b.reasons.add(reason);
            }
            Event::ServerDenied { service, reason } => {
                let b = self.side(service.unwrap_or(NO_SERVICE), Side::Server);
                b.row.denied += 1;
                b.reasons.add(reason);
            }
            Event::ServerError { service, reason } => {
                let service = service.unwrap_or(NO_SERVICE);
                let b = self.side(service, Side::Server);
                b.row.errors += 1;
                b.reasons.add(reason);
                if let Some(peer) = entry.str("peer_id") {
                    let key = (Side::Server, peer.to_owned(), service.to_owned());
                    if let Some(queue) = self.pending.get_mut(&key) {
                        queue.pop_front();
                    }
                }
            }
            _ => {}
        }
    }

    fn finish(self) -> TunnelsReport {
        let services = self
            .sides
            .into_values()
            .map(|b| SideTunnels {
                duration_ms: b.durations,
                reasons: b.reasons.top(5),
                ..b.row
            })
            .collect();
        TunnelsReport { services }
    }
}

impl TunnelsReport {
    /// The rows of one side added up (for the summary).
    pub fn total(&self, side: Side) -> SideTunnels {
        let mut total = SideTunnels {
            service: "all".to_owned(),
            side: Some(side),
            ..SideTunnels::default()
        };
        for row in self.services.iter().filter(|r| r.side == Some(side)) {
            total.opened += row.opened;
            total.direct += row.direct;
            total.relayed += row.relayed;
            total.closed += row.closed;
            total.rejected += row.rejected;
            total.denied += row.denied;
            total.errors += row.errors;
            total.bytes_to_service += row.bytes_to_service;
            total.bytes_from_service += row.bytes_from_service;
        }
        total
    }
}

impl Render for TunnelsReport {
    const CSV_HEADER: &'static [&'static str] = &[
        "service",
        "side",
        "opened",
        "direct",
        "relayed",
        "closed",
        "rejected",
        "denied",
        "errors",
        "bytes_to_service",
        "bytes_from_service",
        "durations",
        "duration_min_ms",
        "duration_mean_ms",
        "duration_max_ms",
    ];

    fn text(&self, meta: &Meta, out: &mut String, _names: &Names) {
        heading(meta, out);
        if self.services.is_empty() {
            out.push_str("  no tunnels logged\n");
            return;
        }
        out.push_str(&format!(
            "  {:<12} {:<6} {:>6} {:>6} {:>7} {:>6} {:>8} {:>6} {:>6} {:>11} {:>11}  {}\n",
            "service",
            "side",
            "opened",
            "direct",
            "relayed",
            "closed",
            "rejected",
            "denied",
            "errors",
            "to service",
            "from svc",
            "duration min/mean/max"
        ));
        for r in &self.services {
            let d = &r.duration_ms;
            let duration = if d.count == 0 {
                "-".to_owned()
            } else {
                let h = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), human_ms);
                format!("{} / {} / {}", h(d.min), h(d.mean), h(d.max))
            };
            out.push_str(&format!(
                "  {:<12} {:<6} {:>6} {:>6} {:>7} {:>6} {:>8} {:>6} {:>6} {:>11} {:>11}  {}\n",
                r.service,
                r.side.map_or("", Side::as_str),
                r.opened,
                r.direct,
                r.relayed,
                r.closed,
                r.rejected,
                r.denied,
                r.errors,
                bytes(r.bytes_to_service),
                bytes(r.bytes_from_service),
                duration,
            ));
            for reason in &r.reasons {
                out.push_str(&format!(
                    "      {}× {}\n",
                    reason.count,
                    super::shorten(&reason.text)
                ));
            }
        }
    }

    fn csv_rows(&self, _meta: &Meta, _names: &Names) -> Vec<Vec<String>> {
        self.services
            .iter()
            .map(|r| {
                vec![
                    r.service.clone(),
                    r.side.map_or("", Side::as_str).to_owned(),
                    r.opened.to_string(),
                    r.direct.to_string(),
                    r.relayed.to_string(),
                    r.closed.to_string(),
                    r.rejected.to_string(),
                    r.denied.to_string(),
                    r.errors.to_string(),
                    r.bytes_to_service.to_string(),
                    r.bytes_from_service.to_string(),
                    r.duration_ms.count.to_string(),
                    cell(r.duration_ms.min),
                    cell(r.duration_ms.mean),
                    cell(r.duration_ms.max),
                ]
            })
            .collect()
    }
}

/// `12 opened, 3 closed, …` for the summary; `none` when nothing happened.
pub fn one_line(t: &SideTunnels) -> String {
    if t.opened + t.closed + t.rejected + t.denied + t.errors == 0 {
        return "none".to_owned();
    }
    format!(
        "{} opened ({} direct, {} relayed), {} closed, {} rejected, {} denied, {} errors; {} to the service, {} back",
        t.opened,
        t.direct,
        t.relayed,
        t.closed,
        t.rejected,
        t.denied,
        t.errors,
        bytes(t.bytes_to_service),
        bytes(t.bytes_from_service)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::analyze_reader;

    #[test]
    fn both_sides_bytes_refusals_and_durations() {
        let log = [
            r#"{"timestamp":"2026-01-01T00:00:00Z","message":"tunnel path","peer":"B","service":"echo","path":"relayed"}"#,
            r#"{"timestamp":"2026-01-01T00:00:02Z","message":"client tunnel closed","peer":"B","service":"echo","bytes_to_remote":100,"bytes_from_remote":90}"#,
            r#"{"timestamp":"2026-01-01T00:00:03Z","message":"client tunnel rejected","peer":"B","service":"ssh","reason":"no"}"#,
            r#"{"timestamp":"2026-01-01T00:00:04Z","message":"tunnel request admitted","peer_id":"A","service":"echo","path":"direct"}"#,
            r#"{"timestamp":"2026-01-01T00:00:04Z","message":"tunnel accepted","peer_id":"A","service":"echo","local_addr":"127.0.0.1:7"}"#,
            r#"{"timestamp":"2026-01-01T00:00:05.5Z","message":"tunnel closed","peer_id":"A","service":"echo","bytes_to_service":10,"bytes_from_service":20}"#,
            r#"{"timestamp":"2026-01-01T00:00:06Z","message":"tunnel denied: the peer is not in the service's --allow rule","peer_id":"C","service":"echo"}"#,
            r#"{"timestamp":"2026-01-01T00:00:07Z","message":"tunnel rejected","peer_id":"C","service":"","reason":"bad request"}"#,
        ]
        .join("\n");
        let report = analyze_reader::<Tunnels>(log.as_bytes(), "t".into(), None)
            .expect("in memory")
            .report;
        let find = |service: &str, side| {
            report
                .services
                .iter()
                .find(|r| r.service == service && r.side == Some(side))
                .expect("a row")
        };
        let client = find("echo", Side::Client);
        assert_eq!((client.opened, client.relayed, client.closed), (1, 1, 1));
        assert_eq!(
            (client.bytes_to_service, client.bytes_from_service),
            (100, 90)
        );
        assert_eq!(client.duration_ms.mean, Some(2000.0));
        assert_eq!(find("ssh", Side::Client).rejected, 1);
        let server = find("echo", Side::Server);
        assert_eq!(
            (server.opened, server.direct, server.closed, server.denied),
            (1, 1, 1, 1)
        );
        assert_eq!(
            (server.bytes_to_service, server.bytes_from_service),
            (10, 20)
        );
        assert_eq!(server.duration_ms.max, Some(1500.0));
        let none = find(NO_SERVICE, Side::Server);
        assert_eq!(none.rejected, 1);
        assert_eq!(none.reasons[0].text, "bad request");
        assert_eq!(report.total(Side::Server).denied, 1);
    }
}
