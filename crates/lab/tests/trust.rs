//! Relay trust in the NAT lab, where the NATs cannot be punched (Strict × Strict): a relay that
//! does not trust both ends refuses to carry the tunnel and says which flag would, and a relay
//! that does carries it. (That a punchable cell goes direct through a relay that trusts nobody
//! is every punchable cell of the matrix: `CellSpec::new` trusts only where no punch can work.)

use std::{path::PathBuf, time::Duration};

use punchgate_lab::{
    cell::{self, Cell, CellSpec, PathTaken, Transport},
    nat::NatKind::Strict,
    peer::{field, matches},
    topology::Scenario,
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
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nat-trust")
}

const STRICT_PAIR: Scenario = Scenario::Pair {
    a: Strict,
    b: Strict,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusting_relay_refuses_the_tunnel_and_says_which_flag_would_carry_it() {
    let mut spec = CellSpec::new(STRICT_PAIR, Transport::Tcp);
    spec.relay_trusts_peers = false;
    // Each test its own log directory: cells of one scenario share file names.
    let mut cell = Cell::start(spec, &bin(), &logs().join("untrusting"))
        .await
        .expect("start the cell");

    // The tunnel connection is closed without a byte: no stream was accepted to lose any.
    let error = tokio::time::timeout(Duration::from_secs(120), cell.round_trip(64 << 10, 1))
        .await
        .expect("the tunnel answers in time")
        .expect_err("a short circuit carries no tunnel");
    // Closed (or reset: the 64 KiB sent were never read) with nothing echoed: B accepted no
    // tunnel (checked below), so no byte can have come back.
    let error = format!("{error:#}");
    assert!(
        error.contains("got 0 back") || error.contains("read the echo"),
        "the client must get nothing, not part of the echo: {error}"
    );

    // A says why and what to do: which relay, and the flags that would make it carry this.
    let refused = cell
        .a
        .events()
        .into_iter()
        .find(|e| {
            matches(
                e,
                "stream refused: only a short relay circuit reaches the peer",
                &[("peer", &cell.b.peer_id)],
            )
        })
        .unwrap_or_else(|| panic!("A logged no refusal; logs in {}", cell.dir.display()));
    let advice = field(&refused, "advice").expect("advice");
    for wanted in [
        format!("relay {}", cell.relay.peer_id),
        format!("--trust {}", cell.a.peer_id),
        format!("--trust {}", cell.b.peer_id),
    ] {
        assert!(advice.contains(&wanted), "'{wanted}' not in: {advice}");
    }
    // The relay gave A and B a short circuit, and B accepted no tunnel.
    assert!(
        cell.relay.events().iter().any(|e| matches(
            e,
            "relaying circuit (short: enough to punch a hole; --trust both ends for tunnels)",
            &[]
        )),
        "the relay logged no short circuit"
    );
    assert!(
        !cell
            .b
            .events()
            .iter()
            .any(|e| matches(e, "tunnel accepted", &[])),
        "B accepted a tunnel over a short circuit"
    );
    cell.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusting_relay_carries_10_mib() {
    let mut spec = CellSpec::new(STRICT_PAIR, Transport::Tcp);
    assert!(
        spec.relay_trusts_peers,
        "an unpunchable cell trusts its peers"
    );
    spec.payload = 10 << 20;
    let result = cell::run(spec, &bin(), &logs().join("trusting"))
        .await
        .expect("the cell runs");
    assert_eq!(result.final_path, PathTaken::Relayed);
    assert_eq!(result.bytes_verified, 2 * (10 << 20));
    assert!(result.met(), "{result:?}");
}
