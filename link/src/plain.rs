//! The hello of plaintext links ([`crate::Link::plaintext_for_measurement`]): each side sends
//! [`HELLO`], one length byte and its DID; the client first. No key is proved.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;

use opengrid_session::Did;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Authorizer, LinkError, PeerRefused};

/// The first bytes of a plaintext hello (never the start of a TLS record).
pub const HELLO: &[u8; 8] = b"OGPLAIN1";

/// Longest DID a hello may carry.
const MAX_DID: usize = 128;

fn hello(did: &Did) -> Vec<u8> {
    let d = did.as_str().as_bytes();
    let mut out = Vec::with_capacity(HELLO.len() + 1 + d.len());
    out.extend_from_slice(HELLO);
    out.push(d.len().min(MAX_DID) as u8);
    out.extend_from_slice(&d[..d.len().min(MAX_DID)]);
    out
}

fn refused(e: impl std::fmt::Display) -> LinkError {
    LinkError::Handshake(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        e.to_string(),
    ))
}

fn parse(head: &[u8; 9], body: &[u8], authorizer: &dyn Authorizer) -> Result<Did, LinkError> {
    if &head[..8] != HELLO {
        return Err(refused("not a plaintext link hello"));
    }
    let text = std::str::from_utf8(body).map_err(|_| refused("hello: DID is not UTF-8"))?;
    let did = Did::parse(text).map_err(|e| refused(format!("hello: {e}")))?;
    if !authorizer.allows(&did) {
        return Err(refused(PeerRefused::NotAllowed(did)));
    }
    Ok(did)
}

async fn read_hello<S: AsyncRead + Unpin>(
    io: &mut S,
    authorizer: &dyn Authorizer,
) -> Result<Did, LinkError> {
    let mut head = [0u8; 9];
    io.read_exact(&mut head)
        .await
        .map_err(LinkError::Handshake)?;
    if &head[..8] != HELLO {
        return Err(refused("not a plaintext link hello"));
    }
    let mut body = vec![0u8; head[8] as usize];
    io.read_exact(&mut body)
        .await
        .map_err(LinkError::Handshake)?;
    parse(&head, &body, authorizer)
}

fn read_hello_blocking(
    io: &mut StdTcpStream,
    authorizer: &dyn Authorizer,
) -> Result<Did, LinkError> {
    let mut head = [0u8; 9];
    io.read_exact(&mut head).map_err(LinkError::Handshake)?;
    if &head[..8] != HELLO {
        return Err(refused("not a plaintext link hello"));
    }
    let mut body = vec![0u8; head[8] as usize];
    io.read_exact(&mut body).map_err(LinkError::Handshake)?;
    parse(&head, &body, authorizer)
}

pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    me: &Did,
    authorizer: &dyn Authorizer,
) -> Result<Did, LinkError> {
    let peer = read_hello(io, authorizer).await?;
    io.write_all(&hello(me))
        .await
        .map_err(LinkError::Handshake)?;
    Ok(peer)
}

pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    me: &Did,
    authorizer: &dyn Authorizer,
) -> Result<Did, LinkError> {
    io.write_all(&hello(me))
        .await
        .map_err(LinkError::Handshake)?;
    read_hello(io, authorizer).await
}

pub(crate) fn accept_blocking(
    io: &mut StdTcpStream,
    me: &Did,
    authorizer: &dyn Authorizer,
) -> Result<Did, LinkError> {
    let peer = read_hello_blocking(io, authorizer)?;
    io.write_all(&hello(me)).map_err(LinkError::Handshake)?;
    Ok(peer)
}

pub(crate) fn connect_blocking(
    io: &mut StdTcpStream,
    me: &Did,
    authorizer: &dyn Authorizer,
) -> Result<Did, LinkError> {
    io.write_all(&hello(me)).map_err(LinkError::Handshake)?;
    read_hello_blocking(io, authorizer)
}
