//! The console's connections (spec/console.md, "Connections"): at most
//! [`MAX_CONNECTIONS`] open, at most [`MAX_PER_CLIENT`] from one address,
//! each made to speak (send its request, or finish its TLS handshake)
//! within [`FIRST_BYTES`]; a connection over a bound is closed at once.
//! So idle sockets can neither exhaust the descriptors the log needs nor
//! shut other users out of the console. Handshakes run in tasks of their
//! own: a slow client delays nobody.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use crate::api::client_counts::ClientCounts;
use crate::api::incoming::client_of;

/// Most console connections open at once.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Most console connections open at once from one address.
pub(crate) const MAX_PER_CLIENT: usize = 32;
/// Time a new connection has to send its first bytes (and, over TLS, to
/// finish its handshake).
pub(crate) const FIRST_BYTES: Duration = Duration::from_secs(10);

/// A connection's place under the bounds, given back when it closes.
struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    per_client: Arc<ClientCounts>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.per_client.sub(self.client, 1);
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An admitted connection.
pub(super) struct Bounded {
    io: Io,
    _slot: Slot,
}

impl AsyncRead for Bounded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The console's listener: admitted connections only, over TLS when
/// configured.
pub(super) struct ConsoleListener {
    ready: tokio::sync::mpsc::Receiver<(Bounded, SocketAddr)>,
    local: SocketAddr,
}

impl ConsoleListener {
    /// Accepts on `listener` from now on.
    ///
    /// # Errors
    /// The listener has no local address.
    pub(super) fn new(
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> std::io::Result<ConsoleListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let per_client: Arc<ClientCounts> = Arc::default();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "web console: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let Some(slot) = admit(&slots, &per_client, peer.ip()) else {
                    tracing::debug!(%peer, "web console: connection over its bounds closed");
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let opened = tokio::time::timeout(FIRST_BYTES, async {
                        match acceptor {
                            Some(a) => a.accept(tcp).await.map(|s| Io::Tls(Box::new(s))),
                            // Readiness may be reported before any byte
                            // has come (a socket is writable at once, and
                            // `readable` allows false positives): wait for
                            // a byte, or the end of the stream, to be there.
                            None => {
                                let mut first = [0u8; 1];
                                tcp.peek(&mut first).await.map(|_| Io::Plain(tcp))
                            }
                        }
                    })
                    .await;
                    match opened {
                        Ok(Ok(io)) => {
                            let _ = tx.send((Bounded { io, _slot: slot }, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "web console: connection failed")
                        }
                        Err(_) => tracing::debug!(%peer, "web console: connection silent, closed"),
                    }
                });
            }
        });
        Ok(ConsoleListener { ready, local })
    }
}

/// A slot for a connection from `ip`, if the bounds leave one. A client
/// is an address, or an IPv6 /64, as for the gRPC listener.
fn admit(
    slots: &Arc<tokio::sync::Semaphore>,
    per_client: &Arc<ClientCounts>,
    ip: IpAddr,
) -> Option<Slot> {
    let permit = Arc::clone(slots).try_acquire_owned().ok()?;
    let client = client_of(ip);
    if !per_client.try_add(client, 1, MAX_PER_CLIENT) {
        return None;
    }
    Some(Slot {
        _permit: permit,
        per_client: Arc::clone(per_client),
        client,
    })
}

impl axum::serve::Listener for ConsoleListener {
    type Io = Bounded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accepting task is gone: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_bounded_in_all_and_per_client_and_given_back() {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let per_client = Arc::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let b: IpAddr = "192.0.2.2".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mut held: Vec<Slot> = (0..MAX_PER_CLIENT)
            .filter_map(|_| admit(&slots, &per_client, a))
            .collect();
        assert_eq!(held.len(), MAX_PER_CLIENT);
        assert!(admit(&slots, &per_client, a).is_none(), "per client");
        assert!(admit(&slots, &per_client, b).is_some(), "another client");
        held.pop();
        assert!(admit(&slots, &per_client, a).is_some(), "given back");
        // The total bound, over many clients.
        let mut many = Vec::new();
        for i in 0..=MAX_CONNECTIONS {
            let ip = IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]);
            if let Some(s) = admit(&slots, &per_client, ip) {
                many.push(s);
            }
        }
        assert_eq!(many.len() + held.len(), MAX_CONNECTIONS);
    }

    #[tokio::test]
    async fn one_ipv6_slash_64_is_one_client() {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let per_client = Arc::default();
        let host = |i: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, i]);
        let held: Vec<Slot> = (0..MAX_PER_CLIENT as u16)
            .filter_map(|i| admit(&slots, &per_client, host(i)))
            .collect();
        assert_eq!(held.len(), MAX_PER_CLIENT);
        assert!(admit(&slots, &per_client, host(999)).is_none(), "same /64");
        let next_net = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(
            admit(&slots, &per_client, next_net).is_some(),
            "another /64"
        );
    }
}
