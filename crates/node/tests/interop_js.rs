//! A stock js-libp2p peer (js-libp2p 2 with its default TCP stack: TCP, Noise, yamux, identify
//! and ping; `tests/js/peer.mjs`) against a Punchgate node on loopback, both ways. Needs Node.js
//! (20 or later) and npm; the js-libp2p packages are installed from the npm registry into the
//! test's scratch directory, at the versions `tests/js/package-lock.json` pins.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use common::*;
use libp2p::{Multiaddr, PeerId};
use punchgate::Node;
use tokio::{io::AsyncBufReadExt as _, process::Command};

/// The js peer's files, with its packages installed: once per lock file, and once per test
/// process (the tests run in parallel; two `npm ci` in one directory trip over each other).
fn js_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(install).clone()
}

fn install() -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("js-interop");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    for file in ["package.json", "package-lock.json", "peer.mjs"] {
        std::fs::copy(source.join(file), dir.join(file)).expect("copy the js peer");
    }
    // The lock file an install finished with, written only once it did.
    let lock = std::fs::read(source.join("package-lock.json")).expect("package-lock.json");
    let stamp = dir.join("installed.lock");
    if std::fs::read(&stamp).ok().as_deref() != Some(&lock[..]) {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .unwrap_or_else(|e| {
                panic!("cannot run npm ({e}): the js-libp2p tests need Node.js 20+ and npm")
            });
        assert!(status.success(), "npm ci failed in {}", dir.display());
        std::fs::write(&stamp, &lock).expect("install stamp");
    }
    dir
}

/// What the js peer printed last: `{"rtt":..,"agent":"punchgate/..","peer":".."}`.
#[derive(Debug, serde::Deserialize)]
struct Outcome {
    agent: String,
    peer: String,
}

/// Runs `node peer.mjs <args>`; `on_listen` gets the address a listening peer prints. Returns
/// the outcome the peer printed, or panics with its stderr.
async fn js_peer(args: &[&str], on_listen: impl AsyncFnOnce(Multiaddr)) -> Outcome {
    let mut child = Command::new("node")
        .arg("peer.mjs")
        .args(args)
        .current_dir(js_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node: the js-libp2p tests need Node.js 20+");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut on_listen = Some(on_listen);
    let mut outcome = None;
    let read = async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(addr) = line.strip_prefix("listening on ") {
                if let Some(f) = on_listen.take() {
                    f(addr.parse().expect("multiaddr")).await;
                }
            } else if let Ok(o) = serde_json::from_str::<Outcome>(&line) {
                outcome = Some(o);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the js peer finished within 60 s");
    let output = child.wait_with_output().await.expect("wait");
    match outcome {
        Some(outcome) if output.status.success() => outcome,
        _ => panic!(
            "the js peer failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_js_libp2p_peer_connects_pings_and_identifies_a_node() {
    let node = Node::start(config(&[TCP])).await.expect("start");
    let addr = bootstrap(&node, "tcp").addr.to_string();
    let outcome = js_peer(&["dial", &addr], async |_| {}).await;
    assert!(outcome.agent.starts_with("punchgate/"), "{outcome:?}");
    assert_eq!(outcome.peer, node.peer_id().to_string());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reaches_a_stock_js_libp2p_peer() {
    let node = Node::start(config(&[TCP])).await.expect("start");
    let handle = node.handle();
    let outcome = js_peer(&["listen"], async |addr: Multiaddr| {
        let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
            panic!("no peer id in {addr}");
        };
        let peer: PeerId = peer;
        handle
            .dial_addr(peer, addr)
            .await
            .expect("the node reaches the js peer (TLS refused, then Noise)");
    })
    .await;
    assert_eq!(outcome.peer, node.peer_id().to_string());
    node.shutdown().await;
}
