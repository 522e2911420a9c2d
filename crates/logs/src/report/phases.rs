//! `phases`: the node's lifecycle as its state machine logged it. Every `phase transition`
//! line (INFO: `from`, `to`, and the machine `event` that caused it), the time spent in each
//! phase (from the first line to the first transition, between transitions, to the last
//! line), how often each machine event came (`event processed` lines are DEBUG: a log at
//! `RUST_LOG=punchgate=debug` has them all, an INFO log only the transitions), the NAT status
//! changes (`nat status changed`), and steps back (`Participating → Discovering`).

use serde::Serialize;

use super::{Collector, Counted, Meta, Names, Render, TopCounts, cell, heading, ms_between};
use crate::{
    event::Event,
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

fn transition_line(t: &Transition) -> String {
    format!(
        "{} {} -> {} ({})",
        t.at.map_or_else(|| "?".to_owned(), |t| t.time_of_day()),
        t.from,
        t.to,
        t.cause
    )
}

impl Render for PhasesReport {
    const CSV_HEADER: &'static [&'static str] = &["at", "offset_ms", "from", "to", "cause"];

    fn text(&self, meta: &Meta, out: &mut String, _names: &Names) {
        heading(meta, out);
        if self.transitions.is_empty() {
            out.push_str("  no phase transitions logged\n");
        } else {
            out.push_str("  Transitions:\n");
            for t in &self.transitions {
                let offset = t
                    .offset_ms
                    .map_or_else(String::new, |ms| format!("+{}", human_ms(ms)));
                out.push_str(&format!("    {:>10}  {}\n", offset, transition_line(t)));
            }
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
        self.transitions
            .iter()
            .map(|t| {
                vec![
                    t.at.map_or_else(String::new, |t| t.to_string()),
                    cell(t.offset_ms),
                    t.from.clone(),
                    t.to.clone(),
                    t.cause.clone(),
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
}
