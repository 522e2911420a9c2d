//! The peer record a node publishes in the DHT: its addresses (circuit addresses included),
//! signed with its key so a reader can check who wrote it.
//!
//! Kademlia stores whatever a peer puts under a key; a forged record for someone else's key fails
//! the signature or peer-id check here and is ignored.

use libp2p::{
    Multiaddr, PeerId,
    core::{PeerRecord, SignedEnvelope},
    identity::Keypair,
    multiaddr::Protocol,
};

/// At most this many addresses go into a record.
pub(crate) const MAX_RECORD_ADDRS: usize = 32;

/// A record that cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("not a signed envelope: {0}")]
    Envelope(String),
    #[error("not a valid peer record: {0}")]
    Record(String),
    #[error("record signed by {found}, expected {expected}")]
    WrongPeer {
        expected: Box<PeerId>,
        found: Box<PeerId>,
    },
}

/// Signs a peer record for `addrs` (deduplicated, capped at [`MAX_RECORD_ADDRS`]).
pub(crate) fn encode(keypair: &Keypair, addrs: Vec<Multiaddr>) -> Option<Vec<u8>> {
    let mut unique: Vec<Multiaddr> = Vec::new();
    for addr in addrs {
        let addr = without_trailing_p2p(addr);
        if !unique.contains(&addr) && unique.len() < MAX_RECORD_ADDRS {
            unique.push(addr);
        }
    }
    PeerRecord::new(keypair, unique)
        .ok()
        .map(|r| r.into_signed_envelope().into_protobuf_encoding())
}

/// Checks a record found under `expected`'s key and returns its addresses.
pub(crate) fn decode(expected: &PeerId, bytes: &[u8]) -> Result<Vec<Multiaddr>, RecordError> {
    let envelope = SignedEnvelope::from_protobuf_encoding(bytes)
        .map_err(|e| RecordError::Envelope(e.to_string()))?;
    let record = PeerRecord::from_signed_envelope(envelope)
        .map_err(|e| RecordError::Record(e.to_string()))?;
    if record.peer_id() != *expected {
        return Err(RecordError::WrongPeer {
            expected: Box::new(*expected),
            found: Box::new(record.peer_id()),
        });
    }
    Ok(record.addresses().to_vec())
}

fn without_trailing_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) && !is_circuit(&addr) {
        addr.pop();
    }
    addr
}

fn is_circuit(addr: &Multiaddr) -> bool {
    punchgate_machine::node::is_relayed(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_peers_records() {
        let alice = Keypair::generate_ed25519();
        let bob = Keypair::generate_ed25519();
        let addr: Multiaddr = "/ip4/198.51.100.1/tcp/4001".parse().expect("addr");
        let circuit: Multiaddr = format!(
            "/ip4/198.51.100.9/tcp/4001/p2p/{}/p2p-circuit/p2p/{}",
            bob.public().to_peer_id(),
            alice.public().to_peer_id()
        )
        .parse()
        .expect("addr");
        let bytes =
            encode(&alice, vec![addr.clone(), circuit.clone(), addr.clone()]).expect("sign");
        let alice_id = alice.public().to_peer_id();
        assert_eq!(
            decode(&alice_id, &bytes).expect("valid"),
            vec![addr, circuit]
        );
        // Alice's record filed under Bob's key is refused.
        let err = decode(&bob.public().to_peer_id(), &bytes).expect_err("wrong peer");
        assert!(matches!(err, RecordError::WrongPeer { .. }), "{err}");
        // Garbage is refused.
        assert!(decode(&alice_id, b"garbage").is_err());
        // A flipped byte breaks the signature.
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(decode(&alice_id, &tampered).is_err());
    }
}
