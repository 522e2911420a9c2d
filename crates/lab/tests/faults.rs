//! Faults: the relay dies after the punch, and the service side restarts.

use std::{path::PathBuf, time::Duration};

use punchgate_lab::{
    cell::{Cell, CellSpec, Transport, payload},
    nat::NatKind::Moderate,
    topology::Scenario,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nat-faults")
}

async fn punched_cell(name: &str) -> Cell {
    let spec = CellSpec::new(
        Scenario::Pair {
            a: Moderate,
            b: Moderate,
        },
        Transport::Tcp,
    );
    let mut cell = Cell::start(spec, &bin(), &logs().join(name))
        .await
        .expect("start the cell");
    cell.round_trip(64 * 1024, 1)
        .await
        .expect("first round trip");
    cell.settle().await.expect("settle");
    assert!(
        cell.direct_event().is_some(),
        "Moderate x Moderate must punch"
    );
    cell
}

/// A tunnel connection on the punched path keeps every byte flowing after the relay is killed
/// with SIGKILL mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_after_the_punch_loses_no_byte() {
    let mut cell = punched_cell("relay-killed").await;
    let addr = cell.a.tunnel_addrs[0];
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    // A client inside A's namespace streams 8 MiB in 64 KiB chunks while reading the echo back;
    // the relay dies after the first MiB has gone through.
    let client = cell
        .net
        .a
        .spawn(async move |_| {
            let data = payload(8 << 20, 42);
            let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut r, mut w) = socket.split();
            let mut killed_rx = Some(killed_rx);
            let writer = async {
                for (i, chunk) in data.chunks(64 * 1024).enumerate() {
                    w.write_all(chunk).await.expect("write");
                    if i == 16 {
                        // Let the test kill the relay, then wait for it.
                        if let Some(rx) = killed_rx.take() {
                            let _ = rx.await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                w.shutdown().await.expect("half-close");
            };
            let reader = async {
                let mut back = Vec::with_capacity(data.len());
                r.read_to_end(&mut back).await.expect("read");
                back
            };
            let ((), back) = tokio::join!(writer, reader);
            assert_eq!(back.len(), data.len(), "every byte came back");
            assert!(back == data, "in order and intact");
        })
        .expect("spawn the client");
    // The tunnel connection is on the direct path.
    let path = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(p) = cell.tunnel_paths().get(1) {
                return *p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the second tunnel connection was logged");
    assert_eq!(path, punchgate_lab::cell::PathTaken::Direct);
    tokio::time::sleep(Duration::from_millis(300)).await;
    cell.relay.kill().expect("kill the relay");
    let _ = killed_tx.send(());
    tokio::time::timeout(Duration::from_secs(60), client)
        .await
        .expect("stream finished in time")
        .expect("client task");
    // And a new tunnel connection still works, over the surviving direct connection.
    cell.round_trip(256 * 1024, 3)
        .await
        .expect("round trip without the relay");
    cell.stop();
}

/// B restarts (same identity): A's next tunnel connection succeeds without restarting A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_service_peer_needs_no_restart_of_the_client() {
    let mut cell = punched_cell("b-restarted").await;
    cell.b.restart().await.expect("restart B");
    // B is back once it holds a reservation again.
    cell.b
        .wait_for_message(Duration::from_secs(90), "relay reservation accepted", &[])
        .await
        .expect("B reserves again");
    cell.round_trip(256 * 1024, 4)
        .await
        .expect("round trip after B's restart");
    cell.stop();
}
