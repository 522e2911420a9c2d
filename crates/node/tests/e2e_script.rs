//! Runs `scripts/e2e_tunnel_test.sh` against the binary cargo just built, so the script is
//! exercised by `cargo test` and cannot rot.

#[test]
fn e2e_tunnel_script_passes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/e2e_tunnel_test.sh"))
        .env("PUNCHGATE_BIN", env!("CARGO_BIN_EXE_punchgate"))
        .current_dir(&root)
        .output()
        .expect("run the e2e script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("PASS: client -> A"), "{stdout}");
    assert!(stdout.contains("echoed 1048576 bytes intact"), "{stdout}");
}
