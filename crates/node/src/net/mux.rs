//! yamux for TCP and relayed connections, with data frames as large as a tunnel's reads.
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

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
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

/// Inbound streams held while the swarm is not asking for them (it polls the connection for
/// other work first). Beyond this, new inbound streams are dropped (reset). yamux makes a remote
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

    fn connection<C>(self, io: C, mode: yamux::Mode) -> future::Ready<Result<Muxer<C>, Infallible>>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        future::ready(Ok(Muxer {
            connection: yamux::Connection::new(io, self.0, mode),
            inbound: VecDeque::new(),
            inbound_waker: None,
        }))
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
    C: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Muxer<C>;
    type Error = Infallible;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        self.connection(io, yamux::Mode::Server)
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Muxer<C>;
    type Error = Infallible;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        self.connection(io, yamux::Mode::Client)
    }
}

/// The connection failed or was closed.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct MuxError(#[from] yamux::ConnectionError);

/// One yamux connection as a libp2p [`StreamMuxer`].
///
/// yamux makes progress (reads frames, accepts streams) only in
/// `yamux::Connection::poll_next_inbound`; the swarm calls [`StreamMuxer::poll`] to drive the
/// connection and [`StreamMuxer::poll_inbound`] only when it wants a stream, so streams
/// accepted while driving wait in a bounded queue.
#[derive(Debug)]
pub struct Muxer<C> {
    connection: yamux::Connection<C>,
    inbound: VecDeque<yamux::Stream>,
    inbound_waker: Option<Waker>,
}

impl<C> Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_next_inbound(&mut self, cx: &mut Context<'_>) -> Poll<Result<yamux::Stream, MuxError>> {
        match self.connection.poll_next_inbound(cx) {
            Poll::Ready(Some(Ok(stream))) => Poll::Ready(Ok(stream)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e.into())),
            Poll::Ready(None) => Poll::Ready(Err(yamux::ConnectionError::Closed.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    type Substream = yamux::Stream;
    type Error = MuxError;

    fn poll_inbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let this = self.get_mut();
        if let Some(stream) = this.inbound.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        if let Poll::Ready(result) = this.poll_next_inbound(cx) {
            return Poll::Ready(result);
        }
        this.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        self.get_mut()
            .connection
            .poll_new_outbound(cx)
            .map_err(MuxError::from)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.get_mut()
            .connection
            .poll_close(cx)
            .map_err(MuxError::from)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        let stream = match this.poll_next_inbound(cx) {
            Poll::Ready(Ok(stream)) => stream,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        if this.inbound.len() < MAX_PENDING_INBOUND_STREAMS {
            this.inbound.push_back(stream);
            if let Some(waker) = this.inbound_waker.take() {
                waker.wake();
            }
        } else {
            tracing::warn!(%stream, "inbound stream dropped: {MAX_PENDING_INBOUND_STREAMS} wait already");
        }
        // More frames may be ready: come back after the swarm has done its other work.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::{
        future::{Future, poll_fn},
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

    /// Runs `work` while driving `muxer` (yamux reads and writes frames only while driven).
    async fn driving<C, T>(muxer: &mut Muxer<C>, work: impl Future<Output = T>) -> T
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let mut work = std::pin::pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(Err(e)) = muxer.poll_unpin(cx) {
                panic!("connection failed: {e}");
            }
            work.as_mut().poll(cx)
        })
        .await
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
        let Ok(mut client) = Config::new(8).upgrade_outbound(tee, PROTOCOL).await;
        let Ok(mut server) = Config::new(8).upgrade_inbound(b.compat(), PROTOCOL).await;
        // Three full tunnel writes and a half one.
        let data: Vec<u8> = (0..MAX_FRAME_BODY * 7 / 2)
            .map(|i| (i % 251) as u8)
            .collect();

        let send = async {
            // yamux opens a stream lazily (with its first frame): no round trip to wait for.
            let mut stream = poll_fn(|cx| client.poll_outbound_unpin(cx))
                .await
                .expect("open a stream");
            driving(&mut client, async {
                for chunk in data.chunks(MAX_FRAME_BODY) {
                    stream.write_all(chunk).await.expect("write");
                }
                stream.close().await.expect("close");
                // Go on driving: the last frames leave only while the connection is driven.
                std::future::pending::<()>().await
            })
            .await
        };
        let receive = async {
            let mut stream = poll_fn(|cx| server.poll_inbound_unpin(cx))
                .await
                .expect("accept a stream");
            let mut received = Vec::new();
            driving(&mut server, stream.read_to_end(&mut received))
                .await
                .expect("read");
            received
        };
        let received = tokio::select! {
            () = send => unreachable!("the sender drives its connection until the end"),
            received = receive => received,
        };

        assert!(received == data, "the bytes arrive unchanged");
        let frames: Vec<usize> = data_frames(&sent.lock().expect("not poisoned"))
            .into_iter()
            .filter(|&length| length > 0)
            .collect();
        let max = MAX_FRAME_BODY;
        assert_eq!(frames, [max, max, max, max / 2]);
    }
}
