//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): every decoder a remote peer
//! reaches, called the way the node calls it. Each takes arbitrary bytes and must neither panic
//! nor allocate without bound; what it returns does not matter.

use std::{str::FromStr as _, sync::OnceLock};

use libp2p::{Multiaddr, PeerId, identity::Keypair};

use crate::{
    config::ServiceName,
    frame,
    tunnel::wire::{TunnelRequest, TunnelResponse},
};

/// A tunnel stream's first frame, as the serving node reads it (and a response, as the client
/// reads it): the frame, the JSON, the service name, and the name as a log line holds it. And
/// the same bytes as a UDP tunnel's datagram frames, as both sides read them after it.
pub fn tunnel_frame(data: &[u8]) {
    let mut rest = data;
    while let Ok(crate::tunnel::udp::Decoded::Datagram(datagram)) = crate::tunnel::udp::decode(rest)
    {
        assert!(datagram.len() <= crate::tunnel::udp::MAX_DATAGRAM);
        assert!(datagram.start == crate::tunnel::udp::HEADER && datagram.end <= rest.len());
        rest = &rest[datagram.end..];
    }
    if let Ok(Some((request, used))) = frame::decode::<TunnelRequest>(data) {
        assert!(used <= data.len());
        if let Ok(name) = ServiceName::from_str(&request.service) {
            assert_eq!(name.as_str(), request.service);
        }
        let _ = crate::tunnel::server::unknown_service(&frame::loggable(&request.service));
    }
    if let Ok(Some((response, _))) = frame::decode::<TunnelResponse>(data)
        && let Some(reason) = response.reason
    {
        let logged = frame::loggable(&reason);
        assert!(!logged.contains('\n'));
    }
}

/// The three introduction messages (a request to a relay, its answer, an introduction to the
/// target), and the dial filter their addresses go through; and the birthday punch's messages
/// and probes (the same kind of input: one small frame from a peer).
pub fn introduction_frames(data: &[u8]) {
    static OURS: OnceLock<Vec<Multiaddr>> = OnceLock::new();
    let ours = OURS.get_or_init(|| {
        [
            "/ip4/192.168.1.20/tcp/4001",
            "/ip4/10.0.0.2/udp/4001/quic-v1",
        ]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
    });
    crate::node::introduce::fuzz_frames(data, ours);
    crate::punch::fuzz_frames(data);
}

/// A DHT peer record: the first byte picks what the rest is.
/// - even: a record as a DHT server receives it in a PUT (signed envelope, checked against the
///   key's peer), and as a reader receives it from a lookup;
/// - odd: the signed payload itself, as it is read once the signature checks out (a random
///   input almost never carries a valid signature, so this reaches the payload parser).
pub fn peer_record(data: &[u8]) {
    static PEER: OnceLock<(PeerId, Vec<u8>, Vec<u8>)> = OnceLock::new();
    let (peer, key, stored) = PEER.get_or_init(|| {
        let keypair = Keypair::ed25519_from_bytes([7; 32]).expect("a 32-byte seed");
        let peer = keypair.public().to_peer_id();
        let stored = crate::node::records::encode(
            &keypair,
            &crate::node::records::PeerAddrs {
                addrs: vec!["/ip4/203.0.113.5/tcp/4001".parse().expect("addr")],
                observed: Vec::new(),
                seq: 1,
            },
        )
        .expect("a record");
        (peer, format!("/punchgate/peer/{peer}").into_bytes(), stored)
    });
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let _ = crate::node::records::decode(peer, rest);
        let _ = crate::node::records::admit_put(key, rest, Some(stored));
        let _ = crate::node::records::admit_put(rest, stored, None);
    } else if let Ok(record) = crate::node::records::decode_payload(rest) {
        assert!(record.addrs.len() <= crate::node::records::MAX_RECORD_ADDRS);
        assert!(record.observed.len() <= crate::node::records::MAX_RECORD_ADDRS);
    }
}
