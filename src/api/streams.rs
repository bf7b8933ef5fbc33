//! The calls (HTTP/2 streams) the server holds, per connection and per
//! client (spec/security.md, "Connections"): a client holds at most
//! `max_streams_per_client` at once over all its connections, and a
//! connection with no call open for `idle_timeout_ms` is closed
//! ([`super::incoming`] closes it; this layer says when calls open and end).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{Bytes, Service};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::client_counts::ClientCounts;
use super::status::auth_status;
use crate::auth::{AuthCode, AuthError};

/// Default most calls one client holds open at once, over all its
/// connections.
pub const DEFAULT_MAX_STREAMS_PER_CLIENT: usize = 512;
/// Default time a connection may stay open with no call in flight.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;

/// One connection's calls in flight, and since when it has had none.
#[derive(Debug)]
pub(crate) struct Activity {
    open: AtomicUsize,
    quiet_since: Mutex<Instant>,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            open: AtomicUsize::new(0),
            quiet_since: Mutex::new(Instant::now()),
        }
    }

    /// How long the connection has had no call open; `None` while one is.
    pub(crate) fn quiet_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            self.quiet_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        )
    }
}

/// Calls in flight by connection and by client.
#[derive(Debug)]
pub(crate) struct Streams {
    max_per_client: usize,
    limit_loopback: bool,
    per_client: ClientCounts,
    connections: Mutex<HashMap<SocketAddr, Arc<Activity>>>,
    refused: AtomicU64,
    /// Set when the server stops for good: every connection ends.
    closing: tokio::sync::watch::Sender<bool>,
}

impl Streams {
    pub(crate) fn new(max_per_client: usize, limit_loopback: bool) -> Streams {
        Streams {
            max_per_client: max_per_client.max(1),
            limit_loopback,
            per_client: ClientCounts::default(),
            connections: Mutex::default(),
            refused: AtomicU64::new(0),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Ends every connection, streams and all (the drain grace is over).
    pub(crate) fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Streams::close_all`] was called.
    pub(crate) fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> usize {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Calls refused so far because their client held its most.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Starts tracking the connection from `peer`.
    pub(crate) fn connected(&self, peer: SocketAddr) -> Arc<Activity> {
        let a = Arc::new(Activity::new());
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, Arc::clone(&a));
        a
    }

    /// Stops tracking the connection from `peer`.
    pub(crate) fn disconnected(&self, peer: SocketAddr) {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer);
    }

    /// A call from `peer` opens: its place, given back when the call's
    /// response ends.
    fn open(self: &Arc<Streams>, peer: Option<SocketAddr>) -> Result<Open, AuthError> {
        let client = peer
            .map(|p| p.ip())
            .filter(|ip| !ip.is_loopback() || self.limit_loopback)
            .map(super::incoming::client_of);
        if let Some(c) = client {
            if !self.per_client.try_add(c, 1, self.max_per_client) {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(AuthError::new(
                    AuthCode::TooManyStreams,
                    format!(
                        "a client holds at most {} calls open at once over all its connections",
                        self.max_per_client
                    ),
                ));
            }
        }
        let activity = peer.and_then(|p| {
            self.connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&p)
                .cloned()
        });
        if let Some(a) = &activity {
            a.open.fetch_add(1, Ordering::AcqRel);
        }
        Ok(Open {
            streams: Arc::clone(self),
            client,
            activity,
        })
    }
}

/// One call's place.
struct Open {
    streams: Arc<Streams>,
    client: Option<IpAddr>,
    activity: Option<Arc<Activity>>,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(a) = &self.activity {
            // The quiet time starts when the last call ends.
            *a.quiet_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            a.open.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(c) = self.client {
            self.streams.per_client.sub(c, 1);
        }
    }
}

/// The layer every service of the server sits behind.
#[derive(Debug, Clone)]
pub(crate) struct StreamLayer(pub(crate) Arc<Streams>);

impl<S> tower_layer::Layer<S> for StreamLayer {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            streams: Arc::clone(&self.0),
        }
    }
}

/// A service whose calls are counted.
#[derive(Debug, Clone)]
pub(crate) struct Counted<S> {
    inner: S,
    streams: Arc<Streams>,
}

/// The remote address of a request, plaintext or TLS.
pub(crate) fn peer_of<B>(req: &Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|t| t.get_ref().remote_addr())
        })
}

impl<S, B> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let open = match self.streams.open(peer_of(&req)) {
            Ok(o) => o,
            Err(e) => {
                let response = auth_status(&e).into_http();
                return Box::pin(async move { Ok(response) });
            }
        };
        let span = rpc_span(&mut req);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            let mut span = span;
            // An error with no body comes in the headers.
            if let (Some(s), Some(why)) = (span.as_mut(), grpc_error(response.headers())) {
                s.fail(why);
            }
            Ok(response.map(|b| {
                tonic::body::Body::new(Tracked {
                    inner: b,
                    _open: open,
                    span,
                })
            }))
        })
    }
}

/// The call's span while traces are on (spec/plugin.md, "Trace
/// context"): named by its gRPC path, the child of the caller's
/// `traceparent` if it sent one; its own `traceparent` goes with the
/// request to the service, which records it on the jobs it enqueues.
fn rpc_span<B>(req: &mut Request<B>) -> Option<crate::telemetry::TraceSpan> {
    if !crate::telemetry::enabled() {
        return None;
    }
    let path = req.uri().path().trim_start_matches('/').to_owned();
    let (service, method) = path.split_once('/').unwrap_or((&path, ""));
    let attributes = vec![
        opentelemetry::KeyValue::new("rpc.system", "grpc"),
        opentelemetry::KeyValue::new("rpc.service", service.to_owned()),
        opentelemetry::KeyValue::new("rpc.method", method.to_owned()),
    ];
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let span = crate::telemetry::TraceSpan::start(
        path,
        opentelemetry::trace::SpanKind::Server,
        parent.as_deref(),
        attributes,
    )?;
    req.extensions_mut()
        .insert(crate::telemetry::RpcTrace(span.traceparent()));
    Some(span)
}

/// `grpc-status` other than OK in these headers or trailers, with its
/// message.
fn grpc_error(headers: &tonic::codegen::http::HeaderMap) -> Option<String> {
    let code = headers.get("grpc-status")?.to_str().ok()?;
    if code == "0" {
        return None;
    }
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("");
    Some(format!("grpc-status {code}: {message}"))
}

/// A response body that holds its call's place (and its span) until it
/// ends.
struct Tracked {
    inner: tonic::body::Body,
    _open: Open,
    span: Option<crate::telemetry::TraceSpan>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            let why = frame.trailers_ref().and_then(grpc_error);
            if let (Some(span), Some(why)) = (self.span.as_mut(), why) {
                span.fail(why);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_its_most_calls_and_a_connection_knows_when_it_is_quiet() {
        let streams = Arc::new(Streams::new(2, false));
        let (a, b): (SocketAddr, SocketAddr) = (
            "192.0.2.7:1000".parse().unwrap_or(([0, 0, 0, 0], 0).into()),
            "192.0.2.7:1001".parse().unwrap_or(([0, 0, 0, 0], 0).into()),
        );
        let conn = streams.connected(a);
        assert!(conn.quiet_for().is_some());
        let one = streams.open(Some(a));
        assert!(one.is_ok() && conn.quiet_for().is_none());
        let two = streams.open(Some(b));
        assert!(two.is_ok());
        // A third call from the same address, on any connection: refused.
        let e = streams.open(Some(a)).err().map(|e| e.code());
        assert_eq!(e, Some(AuthCode::TooManyStreams));
        assert_eq!(streams.refused(), 1);
        drop(one);
        assert!(conn.quiet_for().is_some_and(|d| d < Duration::from_secs(1)));
        assert!(streams.open(Some(a)).is_ok());
        // Loopback is exempt.
        let lo: SocketAddr = ([127, 0, 0, 1], 5).into();
        let many: Vec<_> = (0..5).map(|_| streams.open(Some(lo))).collect();
        assert!(many.iter().all(Result::is_ok));
        streams.disconnected(a);
        drop(two);
    }
}
