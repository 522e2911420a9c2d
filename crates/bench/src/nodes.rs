//! Two real `punchgate` processes (this executable run as `node`), one exposing the services,
//! one offering tunnel ports in front of them, connected over TCP or QUIC on loopback.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The transport between the two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// TCP + TLS + yamux.
    Tcp,
    /// QUIC.
    Quic,
}

impl Transport {
    fn listen(self) -> &'static str {
        match self {
            Transport::Tcp => "/ip4/127.0.0.1/tcp/0",
            Transport::Quic => "/ip4/127.0.0.1/udp/0/quic-v1",
        }
    }
}

/// A child process of the benchmark: a node, a forwarder or a gRPC server. Killed when dropped;
/// its stdin is a pipe from us, so the forwarders and gRPC servers (which wait on stdin) also
/// exit if the benchmark dies first.
#[derive(Debug)]
pub(crate) struct Process {
    child: Child,
    /// Its printed stdout lines.
    pub(crate) lines: Vec<String>,
}

impl Process {
    /// Spawns `command` (stdout piped, stderr to `<dir>/<name>.log`) and reads its stdout until
    /// `ready(lines)`.
    pub(crate) fn start(
        mut command: Command,
        dir: &Path,
        name: &str,
        ready: impl Fn(&[String]) -> bool,
    ) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        // Owned from here, so a child that never gets ready is killed too.
        let mut process = Self {
            child,
            lines: Vec::new(),
        };
        let stdout = process.child.stdout.take().context("stdout")?;
        process.lines = read_until(stdout, Duration::from_secs(30), ready)
            .with_context(|| format!("{name} did not start: see {}", log.display()))?;
        Ok(process)
    }

    fn node(
        bin: &Path,
        dir: &Path,
        name: &str,
        args: &[String],
        expect_tunnels: usize,
    ) -> Result<Self> {
        let mut command = Command::new(bin);
        command
            .arg("node")
            .arg("--identity")
            .arg(dir.join(format!("{name}.key")))
            .args(["--no-mdns", "--no-upnp", "--log-format", "json"])
            .args(args)
            .env("RUST_LOG", "warn");
        Self::start(command, dir, name, |lines| {
            lines
                .iter()
                .filter(|l| l.contains("tunnel listening on"))
                .count()
                >= expect_tunnels
                && lines.iter().any(|l| l.starts_with("listening on"))
        })
    }

    /// Resident memory in KiB.
    pub(crate) fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }

    /// CPU time used so far, user + system, all threads, in seconds.
    pub(crate) fn cpu_seconds(&self) -> Result<f64> {
        cpu_seconds(&self.child.id().to_string())
    }

    pub(crate) fn listen_addr(&self) -> Option<String> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix("listening on").map(|a| a.trim().to_owned()))
    }

    /// Its tunnel ports (TCP and UDP), in the order printed.
    fn tunnels(&self) -> Vec<SocketAddr> {
        self.lines
            .iter()
            .filter_map(|l| l.split_once("tunnel listening on ").map(|(_, a)| a))
            .filter_map(|a| a.parse().ok())
            .collect()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The service side (B) and the tunnel side (A).
#[derive(Debug)]
pub(crate) struct Pair {
    /// Exposes `echo` and `sink`.
    pub(crate) service: Process,
    /// Tunnels to them.
    pub(crate) tunnel: Process,
    /// A's tunnel port for the echo.
    pub(crate) echo: SocketAddr,
    /// A's tunnel port for the sink.
    pub(crate) sink: SocketAddr,
}

/// Starts B exposing `echo` and `sink`, and A tunnelling to both, over `transport`.
pub(crate) fn start(
    bin: &Path,
    dir: &Path,
    transport: Transport,
    echo: SocketAddr,
    sink: SocketAddr,
) -> Result<Pair> {
    let (service, tunnel, ports) = start_with(
        bin,
        dir,
        transport,
        "",
        &[("echo", echo), ("sink", sink)],
        false,
    )?;
    let [echo, sink] = ports[..] else {
        bail!("the tunnel node printed no two tunnel ports");
    };
    Ok(Pair {
        echo,
        sink,
        service,
        tunnel,
    })
}

/// Starts B exposing `services` (TCP, or UDP if `udp`), allowed to A alone, and A with a tunnel
/// port to each, over `transport`; returns B, A and A's ports in the order of `services`.
/// `tag` sets these nodes' names (and keys) apart from others of the same run.
pub(crate) fn start_with(
    bin: &Path,
    dir: &Path,
    transport: Transport,
    tag: &str,
    services: &[(&str, SocketAddr)],
    udp: bool,
) -> Result<(Process, Process, Vec<SocketAddr>)> {
    let label = match transport {
        Transport::Tcp => "tcp",
        Transport::Quic => "quic",
    };
    let tag = if tag.is_empty() {
        label.to_owned()
    } else {
        format!("{tag}-{label}")
    };
    let (expose, tunnel_flag) = if udp {
        ("--expose-udp", "--tunnel-udp")
    } else {
        ("--expose", "--tunnel")
    };
    let tunnel_name = format!("tunnel-{tag}");
    let mut service_args = vec!["--listen".into(), transport.listen().into()];
    for (name, addr) in services {
        service_args.extend([expose.into(), format!("{name}={addr}")]);
    }
    // The service node allows the tunnel node only, as a deployment would. A build from before
    // allow lists (`--against`) has no --print-peer-id and needs no rule.
    if let Some(id) = print_peer_id(bin, dir, &tunnel_name) {
        for (name, _) in services {
            service_args.extend(["--allow".into(), format!("{name}={id}")]);
        }
    }
    let service = Process::node(bin, dir, &format!("service-{tag}"), &service_args, 0)?;
    let bootstrap = service.listen_addr().context("service node address")?;
    let peer = bootstrap.rsplit('/').next().context("peer id")?.to_owned();
    let mut tunnel_args = vec![
        "--listen".into(),
        transport.listen().into(),
        "--bootstrap".into(),
        bootstrap,
    ];
    for (name, _) in services {
        tunnel_args.extend([tunnel_flag.into(), format!("{peer}:{name}@127.0.0.1:0")]);
    }
    let tunnel = Process::node(bin, dir, &tunnel_name, &tunnel_args, services.len())?;
    let ports = tunnel.tunnels();
    Ok((service, tunnel, ports))
}

/// The peer id of node `name`'s identity in `dir` (created if missing), from
/// `bin node --print-peer-id`; `None` for a build without that flag.
fn print_peer_id(bin: &Path, dir: &Path, name: &str) -> Option<String> {
    let out = Command::new(bin)
        .arg("node")
        .arg("--identity")
        .arg(dir.join(format!("{name}.key")))
        .arg("--print-peer-id")
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && id.starts_with("12D3")).then_some(id)
}

/// Reads a child's stdout lines until `done(lines)`, for at most `within`. The blocking reads
/// run on their own thread, so a child that hangs without printing cannot hang the benchmark.
pub(crate) fn read_until(
    stdout: std::process::ChildStdout,
    within: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Result<Vec<String>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + within;
    let mut lines = Vec::new();
    while !done(&lines) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(line)) => lines.push(line),
            Ok(Err(error)) => bail!("reading its output: {error}"),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => bail!("nothing within {within:?}"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => bail!("it exited"),
        }
    }
    Ok(lines)
}

/// CPU time process `pid` (or `self`) used so far, user + system, all threads, in seconds
/// (`/proc/<pid>/stat`, in clock ticks of 1/100 s: Linux's `USER_HZ` on every architecture we
/// run on).
pub(crate) fn cpu_seconds(pid: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces): state is
    // the first, utime the 12th, stime the 13th.
    let after = stat.rsplit_once(')').context("no command name")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields.get(i).context("short stat")?.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}
