//! Protocol identifiers and wire constants, in one place.

use libp2p::StreamProtocol;

/// Tunnel streams: a length-prefixed JSON negotiation, then raw bytes.
pub const TUNNEL: StreamProtocol = StreamProtocol::new("/punchgate/tunnel/1.0.0");

/// UDP tunnel streams: the same negotiation, then length-prefixed datagrams
/// ([`crate::tunnel::udp`]).
pub const UDP_TUNNEL: StreamProtocol = StreamProtocol::new("/punchgate/udp/1.0.0");

/// Introductions, requester → relay: "tell this peer to dial me now".
pub const INTRODUCE: StreamProtocol = StreamProtocol::new("/punchgate/introduce/1.0.0");

/// Introductions, relay → target: "this peer, observed at these addresses, is dialling you".
pub const INTRODUCTION: StreamProtocol = StreamProtocol::new("/punchgate/introduction/1.0.0");

/// Birthday punching between an easy and a hard NAT ([`crate::punch`]), over the relayed
/// connection.
pub const BIRTHDAY: StreamProtocol = StreamProtocol::new("/punchgate/birthday/1.0.0");

/// Punchgate's own Kademlia DHT, separate from the public IPFS one.
pub const KADEMLIA: StreamProtocol = StreamProtocol::new("/punchgate/kad/1.0.0");

/// Identify's protocol version: peers that do not share it are still identified but not trusted
/// as Punchgate relays.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/punchgate/1.0.0";

/// The relay HOP protocol: a peer advertising it is public and serves reservations.
pub const RELAY_HOP: StreamProtocol = StreamProtocol::new("/libp2p/circuit/relay/0.2.0/hop");

/// Agent version sent in identify.
pub fn agent_version() -> String {
    format!("punchgate/{}", env!("CARGO_PKG_VERSION"))
}

/// Largest negotiation frame (request or response) a peer may send.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// DHT key of the signed record of a peer's addresses (never its services).
pub fn peer_record_key(peer: &libp2p::PeerId) -> Vec<u8> {
    format!("/punchgate/peer/{peer}").into_bytes()
}
