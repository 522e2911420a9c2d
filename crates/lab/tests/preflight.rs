//! The lab's preflight, through the real binary: with a PATH that lacks the routers' tools,
//! `punchgate-lab demo` stops at once with one line naming them and the command that installs
//! them, before it builds anything.

use std::process::Command;

#[test]
fn a_path_without_nft_gets_one_line_naming_it_and_the_fix() {
    let empty = std::env::temp_dir().join(format!("punchgate-no-tools-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("create");
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_punchgate-lab"))
        .args(["demo", "--logs"])
        .arg(empty.join("logs"))
        .env("PATH", &empty)
        .output()
        .expect("run punchgate-lab");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("`nft` (nftables)"), "{stderr}");
    assert!(
        stderr.contains("sudo apt-get install -y nftables"),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/test"), "{stderr}");
    assert!(
        !empty.join("logs").exists(),
        "nothing is built before the preflight passes"
    );
    assert!(started.elapsed().as_secs() < 10, "fails fast");
    let _ = std::fs::remove_dir_all(&empty);
}
