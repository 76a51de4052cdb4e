use std::io::{Read, Write};

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

fn identity(seed: u8) -> LinkIdentity {
    LinkIdentity::from_signing_key(&SigningKey::from_bytes(&[seed; 32])).unwrap()
}

fn link(me: &LinkIdentity, allowed: &[&LinkIdentity]) -> Link {
    Link::new(
        me,
        Arc::new(AllowList::new(allowed.iter().map(|i| i.did().clone()))),
    )
    .unwrap()
}

/// Serves one connection on `server`: the handshake's outcome, and on success echoes one
/// 5-byte message.
async fn serve_one(
    server: Link,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<Did, LinkError>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let t = tokio::spawn(async move {
        let (sock, _) = l.accept().await.unwrap();
        let (mut tls, did) = server.accept(sock).await?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf)
            .await
            .map_err(LinkError::Handshake)?;
        tls.write_all(&buf).await.map_err(LinkError::Handshake)?;
        tls.flush().await.map_err(LinkError::Handshake)?;
        Ok(did)
    });
    (addr, t)
}

/// Connects with `client` and exchanges one message: the server's DID when everything worked.
async fn exchange(
    client: &Link,
    addr: std::net::SocketAddr,
    expect: Option<&Did>,
) -> Result<Did, LinkError> {
    let sock = TcpStream::connect(addr).await.unwrap();
    let (mut tls, did) = client.connect(sock, expect).await?;
    tls.write_all(b"hello")
        .await
        .map_err(LinkError::Handshake)?;
    tls.flush().await.map_err(LinkError::Handshake)?;
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf)
        .await
        .map_err(LinkError::Handshake)?;
    assert_eq!(&buf, b"hello");
    Ok(did)
}

#[test]
fn the_certificate_names_the_identity_key() {
    let a = identity(1);
    let did = certificate_did(a.certificate()).unwrap();
    assert_eq!(&did, a.did());
    assert_eq!(
        did,
        Did::from_public_key(&SigningKey::from_bytes(&[1; 32]).verifying_key())
    );
}

#[tokio::test]
async fn allowed_peers_link_and_learn_each_others_did() {
    let (a, b) = (identity(1), identity(2));
    let (addr, server) = serve_one(link(&b, &[&a])).await;
    let got = exchange(&link(&a, &[&b]), addr, Some(b.did()))
        .await
        .unwrap();
    assert_eq!(&got, b.did());
    assert_eq!(&server.await.unwrap().unwrap(), a.did());
}

#[tokio::test]
async fn a_strangers_key_is_refused_by_the_server() {
    let (a, b, stranger) = (identity(1), identity(2), identity(3));
    let (addr, server) = serve_one(link(&b, &[&a])).await;
    // The stranger allows b, but b does not allow the stranger.
    let r = exchange(&link(&stranger, &[&b]), addr, Some(b.did())).await;
    assert!(r.is_err(), "{r:?}");
    let e = server.await.unwrap().unwrap_err();
    assert!(matches!(e, LinkError::Handshake(_)), "{e:?}");
    assert!(e.to_string().contains("NotAllowed"), "{e}");
}

#[tokio::test]
async fn a_strangers_server_is_refused_by_the_client() {
    let (a, stranger) = (identity(1), identity(3));
    let (addr, server) = serve_one(link(&stranger, &[&a])).await;
    let e = exchange(&link(&a, &[]), addr, None).await.unwrap_err();
    assert!(matches!(e, LinkError::Handshake(_)), "{e:?}");
    assert!(e.to_string().contains("NotAllowed"), "{e}");
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn an_allowed_server_that_is_not_the_expected_one_is_refused() {
    let (a, b, c) = (identity(1), identity(2), identity(3));
    let (addr, _server) = serve_one(link(&c, &[&a])).await;
    let e = exchange(&link(&a, &[&b, &c]), addr, Some(b.did()))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, LinkError::UnexpectedPeer { expected, got } if expected == b.did() && got == c.did()),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_tampered_certificate_is_refused() {
    let (a, b) = (identity(1), identity(2));
    // Flip a bit of the certificate's own signature: the key is still a's, so only the
    // self-signature check can notice.
    let mut der = a.certificate().as_ref().to_vec();
    let last = der.len() - 1;
    der[last] ^= 1;
    let tampered = LinkIdentity {
        did: a.did().clone(),
        cert: CertificateDer::from(der),
        key: a.key.clone_key(),
    };
    let (addr, server) = serve_one(link(&b, &[&a])).await;
    let r = exchange(&link(&tampered, &[&b]), addr, Some(b.did())).await;
    assert!(r.is_err(), "{r:?}");
    let e = server.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("invalid"), "{e}");
    // and the other way round: a server with a tampered certificate
    let (addr, _server) = serve_one(link(&tampered, &[&b])).await;
    let e = exchange(&link(&b, &[&a]), addr, None).await.unwrap_err();
    assert!(e.to_string().contains("invalid"), "{e}");
}

/// A client presenting the allowed peer's (public) certificate without its private key.
#[derive(Debug)]
struct Impostor(Arc<CertifiedKey>);
impl ResolvesClientCert for Impostor {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[tokio::test]
async fn a_copied_certificate_without_its_key_is_refused() {
    let (a, b, attacker) = (identity(1), identity(2), identity(9));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let signer = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(attacker.key.clone_key()))
        .unwrap();
    let impostor = Arc::new(CertifiedKey::new(vec![a.certificate().clone()], signer));
    let verifier = Arc::new(PeerVerifier {
        authorizer: Arc::new(AllowList::new([b.did().clone()])),
        provider: provider.clone(),
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(Impostor(impostor)));
    cfg.enable_sni = false;
    let Mode::Tls { server, .. } = link(&a, &[]).mode else {
        unreachable!("Link::new makes TLS links")
    };
    let client = Link {
        did: a.did().clone(),
        mode: Mode::Tls {
            server,
            client: Arc::new(cfg),
        },
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
    };
    let (addr, server) = serve_one(link(&b, &[&a])).await;
    let r = exchange(&client, addr, Some(b.did())).await;
    assert!(r.is_err(), "{r:?}");
    let e = server.await.unwrap().unwrap_err();
    assert!(matches!(e, LinkError::Handshake(_)), "{e:?}");
}

#[test]
fn blocking_client_links_to_an_async_server() {
    let (a, b, stranger) = (identity(1), identity(2), identity(3));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = link(&a, &[&b]);
    // allowed
    let (addr, server) = rt.block_on(serve_one(link(&b, &[&a])));
    let sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut tls, did) = client.connect_blocking(sock, Some(b.did())).unwrap();
    assert_eq!(&did, b.did());
    tls.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    tls.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(&rt.block_on(server).unwrap().unwrap(), a.did());
    // a server the client does not allow
    let (addr, _server) = rt.block_on(serve_one(link(&stranger, &[&a])));
    let sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let e = client.connect_blocking(sock, None).unwrap_err();
    assert!(e.to_string().contains("NotAllowed"), "{e}");
}

#[test]
fn allow_list_changes_apply_to_new_handshakes() {
    let (a, b) = (identity(1), identity(2));
    let list = AllowList::new([]);
    assert!(!list.allows(a.did()));
    list.insert(a.did().clone());
    assert!(list.allows(a.did()));
    list.replace([b.did().clone()]);
    assert!(!list.allows(a.did()) && list.allows(b.did()));
    list.remove(b.did());
    assert!(!list.allows(b.did()));
}

fn plain(me: &LinkIdentity, allowed: &[&LinkIdentity]) -> Link {
    Link::plaintext_for_measurement(
        me.did().clone(),
        Arc::new(AllowList::new(allowed.iter().map(|i| i.did().clone()))),
    )
}

#[tokio::test]
async fn plaintext_links_carry_data_and_check_the_claimed_did_against_the_policy() {
    let (a, b, c) = (identity(1), identity(2), identity(3));
    assert!(!plain(&a, &[]).is_secure() && link(&a, &[]).is_secure());
    let (addr, server) = serve_one(plain(&b, &[&a])).await;
    let got = exchange(&plain(&a, &[&b]), addr, Some(b.did()))
        .await
        .unwrap();
    assert_eq!(&got, b.did());
    assert_eq!(&server.await.unwrap().unwrap(), a.did());
    // A claim the server's policy does not allow is refused.
    let (addr, server) = serve_one(plain(&b, &[&a])).await;
    assert!(exchange(&plain(&c, &[&b]), addr, None).await.is_err());
    assert!(matches!(
        server.await.unwrap(),
        Err(LinkError::Handshake(e)) if e.to_string().contains("not allowed")
    ));
    // The client's expectation is checked too.
    let (addr, _server) = serve_one(plain(&b, &[&a])).await;
    assert!(matches!(
        exchange(&plain(&a, &[&b]), addr, Some(c.did())).await,
        Err(LinkError::UnexpectedPeer { .. })
    ));
}

#[tokio::test]
async fn plaintext_and_tls_sides_never_link() {
    let (a, b) = (identity(1), identity(2));
    // TLS client to a plaintext server: the server sees a ClientHello, not a hello.
    let (addr, server) = serve_one(plain(&b, &[&a])).await;
    assert!(exchange(&link(&a, &[&b]), addr, None).await.is_err());
    assert!(server.await.unwrap().is_err());
    // Plaintext client to a TLS server: the server's handshake fails.
    let (addr, server) = serve_one(link(&b, &[&a])).await;
    assert!(exchange(&plain(&a, &[&b]), addr, None).await.is_err());
    assert!(server.await.unwrap().is_err());
}

#[test]
fn blocking_plaintext_links_carry_data() {
    let (a, b) = (identity(1), identity(2));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = plain(&b, &[&a]);
    let t = std::thread::spawn(move || {
        let (sock, _) = l.accept().unwrap();
        let (mut s, did) = server.accept_blocking(sock).unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
        did
    });
    let sock = std::net::TcpStream::connect(addr).unwrap();
    let (mut s, did) = plain(&a, &[&b]).connect_blocking(sock, None).unwrap();
    assert_eq!(&did, b.did());
    s.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    assert_eq!(&t.join().unwrap(), a.did());
}
