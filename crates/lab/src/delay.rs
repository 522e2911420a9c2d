//! One-way delay on a router's WAN egress, in user space.
//!
//! This kernel has no `netem` (and no nftables `queue`), so latency is emulated the way the lab
//! notes found to work: iptables sends every packet leaving the WAN to an NFQUEUE, and a thread
//! in the router's namespace holds each packet for the delay before accepting it. Packets keep
//! their order (every packet waits the same time). `--queue-bypass` lets traffic through
//! undelayed if the thread is gone, instead of black-holing the router.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use patchbay::Router;

use crate::nat::{run_in, wan_interface};

/// The NFQUEUE number (queues are per network namespace, so every router can use the same).
const QUEUE: u16 = 0;
/// Packets held at once; beyond this the kernel queue fills and the bypass lets them through.
const MAX_HELD: u32 = 8192;
/// How long the thread sleeps when nothing is due (bounds the added jitter).
const TICK: Duration = Duration::from_micros(200);

/// Holds the delay thread; dropping it stops the thread.
#[derive(Debug)]
pub struct Delay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
    /// The one-way delay added.
    pub one_way: Duration,
}

impl Delay {
    /// Delays every packet leaving `router`'s WAN by `one_way`.
    pub fn start(router: &Router, one_way: Duration) -> Result<Self> {
        let wan = wan_interface(router)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread_stop = stop.clone();
        let thread = router.spawn_thread(move || {
            let mut queue = nfq::Queue::open().context("open NFQUEUE socket")?;
            queue.bind(QUEUE).context("bind NFQUEUE")?;
            queue.set_copy_range(QUEUE, 0)?;
            queue.set_queue_max_len(QUEUE, MAX_HELD)?;
            queue.set_fail_open(QUEUE, true)?;
            queue.set_nonblocking(true);
            let _ = ready_tx.send(());
            hold(queue, one_way, &thread_stop)
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("the delay thread did not start")?;
        let queue = QUEUE.to_string();
        run_in(
            router,
            "iptables",
            &[
                "-t",
                "mangle",
                "-A",
                "POSTROUTING",
                "-o",
                &wan,
                "-j",
                "NFQUEUE",
                "--queue-num",
                &queue,
                "--queue-bypass",
            ],
            None,
        )?;
        Ok(Self {
            stop,
            thread: Some(thread),
            one_way,
        })
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn hold(mut queue: nfq::Queue, one_way: Duration, stop: &AtomicBool) -> Result<()> {
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    while !stop.load(Ordering::Relaxed) {
        let mut got = false;
        loop {
            match queue.recv() {
                Ok(msg) => {
                    held.push_back((Instant::now() + one_way, msg));
                    got = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("NFQUEUE receive"),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, mut msg)) = held.pop_front() {
                msg.set_verdict(nfq::Verdict::Accept);
                queue.verdict(msg).context("NFQUEUE verdict")?;
            }
        }
        if !got {
            let wait = held.front().map_or(TICK, |(due, _)| {
                due.saturating_duration_since(now).min(TICK)
            });
            std::thread::sleep(wait);
        }
    }
    // Let whatever is still held through.
    for (_, mut msg) in held {
        msg.set_verdict(nfq::Verdict::Accept);
        let _ = queue.verdict(msg);
    }
    Ok(())
}
