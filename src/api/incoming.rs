//! The connections the server takes (spec/security.md, "Connections"):
//! bounded in number, in all and per client, each required to start
//! speaking (the HTTP/2 preface, or a TLS record) within a deadline, with
//! the file descriptor limit raised and a reserve kept for storage, so no
//! number of idle sockets can starve the log of descriptors.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::client_counts::ClientCounts;
use super::streams::{Activity, Streams};

/// File descriptors kept for storage, plugins and the metrics endpoint,
/// below the limit: connections never take them.
pub const FD_RESERVE: u64 = 256;
/// Default most connections open at once (lowered to fit the descriptor
/// limit less [`FD_RESERVE`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default most connections from one client (an IPv4 address or an IPv6
/// /64) at once; loopback is exempt unless `rate_limit_loopback`.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 64;
/// Default time a new connection has to send its first bytes (the 24-byte
/// HTTP/2 preface, or a TLS record header).
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// How connections are admitted.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Most connections open at once.
    pub max_total: usize,
    /// Most connections open at once from one client.
    pub max_per_client: usize,
    /// Time a connection has to start speaking.
    pub handshake: Duration,
    /// Whether the server speaks TLS (a TLS record header, 5 bytes, is
    /// then the first thing expected; plaintext expects the preface).
    pub tls: bool,
    /// Whether loopback clients count against `max_per_client`.
    pub limit_loopback: bool,
    /// Time a connection may stay open with no call in flight.
    pub idle: Duration,
}

/// Connection counters, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    open: AtomicU64,
    refused_total: AtomicU64,
    refused_client: AtomicU64,
    silent: AtomicU64,
    idle: AtomicU64,
}

impl ConnectionCounters {
    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once because the server held its most.
    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    /// Connections closed at once because their client held its most.
    pub fn refused_client(&self) -> u64 {
        self.refused_client.load(Ordering::Relaxed)
    }

    /// Connections closed because they did not start speaking in time.
    pub fn silent(&self) -> u64 {
        self.silent.load(Ordering::Relaxed)
    }

    /// Connections closed because no call was in flight for the idle
    /// timeout.
    pub fn idle(&self) -> u64 {
        self.idle.load(Ordering::Relaxed)
    }
}

/// Raises the soft limit on open files to the hard limit; the limit then
/// in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The most connections that fit under a descriptor limit of `fd_limit`.
pub fn connections_for(fd_limit: u64, wanted: usize) -> usize {
    let room = fd_limit.saturating_sub(FD_RESERVE).max(16);
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
}

/// The client a connection counts against: an IPv4 address, or an IPv6
/// /64 (one host usually holds a whole /64).
pub(crate) fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
        v4 => v4,
    }
}

struct Slots {
    admission: Admission,
    per_client: ClientCounts,
    counters: Arc<ConnectionCounters>,
}

/// One admitted connection's place, given back when it closes.
struct Slot {
    slots: Arc<Slots>,
    client: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.counters.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = self.client {
            self.slots.per_client.sub(c, 1);
        }
    }
}

impl Slots {
    fn admit(self: &Arc<Slots>, ip: IpAddr) -> Option<Slot> {
        let open = self.counters.open.load(Ordering::Relaxed);
        if open >= self.admission.max_total as u64 {
            self.counters.refused_total.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let counted = !ip.is_loopback() || self.admission.limit_loopback;
        let client = counted.then(|| client_of(ip));
        if let Some(c) = client {
            if !self.per_client.try_add(c, 1, self.admission.max_per_client) {
                self.counters.refused_client.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            slots: Arc::clone(self),
            client,
        })
    }
}

/// An admitted connection: the socket, its slot, and what closes it once
/// it has had no call in flight for the idle timeout.
pub struct Admitted {
    stream: TcpStream,
    _slot: Slot,
    quiet: Quiet,
}

/// The idle rule of one connection.
struct Quiet {
    peer: SocketAddr,
    activity: Arc<Activity>,
    streams: Arc<Streams>,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    counters: Arc<ConnectionCounters>,
    /// Resolves when the server closes every connection.
    closing: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Whether the idle rule closed the connection (counted once).
    expired: bool,
}

impl Quiet {
    /// Whether the connection has been quiet long enough to close; if not,
    /// the timer is set for when it might be and registered with `cx`.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.expired || self.closing.as_mut().poll(cx).is_ready() {
            return true;
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let wait = match self.activity.quiet_for() {
                Some(q) if q >= self.idle => {
                    self.counters.idle.fetch_add(1, Ordering::Relaxed);
                    self.expired = true;
                    return true;
                }
                Some(q) => self.idle - q,
                None => self.idle,
            };
            self.timer
                .as_mut()
                .reset(tokio::time::Instant::now() + wait);
        }
        false
    }
}

impl Drop for Quiet {
    fn drop(&mut self) {
        self.streams.disconnected(self.peer);
    }
}

impl Connected for Admitted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.quiet.expired(cx) {
            // End of input: the HTTP/2 stack closes the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Whether `stream` has at least `need` bytes waiting before `deadline`
/// (without consuming them).
async fn starts_speaking(stream: &TcpStream, need: usize, deadline: Duration) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    let mut buf = [0u8; 24];
    loop {
        match tokio::time::timeout_at(until, stream.peek(&mut buf[..need])).await {
            Ok(Ok(n)) if n >= need => return true,
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            // Part of it: wait for more, within the same deadline.
            Ok(Ok(_)) => {
                if tokio::time::timeout_at(until, tokio::time::sleep(Duration::from_millis(10)))
                    .await
                    .is_err()
                {
                    return false;
                }
            }
        }
    }
}

/// The admitted connections of `listener`, for tonic's
/// `serve_with_incoming`, and their counters.
pub(crate) fn admit(
    listener: TcpListener,
    admission: Admission,
    streams: Arc<Streams>,
) -> (
    ReceiverStream<std::io::Result<Admitted>>,
    Arc<ConnectionCounters>,
) {
    let counters = Arc::new(ConnectionCounters::default());
    let slots = Arc::new(Slots {
        admission,
        per_client: ClientCounts::default(),
        counters: Arc::clone(&counters),
    });
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut warned: Option<Instant> = None;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors (or another transient failure):
                    // wait instead of spinning on a listener that stays
                    // readable, and say so at most once a second.
                    if warned.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accepting a connection failed");
                        warned = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = slots.admit(peer.ip()) else {
                continue; // dropped: closed at once
            };
            // Nagle's algorithm stalls every unary round trip by ~40 ms.
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            let counters = Arc::clone(&slots.counters);
            let streams = Arc::clone(&streams);
            tokio::spawn(async move {
                let need = if admission.tls { 5 } else { 24 };
                if starts_speaking(&stream, need, admission.handshake).await {
                    let quiet = Quiet {
                        peer,
                        activity: streams.connected(peer),
                        closing: Box::pin(streams.closed()),
                        expired: false,
                        streams,
                        idle: admission.idle,
                        timer: Box::pin(tokio::time::sleep(admission.idle)),
                        counters,
                    };
                    let _ = tx
                        .send(Ok(Admitted {
                            stream,
                            _slot: slot,
                            quiet,
                        }))
                        .await;
                } else {
                    counters.silent.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    (ReceiverStream::new(rx), counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_addresses_or_ipv6_slash_64s() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 4]));
        let b: IpAddr = "2001:db8:1:2:ffff::1"
            .parse()
            .unwrap_or(IpAddr::from([0u8; 4]));
        assert_eq!(client_of(a), client_of(b));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap_or(IpAddr::from([0u8; 4]));
        assert_eq!(client_of(mapped), IpAddr::from([10, 0, 0, 7]));
        assert_ne!(
            client_of(IpAddr::from([10, 0, 0, 7])),
            client_of(IpAddr::from([10, 0, 0, 8]))
        );
    }

    #[test]
    fn connections_fit_under_the_descriptor_limit() {
        assert_eq!(connections_for(1_048_576, 4096), 4096);
        assert_eq!(connections_for(1024, 4096), 768);
        assert_eq!(connections_for(256, 4096), 16);
    }
}
