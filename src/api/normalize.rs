//! Gives transport-level request failures the status codes our API
//! promises: a request too large for the server is RESOURCE_EXHAUSTED (tonic
//! says OUT_OF_RANGE) and a protobuf message that does not decode is
//! INVALID_ARGUMENT (tonic says INTERNAL). Both are the caller's input, not
//! a server fault, and both carry a google.rpc.ErrorInfo with their code,
//! like every other refusal (spec/ledger.md, "Status codes").

use std::collections::HashMap;
use std::task::{Context, Poll};

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use tonic_types::{ErrorDetails, StatusExt};

use tonic::codegen::Service;
use tonic::codegen::http::{HeaderValue, Request, Response};
use tonic::server::NamedService;

/// Wraps a generated service and rewrites those two statuses.
#[derive(Debug, Clone)]
pub(crate) struct Normalize<S> {
    inner: S,
}

impl<S> Normalize<S> {
    pub(crate) fn new(inner: S) -> Normalize<S> {
        Normalize { inner }
    }
}

impl<S: NamedService> NamedService for Normalize<S> {
    const NAME: &'static str = S::NAME;
}

/// The status a transport-level failure should have, if it is one of ours
/// to rename: (new grpc-status, spec code).
pub(crate) fn renamed(status: &str, message: &str) -> Option<(tonic::Code, &'static str)> {
    let message = message.replace("%20", " ");
    match status {
        "11" if message.starts_with("Error, decoded message length too large") => {
            Some((tonic::Code::ResourceExhausted, "too_large"))
        }
        "13" if message.starts_with("failed to decode Protobuf message") => {
            Some((tonic::Code::InvalidArgument, "malformed_request"))
        }
        _ => None,
    }
}

/// The refusal for a renamed failure: the code as message prefix and as
/// ErrorInfo reason.
pub(crate) fn refusal(code: tonic::Code, reason: &str, message: &str) -> tonic::Status {
    tonic::Status::with_error_details(
        code,
        format!("{reason}: {message}"),
        ErrorDetails::with_error_info(reason, super::ERROR_DOMAIN, HashMap::new()),
    )
}

/// The same renaming for a status value (streams report errors this way).
pub(crate) fn normalize_status(status: tonic::Status) -> tonic::Status {
    let code = (status.code() as i32).to_string();
    match renamed(&code, status.message()) {
        Some((new, reason)) => refusal(new, reason, status.message()),
        None => status,
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Normalize<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
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
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            let headers = response.headers();
            let status = headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let message = headers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if let Some((code, reason)) = renamed(status, message) {
                let new_message = format!("{reason}:%20{message}");
                let details = STANDARD_NO_PAD.encode(refusal(code, reason, "").details());
                let headers = response.headers_mut();
                headers.insert("grpc-status", HeaderValue::from((code as i32) as u32));
                if let Ok(v) = HeaderValue::from_str(&new_message) {
                    headers.insert("grpc-message", v);
                }
                if let Ok(v) = HeaderValue::from_str(&details) {
                    headers.insert("grpc-status-details-bin", v);
                }
            }
            Ok(response)
        })
    }
}
