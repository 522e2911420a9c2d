//! The real binary: bad flags and a corrupt key file fail fast with a message that says what was
//! wrong; a good configuration starts and stops cleanly on SIGTERM.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_punchgate");

fn run(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(args)
        .env("PUNCHGATE_IDENTITY", dir.path().join("id.key"))
        .output()
        .expect("run punchgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_flags_exit_2_naming_flag_value_and_form() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--expose", "ssh:22"],
            &["--expose", "ssh:22", "NAME=HOST:PORT"],
        ),
        (
            &["--tunnel", "peer@2222"],
            &["--tunnel", "peer@2222", "PEER_ID:SERVICE@BIND"],
        ),
        (
            &["--expose-udp", "wg=51820"],
            &["--expose-udp", "wg=51820", "NAME=HOST:PORT"],
        ),
        (
            &["--tunnel-udp", "peer:wg"],
            &["--tunnel-udp", "peer:wg", "PEER_ID:SERVICE@BIND", "no '@'"],
        ),
        (
            &["--udp-idle-timeout", "0s"],
            &["--udp-idle-timeout", "'0s' is zero"],
        ),
        (
            &["--bootstrap", "/ip4/1.2.3.4/tcp/1"],
            &["--bootstrap", "/p2p/<PEER_ID>"],
        ),
        (
            &["--nat-status", "open"],
            &["--nat-status", "open", "private"],
        ),
        (&["--listen", "0.0.0.0:4001"], &["--listen", "0.0.0.0:4001"]),
    ];
    for (args, wanted) in cases {
        let (code, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        for w in *wanted {
            assert!(stderr.contains(w), "{args:?}: '{w}' not in {stderr}");
        }
    }
}

#[test]
fn corrupt_identity_file_is_an_error_and_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("id.key");
    std::fs::write(&key, b"\x00\x01garbage").expect("write");
    let out = Command::new(BIN)
        .args([
            "--identity",
            key.to_str().expect("utf-8"),
            "--no-mdns",
            "--no-upnp",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a libp2p keypair"), "{stderr}");
    assert!(stderr.contains("id.key"), "{stderr}");
    assert_eq!(std::fs::read(&key).expect("read"), b"\x00\x01garbage");
}

#[test]
fn a_port_in_use_is_reported_with_the_tunnel_it_belongs_to() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
    let (code, stderr) = run(&[
        "--no-mdns",
        "--no-upnp",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--tunnel",
        &format!("{peer}:ssh@127.0.0.1:{port}"),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot bind tunnel port 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(stderr.contains("'ssh'"), "{stderr}");
}

#[test]
fn starts_prints_its_addresses_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .args([
            "--no-mdns",
            "--no-upnp",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--listen",
            "/ip4/127.0.0.1/udp/0/quic-v1",
        ])
        .env("PUNCHGATE_IDENTITY", dir.path().join("id.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    assert!(first.starts_with("peer id: 12D3KooW"), "{first}");
    let peer = first.trim_start_matches("peer id: ").to_owned();
    let identity = lines.next().expect("a line").expect("utf-8");
    assert_eq!(
        identity,
        format!("identity: {}", dir.path().join("id.key").display())
    );
    // The two listeners come up concurrently: their lines arrive in either order.
    let mut listening: Vec<String> = (0..2)
        .map(|_| lines.next().expect("a line").expect("utf-8"))
        .collect();
    listening.sort_by_key(|line| line.contains("/quic-v1/"));
    let (tcp, quic) = (&listening[0], &listening[1]);
    assert!(
        tcp.starts_with("listening on /ip4/127.0.0.1/tcp/") && tcp.ends_with(&peer),
        "{tcp}"
    );
    assert!(quic.contains("/quic-v1/p2p/"), "{quic}");
    // The identity was created with mode 0600.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("id.key"))
            .expect("key file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    terminate_and_expect_0(&mut child);
}

/// Sends SIGTERM to `child` and waits (10 s at most) for exit code 0.
fn terminate_and_expect_0(child: &mut std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_exposed_service_without_an_allow_rule_exits_2_naming_allow() {
    let (code, stderr) = run(&["--no-mdns", "--no-upnp", "--expose", "ssh=127.0.0.1:22"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("'ssh'"), "{stderr}");
    assert!(stderr.contains("--allow ssh="), "{stderr}");
    assert!(stderr.contains("--allow ssh=any"), "{stderr}");
}

#[test]
fn a_udp_service_needs_its_own_name_and_its_own_rule() {
    let (code, stderr) = run(&[
        "--no-mdns",
        "--no-upnp",
        "--expose-udp",
        "wg=127.0.0.1:51820",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--allow wg="), "{stderr}");
    let (code, stderr) = run(&[
        "--no-mdns",
        "--no-upnp",
        "--expose",
        "dns=127.0.0.1:53",
        "--expose-udp",
        "dns=127.0.0.1:53",
        "--allow",
        "dns=any",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("'dns' is exposed twice"), "{stderr}");
    assert!(stderr.contains("dns-udp"), "{stderr}");
}

#[test]
fn an_allow_rule_for_a_service_that_is_not_exposed_exits_2() {
    let peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
    let (code, stderr) = run(&[
        "--no-mdns",
        "--no-upnp",
        "--expose",
        "ssh=127.0.0.1:22",
        "--allow",
        &format!("ssh={peer}"),
        "--allow",
        "shh=any",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("'shh'"), "{stderr}");
    assert!(stderr.contains("exposed: ssh"), "{stderr}");
    // A malformed rule is a malformed flag.
    let (code, stderr) = run(&["--allow", "ssh=nobody"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--allow"), "{stderr}");
    assert!(stderr.contains("SERVICE=PEER_ID"), "{stderr}");
    let (code, stderr) = run(&["--relay", "everyone"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("trusted"), "{stderr}");
}

#[test]
fn print_peer_id_prints_the_id_the_node_then_runs_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("id.key");
    let out = Command::new(BIN)
        .args([
            "--identity",
            key.to_str().expect("utf-8"),
            "--print-peer-id",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(printed.starts_with("12D3KooW"), "{printed}");
    assert!(key.exists(), "the key is created");

    let mut child = Command::new(BIN)
        .args([
            "--identity",
            key.to_str().expect("utf-8"),
            "--no-mdns",
            "--no-upnp",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let first = BufReader::new(stdout)
        .lines()
        .next()
        .expect("a line")
        .expect("utf-8");
    assert_eq!(first, format!("peer id: {printed}"));
    child.kill().expect("kill");
    child.wait().expect("wait");
}

/// `--config FILE --check-config` on the real binary: the repository's example is valid (exit
/// 0); a file with a bad value exits 2 with a line naming the file, the line, the key and the
/// form the flag expects.
#[test]
fn check_config_accepts_the_example_and_refuses_a_bad_file_naming_the_line() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/punchgate.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let good = Command::new(BIN)
        .args(["--config", example, "--check-config"])
        .env("PUNCHGATE_IDENTITY", dir.path().join("id.key"))
        .output()
        .expect("run");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(String::from_utf8_lossy(&good.stdout).contains("configuration is valid"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "no-mdns = true\nexpose = [\"ssh:22\"]\n").expect("write");
    let out = Command::new(BIN)
        .args(["--config", bad.to_str().expect("utf-8"), "--check-config"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml line 2: expose:") && stderr.contains("NAME=HOST:PORT"),
        "{stderr}"
    );
}

/// SIGHUP on the real binary: the `--config` file is read again and its services and
/// `--allow` rules apply (seen on `/status`); a file with an error is reported in the log and
/// changes nothing; the node keeps running and stops cleanly on SIGTERM.
#[test]
fn sighup_reloads_the_config_file_and_a_bad_file_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("punchgate.toml");
    let a = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    let base = "no-mdns = true\nno-upnp = true\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nmetrics = \"127.0.0.1:0\"\n";
    let one = format!("{base}expose = [\"echo=127.0.0.1:7\"]\nallow = [\"echo={a}\"]\n");
    std::fs::write(&file, &one).expect("write config");
    let mut child = Command::new(BIN)
        .args([
            "--config",
            file.to_str().expect("utf-8"),
            "--log-format",
            "json",
        ])
        .env("PUNCHGATE_IDENTITY", dir.path().join("id.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (log_tx, log) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = log_tx.send(line);
        }
    });
    let wait_log = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match log.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with '{what}' within 20 s"),
            }
        }
    };
    let stdout = child.stdout.take().expect("stdout");
    let metrics = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("metrics on http://")
                .and_then(|rest| rest.split('/').next())
                .map(|addr| {
                    addr.parse::<std::net::SocketAddr>()
                        .expect("metrics address")
                })
        })
        .expect("the metrics address on stdout");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let services = |runtime: &tokio::runtime::Runtime| -> Vec<String> {
        let (_, _, json) = runtime.block_on(common::http::get(metrics, "/status"));
        let status: serde_json::Value = serde_json::from_str(&json).expect("JSON");
        status["services"]
            .as_array()
            .expect("services")
            .iter()
            .map(|s| {
                format!(
                    "{}:{}",
                    s["name"].as_str().unwrap_or(""),
                    s["allow"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    assert_eq!(services(&runtime), vec![format!("echo:{a}")]);
    let hup = |pid: u32| {
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };

    // A second service.
    let two = format!("{one}expose = [\"echo=127.0.0.1:7\", \"web=127.0.0.1:80\"]\nallow = [\"echo={a}\", \"web=any\"]\n")
        .replacen(&format!("expose = [\"echo=127.0.0.1:7\"]\nallow = [\"echo={a}\"]\n"), "", 1);
    std::fs::write(&file, two).expect("write config");
    hup(child.id());
    wait_log("configuration reloaded");
    assert_eq!(
        services(&runtime),
        vec![format!("echo:{a}"), "web:any".to_owned()]
    );

    // A bad file: reported, nothing changes, the node keeps serving.
    std::fs::write(&file, format!("{base}expose = [\"web=127.0.0.1:80\"]\n")).expect("write");
    hup(child.id());
    let line = wait_log("reload failed");
    assert!(
        line.contains("allow"),
        "the error says what is missing: {line}"
    );
    assert_eq!(
        services(&runtime).len(),
        2,
        "the configuration in use is unchanged"
    );

    terminate_and_expect_0(&mut child);
}
