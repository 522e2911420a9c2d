//! `connections`: who this node was connected to and how. Per remote peer: connections opened
//! and closed (`connection opened` / `connection closed`), direct or relayed (the `path`
//! field), the transport (TCP or QUIC, from the remote address), hole punches (DCUtR's
//! `hole punch succeeded` / `hole punch failed…`) and how long the first direct connection
//! took (`direct connection established`: since first contact, since the relayed connection,
//! dial attempts). Over all peers: the most connections open at once.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Collector, Meta, Names, Render, cell, heading, num};
use crate::{
    event::{Event, Path, transport_of},
    parse::Entry,
    time::Timestamp,
};

/// Collects connection events per peer.
#[derive(Debug, Default)]
pub struct Connections {
    peers: BTreeMap<String, PeerConnections>,
    open: u64,
    peak_open: u64,
}

/// Connections of every remote peer.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsReport {
    /// One row per remote peer, the first connected first.
    pub peers: Vec<PeerConnections>,
    /// Connections opened, all peers.
    pub opened: u64,
    /// Connections closed, all peers.
    pub closed: u64,
    /// The most connections open at once (from this log's opens and closes).
    pub peak_open: u64,
}

/// One remote peer's connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PeerConnections {
    /// The remote peer.
    pub peer: String,
    /// Connections opened.
    pub opened: u64,
    /// Connections closed.
    pub closed: u64,
    /// Opened over a direct path.
    pub direct: u64,
    /// Opened through a relay.
    pub relayed: u64,
    /// Opened over TCP.
    pub tcp: u64,
    /// Opened over QUIC.
    pub quic: u64,
    /// Hole punches that succeeded.
    pub punches_ok: u64,
    /// Hole punches that failed.
    pub punches_failed: u64,
    /// From first contact to the first direct connection, in ms.
    pub time_to_direct_ms: Option<f64>,
    /// From the relayed connection to the first direct one, in ms.
    pub relayed_to_direct_ms: Option<f64>,
    /// Direct dial attempts before the first direct connection.
    pub direct_attempts: Option<u64>,
    /// The first connection.
    pub first_opened: Option<Timestamp>,
    /// The last close.
    pub last_closed: Option<Timestamp>,
}

impl Connections {
    fn peer(&mut self, peer: &str) -> &mut PeerConnections {
        self.peers
            .entry(peer.to_owned())
            .or_insert_with(|| PeerConnections {
                peer: peer.to_owned(),
                ..PeerConnections::default()
            })
    }
}

impl Collector for Connections {
    type Report = ConnectionsReport;

    fn observe(&mut self, entry: &Entry, event: &Event<'_>) {
        let at = entry.timestamp;
        match *event {
            Event::ConnectionOpened { peer, addr, path } => {
                let p = self.peer(peer);
                p.opened += 1;
                match path {
                    Some(Path::Direct) => p.direct += 1,
                    Some(Path::Relayed) => p.relayed += 1,
                    None => {}
                }
                match addr.map(transport_of) {
                    Some("tcp") => p.tcp += 1,
                    Some("quic") => p.quic += 1,
                    _ => {}
                }
                if p.first_opened.is_none() {
                    p.first_opened = at;
                }
                self.open += 1;
                self.peak_open = self.peak_open.max(self.open);
            }
            Event::ConnectionClosed { peer, .. } => {
                let p = self.peer(peer);
                p.closed += 1;
                p.last_closed = at.or(p.last_closed);
                self.open = self.open.saturating_sub(1);
            }
            Event::HolePunch { peer, ok } => {
                let p = self.peer(peer);
                if ok {
                    p.punches_ok += 1;
                } else {
                    p.punches_failed += 1;
                }
            }
            Event::DirectEstablished {
                peer,
                since_first_contact_ms,
                since_relayed_ms,
                attempts,
            } => {
                let p = self.peer(peer);
                if p.time_to_direct_ms.is_none() {
                    p.time_to_direct_ms = since_first_contact_ms;
                    p.relayed_to_direct_ms = since_relayed_ms;
                    p.direct_attempts = attempts;
                }
            }
            _ => {}
        }
    }

    fn finish(self) -> ConnectionsReport {
        let mut peers: Vec<PeerConnections> = self.peers.into_values().collect();
        peers.sort_by(|a, b| {
            (a.first_opened.is_none(), a.first_opened, &a.peer).cmp(&(
                b.first_opened.is_none(),
                b.first_opened,
                &b.peer,
            ))
        });
        ConnectionsReport {
            opened: peers.iter().map(|p| p.opened).sum(),
            closed: peers.iter().map(|p| p.closed).sum(),
            peak_open: self.peak_open,
            peers,
        }
    }
}

impl Render for ConnectionsReport {
    const CSV_HEADER: &'static [&'static str] = &[
        "peer",
        "peer_name",
        "opened",
        "closed",
        "direct",
        "relayed",
        "tcp",
        "quic",
        "punches_ok",
        "punches_failed",
        "time_to_direct_ms",
        "relayed_to_direct_ms",
        "direct_attempts",
        "first_opened",
        "last_closed",
    ];

    fn text(&self, meta: &Meta, out: &mut String, names: &Names) {
        heading(meta, out);
        out.push_str(&format!(
            "  {} connections opened, {} closed, {} peers; at most {} open at once\n",
            self.opened,
            self.closed,
            self.peers.len(),
            self.peak_open
        ));
        if self.peers.is_empty() {
            return;
        }
        out.push_str(&format!(
            "  {:<26} {:>4} {:>6} {:>6} {:>7} {:>4} {:>4} {:>7}  {:<12} {}\n",
            "peer",
            "open",
            "closed",
            "direct",
            "relayed",
            "tcp",
            "quic",
            "punch",
            "first",
            "to direct"
        ));
        for p in &self.peers {
            let punch = if p.punches_ok + p.punches_failed == 0 {
                "-".to_owned()
            } else {
                format!("{}ok/{}x", p.punches_ok, p.punches_failed)
            };
            let to_direct = match p.time_to_direct_ms {
                Some(ms) => {
                    let mut s = format!("{} ms", num(Some(ms), 0));
                    if let Some(r) = p.relayed_to_direct_ms {
                        s.push_str(&format!(" ({} ms after relayed)", num(Some(r), 0)));
                    }
                    if let Some(n) = p.direct_attempts {
                        s.push_str(&format!(", {n} attempt(s)"));
                    }
                    s
                }
                None => "-".to_owned(),
            };
            out.push_str(&format!(
                "  {:<26} {:>4} {:>6} {:>6} {:>7} {:>4} {:>4} {:>7}  {:<12} {}\n",
                names.show(&p.peer),
                p.opened,
                p.closed,
                p.direct,
                p.relayed,
                p.tcp,
                p.quic,
                punch,
                p.first_opened
                    .map_or_else(|| "-".to_owned(), |t| t.time_of_day()),
                to_direct,
            ));
        }
    }

    fn csv_rows(&self, _meta: &Meta, names: &Names) -> Vec<Vec<String>> {
        let time = |t: Option<Timestamp>| t.map_or_else(String::new, |t| t.to_string());
        self.peers
            .iter()
            .map(|p| {
                vec![
                    p.peer.clone(),
                    names.label(&p.peer).unwrap_or_default().to_owned(),
                    p.opened.to_string(),
                    p.closed.to_string(),
                    p.direct.to_string(),
                    p.relayed.to_string(),
                    p.tcp.to_string(),
                    p.quic.to_string(),
                    p.punches_ok.to_string(),
                    p.punches_failed.to_string(),
                    cell(p.time_to_direct_ms),
                    cell(p.relayed_to_direct_ms),
                    p.direct_attempts.map(|n| n.to_string()).unwrap_or_default(),
                    time(p.first_opened),
                    time(p.last_closed),
                ]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::analyze_reader;

    #[test]
    fn counts_paths_transports_punches_and_the_peak() {
        let log = [
            r#"{"timestamp":"2026-01-01T00:00:01Z","message":"connection opened","peer":"R","endpoint":"/ip4/1.1.1.1/tcp/4001","path":"direct"}"#,
            r#"{"timestamp":"2026-01-01T00:00:02Z","message":"connection opened","peer":"B","endpoint":"/ip4/1.1.1.1/tcp/4001/p2p/R/p2p-circuit/p2p/B","path":"relayed"}"#,
            r#"{"timestamp":"2026-01-01T00:00:03Z","message":"connection opened","peer":"B","endpoint":"/ip4/2.2.2.2/udp/5/quic-v1","path":"direct"}"#,
            r#"{"timestamp":"2026-01-01T00:00:03Z","message":"direct connection established","peer":"B","since_first_contact_ms":1500,"relayed_before":true,"since_relayed_ms":1000,"attempts":2}"#,
            r#"{"timestamp":"2026-01-01T00:00:03Z","message":"hole punch succeeded","remote_peer":"B"}"#,
            r#"{"timestamp":"2026-01-01T00:00:04Z","message":"connection closed","peer":"B","remaining":1}"#,
        ]
        .join("\n");
        let report = analyze_reader::<Connections>(log.as_bytes(), "t".into(), None)
            .expect("in memory")
            .report;
        assert_eq!((report.opened, report.closed, report.peak_open), (3, 1, 3));
        assert_eq!(report.peers[0].peer, "R");
        let b = &report.peers[1];
        assert_eq!(
            (b.opened, b.closed, b.direct, b.relayed, b.tcp, b.quic),
            (2, 1, 1, 1, 1, 1)
        );
        assert_eq!((b.punches_ok, b.punches_failed), (1, 0));
        assert_eq!(
            (
                b.time_to_direct_ms,
                b.relayed_to_direct_ms,
                b.direct_attempts
            ),
            (Some(1500.0), Some(1000.0), Some(2))
        );
    }
}
