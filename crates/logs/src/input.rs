//! Where logs come from: files, folders (every `*.log` and `*.json` file inside, in name order)
//! and stdin; and reading them line by line without holding more than one line in memory, with
//! lines longer than [`MAX_LINE`] skipped rather than buffered.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use crate::error::InputError;

/// The longest line kept, in bytes. A log event is a few hundred bytes; a longer line is
/// garbage or a runaway value, and is skipped (and counted) without being held in memory.
pub const MAX_LINE: usize = 1 << 20;

/// One log to read: a file, or stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file, named by its path.
    File(PathBuf),
    /// Standard input.
    Stdin,
}

impl Source {
    /// The name reports use: the file's path as given (or found in a folder), or `-`.
    pub fn name(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Stdin => "-".to_owned(),
        }
    }

    /// A short label for the peer that wrote this log: the file name without its extension
    /// (the lab names logs after peers: `relay.log`, `a.log`).
    pub fn label(&self) -> Option<String> {
        match self {
            Self::File(path) => path.file_stem().map(|s| s.to_string_lossy().into_owned()),
            Self::Stdin => None,
        }
    }

    /// Opens the source for reading.
    pub fn open(&self) -> Result<Box<dyn BufRead>, InputError> {
        match self {
            Self::File(path) => File::open(path)
                .map(|f| Box::new(BufReader::new(f)) as Box<dyn BufRead>)
                .map_err(|source| InputError::Open {
                    path: path.clone(),
                    source,
                }),
            Self::Stdin => Ok(Box::new(BufReader::new(io::stdin()))),
        }
    }
}

/// The sources `paths` name: no path or `-` is stdin, a folder is its `*.log` and `*.json`
/// files (not recursively, sorted by name), anything else a file. A path that does not
/// exist, or a folder without a log, is an error naming it.
pub fn sources(paths: &[PathBuf]) -> Result<Vec<Source>, InputError> {
    if paths.is_empty() {
        return Ok(vec![Source::Stdin]);
    }
    let mut sources = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            sources.push(Source::Stdin);
            continue;
        }
        let meta = std::fs::metadata(path).map_err(|source| InputError::Open {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let found = logs_in(path)?;
            if found.is_empty() {
                return Err(InputError::NoLogs { path: path.clone() });
            }
            sources.extend(found.into_iter().map(Source::File));
        } else {
            sources.push(Source::File(path.clone()));
        }
    }
    Ok(sources)
}

/// The `*.log` and `*.json` files directly in `dir`, sorted.
fn logs_in(dir: &Path) -> Result<Vec<PathBuf>, InputError> {
    let read_dir = |source| InputError::ReadDir {
        path: dir.to_owned(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        let is_log = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("log") || e.eq_ignore_ascii_case("json"));
        if is_log && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// One line read by [`read_line`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line (without its line break) of at most [`MAX_LINE`] bytes, invalid UTF-8 replaced.
    Text(String),
    /// A line longer than [`MAX_LINE`]: read past, not kept.
    TooLong,
    /// The end of the input.
    End,
}

/// Reads the next line of `reader` into `buf` (cleared first), keeping at most `max` bytes of
/// it. Returns [`Line::TooLong`] for a longer line, after consuming all of it.
pub fn read_line<R: BufRead + ?Sized>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        read_any = true;
        let (part, done) = match chunk.iter().position(|&c| c == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        if !too_long {
            if buf.len() + part.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
        }
        let used = part.len() + usize::from(done);
        reader.consume(used);
        if done {
            break;
        }
    }
    if !read_any {
        return Ok(Line::End);
    }
    if too_long {
        return Ok(Line::TooLong);
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Line::Text(String::from_utf8_lossy(buf).into_owned()))
}

/// Reads all of `reader` as lines, calling `each` for every one.
pub fn for_each_line<R: Read>(reader: R, mut each: impl FnMut(Line)) -> io::Result<()> {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        match read_line(&mut reader, &mut buf, MAX_LINE)? {
            Line::End => return Ok(()),
            line => each(line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = io::Cursor::new(input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            match read_line(&mut reader, &mut buf, max).expect("in memory") {
                Line::End => return out,
                line => out.push(line),
            }
        }
    }

    #[test]
    fn splits_lines_and_drops_line_breaks() {
        assert_eq!(
            lines(b"one\r\ntwo\n\nthree", 100),
            vec![
                Line::Text("one".into()),
                Line::Text("two".into()),
                Line::Text(String::new()),
                Line::Text("three".into()),
            ]
        );
    }

    #[test]
    fn skips_a_line_over_the_cap_without_losing_the_next() {
        let long = "x".repeat(50);
        let input = format!("short\n{long}\nafter\n");
        assert_eq!(
            lines(input.as_bytes(), 10),
            vec![
                Line::Text("short".into()),
                Line::TooLong,
                Line::Text("after".into())
            ]
        );
    }

    #[test]
    fn a_line_across_buffer_refills_is_whole() {
        let long = "y".repeat(20_000);
        let input = format!("{long}\nz\n");
        let mut reader = BufReader::with_capacity(64, input.as_bytes());
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut buf, MAX_LINE).expect("in memory"),
            Line::Text(long)
        );
        assert_eq!(
            read_line(&mut reader, &mut buf, MAX_LINE).expect("in memory"),
            Line::Text("z".into())
        );
        assert_eq!(
            read_line(&mut reader, &mut buf, MAX_LINE).expect("in memory"),
            Line::End
        );
    }

    #[test]
    fn folders_give_their_logs_in_order_and_missing_paths_are_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        for name in ["b.log", "a.json", "notes.txt"] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        let found = sources(&[dir.path().to_owned()]).expect("a folder with logs");
        assert_eq!(
            found,
            vec![
                Source::File(dir.path().join("a.json")),
                Source::File(dir.path().join("b.log")),
            ]
        );
        let missing = dir.path().join("missing.log");
        let error = sources(std::slice::from_ref(&missing)).expect_err("missing");
        assert!(
            error.to_string().contains(&missing.display().to_string()),
            "{error}"
        );
        let empty = tempfile::tempdir().expect("temp dir");
        assert!(matches!(
            sources(&[empty.path().to_owned()]),
            Err(InputError::NoLogs { .. })
        ));
        assert_eq!(sources(&[]).expect("stdin"), vec![Source::Stdin]);
    }
}
