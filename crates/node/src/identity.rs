//! The node's persistent Ed25519 identity.
//!
//! The key file holds libp2p's protobuf encoding of the keypair. A missing file is created with
//! mode 0600; a file that cannot be read or decoded is an error, never silently replaced, since
//! the peer id is how others find this node.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use libp2p::identity::Keypair;

/// Whether the identity was read from disk or just created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from an existing file.
    Loaded,
    /// Generated and written to a new file.
    Created,
}

/// Loading or creating the identity failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The file exists but cannot be read.
    #[error("cannot read identity file {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file does not hold a libp2p keypair.
    #[error(
        "identity file {path} is not a libp2p keypair ({len} bytes, {reason}); \
         it was left untouched: restore it, or move it away to create a new identity \
         (and a new peer id)"
    )]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// Its size.
        len: usize,
        /// What the decoder said.
        reason: String,
    },
    /// A new file could not be written.
    #[error("cannot create identity file {path}: {source}")]
    Create {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Where a node keeps its identity unless told otherwise (`--identity`, `PUNCHGATE_IDENTITY`):
/// `identity.key` in
/// - `$STATE_DIRECTORY` (systemd's `StateDirectory=`; the first, if it names several);
/// - else `$XDG_DATA_HOME/punchgate` (if absolute, as the XDG spec asks);
/// - else `$HOME/.local/share/punchgate`;
/// - else the current directory (a process with no home; the start-up line shows the path).
///
/// Never the current directory while there is a better place: a node started from another
/// directory would silently become another peer, and every allow list naming it would break.
pub fn default_path() -> PathBuf {
    default_path_from(|name| std::env::var_os(name))
}

fn default_path_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    let dir = if let Some(state) = set("STATE_DIRECTORY") {
        std::env::split_paths(&state).next().unwrap_or_default()
    } else if let Some(data) = set("XDG_DATA_HOME").filter(|d| Path::new(d).is_absolute()) {
        PathBuf::from(data).join("punchgate")
    } else if let Some(home) = set("HOME") {
        PathBuf::from(home).join(".local/share/punchgate")
    } else {
        PathBuf::new()
    };
    dir.join("identity.key")
}

/// Loads the keypair at `path`, or creates one there (mode 0600) if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<(Keypair, Origin), IdentityError> {
    match fs::read(path) {
        Ok(bytes) => decode(path, &bytes).map(|k| (k, Origin::Loaded)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create(path),
        Err(source) => Err(IdentityError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Keypair, IdentityError> {
    let keypair = Keypair::from_protobuf_encoding(bytes).map_err(|e| IdentityError::Corrupt {
        path: path.to_owned(),
        len: bytes.len(),
        reason: e.to_string(),
    })?;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "identity file is readable by other users; run chmod 600 on it"
            );
        }
    }
    Ok(keypair)
}

fn create(path: &Path) -> Result<(Keypair, Origin), IdentityError> {
    let keypair = Keypair::generate_ed25519();
    let encoded = keypair
        .to_protobuf_encoding()
        .expect("ed25519 keys always encode");
    let create_err = |source| IdentityError::Create {
        path: path.to_owned(),
        source,
    };
    // The directory too (mode 0700), for the default path in a fresh data directory.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(create_err)?;
    }
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(file) => file,
        // Another process created it between our read and our create: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let bytes = fs::read(path).map_err(|source| IdentityError::Read {
                path: path.to_owned(),
                source,
            })?;
            return decode(path, &bytes).map(|k| (k, Origin::Loaded));
        }
        Err(e) => return Err(create_err(e)),
    };
    file.write_all(&encoded).map_err(create_err)?;
    file.sync_all().map_err(create_err)?;
    Ok((keypair, Origin::Created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_path_is_a_data_directory_never_the_working_directory_if_avoidable() {
        fn env<'a>(
            vars: &'a [(&'a str, &'a str)],
        ) -> impl Fn(&str) -> Option<std::ffi::OsString> + 'a {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        }
        let all = [
            ("STATE_DIRECTORY", "/var/lib/punchgate:/var/lib/other"),
            ("XDG_DATA_HOME", "/home/u/.data"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            default_path_from(env(&all)),
            PathBuf::from("/var/lib/punchgate/identity.key")
        );
        assert_eq!(
            default_path_from(env(&all[1..])),
            PathBuf::from("/home/u/.data/punchgate/identity.key")
        );
        assert_eq!(
            default_path_from(env(&[("XDG_DATA_HOME", ""), ("HOME", "/home/u")])),
            PathBuf::from("/home/u/.local/share/punchgate/identity.key")
        );
        assert_eq!(default_path_from(env(&[])), PathBuf::from("identity.key"));
        assert_eq!(
            default_path_from(env(&[("XDG_DATA_HOME", "data"), ("HOME", "/home/u")])),
            PathBuf::from("/home/u/.local/share/punchgate/identity.key"),
            "a relative XDG_DATA_HOME is ignored"
        );
    }

    #[test]
    fn a_missing_directory_is_created_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data/punchgate/identity.key");
        load_or_create(&path).expect("create");
        let mode = fs::metadata(path.parent().expect("parent"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn creates_with_mode_0600_then_loads_the_same_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("id.key");
        let (created, origin) = load_or_create(&path).expect("create");
        assert_eq!(origin, Origin::Created);
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (loaded, origin) = load_or_create(&path).expect("load");
        assert_eq!(origin, Origin::Loaded);
        assert_eq!(created.public(), loaded.public());
    }

    #[test]
    fn corrupt_file_is_an_error_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("id.key");
        fs::write(&path, b"not a key").expect("write");
        let err = load_or_create(&path).expect_err("corrupt");
        assert!(
            matches!(err, IdentityError::Corrupt { len: 9, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("id.key"), "{err}");
        assert_eq!(fs::read(&path).expect("read"), b"not a key");
    }

    #[test]
    fn unreadable_path_is_a_read_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be: reading it fails with something other than
        // NotFound, which must not be mistaken for "create a new identity".
        let err = load_or_create(dir.path()).expect_err("directory");
        assert!(matches!(err, IdentityError::Read { .. }), "{err}");
    }

    #[test]
    fn a_parent_that_cannot_be_made_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A file where the directory would go.
        fs::write(dir.path().join("no"), b"").expect("file");
        let err = load_or_create(&dir.path().join("no/dir/id.key")).expect_err("no parent");
        assert!(err.to_string().contains("no/dir/id.key"), "{err}");
    }
}
