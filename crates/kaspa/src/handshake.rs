//! Kaspa's P2P handshake over the bidirectional `MessageStream`, with Kaspa's timeouts.
//!
//! Both sides run the same steps:
//! 1. send our Version, await theirs (4 s), check it is for our network;
//! 2. send Verack, await theirs (4 s);
//! 3. send Ready, await theirs (8 s).
//!
//! Anything else arriving in place of the awaited message ends the handshake with an error that
//! says what was expected and what came; a network mismatch is answered with a Reject.

use std::{fmt, time::Duration};

use futures::{Stream, StreamExt as _};
use tokio::{sync::mpsc, time::timeout};
use tonic::Status;

use crate::pb::{
    KaspadMessage, ReadyMessage, RejectMessage, VerackMessage, VersionMessage,
    kaspad_message::Payload,
};

/// Kaspa's P2P protocol version this handshake speaks.
pub const PROTOCOL_VERSION: u32 = 7;

/// How long each awaited message may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// For the peer's Version.
    pub version: Duration,
    /// For the peer's Verack.
    pub verack: Duration,
    /// For the peer's Ready.
    pub ready: Duration,
}

impl Default for Timeouts {
    /// Kaspa's: 4 s, 4 s, 8 s.
    fn default() -> Self {
        Self {
            version: Duration::from_secs(4),
            verack: Duration::from_secs(4),
            ready: Duration::from_secs(8),
        }
    }
}

/// What we tell the peer about ourselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// Kaspa network name (`kaspa-mainnet`, `kaspa-testnet-11`, ...).
    pub network: String,
    /// User agent, e.g. `/punchgate-kaspa:0.1.0/`.
    pub user_agent: String,
    /// Our node id (Kaspa uses 16 random bytes).
    pub id: Vec<u8>,
}

impl Local {
    /// A local identity on `network` with a random id.
    pub fn new(network: impl Into<String>) -> Self {
        Self {
            network: network.into(),
            user_agent: format!("/punchgate-kaspa:{}/", env!("CARGO_PKG_VERSION")),
            id: rand::random::<[u8; 16]>().to_vec(),
        }
    }

    fn version(&self) -> VersionMessage {
        VersionMessage {
            protocol_version: PROTOCOL_VERSION,
            services: 0,
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            address: None,
            id: self.id.clone(),
            user_agent: self.user_agent.clone(),
            disable_relay_tx: false,
            subnetwork_id: None,
            network: self.network.clone(),
        }
    }
}

/// A handshake step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Exchanging Version.
    Version,
    /// Exchanging Verack.
    Verack,
    /// Exchanging Ready.
    Ready,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Version => "Version",
            Step::Verack => "Verack",
            Step::Ready => "Ready",
        })
    }
}

/// The handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The awaited message did not come in time.
    #[error("no {step} from the peer within {after:?}")]
    Timeout {
        /// The step.
        step: Step,
        /// The timeout.
        after: Duration,
    },
    /// Another message came instead.
    #[error("expected {step}, got {got}")]
    Unexpected {
        /// The step.
        step: Step,
        /// What came.
        got: String,
    },
    /// The stream ended first.
    #[error("the peer closed the stream before {step}")]
    Closed {
        /// The step.
        step: Step,
    },
    /// The peer refused us.
    #[error("the peer rejected the handshake: {0}")]
    Rejected(String),
    /// The peer is on another network.
    #[error("the peer is on network '{theirs}', we are on '{ours}'")]
    WrongNetwork {
        /// Our network.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// gRPC failed underneath.
    #[error("gRPC error: {0}")]
    Status(#[from] Status),
    /// Our side of the stream is gone.
    #[error("cannot send {step}: the stream is closed")]
    SendFailed {
        /// The step.
        step: Step,
    },
}

fn message(payload: Payload) -> KaspadMessage {
    KaspadMessage {
        payload: Some(payload),
        response_id: 0,
        request_id: 0,
    }
}

async fn send(
    out: &mpsc::Sender<KaspadMessage>,
    step: Step,
    payload: Payload,
) -> Result<(), HandshakeError> {
    tracing::info!(%step, "sending {} message", step.to_string().to_lowercase());
    out.send(message(payload))
        .await
        .map_err(|_| HandshakeError::SendFailed { step })
}

async fn receive<S>(
    inbound: &mut S,
    step: Step,
    within: Duration,
) -> Result<Payload, HandshakeError>
where
    S: Stream<Item = Result<KaspadMessage, Status>> + Unpin,
{
    match timeout(within, inbound.next()).await {
        Err(_) => Err(HandshakeError::Timeout {
            step,
            after: within,
        }),
        Ok(None) => Err(HandshakeError::Closed { step }),
        Ok(Some(Err(status))) => Err(status.into()),
        Ok(Some(Ok(KaspadMessage { payload: None, .. }))) => Err(HandshakeError::Unexpected {
            step,
            got: "an empty message".into(),
        }),
        Ok(Some(Ok(KaspadMessage {
            payload: Some(Payload::Reject(RejectMessage { reason })),
            ..
        }))) => Err(HandshakeError::Rejected(reason)),
        Ok(Some(Ok(KaspadMessage {
            payload: Some(payload),
            ..
        }))) => Ok(payload),
    }
}

fn unexpected(step: Step, payload: &Payload) -> HandshakeError {
    let got = match payload {
        Payload::Ping(_) => "Ping",
        Payload::Pong(_) => "Pong",
        Payload::Verack(_) => "Verack",
        Payload::Version(_) => "Version",
        Payload::Reject(_) => "Reject",
        Payload::Ready(_) => "Ready",
    };
    HandshakeError::Unexpected {
        step,
        got: got.into(),
    }
}

/// Runs the handshake: messages go out through `out`, come in on `inbound`. Returns the peer's
/// Version.
pub async fn run<S>(
    local: &Local,
    timeouts: &Timeouts,
    out: &mpsc::Sender<KaspadMessage>,
    inbound: &mut S,
) -> Result<VersionMessage, HandshakeError>
where
    S: Stream<Item = Result<KaspadMessage, Status>> + Unpin,
{
    send(out, Step::Version, Payload::Version(local.version())).await?;
    let theirs = match receive(inbound, Step::Version, timeouts.version).await? {
        Payload::Version(v) => v,
        other => return Err(unexpected(Step::Version, &other)),
    };
    if theirs.network != local.network {
        let reason = format!(
            "network '{}' does not match '{}'",
            theirs.network, local.network
        );
        let _ = out
            .send(message(Payload::Reject(RejectMessage { reason })))
            .await;
        return Err(HandshakeError::WrongNetwork {
            ours: local.network.clone(),
            theirs: theirs.network,
        });
    }
    tracing::info!(
        protocol_version = theirs.protocol_version,
        user_agent = %theirs.user_agent,
        network = %theirs.network,
        "accepted version message"
    );

    send(out, Step::Verack, Payload::Verack(VerackMessage {})).await?;
    match receive(inbound, Step::Verack, timeouts.verack).await? {
        Payload::Verack(_) => tracing::info!("accepted verack message"),
        other => return Err(unexpected(Step::Verack, &other)),
    }

    send(out, Step::Ready, Payload::Ready(ReadyMessage {})).await?;
    match receive(inbound, Step::Ready, timeouts.ready).await? {
        Payload::Ready(_) => tracing::info!("accepted ready message"),
        other => return Err(unexpected(Step::Ready, &other)),
    }
    Ok(theirs)
}

#[cfg(test)]
mod tests {
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    type Inbound = futures::stream::Map<
        ReceiverStream<KaspadMessage>,
        fn(KaspadMessage) -> Result<KaspadMessage, Status>,
    >;

    /// Two handshakes wired to each other through channels: (A's out, A's in, B's out, B's in).
    fn pair() -> (
        mpsc::Sender<KaspadMessage>,
        Inbound,
        mpsc::Sender<KaspadMessage>,
        Inbound,
    ) {
        let (a_tx, a_rx) = mpsc::channel(8);
        let (b_tx, b_rx) = mpsc::channel(8);
        let ok: fn(KaspadMessage) -> Result<KaspadMessage, Status> = Ok;
        (
            a_tx,
            ReceiverStream::new(b_rx).map(ok),
            b_tx,
            ReceiverStream::new(a_rx).map(ok),
        )
    }

    #[tokio::test]
    async fn both_sides_complete() {
        let (a_out, mut a_in, b_out, mut b_in) = pair();
        let (a, b) = (Local::new("kaspa-mainnet"), Local::new("kaspa-mainnet"));
        let t = Timeouts::default();
        let (ra, rb) = tokio::join!(
            run(&a, &t, &a_out, &mut a_in),
            run(&b, &t, &b_out, &mut b_in)
        );
        assert_eq!(ra.expect("a").id, b.id);
        assert_eq!(rb.expect("b").id, a.id);
    }

    #[tokio::test]
    async fn another_network_is_rejected_on_both_sides() {
        let (a_out, mut a_in, b_out, mut b_in) = pair();
        let t = Timeouts::default();
        let (main, test) = (Local::new("kaspa-mainnet"), Local::new("kaspa-testnet-11"));
        let (ra, rb) = tokio::join!(
            run(&main, &t, &a_out, &mut a_in),
            run(&test, &t, &b_out, &mut b_in)
        );
        assert!(
            matches!(ra, Err(HandshakeError::WrongNetwork { .. })),
            "{ra:?}"
        );
        assert!(
            matches!(rb, Err(HandshakeError::WrongNetwork { .. })),
            "{rb:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_after_four_seconds() {
        let (a_out, mut a_in, _b_out, _b_in) = pair();
        let started = tokio::time::Instant::now();
        let r = run(
            &Local::new("kaspa-mainnet"),
            &Timeouts::default(),
            &a_out,
            &mut a_in,
        )
        .await;
        assert!(
            matches!(
                r,
                Err(HandshakeError::Timeout {
                    step: Step::Version,
                    ..
                })
            ),
            "{r:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test]
    async fn out_of_order_messages_are_refused() {
        let (a_out, mut a_in, b_out, _b_in) = pair();
        // The peer answers our Version with Ready.
        b_out
            .send(message(Payload::Ready(ReadyMessage {})))
            .await
            .expect("send");
        let r = run(
            &Local::new("kaspa-mainnet"),
            &Timeouts::default(),
            &a_out,
            &mut a_in,
        )
        .await;
        match r {
            Err(HandshakeError::Unexpected { step, got }) => {
                assert_eq!(step, Step::Version);
                assert_eq!(got, "Ready");
            }
            other => panic!("{other:?}"),
        }
    }
}
