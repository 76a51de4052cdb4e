//! # opengrid-link
//!
//! Authenticated, encrypted links between OpenGrid processes (ADR 0023): mutual TLS 1.3
//! ([rustls], aws-lc-rs provider) in which each side presents a self-signed certificate made
//! ([rcgen]) from its own ed25519 identity key, so **a peer's certificate public key is its
//! `did:mycel`**. There is no certificate authority: trust is a policy over DIDs, an
//! [`Authorizer`] (an [`AllowList`], or a rule of the caller).
//!
//! Both sides run the same verifier, which accepts a peer only when
//! - it sent exactly one certificate, holding an ed25519 public key (its DID);
//! - the certificate is well formed, self-signed by that key and within its validity
//!   (webpki, the certificate as its own trust anchor: a tampered certificate fails here);
//! - the [`Authorizer`] allows the DID;
//! - the TLS 1.3 handshake signature (`CertificateVerify`, ed25519 only) verifies with that key,
//!   which proves the peer holds the private key of the DID.
//!
//! TLS 1.2 is not offered. The accepted peer's DID is returned by [`Link::accept`],
//! [`Link::connect`] and [`Link::connect_blocking`]; a client also names the DID it expects the
//! server to have (the peer it meant to reach), and a different one is refused
//! ([`LinkError::UnexpectedPeer`]).
//!
//! Layering: below `opengrid-migration` and `opengrid-consensus`; depends only on
//! `opengrid-session` (for [`Did`]).

use std::collections::HashSet;
use std::fmt;
use std::net::TcpStream as StdTcpStream;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::{SigningKey, VerifyingKey};
use opengrid_session::Did;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, DistinguishedName,
    OtherError, ServerConfig, SignatureScheme, StreamOwned,
};
use tokio::io::{AsyncRead, AsyncWrite};

mod plain;
mod stream;

pub use stream::{BlockingServerStream, BlockingStream, ClientStream, ServerStream};

/// Longest a handshake may take by default ([`Link::with_handshake_timeout`]).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): `SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 } BIT STRING (0 unused bits) }` followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The server name a client sends; never checked (peers are named by DID), SNI is off.
const SERVER_NAME: &str = "opengrid.link";

/// Why a link could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Making this process's certificate failed.
    #[error("making the link certificate: {0}")]
    Certificate(String),
    /// rustls refused the configuration (key and certificate, protocol versions).
    #[error("link configuration: {0}")]
    Config(#[source] rustls::Error),
    /// The TLS handshake failed: the peer refused us, we refused the peer (stranger, tampered
    /// certificate, wrong key), or the connection broke.
    #[error("link handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    /// The handshake did not complete in time.
    #[error("link handshake did not complete within {0:?}")]
    Timeout(Duration),
    /// The peer presented no certificate (cannot happen after a successful handshake; kept typed).
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's certificate does not hold an ed25519 key, so it names no did:mycel.
    #[error("the peer's certificate does not hold an ed25519 public key")]
    NotEd25519,
    /// The server is authenticated, but it is not the peer the client meant to reach.
    #[error("reached {got}, expected {expected}")]
    UnexpectedPeer {
        /// The DID the client asked for.
        expected: Did,
        /// The DID the server proved.
        got: Did,
    },
}

/// Why a peer's certificate was refused (carried inside the rustls error, so that logs on the
/// refusing side name the reason).
#[derive(Debug, thiserror::Error)]
pub enum PeerRefused {
    /// The peer is authenticated but not allowed by the policy.
    #[error("peer {0} is not allowed on this link")]
    NotAllowed(Did),
    /// More than one certificate: peers present exactly their own self-signed one.
    #[error("peer sent a certificate chain; exactly one self-signed certificate is expected")]
    Chain,
    /// The certificate's key is not ed25519.
    #[error("peer certificate does not hold an ed25519 key")]
    NotEd25519,
    /// The certificate is malformed, not self-signed by its key, or outside its validity.
    #[error("peer certificate is invalid: {0}")]
    BadCertificate(String),
}

/// Who may be on the other side of a link.
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `peer` (authenticated: it holds the key of this DID) may connect.
    fn allows(&self, peer: &Did) -> bool;
}

impl<F> Authorizer for F
where
    F: Fn(&Did) -> bool + Send + Sync + 'static,
{
    fn allows(&self, peer: &Did) -> bool {
        self(peer)
    }
}

/// An [`Authorizer`] allowing exactly a set of DIDs, which may change while links are in use
/// (new handshakes see the new set; established links stay).
#[derive(Debug, Default)]
pub struct AllowList {
    dids: RwLock<HashSet<Did>>,
}

impl AllowList {
    /// Allows exactly `dids`.
    pub fn new(dids: impl IntoIterator<Item = Did>) -> Self {
        AllowList {
            dids: RwLock::new(dids.into_iter().collect()),
        }
    }

    /// Allows `did` too.
    pub fn insert(&self, did: Did) {
        self.write().insert(did);
    }

    /// Stops allowing `did` (for new handshakes).
    pub fn remove(&self, did: &Did) {
        self.write().remove(did);
    }

    /// Replaces the whole set.
    pub fn replace(&self, dids: impl IntoIterator<Item = Did>) {
        *self.write() = dids.into_iter().collect();
    }

    /// Whether `did` is allowed.
    pub fn contains(&self, did: &Did) -> bool {
        self.dids
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(did)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<Did>> {
        self.dids.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Authorizer for AllowList {
    fn allows(&self, peer: &Did) -> bool {
        self.contains(peer)
    }
}

/// This process's side of every link: its DID, its self-signed certificate and its private key
/// (PKCS#8), all from one ed25519 identity key.
pub struct LinkIdentity {
    did: Did,
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl fmt::Debug for LinkIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkIdentity({})", self.did)
    }
}

impl Clone for LinkIdentity {
    fn clone(&self) -> Self {
        LinkIdentity {
            did: self.did.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl LinkIdentity {
    /// The identity of `key`: a self-signed certificate (subject CN = the DID) over its public
    /// key, signed by it.
    pub fn from_signing_key(key: &SigningKey) -> Result<Self, LinkError> {
        let did = Did::from_public_key(&key.verifying_key());
        let pkcs8 = pkcs8_v1(key);
        let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8.clone()),
            &rcgen::PKCS_ED25519,
        )
        .map_err(|e| LinkError::Certificate(e.to_string()))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, did.as_str());
        let cert = params
            .self_signed(&kp)
            .map_err(|e| LinkError::Certificate(e.to_string()))?;
        Ok(LinkIdentity {
            did,
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(pkcs8),
        })
    }

    /// The DID this identity proves.
    pub fn did(&self) -> &Did {
        &self.did
    }

    /// Its certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }
}

/// PKCS#8 v1 (RFC 5208 / RFC 8410) of an ed25519 key: the seed only, the form both rcgen and
/// rustls read with the aws-lc-rs provider.
fn pkcs8_v1(key: &SigningKey) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(key.as_bytes());
    der
}

/// The DID named by a certificate's public key (no other check: see the crate docs for what a
/// link verifies).
pub fn certificate_did(cert: &CertificateDer<'_>) -> Result<Did, LinkError> {
    did_of(cert).map_err(|_| LinkError::NotEd25519)
}

fn did_of(cert: &CertificateDer<'_>) -> Result<Did, PeerRefused> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| PeerRefused::BadCertificate(e.to_string()))?;
    let spki = ee.subject_public_key_info();
    let raw = spki
        .as_ref()
        .strip_prefix(&ED25519_SPKI_PREFIX[..])
        .ok_or(PeerRefused::NotEd25519)?;
    let bytes: [u8; 32] = raw.try_into().map_err(|_| PeerRefused::NotEd25519)?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| PeerRefused::NotEd25519)?;
    Ok(Did::from_public_key(&key))
}

/// The peer verifier both sides use (see the crate docs).
struct PeerVerifier {
    authorizer: Arc<dyn Authorizer>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PeerVerifier")
    }
}

fn refused(r: PeerRefused) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

impl PeerVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<Did, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(refused(PeerRefused::Chain));
        }
        let did = did_of(end_entity).map_err(refused)?;
        // Self-signed by its own key and within its validity: the certificate is its own anchor.
        let anchor = webpki::anchor_from_trusted_cert(end_entity)
            .map_err(|e| refused(PeerRefused::BadCertificate(e.to_string())))?;
        let ee = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| refused(PeerRefused::BadCertificate(e.to_string())))?;
        ee.verify_for_usage(
            &[webpki::aws_lc_rs::ED25519],
            &[anchor],
            &[],
            now,
            usage,
            None,
            None,
        )
        .map_err(|e| refused(PeerRefused::BadCertificate(e.to_string())))?;
        if !self.authorizer.allows(&did) {
            return Err(refused(PeerRefused::NotAllowed(did)));
        }
        Ok(did)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Both ends of this process's links: the server and client TLS configurations for one identity
/// and one [`Authorizer`]. Cheap to clone; share one per process (or per port).
#[derive(Clone)]
pub struct Link {
    did: Did,
    mode: Mode,
    handshake_timeout: Duration,
}

#[derive(Clone)]
enum Mode {
    /// Mutual TLS 1.3 with did:mycel certificates (every production link).
    Tls {
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    },
    /// Plain TCP with a claimed DID ([`Link::plaintext_for_measurement`]).
    Plain { authorizer: Arc<dyn Authorizer> },
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Link({})", self.did)
    }
}

impl Link {
    /// Links for `identity` accepting (as server) and reaching (as client) only the peers
    /// `authorizer` allows.
    pub fn new(
        identity: &LinkIdentity,
        authorizer: Arc<dyn Authorizer>,
    ) -> Result<Self, LinkError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Arc::new(PeerVerifier {
            authorizer,
            provider: provider.clone(),
        });
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(LinkError::Config)?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(
                vec![identity.cert.clone()],
                PrivateKeyDer::Pkcs8(identity.key.clone_key()),
            )
            .map_err(LinkError::Config)?;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(LinkError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(
                vec![identity.cert.clone()],
                PrivateKeyDer::Pkcs8(identity.key.clone_key()),
            )
            .map_err(LinkError::Config)?;
        client.enable_sni = false;
        Ok(Link {
            did: identity.did.clone(),
            mode: Mode::Tls {
                server: Arc::new(server),
                client: Arc::new(client),
            },
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// **Measurement only: no security.** Links in plain TCP: no encryption, no integrity,
    /// and the peer's DID is only what it *claims* in a hello (then checked against
    /// `authorizer`, so a misconfigured peer is still told apart, but anyone can claim any
    /// DID). It exists so that benchmarks can measure the cost of [`Link::new`]'s links in the
    /// same run (`opengrid-chaos bench … --links both`); processes refuse it outside `dev`
    /// configurations. A plaintext side and a TLS side never connect (the hello is not a TLS
    /// record, and a TLS ClientHello is not a hello).
    pub fn plaintext_for_measurement(did: Did, authorizer: Arc<dyn Authorizer>) -> Self {
        Link {
            did,
            mode: Mode::Plain { authorizer },
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Whether these links are encrypted and authenticated (everything but
    /// [`Link::plaintext_for_measurement`]).
    pub fn is_secure(&self) -> bool {
        matches!(self.mode, Mode::Tls { .. })
    }

    /// The same links with another handshake time limit.
    pub fn with_handshake_timeout(mut self, limit: Duration) -> Self {
        self.handshake_timeout = limit;
        self
    }

    /// This process's DID.
    pub fn did(&self) -> &Did {
        &self.did
    }

    /// Server side: the handshake on an accepted connection; the peer's DID when it is allowed.
    pub async fn accept<S>(&self, io: S) -> Result<(ServerStream<S>, Did), LinkError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let server = match &self.mode {
            Mode::Tls { server, .. } => server,
            Mode::Plain { authorizer } => {
                let mut io = io;
                let did = tokio::time::timeout(
                    self.handshake_timeout,
                    plain::accept(&mut io, &self.did, &**authorizer),
                )
                .await
                .map_err(|_| LinkError::Timeout(self.handshake_timeout))??;
                return Ok((ServerStream::Plain(io), did));
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
        let tls = tokio::time::timeout(self.handshake_timeout, acceptor.accept(io))
            .await
            .map_err(|_| LinkError::Timeout(self.handshake_timeout))?
            .map_err(LinkError::Handshake)?;
        let did = peer_did(tls.get_ref().1.peer_certificates())?;
        Ok((ServerStream::Tls(Box::new(tls)), did))
    }

    /// As [`accept`](Self::accept) on a blocking socket; its read/write timeouts bound the
    /// handshake (set them before).
    pub fn accept_blocking(
        &self,
        mut io: StdTcpStream,
    ) -> Result<(BlockingServerStream, Did), LinkError> {
        let server = match &self.mode {
            Mode::Tls { server, .. } => server,
            Mode::Plain { authorizer } => {
                let did = plain::accept_blocking(&mut io, &self.did, &**authorizer)?;
                return Ok((BlockingServerStream::Plain(io), did));
            }
        };
        let mut conn = rustls::ServerConnection::new(server.clone()).map_err(LinkError::Config)?;
        let deadline = std::time::Instant::now() + self.handshake_timeout;
        while conn.is_handshaking() {
            if std::time::Instant::now() >= deadline {
                return Err(LinkError::Timeout(self.handshake_timeout));
            }
            conn.complete_io(&mut io).map_err(LinkError::Handshake)?;
        }
        let did = peer_did(conn.peer_certificates())?;
        Ok((
            BlockingServerStream::Tls(Box::new(StreamOwned::new(conn, io))),
            did,
        ))
    }

    /// Client side: the handshake on a connection to a server that must be `expect` (or any
    /// allowed peer when `None`); the server's DID.
    ///
    /// In TLS 1.3 the client finishes first: a server that refuses this client's certificate
    /// shows it on the first read, as an error.
    pub async fn connect<S>(
        &self,
        io: S,
        expect: Option<&Did>,
    ) -> Result<(ClientStream<S>, Did), LinkError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let client = match &self.mode {
            Mode::Tls { client, .. } => client,
            Mode::Plain { authorizer } => {
                let mut io = io;
                let did = tokio::time::timeout(
                    self.handshake_timeout,
                    plain::connect(&mut io, &self.did, &**authorizer),
                )
                .await
                .map_err(|_| LinkError::Timeout(self.handshake_timeout))??;
                return expected(expect, did).map(|did| (ClientStream::Plain(io), did));
            }
        };
        let connector = tokio_rustls::TlsConnector::from(client.clone());
        let tls = tokio::time::timeout(
            self.handshake_timeout,
            connector.connect(server_name()?, io),
        )
        .await
        .map_err(|_| LinkError::Timeout(self.handshake_timeout))?
        .map_err(LinkError::Handshake)?;
        let did = peer_did(tls.get_ref().1.peer_certificates())?;
        expected(expect, did).map(|did| (ClientStream::Tls(Box::new(tls)), did))
    }

    /// As [`connect`](Self::connect) on a blocking socket; its read/write timeouts bound the
    /// handshake (set them before).
    pub fn connect_blocking(
        &self,
        mut io: StdTcpStream,
        expect: Option<&Did>,
    ) -> Result<(BlockingStream, Did), LinkError> {
        let client = match &self.mode {
            Mode::Tls { client, .. } => client,
            Mode::Plain { authorizer } => {
                let did = plain::connect_blocking(&mut io, &self.did, &**authorizer)?;
                return expected(expect, did).map(|did| (BlockingStream::Plain(io), did));
            }
        };
        let mut conn =
            ClientConnection::new(client.clone(), server_name()?).map_err(LinkError::Config)?;
        let deadline = std::time::Instant::now() + self.handshake_timeout;
        while conn.is_handshaking() {
            if std::time::Instant::now() >= deadline {
                return Err(LinkError::Timeout(self.handshake_timeout));
            }
            conn.complete_io(&mut io).map_err(LinkError::Handshake)?;
        }
        let did = peer_did(conn.peer_certificates())?;
        expected(expect, did).map(|did| {
            (
                BlockingStream::Tls(Box::new(StreamOwned::new(conn, io))),
                did,
            )
        })
    }
}

/// The name every link connects under (identities are checked by DID, not by name).
fn server_name() -> Result<ServerName<'static>, LinkError> {
    ServerName::try_from(SERVER_NAME)
        .map_err(|e| LinkError::Config(rustls::Error::General(format!("{SERVER_NAME:?}: {e}"))))
}

fn peer_did(certs: Option<&[CertificateDer<'static>]>) -> Result<Did, LinkError> {
    let cert = certs
        .and_then(|c| c.first())
        .ok_or(LinkError::NoPeerCertificate)?;
    certificate_did(cert)
}

fn expected(expect: Option<&Did>, got: Did) -> Result<Did, LinkError> {
    match expect {
        Some(e) if *e != got => Err(LinkError::UnexpectedPeer {
            expected: e.clone(),
            got,
        }),
        _ => Ok(got),
    }
}

#[cfg(test)]
mod tests;
