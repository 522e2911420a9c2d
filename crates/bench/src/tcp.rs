//! Measurements over any TCP address: raw TCP to the service, or a Punchgate tunnel port in
//! front of it. The same client code runs against every path.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{Barrier, Semaphore},
};

/// Bytes written per call during bulk transfers.
const WRITE_CHUNK: usize = 256 * 1024;
/// Bytes per round trip in the latency test.
pub(crate) const RTT_BYTES: usize = 64;

/// A TCP connection to `addr`, with `TCP_NODELAY`.
pub(crate) async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let socket = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    socket.set_nodelay(true)?;
    Ok(socket)
}

/// Sends `bytes` to a sink at `addr`; returns Gbit/s, timed until the sink confirms it received
/// everything.
pub(crate) async fn throughput(addr: SocketAddr, bytes: u64) -> Result<f64> {
    let chunk = vec![0x5au8; WRITE_CHUNK];
    let mut socket = connect(addr).await?;
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(WRITE_CHUNK as u64) as usize;
        socket.write_all(&chunk[..n]).await?;
        sent += n as u64;
    }
    socket.shutdown().await?;
    let received = socket.read_u64().await.context("sink acknowledgement")?;
    let elapsed = started.elapsed();
    ensure!(
        received == bytes,
        "sink received {received} of {bytes} bytes"
    );
    Ok(gbits(bytes, elapsed))
}

/// `streams` transfers of `each` bytes at once; returns the total Gbit/s.
pub(crate) async fn parallel_throughput(
    addr: SocketAddr,
    streams: usize,
    each: u64,
) -> Result<f64> {
    let barrier = Arc::new(Barrier::new(streams + 1));
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let chunk = vec![0xa5u8; WRITE_CHUNK];
                // Reach the barrier even when the connection fails, or the others wait forever.
                let socket = connect(addr).await;
                barrier.wait().await;
                let mut socket = socket?;
                let mut sent = 0u64;
                while sent < each {
                    let n = (each - sent).min(WRITE_CHUNK as u64) as usize;
                    socket.write_all(&chunk[..n]).await?;
                    sent += n as u64;
                }
                socket.shutdown().await?;
                let received = socket.read_u64().await?;
                ensure!(received == each, "sink received {received} of {each} bytes");
                anyhow::Ok(())
            })
        })
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    for task in tasks {
        task.await??;
    }
    Ok(gbits(each * streams as u64, started.elapsed()))
}

/// `samples` round trips of [`RTT_BYTES`] on one connection to an echo (after a warm-up).
pub(crate) async fn round_trips(addr: SocketAddr, samples: usize) -> Result<Vec<Duration>> {
    let mut socket = connect(addr).await?;
    let out = [0x11u8; RTT_BYTES];
    let mut back = [0u8; RTT_BYTES];
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + samples / 10 + 10 {
        let started = Instant::now();
        socket.write_all(&out).await?;
        socket.read_exact(&mut back).await?;
        if i >= samples / 10 + 10 {
            times.push(started.elapsed());
        }
    }
    ensure!(back == out, "echo returned other bytes");
    Ok(times)
}

/// `samples` new connections to an echo, each timed from `connect` to its first echoed byte.
pub(crate) async fn setups(addr: SocketAddr, samples: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let mut socket = connect(addr).await?;
        socket.write_all(&[0x42]).await?;
        let byte = socket.read_u8().await?;
        times.push(started.elapsed());
        ensure!(byte == 0x42, "echo returned another byte");
    }
    Ok(times)
}

/// Opens `n` connections to an echo at once (at most `opening` connecting at a time), sends
/// each 1 KiB of its own bytes and checks the echo, then calls `measure` while all `n` are
/// still open. Returns what `measure` returned.
pub(crate) async fn concurrent<T, F, Fut>(
    addr: SocketAddr,
    n: usize,
    opening: usize,
    measure: F,
) -> Result<T>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let all_echoed = Arc::new(Barrier::new(n + 1));
    let release = Arc::new(Barrier::new(n + 1));
    let gate = Arc::new(Semaphore::new(opening));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (all_echoed, release, gate) = (all_echoed.clone(), release.clone(), gate.clone());
            tokio::spawn(async move {
                let result = async {
                    let mut socket = {
                        let _permit = gate.acquire().await?;
                        connect(addr).await?
                    };
                    let data: Vec<u8> = (0..1024).map(|j| (i * 31 + j) as u8).collect();
                    socket.write_all(&data).await?;
                    let mut back = vec![0u8; data.len()];
                    socket.read_exact(&mut back).await?;
                    ensure!(back == data, "connection {i}: echo differs");
                    anyhow::Ok(socket)
                }
                .await;
                all_echoed.wait().await;
                release.wait().await;
                result.map(drop)
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(300), all_echoed.wait())
        .await
        .context("connections did not all finish their echo within 300 s")?;
    let measured = measure().await;
    release.wait().await;
    let mut failed = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => failed.push(error.to_string()),
            Err(error) => failed.push(error.to_string()),
        }
    }
    if let Some(first) = failed.first() {
        bail!("{} of {n} connections failed, first: {first}", failed.len());
    }
    Ok(measured)
}

fn gbits(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

/// Nearest-rank percentile of durations, in microseconds.
pub(crate) fn percentile_us(samples: &[Duration], p: f64) -> f64 {
    let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}
