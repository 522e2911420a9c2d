//! QUIC on the ports a birthday punch opened ([`crate::punch`]): each punched port gets a
//! libp2p-quic transport of its own with that one listener, so that a dial to the punched peer
//! leaves from exactly that port and the NAT mappings the probes made carry the connection.
//!
//! Why a transport of our own around libp2p-quic: a libp2p-quic transport with several
//! listeners dials from one chosen by a hash of the remote address, and a QUIC socket cannot
//! send the plain UDP probes. So the probes use their own sockets, and once one gets through,
//! its port is [claimed](Claims), the probe socket closed and the port bound again here. This
//! transport comes before the node's main QUIC transport and takes only claimed ports and
//! addresses; everything else goes on to the main one.
//!
//! A punched endpoint lives as long as its connections: closing a libp2p-quic listener closes
//! its endpoint. It is closed when its last connection is gone, or [`UNUSED_LIFETIME`] after it
//! was opened if no connection came.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use futures::{FutureExt as _, future::BoxFuture};
use libp2p::{
    Multiaddr, PeerId,
    core::{
        muxing::{StreamMuxer, StreamMuxerBox, StreamMuxerEvent},
        transport::{DialOpts, ListenerId, TransportError, TransportEvent},
    },
    multiaddr::Protocol,
    quic,
};
use tokio::time::Instant;

/// How long a punched endpoint waits for its first connection.
pub const UNUSED_LIFETIME: Duration = Duration::from_secs(15);

/// Punched endpoints open at once; more claims are refused.
pub const MAX_ENDPOINTS: usize = 16;

/// Ports and peers handed to the punched transport: shared between it and the punch tasks.
#[derive(Debug, Clone, Default)]
pub struct Claims(Arc<Mutex<ClaimsInner>>);

#[derive(Debug, Default)]
struct ClaimsInner {
    /// Ports the next listen on is for.
    listen: HashSet<u16>,
    /// Every port claimed or served (not ours to publish or map on the router).
    ports: HashSet<u16>,
    /// Remote address → our punched port to dial it from.
    dial: HashMap<SocketAddr, u16>,
    /// Ports whose connections are gone (sent by the muxers' drop).
    released: Vec<u16>,
    /// Endpoints open or claimed.
    open: usize,
    waker: Option<Waker>,
}

/// Claiming a port failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Too many punched endpoints are open.
    #[error("{MAX_ENDPOINTS} punched QUIC endpoints are open already")]
    Full,
}

impl Claims {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClaimsInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `port` for the next listen on it, and `remote` to be dialled from it.
    pub fn claim(&self, port: u16, remote: Option<SocketAddr>) -> Result<(), ClaimError> {
        let mut inner = self.lock();
        if inner.open >= MAX_ENDPOINTS {
            return Err(ClaimError::Full);
        }
        inner.open += 1;
        inner.listen.insert(port);
        inner.ports.insert(port);
        if let Some(remote) = remote {
            inner.dial.insert(remote, port);
        }
        Ok(())
    }

    /// Gives up a claim whose listen never happened (the bind failed, or the punch gave up).
    pub fn unclaim(&self, port: u16) {
        let mut inner = self.lock();
        if inner.listen.remove(&port) {
            inner.open = inner.open.saturating_sub(1);
            inner.ports.remove(&port);
        }
        inner.dial.retain(|_, p| *p != port);
    }

    /// Whether `port` is a punched one.
    pub fn is_punched_port(&self, port: u16) -> bool {
        self.lock().ports.contains(&port)
    }

    /// Whether `remote` is dialled from a punched port.
    pub fn is_dial_target(&self, remote: &SocketAddr) -> bool {
        self.lock().dial.contains_key(remote)
    }

    fn release(&self, port: u16) {
        let mut inner = self.lock();
        inner.released.push(port);
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
    }
}

/// One punched port: its own libp2p-quic transport with one listener.
struct Endpoint {
    id: ListenerId,
    transport: quic::tokio::Transport,
    connections: usize,
    /// Closed at this time if no connection came.
    unused_until: Option<Instant>,
    closing: bool,
}

/// The punched-ports transport (see the module docs).
pub struct Transport {
    config: quic::Config,
    claims: Claims,
    endpoints: HashMap<u16, Endpoint>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("punched::Transport")
            .field("ports", &self.endpoints.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport that serves the ports `claims` hands it, with the node's QUIC `config`.
    pub fn new(config: quic::Config, claims: Claims) -> Self {
        Self {
            config,
            claims,
            endpoints: HashMap::new(),
            timer: None,
        }
    }
}

/// The UDP socket address of a QUIC multiaddr.
pub fn quic_socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip: IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let Protocol::Udp(port) = parts.next()? else {
        return None;
    };
    matches!(parts.next()?, Protocol::QuicV1).then_some(SocketAddr::new(ip, port))
}

type Output = (PeerId, StreamMuxerBox);

impl libp2p::core::Transport for Transport {
    type Output = Output;
    type Error = quic::Error;
    type ListenerUpgrade = BoxFuture<'static, Result<Output, quic::Error>>;
    type Dial = BoxFuture<'static, Result<Output, quic::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        let Some(socket) = quic_socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let port = socket.port();
        if !self.claims.lock().listen.contains(&port) {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        // A claimed port is ours whatever happens: never let it fall through to the main QUIC
        // transport, which would keep it as an ordinary listener.
        if self.endpoints.contains_key(&port) {
            self.claims.unclaim(port);
            return Err(TransportError::Other(quic::Error::Io(
                std::io::Error::other("a punched QUIC endpoint holds this port already"),
            )));
        }
        let mut transport = quic::tokio::Transport::new(self.config.clone());
        if let Err(e) = transport.listen_on(id, addr) {
            self.claims.unclaim(port);
            return Err(match e {
                TransportError::MultiaddrNotSupported(a) => TransportError::Other(quic::Error::Io(
                    std::io::Error::other(format!("cannot listen on {a}")),
                )),
                other => other,
            });
        }
        self.claims.lock().listen.remove(&port);
        self.endpoints.insert(
            port,
            Endpoint {
                id,
                transport,
                connections: 0,
                unused_until: Some(Instant::now() + UNUSED_LIFETIME),
                closing: false,
            },
        );
        if let Some(w) = self.claims.lock().waker.take() {
            w.wake();
        }
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        for endpoint in self.endpoints.values_mut() {
            if endpoint.id == id {
                endpoint.closing = true;
                return endpoint.transport.remove_listener(id);
            }
        }
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(remote) = quic_socket_addr(&addr) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let Some(port) = self.claims.lock().dial.get(&remote).copied() else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let Some(endpoint) = self.endpoints.get_mut(&port) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let dial = endpoint.transport.dial(addr, opts)?;
        endpoint.connections += 1;
        endpoint.unused_until = None;
        Ok(track(dial, Slot::new(self.claims.clone(), port)))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = &mut *self;
        {
            let mut claims = this.claims.lock();
            claims.waker = Some(cx.waker().clone());
            for port in std::mem::take(&mut claims.released) {
                if let Some(e) = this.endpoints.get_mut(&port) {
                    e.connections = e.connections.saturating_sub(1);
                    if e.connections == 0 && !e.closing {
                        e.closing = true;
                        e.transport.remove_listener(e.id);
                    }
                }
            }
        }
        let now = Instant::now();
        let mut next_deadline: Option<Instant> = None;
        for e in this.endpoints.values_mut() {
            match e.unused_until {
                _ if e.closing => {}
                Some(t) if t <= now => {
                    e.closing = true;
                    e.transport.remove_listener(e.id);
                }
                Some(t) => next_deadline = Some(next_deadline.map_or(t, |d| d.min(t))),
                None => {}
            }
        }
        if let Some(deadline) = next_deadline {
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            timer.as_mut().reset(deadline);
            let _ = timer.as_mut().poll(cx);
        }
        let mut closed = None;
        let mut ready = None;
        for (port, e) in &mut this.endpoints {
            if let Poll::Ready(event) = Pin::new(&mut e.transport).poll(cx) {
                let claims = this.claims.clone();
                let port = *port;
                let event = match event {
                    TransportEvent::Incoming {
                        listener_id,
                        upgrade,
                        local_addr,
                        send_back_addr,
                    } => {
                        e.connections += 1;
                        e.unused_until = None;
                        TransportEvent::Incoming {
                            listener_id,
                            upgrade: track(upgrade, Slot::new(claims, port)),
                            local_addr,
                            send_back_addr,
                        }
                    }
                    TransportEvent::ListenerClosed {
                        listener_id,
                        reason,
                    } => {
                        closed = Some(port);
                        TransportEvent::ListenerClosed {
                            listener_id,
                            reason,
                        }
                    }
                    other => other.map_upgrade(|_| unreachable_upgrade()),
                };
                ready = Some(event);
                break;
            }
        }
        if let Some(port) = closed {
            this.endpoints.remove(&port);
            let mut claims = this.claims.lock();
            claims.open = claims.open.saturating_sub(1);
            claims.ports.remove(&port);
            claims.dial.retain(|_, p| *p != port);
        }
        match ready {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

/// Only `Incoming` carries an upgrade, and it is mapped above.
fn unreachable_upgrade() -> BoxFuture<'static, Result<Output, quic::Error>> {
    futures::future::pending().boxed()
}

/// One connection counted against a punched endpoint: released when dropped, whether the
/// upgrade failed, was dropped unpolled (the swarm refused it), or the connection closed.
struct Slot {
    claims: Claims,
    port: u16,
}

impl Slot {
    fn new(claims: Claims, port: u16) -> Self {
        Self { claims, port }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.claims.release(self.port);
    }
}

/// Counts the connection against its endpoint until the muxer is dropped.
fn track<F>(upgrade: F, slot: Slot) -> BoxFuture<'static, Result<Output, quic::Error>>
where
    F: std::future::Future<Output = Result<(PeerId, quic::Connection), quic::Error>>
        + Send
        + 'static,
{
    async move {
        let (peer, connection) = upgrade.await?;
        Ok((
            peer,
            StreamMuxerBox::new(Tracked {
                inner: connection,
                _slot: slot,
            }),
        ))
    }
    .boxed()
}

/// A punched connection: its slot is released when it is gone.
struct Tracked {
    inner: quic::Connection,
    _slot: Slot,
}

impl StreamMuxer for Tracked {
    type Substream = <quic::Connection as StreamMuxer>::Substream;
    type Error = <quic::Connection as StreamMuxer>::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        Pin::new(&mut self.inner).poll_inbound(cx)
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        Pin::new(&mut self.inner).poll_outbound(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use libp2p::core::Transport as _;

    use super::*;

    #[test]
    fn takes_only_claimed_ports_and_addresses() {
        let claims = Claims::default();
        let mut t = Transport::new(
            quic::Config::new(&libp2p::identity::Keypair::generate_ed25519()),
            claims.clone(),
        );
        let addr: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("valid");
        assert!(matches!(
            t.listen_on(ListenerId::next(), addr),
            Err(TransportError::MultiaddrNotSupported(_))
        ));
        let remote: Multiaddr = "/ip4/127.0.0.1/udp/9/quic-v1".parse().expect("valid");
        assert!(matches!(
            t.dial(
                remote,
                DialOpts {
                    role: libp2p::core::Endpoint::Dialer,
                    port_use: libp2p::core::transport::PortUse::Reuse
                }
            ),
            Err(TransportError::MultiaddrNotSupported(_))
        ));
        for port in 0..MAX_ENDPOINTS as u16 {
            claims.claim(40000 + port, None).expect("room");
        }
        assert_eq!(claims.claim(50000, None), Err(ClaimError::Full));
        claims.unclaim(40000);
        claims.claim(50000, None).expect("room again");
    }
}
