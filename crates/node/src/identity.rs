//! The node's persistent Ed25519 identity.
//!
//! The key file holds libp2p's protobuf encoding of the keypair. A missing file is created with
//! mode 0600; a file that cannot be read or decoded is an error, never silently replaced, since
//! the peer id is how others find this node.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
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
    fn missing_parent_directory_is_a_create_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = load_or_create(&dir.path().join("no/such/dir/id.key")).expect_err("no parent");
        assert!(matches!(err, IdentityError::Create { .. }), "{err}");
    }
}
