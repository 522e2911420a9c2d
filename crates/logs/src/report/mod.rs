//! The reports. Each subcommand has a [`Collector`] that sees a log's entries one by one and
//! keeps only what its report needs, then [`Collector::finish`]es into a report that prints
//! itself as text or CSV ([`Render`]) and serialises as JSON. [`analyze`] drives one collector
//! over one source; the summary composes the other four collectors.

pub mod connections;
pub mod latency;
pub mod phases;
pub mod summary;
pub mod tunnels;

use std::{collections::BTreeMap, io::Read};

use serde::Serialize;

use crate::{
    error::InputError,
    event::Event,
    input::{self, Line, Source},
    parse::Entry,
    time::Timestamp,
};

/// Builds one report from a log's entries.
pub trait Collector: Default {
    /// What it builds.
    type Report: Serialize + Render;

    /// Takes in one entry (and what it means).
    fn observe(&mut self, entry: &Entry, event: &Event<'_>);

    /// The report, once every entry has been observed.
    fn finish(self) -> Self::Report;
}

/// How a report prints.
pub trait Render {
    /// The CSV columns after `source`.
    const CSV_HEADER: &'static [&'static str];

    /// Appends the report's text on one source (which `meta` describes).
    fn text(&self, meta: &Meta, out: &mut String, names: &Names);

    /// The CSV rows, each with [`Self::CSV_HEADER`]'s columns.
    fn csv_rows(&self, meta: &Meta, names: &Names) -> Vec<Vec<String>>;
}

/// The usual first lines of a source's text report: its name, peer, span and line counts.
pub fn heading(meta: &Meta, out: &mut String) {
    out.push_str(&format!("== {} ==\n", meta.source));
    let mut about = vec![format!(
        "peer {}",
        meta.peer_id
            .as_deref()
            .unwrap_or("unknown (no \"local peer id\" line)")
    )];
    if let (Some(first), Some(last), Some(span)) = (meta.first, meta.last, meta.span_ms()) {
        about.push(format!(
            "{} to {} ({})",
            first.time_of_day(),
            last.time_of_day(),
            crate::time::human_ms(span)
        ));
    }
    about.push(format!("{} events", meta.entries));
    if meta.runs > 1 {
        about.push(format!("{} runs (the node was restarted)", meta.runs));
    }
    if meta.skipped_lines > 0 {
        about.push(format!(
            "{} lines skipped (not JSON log events)",
            meta.skipped_lines
        ));
    }
    out.push_str(&format!("  {}\n", about.join(", ")));
}

/// What every report says about its source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Meta {
    /// The file (or `-` for stdin).
    pub source: String,
    /// The node's peer id, from its `local peer id` line.
    pub peer_id: Option<String>,
    /// The first timestamp.
    pub first: Option<Timestamp>,
    /// The last timestamp.
    pub last: Option<Timestamp>,
    /// Log events read.
    pub entries: u64,
    /// Lines skipped: not JSON, JSON but not a log event, or longer than 1 MiB.
    pub skipped_lines: u64,
    /// Runs of the node in this log (a log a restarted node appended to has several; see
    /// [`Runs`]).
    pub runs: u32,
    /// A short name for the peer (the file name without extension), for other reports.
    #[serde(skip)]
    pub label: Option<String>,
}

impl Meta {
    /// The time the log covers, in ms.
    pub fn span_ms(&self) -> Option<f64> {
        Some(ms_between(self.first?, self.last?))
    }
}

/// A report on one source.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport<R> {
    /// About the source.
    #[serde(flatten)]
    pub meta: Meta,
    /// The report.
    #[serde(flatten)]
    pub report: R,
}

/// Runs `C` over a source.
pub fn analyze<C: Collector>(source: &Source) -> Result<SourceReport<C::Report>, InputError> {
    let reader = source.open()?;
    analyze_reader::<C>(reader, source.name(), source.label())
}

/// Runs `C` over a reader: the lines of one log.
pub fn analyze_reader<C: Collector>(
    reader: impl Read,
    name: String,
    label: Option<String>,
) -> Result<SourceReport<C::Report>, InputError> {
    let mut collector = C::default();
    let mut runs = Runs::default();
    let mut meta = Meta {
        source: name,
        label,
        ..Meta::default()
    };
    let result = input::for_each_line(reader, |line| {
        let text = match line {
            Line::Text(text) => text,
            Line::TooLong => {
                meta.skipped_lines += 1;
                return;
            }
            Line::End => return,
        };
        if text.trim().is_empty() {
            return;
        }
        let Ok(entry) = Entry::parse(&text) else {
            meta.skipped_lines += 1;
            return;
        };
        meta.entries += 1;
        if let Some(t) = entry.timestamp {
            meta.first = Some(meta.first.map_or(t, |f| f.min(t)));
            meta.last = Some(meta.last.map_or(t, |l| l.max(t)));
        }
        let event = Event::of(&entry);
        if let Event::LocalPeerId { peer } = event {
            meta.peer_id.get_or_insert_with(|| peer.to_owned());
        }
        runs.observe(&entry, &event);
        collector.observe(&entry, &event);
    });
    meta.runs = runs.run();
    result.map_err(|source| InputError::Read {
        name: meta.source.clone(),
        source,
    })?;
    Ok(SourceReport {
        meta,
        report: collector.finish(),
    })
}

/// The node's runs in one log: a node restarted with its log appended to writes its start-up
/// lines again. A run starts at the log's first line, and again at the first start-up line
/// (`open-file limit`, `loaded identity`, `generated new identity`, `local peer id`) after a
/// run that already logged its `local peer id`. Reports time a run's events from its start
/// (the first line of that run).
#[derive(Debug, Clone, Copy, Default)]
pub struct Runs {
    run: u32,
    start: Option<Timestamp>,
    identified: bool,
}

impl Runs {
    /// Takes in one entry; call before the collector looks at it.
    pub fn observe(&mut self, entry: &Entry, event: &Event<'_>) {
        let peer_line = matches!(event, Event::LocalPeerId { .. });
        let startup = peer_line
            || matches!(
                entry.message.as_str(),
                "open-file limit" | "loaded identity" | "generated new identity"
            );
        if self.run == 0 || (startup && self.identified) {
            self.run += 1;
            self.start = entry.timestamp;
            self.identified = false;
        }
        if self.start.is_none() {
            self.start = entry.timestamp;
        }
        if peer_line {
            self.identified = true;
        }
    }

    /// The current run, from 1 (0 before the first line).
    pub fn run(&self) -> u32 {
        self.run
    }

    /// The current run's first timestamp.
    pub fn start(&self) -> Option<Timestamp> {
        self.start
    }

    /// Ms from the current run's start to `at`.
    pub fn since_start(&self, at: Option<Timestamp>) -> Option<f64> {
        Some(ms_between(self.start?, at?))
    }
}

/// Short names for peers in text output: a peer whose own log is among the sources goes by
/// that log's name (`relay`, `a`), with the end of its id; any other by a shortened id.
#[derive(Debug, Clone, Default)]
pub struct Names {
    labels: BTreeMap<String, String>,
}

impl Names {
    /// Names from the sources' peer ids and labels.
    pub fn from_metas<'a>(metas: impl IntoIterator<Item = &'a Meta>) -> Self {
        let mut labels = BTreeMap::new();
        for meta in metas {
            if let (Some(peer), Some(label)) = (&meta.peer_id, &meta.label) {
                labels.entry(peer.clone()).or_insert_with(|| label.clone());
            }
        }
        Self { labels }
    }

    /// The label of `peer`, if its log is among the sources.
    pub fn label(&self, peer: &str) -> Option<&str> {
        self.labels.get(peer).map(String::as_str)
    }

    /// Every known peer and its label.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// `relay (…a1b2c3)` for a known peer, `12D3KooW…a1b2c3` for another.
    pub fn show(&self, peer: &str) -> String {
        let tail = tail(peer, 6);
        match self.label(peer) {
            Some(label) => format!("{label} (…{tail})"),
            None if peer.chars().count() > 16 => {
                let head: String = peer.chars().take(8).collect();
                format!("{head}…{tail}")
            }
            None => peer.to_owned(),
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.char_indices().rev().nth(n - 1).map_or(0, |(i, _)| i);
    &s[start..]
}

/// Milliseconds from `a` to `b`.
pub fn ms_between(a: Timestamp, b: Timestamp) -> f64 {
    (b.micros() - a.micros()) as f64 / 1000.0
}

/// Count, min, mean and max of a set of values (durations, round trips).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stats {
    /// How many values.
    pub count: u64,
    /// The smallest.
    pub min: Option<f64>,
    /// The mean.
    pub mean: Option<f64>,
    /// The largest.
    pub max: Option<f64>,
    #[serde(skip)]
    sum: f64,
}

impl Stats {
    /// Adds a value.
    pub fn add(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = Some(self.min.map_or(v, |m| m.min(v)));
        self.max = Some(self.max.map_or(v, |m| m.max(v)));
        self.mean = Some(self.sum / self.count as f64);
    }
}

/// The `p`-th percentile (0–100) of `sorted` by nearest rank; `None` when empty.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Counts of distinct texts (warning messages, refusal reasons), at most `cap` distinct ones:
/// later newcomers are counted together, so a log full of unique messages stays small.
#[derive(Debug, Clone, Default)]
pub struct TopCounts {
    counts: BTreeMap<String, u64>,
    others: u64,
}

/// How many distinct texts [`TopCounts`] keeps.
const TOP_CAP: usize = 200;

impl TopCounts {
    /// Counts `text`.
    pub fn add(&mut self, text: &str) {
        if let Some(n) = self.counts.get_mut(text) {
            *n += 1;
        } else if self.counts.len() < TOP_CAP {
            self.counts.insert(text.to_owned(), 1);
        } else {
            self.others += 1;
        }
    }

    /// The `n` most frequent, most frequent first (ties by text).
    pub fn top(&self, n: usize) -> Vec<Counted> {
        let mut all: Vec<Counted> = self
            .counts
            .iter()
            .map(|(text, &count)| Counted {
                text: text.clone(),
                count,
            })
            .collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.text.cmp(&b.text)));
        all.truncate(n);
        if self.others > 0 && all.len() < n {
            all.push(Counted {
                text: "(other messages)".to_owned(),
                count: self.others,
            });
        }
        all
    }
}

/// A text and how often it occurred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Counted {
    /// The text.
    pub text: String,
    /// How often.
    pub count: u64,
}

/// A long text cut for a text report (JSON and CSV keep it whole): at most 160 characters.
pub fn shorten(text: &str) -> String {
    const MAX: usize = 160;
    if text.chars().count() <= MAX {
        return text.to_owned();
    }
    let cut: String = text.chars().take(MAX - 1).collect();
    format!("{cut}…")
}

/// Formats an optional number with `digits` decimals, or `-`.
pub fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// A number for a CSV cell: empty when absent.
pub fn cell(v: Option<f64>) -> String {
    v.map_or_else(String::new, |v| format!("{v:.3}"))
}

/// A byte count for people: `1.2 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.0));
        assert_eq!(percentile(&v, 90.0), Some(9.0));
        assert_eq!(percentile(&v, 100.0), Some(10.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
    }

    #[test]
    fn stats_track_min_mean_max() {
        let mut s = Stats::default();
        for v in [3.0, 1.0, 2.0] {
            s.add(v);
        }
        assert_eq!(
            (s.count, s.min, s.mean, s.max),
            (3, Some(1.0), Some(2.0), Some(3.0))
        );
    }

    #[test]
    fn top_counts_stay_bounded() {
        let mut t = TopCounts::default();
        for i in 0..(TOP_CAP + 50) {
            t.add(&format!("message {i}"));
        }
        t.add("message 0");
        let top = t.top(TOP_CAP + 1);
        assert_eq!(
            top[0],
            Counted {
                text: "message 0".into(),
                count: 2
            }
        );
        assert_eq!(top.last().map(|c| c.count), Some(50));
    }

    #[test]
    fn names_prefer_a_label_and_shorten_ids() {
        let id = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo";
        let meta = Meta {
            peer_id: Some(id.into()),
            label: Some("relay".into()),
            ..Meta::default()
        };
        let names = Names::from_metas([&meta]);
        assert_eq!(names.show(id), "relay (…CVe2Xo)");
        assert_eq!(Names::default().show(id), "12D3KooW…CVe2Xo");
        assert_eq!(Names::default().show("short"), "short");
    }

    #[test]
    fn runs_start_again_at_a_restart() {
        let lines = [
            r#"{"timestamp":"2026-01-01T00:00:00Z","message":"open-file limit","limit":1024}"#,
            r#"{"timestamp":"2026-01-01T00:00:00.1Z","message":"loaded identity","peer_id":"P"}"#,
            r#"{"timestamp":"2026-01-01T00:00:00.2Z","message":"local peer id","peer_id":"P"}"#,
            r#"{"timestamp":"2026-01-01T00:00:01Z","message":"node stopped"}"#,
            r#"{"timestamp":"2026-01-01T00:00:05Z","message":"loaded identity","peer_id":"P"}"#,
            r#"{"timestamp":"2026-01-01T00:00:05.1Z","message":"local peer id","peer_id":"P"}"#,
            r#"{"timestamp":"2026-01-01T00:00:06Z","message":"ping","peer":"R","rtt_ms":1}"#,
        ];
        let mut runs = Runs::default();
        let seen: Vec<(u32, Option<f64>)> = lines
            .iter()
            .map(|line| {
                let entry = Entry::parse(line).expect("an event");
                runs.observe(&entry, &Event::of(&entry));
                (runs.run(), runs.since_start(entry.timestamp))
            })
            .collect();
        assert_eq!(
            seen,
            [
                (1, Some(0.0)),
                (1, Some(100.0)),
                (1, Some(200.0)),
                (1, Some(1000.0)),
                (2, Some(0.0)),
                (2, Some(100.0)),
                (2, Some(1000.0)),
            ]
        );
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(10 << 20), "10.0 MiB");
    }
}
