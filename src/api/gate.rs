//! The Jobs API's access check on the request's headers, before its body
//! is read (spec/security.md, "Who may do what"): a caller without a
//! token, or whose token cannot make the call at all, is answered at once
//! and its request body — up to 16 MiB — is never read or held. A DID
//! token passes (anyone may own a handler), so the bodies of DID callers
//! draw on one shared allowance of bytes ([`BodyBudget`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tonic::server::NamedService;

use super::body_budget::{BodyBudget, MAX_STREAMED_REQUEST, StreamRule};
use super::status::auth_status;
use crate::auth::AccessCell;

/// Wraps the Jobs service with the header check.
#[derive(Debug, Clone)]
pub(crate) struct Gate<S> {
    inner: S,
    access: Arc<AccessCell>,
    /// `None` for a service of long-lived streams (a plugin's session),
    /// whose body never completes: its messages are bounded one by one.
    bodies: Option<BodyBudget>,
}

impl<S> Gate<S> {
    pub(crate) fn new(inner: S, access: Arc<AccessCell>, bodies: Option<BodyBudget>) -> Gate<S> {
        Gate {
            inner,
            access,
            bodies,
        }
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<tonic::body::Body>> for Gate<S>
where
    S: Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>>,
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

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        // The one call whose body is a stream of requests.
        let stream = (method == "EnqueueStream").then_some(StreamRule {
            max_message: MAX_STREAMED_REQUEST,
        });
        let header = req.headers().get("authorization").map(|v| v.as_bytes());
        let verdict = self
            .access
            .authenticate(header)
            .and_then(|g| g.may_call(method).map(|()| g));
        let stranger = match verdict {
            Ok(g) => g.did().is_some(),
            Err(e) => {
                let peer = super::streams::peer_of(&req);
                self.access.refused(&e, peer);
                // Answered without reading the body: dropping the request
                // resets the stream's upload.
                let response = auth_status(&e).into_http();
                return Box::pin(async move { Ok(response) });
            }
        };
        // The bodies of DID callers draw on the shared allowance.
        let req = match &self.bodies {
            Some(bodies) if stranger => {
                let client = super::streams::peer_of(&req).map(|a| a.ip());
                req.map(|b| bodies.hold(b, client, stream))
            }
            _ => req,
        };
        let fut = self.inner.call(req);
        Box::pin(fut)
    }
}
