//! `summary`: one page per node. Its peer id, the time the log covers, its listen and
//! confirmed external addresses, relay reservations, the phase progression and NAT status,
//! the peers it connected to (direct, relayed, hole punches), round trips, tunnel totals on
//! both sides, and how many warnings and errors it logged, with the most frequent. Lines the
//! reports do not interpret (new or rare messages) are counted as other events.
//!
//! From newer nodes also: where peers can reach it and when (`reachable …`), when each
//! `--tunnel` was ready (and turned direct, or why not yet), configuration reloads (SIGHUP),
//! and where it serves metrics.

use serde::Serialize;

use super::{
    Collector, Counted, Meta, Names, Render, TopCounts, cell,
    connections::{Connections, ConnectionsReport},
    heading,
    latency::{Latency, PeerLatency},
    num,
    phases::{Phases, PhasesReport, ReachKind, Reachability},
    shorten,
    tunnels::{Side, SideTunnels, Tunnels, one_line},
};
use crate::{
    event::{Event, ReservationChange},
    parse::{Entry, Level},
};

/// The most addresses or relays listed.
const MAX_ADDRS: usize = 32;
/// The most reachability moments and `--tunnel` readiness lines in the text.
const MAX_LINES: usize = 4;

/// Collects everything the summary shows.
#[derive(Debug, Default)]
pub struct Summary {
    connections: Connections,
    latency: Latency,
    tunnels: Tunnels,
    phases: Phases,
    levels: Levels,
    warnings: TopCounts,
    listen: Vec<String>,
    external: Vec<String>,
    relays: Vec<String>,
    autonat: Option<String>,
    reservations_lost: u64,
    reservations_failed: u64,
    reloads: Reloads,
    closed_by_reload_field: u64,
    metrics_addr: Option<String>,
    other_events: u64,
}

/// Configuration reloads (SIGHUP).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reloads {
    /// `SIGHUP: reloading the configuration`.
    pub requested: u64,
    /// `configuration reloaded: …`.
    pub applied: u64,
    /// `reload failed, the configuration in use is unchanged`.
    pub failed: u64,
    /// The last failure's error.
    pub last_error: Option<String>,
    /// Served tunnels closed because the reloaded `--allow` rules no longer admit the peer.
    pub tunnels_closed: u64,
    /// `--tunnel` ports opened by reloads.
    pub ports_added: u64,
    /// `--tunnel` ports closed by reloads.
    pub ports_removed: u64,
}

/// Events per level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Levels {
    /// ERROR lines.
    pub error: u64,
    /// WARN lines.
    pub warn: u64,
    /// INFO lines.
    pub info: u64,
    /// DEBUG lines.
    pub debug: u64,
    /// TRACE lines.
    pub trace: u64,
}

/// One node's summary.
#[derive(Debug, Clone, Serialize)]
pub struct SummaryReport {
    /// Listen addresses, in the order announced (relay circuit addresses included).
    pub listen_addrs: Vec<String>,
    /// External addresses confirmed.
    pub external_addrs: Vec<String>,
    /// Relays that accepted a reservation.
    pub relays: Vec<String>,
    /// Reservations lost.
    pub reservations_lost: u64,
    /// Reservations that failed.
    pub reservations_failed: u64,
    /// Where (and when) the node said peers can reach it, in log order.
    pub reachable: Vec<Reachability>,
    /// The metrics server's address (`serving metrics on …`).
    pub metrics_addr: Option<String>,
    /// `time from -> to (cause)`, per phase change.
    pub phases: Vec<String>,
    /// The last phase entered.
    pub final_phase: Option<String>,
    /// The last NAT status the node's state machine logged (`nat status changed`).
    pub nat_status: Option<String>,
    /// AutoNAT's last conclusion (`autonat status changed`, without the address).
    pub autonat_status: Option<String>,
    /// Remote peers connected to.
    pub peers_seen: u64,
    /// Connections opened.
    pub connections_opened: u64,
    /// Of which direct.
    pub connections_direct: u64,
    /// Of which relayed.
    pub connections_relayed: u64,
    /// The most open at once.
    pub connections_peak: u64,
    /// Hole punches that succeeded.
    pub punches_ok: u64,
    /// Hole punches that failed.
    pub punches_failed: u64,
    /// Round trips over all peers (no percentiles).
    pub pings: PeerLatency,
    /// Tunnels to peers' services.
    pub tunnels_client: SideTunnels,
    /// Tunnels to this node's services.
    pub tunnels_server: SideTunnels,
    /// Configuration reloads.
    pub reloads: Reloads,
    /// Events per level.
    pub levels: Levels,
    /// The most frequent WARN and ERROR messages.
    pub top_warnings: Vec<Counted>,
    /// Events no report interprets.
    pub other_events: u64,
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if list.len() < MAX_ADDRS && !list.iter().any(|a| a == item) {
        list.push(item.to_owned());
    }
}

impl Collector for Summary {
    type Report = SummaryReport;

    fn observe(&mut self, entry: &Entry, event: &Event<'_>) {
        self.connections.observe(entry, event);
        self.latency.observe(entry, event);
        self.tunnels.observe(entry, event);
        self.phases.observe(entry, event);
        match entry.level {
            Some(Level::Error) => self.levels.error += 1,
            Some(Level::Warn) => self.levels.warn += 1,
            Some(Level::Info) => self.levels.info += 1,
            Some(Level::Debug) => self.levels.debug += 1,
            Some(Level::Trace) => self.levels.trace += 1,
            None => {}
        }
        if matches!(entry.level, Some(Level::Warn | Level::Error)) {
            self.warnings.add(&entry.message);
        }
        match *event {
            Event::Listening { addr } => push_unique(&mut self.listen, addr),
            Event::ExternalConfirmed { addr } => push_unique(&mut self.external, addr),
            Event::Reservation { relay, what } => match what {
                ReservationChange::Accepted => push_unique(&mut self.relays, relay),
                ReservationChange::Lost => self.reservations_lost += 1,
                ReservationChange::Failed => self.reservations_failed += 1,
                ReservationChange::Requested | ReservationChange::Released => {}
            },
            Event::Autonat { new } => {
                let status = new.split('(').next().unwrap_or(new);
                self.autonat = Some(status.to_owned());
            }
            Event::ReloadStarted => self.reloads.requested += 1,
            Event::Reloaded {
                tunnels_added,
                tunnels_removed,
                tunnels_closed,
                ..
            } => {
                self.reloads.applied += 1;
                self.reloads.ports_added += tunnels_added.unwrap_or(0);
                self.reloads.ports_removed += tunnels_removed.unwrap_or(0);
                self.closed_by_reload_field += tunnels_closed.unwrap_or(0);
            }
            Event::ReloadFailed { error } => {
                self.reloads.failed += 1;
                self.reloads.last_error = Some(error.to_owned());
            }
            Event::MetricsServing { addr } => self.metrics_addr = Some(addr.to_owned()),
            Event::Other => self.other_events += 1,
            _ => {}
        }
    }

    fn finish(self) -> SummaryReport {
        let connections: ConnectionsReport = self.connections.finish();
        let phases: PhasesReport = self.phases.finish();
        let tunnels = self.tunnels.finish();
        let tunnels_server = tunnels.total(Side::Server);
        let mut reloads = self.reloads;
        // Each closed tunnel has its line; the reload's own count covers a log without them.
        reloads.tunnels_closed = tunnels_server
            .closed_by_reload
            .max(self.closed_by_reload_field);
        let sum = |f: fn(&super::connections::PeerConnections) -> u64| -> u64 {
            connections.peers.iter().map(f).sum()
        };
        SummaryReport {
            listen_addrs: self.listen,
            external_addrs: self.external,
            relays: self.relays,
            reservations_lost: self.reservations_lost,
            reservations_failed: self.reservations_failed,
            reachable: phases.reachable.clone(),
            metrics_addr: self.metrics_addr,
            phases: phases.progression(),
            final_phase: phases.transitions.last().map(|t| t.to.clone()),
            nat_status: phases.nat_changes.last().map(|n| n.to.clone()),
            autonat_status: self.autonat,
            peers_seen: connections.peers.iter().filter(|p| p.opened > 0).count() as u64,
            connections_opened: connections.opened,
            connections_direct: sum(|p| p.direct),
            connections_relayed: sum(|p| p.relayed),
            connections_peak: connections.peak_open,
            punches_ok: sum(|p| p.punches_ok),
            punches_failed: sum(|p| p.punches_failed),
            pings: self.latency.finish().overall(),
            tunnels_client: tunnels.total(Side::Client),
            tunnels_server,
            reloads,
            levels: self.levels,
            top_warnings: self.warnings.top(5),
            other_events: self.other_events,
        }
    }
}

impl SummaryReport {
    /// The first moment the node said it was reachable (directly or through a relay).
    pub fn first_reachable(&self) -> Option<&Reachability> {
        self.reachable
            .iter()
            .find(|r| r.how != ReachKind::BehindNat)
    }
}

/// `through relay (…a1b2c3) at +159 ms`, with the run when the log has several.
fn reach_line(r: &Reachability, meta: &Meta, names: &Names) -> String {
    let mut text = format!(
        "{} at +{}",
        r.how_text(names),
        r.offset_ms
            .map_or_else(|| "?".to_owned(), crate::time::human_ms)
    );
    if meta.runs > 1 {
        text.push_str(&format!(
            " (run {}, +{} after its start)",
            r.run,
            r.run_offset_ms
                .map_or_else(|| "?".to_owned(), crate::time::human_ms)
        ));
    }
    text
}

impl Render for SummaryReport {
    const CSV_HEADER: &'static [&'static str] = &[
        "peer_id",
        "first",
        "last",
        "span_ms",
        "entries",
        "skipped_lines",
        "final_phase",
        "nat_status",
        "peers_seen",
        "connections_opened",
        "connections_direct",
        "connections_relayed",
        "punches_ok",
        "punches_failed",
        "pings",
        "ping_mean_ms",
        "client_tunnels",
        "client_rejected",
        "client_bytes_to_service",
        "client_bytes_from_service",
        "server_tunnels",
        "server_rejected",
        "server_denied",
        "server_bytes_to_service",
        "server_bytes_from_service",
        "warnings",
        "errors",
        "other_events",
        "reachable_ms",
        "reachable_how",
        "tunnels_ready",
        "tunnels_not_ready",
        "reloads",
        "reload_failures",
        "tunnels_closed_by_reload",
    ];

    fn text(&self, meta: &Meta, out: &mut String, names: &Names) {
        heading(meta, out);
        let mut line = |s: String| {
            out.push_str("  ");
            out.push_str(&s);
            out.push('\n');
        };
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join("\n    ")
            }
        };
        line(format!("Listening on:\n    {}", list(&self.listen_addrs)));
        if let Some(addr) = &self.metrics_addr {
            line(format!("Metrics: http://{addr}/metrics (status: /status)"));
        }
        if !self.external_addrs.is_empty() {
            line(format!(
                "External addresses confirmed:\n    {}",
                list(&self.external_addrs)
            ));
        }
        if !self.relays.is_empty() || self.reservations_failed + self.reservations_lost > 0 {
            line(format!(
                "Relay reservations: accepted by {}; {} lost, {} failed",
                if self.relays.is_empty() {
                    "none".to_owned()
                } else {
                    self.relays
                        .iter()
                        .map(|r| names.show(r))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                self.reservations_lost,
                self.reservations_failed
            ));
        }
        line(format!("Phase progression:\n    {}", list(&self.phases)));
        line(format!(
            "NAT status: {} (AutoNAT: {})",
            self.nat_status.as_deref().unwrap_or("no change logged"),
            self.autonat_status.as_deref().unwrap_or("no change logged")
        ));
        let reached: Vec<&Reachability> = self
            .reachable
            .iter()
            .filter(|r| r.how != ReachKind::BehindNat)
            .collect();
        match reached.as_slice() {
            [] => {
                if let Some(r) = self.reachable.last() {
                    line(format!(
                        "Reachable: not yet: behind NAT since +{}, no relay slot reserved",
                        r.offset_ms
                            .map_or_else(|| "?".to_owned(), crate::time::human_ms)
                    ));
                }
            }
            [one] => line(format!("Reachable: {}", reach_line(one, meta, names))),
            many => {
                let mut text = "Reachable:".to_owned();
                for r in many.iter().take(MAX_LINES) {
                    text.push_str(&format!("\n    {}", reach_line(r, meta, names)));
                }
                if many.len() > MAX_LINES {
                    text.push_str(&format!("\n    ({} more)", many.len() - MAX_LINES));
                }
                line(text);
            }
        }
        line(format!(
            "Peers connected: {} ({} connections: {} direct, {} relayed; at most {} at once)",
            self.peers_seen,
            self.connections_opened,
            self.connections_direct,
            self.connections_relayed,
            self.connections_peak
        ));
        line(format!(
            "Hole punches: {} succeeded, {} failed",
            self.punches_ok, self.punches_failed
        ));
        let p = &self.pings;
        line(format!(
            "Round trips: {} measured, {} failed; min {} / mean {} / max {} ms",
            p.count,
            p.failures,
            num(p.min_ms, 1),
            num(p.mean_ms, 1),
            num(p.max_ms, 1)
        ));
        line(format!(
            "Tunnels out (client): {}",
            one_line(&self.tunnels_client)
        ));
        let ready = &self.tunnels_client.readiness;
        for r in ready.iter().take(MAX_LINES) {
            let run = if meta.runs > 1 {
                format!(", run {}", r.run)
            } else {
                String::new()
            };
            line(format!(
                "  --tunnel {} to {}{run}: {}",
                r.service,
                r.peer
                    .as_deref()
                    .map_or_else(|| "?".to_owned(), |p| names.show(p)),
                r.describe()
            ));
        }
        if ready.len() > MAX_LINES {
            line(format!(
                "  ({} more --tunnel runs)",
                ready.len() - MAX_LINES
            ));
        }
        line(format!(
            "Tunnels in (server): {}",
            one_line(&self.tunnels_server)
        ));
        let r = &self.reloads;
        if r.requested + r.applied + r.failed + r.tunnels_closed > 0 {
            let mut text = format!(
                "Reloads: {} ({} applied, {} failed); tunnels closed by reloads: {}; --tunnel ports: {} added, {} removed",
                r.requested.max(r.applied + r.failed),
                r.applied,
                r.failed,
                r.tunnels_closed,
                r.ports_added,
                r.ports_removed
            );
            if let Some(error) = &r.last_error {
                text.push_str(&format!("\n    last failure: {}", shorten(error)));
            }
            line(text);
        }
        line(format!(
            "Warnings: {}, errors: {} (info {}, debug {}); other events: {}",
            self.levels.warn,
            self.levels.error,
            self.levels.info,
            self.levels.debug,
            self.other_events
        ));
        for w in &self.top_warnings {
            line(format!("  {:>4}× {}", w.count, super::shorten(&w.text)));
        }
    }

    fn csv_rows(&self, meta: &Meta, _names: &Names) -> Vec<Vec<String>> {
        let time =
            |t: Option<crate::time::Timestamp>| t.map_or_else(String::new, |t| t.to_string());
        let (c, s) = (&self.tunnels_client, &self.tunnels_server);
        vec![vec![
            meta.peer_id.clone().unwrap_or_default(),
            time(meta.first),
            time(meta.last),
            cell(meta.span_ms()),
            meta.entries.to_string(),
            meta.skipped_lines.to_string(),
            self.final_phase.clone().unwrap_or_default(),
            self.nat_status.clone().unwrap_or_default(),
            self.peers_seen.to_string(),
            self.connections_opened.to_string(),
            self.connections_direct.to_string(),
            self.connections_relayed.to_string(),
            self.punches_ok.to_string(),
            self.punches_failed.to_string(),
            self.pings.count.to_string(),
            cell(self.pings.mean_ms),
            c.opened.to_string(),
            c.rejected.to_string(),
            c.bytes_to_service.to_string(),
            c.bytes_from_service.to_string(),
            s.opened.to_string(),
            s.rejected.to_string(),
            s.denied.to_string(),
            s.bytes_to_service.to_string(),
            s.bytes_from_service.to_string(),
            self.levels.warn.to_string(),
            self.levels.error.to_string(),
            self.other_events.to_string(),
            cell(self.first_reachable().and_then(|r| r.offset_ms)),
            self.first_reachable()
                .map_or("", |r| match r.how {
                    ReachKind::Direct => "direct",
                    ReachKind::Relay => "relay",
                    ReachKind::BehindNat => "",
                })
                .to_owned(),
            c.readiness
                .iter()
                .filter(|r| r.ready_ms.is_some())
                .count()
                .to_string(),
            c.readiness
                .iter()
                .filter(|r| r.ready_ms.is_none())
                .count()
                .to_string(),
            self.reloads.requested.to_string(),
            self.reloads.failed.to_string(),
            self.reloads.tunnels_closed.to_string(),
        ]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::analyze_reader;

    #[test]
    fn counts_levels_warnings_addresses_and_other_events() {
        let log = [
            r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","message":"local peer id","peer_id":"P"}"#,
            r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","message":"listening on","address":"/ip4/10.0.0.1/tcp/4001"}"#,
            r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","message":"listening on","address":"/ip4/10.0.0.1/tcp/4001"}"#,
            r#"{"timestamp":"2026-01-01T00:00:01Z","level":"INFO","message":"relay reservation accepted","relay":"R","addr":"/x"}"#,
            r#"{"timestamp":"2026-01-01T00:00:02Z","level":"WARN","message":"dial failed","peer":"X"}"#,
            r#"{"timestamp":"2026-01-01T00:00:03Z","level":"WARN","message":"dial failed","peer":"Y"}"#,
            r#"{"timestamp":"2026-01-01T00:00:04Z","level":"ERROR","message":"boom"}"#,
            r#"{"timestamp":"2026-01-01T00:00:05Z","level":"INFO","message":"reachable","peer":"B"}"#,
            "not json at all",
        ]
        .join("\n");
        let r = analyze_reader::<Summary>(log.as_bytes(), "t".into(), None).expect("in memory");
        assert_eq!(r.meta.peer_id.as_deref(), Some("P"));
        assert_eq!(r.meta.skipped_lines, 1);
        assert_eq!(r.meta.entries, 8);
        let s = r.report;
        assert_eq!(s.listen_addrs, vec!["/ip4/10.0.0.1/tcp/4001".to_owned()]);
        assert_eq!(s.relays, vec!["R".to_owned()]);
        assert_eq!((s.levels.warn, s.levels.error, s.levels.info), (2, 1, 5));
        assert_eq!(
            s.top_warnings[0],
            Counted {
                text: "dial failed".into(),
                count: 2
            }
        );
        // "reachable" and "dial failed" ×2 and "boom": no report interprets them.
        assert_eq!(s.other_events, 4);
    }

    #[test]
    fn reachability_readiness_reloads_and_metrics() {
        let log = [
            r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","message":"local peer id","peer_id":"P"}"#,
            r#"{"timestamp":"2026-01-01T00:00:00.5Z","level":"INFO","message":"serving metrics on http://127.0.0.1:9090/metrics and status on http://127.0.0.1:9090/status","addr":"127.0.0.1:9090"}"#,
            r#"{"timestamp":"2026-01-01T00:00:01Z","level":"INFO","message":"tunnel listening","service":"echo","peer":"B","bind":"127.0.0.1:7000"}"#,
            r#"{"timestamp":"2026-01-01T00:00:02Z","level":"INFO","message":"reachable directly at addrs; relaying for peers behind NAT","addrs":"/ip4/1.2.3.4/tcp/4001 /ip4/1.2.3.4/udp/4001/quic-v1"}"#,
            r#"{"timestamp":"2026-01-01T00:00:02.5Z","level":"INFO","message":"tunnel ready over a direct connection","service":"echo","peer":"B","bind":"127.0.0.1:7000","path":"direct","remote_addr":"/x"}"#,
            r#"{"timestamp":"2026-01-01T00:00:05Z","level":"INFO","message":"SIGHUP: reloading the configuration"}"#,
            r#"{"timestamp":"2026-01-01T00:00:05Z","level":"INFO","message":"closing a tunnel: the reloaded --allow rules no longer admit this peer to the service","service":"ssh","peer_id":"C"}"#,
            r#"{"timestamp":"2026-01-01T00:00:05Z","level":"INFO","message":"configuration reloaded: services, --allow rules and --tunnel ports (other settings take effect at the next start)","services":1,"tunnels_added":0,"tunnels_removed":1,"tunnels_closed":1}"#,
            r#"{"timestamp":"2026-01-01T00:00:06Z","level":"INFO","message":"SIGHUP: reloading the configuration"}"#,
            r#"{"timestamp":"2026-01-01T00:00:06Z","level":"WARN","message":"reload failed, the configuration in use is unchanged","error":"--allow: bad peer id"}"#,
        ]
        .join("\n");
        let r = analyze_reader::<Summary>(log.as_bytes(), "t".into(), None).expect("in memory");
        let s = &r.report;
        assert_eq!(s.metrics_addr.as_deref(), Some("127.0.0.1:9090"));
        let reach = s.first_reachable().expect("reachable");
        assert_eq!(reach.how, ReachKind::Direct);
        assert_eq!(reach.offset_ms, Some(2000.0));
        assert_eq!(reach.addrs.len(), 2);
        assert_eq!(s.tunnels_client.readiness[0].ready_ms, Some(2500.0));
        assert_eq!(
            s.reloads,
            Reloads {
                requested: 2,
                applied: 1,
                failed: 1,
                last_error: Some("--allow: bad peer id".into()),
                tunnels_closed: 1,
                ports_added: 0,
                ports_removed: 1,
            }
        );
        assert_eq!(s.other_events, 0);
        let mut text = String::new();
        s.text(&r.meta, &mut text, &Names::default());
        for expected in [
            "Metrics: http://127.0.0.1:9090/metrics",
            "Reachable: directly at /ip4/1.2.3.4/tcp/4001, /ip4/1.2.3.4/udp/4001/quic-v1 at +2.0 s",
            "--tunnel echo to B: ready +2.5 s (direct)",
            "Reloads: 2 (1 applied, 1 failed); tunnels closed by reloads: 1; --tunnel ports: 0 added, 1 removed",
            "last failure: --allow: bad peer id",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }
}
