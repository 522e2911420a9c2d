//! [`P2pStream`]: a libp2p stream that tonic and hyper can use as a connection.
//!
//! It implements tokio's `AsyncRead`/`AsyncWrite`, hyper's `rt::Read`/`rt::Write` and tonic's
//! `Connected`. Its [`P2pConnectInfo`] tells a server handler which peer called, over which
//! address, whether through a relay, how many bytes went each way, and gives a synthetic socket
//! address for code that needs a `SocketAddr`.

use std::{
    io,
    net::{Ipv6Addr, SocketAddr, SocketAddrV6},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use hyper_util::rt::TokioIo;
use libp2p::{Multiaddr, PeerId};
use punchgate::net::stream::{ConnectionInfo, StreamSlot};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt as _};

use crate::{quota::RelayTicket, server::LiveGuard};

/// Bytes sent and received on one gRPC connection (one libp2p stream). Cheap to clone; every
/// clone reads the same counters.
#[derive(Debug, Clone, Default)]
pub struct ByteCounters(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    tx: AtomicU64,
    rx: AtomicU64,
}

impl ByteCounters {
    /// Bytes written to the peer.
    pub fn tx(&self) -> u64 {
        self.0.tx.load(Ordering::Relaxed)
    }

    /// Bytes read from the peer.
    pub fn rx(&self) -> u64 {
        self.0.rx.load(Ordering::Relaxed)
    }

    fn add_tx(&self, n: usize) {
        self.0.tx.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn add_rx(&self, n: usize) {
        self.0.rx.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// What a gRPC connection over Punchgate is. A server handler reads it with
/// `request.extensions().get::<P2pConnectInfo>()`.
#[derive(Debug, Clone)]
pub struct P2pConnectInfo {
    /// The peer at the other end.
    pub peer: PeerId,
    /// Its address as this side sees it (a `/p2p-circuit` address when relayed).
    pub remote_addr: Multiaddr,
    /// Whether the libp2p connection goes through a relay.
    pub relayed: bool,
    /// The libp2p connection carrying the stream.
    pub connection: libp2p::swarm::ConnectionId,
    /// A socket address that is the same for the same peer everywhere and always:
    /// `fd00::/8` (unique local) plus a hash of the peer id. For applications whose
    /// bookkeeping wants a `SocketAddr`; nothing listens there.
    pub socket_addr: SocketAddr,
    /// Bytes sent and received on this connection so far.
    pub counters: ByteCounters,
}

impl P2pConnectInfo {
    /// Connect info for a stream on `connection`.
    pub fn new(connection: &ConnectionInfo) -> Self {
        Self {
            peer: connection.peer,
            remote_addr: connection.remote_addr.clone(),
            relayed: connection.relayed,
            connection: connection.connection,
            socket_addr: synthetic_socket_addr(&connection.peer),
            counters: ByteCounters::default(),
        }
    }
}

/// `fd` followed by the first 15 bytes of SHA-256(peer id), port from the next two bytes: the
/// same address for the same peer on every machine and every run.
pub fn synthetic_socket_addr(peer: &PeerId) -> SocketAddr {
    let hash = Sha256::digest(peer.to_bytes());
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..].copy_from_slice(&hash[..15]);
    let port = u16::from_be_bytes([hash[15], hash[16]]).max(1);
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port, 0, 0))
}

/// A libp2p stream as a gRPC connection.
#[derive(Debug)]
pub struct P2pStream {
    io: Compat<libp2p::Stream>,
    /// How much of the reader's buffer the next read offers the stream.
    read_chunk: ReadChunk,
    info: P2pConnectInfo,
    /// Held while a relayed connection counts against a relay quota; released on drop.
    _ticket: Option<RelayTicket>,
    /// Counts the connection as live (inbound), for duplicate detection.
    _live: Option<LiveGuard>,
    /// Counts an inbound stream against its libp2p connection's stream cap.
    _slot: Option<StreamSlot>,
}

impl P2pStream {
    /// Wraps `stream`, which runs on `connection`.
    pub fn new(stream: libp2p::Stream, connection: &ConnectionInfo) -> Self {
        Self {
            io: stream.compat(),
            read_chunk: ReadChunk::new(),
            info: P2pConnectInfo::new(connection),
            _ticket: None,
            _live: None,
            _slot: None,
        }
    }

    /// Keeps an inbound stream's `slot` (its place under the connection's stream cap) for as
    /// long as the stream lives.
    pub(crate) fn with_slot(mut self, slot: StreamSlot) -> Self {
        self._slot = Some(slot);
        self
    }

    /// Keeps `ticket` (a relay quota slot) for as long as the stream lives.
    pub(crate) fn with_ticket(mut self, ticket: Option<RelayTicket>) -> Self {
        self._ticket = ticket;
        self
    }

    /// Counts the connection as live until the stream is dropped.
    pub(crate) fn with_live(mut self, live: LiveGuard) -> Self {
        self._live = Some(live);
        self
    }

    /// What this connection is.
    pub fn info(&self) -> &P2pConnectInfo {
        &self.info
    }
}

impl tonic::transport::server::Connected for P2pStream {
    type ConnectInfo = P2pConnectInfo;

    fn connect_info(&self) -> P2pConnectInfo {
        self.info.clone()
    }
}

/// The least of the reader's buffer one read offers the stream (and zeroes).
pub const READ_CHUNK_MIN: usize = 16 * 1024;
/// The most of the reader's buffer one read offers the stream (and zeroes).
pub const READ_CHUNK_MAX: usize = 256 * 1024;

/// How much of the reader's buffer the next read offers: doubles, up to [`READ_CHUNK_MAX`],
/// while reads fill it, halves, down to [`READ_CHUNK_MIN`], when one brings half of it or less.
/// Reads the reader's room cut short say nothing about the stream and change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadChunk(usize);

impl ReadChunk {
    const fn new() -> Self {
        Self(READ_CHUNK_MIN)
    }

    /// Bytes to offer when the reader has `remaining` bytes of room.
    fn offer(self, remaining: usize) -> usize {
        remaining.min(self.0)
    }

    /// A read that was offered `offered` bytes brought `n`.
    fn record(&mut self, offered: usize, n: usize) {
        if offered < self.0 {
            return;
        }
        if n == offered {
            self.0 = (self.0 * 2).min(READ_CHUNK_MAX);
        } else if n <= self.0 / 2 {
            self.0 = (self.0 / 2).max(READ_CHUNK_MIN);
        }
    }
}

impl AsyncRead for P2pStream {
    /// A libp2p stream reads into initialised memory only, and hyper hands us the spare
    /// capacity of its buffer as uninitialised on every call (h2 reserves a whole DATA frame,
    /// up to `max_frame_size`, then reads it in pieces). Zeroing all of it on every read, as
    /// tokio-util's `Compat` does, zeroed far more bytes than arrived: about 2.5 per byte
    /// received with 256 KiB messages read 64 KiB at a time (6% of the receiving process's
    /// CPU), about 8.5 with 1 MiB frames. A read offers, and zeroes, only a [`ReadChunk`]: 1 to
    /// 2 bytes zeroed per byte received in bulk, at most 16 KiB for a small read.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let offered = this.read_chunk.offer(buf.remaining());
        let unfilled = buf.initialize_unfilled_to(offered);
        let n = ready!(futures::AsyncRead::poll_read(
            Pin::new(this.io.get_mut()),
            cx,
            unfilled
        ))?;
        buf.advance(n);
        this.read_chunk.record(offered, n);
        this.info.counters.add_rx(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for P2pStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.info.counters.add_tx(n);
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// hyper's traits, through hyper-util's adapter over our tokio implementation (counters included).
impl hyper::rt::Read for P2pStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let mut io = TokioIo::new(self.get_mut());
        hyper::rt::Read::poll_read(Pin::new(&mut io), cx, buf)
    }
}

impl hyper::rt::Write for P2pStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut io = TokioIo::new(self.get_mut());
        hyper::rt::Write::poll_write(Pin::new(&mut io), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut io = TokioIo::new(self.get_mut());
        hyper::rt::Write::poll_flush(Pin::new(&mut io), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut io = TokioIo::new(self.get_mut());
        hyper::rt::Write::poll_shutdown(Pin::new(&mut io), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_chunk_grows_while_reads_fill_it_and_shrinks_when_they_do_not() {
        let big = 1 << 20;
        let mut chunk = ReadChunk::new();
        assert_eq!(chunk.offer(big), READ_CHUNK_MIN);
        assert_eq!(
            chunk.offer(100),
            100,
            "never more than the reader has room for"
        );
        chunk.record(READ_CHUNK_MIN, READ_CHUNK_MIN);
        assert_eq!(chunk.offer(big), 2 * READ_CHUNK_MIN, "filled: doubled");
        for _ in 0..10 {
            let offered = chunk.offer(big);
            chunk.record(offered, offered);
        }
        assert_eq!(chunk.offer(big), READ_CHUNK_MAX, "capped");
        chunk.record(READ_CHUNK_MAX, READ_CHUNK_MAX / 2 + 1);
        assert_eq!(chunk.offer(big), READ_CHUNK_MAX, "over half: kept");
        chunk.record(READ_CHUNK_MAX, READ_CHUNK_MAX / 2);
        assert_eq!(chunk.offer(big), READ_CHUNK_MAX / 2, "half: halved");
        chunk.record(100, 100);
        chunk.record(100, 1);
        assert_eq!(
            chunk.offer(big),
            READ_CHUNK_MAX / 2,
            "reads the reader's room cut short change nothing"
        );
        for _ in 0..10 {
            chunk.record(chunk.offer(big), 0);
        }
        assert_eq!(chunk.offer(big), READ_CHUNK_MIN, "floored");
    }

    #[test]
    fn synthetic_address_is_stable_unique_local_and_per_peer() {
        let a = libp2p::identity::Keypair::ed25519_from_bytes([1; 32])
            .expect("key")
            .public()
            .to_peer_id();
        let b = libp2p::identity::Keypair::ed25519_from_bytes([2; 32])
            .expect("key")
            .public()
            .to_peer_id();
        let addr = synthetic_socket_addr(&a);
        assert_eq!(addr, synthetic_socket_addr(&a));
        assert_ne!(addr, synthetic_socket_addr(&b));
        let SocketAddr::V6(v6) = addr else {
            panic!("IPv6 expected");
        };
        assert_eq!(v6.ip().octets()[0], 0xfd);
        assert_ne!(v6.port(), 0);
        // Pinned: the same peer maps to the same address in every version.
        assert_eq!(
            addr.to_string(),
            "[fd2e:a99e:4b7:226e:bb09:856f:dd2c:3df7]:43733"
        );
    }
}
