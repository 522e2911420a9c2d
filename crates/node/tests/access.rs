//! Who may reach what, with real nodes on loopback: allow lists (deny by default, no
//! enumeration), `any`, and relays that give strangers only short circuits.

mod common;

use std::time::Duration;

use common::*;
use punchgate::{
    Node,
    config::{Allow, NatStatus},
    node::{ConnectError, NodeHandle},
    protocol,
    tunnel::client::{NegotiateError, negotiate},
};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

/// Asks `b` for `service` on a fresh tunnel stream from `a`: `Ok` with the stream when accepted,
/// the refusal's reason otherwise.
async fn ask(
    a: &NodeHandle,
    b: &Node,
    service: &str,
) -> Result<tokio_util::compat::Compat<libp2p::Stream>, String> {
    let (stream, _) = a
        .open_stream(b.peer_id(), protocol::TUNNEL)
        .await
        .expect("stream");
    let mut stream = stream.compat();
    match negotiate(&mut stream, service, Duration::from_secs(10)).await {
        Ok(()) => Ok(stream),
        Err(NegotiateError::Refused(reason)) => Err(reason),
        Err(error) => panic!("negotiation failed: {error}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_allowed_peers_reach_a_service_and_strangers_learn_nothing() {
    let echo = echo_server().await;
    let a_config = config(&[TCP]);
    let c_config = config(&[TCP]);
    let mut b_config = config(&[TCP]);
    b_config.expose_to(
        format!("echo={echo}").parse().expect("expose"),
        Allow::Peers([a_config.peer_id()].into()),
    );
    b_config.expose_to(format!("open={echo}").parse().expect("expose"), Allow::Any);
    let b = Node::start(b_config).await.expect("start B");
    let mut a_config = a_config;
    a_config.bootstrap = vec![bootstrap(&b, "tcp")];
    let a = Node::start(a_config).await.expect("start A");
    let mut c_config = c_config;
    c_config.bootstrap = vec![bootstrap(&b, "tcp")];
    let c = Node::start(c_config).await.expect("start C");

    // The allowed peer gets bytes through.
    let mut stream = ask(a.handle(), &b, "echo").await.expect("A may use echo");
    echo_over(&mut stream, &payload(256 << 10, 1)).await;

    // The stranger is refused with the very words a missing service gets.
    let denied = ask(c.handle(), &b, "echo").await.expect_err("C is refused");
    let missing = ask(c.handle(), &b, "nope")
        .await
        .expect_err("no such service");
    assert_eq!(denied, "unknown service 'echo'");
    assert_eq!(missing, "unknown service 'nope'");
    assert_eq!(
        denied.replace("echo", "X"),
        missing.replace("nope", "X"),
        "a denied service must look like a missing one"
    );
    // The allowed peer asking for a missing service hears the same.
    let missing_for_a = ask(a.handle(), &b, "nope").await.expect_err("missing");
    assert_eq!(missing_for_a, missing);

    // `any` opens a service to the stranger too, and B kept serving A throughout.
    let mut open = ask(c.handle(), &b, "open").await.expect("any admits C");
    echo_over(&mut open, &payload(64 << 10, 2)).await;
    let mut again = ask(a.handle(), &b, "echo").await.expect("A still may");
    echo_over(&mut again, &payload(64 << 10, 3)).await;

    c.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_service_without_a_rule_does_not_start() {
    let mut config = config(&[TCP]);
    config.expose = vec!["ssh=127.0.0.1:22".parse().expect("expose")];
    let error = Node::start(config).await.expect_err("no rule").to_string();
    assert!(error.contains("'ssh'"), "{error}");
    assert!(error.contains("--allow ssh="), "{error}");
}

/// R relays for strangers with short circuits only. A and B listen nowhere (so no hole can be
/// punched between them): the circuit is their only path, and it must carry no tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_circuit_carries_no_tunnel_and_says_which_flag_would() {
    let echo = echo_server().await;
    let relay = Node::start(config(&[TCP])).await.expect("start R");

    let mut a_config = config(&[]);
    a_config.timing.connect_timeout = Duration::from_secs(8);
    let mut b_config = config(&[]);
    b_config.bootstrap = vec![bootstrap(&relay, "tcp")];
    b_config.nat_override = Some(NatStatus::Private);
    b_config.expose_to(
        format!("echo={echo}").parse().expect("expose"),
        Allow::Peers([a_config.peer_id()].into()),
    );
    let b = Node::start(b_config).await.expect("start B");
    let circuit = reserved(b.handle(), Duration::from_secs(30)).await;

    let a = Node::start(a_config).await.expect("start A");
    let info = a
        .handle()
        .dial_addr(b.peer_id(), circuit.clone())
        .await
        .expect("the circuit opens");
    assert!(info.relayed);
    // The relay's word on the circuit arrives with it.
    let limit = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(limit) = a
                .handle()
                .connection_info(info.connection)
                .and_then(|i| i.circuit_limit)
            {
                return limit;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the circuit's limit is known");
    assert!(limit.is_short(), "{limit}");

    // A stream pinned to the circuit is refused by B before anything is accepted, saying why.
    let stream = a
        .handle()
        .open_stream_on(&info, protocol::TUNNEL)
        .await
        .expect("stream on the circuit");
    let mut stream = stream.compat();
    let reason = match negotiate(&mut stream, "echo", Duration::from_secs(10)).await {
        Err(NegotiateError::Refused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert!(reason.contains("short relay circuit"), "{reason}");
    assert!(
        reason.contains(&format!("--trust {}", a.peer_id())),
        "{reason}"
    );
    assert!(reason.contains(&relay.peer_id().to_string()), "{reason}");

    // A new stream is never put on the circuit: A's node refuses it, naming the flags.
    let error = a
        .handle()
        .connect(b.peer_id())
        .await
        .expect_err("only a short circuit");
    match &error {
        ConnectError::ShortCircuit { peer, advice } => {
            assert_eq!(*peer, b.peer_id());
            assert!(advice.contains("--trust"), "{advice}");
            assert!(advice.contains(&b.peer_id().to_string()), "{advice}");
        }
        other => panic!("expected a short-circuit error, got {other}"),
    }

    a.shutdown().await;
    b.shutdown().await;
    relay.shutdown().await;
}
