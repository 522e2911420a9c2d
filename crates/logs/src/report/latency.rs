//! `latency`: round-trip times per remote peer, from the node's `ping` lines (`rtt_ms`), and
//! its `ping failed` lines. At INFO the node logs only each connection's first round trip;
//! every later one (and every failure) is DEBUG, so a log at `RUST_LOG=punchgate=debug`
//! gives the full picture. The report says which it had.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Collector, Meta, Names, Render, cell, heading, num, percentile};
use crate::{
    event::Event,
    parse::{Entry, Level},
};

/// Collects round trips per peer.
#[derive(Debug, Default)]
pub struct Latency {
    samples: BTreeMap<String, Vec<f64>>,
    failures: BTreeMap<String, u64>,
    saw_debug: bool,
}

/// Round-trip statistics for each remote peer.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// One row per peer that answered or failed a ping, most pings first.
    pub peers: Vec<PeerLatency>,
    /// Whether the log has DEBUG lines (so every ping, not only each connection's first).
    pub every_ping: bool,
}

/// One peer's round trips, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerLatency {
    /// The remote peer.
    pub peer: String,
    /// Round trips measured.
    pub count: u64,
    /// Pings that failed.
    pub failures: u64,
    /// The fastest.
    pub min_ms: Option<f64>,
    /// The median.
    pub p50_ms: Option<f64>,
    /// The 90th percentile.
    pub p90_ms: Option<f64>,
    /// The slowest.
    pub max_ms: Option<f64>,
    /// The mean.
    pub mean_ms: Option<f64>,
}

impl PeerLatency {
    fn new(peer: String, mut samples: Vec<f64>, failures: u64) -> Self {
        samples.sort_by(f64::total_cmp);
        let count = samples.len() as u64;
        let mean = (count > 0).then(|| samples.iter().sum::<f64>() / count as f64);
        Self {
            peer,
            count,
            failures,
            min_ms: samples.first().copied(),
            p50_ms: percentile(&samples, 50.0),
            p90_ms: percentile(&samples, 90.0),
            max_ms: samples.last().copied(),
            mean_ms: mean,
        }
    }
}

impl Collector for Latency {
    type Report = LatencyReport;

    fn observe(&mut self, entry: &Entry, event: &Event<'_>) {
        if entry.level == Some(Level::Debug) {
            self.saw_debug = true;
        }
        match *event {
            Event::Ping { peer, rtt_ms } => {
                self.samples
                    .entry(peer.to_owned())
                    .or_default()
                    .push(rtt_ms);
            }
            Event::PingFailed { peer } => *self.failures.entry(peer.to_owned()).or_default() += 1,
            _ => {}
        }
    }

    fn finish(mut self) -> LatencyReport {
        for peer in self.failures.keys() {
            self.samples.entry(peer.clone()).or_default();
        }
        let mut peers: Vec<PeerLatency> = self
            .samples
            .into_iter()
            .map(|(peer, samples)| {
                let failures = self.failures.get(&peer).copied().unwrap_or(0);
                PeerLatency::new(peer, samples, failures)
            })
            .collect();
        peers.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.peer.cmp(&b.peer)));
        LatencyReport {
            peers,
            every_ping: self.saw_debug,
        }
    }
}

impl LatencyReport {
    /// All peers' round trips together (for the summary): count, failures, min, mean, max.
    pub fn overall(&self) -> PeerLatency {
        let count: u64 = self.peers.iter().map(|p| p.count).sum();
        let sum: f64 = self
            .peers
            .iter()
            .filter_map(|p| Some(p.mean_ms? * p.count as f64))
            .sum();
        let fold = |pick: fn(&PeerLatency) -> Option<f64>, f: fn(f64, f64) -> f64| {
            self.peers.iter().filter_map(pick).reduce(f)
        };
        PeerLatency {
            peer: "all".to_owned(),
            count,
            failures: self.peers.iter().map(|p| p.failures).sum(),
            min_ms: fold(|p| p.min_ms, f64::min),
            p50_ms: None,
            p90_ms: None,
            max_ms: fold(|p| p.max_ms, f64::max),
            mean_ms: (count > 0).then(|| sum / count as f64),
        }
    }
}

impl Render for LatencyReport {
    const CSV_HEADER: &'static [&'static str] = &[
        "peer",
        "peer_name",
        "count",
        "failures",
        "min_ms",
        "p50_ms",
        "p90_ms",
        "max_ms",
        "mean_ms",
    ];

    fn text(&self, meta: &Meta, out: &mut String, names: &Names) {
        heading(meta, out);
        if self.peers.is_empty() {
            out.push_str("  no round trips logged\n");
            return;
        }
        out.push_str(&format!(
            "  {:<26} {:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
            "peer", "pings", "fail", "min ms", "p50 ms", "p90 ms", "max ms", "mean ms"
        ));
        for p in &self.peers {
            out.push_str(&format!(
                "  {:<26} {:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8}\n",
                names.show(&p.peer),
                p.count,
                p.failures,
                num(p.min_ms, 1),
                num(p.p50_ms, 1),
                num(p.p90_ms, 1),
                num(p.max_ms, 1),
                num(p.mean_ms, 1),
            ));
        }
        if !self.every_ping {
            out.push_str(
                "  (an INFO log has only each connection's first round trip; RUST_LOG=punchgate=debug logs every ping)\n",
            );
        }
    }

    fn csv_rows(&self, _meta: &Meta, names: &Names) -> Vec<Vec<String>> {
        self.peers
            .iter()
            .map(|p| {
                vec![
                    p.peer.clone(),
                    names.label(&p.peer).unwrap_or_default().to_owned(),
                    p.count.to_string(),
                    p.failures.to_string(),
                    cell(p.min_ms),
                    cell(p.p50_ms),
                    cell(p.p90_ms),
                    cell(p.max_ms),
                    cell(p.mean_ms),
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
    fn per_peer_stats_from_ping_lines() {
        let log = [
            r#"{"level":"INFO","message":"ping","peer":"A","rtt_ms":10.0}"#,
            r#"{"level":"DEBUG","message":"ping","peer":"A","rtt_ms":30.0}"#,
            r#"{"level":"DEBUG","message":"ping","peer":"A","rtt_ms":20.0}"#,
            r#"{"level":"DEBUG","message":"ping failed","peer":"B","error":"timeout"}"#,
            r#"{"level":"INFO","message":"ping","peer":"C","rtt_ms":5.5}"#,
        ]
        .join("\n");
        let report = analyze_reader::<Latency>(log.as_bytes(), "t".into(), None)
            .expect("in memory")
            .report;
        assert!(report.every_ping);
        let a = &report.peers[0];
        assert_eq!(a.peer, "A");
        assert_eq!(
            (a.count, a.min_ms, a.p50_ms, a.p90_ms, a.max_ms, a.mean_ms),
            (
                3,
                Some(10.0),
                Some(20.0),
                Some(30.0),
                Some(30.0),
                Some(20.0)
            )
        );
        let b = report
            .peers
            .iter()
            .find(|p| p.peer == "B")
            .expect("B failed a ping");
        assert_eq!((b.count, b.failures, b.mean_ms), (0, 1, None));
        let all = report.overall();
        assert_eq!(
            (all.count, all.failures, all.min_ms, all.max_ms),
            (4, 1, Some(5.5), Some(30.0))
        );
        assert_eq!(all.mean_ms, Some(65.5 / 4.0));
    }
}
