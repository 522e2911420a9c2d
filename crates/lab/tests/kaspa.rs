//! Kaspa's P2P handshake between two private peers behind two NATs, with a public relay: the
//! proof of concept's run, in the lab, asserted. The programs are configured with the proof of
//! concept's environment variables. The relay is a Punchgate node, or (the proof of concept's
//! own setup) rust-libp2p's stock relay server: Noise only over TCP, libp2p's default limits.

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
async fn version_verack_ready_between_two_private_peers_over_a_direct_connection() {
    handshake("nat-kaspa", false, Relay::Punchgate).await;
}

/// The proof of concept's relay: rust-libp2p's relay server example (`punchgate-lab stock
/// relay`). The programs reserve on it and dial through it with Noise (it refuses TLS), and it
/// lends only short circuits (2 min, 128 KiB), so the handshake waits for the hole punch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_works_through_a_stock_noise_only_relay() {
    handshake("nat-kaspa-stock-relay", false, Relay::Stock).await;
}

/// Which relay the lab runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relay {
    Punchgate,
    Stock,
}

/// The client is given the relay too (`LIBP2P_RELAY_MULTIADDRS`, the server's value): its
/// bootstrap dial of the relay races its dial of the circuit through it, which must wait for
/// that connection instead of failing (issue: "a dial that races its relay connection").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_works_when_the_client_names_the_relay_too() {
    handshake("nat-kaspa-client-names-relay", true, Relay::Punchgate).await;
}

async fn handshake(name: &str, client_names_relay: bool, kind: Relay) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("log dir");
    let net = topology::build(
        Scenario::Pair {
            a: Moderate,
            b: Moderate,
        },
        None,
    )
    .await
    .expect("network");
    let relay_ip = net.relay_ip().expect("relay ip");

    let relay = match kind {
        Relay::Punchgate => Peer::start(
            &net.relay,
            &bin(),
            "relay",
            &dir,
            vec![
                "--listen".into(),
                "/ip4/0.0.0.0/tcp/4011".into(),
                "--external-address".into(),
                format!("/ip4/{relay_ip}/tcp/4011"),
                "--no-mdns".into(),
                "--autonat-private-ips".into(),
            ],
        )
        .await
        .expect("relay"),
        Relay::Stock => Peer::start_program(
            &net.relay,
            &bin(),
            &["stock", "relay"],
            Vec::new(),
            "relay",
            &dir,
            vec![
                "--port".into(),
                "4011".into(),
                "--external-ip".into(),
                relay_ip.to_string(),
            ],
        )
        .await
        .expect("stock relay"),
    };
    let relay_addr = format!("/ip4/{relay_ip}/tcp/4011/p2p/{}", relay.peer_id);

    // The client's identity, made first: the server serves only the peers it allows. (The lab
    // starts the client with `--identity <dir>/kaspa-client.key`.)
    let (client_key, _) = punchgate::identity::load_or_create(&dir.join("kaspa-client.key"))
        .expect("client identity");
    let client_id = client_key.public().to_peer_id().to_string();

    // The server, as in the proof of concept: listens locally and on the relay's circuit, and
    // serves the client only.
    let mut server = Peer::start_program(
        &net.b,
        &bin(),
        &["kaspa", "server", "--once"],
        vec![
            (
                "LIBP2P_LISTEN_MULTIADDRS".into(),
                format!("/ip4/0.0.0.0/tcp/4012,{relay_addr}/p2p-circuit"),
            ),
            ("LIBP2P_RELAY_MULTIADDRS".into(), relay_addr.clone()),
            ("LIBP2P_ALLOW_PEERS".into(), client_id.clone()),
        ],
        "kaspa-server",
        &dir,
        vec!["--no-mdns".into(), "--autonat-private-ips".into()],
    )
    .await
    .expect("server");
    // The reservation must be in place before the client dials (the proof of concept's note).
    server
        .wait_for_message(Duration::from_secs(90), "relay reservation accepted", &[])
        .await
        .expect("the server holds a reservation");

    // The client, as in the proof of concept: the server's peer id and its circuit address.
    let mut client_env = vec![
        (
            "LIBP2P_LISTEN_MULTIADDRS".into(),
            "/ip4/0.0.0.0/tcp/4013".into(),
        ),
        ("LIBP2P_REMOTE_PEER_ID".into(), server.peer_id.clone()),
        (
            "LIBP2P_REMOTE_MULTIADDRS".into(),
            // The proof of concept's form, and the (with the server's id).
            if client_names_relay {
                format!("{relay_addr}/p2p-circuit/p2p/{}", server.peer_id)
            } else {
                format!("{relay_addr}/p2p-circuit")
            },
        ),
    ];
    if client_names_relay {
        client_env.push(("LIBP2P_RELAY_MULTIADDRS".into(), relay_addr.clone()));
    }
    let mut client = Peer::start_program(
        &net.a,
        &bin(),
        &["kaspa", "client"],
        client_env,
        "kaspa-client",
        &dir,
        vec!["--no-mdns".into(), "--autonat-private-ips".into()],
    )
    .await
    .expect("client");
    assert_eq!(
        client.peer_id, client_id,
        "the client runs as the peer allowed"
    );

    let client_exit = client
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("client exits");
    assert!(
        client_exit.success(),
        "client failed; logs in {}",
        dir.display()
    );
    let server_exit = server
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("server exits");
    assert!(
        server_exit.success(),
        "server failed; logs in {}",
        dir.display()
    );

    let events = client.events();
    for step in [
        "accepted version message",
        "accepted verack message",
        "accepted ready message",
    ] {
        assert!(
            events.iter().any(|e| matches(e, step, &[])),
            "client never logged '{step}'"
        );
    }
    let done = events
        .iter()
        .find(|e| matches(e, "P2P handshake complete: Version, Verack, Ready", &[]))
        .expect("client logged the completed handshake");
    assert_eq!(
        field(done, "path").as_deref(),
        Some("direct"),
        "the handshake must run over the punched connection; logs in {}",
        dir.display()
    );
    let server_events = server.events();
    assert!(
        server_events.iter().any(|e| matches(
            e,
            "P2P connected to incoming peer: handshake complete",
            &[("relayed", "false")]
        )),
        "the server saw the handshake complete over a direct connection"
    );
    drop(relay);
}
