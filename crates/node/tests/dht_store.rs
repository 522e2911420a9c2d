//! What a node stores when others put records to it (it serves the DHT once public): only
//! signed peer records of the key's peer, and never an older record over a newer one. The
//! records are made here as docs/protocol.md §5 specifies them, and put by a stock rust-libp2p
//! Kademlia peer speaking `/punchgate/kad/1.0.0`.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt as _;
use libp2p::{
    PeerId, StreamProtocol, Swarm, SwarmBuilder,
    core::SignedEnvelope,
    identity::Keypair,
    kad::{self, GetRecordOk, QueryResult, Quorum, Record, RecordKey, store::MemoryStore},
    swarm::SwarmEvent,
    tcp, tls, yamux,
};
use punchgate::Node;

/// A peer record as §5.1 specifies it, signed by `key`.
fn peer_record(key: &Keypair, seq: u64) -> Vec<u8> {
    let payload = serde_json::json!({
        "addrs": [format!("/ip4/198.51.100.{}/tcp/4001", seq % 250)],
        "observed": [],
        "seq": seq,
    });
    SignedEnvelope::new(
        key,
        "punchgate-peer-record".to_owned(),
        b"/punchgate/peer-record/1".to_vec(),
        serde_json::to_vec(&payload).expect("json"),
    )
    .expect("sign")
    .into_protobuf_encoding()
}

fn key_of(peer: &PeerId) -> RecordKey {
    RecordKey::new(&format!("/punchgate/peer/{peer}"))
}

/// A stock rust-libp2p Kademlia client speaking `/punchgate/kad/1.0.0`, dialling `node`.
fn stock_kad_client(node: &Node, listen: libp2p::Multiaddr) -> Swarm<kad::Behaviour<MemoryStore>> {
    let mut stock = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            tls::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            kad::Behaviour::with_config(
                peer,
                MemoryStore::new(peer),
                kad::Config::new(StreamProtocol::new("/punchgate/kad/1.0.0")),
            )
        })
        .expect("behaviour")
        .build();
    stock.behaviour_mut().set_mode(Some(kad::Mode::Client));
    stock.behaviour_mut().add_address(&node.peer_id(), listen);
    stock.dial(node.listen_addrs()[0].clone()).expect("dial");
    stock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stores_only_peer_records_and_never_an_older_one() {
    // A public node: it serves the DHT.
    let (config, listen) = public_config();
    let node = Node::start(config).await.expect("start");

    let mut stock = stock_kad_client(&node, listen);

    // Puts a record to the node, then reads back what the node holds under its key.
    let mut put_then_get = async |record: Record| -> Option<Vec<u8>> {
        let key = record.key.clone();
        stock
            .behaviour_mut()
            .put_record_to(record, std::iter::once(node.peer_id()), Quorum::One);
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                    result: QueryResult::PutRecord(_),
                    ..
                }) = stock.select_next_some().await
                {
                    break;
                }
            }
        })
        .await
        .expect("put answered");
        stock.behaviour_mut().get_record(key);
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                    result: QueryResult::GetRecord(result),
                    step,
                    ..
                }) = stock.select_next_some().await
                {
                    match result {
                        Ok(GetRecordOk::FoundRecord(found)) => return Some(found.record.value),
                        Ok(_) if !step.last => {}
                        _ => return None,
                    }
                }
            }
        })
        .await
        .expect("get answered")
    };

    let alice = Keypair::generate_ed25519();
    let alice_key = key_of(&alice.public().to_peer_id());
    let (old, new) = (peer_record(&alice, 1), peer_record(&alice, 2));
    let stored = put_then_get(Record::new(alice_key.clone(), new.clone())).await;
    assert_eq!(
        stored.as_deref(),
        Some(&new[..]),
        "a valid record is stored"
    );
    let stored = put_then_get(Record::new(alice_key.clone(), old)).await;
    assert_eq!(
        stored.as_deref(),
        Some(&new[..]),
        "a replayed older record does not replace the newer one"
    );

    // Alice's record under Bob's key, junk under a peer key, anything under another key.
    let bob_key = key_of(&Keypair::generate_ed25519().public().to_peer_id());
    assert_eq!(
        put_then_get(Record::new(bob_key.clone(), new.clone())).await,
        None
    );
    assert_eq!(
        put_then_get(Record::new(bob_key, b"junk".to_vec())).await,
        None
    );
    assert_eq!(
        put_then_get(Record::new(RecordKey::new(&"/ipfs/anything"), new)).await,
        None
    );
    node.shutdown().await;
}

/// A node in a public mesh (private addresses do not count) publishes only what a stranger
/// could use: its global external address, not its loopback listen address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_publishes_only_addresses_a_stranger_could_use() {
    let (s_config, s_listen) = public_config();
    let s = Node::start(s_config).await.expect("start S");
    let mut p_config = config(&[TCP]);
    p_config.autonat_private_ips = false;
    p_config.external_addresses = vec!["/ip4/81.2.69.160/tcp/4001".parse().expect("addr")];
    p_config.bootstrap = vec![bootstrap(&s, "tcp")];
    let p = Node::start(p_config).await.expect("start P");

    let mut stock = stock_kad_client(&s, s_listen);

    let record = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            stock.behaviour_mut().get_record(key_of(&p.peer_id()));
            let found = loop {
                if let SwarmEvent::Behaviour(kad::Event::OutboundQueryProgressed {
                    result: QueryResult::GetRecord(result),
                    step,
                    ..
                }) = stock.select_next_some().await
                {
                    match result {
                        Ok(GetRecordOk::FoundRecord(found)) => break Some(found.record.value),
                        Ok(_) if !step.last => {}
                        _ => break None,
                    }
                }
            };
            if let Some(found) = found {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("P's record reached S");
    let envelope = SignedEnvelope::from_protobuf_encoding(&record).expect("envelope");
    let (payload, _) = envelope
        .payload_and_signing_key(
            "punchgate-peer-record".to_owned(),
            b"/punchgate/peer-record/1",
        )
        .expect("signed");
    let payload: serde_json::Value = serde_json::from_slice(payload).expect("json");
    let addrs: Vec<&str> = payload["addrs"]
        .as_array()
        .expect("addrs")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        addrs.contains(&"/ip4/81.2.69.160/tcp/4001"),
        "the external address is published: {addrs:?}"
    );
    assert!(
        addrs.iter().all(|a| !a.contains("127.0.0.1")),
        "no loopback address goes into a public DHT: {addrs:?}"
    );
    for node in [p, s] {
        node.shutdown().await;
    }
}
