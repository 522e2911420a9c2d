//! UDP tunnels over libp2p streams (`/punchgate/udp/1.0.0`): WireGuard, DNS, game servers.
//!
//! - **Negotiation** is the TCP tunnel's: a [`TunnelRequest`] frame, a [`TunnelResponse`]
//!   frame, judged by the same `--allow` rules, limits and relay rules ([`super::server`]).
//! - **Sessions.** Each client source address on a `--tunnel-udp` socket is one session, carried
//!   as one stream ([`run`]). The serving node gives each session its own socket, connected to
//!   the service ([`serve`]), so the service's replies go back to the client that sent the
//!   request. A session ends when it has carried no datagram either way for the idle timeout
//!   (`--udp-idle-timeout` on each side, 60 s by default); the other side sees the stream end.
//! - **Framing.** After the response, each datagram is one frame: its length (u16, big-endian)
//!   and its bytes, [`MAX_DATAGRAM`] at most, so datagram boundaries survive the byte stream.
//!   The client writes its first datagrams right behind the request, without waiting for the
//!   answer: a WireGuard handshake reaches the service one round trip sooner.
//! - **Pressure.** Datagrams wait for their stream in a queue of [`QUEUE_BYTES`] per session,
//!   within the node's budgets ([`SIDE_QUEUE_BYTES`] per side, [`PEER_QUEUE_BYTES`] per peer);
//!   a datagram that does not fit is dropped, never buffered without bound, and counted
//!   (`punchgate_udp_datagrams_dropped_total`, and a WARN at most every [`DROP_LOG_INTERVAL`]
//!   per session and reason, [`DROP_LINES`] for the node). The socket's reader never waits for
//!   a session, so one busy session never stalls another.
//! - **Moving.** A client session whose stream rides a relay moves to a direct connection
//!   when one comes up (`client.rs`).

use std::{
    cell::RefCell,
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::UdpSocket,
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, timeout},
};

mod client;
mod server;

pub use client::run;
pub(in crate::tunnel) use server::{NotServed, Served, serve};

use crate::metrics::{DropReason, Side, UdpMeter};

/// The largest datagram a tunnel carries: the most an IPv4 UDP datagram holds (65,535 less
/// the IP and UDP headers).
pub const MAX_DATAGRAM: usize = 65_507;

/// A datagram frame's header: the length, u16 big-endian.
pub const HEADER: usize = 2;

/// Bytes of datagrams (with their headers) one session may hold while they wait for its
/// stream: 256 KiB is 180 WireGuard packets, about 2 ms at 1 Gbit/s. More are dropped.
pub const QUEUE_BYTES: usize = 256 * 1024;

/// Datagrams one session may hold waiting (tiny ones would otherwise queue by the ten
/// thousand).
const QUEUE_DATAGRAMS: usize = 1024;

/// The most bytes of frames written to a stream at once (a yamux frame's worth, and a bit).
const BATCH_BYTES: usize = 64 * 1024;

/// The buffer a session's reader and writer start with (and go back to when idle); it grows
/// to fit the largest frame.
const FIRST_BUFFER: usize = 16 * 1024;

/// At most one WARN about dropped datagrams per session this often.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// After a session of a `--tunnel-udp` port was refused or could not reach its peer, new
/// sessions wait this long (their datagrams are dropped and counted) instead of asking again
/// for every datagram of every client.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The kernel buffers asked for on UDP tunnel sockets, each way: 2 MiB rides out a few
/// milliseconds without the task that reads it at a gigabit (the default, 208 KiB, is about
/// 1.5 ms). Linux caps it at `net.core.rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER: usize = 2 << 20;

/// Asks for [`SOCKET_BUFFER`] both ways on `socket` (what the kernel grants is enough too).
fn widen(socket: &UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
}

/// How long a session's stream may take to close once the session ended.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Reading datagram frames failed: a frame that cannot be, or the stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// The length in a frame's header is over the limit.
    #[error("a datagram frame of {0} bytes: at most {MAX_DATAGRAM}")]
    TooLarge(usize),
    /// The stream ended in the middle of a frame.
    #[error("the stream ended inside a datagram frame")]
    Truncated,
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Appends `datagram`'s frame to `out`.
///
/// # Panics
/// If `datagram` is longer than [`MAX_DATAGRAM`] (callers drop those first).
pub fn encode(out: &mut Vec<u8>, datagram: &[u8]) {
    assert!(datagram.len() <= MAX_DATAGRAM, "a datagram over the limit");
    out.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    out.extend_from_slice(datagram);
}

/// The first frame in `buf`: [`Decoded::Datagram`] with the range of its datagram (the frame
/// ends where the range does), [`Decoded::Needs`] with the bytes the frame takes if `buf` does
/// not hold all of it yet, or an error for a frame longer than [`MAX_DATAGRAM`].
pub fn decode(buf: &[u8]) -> Result<Decoded, DatagramError> {
    let Some(header) = buf.first_chunk::<HEADER>() else {
        return Ok(Decoded::Needs(HEADER));
    };
    let len = u16::from_be_bytes(*header) as usize;
    if len > MAX_DATAGRAM {
        return Err(DatagramError::TooLarge(len));
    }
    if buf.len() < HEADER + len {
        return Ok(Decoded::Needs(HEADER + len));
    }
    Ok(Decoded::Datagram(HEADER..HEADER + len))
}

/// What [`decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A whole frame; its datagram is this range of the buffer.
    Datagram(std::ops::Range<usize>),
    /// Not all of it yet: the frame takes this many bytes.
    Needs(usize),
}

/// Reads datagram frames from a stream, with a buffer that holds many small frames per read
/// and grows to hold the largest.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames from `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: vec![0; FIRST_BUFFER],
            start: 0,
            end: 0,
        }
    }

    /// The next datagram, or `None` at a clean end of the stream (between frames).
    pub async fn next(&mut self) -> Result<Option<&[u8]>, DatagramError> {
        loop {
            let needs = match decode(&self.buf[self.start..self.end])? {
                Decoded::Datagram(range) => {
                    let datagram = self.start + range.start..self.start + range.end;
                    self.start = datagram.end;
                    return Ok(Some(&self.buf[datagram]));
                }
                Decoded::Needs(needs) => needs,
            };
            // Keep the partial frame at the front, in a buffer that can hold it whole.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == 0 && self.buf.len() > FIRST_BUFFER {
                self.buf = vec![0; FIRST_BUFFER];
            }
            if self.buf.len() < needs {
                self.buf.resize(needs, 0);
            }
            let n = self.inner.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return if self.end == 0 {
                    Ok(None)
                } else {
                    Err(DatagramError::Truncated)
                };
            }
            self.end += n;
        }
    }
}

/// What a node's UDP sessions share: budgets of bytes waiting in their queues (one for served
/// sessions, one for carried ones, and each peer's part of those), and one of log lines about
/// drops.
#[derive(Debug)]
pub struct Shared {
    /// By side: served, carried.
    sides: [Arc<Semaphore>; 2],
    /// Each peer's part of its side's budget, while it has sessions.
    peers: Mutex<HashMap<(libp2p::PeerId, Side), std::sync::Weak<Semaphore>>>,
    lines: Mutex<(Option<Instant>, u32)>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            sides: [
                Arc::new(Semaphore::new(SIDE_QUEUE_BYTES)),
                Arc::new(Semaphore::new(SIDE_QUEUE_BYTES)),
            ],
            peers: Mutex::default(),
            lines: Mutex::new((None, 0)),
        }
    }
}

impl Shared {
    /// Whether a line about drops may be written now: at most [`DROP_LINES`] per
    /// [`DROP_LOG_INTERVAL`] for the whole node, whatever the number of sessions.
    fn line(&self) -> bool {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match lines.0 {
            Some(start) if now < start + DROP_LOG_INTERVAL => {
                lines.1 += 1;
                lines.1 <= DROP_LINES
            }
            _ => {
                *lines = (Some(now), 1);
                true
            }
        }
    }

    /// The budgets a session of `peer` on `side` queues within: its side's, and the peer's
    /// part of it (shared by the peer's sessions on that side while any is open).
    fn budgets(&self, peer: libp2p::PeerId, side: Side) -> [Arc<Semaphore>; 2] {
        let side_budget = self.sides[side as usize].clone();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(budget) = peers.get(&(peer, side)).and_then(std::sync::Weak::upgrade) {
            return [side_budget, budget];
        }
        // Forget peers whose sessions all ended (the map holds those with sessions open, and
        // at most as many again).
        if peers.len() >= 64 && peers.len().is_power_of_two() {
            peers.retain(|_, budget| budget.strong_count() > 0);
        }
        let budget = Arc::new(Semaphore::new(PEER_QUEUE_BYTES));
        peers.insert((peer, side), Arc::downgrade(&budget));
        [side_budget, budget]
    }
}

/// Bytes waiting in the queues of all served sessions of a node (and, apart, of all carried
/// ones): 64 MiB.
pub const SIDE_QUEUE_BYTES: usize = 64 << 20;

/// A peer's part of [`SIDE_QUEUE_BYTES`]: a quarter, so one peer whose streams do not drain
/// leaves the rest to the others.
pub const PEER_QUEUE_BYTES: usize = SIDE_QUEUE_BYTES / 4;

/// Lines about dropped datagrams a node writes per [`DROP_LOG_INTERVAL`], all sessions
/// together (the counts in the metrics are complete).
pub const DROP_LINES: u32 = 20;

/// A datagram waiting for its session's stream, holding its bytes' place in the session's
/// queue and in the node's budgets.
#[derive(Debug)]
struct Queued {
    datagram: Bytes,
    _room: [OwnedSemaphorePermit; 3],
}

/// The sending end of a session's queue: never waits, drops what does not fit.
#[derive(Debug)]
struct Queue {
    tx: mpsc::Sender<Queued>,
    room: Arc<Semaphore>,
    /// Its side's budget and its peer's part of it.
    budgets: [Arc<Semaphore>; 2],
}

/// Why [`Queue::push`] did not take a datagram.
#[derive(Debug)]
enum PushError {
    /// The queue is full: the datagram is dropped.
    Full,
    /// The node's budget for all queues of this side, or this peer's part of it, is spent:
    /// the datagram is dropped.
    Budget,
    /// The session ended: the datagram is handed back.
    Closed(Bytes),
}

impl Queue {
    /// A queue of [`QUEUE_BYTES`] for a session of `peer` on `side`, within the node's
    /// budgets, and its receiving end.
    fn new(shared: &Shared, peer: libp2p::PeerId, side: Side) -> (Self, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(QUEUE_DATAGRAMS);
        let room = Arc::new(Semaphore::new(QUEUE_BYTES));
        let budgets = shared.budgets(peer, side);
        (Self { tx, room, budgets }, rx)
    }

    fn push(&self, datagram: Bytes) -> Result<(), PushError> {
        if self.tx.is_closed() {
            return Err(PushError::Closed(datagram));
        }
        let size = (HEADER + datagram.len()) as u32;
        let Ok(room) = self.room.clone().try_acquire_many_owned(size) else {
            return Err(PushError::Full);
        };
        let [side, peer] = &self.budgets;
        let Ok(side) = side.clone().try_acquire_many_owned(size) else {
            return Err(PushError::Budget);
        };
        let Ok(peer) = peer.clone().try_acquire_many_owned(size) else {
            return Err(PushError::Budget);
        };
        match self.tx.try_send(Queued {
            datagram,
            _room: [room, side, peer],
        }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(PushError::Full),
            Err(mpsc::error::TrySendError::Closed(q)) => Err(PushError::Closed(q.datagram)),
        }
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// One session's counts: what it carried and dropped, for its log lines, `/status` and the
/// metrics.
#[derive(Debug)]
struct Tally {
    meter: UdpMeter,
    /// Which end of the tunnel: what the stream carries is towards the service on the
    /// carrying side, from it on the serving side.
    side: Side,
    shared: Arc<Shared>,
    /// Datagrams towards the service, and from it.
    to_service: AtomicU64,
    from_service: AtomicU64,
    dropped: AtomicU64,
    /// The peer has accepted the session. Until it has, what the client wrote to the stream
    /// (its first datagrams go with the request) is `unconfirmed`: carried if the peer accepts,
    /// dropped if it refuses or the session ends first.
    accepted: AtomicBool,
    unconfirmed: [AtomicU64; 2],
    /// Datagrams in the write under way (lost if the session ends in the middle of it).
    in_flight: AtomicU64,
    /// Drops not yet in a log line, and when the last line was, per reason.
    unlogged: [AtomicU64; DropReason::COUNT],
    last_log: Mutex<[Option<Instant>; DropReason::COUNT]>,
    /// When the session last carried a datagram, in ms after `born`.
    active_ms: AtomicU64,
    born: Instant,
}

impl Tally {
    /// Counts of a session on `side`; a carried one is not `accepted` until its peer says so.
    fn new(meter: UdpMeter, side: Side, shared: Arc<Shared>, accepted: bool) -> Self {
        Self {
            meter,
            side,
            shared,
            to_service: AtomicU64::new(0),
            from_service: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            accepted: AtomicBool::new(accepted),
            unconfirmed: [AtomicU64::new(0), AtomicU64::new(0)],
            in_flight: AtomicU64::new(0),
            unlogged: Default::default(),
            last_log: Mutex::new([None; DropReason::COUNT]),
            active_ms: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    fn touch(&self) {
        self.active_ms
            .store(self.born.elapsed().as_millis() as u64, Relaxed);
    }

    fn count(&self, towards_service: bool, datagrams: u64, bytes: u64) {
        if towards_service {
            self.to_service.fetch_add(datagrams, Relaxed);
            self.meter.to_service(datagrams, bytes);
        } else {
            self.from_service.fetch_add(datagrams, Relaxed);
            self.meter.from_service(datagrams, bytes);
        }
    }

    /// `datagrams` of `bytes` in all were written to the stream.
    fn wrote(&self, datagrams: u64, bytes: u64) {
        self.touch();
        if !self.accepted.load(Relaxed) {
            self.unconfirmed[0].fetch_add(datagrams, Relaxed);
            self.unconfirmed[1].fetch_add(bytes, Relaxed);
            return;
        }
        self.count(self.side == Side::carried, datagrams, bytes);
    }

    /// A datagram of `bytes` from the stream went to the local socket.
    fn delivered(&self, bytes: u64) {
        self.touch();
        self.count(self.side == Side::served, 1, bytes);
    }

    fn is_accepted(&self) -> bool {
        self.accepted.load(Relaxed)
    }

    /// The peer accepted the session: what was written before counts as carried.
    fn accept(&self) {
        self.accepted.store(true, Relaxed);
        let datagrams = self.unconfirmed[0].swap(0, Relaxed);
        let bytes = self.unconfirmed[1].swap(0, Relaxed);
        self.count(self.side == Side::carried, datagrams, bytes);
    }

    /// The session moves to a new stream, which its peer has yet to accept: counts as dropped
    /// what the old stream will not deliver (a write cut short, or what its peer never
    /// accepted).
    fn reopen(&self) {
        self.abandon();
        self.accepted.store(false, Relaxed);
    }

    /// Counts as dropped a write cut short, and what was written before a peer that never
    /// accepted.
    fn abandon(&self) -> u64 {
        let mut lost = self.in_flight.swap(0, Relaxed);
        if !self.is_accepted() {
            lost += self.unconfirmed[0].swap(0, Relaxed);
            self.unconfirmed[1].store(0, Relaxed);
        }
        if lost > 0 {
            self.count_drops(DropReason::no_session, lost);
        }
        lost
    }

    /// The session ended: counts as dropped what it will never carry (still queued, in a write
    /// cut short, or written before a peer that never accepted), and closes the queue. Returns
    /// how many.
    fn ended(&self, queue: &mut mpsc::Receiver<Queued>) -> u64 {
        queue.close();
        let mut queued = 0;
        while queue.try_recv().is_ok() {
            queued += 1;
        }
        if queued > 0 {
            self.count_drops(DropReason::no_session, queued);
        }
        queued + self.abandon()
    }

    /// Counts a dropped datagram; `Some(n)` with the drops of this reason since the last WARN
    /// when one is due (one per session and reason every [`DROP_LOG_INTERVAL`], within the
    /// node's [`DROP_LINES`]).
    fn drop_one(&self, reason: DropReason) -> Option<u64> {
        self.drop_some(reason, 1)
    }

    fn drop_some(&self, reason: DropReason, n: u64) -> Option<u64> {
        self.count_drops(reason, n);
        let unlogged = &self.unlogged[reason as usize];
        unlogged.fetch_add(n, Relaxed);
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let at = &mut last[reason as usize];
        if at.is_some_and(|t| now < t + DROP_LOG_INTERVAL) {
            return None;
        }
        // The session's turn, whether or not the node has a line left: a session whose line
        // the node could not take tries again in 10 s, not on every drop.
        *at = Some(now);
        if !self.shared.line() {
            return None;
        }
        Some(unlogged.swap(0, Relaxed))
    }

    /// Counts `n` dropped datagrams without a line of their own (the session's closing line, or
    /// the refusal's, says how many).
    fn count_drops(&self, reason: DropReason, n: u64) {
        self.dropped.fetch_add(n, Relaxed);
        self.meter.dropped(reason, n);
    }

    /// Resolves once the session has carried nothing for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let deadline = self.born + Duration::from_millis(self.active_ms.load(Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Where a session's datagrams from the stream go: a client of a `--tunnel-udp` port, or the
/// service (through the session's own connected socket).
#[derive(Debug)]
enum Local {
    Client {
        socket: Arc<UdpSocket>,
        addr: SocketAddr,
    },
    Service {
        socket: Arc<UdpSocket>,
    },
}

impl Local {
    async fn send(&self, datagram: &[u8]) -> io::Result<usize> {
        match self {
            Local::Client { socket, addr } => socket.send_to(datagram, *addr).await,
            Local::Service { socket } => socket.send(datagram).await,
        }
    }
}

thread_local! {
    /// Receives land here, one buffer per thread: a session does not hold 64 KiB while it waits.
    static RECEIVE: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM + 1]);
}

/// The next datagram on `socket` and where it came from. A datagram longer than
/// [`MAX_DATAGRAM`] (possible over IPv6) comes back longer than that, cut short: drop it.
async fn receive(socket: &UdpSocket) -> io::Result<(Bytes, SocketAddr)> {
    loop {
        socket.readable().await?;
        let received = RECEIVE.with(|buf| {
            let mut buf = buf.borrow_mut();
            socket
                .try_recv_from(&mut buf)
                .map(|(n, from)| (Bytes::copy_from_slice(&buf[..n]), from))
        });
        match received {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            received => return received,
        }
    }
}

/// Writes the queued datagrams to the stream as frames, several per write, until the queue's
/// sending side is gone.
async fn write_frames<W: AsyncWrite + Unpin>(
    writer: &mut W,
    queue: &mut mpsc::Receiver<Queued>,
    tally: &Tally,
) -> io::Result<()> {
    let mut batch = Vec::with_capacity(FIRST_BUFFER);
    while let Some(first) = queue.recv().await {
        batch.clear();
        encode(&mut batch, &first.datagram);
        let mut datagrams = 1;
        let mut bytes = first.datagram.len() as u64;
        drop(first);
        while batch.len() < BATCH_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            encode(&mut batch, &next.datagram);
            datagrams += 1;
            bytes += next.datagram.len() as u64;
        }
        tally.in_flight.store(datagrams, Relaxed);
        writer.write_all(&batch).await?;
        writer.flush().await?;
        tally.in_flight.store(0, Relaxed);
        tally.wrote(datagrams, bytes);
        if queue.is_empty() && batch.capacity() > FIRST_BUFFER {
            batch = Vec::with_capacity(FIRST_BUFFER);
        }
    }
    Ok(())
}

/// Hands each datagram from the stream to `local`, until the stream ends. A datagram the
/// socket refuses is dropped and counted; the session goes on.
async fn deliver<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    local: &Local,
    tally: &Tally,
    service: &str,
) -> Result<(), DatagramError> {
    while let Some(datagram) = reader.next().await? {
        let len = datagram.len() as u64;
        match local.send(datagram).await {
            Ok(_) => tally.delivered(len),
            Err(error) => {
                if let Some(dropped) = tally.drop_one(DropReason::send_failed) {
                    tracing::warn!(%service, %error, dropped, "udp tunnel: a datagram could not be sent on");
                }
            }
        }
    }
    Ok(())
}

/// How a session ended.
#[derive(Debug)]
enum End {
    /// No datagram either way for the idle timeout.
    Idle(Duration),
    /// The other side closed the stream.
    Closed,
    /// The node is stopping, or a reload took the peer's access away.
    Stopped(&'static str),
    /// The stream failed, or carried a frame that cannot be.
    Failed(String),
    /// (Carried) the session's stream rides a relay and a direct connection to the peer came
    /// up: the session goes on over a new stream on it.
    Moved,
}

impl End {
    /// How a session whose reading or writing finished ended: the other side closed the
    /// stream, or it failed.
    fn of<E: std::fmt::Display>(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => End::Closed,
            Err(error) => End::Failed(error.to_string()),
        }
    }
}

/// Logs a session's end, with what it carried and dropped: a WARN if it dropped any or failed.
/// The served side names the peer `peer_id`, as the server's other lines do.
fn log_end(tally: &Tally, end: &End, service: &str, peer: &libp2p::PeerId) {
    let to_service = tally.to_service.load(Relaxed);
    let from_service = tally.from_service.load(Relaxed);
    let bytes_to_service = tally.meter.live.to_service.load(Relaxed);
    let bytes_from_service = tally.meter.live.from_service.load(Relaxed);
    let dropped = tally.dropped.load(Relaxed);
    let reason = match end {
        End::Idle(idle) => format!("idle for {idle:?}"),
        End::Closed => "closed by the other side".to_owned(),
        End::Stopped(why) => (*why).to_owned(),
        End::Failed(error) => format!("failed: {error}"),
        End::Moved => "moved to a direct connection".to_owned(),
    };
    let warn = dropped > 0 || matches!(end, End::Failed(_));
    macro_rules! line {
        ($level:ident, $($peer:tt)+) => {
            tracing::$level!(%service, $($peer)+, datagrams_to_service = to_service, datagrams_from_service = from_service, bytes_to_service, bytes_from_service, dropped, %reason, "{}", match tally.side {
                Side::served => "udp session closed",
                Side::carried => "client udp session closed",
            })
        };
    }
    match (tally.side, warn) {
        (Side::served, true) => line!(warn, peer_id = %peer),
        (Side::served, false) => line!(info, peer_id = %peer),
        (Side::carried, true) => line!(warn, peer = %peer),
        (Side::carried, false) => line!(info, peer = %peer),
    }
}

/// Closes a session's stream (bounded in time), so the other side ends its session too.
async fn close<W: AsyncWrite + Unpin>(writer: &mut W) {
    let _ = timeout(CLOSE_TIMEOUT, writer.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_boundaries_and_refuse_what_cannot_be() {
        let mut buf = Vec::new();
        for len in [0, 1, 1420, MAX_DATAGRAM] {
            encode(&mut buf, &vec![7; len]);
        }
        let mut at = 0;
        for len in [0, 1, 1420, MAX_DATAGRAM] {
            match decode(&buf[at..]).expect("valid") {
                Decoded::Datagram(range) => {
                    assert_eq!(range.len(), len);
                    at += range.end;
                }
                Decoded::Needs(n) => panic!("needs {n}"),
            }
        }
        assert_eq!(at, buf.len());
        assert_eq!(decode(&[]).expect("empty"), Decoded::Needs(HEADER));
        assert_eq!(decode(&[0, 5, 1]).expect("partial"), Decoded::Needs(7));
        assert!(matches!(
            decode(&[0xff, 0xff]),
            Err(DatagramError::TooLarge(65_535))
        ));
    }

    #[tokio::test]
    async fn the_reader_reassembles_frames_split_anywhere() {
        let sizes = [1usize, 0, 3, 40_000, MAX_DATAGRAM, 2, 17_000];
        let mut wire = Vec::new();
        for (i, len) in sizes.iter().enumerate() {
            encode(&mut wire, &vec![i as u8; *len]);
        }
        // Delivered a few bytes at a time, then in one piece: the same datagrams either way.
        for chunk in [7, wire.len()] {
            let (mut tx, rx) = tokio::io::duplex(chunk.max(64));
            let data = wire.clone();
            let writer = tokio::spawn(async move {
                for piece in data.chunks(chunk) {
                    tx.write_all(piece).await.expect("write");
                }
            });
            let mut reader = FrameReader::new(rx);
            for (i, len) in sizes.iter().enumerate() {
                let datagram = reader.next().await.expect("valid").expect("a datagram");
                assert_eq!(datagram.len(), *len);
                assert!(datagram.iter().all(|b| *b == i as u8));
            }
            writer.await.expect("writer");
            assert!(reader.next().await.expect("clean end").is_none());
        }
        // A stream that ends inside a frame says so.
        let mut reader = FrameReader::new(&[0u8, 9, 1, 2][..]);
        assert!(matches!(reader.next().await, Err(DatagramError::Truncated)));
    }

    #[test]
    fn a_full_queue_drops_instead_of_growing() {
        let (queue, mut rx) =
            Queue::new(&Shared::default(), libp2p::PeerId::random(), Side::served);
        let big = Bytes::from(vec![0; MAX_DATAGRAM]);
        let mut taken = 0;
        while queue.push(big.clone()).is_ok() {
            taken += 1;
        }
        assert_eq!(taken, QUEUE_BYTES / (MAX_DATAGRAM + HEADER));
        assert!(matches!(queue.push(big.clone()), Err(PushError::Full)));
        // Taking one out makes room for one more.
        drop(rx.try_recv().expect("queued"));
        assert!(queue.push(big).is_ok());
        drop(rx);
        assert!(matches!(
            queue.push(Bytes::from_static(b"x")),
            Err(PushError::Closed(_))
        ));
    }

    #[test]
    fn one_peer_fills_its_part_of_the_budget_and_leaves_the_rest() {
        let shared = Shared::default();
        let (greedy, other) = (libp2p::PeerId::random(), libp2p::PeerId::random());
        let big = Bytes::from(vec![0; MAX_DATAGRAM]);
        // Sessions of one peer whose streams never drain, until its part is spent.
        let mut sessions = Vec::new();
        let mut queued = 0;
        'sessions: loop {
            let (queue, rx) = Queue::new(&shared, greedy, Side::served);
            loop {
                match queue.push(big.clone()) {
                    Ok(()) => queued += 1,
                    Err(PushError::Full) => break,
                    Err(PushError::Budget) => break 'sessions,
                    Err(PushError::Closed(_)) => unreachable!("the receiver is kept"),
                }
            }
            sessions.push((queue, rx));
        }
        assert_eq!(queued, PEER_QUEUE_BYTES / (MAX_DATAGRAM + HEADER));
        // Another peer's sessions, and the same peer's on the other side, still have room.
        let (queue, _rx) = Queue::new(&shared, other, Side::served);
        assert!(queue.push(big.clone()).is_ok());
        let (queue, _rx2) = Queue::new(&shared, greedy, Side::carried);
        assert!(queue.push(big).is_ok());
    }
}
