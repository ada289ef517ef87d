//! The byte stream under the balancer's own connection: TCP, or TLS over it, counting the
//! reads that bring something ([`Reads`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::Authority;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{ConnectError, Reads, Tls};

/// The byte stream to `addr`: TCP with TCP_NODELAY (small replies would otherwise wait for
/// delayed acknowledgements, as tonic sets it), then the TLS handshake if `tls` is given.
pub(super) async fn open(
    addr: &str,
    tls: Option<&Tls>,
    authority: &Authority,
) -> Result<Io, ConnectError> {
    let io = |source| ConnectError::Io {
        addr: addr.to_owned(),
        source,
    };
    let stream = TcpStream::connect(addr).await.map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    Io::new(stream, tls, authority, addr).await
}

/// The connection's byte stream, counting its reads.
#[derive(Debug)]
pub(super) struct Stream {
    pub(super) io: Io,
    pub(super) reads: Reads,
}

/// TCP, or TLS over it.
#[derive(Debug)]
pub(super) enum Io {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<super::tls::Primed>),
}

impl Io {
    /// `tcp`, after the TLS handshake if `tls` is given.
    #[cfg_attr(not(feature = "tls"), allow(clippy::unused_async))]
    async fn new(
        tcp: TcpStream,
        tls: Option<&Tls>,
        authority: &Authority,
        addr: &str,
    ) -> Result<Io, ConnectError> {
        let Some(tls) = tls else {
            return Ok(Io::Plain(tcp));
        };
        #[cfg(feature = "tls")]
        {
            match super::tls::handshake(tls, authority.host(), tcp).await {
                Ok(primed) => Ok(Io::Tls(Box::new(primed))),
                Err(refusal) => Err(ConnectError::Tls {
                    addr: addr.to_owned(),
                    reason: refusal.reason,
                    source: refusal.source,
                    certificate: refusal.certificate,
                }),
            }
        }
        #[cfg(not(feature = "tls"))]
        {
            let _ = (authority, addr);
            match *tls {}
        }
    }
}

/// Forwards a method to the TCP or TLS stream inside.
macro_rules! forward {
    ($io:expr, $stream:ident => $call:expr) => {
        match $io {
            Io::Plain($stream) => $call,
            #[cfg(feature = "tls")]
            Io::Tls($stream) => $call,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = forward!(&mut this.io, s => Pin::new(s).poll_read(cx, buf));
        if read.is_ready() {
            this.reads.note();
        }
        read
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        forward!(&mut self.get_mut().io, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        forward!(&mut self.get_mut().io, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(&mut self.get_mut().io, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(&mut self.get_mut().io, s => Pin::new(s).poll_shutdown(cx))
    }
}
