//! TLS on the balancer's own connection: the handshake with the crate's own configuration,
//! the server's verdict on the client certificate, and what a refusal means.
//!
//! A TLS 1.3 server judges the client certificate after the handshake has completed on the
//! client's side, so a refusal would only show as a closed connection on the first call.
//! An HTTP/2 server sends its SETTINGS frame first thing, so the handshake here waits
//! briefly for the server's first bytes: a refusal arrives instead as an alert, and fails
//! the connection with a reason. The bytes read are replayed to HTTP/2 ([`Primed`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, AlertDescription};

use crate::tls::{ALPN_H2, Connector, is_certificate_alert};

/// How long the handshake waits for the server's first bytes. A server that sends nothing
/// before the client's preface is connected to all the same once this has passed.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a TLS connection could not be made; see [`ConnectError::Tls`](super::ConnectError).
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) reason: String,
    pub(crate) source: Option<io::Error>,
    /// Whether it is about certificates, so a configuration to fix rather than a server
    /// that is down.
    pub(crate) certificate: bool,
}

/// Runs the TLS handshake on `tcp` with a server at `host`, requires HTTP/2 by ALPN, and
/// waits up to [`VERDICT_TIMEOUT`] for the server's first bytes.
pub(crate) async fn handshake(
    connector: &Connector,
    host: &str,
    tcp: TcpStream,
) -> Result<Primed, Refusal> {
    let name = connector.server_name(host).map_err(|reason| Refusal {
        reason,
        source: None,
        certificate: true,
    })?;
    let mut tls = TlsConnector::from(connector.config.clone())
        .connect(name, tcp)
        .await
        .map_err(|error| refusal(connector, error))?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        return Err(Refusal {
            reason: "the server did not select http/2 (alpn h2)".to_owned(),
            source: None,
            certificate: false,
        });
    }
    let mut head = vec![0; 1024];
    let read = match tokio::time::timeout(VERDICT_TIMEOUT, tls.read(&mut head)).await {
        Ok(Ok(0)) => {
            return Err(Refusal {
                reason: "the server closed the connection after the handshake".to_owned(),
                source: None,
                certificate: false,
            });
        }
        Ok(Ok(n)) => n,
        Ok(Err(error)) => return Err(refusal(connector, error)),
        Err(_) => 0,
    };
    head.truncate(read);
    Ok(Primed {
        head,
        read: 0,
        io: tls,
    })
}

/// What a failed handshake means for the user.
fn refusal(connector: &Connector, error: io::Error) -> Refusal {
    let explained = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::InvalidCertificate(_) => Some("the server's certificate is not trusted"),
            rustls::Error::AlertReceived(alert) if is_certificate_alert(*alert) => {
                Some(match connector.identity {
                    false => "the server requires a client certificate, and none was given",
                    true => "the server rejected the client certificate",
                })
            }
            // rustls sends it when the client certificate's signature does not verify, for
            // example one from another CA of the same name.
            rustls::Error::AlertReceived(AlertDescription::DecryptError) if connector.identity => {
                Some("the server rejected the client certificate")
            }
            _ => None,
        });
    Refusal {
        reason: explained.unwrap_or("the handshake failed").to_owned(),
        source: Some(error),
        certificate: explained.is_some(),
    }
}

/// A TLS stream that first replays the bytes read during the handshake.
#[derive(Debug)]
pub(crate) struct Primed {
    head: Vec<u8>,
    read: usize,
    io: TlsStream<TcpStream>,
}

impl AsyncRead for Primed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.head.len() {
            let rest = &this.head[this.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            if this.read == this.head.len() {
                this.head = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Primed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
