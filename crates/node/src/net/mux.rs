//! yamux for TCP and relayed connections: data frames as large as a tunnel's reads, and each
//! connection driven by a task of its own, off the swarm's per-connection task.
//!
//! The wire protocol is libp2p's `/yamux/1.0.0`, unchanged; what differs from
//! `libp2p::yamux::Config` is one setting it does not expose: the largest data frame we send.
//! yamux's default cuts every write into 16 KiB frames, so a tunnel's 64 KiB read became four
//! frames, and each frame cost a message to the connection task (a wake-up of another task), a
//! header, a flush, a send call, an extra 12-byte TLS record (a 16 KiB body plus its 12-byte
//! header does not fit one 16 KiB record) and, on the receiving node, one more allocation and
//! wake-up of the reading task. [`MAX_FRAME_BODY`] sends such a read as one frame. (rustls takes
//! at most 64 KiB per write, so a full frame still leaves in two send calls, four full records
//! and a 12-byte one: two calls and five records per 64 KiB instead of four and eight. A body of
//! 64 KiB less the header, four records exactly, measured no better: windows of 256 KiB then
//! cut frames into odd sizes.)
//!
//! Larger frames are allowed by yamux's protocol and bounded by the receiver's window (256 KiB
//! per stream to start); rust-yamux accepts bodies up to 1 MiB, and go-yamux and js-libp2p's
//! yamux send 64 KiB frames themselves. Frames are still cut to the stream's send window. Another
//! stream's frame may wait behind one such frame in the connection's writer: at most 64 KiB.
//!
//! Why a driver task: see [`Muxer`]. It took the unary gRPC round trip through two nodes from
//! 265–322 µs to 215–269 µs (docs/benchmarks.md); bulk throughput and CPU did not change.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use futures::{AsyncRead, AsyncWrite, future};
use libp2p::core::{
    muxing::{StreamMuxer, StreamMuxerEvent},
    upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
};

/// The protocol name libp2p negotiates for yamux.
const PROTOCOL: &str = "/yamux/1.0.0";

/// The largest data frame body we send: one tunnel read (64 KiB).
pub const MAX_FRAME_BODY: usize = crate::tunnel::COPY_BUFFER;

/// Inbound streams the driver holds while the swarm is not asking for them (it takes them only
/// while fewer than its limit are negotiating a protocol). Beyond this, new inbound streams are dropped (reset). yamux makes a remote
/// wait for acknowledgements after 256 unacknowledged streams, so a well-behaved peer does not
/// reach it.
const MAX_PENDING_INBOUND_STREAMS: usize = 256;

/// The yamux upgrade: libp2p's `/yamux/1.0.0` with [`MAX_FRAME_BODY`] frames.
#[derive(Debug, Clone)]
pub struct Config(yamux::Config);

impl Config {
    /// yamux's defaults, at most `max_streams` concurrent streams, [`MAX_FRAME_BODY`] frames.
    pub fn new(max_streams: usize) -> Self {
        let mut config = yamux::Config::default();
        config.set_max_num_streams(max_streams);
        config.set_split_send_size(MAX_FRAME_BODY);
        Self(config)
    }

    fn connection<C>(self, io: C, mode: yamux::Mode) -> future::Ready<Result<Muxer, MuxError>>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        future::ready(Muxer::start(yamux::Connection::new(io, self.0, mode)))
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = Muxer;
    type Error = MuxError;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        self.connection(io, yamux::Mode::Server)
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Output = Muxer;
    type Error = MuxError;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        self.connection(io, yamux::Mode::Client)
    }
}

/// Setting up or running a yamux connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MuxError {
    /// The connection failed or was closed.
    #[error(transparent)]
    Connection(#[from] yamux::ConnectionError),
    /// A connection is driven by a task of its own on the tokio runtime, and there is none.
    #[error("a yamux connection needs a tokio runtime to run on")]
    NoRuntime,
}

/// One yamux connection as a libp2p [`StreamMuxer`], driven by a task of its own.
///
/// yamux makes progress (reads and writes frames, for every stream) only while
/// `yamux::Connection::poll_next_inbound` is polled. Polled from the swarm's connection task,
/// every frame sent or received would run that task's whole loop over the connection's
/// protocol handlers (identify, Kademlia, relay, DCUtR, ping, AutoNAT, streams) and recompute its
/// protocol set: work per frame that has nothing to do with the data, and a round trip's worth
/// of it at every gRPC call. So the connection lives in a driver task (as quinn drives a QUIC
/// connection); this end only takes accepted streams from it, asks it for new ones and learns
/// when it ends. The two share a small [`Control`] behind a lock that is never held across I/O.
#[derive(Debug)]
pub struct Muxer {
    control: Arc<Mutex<Control>>,
}

/// What the muxer and its driver task share.
#[derive(Debug, Default)]
struct Control {
    /// Streams the remote opened, not yet taken by the swarm (at most
    /// [`MAX_PENDING_INBOUND_STREAMS`]).
    inbound: VecDeque<yamux::Stream>,
    /// The swarm wants a new outbound stream.
    outbound_wanted: bool,
    /// The driver's answer to `outbound_wanted` (a failure to open ends the connection).
    outbound: Option<yamux::Stream>,
    /// The swarm asked to close the connection.
    close_requested: bool,
    /// The connection has ended (closed by either side, failed, or given up).
    ended: bool,
    /// Why it ended, until the swarm has been told.
    error: Option<yamux::ConnectionError>,
    /// The muxer is gone: the driver drops the connection.
    muxer_dropped: bool,
    driver: Option<Waker>,
    inbound_waker: Option<Waker>,
    outbound_waker: Option<Waker>,
    close_waker: Option<Waker>,
    event_waker: Option<Waker>,
}

impl Control {
    fn wake_driver(&mut self) {
        if let Some(waker) = self.driver.take() {
            waker.wake();
        }
    }

    /// The connection is over: everyone waiting hears of it.
    fn end(&mut self, error: Option<yamux::ConnectionError>) {
        self.ended = true;
        self.error = error;
        for waker in [
            self.inbound_waker.take(),
            self.outbound_waker.take(),
            self.close_waker.take(),
            self.event_waker.take(),
        ]
        .into_iter()
        .flatten()
        {
            waker.wake();
        }
    }
}

/// Locks `control`. Nothing panics while holding it, but a poisoned lock holds consistent data
/// all the same: every update under it is a plain field assignment.
fn lock(control: &Mutex<Control>) -> MutexGuard<'_, Control> {
    control
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Muxer {
    /// Starts the driver task for `connection` on the current tokio runtime.
    fn start<C>(connection: yamux::Connection<C>) -> Result<Self, MuxError>
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| MuxError::NoRuntime)?;
        let control = Arc::new(Mutex::new(Control::default()));
        runtime.spawn(Driver {
            connection,
            control: control.clone(),
        });
        Ok(Self { control })
    }
}

/// The task that owns a yamux connection and drives it until it ends or the muxer is dropped.
struct Driver<C> {
    connection: yamux::Connection<C>,
    control: Arc<Mutex<Control>>,
}

impl<C> Drop for Driver<C> {
    /// A driver that stops without having ended the connection (it panicked, or the runtime
    /// is shutting down) ends it here, so that the swarm hears of it instead of waiting forever.
    fn drop(&mut self) {
        let mut control = lock(&self.control);
        if !control.ended {
            control.end(Some(yamux::ConnectionError::Io(std::io::Error::other(
                "the connection's driver task stopped",
            ))));
        }
    }
}

/// Inbound streams the driver accepts in one turn before it lets its worker run other tasks.
const INBOUND_STREAMS_PER_TURN: usize = 16;

impl<C> Future for Driver<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let (close, open) = {
            let mut control = lock(&this.control);
            if control.muxer_dropped {
                control.end(None);
                return Poll::Ready(());
            }
            // Registered before looking, so a request made from now on wakes this task.
            match &control.driver {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => control.driver = Some(cx.waker().clone()),
            }
            (
                control.close_requested,
                control.outbound_wanted && control.outbound.is_none(),
            )
        };
        if close {
            let Poll::Ready(result) = this.connection.poll_close(cx) else {
                return Poll::Pending;
            };
            lock(&this.control).end(result.err());
            return Poll::Ready(());
        }
        if open {
            match this.connection.poll_new_outbound(cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(stream)) => {
                    let mut control = lock(&this.control);
                    control.outbound = Some(stream);
                    control.outbound_wanted = false;
                    if let Some(waker) = control.outbound_waker.take() {
                        waker.wake();
                    }
                }
                // yamux closes the whole connection when it cannot open a stream (too many
                // streams, say): the swarm hears that reason as the connection's end.
                Poll::Ready(Err(e)) => {
                    lock(&this.control).end(Some(e));
                    return Poll::Ready(());
                }
            }
        }
        for _ in 0..INBOUND_STREAMS_PER_TURN {
            let stream = match this.connection.poll_next_inbound(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(stream))) => stream,
                Poll::Ready(Some(Err(e))) => {
                    lock(&this.control).end(Some(e));
                    return Poll::Ready(());
                }
                Poll::Ready(None) => {
                    lock(&this.control).end(Some(yamux::ConnectionError::Closed));
                    return Poll::Ready(());
                }
            };
            let mut control = lock(&this.control);
            if control.inbound.len() < MAX_PENDING_INBOUND_STREAMS {
                control.inbound.push_back(stream);
                if let Some(waker) = control.inbound_waker.take() {
                    waker.wake();
                }
            } else {
                // The peer decides how often: DEBUG here; the stream handler's backlog (which
                // fills first) reports drops at WARN, rate-limited.
                tracing::debug!(%stream, "inbound stream dropped: {MAX_PENDING_INBOUND_STREAMS} wait already");
            }
        }
        // More may be ready: come back after the worker's other tasks.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl StreamMuxer for Muxer {
    type Substream = yamux::Stream;
    type Error = MuxError;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let mut control = lock(&self.control);
        if let Some(stream) = control.inbound.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        if control.ended {
            return Poll::Ready(Err(yamux::ConnectionError::Closed.into()));
        }
        control.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let mut control = lock(&self.control);
        if let Some(stream) = control.outbound.take() {
            return Poll::Ready(Ok(stream));
        }
        if control.ended || control.close_requested {
            return Poll::Ready(Err(yamux::ConnectionError::Closed.into()));
        }
        control.outbound_waker = Some(cx.waker().clone());
        if !control.outbound_wanted {
            control.outbound_wanted = true;
            control.wake_driver();
        }
        Poll::Pending
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let mut control = lock(&self.control);
        if control.ended {
            // Closing failed: say why. A connection that had ended before is closed, fine.
            return Poll::Ready(match control.error.take() {
                Some(e) if control.close_requested => Err(e.into()),
                _ => Ok(()),
            });
        }
        control.close_waker = Some(cx.waker().clone());
        if !control.close_requested {
            control.close_requested = true;
            control.wake_driver();
        }
        Poll::Pending
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let mut control = lock(&self.control);
        if control.ended {
            let error = control
                .error
                .take()
                .unwrap_or(yamux::ConnectionError::Closed);
            return Poll::Ready(Err(error.into()));
        }
        control.event_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let mut control = lock(&self.control);
        control.muxer_dropped = true;
        control.wake_driver();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::poll_fn,
        io,
        sync::{Arc, Mutex},
    };

    use futures::{AsyncReadExt as _, AsyncWriteExt as _};
    use libp2p::core::muxing::StreamMuxerExt as _;
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt as _};

    use super::*;

    /// yamux's frame types (the spec's numbering) and header length.
    const DATA: u8 = 0;
    const HEADER: usize = 12;

    /// Passes everything through and keeps a copy of what was written.
    struct Tee {
        inner: Compat<tokio::io::DuplexStream>,
        sent: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncRead for Tee {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Tee {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = &mut *self;
            let n = futures::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
            this.sent
                .lock()
                .expect("not poisoned")
                .extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_close(cx)
        }
    }

    /// The body lengths of the data frames in `wire`, in order.
    fn data_frames(wire: &[u8]) -> Vec<usize> {
        let mut frames = Vec::new();
        let mut at = 0;
        while at + HEADER <= wire.len() {
            let header = &wire[at..at + HEADER];
            let length = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
            at += HEADER;
            // Only data frames have a body; other types carry a value in the length field.
            if header[1] == DATA {
                frames.push(length as usize);
                at += length as usize;
            }
        }
        assert_eq!(at, wire.len(), "the wire ends on a frame boundary");
        frames
    }

    #[tokio::test]
    async fn tunnel_writes_leave_as_one_frame_each_and_arrive_whole() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let sent = Arc::new(Mutex::new(Vec::new()));
        let tee = Tee {
            inner: a.compat(),
            sent: sent.clone(),
        };
        let mut client = Config::new(8)
            .upgrade_outbound(tee, PROTOCOL)
            .await
            .expect("client muxer");
        let mut server = Config::new(8)
            .upgrade_inbound(b.compat(), PROTOCOL)
            .await
            .expect("server muxer");
        // Three full tunnel writes and a half one.
        let data: Vec<u8> = (0..MAX_FRAME_BODY * 7 / 2)
            .map(|i| (i % 251) as u8)
            .collect();

        let send = async {
            // yamux opens a stream lazily (with its first frame): no round trip to the remote.
            let mut stream = poll_fn(|cx| client.poll_outbound_unpin(cx))
                .await
                .expect("open a stream");
            for chunk in data.chunks(MAX_FRAME_BODY) {
                stream.write_all(chunk).await.expect("write");
            }
            stream.close().await.expect("close");
        };
        let receive = async {
            let mut stream = poll_fn(|cx| server.poll_inbound_unpin(cx))
                .await
                .expect("accept a stream");
            let mut received = Vec::new();
            stream.read_to_end(&mut received).await.expect("read");
            received
        };
        // Nothing polls either muxer after it handed out its stream: their driver tasks move
        // the frames.
        let ((), received) = within(async { tokio::join!(send, receive) }).await;

        assert!(received == data, "the bytes arrive unchanged");
        let frames: Vec<usize> = data_frames(&sent.lock().expect("not poisoned"))
            .into_iter()
            .filter(|&length| length > 0)
            .collect();
        let max = MAX_FRAME_BODY;
        assert_eq!(frames, [max, max, max, max / 2]);
    }

    /// Two muxers over an in-memory pipe.
    async fn pair() -> (Muxer, Muxer) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let client = Config::new(8).upgrade_outbound(a.compat(), PROTOCOL);
        let server = Config::new(8).upgrade_inbound(b.compat(), PROTOCOL);
        (
            client.await.expect("client muxer"),
            server.await.expect("server muxer"),
        )
    }

    const A_WHILE: std::time::Duration = std::time::Duration::from_secs(5);

    /// `work`'s output; the test fails if it takes longer than [`A_WHILE`] (a lost wake-up
    /// would otherwise hang it).
    async fn within<T>(work: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(A_WHILE, work)
            .await
            .expect("done in time")
    }

    /// What the swarm would learn from `muxer` within `wait`: its connection's end, or nothing.
    async fn ended_within(muxer: &mut Muxer, wait: std::time::Duration) -> Option<MuxError> {
        let event = poll_fn(|cx| muxer.poll_unpin(cx));
        match tokio::time::timeout(wait, event).await {
            Ok(Err(e)) => Some(e),
            Ok(Ok(event)) => panic!("unexpected event {event:?}"),
            Err(_) => None,
        }
    }

    /// Opens a stream on `client`, sends `bytes` on it and accepts it on `server`.
    async fn open_and_accept(
        client: &mut Muxer,
        server: &mut Muxer,
        bytes: &[u8],
    ) -> (yamux::Stream, yamux::Stream) {
        // The swarm asks; the driver task opens the stream and wakes it.
        let mut outbound = within(poll_fn(|cx| client.poll_outbound_unpin(cx)))
            .await
            .expect("open a stream");
        within(outbound.write_all(bytes)).await.expect("write");
        within(outbound.flush()).await.expect("flush");
        let inbound = within(poll_fn(|cx| server.poll_inbound_unpin(cx)))
            .await
            .expect("accept a stream");
        (outbound, inbound)
    }

    #[tokio::test]
    async fn a_stream_opened_on_one_side_is_accepted_on_the_other_and_carries_bytes_both_ways() {
        let (mut client, mut server) = pair().await;
        let (mut outbound, mut inbound) = open_and_accept(&mut client, &mut server, b"ping").await;
        let mut buf = [0; 4];
        within(inbound.read_exact(&mut buf)).await.expect("read");
        assert_eq!(&buf, b"ping");
        within(inbound.write_all(b"pong"))
            .await
            .expect("write back");
        within(inbound.flush()).await.expect("flush");
        within(outbound.read_exact(&mut buf))
            .await
            .expect("read the answer");
        assert_eq!(&buf, b"pong");
        // Neither connection has ended.
        let moment = std::time::Duration::from_millis(50);
        assert!(ended_within(&mut client, moment).await.is_none());
        assert!(ended_within(&mut server, moment).await.is_none());
    }

    #[tokio::test]
    async fn closing_one_side_ends_the_connection_on_both() {
        let (mut client, mut server) = pair().await;
        let _streams = open_and_accept(&mut client, &mut server, b"x").await;

        within(poll_fn(|cx| client.poll_close_unpin(cx)))
            .await
            .expect("closed cleanly");

        assert!(
            ended_within(&mut server, A_WHILE).await.is_some(),
            "the remote learns the connection ended"
        );
        assert!(
            within(poll_fn(|cx| server.poll_inbound_unpin(cx)))
                .await
                .is_err()
        );
        assert!(
            within(poll_fn(|cx| client.poll_outbound_unpin(cx)))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn dropping_a_muxer_drops_its_connection() {
        let (client, mut server) = pair().await;
        drop(client);
        assert!(
            ended_within(&mut server, A_WHILE).await.is_some(),
            "the remote sees the connection go"
        );
    }

    #[test]
    fn a_driver_that_stops_without_ending_its_connection_still_reports_the_end() {
        // A runtime shutting down drops its tasks unfinished, as a panic in yamux would.
        let first = tokio::runtime::Runtime::new().expect("runtime");
        let (mut client, _server) = first.block_on(pair());
        drop(first);
        let second = tokio::runtime::Runtime::new().expect("runtime");
        let error = second
            .block_on(ended_within(&mut client, A_WHILE))
            .expect("the swarm hears the connection ended");
        assert!(error.to_string().contains("driver task stopped"), "{error}");
        assert!(
            second
                .block_on(within(poll_fn(|cx| client.poll_outbound_unpin(cx))))
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_remote_that_sends_garbage_fails_the_connection_and_says_why() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut server = Config::new(8)
            .upgrade_inbound(b.compat(), PROTOCOL)
            .await
            .expect("server muxer");
        // A header with yamux version 7: no yamux speaks it.
        tokio::io::AsyncWriteExt::write_all(&mut a, &[7; HEADER])
            .await
            .expect("write");
        let error = ended_within(&mut server, A_WHILE)
            .await
            .expect("the connection fails");
        assert!(
            matches!(
                error,
                MuxError::Connection(yamux::ConnectionError::Decode(_))
            ),
            "{error:?}"
        );
    }
}
