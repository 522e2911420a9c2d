//! `punchgate-bench udp`: UDP tunnels against raw UDP on loopback, in one run.
//!
//! - **Rate sweep**: 512-byte datagrams one way into a sink at rising offered rates (and as fast
//!   as one sender goes): datagrams per second delivered, and the share lost.
//! - **Latency**: 64-byte datagrams through an echo, one at a time: p50 and p99 round trips.
//! - **WireGuard-shaped**: 1,420-byte datagrams (WireGuard's default MTU) through an echo, so
//!   the same load flows both ways: Mbit/s each way delivered, and the share lost.
//!
//! Each path is measured in turn: raw UDP (the sender straight to the sink or echo), then a
//! `--tunnel-udp` between two real `punchgate` processes over TCP (TLS + yamux), then over QUIC.
//! Senders, sinks and echoes are plain threads with blocking sockets, so their pacing does not
//! depend on an async runtime.

use std::{
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::nodes::{self, Process, Transport};

/// What the sweep sends.
const SWEEP_SIZE: usize = 512;
/// Offered rates of the sweep, datagrams per second; `None` is as fast as one sender goes.
const SWEEP_RATES: [Option<u64>; 6] = [
    Some(10_000),
    Some(25_000),
    Some(50_000),
    Some(100_000),
    Some(200_000),
    None,
];
/// What the latency figures time.
const PING_SIZE: usize = 64;
/// A WireGuard packet (its default MTU of 1,420).
const WIREGUARD_SIZE: usize = 1_420;
/// Offered rates of the WireGuard-shaped load, datagrams per second each way (10k is 114
/// Mbit/s).
const WIREGUARD_RATES: [Option<u64>; 4] = [Some(10_000), Some(30_000), Some(60_000), None];

/// The three paths, in the order measured.
#[derive(Debug, Clone, Copy)]
enum PathKind {
    Raw,
    Tunnel(Transport),
}

impl PathKind {
    const ALL: [PathKind; 3] = [
        PathKind::Raw,
        PathKind::Tunnel(Transport::Tcp),
        PathKind::Tunnel(Transport::Quic),
    ];

    fn name(self) -> &'static str {
        match self {
            PathKind::Raw => "raw UDP",
            PathKind::Tunnel(Transport::Tcp) => "tunnel over TCP",
            PathKind::Tunnel(Transport::Quic) => "tunnel over QUIC",
        }
    }
}

/// One sending run: how many went out and how many arrived.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    sent: u64,
    arrived: u64,
    seconds: f64,
}

impl Delivery {
    fn per_second(self) -> f64 {
        self.arrived as f64 / self.seconds
    }

    fn loss_percent(self) -> f64 {
        if self.sent == 0 {
            return f64::NAN;
        }
        100.0 * (self.sent.saturating_sub(self.arrived)) as f64 / self.sent as f64
    }
}

/// A UDP service on loopback run by a thread: a sink that counts what it receives, or an
/// echo. It stops when dropped.
#[derive(Debug)]
struct Service {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Service {
    fn start(echo: bool) -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = socket.local_addr()?;
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, done) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0; 65_536];
            while !done.load(Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    count.fetch_add(1, Relaxed);
                    if echo {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                }
            }
        });
        Ok(Self {
            addr,
            received,
            stop,
        })
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Sends `size`-byte datagrams from `socket` (connected) at `rate` a second (`None`: as fast
/// as it goes) for `seconds`; returns how many went out.
fn send_paced(socket: &UdpSocket, size: usize, rate: Option<u64>, seconds: f64) -> u64 {
    let datagram = vec![0x5a; size];
    let started = Instant::now();
    let length = Duration::from_secs_f64(seconds);
    let mut sent = 0u64;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= length {
            return sent;
        }
        let due = rate.map_or(sent + 256, |r| (elapsed.as_secs_f64() * r as f64) as u64);
        while sent < due {
            if socket.send(&datagram).is_ok() {
                sent += 1;
            }
        }
        if rate.is_some() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Waits until `count` stops growing (nothing more is in flight), at most 3 s.
fn settled(count: &AtomicU64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = count.load(Relaxed);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = count.load(Relaxed);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// One way into the sink: `size`-byte datagrams sent to `to` at `rate` for `seconds`.
fn one_way(
    sink: &Service,
    to: SocketAddr,
    size: usize,
    rate: Option<u64>,
    seconds: f64,
) -> Result<Delivery> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(to)?;
    let before = sink.received.load(Relaxed);
    let sent = send_paced(&socket, size, rate, seconds);
    let arrived = settled(&sink.received) - before;
    Ok(Delivery {
        sent,
        arrived,
        seconds,
    })
}

/// Both ways through an echo: datagrams sent to `to` at `rate`, and those that came back.
fn both_ways(to: SocketAddr, size: usize, rate: Option<u64>, seconds: f64) -> Result<Delivery> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let receiver = socket.try_clone()?;
    let back = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (count, done) = (back.clone(), stop.clone());
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0; 65_536];
        while !done.load(Relaxed) {
            if receiver.recv(&mut buf).is_ok() {
                count.fetch_add(1, Relaxed);
            }
        }
    });
    let sent = send_paced(&socket, size, rate, seconds);
    let arrived = settled(&back);
    stop.store(true, Relaxed);
    let _ = reader.join();
    Ok(Delivery {
        sent,
        arrived,
        seconds,
    })
}

/// `pings` round trips of one small datagram at a time (after a tenth as many to warm up):
/// (p50 µs, p99 µs, lost). A datagram not back within 200 ms is lost.
fn latency(to: SocketAddr, pings: usize) -> Result<(f64, f64, usize)> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(to)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = vec![0; 65_536];
    let mut samples = Vec::with_capacity(pings);
    let mut lost = 0;
    for i in 0..pings + pings / 10 {
        let mut datagram = vec![0u8; PING_SIZE];
        datagram[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let started = Instant::now();
        socket.send(&datagram)?;
        // Skip late answers to earlier pings.
        let answered = loop {
            match socket.recv(&mut buf) {
                Ok(n) if buf[..n] == datagram[..] => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        if i < pings / 10 {
            continue;
        }
        if answered {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        } else {
            lost += 1;
        }
    }
    if samples.is_empty() {
        bail!("no ping came back");
    }
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    Ok((at(0.5), at(0.99), lost))
}

/// Two nodes: B exposes `sink` and `echo` (UDP) to A; A has a `--tunnel-udp` port for each.
struct Tunnel {
    _service: Process,
    _tunnel: Process,
    sink: SocketAddr,
    echo: SocketAddr,
}

fn start_tunnel(
    bin: &Path,
    dir: &Path,
    transport: Transport,
    sink: SocketAddr,
    echo: SocketAddr,
) -> Result<Tunnel> {
    let (service, tunnel, ports) = nodes::start_with(
        bin,
        dir,
        transport,
        "udp",
        &[("sink", sink), ("echo", echo)],
        true,
    )?;
    let [sink, echo] = ports[..] else {
        bail!("the tunnel node printed no two UDP tunnel ports");
    };
    Ok(Tunnel {
        _service: service,
        _tunnel: tunnel,
        sink,
        echo,
    })
}

/// A table's header: `first`, then a column per path.
fn header(out: &mut String, first: &str) {
    let names = PathKind::ALL.map(PathKind::name).join(" | ");
    let _ = writeln!(out, "| {first} | {names} |\n| --- | --- | --- | --- |");
}

/// Runs every measurement over every path and prints the tables (Markdown).
pub(crate) fn run(work: &Path, seconds: f64, pings: usize) -> Result<()> {
    let bin = std::env::current_exe().context("this executable")?;
    let dir = work.join("udp");
    std::fs::create_dir_all(&dir)?;
    let sink = Service::start(false)?;
    let echo = Service::start(true)?;
    let mut sweep: Vec<Vec<Delivery>> = Vec::new();
    let mut wireguard: Vec<Vec<Delivery>> = Vec::new();
    let mut pinged = Vec::new();
    for path in PathKind::ALL {
        eprintln!("measuring {}...", path.name());
        let tunnel = match path {
            PathKind::Raw => None,
            PathKind::Tunnel(transport) => {
                Some(start_tunnel(&bin, &dir, transport, sink.addr, echo.addr)?)
            }
        };
        let (to_sink, to_echo) = tunnel
            .as_ref()
            .map_or((sink.addr, echo.addr), |t| (t.sink, t.echo));
        // The nodes' connection is up and warm before anything is timed (each measurement then
        // sends from a socket of its own: a new session, whose setup is inside its time).
        latency(to_echo, 10).context("a first round trip")?;
        one_way(&sink, to_sink, SWEEP_SIZE, Some(1_000), 0.1)?;
        pinged.push(latency(to_echo, pings)?);
        sweep.push(
            SWEEP_RATES
                .iter()
                .map(|rate| one_way(&sink, to_sink, SWEEP_SIZE, *rate, seconds))
                .collect::<Result<_>>()?,
        );
        wireguard.push(
            WIREGUARD_RATES
                .iter()
                .map(|rate| both_ways(to_echo, WIREGUARD_SIZE, *rate, seconds))
                .collect::<Result<_>>()?,
        );
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Rate sweep: {SWEEP_SIZE}-byte datagrams one way into a sink, {seconds} s per rate: delivered per second (lost %)\n"
    );
    header(&mut out, "offered /s");
    for (i, rate) in SWEEP_RATES.iter().enumerate() {
        let cells: Vec<String> = sweep
            .iter()
            .map(|path| {
                let d = path[i];
                format!("{:.0} ({:.1} %)", d.per_second(), d.loss_percent())
            })
            .collect();
        let offered = match rate {
            Some(r) => r.to_string(),
            None => format!(
                "max ({:.0}, {:.0}, {:.0})",
                sweep[0][i].sent as f64 / seconds,
                sweep[1][i].sent as f64 / seconds,
                sweep[2][i].sent as f64 / seconds
            ),
        };
        let _ = writeln!(out, "| {offered} | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        out,
        "\nLatency: {PING_SIZE}-byte datagrams through an echo, one at a time, {pings} round trips\n"
    );
    let _ = writeln!(
        out,
        "| path | p50 µs | p99 µs | lost |\n| --- | --- | --- | --- |"
    );
    for (path, (p50, p99, lost)) in PathKind::ALL.iter().zip(&pinged) {
        let _ = writeln!(out, "| {} | {p50:.0} | {p99:.0} | {lost} |", path.name());
    }
    let _ = writeln!(
        out,
        "\nWireGuard-shaped: {WIREGUARD_SIZE}-byte datagrams through an echo (the same load both ways), {seconds} s per rate: Mbit/s each way delivered (lost %, both ways together)\n"
    );
    header(&mut out, "offered each way");
    let mbits = |d: Delivery| d.per_second() * (WIREGUARD_SIZE * 8) as f64 / 1e6;
    for (i, rate) in WIREGUARD_RATES.iter().enumerate() {
        let cells: Vec<String> = wireguard
            .iter()
            .map(|path| format!("{:.0} ({:.1} %)", mbits(path[i]), path[i].loss_percent()))
            .collect();
        let offered = match rate {
            Some(r) => format!(
                "{r} /s ({:.0} Mbit/s)",
                *r as f64 * (WIREGUARD_SIZE * 8) as f64 / 1e6
            ),
            None => "as fast as it goes".to_owned(),
        };
        let _ = writeln!(out, "| {offered} | {} |", cells.join(" | "));
    }
    print!("{out}");
    Ok(())
}
