//! A small echo service (`punchgate.echo.Echo`): unary and bidirectional streaming calls, for
//! the README example, the tests and the benchmarks.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming, transport::Channel};

use crate::config::BridgeConfig;

/// Generated code.
#[allow(
    clippy::all,
    clippy::pedantic,
    unreachable_pub,
    missing_debug_implementations,
    missing_docs
)]
pub mod pb {
    tonic::include_proto!("punchgate.echo");
}

pub use pb::{
    Payload,
    echo_client::EchoClient,
    echo_server::{Echo, EchoServer},
};

/// Replies with the request's bytes, or with `reply_size` zero bytes when it is set.
#[derive(Debug, Clone, Default)]
pub struct EchoService;

fn reply(request: Payload) -> Payload {
    let data = match request.reply_size {
        0 => request.data,
        n => vec![0u8; n as usize],
    };
    Payload {
        data,
        reply_size: 0,
    }
}

type PayloadStream = Pin<Box<dyn Stream<Item = Result<Payload, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<Payload>) -> Result<Response<Payload>, Status> {
        Ok(Response::new(reply(request.into_inner())))
    }

    type StreamStream = PayloadStream;

    async fn stream(
        &self,
        request: Request<Streaming<Payload>>,
    ) -> Result<Response<PayloadStream>, Status> {
        let replies = request.into_inner().map(|message| message.map(reply));
        Ok(Response::new(Box::pin(replies)))
    }
}

/// The echo service with the bridge's message limits.
pub fn server(config: &BridgeConfig) -> EchoServer<EchoService> {
    EchoServer::new(EchoService)
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size)
}

/// An echo client on `channel` with the bridge's message limits.
pub fn client(channel: Channel, config: &BridgeConfig) -> EchoClient<Channel> {
    EchoClient::new(channel)
        .max_decoding_message_size(config.max_message_size)
        .max_encoding_message_size(config.max_message_size)
}
