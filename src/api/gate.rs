//! The Jobs API's access check on the request's headers, before its body
//! is read (spec/security.md, "Who may do what"): a caller without a
//! token, or whose token cannot make the call at all, is answered at once
//! and its request body — up to 16 MiB — is never read or held.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;

use super::status::auth_status;
use crate::auth::AccessCell;

/// Wraps the Jobs service with the header check.
#[derive(Debug, Clone)]
pub(crate) struct Gate<S> {
    inner: S,
    access: Arc<AccessCell>,
}

impl<S> Gate<S> {
    pub(crate) fn new(inner: S, access: Arc<AccessCell>) -> Gate<S> {
        Gate { inner, access }
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ReqBody> Service<Request<ReqBody>> for Gate<S>
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
        let header = req.headers().get("authorization").map(|v| v.as_bytes());
        let verdict = self
            .access
            .authenticate(header)
            .and_then(|g| g.may_call(method));
        if let Err(e) = verdict {
            let peer = req
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr);
            self.access.refused(&e, peer);
            // Answered without reading the body: dropping the request
            // resets the stream's upload.
            let response = auth_status(&e).into_http();
            return Box::pin(async move { Ok(response) });
        }
        let fut = self.inner.call(req);
        Box::pin(fut)
    }
}
