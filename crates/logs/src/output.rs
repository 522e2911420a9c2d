//! Printing reports: readable text (the default), JSON (`--json`, one document for all
//! sources) or CSV (`--csv`, one header and a row per item, each prefixed by its source).

use serde::Serialize;

use crate::report::{Names, Render, SourceReport};

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// For people.
    #[default]
    Text,
    /// One JSON document.
    Json,
    /// Comma-separated values with a header.
    Csv,
}

/// The JSON document: which report, the sources' reports, and the peers whose own logs were
/// among the sources (id → file name), to tell remote peers apart.
#[derive(Serialize)]
struct Document<'a, R> {
    report: &'a str,
    sources: &'a [SourceReport<R>],
    peers: &'a std::collections::BTreeMap<String, String>,
}

/// Prints `reports` (of the report called `name`) in `format`.
pub fn render<R: Render + Serialize>(
    name: &str,
    reports: &[SourceReport<R>],
    format: Format,
) -> Result<String, serde_json::Error> {
    let names = Names::from_metas(reports.iter().map(|r| &r.meta));
    let mut out = String::new();
    match format {
        Format::Text => {
            for (i, r) in reports.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                r.report.text(&r.meta, &mut out, &names);
            }
        }
        Format::Json => {
            out = serde_json::to_string_pretty(&Document {
                report: name,
                sources: reports,
                peers: names.labels(),
            })?;
            out.push('\n');
        }
        Format::Csv => {
            let header = std::iter::once("source").chain(R::CSV_HEADER.iter().copied());
            push_row(&mut out, header);
            for r in reports {
                for row in r.report.csv_rows(&r.meta, &names) {
                    let cells = std::iter::once(r.meta.source.as_str())
                        .chain(row.iter().map(String::as_str));
                    push_row(&mut out, cells);
                }
            }
        }
    }
    Ok(out)
}

fn push_row<'a>(out: &mut String, cells: impl Iterator<Item = &'a str>) {
    for (i, cell) in cells.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&csv_escape(cell));
    }
    out.push('\n');
}

/// A CSV cell: quoted (quotes doubled) when it holds a comma, a quote or a line break.
pub fn csv_escape(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\"")).into()
    } else {
        cell.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_only_when_needed() {
        assert_eq!(csv_escape("plain"), "plain");
        assert_eq!(csv_escape("a,b"), "\"a,b\"");
        assert_eq!(csv_escape("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
