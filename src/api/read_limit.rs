//! The per-client rate limit on the Registry's reads (spec/security.md,
//! "Rate limits and size caps"): the log is public, so anyone may read it,
//! but not at any rate. Judged on the request's headers, before it is read.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use super::status::auth_status;
use crate::auth::RateLimiter;

/// Wraps the Registry service: every call but `Submit` and `SubmitStream`
/// (limited by the submission rate) takes one read from its client's
/// allowance.
#[derive(Debug, Clone)]
pub(crate) struct ReadLimit<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

impl<S> ReadLimit<S> {
    pub(crate) fn new(inner: S, limiter: Arc<RateLimiter>) -> ReadLimit<S> {
        ReadLimit { inner, limiter }
    }
}

impl<S: NamedService> NamedService for ReadLimit<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody> Service<Request<ReqBody>> for ReadLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        if !matches!(method, "Submit" | "SubmitStream") {
            let peer = req
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .map(|a| a.ip());
            if let Err(e) = self.limiter.check(peer, 1, Instant::now()) {
                let response = auth_status(&e).into_http();
                return Box::pin(async move { Ok(response) });
            }
        }
        Box::pin(self.inner.call(req))
    }
}
