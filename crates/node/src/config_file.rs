//! The config file (`--config PATH`, env `PUNCHGATE_CONFIG`): TOML whose keys are the flags'
//! long names, so any flag's value moves into the file unchanged.
//!
//! ```toml
//! listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
//! expose = ["ssh=127.0.0.1:22"]
//! allow = ["ssh=12D3KooW..."]
//! no-mdns = true
//! max-tunnels = 500
//! ```
//!
//! - A repeatable flag takes a string or an array of strings; a switch (`no-mdns`) takes a
//!   boolean; every other flag takes a string, or an integer where the flag is a number.
//! - Flags (and their environment variables) override the file: a flag given on the command
//!   line replaces the file's value for that key, lists included.
//! - Each value is checked by the flag's own parser. An unknown key, a value of the wrong type or
//!   a value the flag refuses is an error that names the file, the line, the key, the value and
//!   the form the flag expects.
//!
//! Modelled on rathole's handling: the file is read once, checked whole before anything starts,
//! and `--check-config` checks it without starting (exit 0 when good, 2 when not).

use std::{ffi::OsString, path::PathBuf};

use clap::{ArgAction, CommandFactory as _, FromArgMatches as _, parser::ValueSource};
use toml::de::{DeTable, DeValue};

use crate::cli::Cli;

/// Flags that make no sense in a file: they pick the file, or do something else than run.
const NOT_IN_FILE: &[&str] = &["config", "check-config", "print-peer-id", "help", "version"];

/// The config file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's words (with the line and column).
        message: String,
    },
    /// A key or its value is wrong.
    #[error("{path} line {line}: {key}: {problem}")]
    Key {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: usize,
        /// The key as written.
        key: String,
        /// What is wrong, and what is expected.
        problem: String,
    },
}

/// Parses the command line, and the config file it names (if any) underneath it.
pub fn parse<I, T>(args: I) -> Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let command = Cli::command();
    let matches = command
        .clone()
        .try_get_matches_from(&args)
        .map_err(ParseError::Flags)?;
    let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
        return Cli::from_arg_matches(&matches).map_err(ParseError::Flags);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigFileError::Read {
        path: path.clone(),
        source,
    })?;
    let from_file = file_args(&path, &text, &|id| {
        matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    })?;
    // The file's flags first, the command line's after: clap sees one command line.
    let mut merged = Vec::with_capacity(args.len() + from_file.len());
    merged.extend(args.first().cloned());
    merged.extend(from_file);
    merged.extend(args.into_iter().skip(1));
    let matches = command
        .try_get_matches_from(merged)
        .map_err(ParseError::Flags)?;
    Cli::from_arg_matches(&matches).map_err(ParseError::Flags)
}

/// Parsing the command line and the config file failed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A flag is wrong (clap's error, with its usage and exit code).
    #[error(transparent)]
    Flags(clap::Error),
    /// The config file is wrong.
    #[error(transparent)]
    File(#[from] ConfigFileError),
}

/// The flags the file's keys stand for, each checked by the flag's own parser, skipping keys
/// whose flag `given(id)` says the command line already set.
fn file_args(
    path: &std::path::Path,
    text: &str,
    given: &dyn Fn(&str) -> bool,
) -> Result<Vec<OsString>, ConfigFileError> {
    let table = DeTable::parse(text).map_err(|e| ConfigFileError::Syntax {
        path: path.to_owned(),
        message: e.to_string().trim().replace('\n', " "),
    })?;
    let command = Cli::command();
    let mut out = Vec::new();
    let mut keys: Vec<_> = table.get_ref().iter().collect();
    // In the order written, so errors come in the order a reader meets them.
    keys.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in keys {
        let name = key.get_ref().as_ref();
        let line = text[..key.span().start].matches('\n').count() + 1;
        let error = |problem: String| ConfigFileError::Key {
            path: path.to_owned(),
            line,
            key: name.to_owned(),
            problem,
        };
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name))
            .filter(|_| !NOT_IN_FILE.contains(&name))
            .ok_or_else(|| {
                error(
                    "unknown key (keys are the flags' long names without the dashes, such as listen, expose, allow, no-mdns; see punchgate --help)"
                        .to_owned(),
                )
            })?;
        let id = arg.get_id().as_str().to_owned();
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        let values: Vec<String> = match value.get_ref() {
            DeValue::Boolean(on) if switch => {
                if *on && !given(&id) {
                    out.push(OsString::from(format!("--{name}")));
                }
                continue;
            }
            _ if switch => return Err(error("expected true or false".into())),
            DeValue::String(s) => vec![s.to_string()],
            DeValue::Integer(i) => {
                vec![integer(i).ok_or_else(|| error("integer out of range".into()))?]
            }
            DeValue::Array(items) if repeatable => items
                .iter()
                .map(|item| match item.get_ref() {
                    DeValue::String(s) => Ok(s.to_string()),
                    DeValue::Integer(i) => {
                        integer(i).ok_or_else(|| error("integer out of range".into()))
                    }
                    _ => Err(error("expected an array of strings".into())),
                })
                .collect::<Result<_, _>>()?,
            DeValue::Array(_) => {
                return Err(error(
                    "takes one value, not an array (only repeatable flags take arrays)".to_owned(),
                ));
            }
            _ => {
                return Err(error(format!(
                    "expected a string{}",
                    if repeatable {
                        " or an array of strings"
                    } else {
                        ""
                    }
                )));
            }
        };
        // The flag's own parser decides, with its own words.
        for value in &values {
            // `--name=value`: a value that starts with '-' stays a value.
            let one = [
                OsString::from("punchgate"),
                format!("--{name}={value}").into(),
            ];
            if let Err(e) = Cli::command().try_get_matches_from(one) {
                return Err(error(clap_problem(&e)));
            }
        }
        if given(&id) {
            continue;
        }
        for value in values {
            out.push(format!("--{name}={value}").into());
        }
    }
    Ok(out)
}

fn integer(i: &toml::de::DeInteger<'_>) -> Option<String> {
    let digits = i.as_str().replace('_', "");
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0o"))
        .or_else(|| digits.strip_prefix("0b"))
        .unwrap_or(&digits);
    i64::from_str_radix(digits, i.radix())
        .ok()
        .map(|n| n.to_string())
}

/// clap's message for one flag, without its "error: " and usage lines.
fn clap_problem(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_file(text: &str, args: &[&str]) -> Result<Cli, ParseError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("punchgate.toml");
        std::fs::write(&path, text).expect("write");
        let mut all = vec![
            "punchgate".to_owned(),
            "--config".into(),
            path.display().to_string(),
        ];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        parse(all)
    }

    fn file_error(text: &str) -> String {
        match parse_file(text, &[]) {
            Err(ParseError::File(e)) => e.to_string(),
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn keys_are_the_flags_and_flags_override_the_file() {
        let cli = parse_file(
            r#"
listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
expose = "echo=127.0.0.1:7"
allow = ["echo=any"]
no-mdns = true
autonat-private-ips = false
max-tunnels = 500
relay-circuit-bytes = "2GiB"
"#,
            &["--max-tunnels", "7", "--listen", "/ip4/127.0.0.1/tcp/0"],
        )
        .expect("valid");
        assert!(cli.no_mdns);
        assert!(!cli.autonat_private_ips);
        assert_eq!(cli.expose.len(), 1);
        assert_eq!(cli.allow.len(), 1);
        assert_eq!(cli.relay_circuit_bytes, 2 << 30);
        assert_eq!(cli.max_tunnels, 7, "the flag wins");
        assert_eq!(
            cli.listen,
            vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
            "a flag given on the command line replaces the file's list"
        );
    }

    #[test]
    fn errors_name_the_line_the_key_the_value_and_the_form() {
        let e = file_error("no-mdns = true\nlisen = [\"/ip4/0.0.0.0/tcp/1\"]\n");
        assert!(
            e.contains("line 2") && e.contains("lisen") && e.contains("unknown key"),
            "{e}"
        );
        let e = file_error("\n\nexpose = [\"ssh:22\"]\n");
        assert!(
            e.contains("line 3") && e.contains("ssh:22") && e.contains("NAME=HOST:PORT"),
            "{e}"
        );
        let e = file_error("max-tunnels = \"many\"\n");
        assert!(e.contains("line 1") && e.contains("many"), "{e}");
        let e = file_error("no-mdns = \"yes\"\n");
        assert!(e.contains("expected true or false"), "{e}");
        let e = file_error("relay = [\"any\"]\n");
        assert!(e.contains("not an array"), "{e}");
        let e = file_error("config = \"other.toml\"\n");
        assert!(e.contains("unknown key"), "{e}");
        let e = file_error("relay-max-circuits = -1\n");
        assert!(
            e.contains("line 1") && e.contains("-1") && e.contains("invalid value"),
            "{e}"
        );
        let e = file_error("listen = [\n");
        assert!(e.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn the_example_config_in_the_repository_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/punchgate.toml");
        let cli = parse(["punchgate", "--config", path]).expect("the example parses");
        crate::access::Access::new(&cli.services(), &cli.allow).expect("its rules are complete");
        assert!(!cli.expose.is_empty() && !cli.tunnel.is_empty());
        assert!(!cli.expose_udp.is_empty() && !cli.tunnel_udp.is_empty());
    }
}
