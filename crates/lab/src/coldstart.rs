//! Time to a working tunnel, from cold: `punchgate-lab coldstart`.
//!
//! Each run builds a fresh lab (two NATs behind a public relay, `one_way_delay` at each
//! site's router), starts the relay (it has been up a while, as a bootstrap node would), then:
//!
//! 1. **Both together**: starts B (exposes an echo service to A) and A (`--tunnel` to it) at
//!    the same moment and sends one byte through A's tunnel port from A's namespace, again
//!    every 50 ms until it comes back: node start → first echoed byte.
//! 2. **Node start → reachable**, from the same start of B: until its relay reservation was
//!    accepted (or AutoNAT said public) and the peer record it published after that was
//!    stored in the DHT (read from B's log timestamps).
//! 3. **Client start, target long up**: stops A, starts it again, and sends one byte the same
//!    way: client start → first echoed byte.
//!
//! Round trips are counted against the A–B round trip: the smallest ping A logged to B over a
//! direct connection (or, if it never had one, twice the delay through the two routers).

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::Value;

use crate::{
    cell::{Transport, print_peer_id, relay_args, start_echo},
    nat::NatKind,
    peer::{Peer, field, matches},
    report::percentile,
    topology::{self, Scenario},
};

/// How long a first echo may take before the run counts as failed.
const ECHO_DEADLINE: Duration = Duration::from_secs(60);
/// Between attempts at the first echo.
const ECHO_RETRY: Duration = Duration::from_millis(50);

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// A's NAT.
    pub nat_a: NatKind,
    /// B's NAT.
    pub nat_b: NatKind,
    /// The transport every node listens on.
    pub transport: Transport,
    /// One-way delay at each site's router.
    pub one_way_delay: Duration,
}

/// One run's figures, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Both started together → first echoed byte.
    pub together_ms: f64,
    /// B's start → reachable (reservation or public, and its record stored).
    pub reachable_ms: f64,
    /// A's start, B long up → first echoed byte.
    pub warm_client_ms: f64,
    /// The A–B round trip the round-trip counts use.
    pub rtt_ms: f64,
    /// The first echo's path, both-together run (`direct` or `relayed`).
    pub together_path: String,
}

/// Runs the three measurements once; logs go to `logs/run-<n>`.
pub async fn run_once(spec: Spec, bin: &Path, logs: &Path, n: usize) -> Result<Run> {
    let dir = logs.join(format!("run-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let delay = (!spec.one_way_delay.is_zero()).then_some(spec.one_way_delay);
    let net = topology::build(
        Scenario::Pair {
            a: spec.nat_a,
            b: spec.nat_b,
        },
        delay,
    )
    .await?;
    let echo = start_echo(&net.b).await?;
    let t = spec.transport;
    let relay_ip = net.relay_ip()?.to_string();
    let a_id = print_peer_id(bin, &dir, "peer-a")?;
    let b_id = print_peer_id(bin, &dir, "peer-b")?;
    // The operator's own relay: it trusts both ends with long circuits.
    let relay = Peer::start(
        &net.relay,
        bin,
        "relay",
        &dir,
        relay_args(t, &relay_ip, &[a_id.clone(), b_id.clone()]),
    )
    .await?;
    let bootstrap = format!("{}/p2p/{}", t.multiaddr(&relay_ip, 4001), relay.peer_id);
    let args = |extra: [String; 4]| {
        let mut args = vec![
            "--listen".to_owned(),
            t.multiaddr("0.0.0.0", 0),
            "--bootstrap".to_owned(),
            bootstrap.clone(),
            "--autonat-private-ips".to_owned(),
            "--no-mdns".to_owned(),
        ];
        args.extend(extra);
        args
    };
    let b_args = args([
        "--expose".into(),
        format!("echo=127.0.0.1:{echo}"),
        "--allow".into(),
        format!("echo={a_id}"),
    ]);
    let a_args = args([
        "--tunnel".into(),
        format!("{b_id}:echo@127.0.0.1:0"),
        "--trust".into(),
        b_id.clone(),
    ]);

    // 1. Both together.
    let wall = SystemTime::now();
    let started = Instant::now();
    let (b, a) = tokio::join!(
        Peer::start(&net.b, bin, "peer-b", &dir, b_args),
        Peer::start(&net.a, bin, "peer-a", &dir, a_args),
    );
    let (b, mut a) = (b?, a?);
    first_echo(&net.a, &a).await?;
    let together_ms = ms(started.elapsed());
    let together_path = a
        .events()
        .iter()
        .find(|e| matches(e, "tunnel path", &[("peer", &b.peer_id)]))
        .and_then(|e| field(e, "path"))
        .unwrap_or_else(|| "unknown".to_owned());

    // 2. B's start → reachable, from its log.
    let reachable_ms = wait_reachable(&b, wall).await?;

    // 3. A again, with B long up.
    a.terminate()?;
    let started = Instant::now();
    a.restart().await?;
    first_echo(&net.a, &a).await?;
    let warm_client_ms = ms(started.elapsed());

    let rtt_ms = a
        .events()
        .iter()
        .filter(|e| matches(e, "ping", &[("peer", &b.peer_id)]))
        .filter_map(|e| e.get("rtt_ms").and_then(Value::as_f64))
        .reduce(f64::min)
        .filter(|_| !net_relayed_only(&a, &b.peer_id))
        .unwrap_or(4.0 * ms(spec.one_way_delay));
    drop((a, b, relay));
    Ok(Run {
        together_ms,
        reachable_ms,
        warm_client_ms,
        rtt_ms,
        together_path,
    })
}

/// Whether A never had a direct connection to `b` (its pings then went through the relay).
fn net_relayed_only(a: &Peer, b: &str) -> bool {
    !a.events()
        .iter()
        .any(|e| matches(e, "direct connection established", &[("peer", b)]))
}

/// Sends one byte through A's tunnel until it comes back (every [`ECHO_RETRY`]).
async fn first_echo(device: &patchbay::Device, a: &Peer) -> Result<()> {
    let addr = *a.tunnel_addrs.first().context("peer-a has no tunnel")?;
    let deadline = Instant::now() + ECHO_DEADLINE;
    loop {
        let attempt = tokio::time::timeout(ECHO_DEADLINE, first_byte_from(device, addr)).await;
        match attempt {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) if Instant::now() > deadline => {
                bail!("no echo within {ECHO_DEADLINE:?}: {error:#}")
            }
            Err(_) => bail!("no echo within {ECHO_DEADLINE:?}"),
            Ok(Err(_)) => tokio::time::sleep(ECHO_RETRY).await,
        }
    }
}

/// Connects to `addr` from `device`'s namespace, sends one byte and waits for it to come back:
/// the first echoed byte, as a user of an interactive protocol sees it (the connection is
/// closed afterwards, untimed).
async fn first_byte_from(device: &patchbay::Device, addr: std::net::SocketAddr) -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let task = device.spawn(async move |_| -> Result<()> {
        let mut socket = tokio::net::TcpStream::connect(addr).await?;
        socket.set_nodelay(true)?;
        socket.write_all(&[7]).await?;
        let mut back = [0u8; 1];
        socket
            .read_exact(&mut back)
            .await
            .context("read the echo")?;
        if back != [7] {
            bail!("echo mismatch: got {back:?}");
        }
        Ok(())
    })?;
    task.await.context("client task")?
}

/// From `since` (B's start) to the moment B was reachable: its reservation accepted (or
/// AutoNAT said public) and the record it published after that stored, by B's log.
async fn wait_reachable(b: &Peer, since: SystemTime) -> Result<f64> {
    let since_ms = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(ms)
        .unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(at) = reachable_at(&b.events()) {
            return Ok(at - since_ms);
        }
        if Instant::now() > deadline {
            bail!("peer-b was not reachable within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When (Unix ms) the events show the node reachable, if they do.
pub fn reachable_at(events: &[Value]) -> Option<f64> {
    let reachable = |e: &Value| {
        matches(e, "relay reservation accepted", &[])
            || matches(e, "nat status changed", &[("to", "Public")])
    };
    let from = events.iter().position(reachable)?;
    let seq = events[from..]
        .iter()
        .find(|e| matches(e, "published peer record", &[]))
        .and_then(|e| e.get("seq").and_then(Value::as_u64))?;
    let stored = events[from..].iter().find(|e| {
        matches(e, "peer record stored", &[])
            && e.get("seq")
                .and_then(Value::as_u64)
                .is_some_and(|s| s >= seq)
    })?;
    stored
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(unix_ms)
}

/// A log timestamp (`2026-12-06T03:58:49.474782Z`) as milliseconds since the Unix epoch.
pub fn unix_ms(timestamp: &str) -> Option<f64> {
    punchgate_logs::time::Timestamp::parse(timestamp).map(|t| t.micros() as f64 / 1000.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and p95 of each measure, in ms and in round trips, as a Markdown table.
pub fn markdown(spec: &Spec, runs: &[Run], failures: &[String]) -> String {
    let rtt = percentile(&runs.iter().map(|r| r.rtt_ms).collect::<Vec<_>>(), 50.0).unwrap_or(0.0);
    let mut out = format!(
        "{} runs ({} failed), A {} × B {}, {}, {} ms one-way delay per site; A–B round trip {rtt:.0} ms (median).\n\n",
        runs.len() + failures.len(),
        failures.len(),
        spec.nat_a,
        spec.nat_b,
        spec.transport,
        spec.one_way_delay.as_millis(),
    );
    out.push_str("| Measure | Median | p95 | Median round trips | p95 round trips |\n");
    out.push_str("| --- | --- | --- | --- | --- |\n");
    type Pick = fn(&Run) -> f64;
    let rows: [(&str, Pick); 3] = [
        (
            "Node start → reachable (reservation, record stored)",
            |r| r.reachable_ms,
        ),
        ("Client start → first echoed byte (target long up)", |r| {
            r.warm_client_ms
        }),
        ("Both started together → first echoed byte", |r| {
            r.together_ms
        }),
    ];
    for (name, pick) in rows {
        let samples: Vec<f64> = runs.iter().map(pick).collect();
        let cell = |p: f64| percentile(&samples, p);
        let rts = |v: Option<f64>| {
            v.filter(|_| rtt > 0.0)
                .map_or_else(|| "–".to_owned(), |v| format!("{:.1}", v / rtt))
        };
        let fmt = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.0} ms"));
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} |\n",
            fmt(cell(50.0)),
            fmt(cell(95.0)),
            rts(cell(50.0)),
            rts(cell(95.0))
        ));
    }
    let direct = runs.iter().filter(|r| r.together_path == "direct").count();
    out.push_str(&format!(
        "\nFirst echo of the both-together runs: {direct} of {} over a direct connection.\n",
        runs.len()
    ));
    for failure in failures {
        out.push_str(&format!("\nFailed run: {failure}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_read_as_unix_milliseconds() {
        assert_eq!(unix_ms("1970-01-01T00:00:01.5Z"), Some(1500.0));
        // 2026-12-06T03:58:49.474782Z: checked with `date -d ... +%s.%N`.
        let ms = unix_ms("2026-12-06T03:58:49.474782Z").expect("parses");
        assert!((ms - 1_796_529_529_474.782).abs() < 0.01, "{ms}");
        assert_eq!(unix_ms("yesterday"), None);
    }
}
