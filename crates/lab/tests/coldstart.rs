//! Time to a working tunnel from cold, in the lab: B (behind a NAT, exposing an echo service)
//! and A (behind another, tunnelling to it) start at the same moment; the first byte through
//! A's tunnel must come back within 5 s. A loose guard: the figures come from
//! `punchgate-lab coldstart` (docs/coldstart.md). Before nodes reserved a relay slot at once
//! and looked targets up on a short cadence, this took about 15 s.

use std::{path::PathBuf, time::Duration};

use punchgate_lab::{
    cell::Transport,
    coldstart::{self, Spec},
    nat::NatKind,
};

// Before `main`: the lab's preflight and patchbay's user namespace (see the function).
#[allow(unsafe_code)]
#[ctor::ctor(unsafe)]
fn enter_user_namespace() {
    punchgate_lab::preflight::enter_lab_for_tests();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_started_together_echo_the_first_byte_within_5_s() {
    let spec = Spec {
        nat_a: NatKind::Moderate,
        nat_b: NatKind::Moderate,
        transport: Transport::Tcp,
        one_way_delay: Duration::from_millis(20),
    };
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_punchgate-lab"));
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("coldstart");
    let run = tokio::time::timeout(
        Duration::from_secs(180),
        coldstart::run_once(spec, &bin, &logs, 0),
    )
    .await
    .expect("a run within 180 s")
    .expect("the run");
    println!("{run:?}");
    assert!(
        run.together_ms < 5000.0,
        "both together → first echo took {:.0} ms (logs in {})",
        run.together_ms,
        logs.display()
    );
    assert!(
        run.reachable_ms < 5000.0,
        "node start → reachable took {:.0} ms",
        run.reachable_ms
    );
}
