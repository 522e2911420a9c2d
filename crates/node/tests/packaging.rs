//! The systemd unit in packaging/: `systemd-analyze verify` accepts it with this build's binary
//! in its ExecStart, and its sandbox rates "OK" or better in `systemd-analyze security`.
//! (scripts/test installs systemd's tools where they are missing.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_punchgate");
const UNIT: &str = include_str!("../../../packaging/punchgate.service");

#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("punchgate.service");
    std::fs::write(
        &unit,
        UNIT.replace(
            "ExecStart=/usr/local/bin/punchgate",
            &format!("ExecStart={BIN}"),
        ),
    )
    .expect("write");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd) is installed");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let report = String::from_utf8_lossy(&security.stdout);
    let level = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for punchgate.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no exposure level: {report}"));
    let score: f64 = level
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{level}"));
    assert!(score <= 2.0, "exposure {level}: {report}");
}
