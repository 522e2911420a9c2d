//! Both ends of the `MessageStream` call.

use futures::StreamExt as _;
use punchgate_grpc::{BridgeConfig, P2pConnectInfo};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming, transport::Channel};

use crate::{
    handshake::{self, HandshakeError, Local, Timeouts},
    pb::{
        KaspadMessage, VersionMessage,
        p2p_client::P2pClient,
        p2p_server::{P2p, P2pServer},
    },
};

/// Messages queued towards the peer.
const OUTBOUND_QUEUE: usize = 16;

/// The outcome of one incoming handshake.
#[derive(Debug)]
pub struct Incoming {
    /// Who connected, over what.
    pub info: Option<P2pConnectInfo>,
    /// The peer's Version, or why the handshake failed.
    pub result: Result<VersionMessage, HandshakeError>,
}

/// The `P2P` service: every incoming `MessageStream` runs the handshake; each outcome is sent to
/// `outcomes` (bounded; a full queue drops the report, never the peer).
#[derive(Debug, Clone)]
pub struct P2pService {
    local: Local,
    timeouts: Timeouts,
    outcomes: mpsc::Sender<Incoming>,
}

impl P2pService {
    /// The service.
    pub fn new(local: Local, timeouts: Timeouts, outcomes: mpsc::Sender<Incoming>) -> Self {
        Self {
            local,
            timeouts,
            outcomes,
        }
    }

    /// The service with the bridge's message limits.
    pub fn into_server(self, config: &BridgeConfig) -> P2pServer<Self> {
        P2pServer::new(self)
            .max_decoding_message_size(config.max_message_size)
            .max_encoding_message_size(config.max_message_size)
    }
}

type OutboundStream = futures::stream::Map<
    ReceiverStream<KaspadMessage>,
    fn(KaspadMessage) -> Result<KaspadMessage, Status>,
>;

#[tonic::async_trait]
impl P2p for P2pService {
    type MessageStreamStream = OutboundStream;

    async fn message_stream(
        &self,
        request: Request<Streaming<KaspadMessage>>,
    ) -> Result<Response<OutboundStream>, Status> {
        let info = request.extensions().get::<P2pConnectInfo>().cloned();
        if let Some(info) = &info {
            tracing::info!(
                peer = %info.peer,
                remote_addr = %info.remote_addr,
                relayed = info.relayed,
                synthesized_addr = %info.socket_addr,
                "P2P, incoming peer over libp2p (address synthesized from the peer id)"
            );
        }
        let (out, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let mut inbound = request.into_inner();
        let (local, timeouts, outcomes) =
            (self.local.clone(), self.timeouts, self.outcomes.clone());
        tokio::spawn(async move {
            let result = handshake::run(&local, &timeouts, &out, &mut inbound).await;
            match &result {
                Ok(version) => tracing::info!(
                    user_agent = %version.user_agent,
                    relayed = info.as_ref().is_some_and(|i| i.relayed),
                    "P2P connected to incoming peer: handshake complete"
                ),
                Err(error) => tracing::warn!(%error, "P2P handshake with incoming peer failed"),
            }
            let _ = outcomes.try_send(Incoming { info, result });
            // Stay connected until the peer hangs up.
            while let Some(Ok(_)) = inbound.next().await {}
        });
        Ok(Response::new(ReceiverStream::new(rx).map(
            Ok as fn(KaspadMessage) -> Result<KaspadMessage, Status>,
        )))
    }
}

/// An open `MessageStream` call after a completed handshake, from the calling side.
#[derive(Debug)]
pub struct Session {
    /// The peer's Version.
    pub version: VersionMessage,
    out: mpsc::Sender<KaspadMessage>,
    inbound: Streaming<KaspadMessage>,
}

impl Session {
    /// The queue of messages towards the peer; the call stays open while the session lives.
    pub fn sender(&self) -> &mpsc::Sender<KaspadMessage> {
        &self.out
    }

    /// Hangs up cleanly: ends our half of the call (after every queued message, our Ready
    /// included, has been sent) and waits, at most `within`, for the peer to end its half.
    /// Dropping the node right after the handshake instead can cut our last message off, and
    /// the peer would see a failed handshake. Returns whether the peer ended its half cleanly
    /// in time (an error or a timeout is `false`).
    pub async fn close(self, within: std::time::Duration) -> bool {
        let Self {
            out, mut inbound, ..
        } = self;
        drop(out);
        tokio::time::timeout(within, async {
            loop {
                match inbound.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return true,
                    Err(_) => return false,
                }
            }
        })
        .await
        .unwrap_or(false)
    }
}

/// Calls `MessageStream` on `channel` and runs the handshake.
pub async fn handshake(
    channel: Channel,
    config: &BridgeConfig,
    local: &Local,
    timeouts: &Timeouts,
) -> Result<Session, HandshakeError> {
    let mut client = P2pClient::new(channel)
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size);
    let (out, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let request = ReceiverStream::new(rx);
    let mut inbound = client.message_stream(request).await?.into_inner();
    let version = handshake::run(local, timeouts, &out, &mut inbound).await?;
    Ok(Session {
        version,
        out,
        inbound,
    })
}
