//! `tunnels`: per service, what the node did as a client (a local port forwarded to a peer's
//! service: `tunnel path`, `client tunnel closed`, `client tunnel rejected…`, `client tunnel
//! error`) and as a server (a service it exposes: `tunnel request admitted`, `tunnel
//! accepted`, `tunnel closed`, `tunnel rejected…`, `tunnel denied…`, `tunnel error`).
//!
//! Bytes are counted the same way on both sides: `to_service` flows from the client towards
//! the service (the client's `bytes_to_remote`, the server's `bytes_to_service`),
//! `from_service` back. A tunnel closed by its idle timeout logs a reason and no byte counts.
//! Durations pair each tunnel's start (`tunnel path`, `tunnel accepted`) with the next close
//! for the same peer and service. A server-side tunnel's path is its `tunnel accepted` line's
//! `path`, or (older nodes) that of the `tunnel request admitted` line before it.
//!
//! Readiness, per `--tunnel` and run of the node: from the run's first line to `tunnel ready
//! …` and to `tunnel now direct`, whether it stayed relayed, and the `tunnel not ready yet`
//! retries. On the server side, the tunnels a reload closed (`closing a tunnel: the reloaded
//! --allow rules …`).

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

use super::{
    Collector, Counted, Meta, Names, Render, Runs, Stats, TopCounts, bytes, cell, heading,
    ms_between, shorten,
};
use crate::{
    event::{Event, Path, TunnelId},
    parse::Entry,
    time::{Timestamp, human_ms},
};

/// How many open tunnels per (side, peer, service) are remembered for durations.
const MAX_PENDING: usize = 10_000;
/// How many `--tunnel`s (over all runs) readiness is kept for.
const MAX_READINESS: usize = 10_000;
/// The service name for refusals whose request named none.
const NO_SERVICE: &str = "(none)";

/// Collects tunnel events per service and side.
#[derive(Debug, Default)]
pub struct Tunnels {
    sides: BTreeMap<(String, Side), Builder>,
    /// Start times of open tunnels, oldest first, by side, peer and service.
    pending: HashMap<(Side, String, String), VecDeque<Option<Timestamp>>>,
    /// Paths of admitted server-side requests not yet accepted, by peer and service.
    admitted: HashMap<(String, String), VecDeque<Option<Path>>>,
    /// Readiness per run and `--tunnel` (service, peer, bind).
    readiness: BTreeMap<(u32, String, String, String), Readiness>,
    /// Whether the node logged any readiness line (older nodes log none).
    announced: bool,
    runs: Runs,
}

/// When a `--tunnel` became ready, in one run of the node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Readiness {
    /// The service.
    pub service: String,
    /// The peer exposing it.
    pub peer: Option<String>,
    /// The local port (`bind`).
    pub bind: Option<String>,
    /// The node's run, from 1.
    pub run: u32,
    /// From the run's first line to `tunnel ready …`, in ms; `None`: not ready.
    pub ready_ms: Option<f64>,
    /// The path it was ready over.
    pub path: Option<Path>,
    /// The relay, when ready through one.
    pub relay: Option<String>,
    /// From the run's first line to `tunnel now direct`, in ms.
    pub direct_ms: Option<f64>,
    /// `tunnel now direct`'s `after_ms`: since the relayed connection.
    pub direct_after_ms: Option<f64>,
    /// `tunnel stays relayed`: the hole punch failed.
    pub stays_relayed: bool,
    /// `tunnel not ready yet` warnings (each one a failed attempt, tried again).
    pub retries: u64,
    /// The last of those warnings' error.
    pub last_error: Option<String>,
    /// A reload removed this `--tunnel` (`tunnel port closed by a reload`).
    pub closed_by_reload: bool,
}

impl Readiness {
    /// `ready +520 ms (direct)`, `ready +300 ms (relayed), direct +450 ms`, `not ready: 3
    /// retries, last error …`.
    pub fn describe(&self) -> String {
        let mut text = match self.ready_ms {
            Some(ms) => format!(
                "ready +{} ({})",
                human_ms(ms),
                self.path.map_or("path not logged", Path::as_str)
            ),
            None => format!("not ready: {} retries", self.retries),
        };
        if let Some(ms) = self.direct_ms {
            text.push_str(&format!(", direct +{}", human_ms(ms)));
        } else if self.stays_relayed {
            text.push_str(", stayed relayed (no direct connection)");
        }
        if self.ready_ms.is_some() && self.retries > 0 {
            text.push_str(&format!(" after {} retries", self.retries));
        }
        if self.closed_by_reload {
            text.push_str("; port closed by a reload");
        }
        if let (None, Some(error)) = (self.ready_ms, &self.last_error) {
            text.push_str(&format!(", last error: {error}"));
        }
        shorten(&text)
    }
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
    /// Server: tunnels closed because a reload's `--allow` rules no longer admit the peer.
    pub closed_by_reload: u64,
    /// Client: when each `--tunnel` to this service was ready, per run of the node.
    pub readiness: Vec<Readiness>,
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

    /// The readiness of `tunnel` in the current run (`None` once too many are kept).
    fn readiness(&mut self, tunnel: TunnelId<'_>) -> Option<&mut Readiness> {
        let run = self.runs.run();
        let key = (
            run,
            tunnel.service.to_owned(),
            tunnel.peer.unwrap_or_default().to_owned(),
            tunnel.bind.unwrap_or_default().to_owned(),
        );
        if !self.readiness.contains_key(&key) && self.readiness.len() >= MAX_READINESS {
            return None;
        }
        Some(self.readiness.entry(key).or_insert_with(|| Readiness {
            service: tunnel.service.to_owned(),
            peer: tunnel.peer.map(str::to_owned),
            bind: tunnel.bind.map(str::to_owned),
            run,
            ..Readiness::default()
        }))
    }

    /// The path of the oldest admitted request of `peer` for `service`, now done with.
    fn take_admitted(&mut self, peer: Option<&str>, service: &str) -> Option<Path> {
        let key = (peer.unwrap_or_default().to_owned(), service.to_owned());
        self.admitted.get_mut(&key)?.pop_front().flatten()
    }
}

impl Collector for Tunnels {
    type Report = TunnelsReport;

    fn observe(&mut self, entry: &Entry, event: &Event<'_>) {
        self.runs.observe(entry, event);
        let at = entry.timestamp;
        let since_start = self.runs.since_start(at);
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
                // Counted when accepted: the service may yet be unreachable.
                self.side(service, Side::Server);
                let key = (
                    entry.str("peer_id").unwrap_or_default().to_owned(),
                    service.to_owned(),
                );
                let queue = self.admitted.entry(key).or_default();
                if queue.len() == MAX_PENDING {
                    queue.pop_front();
                }
                queue.push_back(path);
            }
            Event::ServerAccepted {
                service,
                peer,
                path,
            } => {
                let admitted = self.take_admitted(peer, service);
                let row = &mut self.side(service, Side::Server).row;
                row.opened += 1;
                count_path(row, path.or(admitted));
                self.start(Side::Server, peer, service, at);
            }
            Event::ServerClosedByReload { service, .. } => {
                self.side(service, Side::Server).row.closed_by_reload += 1;
            }
            Event::TunnelListening { service } => {
                let tunnel = TunnelId {
                    service,
                    peer: entry.str("peer"),
                    bind: entry.str("bind"),
                };
                self.side(service, Side::Client);
                self.readiness(tunnel);
            }
            Event::TunnelReady {
                tunnel,
                path,
                relay,
                ..
            } => {
                self.announced = true;
                self.side(tunnel.service, Side::Client);
                if let Some(r) = self.readiness(tunnel) {
                    if r.ready_ms.is_none() {
                        r.ready_ms = since_start;
                        r.path = path;
                        r.relay = relay.map(str::to_owned);
                    }
                }
            }
            Event::TunnelNowDirect {
                tunnel, after_ms, ..
            } => {
                self.announced = true;
                if let Some(r) = self.readiness(tunnel) {
                    r.direct_ms = since_start;
                    r.direct_after_ms = after_ms;
                }
            }
            Event::TunnelStaysRelayed { tunnel, .. } => {
                self.announced = true;
                if let Some(r) = self.readiness(tunnel) {
                    r.stays_relayed = true;
                }
            }
            Event::TunnelNotReady { tunnel, error, .. } => {
                self.announced = true;
                self.side(tunnel.service, Side::Client);
                if let Some(r) = self.readiness(tunnel) {
                    r.retries += 1;
                    r.last_error = Some(error.to_owned());
                }
            }
            Event::TunnelPortClosed { tunnel } => {
                if let Some(r) = self.readiness(tunnel) {
                    r.closed_by_reload = true;
                }
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
                let service = service.unwrap_or(NO_SERVICE);
                let b = self.side(service, Side::Server);
                b.row.rejected += 1;
                b.reasons.add(reason);
                // Refused after admission: the service is unreachable (the line names it).
                if entry.str("target").is_some() {
                    self.take_admitted(entry.str("peer_id"), service);
                }
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
                    let started = self.pending.get_mut(&key).and_then(VecDeque::pop_front);
                    // No tunnel open: it failed between admission and acceptance.
                    if started.is_none() {
                        self.take_admitted(Some(peer), service);
                    }
                }
            }
            _ => {}
        }
    }

    fn finish(mut self) -> TunnelsReport {
        // An older node logs no readiness: say nothing rather than "not ready".
        let readiness = if self.announced {
            std::mem::take(&mut self.readiness)
        } else {
            BTreeMap::new()
        };
        let mut ready_by_service: BTreeMap<String, Vec<Readiness>> = BTreeMap::new();
        for r in readiness.into_values() {
            ready_by_service
                .entry(r.service.clone())
                .or_default()
                .push(r);
        }
        let services = self
            .sides
            .into_iter()
            .map(|((service, side), b)| SideTunnels {
                duration_ms: b.durations,
                reasons: b.reasons.top(5),
                readiness: if side == Side::Client {
                    ready_by_service.remove(&service).unwrap_or_default()
                } else {
                    Vec::new()
                },
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
            total.closed_by_reload += row.closed_by_reload;
            total.readiness.extend(row.readiness.iter().cloned());
        }
        total
            .readiness
            .sort_by(|a, b| (a.run, &a.service).cmp(&(b.run, &b.service)));
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
        "ready_ms",
        "direct_ms",
        "not_ready_retries",
        "closed_by_reload",
    ];

    fn text(&self, meta: &Meta, out: &mut String, names: &Names) {
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
            if r.closed_by_reload > 0 {
                out.push_str(&format!(
                    "      {} closed by a reload (the new --allow rules no longer admit the peer)\n",
                    r.closed_by_reload
                ));
            }
        }
        let ready: Vec<&Readiness> = self.services.iter().flat_map(|r| &r.readiness).collect();
        if ready.is_empty() {
            return;
        }
        out.push_str("  Readiness of each --tunnel, from the node's start (per run):\n");
        out.push_str(&format!(
            "    {:<12} {:>3}  {:<24} {:>9}  {:<8} {:>9}  {}\n",
            "service", "run", "peer", "ready", "path", "direct", "notes"
        ));
        for r in ready {
            let at = |ms: Option<f64>| {
                ms.map_or_else(|| "-".to_owned(), |ms| format!("+{}", human_ms(ms)))
            };
            let mut notes = Vec::new();
            if r.ready_ms.is_none() {
                notes.push(format!("not ready: {} retries", r.retries));
            } else if r.retries > 0 {
                notes.push(format!("{} retries before", r.retries));
            }
            if r.stays_relayed {
                notes.push("stayed relayed".to_owned());
            }
            if r.closed_by_reload {
                notes.push("port closed by a reload".to_owned());
            }
            if let (None, Some(error)) = (r.ready_ms, &r.last_error) {
                notes.push(format!("last error: {error}"));
            }
            out.push_str(
                format!(
                    "    {:<12} {:>3}  {:<24} {:>9}  {:<8} {:>9}  {}",
                    r.service,
                    r.run,
                    r.peer
                        .as_deref()
                        .map_or_else(|| "-".to_owned(), |p| names.show(p)),
                    at(r.ready_ms),
                    r.path.map_or("-", Path::as_str),
                    at(r.direct_ms),
                    shorten(&notes.join("; "))
                )
                .trim_end(),
            );
            out.push('\n');
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
                    join_cells(r.readiness.iter().map(|x| x.ready_ms)),
                    join_cells(r.readiness.iter().map(|x| x.direct_ms)),
                    r.readiness
                        .iter()
                        .map(|x| x.retries)
                        .sum::<u64>()
                        .to_string(),
                    r.closed_by_reload.to_string(),
                ]
            })
            .collect()
    }
}

/// Values per `--tunnel` and run in one CSV cell, `;` between them (empty: not logged).
fn join_cells(values: impl Iterator<Item = Option<f64>>) -> String {
    values.map(cell).collect::<Vec<_>>().join(";")
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

    #[test]
    fn readiness_per_tunnel_and_run_from_the_run_start() {
        let log = [
            // Run 1: relayed at first, then direct.
            r#"{"timestamp":"2026-01-01T00:00:00Z","message":"loaded identity","peer_id":"A"}"#,
            r#"{"timestamp":"2026-01-01T00:00:00.1Z","message":"local peer id","peer_id":"A"}"#,
            r#"{"timestamp":"2026-01-01T00:00:00.2Z","message":"tunnel listening","service":"echo","peer":"B","bind":"127.0.0.1:7000"}"#,
            r#"{"timestamp":"2026-01-01T00:00:00.2Z","message":"tunnel listening","service":"ssh","peer":"C","bind":"127.0.0.1:7001"}"#,
            r#"{"timestamp":"2026-01-01T00:00:01Z","message":"tunnel ready through a relay; trying for a direct connection","service":"echo","peer":"B","bind":"127.0.0.1:7000","path":"relayed","relay":"R"}"#,
            r#"{"timestamp":"2026-01-01T00:00:01.2Z","level":"WARN","message":"tunnel not ready yet: cannot reach the peer; trying again","service":"ssh","peer":"C","bind":"127.0.0.1:7001","error":"no addresses","retry_in":"1s"}"#,
            r#"{"timestamp":"2026-01-01T00:00:01.5Z","message":"tunnel now direct","service":"echo","peer":"B","bind":"127.0.0.1:7000","path":"direct","remote_addr":"/x","after_ms":500}"#,
            r#"{"timestamp":"2026-01-01T00:00:02.2Z","level":"WARN","message":"tunnel not ready yet: cannot reach the peer; trying again","service":"ssh","peer":"C","bind":"127.0.0.1:7001","error":"dial timeout","retry_in":"2s"}"#,
            r#"{"timestamp":"2026-01-01T00:00:03Z","message":"tunnel port closed by a reload (its connections carry on)","service":"ssh","peer":"C","bind":"127.0.0.1:7001"}"#,
            // Run 2, appended to the same log.
            r#"{"timestamp":"2026-01-01T00:00:10Z","message":"loaded identity","peer_id":"A"}"#,
            r#"{"timestamp":"2026-01-01T00:00:10.1Z","message":"local peer id","peer_id":"A"}"#,
            r#"{"timestamp":"2026-01-01T00:00:10.3Z","message":"tunnel ready through a relay; trying for a direct connection","service":"echo","peer":"B","bind":"127.0.0.1:7000","path":"relayed","relay":"R"}"#,
            r#"{"timestamp":"2026-01-01T00:00:12Z","message":"tunnel stays relayed: no direct connection could be made","service":"echo","peer":"B","bind":"127.0.0.1:7000","path":"relayed","reason":"punch failed"}"#,
        ]
        .join("\n");
        let r = analyze_reader::<Tunnels>(log.as_bytes(), "t".into(), None).expect("in memory");
        assert_eq!(r.meta.runs, 2);
        let report = r.report;
        let echo = report
            .services
            .iter()
            .find(|s| s.service == "echo")
            .expect("echo");
        assert_eq!(echo.readiness.len(), 2);
        let (first, second) = (&echo.readiness[0], &echo.readiness[1]);
        assert_eq!((first.run, first.ready_ms), (1, Some(1000.0)));
        assert_eq!(first.path, Some(Path::Relayed));
        assert_eq!(first.relay.as_deref(), Some("R"));
        assert_eq!(
            (first.direct_ms, first.direct_after_ms),
            (Some(1500.0), Some(500.0))
        );
        assert_eq!((second.run, second.ready_ms), (2, Some(300.0)));
        assert!(second.stays_relayed && second.direct_ms.is_none());
        let ssh = &report
            .services
            .iter()
            .find(|s| s.service == "ssh")
            .expect("ssh")
            .readiness[0];
        assert_eq!((ssh.ready_ms, ssh.retries), (None, 2));
        assert_eq!(ssh.last_error.as_deref(), Some("dial timeout"));
        assert!(ssh.closed_by_reload);
        assert_eq!(
            ssh.describe(),
            "not ready: 2 retries; port closed by a reload, last error: dial timeout"
        );
        assert_eq!(first.describe(), "ready +1.0 s (relayed), direct +1.5 s");
        let csv = report.csv_rows(&Meta::default(), &Names::default());
        let echo_row = csv.iter().find(|r| r[0] == "echo").expect("echo row");
        let col = |name: &str| {
            TunnelsReport::CSV_HEADER
                .iter()
                .position(|h| *h == name)
                .expect(name)
        };
        assert_eq!(echo_row[col("ready_ms")], "1000.000;300.000");
        assert_eq!(echo_row[col("direct_ms")], "1500.000;");
    }

    #[test]
    fn an_older_node_logs_no_readiness() {
        let log = [
            r#"{"timestamp":"2026-01-01T00:00:00Z","message":"tunnel listening","service":"echo","peer":"B","bind":"127.0.0.1:7000"}"#,
            r#"{"timestamp":"2026-01-01T00:00:01Z","message":"tunnel path","peer":"B","service":"echo","path":"relayed"}"#,
        ]
        .join("\n");
        let report = analyze_reader::<Tunnels>(log.as_bytes(), "t".into(), None)
            .expect("in memory")
            .report;
        assert!(report.services[0].readiness.is_empty());
    }

    #[test]
    fn server_paths_from_accepted_or_admitted_and_reload_closes() {
        let log = [
            // A newer node: both lines carry the path; counted once.
            r#"{"message":"tunnel request admitted","peer_id":"A","service":"echo","path":"relayed"}"#,
            r#"{"message":"tunnel accepted","peer_id":"A","service":"echo","local_addr":"127.0.0.1:7","path":"relayed"}"#,
            // An older node: only the admission has it.
            r#"{"message":"tunnel request admitted","peer_id":"A","service":"echo","path":"direct"}"#,
            r#"{"message":"tunnel accepted","peer_id":"A","service":"echo","local_addr":"127.0.0.1:7"}"#,
            // Admitted, then the service was unreachable: no tunnel, no path counted.
            r#"{"message":"tunnel request admitted","peer_id":"A","service":"echo","path":"direct"}"#,
            r#"{"message":"tunnel rejected","peer_id":"A","service":"echo","reason":"connection refused","target":"127.0.0.1:7"}"#,
            r#"{"message":"closing a tunnel: the reloaded --allow rules no longer admit this peer to the service","service":"echo","peer_id":"A"}"#,
        ]
        .join("\n");
        let report = analyze_reader::<Tunnels>(log.as_bytes(), "t".into(), None)
            .expect("in memory")
            .report;
        let server = report.total(Side::Server);
        assert_eq!(
            (
                server.opened,
                server.direct,
                server.relayed,
                server.rejected
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(server.closed_by_reload, 1);
    }
}
