//! Can this machine run the NAT lab? Checked before anything is built, so a missing piece is
//! one line that names it and the fix, not an error from inside a router's namespace.
//!
//! The lab's routers run `nft` (NAT rules), `iptables` (the NFQUEUE delay), `conntrack`
//! (patchbay flushes NAT mappings with it) and `ip` (links and routes), found on `PATH`; and
//! building namespaces needs root or unprivileged user namespaces.

use std::{ffi::OsStr, path::Path};

/// A tool the lab runs: (command, Debian package, what the lab uses it for).
pub const TOOLS: &[(&str, &str, &str)] = &[
    ("nft", "nftables", "NAT rules on the routers"),
    ("iptables", "iptables", "the NFQUEUE delay on the routers"),
    ("conntrack", "conntrack", "flushing NAT mappings"),
    ("ip", "iproute2", "links and routes"),
    (
        "miniupnpd",
        "miniupnpd-nftables",
        "UPnP port mapping on the routers of the port-mapping cells",
    ),
];

/// What keeps the lab from running here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PreflightError {
    /// Tools the routers run are not on `PATH`.
    #[error(
        "the NAT lab needs {} on PATH: install {} with `sudo apt-get install -y {}` (scripts/test and scripts/demo install it for you)",
        .missing.iter().map(|(tool, package)| format!("`{tool}` ({package})")).collect::<Vec<_>>().join(", "),
        if .missing.len() == 1 { "it" } else { "them" },
        .missing.iter().map(|(_, package)| package.as_str()).collect::<Vec<_>>().join(" ")
    )]
    MissingTools {
        /// (command, package) of each missing tool.
        missing: Vec<(String, String)>,
    },
    /// Not root, and unprivileged user namespaces are off.
    #[error(
        "the NAT lab needs root or unprivileged user namespaces: {why}; run it as root (sudo), or {fix}"
    )]
    NoNamespaces {
        /// What is off.
        why: String,
        /// The setting that turns it on.
        fix: String,
    },
}

/// For the lab's test binaries, from a `#[ctor]` (before `main`, while the process has one
/// thread: patchbay needs that to unshare the user namespace that lets it build network
/// namespaces without root): the preflight, then that namespace. A machine that cannot run the
/// lab gets the preflight's one line and exit code 1.
pub fn enter_lab_for_tests() {
    if let Err(error) = check() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
    if let Err(error) = patchbay::init_userns() {
        eprintln!("error: cannot enter a user namespace for the lab: {error:#}");
        std::process::exit(1);
    }
}

/// Checks the tools on this process's `PATH` and the right to build namespaces.
pub fn check() -> Result<(), PreflightError> {
    check_tools(std::env::var_os("PATH").as_deref())?;
    check_namespaces()
}

/// Checks that every tool in [`TOOLS`] is an executable file in a directory of `path`.
pub fn check_tools(path: Option<&OsStr>) -> Result<(), PreflightError> {
    let dirs: Vec<std::path::PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    let missing: Vec<(String, String)> = TOOLS
        .iter()
        .filter(|(tool, _, _)| !dirs.iter().any(|dir| is_executable(&dir.join(tool))))
        .map(|(tool, package, _)| ((*tool).to_owned(), (*package).to_owned()))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PreflightError::MissingTools { missing })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Root may build namespaces; anyone else needs unprivileged user namespaces.
fn check_namespaces() -> Result<(), PreflightError> {
    if effective_uid() == Some(0) {
        return Ok(());
    }
    let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    let off = |why: &str, fix: &str| {
        Err(PreflightError::NoNamespaces {
            why: why.to_owned(),
            fix: fix.to_owned(),
        })
    };
    if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return off(
            "kernel.unprivileged_userns_clone is 0",
            "`sudo sysctl -w kernel.unprivileged_userns_clone=1`",
        );
    }
    if read("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return off(
            "user.max_user_namespaces is 0",
            "`sudo sysctl -w user.max_user_namespaces=15000`",
        );
    }
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
        return off(
            "AppArmor restricts unprivileged user namespaces",
            "`sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`",
        );
    }
    Ok(())
}

/// The effective user id, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_missing_tool_is_named_with_its_package_and_the_command() {
        let empty = tempfile_dir();
        let err = check_tools(Some(empty.as_os_str())).expect_err("nothing there");
        let message = err.to_string();
        for (tool, package, _) in TOOLS {
            assert!(
                message.contains(&format!("`{tool}` ({package})")),
                "{message}"
            );
        }
        assert!(
            message.contains("sudo apt-get install -y nftables iptables conntrack iproute2"),
            "{message}"
        );
    }

    #[test]
    fn tools_present_pass_and_a_non_executable_file_does_not_count() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile_dir();
        for (tool, _, _) in TOOLS {
            let path = dir.join(tool);
            std::fs::write(&path, "#!/bin/sh\n").expect("write");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        assert_eq!(check_tools(Some(dir.as_os_str())), Ok(()));
        std::fs::set_permissions(dir.join("nft"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let err = check_tools(Some(dir.as_os_str())).expect_err("nft not executable");
        assert_eq!(
            err,
            PreflightError::MissingTools {
                missing: vec![("nft".into(), "nftables".into())]
            }
        );
        assert!(err.to_string().contains("install it with"), "{err}");
    }

    /// A fresh empty directory under the target dir's temp area.
    fn tempfile_dir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "punchgate-preflight-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create");
        dir
    }
}
