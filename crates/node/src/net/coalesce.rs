//! Small writes joined to the next write, without copying the large one.
//!
//! yamux writes each frame as two writes, a 12-byte header and then the body (up to 64 KiB,
//! [`crate::net::mux::MAX_FRAME_BODY`]), and flushes after every frame. rustls seals each write
//! into its own records and sends them at once, so a frame would leave as two `writev` calls,
//! one of them for a 12-byte record. [`Coalescing`] keeps writes of up to [`SMALL_WRITE`] bytes
//! (copied: headers, window updates, small frames) until the next write or flush, and hands a
//! larger write to the layer below together with them in one vectored write: the frame is sealed
//! and sent in one call, and its body is not copied on the way. (A `BufWriter` gives the same
//! calls but copies every byte.) rustls takes at most 64 KiB per write: of a full 64 KiB frame
//! the last 12 bytes go in a second call.

use std::{
    io::{self, IoSlice, IoSliceMut},
    pin::Pin,
    task::{Context, Poll, ready},
};

use futures::{AsyncRead, AsyncWrite};

/// Writes of at most this many bytes in all wait for the next write or a flush.
pub const SMALL_WRITE: usize = 1024;

/// A writer that joins small writes to the next one (see the module docs). Reads pass through.
#[derive(Debug)]
pub struct Coalescing<W> {
    inner: W,
    /// Small writes accepted and not yet passed on; never more than [`SMALL_WRITE`] bytes.
    pending: Vec<u8>,
}

impl<W> Coalescing<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            pending: Vec::with_capacity(SMALL_WRITE),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: AsyncWrite + Unpin> Coalescing<W> {
    /// Passes every pending byte on.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Coalescing<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.len() + buf.len() <= SMALL_WRITE {
            this.pending.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        loop {
            if this.pending.is_empty() {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
            let parts = [IoSlice::new(&this.pending), IoSlice::new(buf)];
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &parts))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n <= this.pending.len() {
                // Only (some of) what was pending went: `buf` is not written yet.
                this.pending.drain(..n);
                continue;
            }
            let of_buf = n - this.pending.len();
            this.pending.clear();
            return Poll::Ready(Ok(of_buf));
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for Coalescing<W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use futures::{AsyncWriteExt as _, executor::block_on};
    use proptest::prelude::*;

    use super::*;

    /// Records every call that reaches it; accepts at most `accept` bytes per call, and says
    /// `Pending` (waking at once) on every `pending_every`-th call (never if 0; 1 would never
    /// be ready).
    #[derive(Default)]
    struct Recorder {
        written: Vec<u8>,
        /// Bytes per write call, in order (vectored calls count as one).
        calls: Vec<usize>,
        /// Bytes written when each flush (or close) reached it.
        flushed_at: Vec<usize>,
        accept: usize,
        pending_every: usize,
        polls: usize,
    }

    impl Recorder {
        fn new(accept: usize, pending_every: usize) -> Self {
            Self {
                accept,
                pending_every,
                ..Self::default()
            }
        }

        fn stall(&mut self, cx: &mut Context<'_>) -> bool {
            self.polls += 1;
            if self.pending_every != 0 && self.polls % self.pending_every == 0 {
                cx.waker().wake_by_ref();
                return true;
            }
            false
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if self.stall(cx) {
                return Poll::Pending;
            }
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(self.accept - n);
                self.written.extend_from_slice(&buf[..take]);
                n += take;
            }
            self.calls.push(n);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.stall(cx) {
                return Poll::Pending;
            }
            let written = self.written.len();
            self.flushed_at.push(written);
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[test]
    fn a_frame_header_leaves_with_its_body_in_one_call() {
        let mut writer = Coalescing::new(Recorder::new(usize::MAX, 0));
        let header = [7u8; 12];
        let body = vec![9u8; 16 * 1024];
        block_on(async {
            writer.write_all(&header).await.expect("write");
            writer.write_all(&body).await.expect("write");
            writer.flush().await.expect("flush");
        });
        let inner = writer.inner;
        assert_eq!(inner.calls, [12 + 16 * 1024]);
        assert_eq!(inner.written, [&header[..], &body[..]].concat());
        assert_eq!(inner.flushed_at, [12 + 16 * 1024]);
    }

    #[test]
    fn small_writes_wait_for_a_flush_and_a_close_sends_them() {
        let mut writer = Coalescing::new(Recorder::new(usize::MAX, 0));
        block_on(async {
            writer.write_all(b"window update").await.expect("write");
            writer.write_all(b", ping").await.expect("write");
        });
        assert!(writer.inner.calls.is_empty());
        block_on(writer.flush()).expect("flush");
        assert_eq!(writer.inner.calls, [19]);
        block_on(writer.write_all(b"last words")).expect("write");
        block_on(writer.close()).expect("close");
        assert_eq!(writer.inner.written, b"window update, pinglast words");
        // Held bytes reach the layer below before its flush and before its close.
        assert_eq!(writer.inner.flushed_at, [19, 29]);
    }

    #[test]
    fn a_writer_that_refuses_bytes_is_an_error_not_a_spin() {
        let mut writer = Coalescing::new(Recorder::new(0, 0));
        block_on(writer.write_all(b"small")).expect("write");
        let error = block_on(writer.flush()).expect_err("the writer refuses bytes");
        assert_eq!(error.kind(), io::ErrorKind::WriteZero);
        let error = block_on(writer.write_all(&[1u8; 4096])).expect_err("the writer refuses bytes");
        assert_eq!(error.kind(), io::ErrorKind::WriteZero);
    }

    proptest! {
        /// Whatever the write sizes, and however little the layer below takes per call (and
        /// however often it is not ready), every byte arrives once and in order.
        #[test]
        fn every_byte_arrives_in_order(
            sizes in prop::collection::vec(0usize..6_000, 1..16),
            flush_after in prop::collection::vec(any::<bool>(), 16),
            accept in prop_oneof![1usize..64, 64usize..8_000],
            pending_every in prop_oneof![Just(0usize), 2usize..6],
        ) {
            let mut writer = Coalescing::new(Recorder::new(accept, pending_every));
            let mut expected = Vec::new();
            block_on(async {
                for (i, size) in sizes.iter().enumerate() {
                    let chunk: Vec<u8> = (0..*size).map(|b| (b + i) as u8).collect();
                    writer.write_all(&chunk).await.expect("write");
                    expected.extend_from_slice(&chunk);
                    if flush_after[i] {
                        writer.flush().await.expect("flush");
                    }
                }
                writer.close().await.expect("close");
            });
            prop_assert_eq!(&writer.inner.written, &expected);
            prop_assert_eq!(writer.inner.flushed_at.last(), Some(&expected.len()));
        }
    }
}
