//! Birthday punch requests (`/punchgate/birthday/1.0.0`) from hostile or unwelcome peers: a
//! stranger, and a peer only a rule open to `any` admits, are refused with the same words and
//! no packet; a named peer is bounded per minute; bad frames close only their stream, and the
//! node keeps answering. (The punch itself runs in the NAT lab: crates/lab/tests/matrix.rs.)

mod common;

use std::time::Duration;

use common::*;
use punchgate::{Node, config::Allow, frame, protocol};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

type Stream = tokio_util::compat::Compat<libp2p::Stream>;

async fn stream_to(from: &Node, to: &Node) -> Stream {
    let (stream, _) = from
        .handle()
        .open_stream(to.peer_id(), protocol::BIRTHDAY)
        .await
        .expect("a birthday stream");
    stream.compat()
}

fn hello() -> Value {
    json!({
        "msg": "hello",
        "mapping": "moves",
        "public_ip": "81.2.69.10",
        "budget": {"sockets": 256, "probes": 2048, "rate": 1000},
    })
}

/// Sends a hello and returns the refusal's reason.
async fn refusal(from: &Node, to: &Node) -> String {
    let mut s = stream_to(from, to).await;
    frame::write(&mut s, &hello()).await.expect("hello");
    let answer: Value = tokio::time::timeout(Duration::from_secs(10), frame::read(&mut s))
        .await
        .expect("an answer in time")
        .expect("an answer frame");
    assert_eq!(answer["msg"], "refused", "{answer}");
    answer["reason"].as_str().expect("a reason").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_named_peers_get_a_punch_and_bad_frames_change_nothing() {
    let echo = echo_server().await;
    let mut named = config(&[TCP]);
    let mut stranger = config(&[TCP]);
    let mut open_only = config(&[TCP]);
    let mut b = config(&[TCP]);
    b.expose_to(
        format!("echo={echo}").parse().expect("expose"),
        Allow::Peers([named.peer_id()].into()),
    );
    b.expose_to(format!("open={echo}").parse().expect("expose"), Allow::Any);
    let b = Node::start(b).await.expect("start B");
    for c in [&mut named, &mut stranger, &mut open_only] {
        c.bootstrap = vec![bootstrap(&b, "tcp")];
    }
    let named = Node::start(named).await.expect("start the named peer");
    let stranger = Node::start(stranger).await.expect("start the stranger");
    let open_only = Node::start(open_only).await.expect("start the other peer");

    // A stranger, and a peer that only the rule open to any peer admits: the same refusal.
    assert_eq!(refusal(&stranger, &b).await, "no birthday punch");
    assert_eq!(refusal(&open_only, &b).await, "no birthday punch");

    // Bad frames: not JSON, a message out of turn, a hello with a bad address. Each closes
    // its own stream only.
    let mut s = stream_to(&named, &b).await;
    s.write_all(&[0, 0, 0, 5, b'{', b'x', 0xff, b'!', b'}'])
        .await
        .expect("garbage");
    let _ = s.shutdown().await;
    let mut s = stream_to(&named, &b).await;
    frame::write(&mut s, &json!({"msg": "listening"}))
        .await
        .expect("out of turn");
    let _ = s.shutdown().await;

    // The named peer is heard: loopback tells B nothing of its NAT, so the mappings do not fit
    // and nothing is sent; the answer says so.
    let reason = refusal(&named, &b).await;
    assert!(reason.starts_with("mappings do not fit"), "{reason}");
    // Two punches a minute per peer: the third is refused for that.
    let reason = refusal(&named, &b).await;
    assert!(reason.starts_with("mappings do not fit"), "{reason}");
    let reason = refusal(&named, &b).await;
    assert_eq!(reason, "at most 2 birthday punches a minute per peer");

    // Refusing strangers counts nothing against anyone's limit: still the same answer.
    assert_eq!(refusal(&stranger, &b).await, "no birthday punch");
}
