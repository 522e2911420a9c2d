//! Reports from Punchgate's JSON logs (`--log-format json`): a summary per node, connections,
//! round-trip latency, tunnels and lifecycle phases. The library behind the
//! `punchgate-logs` program; see `docs/logs.md`.
//!
//! # Layout
//!
//! - [`input`]: where logs come from (files, folders, stdin) and reading them line by line,
//!   with long lines skipped.
//! - [`parse`]: one line to an [`parse::Entry`] (timestamp, level, message, fields).
//! - [`time`]: the log's timestamps, parsed and printed.
//! - [`event`]: what an entry means: the node's own messages and fields, typed.
//! - [`report`]: a collector and a report per subcommand, and [`report::analyze`], which
//!   runs one over a source.
//! - [`output`]: printing reports as text, JSON or CSV.
//! - [`error`]: what can go wrong (a bad line is not an error: it is skipped and counted).

pub mod error;
pub mod event;
pub mod input;
pub mod output;
pub mod parse;
pub mod report;
pub mod time;

use std::path::PathBuf;

pub use error::{InputError, ReportError};
pub use output::Format;

use report::{Collector, Render, analyze};

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// [`report::summary`].
    Summary,
    /// [`report::connections`].
    Connections,
    /// [`report::latency`].
    Latency,
    /// [`report::tunnels`].
    Tunnels,
    /// [`report::phases`].
    Phases,
}

impl ReportKind {
    /// The subcommand's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Summary => "summary",
            Self::Connections => "connections",
            Self::Latency => "latency",
            Self::Tunnels => "tunnels",
            Self::Phases => "phases",
        }
    }
}

/// Reads the logs `paths` name (stdin when none) and prints report `kind` on each in `format`.
pub fn run(kind: ReportKind, paths: &[PathBuf], format: Format) -> Result<String, ReportError> {
    let sources = input::sources(paths)?;
    match kind {
        ReportKind::Summary => build::<report::summary::Summary>(kind, &sources, format),
        ReportKind::Connections => {
            build::<report::connections::Connections>(kind, &sources, format)
        }
        ReportKind::Latency => build::<report::latency::Latency>(kind, &sources, format),
        ReportKind::Tunnels => build::<report::tunnels::Tunnels>(kind, &sources, format),
        ReportKind::Phases => build::<report::phases::Phases>(kind, &sources, format),
    }
}

fn build<C: Collector>(
    kind: ReportKind,
    sources: &[input::Source],
    format: Format,
) -> Result<String, ReportError>
where
    C::Report: Render,
{
    let reports = sources
        .iter()
        .map(analyze::<C>)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(output::render(kind.name(), &reports, format)?)
}
