//! One cell of the matrix: a scenario and a transport, run once.
//!
//! 1. Build the network; start echo servers (TCP and UDP) in B's namespace.
//! 2. Create A's and B's identities (`--print-peer-id`), as an operator writing allow lists
//!    would. Start the relay R (public, `--external-address`; it trusts A and B with long
//!    circuits only where the cell cannot punch), then B (exposes the echo services to A alone:
//!    `--allow echo=<A>`, and `echo-udp` likewise) and A (`--tunnel` to B's echo,
//!    `--tunnel-udp` to its UDP echo) together. Neither is told its NAT status: AutoNAT
//!    decides.
//! 3. Wait until B is reachable (relay reservation accepted, or AutoNAT says public) and both
//!    participate (Kademlia bootstrapped, and reachable: a relay slot held or the NAT status
//!    known). Nodes no longer wait for AutoNAT to reserve, so this is well before AutoNAT's
//!    verdict; the tests that check the verdict wait for it.
//! 4. Send bytes through A's tunnel port from inside A's namespace; verify the echo.
//! 5. Let the outcome settle: a direct A–B connection, or DCUtR giving up (B's side counts the
//!    attempts). Send bytes again, then datagrams through the UDP tunnel (one session, its
//!    own stream): their path is the cell's verdict.
//! 6. Read the timings from A's log: first dial → direct connection, relayed → direct, dial
//!    attempts, ping round-trip time.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use patchbay::Device;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    nat,
    peer::{Peer, field, matches},
    topology::{self, Network, Scenario},
};

/// The transport every node of a cell listens on (and so dials and punches with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP + TLS + yamux.
    Tcp,
    /// QUIC v1.
    Quic,
}

impl Transport {
    /// Both transports.
    pub const ALL: [Transport; 2] = [Transport::Tcp, Transport::Quic];

    /// A listen or dial address on this transport.
    pub fn multiaddr(self, ip: &str, port: u16) -> String {
        match self {
            Transport::Tcp => format!("/ip4/{ip}/tcp/{port}"),
            Transport::Quic => format!("/ip4/{ip}/udp/{port}/quic-v1"),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "TCP",
            Transport::Quic => "QUIC",
        })
    }
}

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct CellSpec {
    /// Where A and B sit.
    pub scenario: Scenario,
    /// The transport.
    pub transport: Transport,
    /// One-way delay on each site's WAN (zero for none).
    pub one_way_delay: Duration,
    /// Bytes sent through the tunnel each time.
    pub payload: usize,
    /// The relay trusts A and B (`--trust`), so their circuits are long enough to carry
    /// tunnels. Without it the relay gives them short circuits, which only punch holes.
    pub relay_trusts_peers: bool,
}

impl CellSpec {
    /// A spec with no delay and a 1 MiB payload. The relay trusts A and B only where the NATs
    /// cannot be punched: a punchable cell must go direct through a relay that lends strangers
    /// nothing but short circuits.
    pub fn new(scenario: Scenario, transport: Transport) -> Self {
        Self {
            scenario,
            transport,
            one_way_delay: Duration::ZERO,
            payload: 1 << 20,
            relay_trusts_peers: !scenario.expect_direct(transport),
        }
    }

    /// A file-name-friendly label.
    pub fn slug(&self) -> String {
        let scenario = self.scenario.to_string().replace(' ', "-").to_lowercase();
        format!("{scenario}-{}", self.transport.to_string().to_lowercase())
    }
}

/// Direct or relayed, as the lab reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathTaken {
    /// A direct connection carried it.
    Direct,
    /// The relay carried it.
    Relayed,
}

impl std::fmt::Display for PathTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathTaken::Direct => "direct",
            PathTaken::Relayed => "relayed",
        })
    }
}

/// How the first direct A–B connection came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectVia {
    /// Punched through an introduction: B dialled A the moment B's relay told it to, while A
    /// dialled B's observed address.
    Introduction,
    /// DCUtR punched it after a relayed connection.
    HolePunch,
    /// A birthday punch found a port of B's symmetric NAT (or A's), over QUIC.
    Birthday,
    /// B dialled A after a relayed connection (connection reversal: A is public).
    Reversal,
    /// A dialled B directly (B is public, or on the same LAN).
    Dial,
    /// B had already dialled A for other reasons (A is a public DHT server, mDNS).
    PeerDialled,
}

impl std::fmt::Display for DirectVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DirectVia::Introduction => "introduction",
            DirectVia::Birthday => "birthday punch",
            DirectVia::HolePunch => "DCUtR",
            DirectVia::Reversal => "reversal",
            DirectVia::Dial => "dial",
            DirectVia::PeerDialled => "peer dialled",
        })
    }
}

/// What one run of a cell showed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellResult {
    /// Where A and B sat.
    pub scenario: Scenario,
    /// The transport.
    pub transport: Transport,
    /// One-way delay per site, in ms.
    pub one_way_delay_ms: u64,
    /// The path the matrix expects.
    pub expected: PathTaken,
    /// Bytes echoed back intact (both round trips).
    pub bytes_verified: u64,
    /// Datagrams echoed back intact through the UDP tunnel.
    #[serde(default)]
    pub datagrams_verified: u64,
    /// Path of the first tunnel connection.
    pub first_path: PathTaken,
    /// Path of the tunnel connection made once the outcome settled: the verdict.
    pub final_path: PathTaken,
    /// A direct A–B connection was established.
    pub direct: bool,
    /// How the first direct connection came about.
    pub direct_via: Option<DirectVia>,
    /// A's first dial of B → the first direct connection, ms.
    pub time_to_direct_ms: Option<u64>,
    /// A's first relayed connection to B → the first direct connection, ms (absent when A
    /// reached B directly from the start).
    pub relayed_to_direct_ms: Option<u64>,
    /// Direct dial attempts A made to B.
    pub attempts: Option<u32>,
    /// Probes the easy side of a birthday punch sent before one got through (the punch that
    /// went direct).
    #[serde(default)]
    pub birthday_probes: Option<u64>,
    /// Smallest ping round trip between A and B, ms.
    pub rtt_ms: Option<f64>,
    /// DCUtR gave up (B's side).
    pub hole_punch_failed: bool,
    /// A's NAT status as AutoNAT learned it.
    pub nat_a: Option<String>,
    /// B's NAT status as AutoNAT learned it.
    pub nat_b: Option<String>,
    /// A found B through mDNS.
    pub mdns_discovered: bool,
    /// Wall time of the whole cell, ms.
    pub duration_ms: u64,
    /// Where the nodes' logs are.
    pub log_dir: PathBuf,
}

impl CellResult {
    /// Whether the run met the matrix's expectation for the cell.
    pub fn met(&self) -> bool {
        self.bytes_verified > 0
            && self.datagrams_verified > 0
            && self.final_path == self.expected
            && self.direct == (self.expected == PathTaken::Direct)
    }

    /// `time_to_direct` in round trips of the measured ping time (or of twice the configured
    /// one-way delay when no ping was recorded).
    pub fn round_trips(&self) -> Option<f64> {
        let rtt = self.rtt_ms.filter(|r| *r > 0.0).or_else(|| {
            (self.one_way_delay_ms > 0).then_some(2.0 * self.one_way_delay_ms as f64)
        })?;
        Some(self.time_to_direct_ms? as f64 / rtt)
    }
}

/// A cell whose nodes are running.
#[derive(Debug)]
pub struct Cell {
    /// What is being run.
    pub spec: CellSpec,
    /// The network (dropped last).
    pub net: Network,
    /// The public relay.
    pub relay: Peer,
    /// The tunnel client.
    pub a: Peer,
    /// The service side.
    pub b: Peer,
    /// Where logs go.
    pub dir: PathBuf,
    started: Instant,
    bytes_verified: u64,
    datagrams_verified: u64,
    /// B's echo through a port forward, once [`Cell::raw_round_trip`] set it up.
    raw_echo: Option<SocketAddr>,
}

/// The datagrams each cell sends through its UDP tunnel: one byte, a WireGuard packet, a
/// jumbo one, and the largest there is.
pub const UDP_SIZES: [usize; 4] = [1, 1_420, 9_000, 65_507];

/// The port forwarded on B's router for [`Cell::raw_round_trip`].
const RAW_PORT: u16 = 18_000;

/// How long a node may take to become ready (AutoNAT needs a dial-back to time out).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the outcome may take to settle (DCUtR makes three attempts, each up to a dial
/// timeout).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(75);

impl Cell {
    /// Builds the network and starts the nodes (steps 1–3).
    pub async fn start(spec: CellSpec, bin: &Path, logs: &Path) -> Result<Cell> {
        let started = Instant::now();
        let dir = logs.join(spec.slug());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let delay = (!spec.one_way_delay.is_zero()).then_some(spec.one_way_delay);
        let net = topology::build(spec.scenario, delay).await?;
        let echo = start_echo(&net.b).await?;
        let udp_echo = start_udp_echo(&net.b).await?;
        let mdns = spec.scenario == Scenario::SameNat;
        let relay_ip = net.relay_ip()?.to_string();
        let t = spec.transport;
        let a_id = print_peer_id(bin, &dir, "peer-a")?;
        let b_id = print_peer_id(bin, &dir, "peer-b")?;

        let trusted = if spec.relay_trusts_peers {
            vec![a_id.clone(), b_id]
        } else {
            Vec::new()
        };
        let relay_args = relay_args(t, &relay_ip, &trusted);
        let relay = Peer::start(&net.relay, bin, "relay", &dir, relay_args).await?;
        let bootstrap = format!("{}/p2p/{}", t.multiaddr(&relay_ip, 4001), relay.peer_id);
        let common = |extra: Vec<String>| {
            let mut args = vec![
                "--listen".to_owned(),
                t.multiaddr("0.0.0.0", 0),
                "--bootstrap".to_owned(),
                bootstrap.clone(),
                "--autonat-private-ips".to_owned(),
            ];
            if !mdns {
                args.push("--no-mdns".to_owned());
            }
            args.extend(extra);
            args
        };
        let b = Peer::start(
            &net.b,
            bin,
            "peer-b",
            &dir,
            common(vec![
                "--expose".into(),
                format!("echo=127.0.0.1:{echo}"),
                "--allow".into(),
                format!("echo={a_id}"),
                "--expose-udp".into(),
                format!("echo-udp=127.0.0.1:{udp_echo}"),
                "--allow".into(),
                format!("echo-udp={a_id}"),
            ]),
        )
        .await?;
        let a = Peer::start(
            &net.a,
            bin,
            "peer-a",
            &dir,
            common(vec![
                "--tunnel".into(),
                format!("{}:echo@127.0.0.1:0", b.peer_id),
                "--tunnel-udp".into(),
                format!("{}:echo-udp@127.0.0.1:0", b.peer_id),
            ]),
        )
        .await?;

        let cell = Cell {
            spec,
            net,
            relay,
            a,
            b,
            dir,
            started,
            bytes_verified: 0,
            datagrams_verified: 0,
            raw_echo: None,
        };
        cell.wait_reachable_b().await?;
        for peer in [&cell.a, &cell.b] {
            peer.wait_for_message(
                READY_TIMEOUT,
                "phase transition",
                &[("to", "Participating")],
            )
            .await?;
        }
        Ok(cell)
    }

    /// B is reachable: it holds a relay reservation, or AutoNAT found it public; and its peer
    /// record has been stored in the DHT since.
    async fn wait_reachable_b(&self) -> Result<()> {
        let reachable = |e: &Value| {
            matches(e, "relay reservation accepted", &[])
                || matches(e, "nat status changed", &[("to", "Public")])
        };
        self.b
            .wait_for(
                READY_TIMEOUT,
                "a relay reservation or a public address",
                reachable,
            )
            .await?;
        // The first record published after that must be the one stored: an earlier put (no
        // circuit address yet) can finish later and would send A down the wrong path.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let events = self.b.events();
            let since = events.iter().position(reachable).unwrap_or(0);
            let seq = events[since..]
                .iter()
                .find(|e| matches(e, "published peer record", &[]))
                .and_then(|e| e.get("seq").and_then(Value::as_u64));
            let stored = seq.is_some_and(|seq| {
                events.iter().any(|e| {
                    matches(e, "peer record stored", &[])
                        && e.get("seq")
                            .and_then(Value::as_u64)
                            .is_some_and(|s| s >= seq)
                })
            });
            if stored {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("peer-b never stored its record in the DHT after becoming reachable");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends `len` bytes through A's tunnel from inside A's namespace and checks the echo.
    pub async fn round_trip(&mut self, len: usize, seed: u64) -> Result<Duration> {
        let addr = *self
            .a
            .tunnel_addrs
            .first()
            .context("peer-a has no tunnel")?;
        let took = echo_from(&self.net.a, addr, payload(len, seed)).await?;
        self.bytes_verified += len as u64;
        Ok(took)
    }

    /// Sends datagrams of `sizes` (1 to 65,507 bytes) through A's UDP tunnel from inside A's
    /// namespace, one at a time, and checks each comes back whole; returns the time for all.
    pub async fn udp_round_trip(&mut self, sizes: &[usize], seed: u64) -> Result<Duration> {
        let addr = *self
            .a
            .udp_tunnel_addrs
            .first()
            .context("peer-a has no UDP tunnel")?;
        let datagrams: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, len)| payload(*len, seed + i as u64))
            .collect();
        let took = udp_echo_from(&self.net.a, addr, datagrams).await?;
        self.datagrams_verified += sizes.len() as u64;
        Ok(took)
    }

    /// The same echo as [`Cell::round_trip`] over plain TCP, without Punchgate: from A's
    /// namespace to a port forward on B's router (set up on the first call), across the same
    /// routers and delays as the tunnel's direct path. Only for [`Scenario::Pair`].
    pub async fn raw_round_trip(&mut self, len: usize, seed: u64) -> Result<Duration> {
        let addr = match self.raw_echo {
            Some(addr) => addr,
            None => {
                let Scenario::Pair { .. } = self.spec.scenario else {
                    bail!("a port forward needs B behind its own router");
                };
                let router = self.net.routers.get(2).context("B's router")?;
                let wan_ip = router
                    .uplink_ip()
                    .context("B's router has no WAN address")?;
                let b_ip = self.net.b.ip().context("B has no address")?;
                let port = start_echo_on(&self.net.b, Ipv4Addr::UNSPECIFIED).await?;
                nat::port_forward(router, RAW_PORT, SocketAddrV4::new(b_ip, port))?;
                let addr = SocketAddr::from((wan_ip, RAW_PORT));
                self.raw_echo = Some(addr);
                addr
            }
        };
        echo_from(&self.net.a, addr, payload(len, seed)).await
    }

    /// Paths of A's tunnel connections so far, oldest first.
    pub fn tunnel_paths(&self) -> Vec<PathTaken> {
        self.a
            .events()
            .iter()
            .filter(|e| matches(e, "tunnel path", &[("peer", &self.b.peer_id)]))
            .map(|e| match field(e, "path").as_deref() {
                Some("direct") => PathTaken::Direct,
                _ => PathTaken::Relayed,
            })
            .collect()
    }

    /// A's "direct connection established" event for B, if any.
    pub fn direct_event(&self) -> Option<Value> {
        self.a.events().into_iter().find(|e| {
            matches(
                e,
                "direct connection established",
                &[("peer", &self.b.peer_id)],
            )
        })
    }

    /// Waits until A is directly connected to B, or B's DCUtR gave up on A (step 5).
    pub async fn settle(&self) -> Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if self.direct_event().is_some() || self.punch_failed() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "neither a direct connection nor a failed hole punch within {SETTLE_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn punch_failed(&self) -> bool {
        let failed = "hole punch failed, tunnels to this peer use the relay";
        self.b
            .events()
            .iter()
            .any(|e| matches(e, failed, &[("remote_peer", &self.a.peer_id)]))
            || self
                .a
                .events()
                .iter()
                .any(|e| matches(e, failed, &[("remote_peer", &self.b.peer_id)]))
    }

    /// Runs the standard sequence (steps 4–6) and stops the nodes.
    pub async fn run(mut self) -> Result<CellResult> {
        self.round_trip(self.spec.payload, 1).await?;
        self.settle().await?;
        self.round_trip(self.spec.payload, 2).await?;
        self.udp_round_trip(&UDP_SIZES, 3).await?;
        // Progress people can see: A said its tunnel was ready, and over which path.
        self.a
            .wait_for(READY_TIMEOUT, "tunnel ready", |e| {
                e.get("message")
                    .and_then(Value::as_str)
                    .is_some_and(|m| m.starts_with("tunnel ready"))
                    && field(e, "peer").as_deref() == Some(self.b.peer_id.as_str())
            })
            .await?;
        let result = self.result()?;
        self.stop();
        Ok(result)
    }

    /// What the run showed so far.
    pub fn result(&self) -> Result<CellResult> {
        let paths = self.tunnel_paths();
        let (Some(first), Some(last)) = (paths.first(), paths.last()) else {
            bail!("peer-a logged no tunnel path");
        };
        let a_events = self.a.events();
        let b_events = self.b.events();
        let direct = self.direct_event();
        let number = |e: &Value, k: &str| e.get(k).and_then(Value::as_u64);
        let rtt_ms = a_events
            .iter()
            .filter(|e| matches(e, "ping", &[("peer", &self.b.peer_id)]))
            .filter_map(|e| e.get("rtt_ms").and_then(Value::as_f64))
            .reduce(f64::min);
        let nat = |events: &[Value]| {
            events
                .iter()
                .rev()
                .find(|e| matches(e, "nat status changed", &[]))
                .and_then(|e| field(e, "to"))
        };
        let direct_via = direct.as_ref().map(|e| {
            let connection = field(e, "connection").unwrap_or_default();
            let by_dcutr = a_events.iter().any(|d| {
                matches(
                    d,
                    "hole punch succeeded",
                    &[
                        ("remote_peer", &self.b.peer_id),
                        ("connection", &connection),
                    ],
                )
            });
            let introduced = b_events
                .iter()
                .any(|d| matches(d, "introduced: dialing", &[("peer", &self.a.peer_id)]));
            // The first direct connection is the punched one if it runs to the address the
            // punch found.
            let addr = field(e, "addr").unwrap_or_default();
            let birthday = a_events.iter().any(|d| {
                matches(
                    d,
                    "birthday punch went direct: QUIC through the ports the probes found",
                    &[("peer", &self.b.peer_id)],
                ) && field(d, "remote")
                    .and_then(|r| r.parse::<std::net::SocketAddr>().ok())
                    .is_some_and(|r| {
                        addr.starts_with(&format!("/ip4/{}/udp/{}/", r.ip(), r.port()))
                    })
            });
            let relayed_before = e.get("relayed_before").and_then(Value::as_bool) == Some(true);
            let outbound = e.get("outbound").and_then(Value::as_bool) == Some(true);
            if by_dcutr {
                DirectVia::HolePunch
            } else if birthday {
                DirectVia::Birthday
            } else if introduced {
                DirectVia::Introduction
            } else if outbound {
                DirectVia::Dial
            } else if relayed_before {
                DirectVia::Reversal
            } else {
                DirectVia::PeerDialled
            }
        });
        let mdns_discovered = a_events.iter().any(|e| {
            matches(e, "mdns discovered", &[])
                && field(e, "peers").is_some_and(|p| p.contains(&self.b.peer_id))
        });
        Ok(CellResult {
            scenario: self.spec.scenario,
            transport: self.spec.transport,
            one_way_delay_ms: self.spec.one_way_delay.as_millis() as u64,
            expected: if self.spec.scenario.expect_direct(self.spec.transport) {
                PathTaken::Direct
            } else {
                PathTaken::Relayed
            },
            bytes_verified: self.bytes_verified,
            datagrams_verified: self.datagrams_verified,
            first_path: *first,
            final_path: *last,
            direct: direct.is_some(),
            direct_via,
            time_to_direct_ms: direct
                .as_ref()
                .and_then(|e| number(e, "since_first_contact_ms")),
            relayed_to_direct_ms: direct
                .as_ref()
                .filter(|e| e.get("relayed_before").and_then(Value::as_bool) == Some(true))
                .and_then(|e| number(e, "since_relayed_ms")),
            attempts: direct
                .as_ref()
                .and_then(|e| number(e, "attempts"))
                .map(|n| n as u32),
            birthday_probes: a_events
                .iter()
                .chain(b_events.iter())
                .find(|e| {
                    matches(
                        e,
                        "birthday punch went direct: QUIC through the ports the probes found",
                        &[("role", "Easy")],
                    )
                })
                .and_then(|e| number(e, "probes")),
            rtt_ms,
            hole_punch_failed: self.punch_failed(),
            nat_a: nat(&a_events),
            nat_b: nat(&b_events),
            mdns_discovered,
            duration_ms: self.started.elapsed().as_millis() as u64,
            log_dir: self.dir.clone(),
        })
    }

    /// Stops every node (SIGTERM) and tears the network down.
    pub fn stop(mut self) {
        for peer in [&mut self.a, &mut self.b, &mut self.relay] {
            if peer.pid().is_some()
                && let Err(error) = peer.terminate()
            {
                tracing::warn!(peer = %peer.name, %error, "stop");
            }
        }
    }
}

/// Runs one cell from start to finish.
pub async fn run(spec: CellSpec, bin: &Path, logs: &Path) -> Result<CellResult> {
    Cell::start(spec, bin, logs).await?.run().await
}

/// The public relay's flags: listen on port 4001 of `transport`, known to be reachable at
/// `ip` (so it relays and serves the DHT from the start), long circuits for `trusted` peers.
pub fn relay_args(transport: Transport, ip: &str, trusted: &[String]) -> Vec<String> {
    let mut args = vec![
        "--listen".into(),
        transport.multiaddr("0.0.0.0", 4001),
        "--external-address".into(),
        transport.multiaddr(ip, 4001),
        "--no-mdns".into(),
        "--autonat-private-ips".into(),
    ];
    for peer in trusted {
        args.extend(["--trust".into(), peer.clone()]);
    }
    args
}

/// A TCP echo server on 127.0.0.1 inside `device`'s namespace; returns its port.
pub async fn start_echo(device: &Device) -> Result<u16> {
    start_echo_on(device, Ipv4Addr::LOCALHOST).await
}

/// A TCP echo server on `ip` inside `device`'s namespace; returns its port.
pub async fn start_echo_on(device: &Device, ip: Ipv4Addr) -> Result<u16> {
    let (port_tx, port_rx) = tokio::sync::oneshot::channel();
    device.spawn(async move |_| {
        let listener = match tokio::net::TcpListener::bind((ip, 0)).await {
            Ok(l) => l,
            Err(e) => {
                let _ = port_tx.send(Err(e));
                return;
            }
        };
        let _ = port_tx.send(listener.local_addr().map(|a| a.port()));
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    })?;
    Ok(port_rx.await.context("echo server task ended")??)
}

/// Connects to `addr` from inside `device`'s namespace, sends `data`, half-closes, and checks
/// that the same bytes come back.
pub async fn echo_from(device: &Device, addr: SocketAddr, data: Vec<u8>) -> Result<Duration> {
    let task = device.spawn(async move |_| -> Result<Duration> {
        let started = Instant::now();
        let mut socket = tokio::net::TcpStream::connect(addr).await?;
        let (mut r, mut w) = socket.split();
        let send = async {
            w.write_all(&data).await?;
            w.shutdown().await
        };
        let receive = async {
            let mut back = Vec::with_capacity(data.len());
            r.read_to_end(&mut back).await.map(|_| back)
        };
        let (sent, back) = tokio::join!(send, receive);
        sent.context("send through the tunnel")?;
        let back = back.context("read the echo")?;
        if back != data {
            bail!(
                "echo mismatch: sent {} bytes, got {} back",
                data.len(),
                back.len()
            );
        }
        Ok(started.elapsed())
    })?;
    tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .context("tunnel round trip took over 120 s")?
        .context("client task")?
}

/// A UDP echo server on 127.0.0.1 inside `device`'s namespace (each datagram goes back to its
/// sender); returns its port.
pub async fn start_udp_echo(device: &Device) -> Result<u16> {
    let (port_tx, port_rx) = tokio::sync::oneshot::channel();
    device.spawn(async move |_| {
        let socket = match tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await {
            Ok(s) => s,
            Err(e) => {
                let _ = port_tx.send(Err(e));
                return;
            }
        };
        let _ = port_tx.send(socket.local_addr().map(|a| a.port()));
        let mut buf = vec![0; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    })?;
    Ok(port_rx.await.context("udp echo server task ended")??)
}

/// Sends each of `datagrams` to `addr` from one socket inside `device`'s namespace, one at a
/// time, until it comes back whole (a second apart, five tries: UDP may lose one; a tunnel must
/// not cut, merge or mix them).
pub async fn udp_echo_from(
    device: &Device,
    addr: SocketAddr,
    datagrams: Vec<Vec<u8>>,
) -> Result<Duration> {
    let task = device.spawn(async move |_| -> Result<Duration> {
        let started = Instant::now();
        let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let mut buf = vec![0; 65_536];
        for datagram in &datagrams {
            let mut tries = 0;
            'send: loop {
                tries += 1;
                if tries > 5 {
                    bail!(
                        "no echo of a {}-byte datagram after 5 tries",
                        datagram.len()
                    );
                }
                socket
                    .send_to(datagram, addr)
                    .await
                    .context("send through the UDP tunnel")?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                loop {
                    let Ok(received) =
                        tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
                    else {
                        continue 'send;
                    };
                    let (n, _) = received.context("receive the UDP echo")?;
                    if buf[..n] == datagram[..] {
                        break 'send;
                    }
                    // A late echo of the previous datagram is fine; anything else is not.
                    if !datagrams.iter().any(|d| d[..] == buf[..n]) {
                        bail!(
                            "UDP echo mismatch: sent {} bytes, got {n} that were never sent",
                            datagram.len()
                        );
                    }
                }
            }
        }
        Ok(started.elapsed())
    })?;
    tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .context("UDP tunnel round trips took over 120 s")?
        .context("client task")?
}

/// Creates `dir/<name>.key` (the identity [`Peer::start`] gives the node `name`) and returns
/// its peer id, as `punchgate --print-peer-id` does for an operator writing allow lists.
pub fn print_peer_id(bin: &Path, dir: &Path, name: &str) -> Result<String> {
    let key = dir.join(format!("{name}.key"));
    let out = std::process::Command::new(bin)
        .arg("node")
        .arg("--identity")
        .arg(&key)
        .arg("--print-peer-id")
        .output()
        .with_context(|| format!("run {} node --print-peer-id", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} node --print-peer-id failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if id.is_empty() {
        bail!("{} node --print-peer-id printed nothing", bin.display());
    }
    Ok(id)
}

/// Deterministic pseudo-random bytes.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
