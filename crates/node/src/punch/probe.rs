//! The UDP side of a birthday punch: the hard side's many sockets, and the easy side's paced
//! probes. Plain UDP, paced and bounded: [`Budget`] says how many packets, at what rate.
//!
//! A probe is 14 bytes: [`MAGIC`], the punch's token (8 bytes, chosen by the hard side and sent
//! over the authenticated stream, so a stranger cannot fake a hit), and the port it was sent
//! to (2 bytes, so the hard side learns which of its public ports was found).

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use tokio::{net::UdpSocket, sync::mpsc, task::JoinSet};

/// The first bytes of every packet a punch sends.
pub const MAGIC: [u8; 4] = *b"PGBP";
/// A probe's length.
pub const PROBE_LEN: usize = 14;
/// The longest a side waits on the other's pace, whatever budget it announces.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The lowest port probed (below it, ports are rarely handed out by NATs).
pub const LOWEST_PORT: u16 = 1024;

/// How many packets a punch may send, and how fast. Each side sends its own in the hello or
/// plan, so the other can time its waits on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Budget {
    /// Sockets the hard side opens (one packet each to open its mapping).
    pub sockets: u16,
    /// Probes the easy side sends at most.
    pub probes: u32,
    /// Packets per second, on either side.
    pub rate: u32,
}

impl Budget {
    /// The pause between two packets.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(1) / self.rate.max(1)
    }

    /// How long the hard side takes to open its sockets, at most [`MAX_WAIT`].
    pub fn opening_time(&self) -> Duration {
        (self.interval() * u32::from(self.sockets)).min(MAX_WAIT)
    }

    /// How long the easy side's probes take at most, at most [`MAX_WAIT`].
    pub fn probing_time(&self) -> Duration {
        (self.interval() * self.probes).min(MAX_WAIT)
    }
}

/// A probe's bytes.
pub fn probe(token: u64, port: u16) -> [u8; PROBE_LEN] {
    let mut p = [0u8; PROBE_LEN];
    p[..4].copy_from_slice(&MAGIC);
    p[4..12].copy_from_slice(&token.to_be_bytes());
    p[12..].copy_from_slice(&port.to_be_bytes());
    p
}

/// The port a probe names, if `packet` is a probe with `token`.
pub fn parse_probe(packet: &[u8], token: u64) -> Option<u16> {
    if packet.len() != PROBE_LEN || packet[..4] != MAGIC || packet[4..12] != token.to_be_bytes() {
        return None;
    }
    Some(u16::from_be_bytes([packet[12], packet[13]]))
}

/// The hard side's sockets, each with a mapping open towards the easy side.
pub struct HardSockets {
    tasks: JoinSet<()>,
    hits: mpsc::Receiver<Hit>,
    /// Local ports, by socket index.
    pub ports: Vec<u16>,
}

/// A probe that got through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The local port of the socket it reached.
    pub local_port: u16,
    /// Our public port it was sent to.
    pub public_port: u16,
    /// Where it came from (the easy side's public address).
    pub from: SocketAddr,
}

impl std::fmt::Debug for HardSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HardSockets")
            .field("ports", &self.ports.len())
            .finish_non_exhaustive()
    }
}

impl HardSockets {
    /// Opens `budget.sockets` sockets and sends one packet from each to `easy` (paced), so
    /// that each has a mapping towards it. Probes carrying `token` are reported as hits.
    pub async fn open(easy: SocketAddr, budget: Budget, token: u64) -> std::io::Result<Self> {
        let (tx, hits) = mpsc::channel(4);
        let mut tasks = JoinSet::new();
        let mut ports = Vec::with_capacity(usize::from(budget.sockets));
        let mut pace = tokio::time::interval(budget.interval());
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let opener = probe(token, 0);
        for _ in 0..budget.sockets {
            pace.tick().await;
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
            let local_port = socket.local_addr()?.port();
            // A send can fail (no route yet, a full buffer): the mapping is then missing, one
            // socket fewer; not a reason to stop.
            let _ = socket.send_to(&opener, easy).await;
            ports.push(local_port);
            let tx = tx.clone();
            tasks.spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                        return;
                    };
                    if from.ip() != easy.ip() {
                        continue;
                    }
                    if let Some(public_port) = parse_probe(&buf[..n], token) {
                        let _ = tx
                            .send(Hit {
                                local_port,
                                public_port,
                                from,
                            })
                            .await;
                        return;
                    }
                }
            });
        }
        Ok(Self { tasks, hits, ports })
    }

    /// The first hit within `wait`. Every socket is closed when this returns, so the winning
    /// port is free to bind again.
    pub async fn first_hit(mut self, wait: Duration) -> Option<Hit> {
        let hit = tokio::time::timeout(wait, self.hits.recv())
            .await
            .ok()
            .flatten();
        self.tasks.shutdown().await;
        hit
    }
}

/// Sends probes from `socket` to random ports of `hard_ip`, each port once, paced by `budget`,
/// until `budget.probes` are sent or `stop` fires. Returns how many were sent.
pub async fn probe_ports(
    socket: &UdpSocket,
    hard_ip: std::net::IpAddr,
    token: u64,
    budget: Budget,
    mut stop: impl std::future::Future<Output = ()> + Unpin,
) -> u32 {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::from_rng(&mut rand::rng());
    let mut tried = HashSet::with_capacity(budget.probes as usize);
    let span = u32::from(u16::MAX - LOWEST_PORT) + 1;
    let probes = budget.probes.min(span);
    let mut pace = tokio::time::interval(budget.interval());
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0;
    while sent < probes {
        tokio::select! {
            biased;
            () = &mut stop => break,
            _ = pace.tick() => {}
        }
        let port = loop {
            let p = rng.random_range(LOWEST_PORT..=u16::MAX);
            if tried.insert(p) {
                break p;
            }
        };
        let _ = socket
            .send_to(&probe(token, port), SocketAddr::new(hard_ip, port))
            .await;
        sent += 1;
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_carry_the_token_and_the_port() {
        let p = probe(0xfeed, 40000);
        assert_eq!(parse_probe(&p, 0xfeed), Some(40000));
        assert_eq!(parse_probe(&p, 0xbeef), None);
        assert_eq!(parse_probe(&p[..13], 0xfeed), None);
        assert_eq!(parse_probe(b"PGBX0000000000", 0), None);
    }

    #[test]
    fn the_rate_sets_the_pace() {
        let b = Budget {
            sockets: 256,
            probes: 2048,
            rate: 1000,
        };
        assert_eq!(b.interval(), Duration::from_millis(1));
        assert_eq!(b.probing_time(), Duration::from_millis(2048));
    }

    /// On loopback, every port is "mapped": the easy side's probes reach the hard side's sockets
    /// once one lands on a port they hold.
    #[tokio::test]
    async fn a_probe_on_an_open_port_is_a_hit() {
        let easy = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let budget = Budget {
            sockets: 4,
            probes: 4,
            rate: 1000,
        };
        let hard = HardSockets::open(easy.local_addr().expect("addr"), budget, 7)
            .await
            .expect("open");
        // The opener packets arrive at the easy side.
        let mut buf = [0u8; 64];
        let (n, _) = easy.recv_from(&mut buf).await.expect("opener");
        assert_eq!(parse_probe(&buf[..n], 7), Some(0));
        let target = hard.ports[2];
        easy.send_to(&probe(7, target), ("127.0.0.1", target))
            .await
            .expect("send");
        let hit = hard.first_hit(Duration::from_secs(5)).await.expect("a hit");
        assert_eq!(hit.local_port, target);
        assert_eq!(hit.public_port, target);
        // Closed: the port can be bound again.
        UdpSocket::bind(("0.0.0.0", target)).await.expect("rebind");
    }
}
