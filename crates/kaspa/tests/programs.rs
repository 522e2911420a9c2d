//! The real `kaspa-p2p` programs on loopback: configured through the proof of concept's
//! environment variables, they complete the handshake and exit 0; a network mismatch or an
//! unreachable peer exits non-zero with a message. A server serves only the peers it allows
//! (`--allow`, `LIBP2P_ALLOW_PEERS`) and will not start without being told whom.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_kaspa-p2p");

struct Server {
    child: Child,
    peer_id: String,
    addr: String,
    dir: tempfile::TempDir,
}

impl Server {
    /// What the server logged so far, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client's identity, made before it runs so that a server can allow it.
struct Identity {
    key: std::path::PathBuf,
    peer_id: String,
    _dir: tempfile::TempDir,
}

/// A new identity, its peer id as `kaspa-p2p peer-id` prints it.
fn identity() -> Identity {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("client.key");
    let out = Command::new(BIN)
        .arg("peer-id")
        .env("KASPA_P2P_IDENTITY", &key)
        .output()
        .expect("run peer-id");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer_id = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    assert!(peer_id.starts_with("12D3KooW"), "{peer_id}");
    Identity {
        key,
        peer_id,
        _dir: dir,
    }
}

/// A server that serves `allowed` (given with `--allow`).
fn server(network: &str, allowed: &Identity) -> Server {
    server_with(network, &["--allow", &allowed.peer_id], &[])
}

fn server_with(network: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--once",
            "--no-mdns",
            "--no-upnp",
            "--network",
            network,
        ])
        .args(args)
        .envs(env.iter().copied())
        .env("LIBP2P_LISTEN_MULTIADDRS", "/ip4/127.0.0.1/tcp/0")
        .env("KASPA_P2P_IDENTITY", dir.path().join("server.key"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("server.log")).expect("server log"))
        .spawn()
        .expect("spawn server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let peer_id = lines
        .next()
        .expect("line")
        .expect("utf-8")
        .trim_start_matches("peer id: ")
        .to_owned();
    let addr = lines
        .next()
        .expect("line")
        .expect("utf-8")
        .trim_start_matches("listening on ")
        .to_owned();
    Server {
        child,
        peer_id,
        addr,
        dir,
    }
}

fn client(id: &Identity, server: &Server, network: &str, addrs: &str) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["client", "--no-mdns", "--no-upnp", "--network", network])
        .env("LIBP2P_LISTEN_MULTIADDRS", "/ip4/127.0.0.1/tcp/0")
        .env("LIBP2P_REMOTE_PEER_ID", &server.peer_id)
        .env("LIBP2P_REMOTE_MULTIADDRS", addrs)
        .env("KASPA_P2P_IDENTITY", &id.key)
        .output()
        .expect("run client");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn handshake_completes_and_both_exit_0() {
    let id = identity();
    let mut server = server("kaspa-mainnet", &id);
    // The first address is dead (nothing listens there): it is tried first, then the next.
    let dead = "/ip4/127.0.0.1/tcp/9";
    let (code, stderr) = client(
        &id,
        &server,
        "kaspa-mainnet",
        &format!("{dead};{}", server.addr),
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("dialing remote multiaddr"), "{stderr}");
    assert!(stderr.contains("accepted version message"), "{stderr}");
    assert!(stderr.contains("accepted verack message"), "{stderr}");
    assert!(stderr.contains("accepted ready message"), "{stderr}");
    assert!(stderr.contains("P2P handshake complete"), "{stderr}");
    let exit = wait_exit(&mut server.child, Duration::from_secs(10));
    assert_eq!(exit, Some(0), "server log:\n{}", server.log());
}

#[test]
fn another_network_fails_on_both_sides() {
    let id = identity();
    // Allowed through the environment, as the proof of concept configures everything.
    let mut server = server_with("kaspa-mainnet", &[], &[("LIBP2P_ALLOW_PEERS", &id.peer_id)]);
    let (code, stderr) = client(&id, &server, "kaspa-testnet-11", &server.addr.clone());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is on network"), "{stderr}");
    let exit = wait_exit(&mut server.child, Duration::from_secs(10));
    assert_eq!(exit, Some(1), "server log:\n{}", server.log());
}

#[test]
fn no_reachable_address_exits_1_with_a_message() {
    let id = identity();
    let server = server("kaspa-mainnet", &id);
    let (code, stderr) = client(&id, &server, "kaspa-mainnet", "/ip4/127.0.0.1/tcp/9");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no remote multiaddr worked"), "{stderr}");
    // Each attempt is named with why it failed.
    for attempt in 1..=3 {
        assert!(
            stderr.contains(&format!("/ip4/127.0.0.1/tcp/9 (attempt {attempt}): ")),
            "{stderr}"
        );
    }
}

#[test]
fn a_bad_variable_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["server", "--no-mdns", "--no-upnp", "--allow", "any"])
        .env("LIBP2P_LISTEN_MULTIADDRS", "0.0.0.0:4012")
        .env("KASPA_P2P_IDENTITY", dir.path().join("k"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("LIBP2P_LISTEN_MULTIADDRS: '0.0.0.0:4012' is not valid"),
        "{stderr}"
    );
}

#[test]
fn a_server_without_allow_exits_2_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("k");
    let out = Command::new(BIN)
        .args(["server", "--no-mdns", "--no-upnp"])
        .env_remove("LIBP2P_ALLOW_PEERS")
        .env("KASPA_P2P_IDENTITY", &key)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--allow PEER_ID"), "{stderr}");
    assert!(stderr.contains("--allow any"), "{stderr}");
    assert!(!key.exists(), "refused before anything started");
}

#[test]
fn a_bad_allow_value_exits_2_naming_the_flag_the_value_and_the_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["server", "--no-mdns", "--no-upnp", "--allow", "nobody"])
        .env("KASPA_P2P_IDENTITY", dir.path().join("k"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--allow"), "{stderr}");
    assert!(stderr.contains("'nobody'"), "{stderr}");
    assert!(stderr.contains("PEER_ID[,PEER_ID...]"), "{stderr}");
}

#[test]
fn a_client_not_on_the_list_is_refused_and_the_server_goes_on() {
    let (allowed, stranger) = (identity(), identity());
    let mut server = server("kaspa-mainnet", &allowed);
    let (code, stderr) = client(&stranger, &server, "kaspa-mainnet", &server.addr.clone());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("error:"), "{stderr}");
    assert!(!stderr.contains("P2P handshake complete"), "{stderr}");
    assert_eq!(
        server.child.try_wait().expect("wait"),
        None,
        "a refused caller is no handshake: the server keeps serving"
    );
    let (code, stderr) = client(&allowed, &server, "kaspa-mainnet", &server.addr.clone());
    assert_eq!(code, Some(0), "{stderr}");
    let exit = wait_exit(&mut server.child, Duration::from_secs(10));
    assert_eq!(exit, Some(0), "server log:\n{}", server.log());
    let log = server.log();
    assert!(log.contains("peer not allowed"), "{log}");
    assert!(log.contains(&stranger.peer_id), "{log}");
}
