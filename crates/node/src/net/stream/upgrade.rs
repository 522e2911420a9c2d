//! The stream upgrade: multistream-select picks one of the listed protocols; the stream is then
//! handed over as is.

use std::{
    convert::Infallible,
    future::{Ready, ready},
    sync::Arc,
};

use libp2p::{
    Stream, StreamProtocol,
    core::{InboundUpgrade, OutboundUpgrade, UpgradeInfo},
};

#[derive(Debug)]
pub struct Upgrade {
    /// Protocols offered (inbound) or requested (outbound, exactly one). Shared: the swarm
    /// asks for the inbound list on every poll of the connection.
    pub(super) protocols: Arc<[StreamProtocol]>,
}

impl UpgradeInfo for Upgrade {
    type Info = StreamProtocol;
    type InfoIter = ProtocolIter;

    fn protocol_info(&self) -> Self::InfoIter {
        ProtocolIter {
            protocols: self.protocols.clone(),
            next: 0,
        }
    }
}

/// The protocols of an [`Upgrade`], one clone at a time (no list copied).
#[derive(Debug)]
pub struct ProtocolIter {
    protocols: Arc<[StreamProtocol]>,
    next: usize,
}

impl Iterator for ProtocolIter {
    type Item = StreamProtocol;

    fn next(&mut self) -> Option<StreamProtocol> {
        let protocol = self.protocols.get(self.next)?.clone();
        self.next += 1;
        Some(protocol)
    }
}

impl InboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, stream: Stream, protocol: Self::Info) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Upgrade {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, stream: Stream, protocol: Self::Info) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}
