//! Reading a node's `/metrics` exposition.

use std::collections::HashMap;

/// One sample of the exposition: name, labels, value.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus/OpenMetrics text format: `# HELP`/`# TYPE`/`# UNIT` lines, samples
/// `name{label="value",...} number`, and the closing `# EOF`. Panics on anything else, so a
/// malformed exposition fails the test.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut eof = false;
    for line in text.lines() {
        assert!(!eof, "a line after # EOF: {line}");
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap_or_default();
            assert!(
                ["HELP", "TYPE", "UNIT"].contains(&kind),
                "unexpected comment: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample: series and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = HashMap::new();
                for pair in split_labels(rest) {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .expect("quoted label value");
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), HashMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name}"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    assert!(eof, "the exposition ends with # EOF");
    samples
}

/// Splits `a="x",b="y,z"` at the commas between labels (not those inside quotes).
fn split_labels(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        parts.push(&s[start..]);
    }
    parts
}

/// The value of the sample `name` whose labels include `labels`, summed over the rest.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}
