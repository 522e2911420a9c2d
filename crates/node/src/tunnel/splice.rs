//! Copying a tunnel's bytes both ways, with buffers that grow only for connections that need
//! them.
//!
//! A quiet connection (an SSH session, a node's P2P link) moves a few hundred bytes at a time;
//! a bulk transfer fills whatever buffer it is given. Each direction starts with a
//! [`FIRST_BUFFER`] buffer and doubles it, up to [`COPY_BUFFER`], whenever a read fills it: a
//! bulk transfer reaches full size within a few reads (64 KiB instead of 8 KiB took a tunnel
//! from 2.6 to 3.7 Gbit/s), and a thousand quiet connections hold 4 KiB per direction instead
//! of 64.
//!
//! Semantics are those of `tokio::io::copy_bidirectional`: EOF on one side is passed on as a
//! shutdown of the other side's write half, and the copy ends when both directions have.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::COPY_BUFFER;

/// Each direction's buffer to start with.
pub const FIRST_BUFFER: usize = 4 * 1024;

/// One direction: read into the buffer, write it all out, repeat; at EOF, flush.
#[derive(Debug)]
struct Copy {
    buf: Vec<u8>,
    /// The bytes read and not yet written are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The last read filled the buffer: the next refill gets a larger one.
    grow: bool,
    eof: bool,
    unflushed: bool,
    copied: u64,
}

impl Copy {
    fn new() -> Self {
        Self {
            buf: vec![0; FIRST_BUFFER],
            start: 0,
            end: 0,
            grow: false,
            eof: false,
            unflushed: false,
            copied: 0,
        }
    }

    /// Copies until `reader` reaches EOF and everything is written and flushed.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            // Tokio's cooperative budget, one unit per buffer copied: between two streams that
            // never run dry and never spend it themselves, this loop would keep its task (and
            // every task on the same worker) forever.
            let coop = ready!(tokio::task::coop::poll_proceed(cx));
            if self.start == self.end && !self.eof {
                if self.grow {
                    self.grow = false;
                    self.buf = vec![0; (self.buf.len() * 2).min(COPY_BUFFER)];
                }
                let mut read = ReadBuf::new(&mut self.buf);
                match reader.as_mut().poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => coop.made_progress(),
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to read for now: what was written must not wait in
                        // the writer's buffer for the next read.
                        if self.unflushed {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.unflushed = false;
                        }
                        return Poll::Pending;
                    }
                }
                let n = read.filled().len();
                self.eof = n == 0;
                self.grow = n == self.buf.len() && n < COPY_BUFFER;
                (self.start, self.end) = (0, n);
            }
            while self.start < self.end {
                let n = match ready!(
                    writer
                        .as_mut()
                        .poll_write(cx, &self.buf[self.start..self.end])
                ) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.start += n;
                self.copied += n as u64;
                self.unflushed = true;
            }
            if self.eof {
                ready!(writer.as_mut().poll_flush(cx))?;
                self.unflushed = false;
                return Poll::Ready(Ok(self.copied));
            }
        }
    }
}

/// Where one direction is.
#[derive(Debug)]
enum Direction {
    Copying(Copy),
    ShuttingDown(u64),
    Done(u64),
}

impl Direction {
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            match self {
                Direction::Copying(copy) => {
                    let copied =
                        ready!(copy.poll_copy(cx, Pin::new(&mut *reader), Pin::new(&mut *writer)))?;
                    *self = Direction::ShuttingDown(copied);
                }
                Direction::ShuttingDown(copied) => {
                    ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                    *self = Direction::Done(*copied);
                }
                Direction::Done(copied) => return Poll::Ready(Ok(*copied)),
            }
        }
    }

    /// Bytes copied so far.
    fn copied(&self) -> u64 {
        match self {
            Direction::Copying(copy) => copy.copied,
            Direction::ShuttingDown(copied) | Direction::Done(copied) => *copied,
        }
    }
}

/// Watches a tunnel for a stretch with no byte moved either way. Cheap on the busy path: each
/// poll compares a byte count; the timer is re-armed only when it fires.
struct Idle {
    after: std::time::Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    last_count: u64,
    last_progress: tokio::time::Instant,
}

impl Idle {
    fn new(after: std::time::Duration) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            after,
            timer: Box::pin(tokio::time::sleep_until(now + after)),
            last_count: 0,
            last_progress: now,
        }
    }

    /// `Ready` once `count` has not changed for `after`.
    fn poll(&mut self, cx: &mut Context<'_>, count: u64) -> Poll<()> {
        if count != self.last_count {
            self.last_count = count;
            self.last_progress = tokio::time::Instant::now();
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let deadline = self.last_progress + self.after;
            if tokio::time::Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// A tunnel closed because no byte moved either way for this long.
#[derive(Debug, thiserror::Error)]
#[error("no byte moved for {0:?} (--tunnel-idle-timeout)")]
pub struct IdleTimeout(pub std::time::Duration);

impl IdleTimeout {
    /// Whether `error` is a [`splice`] that ended idle.
    pub fn is(error: &io::Error) -> bool {
        error.get_ref().is_some_and(|e| e.is::<IdleTimeout>())
    }
}

/// Copies both ways until both directions are done; returns (a→b, b→a) byte counts. With
/// `idle`, fails with an [`IdleTimeout`] error once no byte has moved either way for that
/// long.
pub async fn splice<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Option<std::time::Duration>,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    splice_counted(a, b, idle, |_, _| {}).await
}

/// [`splice`], calling `progress(a→b, b→a)` with the byte counts so far whenever they changed
/// (for the metrics and `/status`: once per wake-up, not per byte).
pub async fn splice_counted<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Option<std::time::Duration>,
    mut progress: impl FnMut(u64, u64),
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::Copying(Copy::new());
    let mut b_to_a = Direction::Copying(Copy::new());
    let mut idle = idle.map(|after| (after, Idle::new(after)));
    let mut reported = 0;
    poll_fn(|cx| {
        let forward = a_to_b.poll(cx, a, b);
        let backward = b_to_a.poll(cx, b, a);
        let (sent, received) = (a_to_b.copied(), b_to_a.copied());
        if sent + received != reported {
            reported = sent + received;
            progress(sent, received);
        }
        let (forward, backward) = (forward?, backward?);
        if let (Poll::Ready(forward), Poll::Ready(backward)) = (forward, backward) {
            return Poll::Ready(Ok((forward, backward)));
        }
        if let Some((after, idle)) = &mut idle
            && idle.poll(cx, a_to_b.copied() + b_to_a.copied()).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                IdleTimeout(*after),
            )));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Hands out `data` at most `chunk` bytes per read, as a socket would what arrived.
    struct Chunked {
        data: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = self
                .chunk
                .min(buf.remaining())
                .min(self.data.len() - self.at);
            buf.put_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Copies everything `chunk` bytes per read into a `Vec`; returns it and the buffer size
    /// the copy ended with.
    async fn copy_all(data: Vec<u8>, chunk: usize) -> (Vec<u8>, usize) {
        let mut reader = Chunked { data, at: 0, chunk };
        let mut written = Vec::new();
        let mut copy = Copy::new();
        let copied =
            poll_fn(|cx| copy.poll_copy(cx, Pin::new(&mut reader), Pin::new(&mut written)))
                .await
                .expect("copy");
        assert_eq!(copied, written.len() as u64);
        (written, copy.buf.len())
    }

    #[tokio::test]
    async fn a_quiet_connection_keeps_the_first_buffer() {
        let data: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
        let (written, buffer) = copy_all(data.clone(), 300).await;
        assert!(written == data);
        assert_eq!(buffer, FIRST_BUFFER);
    }

    #[tokio::test]
    async fn a_connection_that_fills_its_buffer_grows_it_to_the_largest() {
        let data: Vec<u8> = (0..1 << 20).map(|i| (i / 7) as u8).collect();
        let (written, buffer) = copy_all(data.clone(), usize::MAX).await;
        assert!(written == data);
        assert_eq!(buffer, COPY_BUFFER);
    }

    #[tokio::test]
    async fn bytes_are_flushed_while_the_reader_waits_for_more() {
        let (mut a, mut a_peer) = tokio::io::duplex(1 << 16);
        let (b, mut b_peer) = tokio::io::duplex(1 << 16);
        // A writer that keeps bytes until flushed (as TLS under a buffered writer would).
        let mut b = tokio::io::BufWriter::new(b);
        let splicing = tokio::spawn(async move { splice(&mut a, &mut b, None).await });
        a_peer.write_all(b"request").await.expect("write");
        let mut request = [0u8; 7];
        let arrived =
            tokio::time::timeout(Duration::from_secs(5), b_peer.read_exact(&mut request)).await;
        assert!(
            arrived.is_ok(),
            "the request never left the writer's buffer"
        );
        assert_eq!(&request, b"request");
        splicing.abort();
    }

    /// Always has bytes, always takes them; never spends Tokio's budget (unlike Tokio's own
    /// `sink` and `repeat`).
    struct Endless;

    impl AsyncWrite for Endless {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncRead for Endless {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            buf.put_slice(&vec![7; buf.remaining()]);
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_copy_between_streams_that_never_wait_lets_other_tasks_run() {
        let (done, finished) = std::sync::mpsc::channel();
        // If the copy never yields, this thread spins for ever; the test thread notices.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let copying = tokio::spawn(async {
                    let mut copy = Copy::new();
                    poll_fn(|cx| copy.poll_copy(cx, Pin::new(&mut Endless), Pin::new(&mut Endless)))
                        .await
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
                copying.abort();
            });
            let _ = done.send(());
        });
        let ran = finished.recv_timeout(Duration::from_secs(10));
        assert!(
            ran.is_ok(),
            "the copy kept the worker: other tasks never ran"
        );
    }

    /// One end of a tunnelled connection: sends `data` then EOF while reading to EOF; returns
    /// what it read.
    async fn exchange(end: tokio::io::DuplexStream, data: Vec<u8>) -> Vec<u8> {
        let (mut read, mut write) = tokio::io::split(end);
        let send = async {
            write.write_all(&data).await.expect("write");
            write.shutdown().await.expect("shutdown");
        };
        let mut received = Vec::new();
        let ((), read) = tokio::join!(send, read.read_to_end(&mut received));
        read.expect("read");
        received
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Whatever the sizes and however small the pipes, both directions arrive whole, each
        /// side sees the other's EOF, and the counts are the bytes copied.
        #[test]
        fn both_ways_arrive_whole_and_eof_is_passed_on(
            forward in prop::collection::vec(any::<u8>(), 0..300_000),
            backward in prop::collection::vec(any::<u8>(), 0..300_000),
            pipe_a in 1usize..70_000,
            pipe_b in 1usize..70_000,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let (counts, at_b, at_a) = runtime.block_on(async {
                let (mut a, a_peer) = tokio::io::duplex(pipe_a);
                let (mut b, b_peer) = tokio::io::duplex(pipe_b);
                let splicing = async move { splice(&mut a, &mut b, None).await.expect("splice") };
                tokio::join!(
                    splicing,
                    exchange(b_peer, backward.clone()),
                    exchange(a_peer, forward.clone()),
                )
            });
            prop_assert_eq!(counts, (forward.len() as u64, backward.len() as u64));
            prop_assert!(at_b == forward);
            prop_assert!(at_a == backward);
        }
    }
}
