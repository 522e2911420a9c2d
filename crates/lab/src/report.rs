//! Repeated runs of the matrix → one row per cell: successes, direct connections, time to
//! direct (median, p95) in milliseconds and in round trips. Printed as Markdown, saved as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    cell::{CellResult, PathTaken, Transport},
    topology::Scenario,
};

/// One row: every run of one (scenario, transport).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Where A and B sat.
    pub scenario: Scenario,
    /// The transport.
    pub transport: Transport,
    /// The outcome the matrix expects.
    pub expected: PathTaken,
    /// Runs attempted.
    pub runs: usize,
    /// Runs whose tunnel echoed every byte both times.
    pub success: usize,
    /// Runs that met the expectation (bytes and path).
    pub met: usize,
    /// Runs that ended with a direct A–B connection.
    pub direct: usize,
    /// How the direct connections came about, with counts (e.g. "hole punch 19, dial 1").
    pub via: String,
    /// Median first-dial → direct time, ms.
    pub median_ms: Option<f64>,
    /// 95th percentile first-dial → direct time, ms.
    pub p95_ms: Option<f64>,
    /// Median relayed → direct time, ms (runs that went through the relay first).
    pub median_relayed_to_direct_ms: Option<f64>,
    /// Median first-dial → direct time, in round trips.
    pub median_round_trips: Option<f64>,
    /// Median dial attempts.
    pub median_attempts: Option<f64>,
    /// Probes of the birthday punches that went direct (easy side's count), one per run.
    pub birthday_probes: Vec<u64>,
    /// Errors of runs that could not finish.
    pub errors: Vec<String>,
}

/// Builds rows, in matrix order, from results (and errors) of repeated runs.
pub fn rows(results: &[(Scenario, Transport, Result<CellResult, String>)]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for (scenario, transport, result) in results {
        let row = match rows
            .iter_mut()
            .find(|r| r.scenario == *scenario && r.transport == *transport)
        {
            Some(row) => row,
            None => {
                rows.push(Row {
                    scenario: *scenario,
                    transport: *transport,
                    expected: if scenario.expect_direct(*transport) {
                        PathTaken::Direct
                    } else {
                        PathTaken::Relayed
                    },
                    runs: 0,
                    success: 0,
                    met: 0,
                    direct: 0,
                    via: String::new(),
                    median_ms: None,
                    p95_ms: None,
                    median_relayed_to_direct_ms: None,
                    median_round_trips: None,
                    median_attempts: None,
                    birthday_probes: Vec::new(),
                    errors: Vec::new(),
                });
                rows.last_mut().expect("just pushed")
            }
        };
        row.runs += 1;
        match result {
            Ok(r) => {
                row.success += usize::from(r.bytes_verified > 0);
                row.met += usize::from(r.met());
                row.direct += usize::from(r.direct);
            }
            Err(e) => row.errors.push(e.clone()),
        }
    }
    for row in &mut rows {
        let ok: Vec<&CellResult> = results
            .iter()
            .filter(|(s, t, _)| *s == row.scenario && *t == row.transport)
            .filter_map(|(_, _, r)| r.as_ref().ok())
            .collect();
        let mut via: Vec<(String, usize)> = Vec::new();
        for v in ok.iter().filter_map(|r| r.direct_via) {
            match via.iter_mut().find(|(name, _)| *name == v.to_string()) {
                Some((_, n)) => *n += 1,
                None => via.push((v.to_string(), 1)),
            }
        }
        row.via = via
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let times: Vec<f64> = ok
            .iter()
            .filter_map(|r| r.time_to_direct_ms)
            .map(|v| v as f64)
            .collect();
        row.median_ms = percentile(&times, 50.0);
        row.p95_ms = percentile(&times, 95.0);
        let relayed: Vec<f64> = ok
            .iter()
            .filter_map(|r| r.relayed_to_direct_ms)
            .map(|v| v as f64)
            .collect();
        row.median_relayed_to_direct_ms = percentile(&relayed, 50.0);
        let rounds: Vec<f64> = ok.iter().filter_map(|r| r.round_trips()).collect();
        row.median_round_trips = percentile(&rounds, 50.0);
        let attempts: Vec<f64> = ok
            .iter()
            .filter_map(|r| r.attempts)
            .map(f64::from)
            .collect();
        row.median_attempts = percentile(&attempts, 50.0);
        row.birthday_probes = ok.iter().filter_map(|r| r.birthday_probes).collect();
    }
    rows
}

/// Nearest-rank percentile; `None` for no samples.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| A's NAT × B's NAT | transport | expected | met | tunnel ok | direct | via | median to direct (ms) | p95 (ms) | median relayed→direct (ms) | median round trips | attempts |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let cell =
        |v: Option<f64>, digits: usize| v.map_or("–".to_owned(), |v| format!("{v:.digits$}"));
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}/{} | {}/{} | {}/{} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.transport,
            r.expected,
            r.met,
            r.runs,
            r.success,
            r.runs,
            r.direct,
            r.runs,
            if r.via.is_empty() { "–" } else { &r.via },
            cell(r.median_ms, 0),
            cell(r.p95_ms, 0),
            cell(r.median_relayed_to_direct_ms, 0),
            cell(r.median_round_trips, 1),
            cell(r.median_attempts, 0),
        );
    }
    let punched: Vec<&Row> = rows
        .iter()
        .filter(|r| !r.birthday_probes.is_empty())
        .collect();
    if !punched.is_empty() {
        out.push_str(
            "\nBirthday punches that went direct: probes the easy side sent before one got through.\n\n\
             | A's NAT × B's NAT | transport | punches | median probes | p95 probes | most probes |\n\
             | --- | --- | --- | --- | --- | --- |\n",
        );
        for r in punched {
            let probes: Vec<f64> = r.birthday_probes.iter().map(|p| *p as f64).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.transport,
                probes.len(),
                cell(percentile(&probes, 50.0), 0),
                cell(percentile(&probes, 95.0), 0),
                cell(percentile(&probes, 100.0), 0),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(10.0));
        assert_eq!(percentile(&v, 95.0), Some(19.0));
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
