//! The NAT matrix: every pairing of Open, Moderate and Strict NATs over TCP and over QUIC, a
//! double NAT and a shared NAT, each with real `punchgate` processes in network namespaces.
//! Each cell asserts the outcome the matrix expects: a direct connection wherever one side is
//! Open or both map endpoint-independently, or one side's router maps ports (UPnP), or (QUIC
//! only) a birthday punch fits a Moderate side against a Strict one; the relay (with every byte
//! delivered) otherwise.

use std::{path::PathBuf, time::Duration};

use punchgate_lab::{
    cell::{self, CellResult, CellSpec, Transport},
    nat::NatKind::{Moderate, Open, Strict},
    topology::{Scenario, Side},
};

// Before `main`: the lab's preflight and patchbay's user namespace (see the function).
#[allow(unsafe_code)]
#[ctor::ctor(unsafe)]
fn enter_user_namespace() {
    punchgate_lab::preflight::enter_lab_for_tests();
}

fn bin() -> PathBuf {
    env!("CARGO_BIN_EXE_punchgate-lab").into()
}

fn logs() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nat-matrix")
}

async fn check(scenario: Scenario, transport: Transport) -> CellResult {
    let spec = CellSpec::new(scenario, transport);
    let result = tokio::time::timeout(Duration::from_secs(300), cell::run(spec, &bin(), &logs()))
        .await
        .unwrap_or_else(|_| panic!("{scenario} {transport}: over 300 s"))
        .unwrap_or_else(|e| panic!("{scenario} {transport}: {e:#}"));
    println!(
        "{scenario} {transport}: first {}, final {}, direct {}, to direct {:?} ms, attempts {:?}, NAT A {:?} B {:?}, logs {}",
        result.first_path,
        result.final_path,
        result.direct,
        result.time_to_direct_ms,
        result.attempts,
        result.nat_a,
        result.nat_b,
        result.log_dir.display()
    );
    assert!(
        result.met(),
        "{scenario} {transport}: expected {}, got final path {} (direct: {}, hole punch failed: {}); logs in {}",
        result.expected,
        result.final_path,
        result.direct,
        result.hole_punch_failed,
        result.log_dir.display()
    );
    result
}

macro_rules! cells {
    ($($name:ident: $scenario:expr, $transport:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            check($scenario, $transport).await;
        }
    )*};
}

const fn pair(a: punchgate_lab::nat::NatKind, b: punchgate_lab::nat::NatKind) -> Scenario {
    Scenario::Pair { a, b }
}

cells! {
    open_x_open_tcp: pair(Open, Open), Transport::Tcp;
    open_x_open_quic: pair(Open, Open), Transport::Quic;
    open_x_moderate_tcp: pair(Open, Moderate), Transport::Tcp;
    open_x_moderate_quic: pair(Open, Moderate), Transport::Quic;
    open_x_strict_tcp: pair(Open, Strict), Transport::Tcp;
    open_x_strict_quic: pair(Open, Strict), Transport::Quic;
    moderate_x_open_tcp: pair(Moderate, Open), Transport::Tcp;
    moderate_x_open_quic: pair(Moderate, Open), Transport::Quic;
    moderate_x_strict_tcp: pair(Moderate, Strict), Transport::Tcp;
    strict_x_open_tcp: pair(Strict, Open), Transport::Tcp;
    strict_x_open_quic: pair(Strict, Open), Transport::Quic;
    strict_x_moderate_tcp: pair(Strict, Moderate), Transport::Tcp;
    strict_x_strict_tcp: pair(Strict, Strict), Transport::Tcp;
    strict_x_strict_quic: pair(Strict, Strict), Transport::Quic;
    double_nat_tcp: Scenario::DoubleNat, Transport::Tcp;
    double_nat_quic: Scenario::DoubleNat, Transport::Quic;
}

/// A Moderate (port-preserving) NAT against a Strict (symmetric) one, over QUIC: no plain punch
/// lines the ports up, and a birthday punch finds one of the Strict side's ports.
async fn birthday(a: punchgate_lab::nat::NatKind, b: punchgate_lab::nat::NatKind) {
    let r = check(pair(a, b), Transport::Quic).await;
    assert_eq!(
        r.direct_via,
        Some(punchgate_lab::cell::DirectVia::Birthday),
        "{a} x {b} QUIC should go direct by a birthday punch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderate_x_strict_quic() {
    birthday(Moderate, Strict).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_x_moderate_quic() {
    birthday(Strict, Moderate).await;
}

/// A Moderate router that maps ports (a real miniupnpd in its namespace) against a Strict NAT
/// that no punch gets through: the mapped peer becomes public at the router's address, the
/// other peer dials it there, and the node removes its mappings when it stops.
async fn upnp(mapped: Side, transport: Transport) {
    let scenario = Scenario::upnp()
        .into_iter()
        .find(|s| matches!(s, Scenario::Upnp { mapped: m, .. } if *m == mapped))
        .expect("a UPnP cell");
    let r = check(scenario, transport).await;
    let (log, nat) = match mapped {
        Side::A => ("peer-a.log", &r.nat_a),
        Side::B => ("peer-b.log", &r.nat_b),
    };
    assert_eq!(nat.as_deref(), Some("Public"), "the mapped peer is public");
    let text = std::fs::read_to_string(r.log_dir.join(log)).expect("the mapped peer's log");
    for line in [
        "the router forwards a port to us (UPnP)",
        "removed our port mappings from the router",
    ] {
        assert!(text.contains(line), "{log} should say \"{line}\"");
    }
    if mapped == Side::B {
        // A simply dials B at the router's mapped port: no relay, no punch.
        assert_eq!(r.direct_via, Some(punchgate_lab::cell::DirectVia::Dial));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderate_upnp_x_strict_tcp() {
    upnp(Side::A, Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderate_upnp_x_strict_quic() {
    upnp(Side::A, Transport::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_x_moderate_upnp_tcp() {
    upnp(Side::B, Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_x_moderate_upnp_quic() {
    upnp(Side::B, Transport::Quic).await;
}

/// Moderate × Moderate: both nodes learn they are private from AutoNAT (nothing is forced; they
/// are reachable through the relay long before) and the punch goes direct.
async fn learns_private_and_punches(transport: Transport) {
    let spec = CellSpec::new(pair(Moderate, Moderate), transport);
    let cell = tokio::time::timeout(Duration::from_secs(300), async {
        let cell = cell::Cell::start(spec, &bin(), &logs()).await?;
        for peer in [&cell.a, &cell.b] {
            peer.wait_for_message(
                Duration::from_secs(90),
                "nat status changed",
                &[("to", "Private")],
            )
            .await?;
        }
        cell.run().await
    })
    .await
    .expect("within 300 s")
    .expect("the cell");
    assert_eq!(cell.nat_a.as_deref(), Some("Private"));
    assert_eq!(cell.nat_b.as_deref(), Some("Private"));
    assert_punched(&cell);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderate_x_moderate_tcp_learns_private_and_punches() {
    learns_private_and_punches(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderate_x_moderate_quic_learns_private_and_punches() {
    learns_private_and_punches(Transport::Quic).await;
}

/// Neither side can be dialled unasked: the direct connection must come from a punch.
fn assert_punched(r: &CellResult) {
    use punchgate_lab::cell::DirectVia;
    assert!(
        matches!(
            r.direct_via,
            Some(DirectVia::Introduction | DirectVia::HolePunch)
        ),
        "expected a punch, got {:?}",
        r.direct_via
    );
}

/// Both peers behind one router: mDNS (the default feature) finds the neighbour and the tunnel
/// goes straight over the LAN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_nat_tcp_uses_mdns_and_the_lan() {
    let r = check(Scenario::SameNat, Transport::Tcp).await;
    assert!(r.mdns_discovered, "A should discover B with mDNS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_nat_quic_uses_mdns_and_the_lan() {
    let r = check(Scenario::SameNat, Transport::Quic).await;
    assert!(r.mdns_discovered, "A should discover B with mDNS");
}

/// With 20 ms one-way delay per site (40 ms round trip) the punch still goes direct; the time it
/// took is printed (measured here, not asserted: `punchgate-lab matrix` reports it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderate_x_moderate_with_latency() {
    for transport in Transport::ALL {
        let mut spec = CellSpec::new(pair(Moderate, Moderate), transport);
        spec.one_way_delay = Duration::from_millis(20);
        let r = cell::run(spec, &bin(), &logs().join("latency"))
            .await
            .unwrap_or_else(|e| panic!("{transport}: {e:#}"));
        println!(
            "Moderate x Moderate {transport}, 20 ms one way: first dial -> direct {:?} ms ({:.1} round trips of {:?} ms), relayed -> direct {:?} ms, {:?} attempt(s)",
            r.time_to_direct_ms,
            r.round_trips().unwrap_or(f64::NAN),
            r.rtt_ms,
            r.relayed_to_direct_ms,
            r.attempts
        );
        assert!(r.met(), "{transport}: {r:?}");
        let rtt = r.rtt_ms.expect("A pinged B");
        assert!(
            rtt >= 38.0,
            "{transport}: the delay was not applied (rtt {rtt} ms)"
        );
    }
}

/// The punched connection holds: 40 s after the punch (past Linux's 30 s timeout for a UDP flow
/// nothing answers, with QUIC's keep-alives the only traffic), A's tunnel still goes over the
/// same direct connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_birthday_punched_connection_holds() {
    let spec = CellSpec::new(pair(Moderate, Strict), Transport::Quic);
    let mut cell = cell::Cell::start(spec, &bin(), &logs().join("holds"))
        .await
        .expect("the cell starts");
    cell.round_trip(64 << 10, 1).await.expect("first echo");
    cell.settle().await.expect("settles");
    cell.round_trip(64 << 10, 2).await.expect("second echo");
    let first = cell.direct_event().expect("a direct connection");
    tokio::time::sleep(Duration::from_secs(40)).await;
    cell.round_trip(64 << 10, 3).await.expect("echo after 40 s");
    let r = cell.result().expect("result");
    assert_eq!(r.direct_via, Some(punchgate_lab::cell::DirectVia::Birthday));
    assert_eq!(
        cell.tunnel_paths().last(),
        Some(&punchgate_lab::cell::PathTaken::Direct),
        "the tunnel still goes direct"
    );
    let connection = first.get("connection").cloned();
    let closed = cell.a.events().into_iter().any(|e| {
        e.get("message").and_then(|m| m.as_str()) == Some("connection closed")
            && e.get("peer").and_then(|p| p.as_str()) == Some(cell.b.peer_id.as_str())
            && e.get("endpoint")
                .is_some_and(|a| Some(a) == first.get("addr"))
    });
    assert!(
        !closed,
        "the punched connection {connection:?} closed; logs in {}",
        r.log_dir.display()
    );
    cell.stop();
}
