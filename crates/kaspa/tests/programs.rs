//! The real `kaspa-p2p` programs on loopback: configured through the proof of concept's
//! environment variables, they complete the handshake and exit 0; a network mismatch or an
//! unreachable peer exits non-zero with a message.

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

fn server(network: &str) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .args(["server", "--once", "--no-mdns", "--network", network])
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

fn client(server: &Server, network: &str, addrs: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["client", "--no-mdns", "--network", network])
        .env("LIBP2P_LISTEN_MULTIADDRS", "/ip4/127.0.0.1/tcp/0")
        .env("LIBP2P_REMOTE_PEER_ID", &server.peer_id)
        .env("LIBP2P_REMOTE_MULTIADDRS", addrs)
        .env("KASPA_P2P_IDENTITY", dir.path().join("client.key"))
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
    let mut server = server("kaspa-mainnet");
    // The first address is dead (nothing listens there): it is tried first, then the next.
    let dead = "/ip4/127.0.0.1/tcp/9";
    let (code, stderr) = client(&server, "kaspa-mainnet", &format!("{dead};{}", server.addr));
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
    let mut server = server("kaspa-mainnet");
    let (code, stderr) = client(&server, "kaspa-testnet-11", &server.addr.clone());
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is on network"), "{stderr}");
    let exit = wait_exit(&mut server.child, Duration::from_secs(10));
    assert_eq!(exit, Some(1), "server log:\n{}", server.log());
}

#[test]
fn no_reachable_address_exits_1_with_a_message() {
    let server = server("kaspa-mainnet");
    let (code, stderr) = client(&server, "kaspa-mainnet", "/ip4/127.0.0.1/tcp/9");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no remote multiaddr worked"), "{stderr}");
}

#[test]
fn a_bad_variable_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["server", "--no-mdns"])
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
