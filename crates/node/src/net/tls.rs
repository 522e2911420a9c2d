//! TLS 1.3 for TCP and relayed connections: libp2p's `/tls/1.0.0` handshake, with AES-GCM
//! preferred on CPUs that have AES instructions.
//!
//! The certificate format and its checks are libp2p's (`libp2p::tls::certificate`: a self-signed
//! certificate carrying the node's public key and a signature by it; the peer ID comes from that
//! key). What differs from `libp2p::tls::Config` is the cipher-suite order: it always prefers
//! ChaCha20-Poly1305, which on a CPU with AES-NI (or ARMv8 AES) is slower than AES-128-GCM, and
//! the cipher is a large share of a tunnel's CPU. Here the order follows the hardware, and the
//! server picks by its own order, so a stock libp2p client also gets AES-GCM from us.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use futures::{AsyncRead, AsyncWrite, FutureExt as _, future::BoxFuture};
use libp2p::{
    PeerId,
    core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo},
    identity::Keypair,
    tls::{TlsStream, certificate},
};
use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, SignatureScheme,
    SupportedCipherSuite,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::aws_lc_rs::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

use crate::net::coalesce::Coalescing;

/// The protocol name libp2p negotiates for this handshake.
const PROTOCOL: &str = "/tls/1.0.0";

/// The ALPN value libp2p's TLS handshake requires.
const ALPN: &[u8] = b"libp2p";

/// An authenticated connection: TLS, with small writes joined to the next one above it (a
/// yamux frame's header and body are sealed and sent together, see [`Coalescing`]).
pub type TlsOutput<C> = Coalescing<TlsStream<C>>;

/// Setting up or running the TLS handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The node's certificate could not be made from its key.
    #[error("cannot make a TLS certificate from the node key: {0}")]
    Certificate(#[from] certificate::GenError),
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Config(#[from] rustls::Error),
    /// The handshake failed (I/O, or the remote's certificate was refused).
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    /// The remote presented no certificate, or one that is not a libp2p certificate.
    #[error("the remote's TLS certificate is not a valid libp2p certificate: {0}")]
    RemoteCertificate(String),
}

/// The `/tls/1.0.0` security upgrade, for
/// [`libp2p::core::transport::upgrade::Builder::authenticate`].
#[derive(Clone)]
pub struct Config {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("tls::Config")
            .field("cipher_suites", &cipher_suites())
            .finish_non_exhaustive()
    }
}

impl Config {
    /// A configuration presenting `keypair`'s identity.
    pub fn new(keypair: &Keypair) -> Result<Self, TlsError> {
        let (cert, key) = certificate::generate(keypair)?;
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = cipher_suites();
        let provider = Arc::new(provider);
        let verifier = Arc::new(Libp2pVerifier);
        // rustls's `with_single_cert` would parse the certificate with webpki, which refuses
        // libp2p's critical extension; a resolver hands it over as it is.
        let own = Arc::new(OwnCertificate(Arc::new(rustls::sign::CertifiedKey::new(
            vec![cert],
            rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(&key)?,
        ))));

        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_client_cert_resolver(own.clone());
        client.alpn_protocols = vec![ALPN.to_vec()];
        // Every peer has the same (absent) server name, so a session ticket from one peer would
        // be offered to the next: useless to it, and it would let peers link our connections.
        client.resumption = rustls::client::Resumption::disabled();

        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(own);
        server.alpn_protocols = vec![ALPN.to_vec()];
        // Clients do not resume (above): tickets would be bytes for nothing.
        server.send_tls13_tickets = 0;
        // Pick the suite by our order (fastest on this CPU), not the client's.
        server.ignore_client_order = true;

        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// The node's certificate, presented whatever the remote asks for.
#[derive(Debug)]
struct OwnCertificate(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OwnCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for OwnCertificate {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// TLS 1.3 suites, AES-GCM first where the CPU has AES instructions, ChaCha20-Poly1305 first
/// where it has not (ChaCha20 is the faster one in plain software).
fn cipher_suites() -> Vec<SupportedCipherSuite> {
    let aes = [TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384];
    if has_aes_instructions() {
        aes.into_iter()
            .chain([TLS13_CHACHA20_POLY1305_SHA256])
            .collect()
    } else {
        [TLS13_CHACHA20_POLY1305_SHA256]
            .into_iter()
            .chain(aes)
            .collect()
    }
}

/// Whether AES-GCM runs in hardware here (AES rounds and carry-less multiplication).
pub fn has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = std::iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        std::iter::once(PROTOCOL)
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsOutput<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            let stream = futures_rustls::TlsAcceptor::from(self.server)
                .accept(socket)
                .await
                .map_err(TlsError::Handshake)?;
            let peer = remote_peer(stream.get_ref().1)?;
            Ok((peer, Coalescing::new(stream.into())))
        }
        .boxed()
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, TlsOutput<C>);
    type Error = TlsError;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, _: Self::Info) -> Self::Future {
        async move {
            // libp2p's TLS spec: clients must not send a server name (SNI).
            let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
            let stream = futures_rustls::TlsConnector::from(self.client)
                .connect(name, socket)
                .await
                .map_err(TlsError::Handshake)?;
            let peer = remote_peer(stream.get_ref().1)?;
            Ok((peer, Coalescing::new(stream.into())))
        }
        .boxed()
    }
}

/// The peer ID in the remote's (already verified) certificate.
fn remote_peer(state: &CommonState) -> Result<PeerId, TlsError> {
    match state.peer_certificates() {
        Some([cert]) => certificate::parse(cert)
            .map(|c| c.peer_id())
            .map_err(|e| TlsError::RemoteCertificate(e.to_string())),
        Some(certs) => Err(TlsError::RemoteCertificate(format!(
            "expected one certificate, got {}",
            certs.len()
        ))),
        None => Err(TlsError::RemoteCertificate("no certificate".into())),
    }
}

/// Accepts exactly one certificate, a valid libp2p one (self-signed, carrying a public key and
/// that key's signature over the certificate's key), and checks the handshake signature with
/// it. Which peer it must be is checked by the swarm against the peer ID it dialled.
#[derive(Debug)]
struct Libp2pVerifier;

impl Libp2pVerifier {
    fn check(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "a libp2p peer presents exactly one certificate".into(),
            ));
        }
        certificate::parse(end_entity)?;
        Ok(())
    }

    fn tls13_signature(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        certificate::parse(cert)?.verify_signature(dss.scheme, message, dss.signature())?;
        Ok(HandshakeSignatureValid::assertion())
    }

    fn tls12_signature() -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is configured; rustls never asks. Refuse rather than trust.
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn schemes() -> Vec<SignatureScheme> {
        vec![
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ED25519,
            SignatureScheme::RSA_PSS_SHA512,
            SignatureScheme::RSA_PSS_SHA384,
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA512,
            SignatureScheme::RSA_PKCS1_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]
    }
}

impl ServerCertVerifier for Libp2pVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::tls12_signature()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

impl ClientCertVerifier for Libp2pVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Self::check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::tls12_signature()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Self::tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        Self::schemes()
    }
}

#[cfg(test)]
mod tests {
    use futures::future::try_join;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::compat::{Compat, TokioAsyncReadCompatExt as _};

    use super::*;

    async fn pair() -> (Compat<TcpStream>, Compat<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (dialer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            dialer.expect("connect").compat(),
            accepted.expect("accept").0.compat(),
        )
    }

    fn expected_suite() -> SupportedCipherSuite {
        if has_aes_instructions() {
            TLS13_AES_128_GCM_SHA256
        } else {
            TLS13_CHACHA20_POLY1305_SHA256
        }
    }

    #[tokio::test]
    async fn two_nodes_learn_each_others_peer_id_and_use_the_fastest_suite() {
        let (a, b) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (dialer, listener) = pair().await;
        let ((seen_by_a, a_stream), (seen_by_b, _)) = try_join(
            Config::new(&a)
                .expect("config")
                .upgrade_outbound(dialer, PROTOCOL),
            Config::new(&b)
                .expect("config")
                .upgrade_inbound(listener, PROTOCOL),
        )
        .await
        .expect("handshake");
        assert_eq!(seen_by_a, b.public().to_peer_id());
        assert_eq!(seen_by_b, a.public().to_peer_id());
        assert_eq!(
            a_stream.get_ref().get_ref().1.negotiated_cipher_suite(),
            Some(expected_suite())
        );
    }

    #[tokio::test]
    async fn stock_libp2p_tls_peers_interoperate_both_ways() {
        let (ours, stock) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        // A stock client (ChaCha20 first) dialling us: we pick by our order.
        let (dialer, listener) = pair().await;
        let ((seen_by_stock, stock_stream), (seen_by_us, _)) = try_join(
            async {
                libp2p::tls::Config::new(&stock)
                    .expect("config")
                    .upgrade_outbound(dialer, PROTOCOL)
                    .await
                    .map_err(|e| e.to_string())
            },
            async {
                Config::new(&ours)
                    .expect("config")
                    .upgrade_inbound(listener, PROTOCOL)
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await
        .expect("stock client, our server");
        assert_eq!(seen_by_stock, ours.public().to_peer_id());
        assert_eq!(seen_by_us, stock.public().to_peer_id());
        assert_eq!(
            stock_stream.get_ref().1.negotiated_cipher_suite(),
            Some(expected_suite())
        );

        // Us dialling a stock server.
        let (dialer, listener) = pair().await;
        let ((seen_by_us, _), (seen_by_stock, _)) = try_join(
            async {
                Config::new(&ours)
                    .expect("config")
                    .upgrade_outbound(dialer, PROTOCOL)
                    .await
                    .map_err(|e| e.to_string())
            },
            async {
                libp2p::tls::Config::new(&stock)
                    .expect("config")
                    .upgrade_inbound(listener, PROTOCOL)
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await
        .expect("our client, stock server");
        assert_eq!(seen_by_us, stock.public().to_peer_id());
        assert_eq!(seen_by_stock, ours.public().to_peer_id());
    }

    /// A rustls client with libp2p's verifier presenting `cert` (or no certificate at all).
    fn client_presenting(
        cert: Option<(
            CertificateDer<'static>,
            &rustls::pki_types::PrivateKeyDer<'_>,
        )>,
    ) -> rustls::ClientConfig {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Libp2pVerifier));
        let mut client = match cert {
            Some((cert, key)) => builder.with_client_cert_resolver(Arc::new(OwnCertificate(
                Arc::new(rustls::sign::CertifiedKey::new(
                    vec![cert],
                    rustls::crypto::aws_lc_rs::sign::any_ecdsa_type(key).expect("key"),
                )),
            ))),
            None => builder.with_no_client_auth(),
        };
        client.alpn_protocols = vec![ALPN.to_vec()];
        client
    }

    /// What a node's inbound upgrade makes of `client` dialling it.
    async fn node_accepting(
        client: rustls::ClientConfig,
    ) -> Result<(PeerId, TlsOutput<Compat<TcpStream>>), TlsError> {
        let (dialer, listener) = pair().await;
        let node = Config::new(&Keypair::generate_ed25519()).expect("config");
        let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
        let (_, accepted) = tokio::join!(
            futures_rustls::TlsConnector::from(Arc::new(client)).connect(name, dialer),
            node.upgrade_inbound(listener, PROTOCOL),
        );
        accepted
    }

    /// A plain self-signed certificate (no libp2p key extension) is refused on either side.
    #[tokio::test]
    async fn a_certificate_without_a_libp2p_identity_is_refused() {
        let plain = rcgen::generate_simple_self_signed(vec!["peer".to_string()]).expect("cert");
        let cert = CertificateDer::from(plain.cert.der().to_vec());
        let key = rustls::pki_types::PrivateKeyDer::try_from(plain.key_pair.serialize_der())
            .expect("key");

        let accepted = node_accepting(client_presenting(Some((cert.clone(), &key)))).await;
        assert!(
            matches!(accepted, Err(TlsError::Handshake(_))),
            "node accepted a plain certificate: {accepted:?}"
        );

        // A server with a plain certificate, dialled by a node.
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("server");
        let (dialer, listener) = pair().await;
        let node = Config::new(&Keypair::generate_ed25519()).expect("config");
        let (dialled, _) = tokio::join!(
            node.upgrade_outbound(dialer, PROTOCOL),
            futures_rustls::TlsAcceptor::from(Arc::new(server)).accept(listener),
        );
        assert!(
            matches!(dialled, Err(TlsError::Handshake(_))),
            "node accepted a plain server certificate: {dialled:?}"
        );
    }

    /// A node's certificate presented by someone without its key (the handshake signature is
    /// made with another key) is refused: the certificate alone proves nothing.
    #[tokio::test]
    async fn a_certificate_presented_without_its_key_is_refused() {
        let (victim_cert, _) = certificate::generate(&Keypair::generate_ed25519()).expect("cert");
        let (_, other_key) = certificate::generate(&Keypair::generate_ed25519()).expect("cert");
        let accepted = node_accepting(client_presenting(Some((victim_cert, &other_key)))).await;
        assert!(
            matches!(accepted, Err(TlsError::Handshake(_))),
            "node accepted a certificate without its key: {accepted:?}"
        );
    }

    /// A client that presents no certificate at all is refused: the peer ID comes from it.
    #[tokio::test]
    async fn a_client_without_a_certificate_is_refused() {
        let accepted = node_accepting(client_presenting(None)).await;
        assert!(
            matches!(accepted, Err(TlsError::Handshake(_))),
            "node accepted a client without a certificate: {accepted:?}"
        );
    }
}
