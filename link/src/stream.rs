//! The streams a [`crate::Link`] hands out: TLS on every production link, plain TCP only for
//! [`crate::Link::plaintext_for_measurement`]. Each is read and written as the stream itself.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::{ClientConnection, ServerConnection, StreamOwned};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client link over `S`.
pub enum ClientStream<S> {
    /// Mutual TLS 1.3.
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
    /// Plain TCP (measurement only).
    Plain(S),
}

/// A server link over `S`.
pub enum ServerStream<S> {
    /// Mutual TLS 1.3.
    Tls(Box<tokio_rustls::server::TlsStream<S>>),
    /// Plain TCP (measurement only).
    Plain(S),
}

/// A blocking client link (a [`std::net::TcpStream`] under TLS).
pub enum BlockingStream {
    /// Mutual TLS 1.3.
    Tls(Box<StreamOwned<ClientConnection, StdTcpStream>>),
    /// Plain TCP (measurement only).
    Plain(StdTcpStream),
}

/// A blocking server link (an accepted [`std::net::TcpStream`] under TLS).
pub enum BlockingServerStream {
    /// Mutual TLS 1.3.
    Tls(Box<StreamOwned<ServerConnection, StdTcpStream>>),
    /// Plain TCP (measurement only).
    Plain(StdTcpStream),
}

macro_rules! async_io {
    ($t:ident) => {
        impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for $t<S> {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $t::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
                    $t::Plain(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }

        impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for $t<S> {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $t::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
                    $t::Plain(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $t::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
                    $t::Plain(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $t::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
                    $t::Plain(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

async_io!(ClientStream);
async_io!(ServerStream);

macro_rules! blocking_io {
    ($t:ident) => {
        impl Read for $t {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                match self {
                    $t::Tls(s) => s.read(buf),
                    $t::Plain(s) => s.read(buf),
                }
            }
        }

        impl Write for $t {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                match self {
                    $t::Tls(s) => s.write(buf),
                    $t::Plain(s) => s.write(buf),
                }
            }

            fn flush(&mut self) -> std::io::Result<()> {
                match self {
                    $t::Tls(s) => s.flush(),
                    $t::Plain(s) => s.flush(),
                }
            }
        }

        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    $t::Tls(_) => f.write_str(concat!(stringify!($t), "::Tls")),
                    $t::Plain(_) => f.write_str(concat!(stringify!($t), "::Plain")),
                }
            }
        }

        impl $t {
            /// The TCP socket underneath.
            pub fn tcp(&self) -> &StdTcpStream {
                match self {
                    $t::Tls(s) => s.get_ref(),
                    $t::Plain(s) => s,
                }
            }
        }
    };
}

blocking_io!(BlockingStream);
blocking_io!(BlockingServerStream);
