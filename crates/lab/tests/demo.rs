//! The README's first command, `scripts/demo`, is `punchgate-lab demo`: run it as the README
//! does (its defaults: Moderate × Moderate, TCP, 20 ms) and check what it says a user will see,
//! the TCP echoes, the UDP datagrams and the verdict, and that it exits 0.

use std::process::Command;

#[test]
fn the_demo_shows_both_tunnels_and_meets_its_expectation() {
    let logs = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo");
    let out = Command::new(env!("CARGO_BIN_EXE_punchgate-lab"))
        .args(["demo", "--logs"])
        .arg(&logs)
        .output()
        .expect("run punchgate-lab demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    for line in [
        "Sent 1 MiB through A's tunnel: echoed intact",
        "Sent datagrams of 1, 1420, 9000, 65507 bytes through A's UDP tunnel",
        "each echoed whole",
        "Expected direct: met.",
    ] {
        assert!(stdout.contains(line), "'{line}' not in:\n{stdout}");
    }
}
