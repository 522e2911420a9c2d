//! Tunnel negotiation messages, sent as [frames](crate::frame).
//!
//! The client sends a [`TunnelRequest`], the server answers with a [`TunnelResponse`]; after an
//! accepting response the stream carries raw bytes.

use serde::{Deserialize, Serialize};

pub use crate::frame::{FrameError, decode, encode, read, write};

/// The client's request: which service to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelRequest {
    /// The service name, as given to `--expose` on the server.
    pub service: String,
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelResponse {
    /// Whether raw bytes follow.
    pub accepted: bool,
    /// Why not, when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl TunnelResponse {
    /// An accepting response.
    pub fn accept() -> Self {
        Self {
            accepted: true,
            reason: None,
        }
    }

    /// A refusal with a reason for the client's log.
    pub fn refuse(reason: impl Into<String>) -> Self {
        Self {
            accepted: false,
            reason: Some(reason.into()),
        }
    }
}
