//! `phases`: the node's lifecycle as its state machine logged it. Every `phase transition`
//! line (INFO: `from`, `to`, and the machine `event` that caused it), the time spent in each
//! phase (from the first line to the first transition, between transitions, to the last
//! line), how often each machine event came (`event processed` lines are DEBUG: a log at
//! `RUST_LOG=punchgate=debug` has them all, an INFO log only the transitions), the NAT status
//! changes (`nat status changed`), and steps back (`Participating → Discovering`). The
//! timeline also has the moments the node said where peers can reach it (`reachable directly
//! at addrs; …`, `behind NAT: …`, `reachable through a relay: …`).

use serde::Serialize;

use super::{
    Collector, Counted, Meta, Names, Render, Runs, TopCounts, cell, heading, ms_between, shorten,
};
use crate::{
    event::{Event, Reach},
    parse::{Entry, Level},
    time::{Timestamp, human_ms},
};

/// The most transitions or NAT changes kept; a log with more is a node flapping, and the
/// first ones tell the story.
const MAX_KEPT: usize = 10_000;

/// Collects phase transitions.
#[derive(Debug, Default)]
pub struct Phases {
    transitions: Vec<Transition>,
    nat: Vec<NatChange>,
    reachable: Vec<Reachability>,
    runs: Runs,
    events: TopCounts,
    first: Option<Timestamp>,
    last: Option<Timestamp>,
    saw_debug: bool,
}

/// The lifecycle of one node.
#[derive(Debug, Clone, Serialize)]
pub struct PhasesReport {
    /// Each phase change, in log order.
    pub transitions: Vec<Transition>,
    /// Time in each phase, in the order first entered.
    pub time_in_phase: Vec<PhaseTime>,
    /// NAT status changes, in log order.
    pub nat_changes: Vec<NatChange>,
    /// Where the node said peers can reach it, in log order.
    pub reachable: Vec<Reachability>,
    /// How often each machine event came, most frequent first.
    pub events: Vec<Counted>,
    /// Transitions to an earlier phase (except to `ShuttingDown`).
    pub regressions: Vec<Transition>,
    /// Whether the log has DEBUG lines (so every machine event is counted).
    pub every_event: bool,
}

/// One phase change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// When.
    pub at: Option<Timestamp>,
    /// Since the log's first line, in ms.
    pub offset_ms: Option<f64>,
    /// The phase left.
    pub from: String,
    /// The phase entered.
    pub to: String,
    /// The machine event that caused it.
    pub cause: String,
}

/// Time spent in a phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseTime {
    /// The phase.
    pub phase: String,
    /// Total time in it, in ms.
    pub ms: f64,
}

/// One NAT status change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NatChange {
    /// When.
    pub at: Option<Timestamp>,
    /// The status before.
    pub from: String,
    /// The status after.
    pub to: String,
}

/// How peers can reach the node, as it said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReachKind {
    /// Directly (`reachable directly at addrs; …`).
    Direct,
    /// Through a relay (`reachable through a relay: …`).
    Relay,
    /// Not yet: behind NAT, reserving a relay slot (`behind NAT: …`).
    BehindNat,
}

/// One moment the node said where peers can reach it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reachability {
    /// When.
    pub at: Option<Timestamp>,
    /// Since the log's first line, in ms.
    pub offset_ms: Option<f64>,
    /// The node's run (from 1; see `runs` in the source fields).
    pub run: u32,
    /// Since that run's first line, in ms.
    pub run_offset_ms: Option<f64>,
    /// Directly, through a relay, or not yet (behind NAT).
    pub how: ReachKind,
    /// The relay, when through one.
    pub relay: Option<String>,
    /// The addresses peers can dial: the direct ones, or the relay circuit address.
    pub addrs: Vec<String>,
}

impl Reachability {
    /// `reachable through relay (…a1b2c3)`, `reachable directly at /ip4/…`, `behind NAT: …`.
    pub fn describe(&self, names: &Names) -> String {
        match self.how {
            ReachKind::BehindNat => self.how_text(names),
            _ => format!("reachable {}", self.how_text(names)),
        }
    }

    /// `through relay (…a1b2c3)`, `directly at /ip4/…`, `behind NAT: …`.
    pub fn how_text(&self, names: &Names) -> String {
        match self.how {
            ReachKind::Relay => {
                let relay = self
                    .relay
                    .as_deref()
                    .map_or_else(|| "?".to_owned(), |r| names.show(r));
                // A relay whose log is among the sources may already be called `relay`.
                if relay.starts_with("relay") {
                    format!("through {relay}")
                } else {
                    format!("through relay {relay}")
                }
            }
            ReachKind::Direct if self.addrs.is_empty() => "directly (public)".to_owned(),
            ReachKind::Direct => shorten(&format!("directly at {}", self.addrs.join(", "))),
            ReachKind::BehindNat => {
                "behind NAT: not reachable directly, reserving a relay slot".to_owned()
            }
        }
    }
}

/// A phase's place in the lifecycle; unknown phases have none.
fn rank(phase: &str) -> Option<u8> {
    match phase {
        "Initializing" => Some(0),
        "Discovering" => Some(1),
        "Participating" => Some(2),
        "ShuttingDown" => Some(3),
        _ => None,
    }
}

impl Collector for Phases {
    type Report = PhasesReport;

    fn observe(&mut self, entry: &Entry, event: &Event<'_>) {
        self.runs.observe(entry, event);
        if let Some(t) = entry.timestamp {
            self.first.get_or_insert(t);
            self.last = Some(t);
        }
        if entry.level == Some(Level::Debug) {
            self.saw_debug = true;
        }
        match *event {
            Event::PhaseTransition { from, to, cause } => {
                self.events.add(cause);
                if self.transitions.len() < MAX_KEPT {
                    self.transitions.push(Transition {
                        at: entry.timestamp,
                        offset_ms: None,
                        from: from.to_owned(),
                        to: to.to_owned(),
                        cause: cause.to_owned(),
                    });
                }
            }
            Event::EventProcessed { event } => self.events.add(event),
            Event::Reachable(reach) if self.reachable.len() < MAX_KEPT => {
                let (how, relay, addrs) = match reach {
                    Reach::Direct { addrs } => (
                        ReachKind::Direct,
                        None,
                        addrs
                            .map(|a| a.split_whitespace().map(str::to_owned).collect())
                            .unwrap_or_default(),
                    ),
                    Reach::BehindNat => (ReachKind::BehindNat, None, Vec::new()),
                    Reach::Relay { relay, addr } => (
                        ReachKind::Relay,
                        Some(relay.to_owned()),
                        addr.map(|a| vec![a.to_owned()]).unwrap_or_default(),
                    ),
                };
                self.reachable.push(Reachability {
                    at: entry.timestamp,
                    offset_ms: None,
                    run: self.runs.run(),
                    run_offset_ms: self.runs.since_start(entry.timestamp),
                    how,
                    relay,
                    addrs,
                });
            }
            Event::NatStatus { from, to } if self.nat.len() < MAX_KEPT => {
                self.nat.push(NatChange {
                    at: entry.timestamp,
                    from: from.to_owned(),
                    to: to.to_owned(),
                });
            }
            _ => {}
        }
    }

    fn finish(mut self) -> PhasesReport {
        for t in &mut self.transitions {
            t.offset_ms =
                t.at.zip(self.first)
                    .map(|(at, first)| ms_between(first, at));
        }
        for r in &mut self.reachable {
            r.offset_ms =
                r.at.zip(self.first)
                    .map(|(at, first)| ms_between(first, at));
        }
        let mut time_in_phase: Vec<PhaseTime> = Vec::new();
        let mut add =
            |phase: &str, ms: f64| match time_in_phase.iter_mut().find(|p| p.phase == phase) {
                Some(p) => p.ms += ms,
                None => time_in_phase.push(PhaseTime {
                    phase: phase.to_owned(),
                    ms,
                }),
            };
        let mut since = self.first;
        for t in &self.transitions {
            if let (Some(a), Some(b)) = (since, t.at) {
                add(&t.from, ms_between(a, b));
            }
            since = t.at;
        }
        if let (Some(last_phase), Some(a), Some(b)) = (self.transitions.last(), since, self.last) {
            add(&last_phase.to, ms_between(a, b));
        }
        let regressions = self
            .transitions
            .iter()
            .filter(|t| match (rank(&t.from), rank(&t.to)) {
                (Some(from), Some(to)) => to < from,
                _ => false,
            })
            .cloned()
            .collect();
        PhasesReport {
            transitions: self.transitions,
            time_in_phase,
            nat_changes: self.nat,
            reachable: self.reachable,
            events: self.events.top(20),
            regressions,
            every_event: self.saw_debug,
        }
    }
}

impl PhasesReport {
    /// `from -> to (cause)` lines for the summary.
    pub fn progression(&self) -> Vec<String> {
        self.transitions.iter().map(transition_line).collect()
    }
}

/// One line of the timeline: a phase change or a reachability moment.
enum Step<'a> {
    Phase(&'a Transition),
    Reach(&'a Reachability),
}

impl PhasesReport {
    /// Transitions and reachability moments in log order (by time; a line without one stays
    /// after the line before it).
    fn timeline(&self) -> Vec<Step<'_>> {
        let mut steps = Vec::with_capacity(self.transitions.len() + self.reachable.len());
        let (mut t, mut r) = (
            self.transitions.iter().peekable(),
            self.reachable.iter().peekable(),
        );
        loop {
            let reach_first = match (t.peek(), r.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(a), Some(b)) => matches!((a.at, b.at), (Some(x), Some(y)) if y < x),
            };
            if reach_first {
                steps.extend(r.next().map(Step::Reach));
            } else {
                steps.extend(t.next().map(Step::Phase));
            }
        }
        steps
    }
}

fn time_of(at: Option<Timestamp>) -> String {
    at.map_or_else(|| "?".to_owned(), |t| t.time_of_day())
}

fn transition_line(t: &Transition) -> String {
    format!("{} {} -> {} ({})", time_of(t.at), t.from, t.to, t.cause)
}

impl Render for PhasesReport {
    const CSV_HEADER: &'static [&'static str] = &["at", "offset_ms", "from", "to", "cause"];

    fn text(&self, meta: &Meta, out: &mut String, names: &Names) {
        heading(meta, out);
        if self.transitions.is_empty() && self.reachable.is_empty() {
            out.push_str("  no phase transitions logged\n");
        } else {
            out.push_str("  Transitions:\n");
            for step in self.timeline() {
                let (offset, line) = match step {
                    Step::Phase(t) => (t.offset_ms, transition_line(t)),
                    Step::Reach(r) => (
                        r.offset_ms,
                        format!("{} {}", time_of(r.at), r.describe(names)),
                    ),
                };
                let offset = offset.map_or_else(String::new, |ms| format!("+{}", human_ms(ms)));
                out.push_str(&format!("    {offset:>10}  {line}\n"));
            }
        }
        if !self.transitions.is_empty() {
            out.push_str("  Time in each phase:\n");
            for p in &self.time_in_phase {
                out.push_str(&format!("    {:<14} {}\n", p.phase, human_ms(p.ms)));
            }
        }
        if !self.nat_changes.is_empty() {
            out.push_str("  NAT status:\n");
            for n in &self.nat_changes {
                out.push_str(&format!(
                    "    {} {} -> {}\n",
                    n.at.map_or_else(|| "?".to_owned(), |t| t.time_of_day()),
                    n.from,
                    n.to
                ));
            }
        }
        if !self.events.is_empty() {
            out.push_str("  Machine events:\n");
            for e in &self.events {
                out.push_str(&format!("    {:>5}  {}\n", e.count, e.text));
            }
            if !self.every_event {
                out.push_str("    (only those that changed the phase: RUST_LOG=punchgate=debug logs every event)\n");
            }
        }
        if self.regressions.is_empty() {
            if !self.transitions.is_empty() {
                out.push_str("  No step back to an earlier phase.\n");
            }
        } else {
            out.push_str("  Steps back to an earlier phase:\n");
            for t in &self.regressions {
                out.push_str(&format!("    {}\n", transition_line(t)));
            }
        }
    }

    fn csv_rows(&self, _meta: &Meta, _names: &Names) -> Vec<Vec<String>> {
        let time = |at: Option<Timestamp>| at.map_or_else(String::new, |t| t.to_string());
        self.timeline()
            .into_iter()
            .map(|step| match step {
                Step::Phase(t) => vec![
                    time(t.at),
                    cell(t.offset_ms),
                    t.from.clone(),
                    t.to.clone(),
                    t.cause.clone(),
                ],
                Step::Reach(r) => {
                    let (to, cause) = match r.how {
                        ReachKind::Direct => ("reachable", format!("direct {}", r.addrs.join(" "))),
                        ReachKind::Relay => (
                            "reachable",
                            format!("relay {}", r.relay.as_deref().unwrap_or_default()),
                        ),
                        ReachKind::BehindNat => ("behind-nat", String::new()),
                    };
                    vec![
                        time(r.at),
                        cell(r.offset_ms),
                        String::new(),
                        to.to_owned(),
                        cause.trim_end().to_owned(),
                    ]
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::analyze_reader;

    #[test]
    fn transitions_time_in_phase_events_and_regressions() {
        let log = [
            r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","message":"local peer id","peer_id":"P"}"#,
            r#"{"timestamp":"2026-01-01T00:00:01Z","level":"INFO","message":"phase transition","event":"BootstrapConnected","from":"Initializing","to":"Discovering"}"#,
            r#"{"timestamp":"2026-01-01T00:00:02Z","level":"DEBUG","message":"event processed","event":"PeerIdentified"}"#,
            r#"{"timestamp":"2026-01-01T00:00:03Z","level":"INFO","message":"nat status changed","from":"Unknown","to":"Private"}"#,
            r#"{"timestamp":"2026-01-01T00:00:04Z","level":"INFO","message":"phase transition","event":"RelayReservationAccepted","from":"Discovering","to":"Participating"}"#,
            r#"{"timestamp":"2026-01-01T00:00:08Z","level":"INFO","message":"phase transition","event":"RelayReservationLost","from":"Participating","to":"Discovering"}"#,
            r#"{"timestamp":"2026-01-01T00:00:10Z","level":"INFO","message":"node stopped"}"#,
        ]
        .join("\n");
        let report = analyze_reader::<Phases>(log.as_bytes(), "t".into(), None)
            .expect("in memory")
            .report;
        assert_eq!(report.transitions.len(), 3);
        assert_eq!(report.transitions[1].offset_ms, Some(4000.0));
        let time: Vec<(&str, f64)> = report
            .time_in_phase
            .iter()
            .map(|p| (p.phase.as_str(), p.ms))
            .collect();
        assert_eq!(
            time,
            vec![
                ("Initializing", 1000.0),
                ("Discovering", 5000.0),
                ("Participating", 4000.0)
            ]
        );
        assert_eq!(report.regressions.len(), 1);
        assert_eq!(report.regressions[0].cause, "RelayReservationLost");
        assert_eq!(report.nat_changes[0].to, "Private");
        assert!(report.every_event);
        assert_eq!(report.events.len(), 4);
    }

    #[test]
    fn the_reachable_moments_join_the_timeline() {
        let log = [
            r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","message":"local peer id","peer_id":"P"}"#,
            r#"{"timestamp":"2026-01-01T00:00:01Z","level":"INFO","message":"phase transition","event":"BootstrapConnected","from":"Initializing","to":"Discovering"}"#,
            r#"{"timestamp":"2026-01-01T00:00:02Z","level":"INFO","message":"behind NAT: not reachable directly; reserving a relay slot so peers can reach this node"}"#,
            r#"{"timestamp":"2026-01-01T00:00:03Z","level":"INFO","message":"reachable through a relay: peers can reach this node at addr","relay":"R","addr":"/ip4/1.2.3.4/tcp/1/p2p/R/p2p-circuit/p2p/P"}"#,
            r#"{"timestamp":"2026-01-01T00:00:04Z","level":"INFO","message":"phase transition","event":"RelayReservationAccepted","from":"Discovering","to":"Participating"}"#,
        ]
        .join("\n");
        let r = analyze_reader::<Phases>(log.as_bytes(), "t".into(), None).expect("in memory");
        let report = &r.report;
        assert_eq!(report.reachable.len(), 2);
        let relay = &report.reachable[1];
        assert_eq!(relay.how, ReachKind::Relay);
        assert_eq!(
            (relay.offset_ms, relay.run, relay.run_offset_ms),
            (Some(3000.0), 1, Some(3000.0))
        );
        let mut text = String::new();
        report.text(&r.meta, &mut text, &Names::default());
        let timeline: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("Transitions:"))
            .skip(1)
            .take(4)
            .collect();
        assert!(
            timeline[0].contains("Initializing -> Discovering"),
            "{text}"
        );
        assert!(
            timeline[1].contains("+2.0 s") && timeline[1].contains("behind NAT"),
            "{text}"
        );
        assert!(timeline[2].contains("reachable through relay R"), "{text}");
        assert!(
            timeline[3].contains("Discovering -> Participating"),
            "{text}"
        );
        let csv = report.csv_rows(&r.meta, &Names::default());
        assert_eq!(csv.len(), 4);
        assert_eq!(csv[2][3..], ["reachable".to_owned(), "relay R".to_owned()]);
        assert_eq!(csv[1][3], "behind-nat");
    }
}
