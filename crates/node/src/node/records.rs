//! The record a node publishes in the DHT under `/punchgate/peer/<PEER_ID>`: its addresses
//! (circuit addresses included) and the addresses others observe it at, in a libp2p signed
//! envelope so a reader can check who wrote it.
//!
//! A record carries a sequence number (milliseconds since the Unix epoch when it was signed, and
//! always above the node's previous one), so the newest one wins: a DHT server stores a record
//! only if it is a valid peer record for its key and not older than the one it holds
//! ([`admit_put`]), and a reader never takes an older record for a peer over a newer one it has
//! seen. A forged record for someone else's key fails the signature or peer-id check and is
//! ignored; a replayed old one loses to the newer one.

use libp2p::{Multiaddr, PeerId, core::SignedEnvelope, identity::Keypair, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

/// At most this many addresses of each kind go into a record.
pub(crate) const MAX_RECORD_ADDRS: usize = 32;
/// Signature domain: a signature over this record is useless anywhere else.
const DOMAIN: &str = "punchgate-peer-record";
/// Envelope payload type.
const PAYLOAD_TYPE: &[u8] = b"/punchgate/peer-record/1";

/// What a peer record says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PeerAddrs {
    /// Listen and external addresses, circuit addresses included.
    pub(crate) addrs: Vec<Multiaddr>,
    /// Addresses other peers observed this node at (its NAT's mapping of its listen ports).
    pub(crate) observed: Vec<Multiaddr>,
    /// The record's sequence number: newer records have larger ones (0 in records from before
    /// there was one).
    pub(crate) seq: u64,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    addrs: Vec<String>,
    #[serde(default)]
    observed: Vec<String>,
    #[serde(default)]
    seq: u64,
}

/// A record that cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("not a signed envelope: {0}")]
    Envelope(String),
    #[error("bad signature or payload type: {0}")]
    Signature(String),
    #[error("not a valid peer record: {0}")]
    Payload(String),
    #[error("record signed by {found}, expected {expected}")]
    WrongPeer {
        expected: Box<PeerId>,
        found: Box<PeerId>,
    },
    #[error("not a peer record key")]
    Key,
    #[error("record {offered} is older than the stored {stored}")]
    Stale { offered: u64, stored: u64 },
}

/// The peer whose record `key` holds (`/punchgate/peer/<PEER_ID>`), if it is such a key.
pub(crate) fn peer_of_key(key: &[u8]) -> Option<PeerId> {
    let text = std::str::from_utf8(key).ok()?;
    text.strip_prefix("/punchgate/peer/")?.parse().ok()
}

/// Whether a DHT server should store `value` under `key`, replacing `stored` (what it holds
/// there): only a valid peer record of the key's peer, and not an older one.
pub(crate) fn admit_put(
    key: &[u8],
    value: &[u8],
    stored: Option<&[u8]>,
) -> Result<(), RecordError> {
    let peer = peer_of_key(key).ok_or(RecordError::Key)?;
    let offered = decode(&peer, value)?;
    if let Some(stored) = stored.and_then(|s| decode(&peer, s).ok())
        && stored.seq > offered.seq
    {
        return Err(RecordError::Stale {
            offered: offered.seq,
            stored: stored.seq,
        });
    }
    Ok(())
}

/// Signs a record (addresses deduplicated, at most [`MAX_RECORD_ADDRS`] of each kind).
pub(crate) fn encode(keypair: &Keypair, record: &PeerAddrs) -> Option<Vec<u8>> {
    let payload = Payload {
        addrs: unique(&record.addrs),
        observed: unique(&record.observed),
        seq: record.seq,
    };
    let payload = serde_json::to_vec(&payload).ok()?;
    SignedEnvelope::new(keypair, DOMAIN.to_owned(), PAYLOAD_TYPE.to_vec(), payload)
        .ok()
        .map(SignedEnvelope::into_protobuf_encoding)
}

/// Checks a record found under `expected`'s key and returns what it says. Addresses that do not
/// parse are skipped.
pub(crate) fn decode(expected: &PeerId, bytes: &[u8]) -> Result<PeerAddrs, RecordError> {
    let envelope = SignedEnvelope::from_protobuf_encoding(bytes)
        .map_err(|e| RecordError::Envelope(e.to_string()))?;
    let (payload, key) = envelope
        .payload_and_signing_key(DOMAIN.to_owned(), PAYLOAD_TYPE)
        .map_err(|e| RecordError::Signature(e.to_string()))?;
    let signer = key.to_peer_id();
    if signer != *expected {
        return Err(RecordError::WrongPeer {
            expected: Box::new(*expected),
            found: Box::new(signer),
        });
    }
    decode_payload(payload)
}

/// What a record's signed payload says (after its signature was checked). Addresses that do
/// not parse are skipped.
pub(crate) fn decode_payload(payload: &[u8]) -> Result<PeerAddrs, RecordError> {
    let payload: Payload =
        serde_json::from_slice(payload).map_err(|e| RecordError::Payload(e.to_string()))?;
    let parse = |list: Vec<String>| -> Vec<Multiaddr> {
        list.iter()
            .filter_map(|a| a.parse().ok())
            .take(MAX_RECORD_ADDRS)
            .collect()
    };
    Ok(PeerAddrs {
        addrs: parse(payload.addrs),
        observed: parse(payload.observed),
        seq: payload.seq,
    })
}

fn unique(addrs: &[Multiaddr]) -> Vec<String> {
    let mut out: Vec<Multiaddr> = Vec::new();
    for addr in addrs {
        let addr = without_trailing_p2p(addr.clone());
        if !out.contains(&addr) && out.len() < MAX_RECORD_ADDRS {
            out.push(addr);
        }
    }
    out.iter().map(ToString::to_string).collect()
}

/// Drops a trailing `/p2p/<self>` (kept on circuit addresses, where it names the target).
fn without_trailing_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_)))
        && !punchgate_machine::node::is_relayed(&addr)
    {
        addr.pop();
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_peers_records() {
        let alice = Keypair::generate_ed25519();
        let bob = Keypair::generate_ed25519();
        let addr: Multiaddr = "/ip4/198.51.100.1/tcp/4001".parse().expect("addr");
        let observed: Multiaddr = "/ip4/203.0.113.7/tcp/4001".parse().expect("addr");
        let circuit: Multiaddr = format!(
            "/ip4/198.51.100.9/tcp/4001/p2p/{}/p2p-circuit/p2p/{}",
            bob.public().to_peer_id(),
            alice.public().to_peer_id()
        )
        .parse()
        .expect("addr");
        let record = PeerAddrs {
            addrs: vec![addr.clone(), circuit.clone(), addr.clone()],
            observed: vec![observed.clone()],
            seq: 7,
        };
        let bytes = encode(&alice, &record).expect("sign");
        let alice_id = alice.public().to_peer_id();
        let decoded = decode(&alice_id, &bytes).expect("valid");
        assert_eq!(decoded.addrs, vec![addr, circuit]);
        assert_eq!(decoded.observed, vec![observed]);
        assert_eq!(decoded.seq, 7);
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

    #[test]
    fn a_server_stores_only_valid_records_of_the_key_and_never_an_older_one() {
        let alice = Keypair::generate_ed25519();
        let alice_id = alice.public().to_peer_id();
        let key = crate::protocol::peer_record_key(&alice_id);
        let record = |seq| {
            encode(
                &alice,
                &PeerAddrs {
                    addrs: vec!["/ip4/198.51.100.1/tcp/4001".parse().expect("addr")],
                    observed: Vec::new(),
                    seq,
                },
            )
            .expect("sign")
        };
        let (old, new) = (record(1), record(2));
        assert!(admit_put(&key, &old, None).is_ok());
        assert!(admit_put(&key, &new, Some(&old)).is_ok());
        assert!(
            admit_put(&key, &new, Some(&new)).is_ok(),
            "the same record again"
        );
        let stale = admit_put(&key, &old, Some(&new)).expect_err("a replayed older record");
        assert!(
            matches!(
                stale,
                RecordError::Stale {
                    offered: 1,
                    stored: 2
                }
            ),
            "{stale}"
        );
        // Someone else's key, another key, garbage.
        let bob = Keypair::generate_ed25519().public().to_peer_id();
        assert!(admit_put(&crate::protocol::peer_record_key(&bob), &new, None).is_err());
        assert!(matches!(
            admit_put(b"/ipfs/anything", &new, None),
            Err(RecordError::Key)
        ));
        assert!(admit_put(&key, b"garbage", None).is_err());
    }
}
