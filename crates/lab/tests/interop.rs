//! Stock rust-libp2p programs and Punchgate nodes in the NAT lab: rust-libp2p's DCUtR example
//! dials a Punchgate node behind another NAT through rust-libp2p's relay server example, and
//! the two punch a direct connection. Nothing on the stock side is Punchgate's: Noise only over
//! TCP, libp2p's default relay limits, no AutoNAT server (so the node's NAT status stays
//! unknown, and it reserves a slot on the relay after its discovery timeout).

use std::{path::PathBuf, time::Duration};

use punchgate_lab::{
    nat::NatKind::Moderate,
    peer::{Peer, field, matches},
    topology::{self, Scenario},
};

// Before `main`: the lab's preflight and patchbay's user namespace (see the function).
#[allow(unsafe_code)]
#[ctor::ctor(unsafe)]
fn enter_user_namespace() {
    punchgate_lab::preflight::enter_lab_for_tests();
}

fn bin() -> PathBuf {
    env!("CARGO_BIN_EXE_punchgate-lab").into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_dcutr_peer_and_a_node_punch_a_direct_connection_through_a_stock_relay() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nat-stock-dcutr");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("log dir");
    let net = topology::build(
        Scenario::Pair {
            a: Moderate,
            b: Moderate,
        },
        Some(Duration::from_millis(10)),
    )
    .await
    .expect("network");
    let relay_ip = net.relay_ip().expect("relay ip");
    let relay = Peer::start_program(
        &net.relay,
        &bin(),
        &["stock", "relay"],
        Vec::new(),
        "relay",
        &dir,
        vec![
            "--port".into(),
            "4021".into(),
            "--external-ip".into(),
            relay_ip.to_string(),
        ],
    )
    .await
    .expect("stock relay");
    let relay_addr = format!("/ip4/{relay_ip}/tcp/4021/p2p/{}", relay.peer_id);

    // B: a Punchgate node behind NAT that knows only the stock relay.
    let b = Peer::start(
        &net.b,
        &bin(),
        "peer-b",
        &dir,
        vec![
            "--listen".into(),
            "/ip4/0.0.0.0/tcp/0".into(),
            "--bootstrap".into(),
            relay_addr.clone(),
            "--no-mdns".into(),
            "--autonat-private-ips".into(),
            "--discovery-timeout".into(),
            "3s".into(),
        ],
    )
    .await
    .expect("peer B");
    let dir_hint = format!("logs in {}", dir.display());
    b.wait_for_message(
        Duration::from_secs(30),
        "NAT status still unknown and no peer has dialled us: acting as private, reserving a relay slot on the first relay known",
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("B never took itself for private: {e}; {dir_hint}"));
    b.wait_for_message(Duration::from_secs(30), "relay reservation accepted", &[])
        .await
        .unwrap_or_else(|e| panic!("B holds no reservation on the stock relay: {e}; {dir_hint}"));

    // A: rust-libp2p's DCUtR example, dialling B through the relay.
    let a = Peer::start_program(
        &net.a,
        &bin(),
        &["stock", "dcutr"],
        Vec::new(),
        "peer-a",
        &dir,
        vec![
            "--mode".into(),
            "dial".into(),
            "--relay".into(),
            relay_addr.clone(),
            "--remote".into(),
            b.peer_id.clone(),
        ],
    )
    .await
    .expect("stock DCUtR peer A");

    let direct = a
        .wait_for_message(
            Duration::from_secs(30),
            "connection established",
            &[("peer", &b.peer_id), ("path", "direct")],
        )
        .await
        .unwrap_or_else(|e| panic!("no direct connection from the stock peer: {e}; {dir_hint}"));
    let relayed = a
        .events()
        .into_iter()
        .find(|e| {
            matches(
                e,
                "connection established",
                &[("peer", &b.peer_id), ("path", "relayed")],
            )
        })
        .expect("the relayed connection came first");
    assert!(
        field(&relayed, "timestamp") <= field(&direct, "timestamp"),
        "{dir_hint}"
    );
    b.wait_for_message(
        Duration::from_secs(10),
        "direct connection established",
        &[("peer", &a.peer_id)],
    )
    .await
    .unwrap_or_else(|e| panic!("B saw no direct connection to A: {e}; {dir_hint}"));
    drop((a, b, relay));
}
