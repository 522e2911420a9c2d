//! Bridge settings, shared by both ends so they agree: HTTP/2 frame and window sizes, message
//! sizes, keepalive, and the queues and quotas of the libp2p side.
//!
//! # Why these values
//! - **Frames**: h2 defaults to 16 KiB frames. Kaspa's proof of concept hit `FRAME_SIZE_ERROR`
//!   with defaults on one side and tuned values on the other. Each side advertises the largest
//!   frame it accepts, so 1 MiB on both lets bulk messages travel in few frames.
//! - **Windows**: 8 MiB per stream and 16 MiB per connection, so an 8 MiB message flows without
//!   stalling on window updates. Adaptive windows stay off: they reset the initial windows to
//!   64 KiB and were slower here.
//! - **Messages**: tonic refuses messages over 4 MiB by default (`OutOfRange`); 16 MiB here.
//! - **yamux** (under every stream, TCP connections) auto-tunes each stream's window from 256 KiB
//!   up to the connection's 1 GiB cap, so an 8 MiB message needs no yamux setting; QUIC's
//!   per-stream flow control is 10 MB per stream, 15 MB per connection.

use std::time::Duration;

use libp2p::StreamProtocol;
use tonic::transport::{Endpoint, Server};

use crate::quota::RelayLimits;

/// The default protocol gRPC connections are opened on.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/punchgate/grpc/1.0.0");

const MIB: u32 = 1024 * 1024;

/// Settings for both ends of the bridge.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// libp2p protocol the gRPC connections use (one application, one protocol).
    pub protocol: StreamProtocol,
    /// Largest gRPC message, encoded, either way.
    pub max_message_size: usize,
    /// Largest HTTP/2 frame this side accepts.
    pub max_frame_size: u32,
    /// HTTP/2 initial window of each stream.
    pub stream_window: u32,
    /// HTTP/2 initial window of the connection.
    pub connection_window: u32,
    /// HTTP/2 pings on idle connections; `None` for none.
    pub keepalive_interval: Option<Duration>,
    /// How long a keepalive ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// HTTP/2 streams (calls) per connection at once.
    pub max_concurrent_calls: u32,
    /// Inbound gRPC connections queued for the server before peers are slowed down.
    pub accept_queue: usize,
    /// How long opening a client connection (reaching the peer) may take.
    pub connect_timeout: Duration,
    /// Limits on relayed gRPC connections.
    pub relay_limits: RelayLimits,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            protocol: PROTOCOL,
            max_message_size: 16 * MIB as usize,
            max_frame_size: MIB,
            stream_window: 8 * MIB,
            connection_window: 16 * MIB,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
            max_concurrent_calls: 256,
            accept_queue: 64,
            connect_timeout: Duration::from_secs(30),
            relay_limits: RelayLimits::default(),
        }
    }
}

impl BridgeConfig {
    /// A tonic server builder with these HTTP/2 settings. Set
    /// `max_decoding_message_size(config.max_message_size)` on each generated service too.
    pub fn server(&self) -> Server {
        Server::builder()
            .max_frame_size(self.max_frame_size)
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .http2_adaptive_window(Some(false))
            .http2_keepalive_interval(self.keepalive_interval)
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .max_concurrent_streams(self.max_concurrent_calls)
    }

    /// A tonic endpoint with these HTTP/2 settings, for a connector that opens libp2p streams.
    /// The URI only names the HTTP authority; the connector decides where bytes go.
    pub fn endpoint(&self) -> Endpoint {
        self.apply(Endpoint::from_static("http://punchgate.invalid"))
    }

    /// These HTTP/2 settings on any endpoint (for example a plain-TCP one to compare with).
    pub fn apply(&self, endpoint: Endpoint) -> Endpoint {
        let mut endpoint = endpoint
            .max_frame_size(self.max_frame_size)
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .http2_adaptive_window(false)
            .connect_timeout(self.connect_timeout)
            .keep_alive_timeout(self.keepalive_timeout);
        if let Some(interval) = self.keepalive_interval {
            endpoint = endpoint.http2_keep_alive_interval(interval);
        }
        endpoint
    }
}
